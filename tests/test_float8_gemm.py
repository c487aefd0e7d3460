"""The float8 forward on fp8 tensor cores (kernels/gemm_float8.py, ``triton_qat::float8_linear``):
the e4m3 codes bit-exact with torch's own cast, the GEMM against an fp64 product of the same
fake-quantized values (NaN rows and columns where the reference has them), the layer's gradients
equal torchao's, nothing weight-sized kept for the backward, the converted layer bit-identical to
the prepared one on the same GEMM, compile and opcheck. Under TRITON_INTERPRET=1 (the suite) the
kernels run in the interpreter; on the plain-torch backend the dequantized path runs instead."""

import pytest
import torch
from conftest import REL_TOL
from torch import nn

import triton_qat as tq
import triton_qat.float8 as f8
from kernels.gemm_float8 import F8_BLOCK_K, check_float8_config, float8_linear
from kernels.quantize_float8 import launch_float8_codes, plan_float8_quantize
from kernels.quantize_float8_torch import float8_fake_quantize_torch
from triton_qat.dispatch import backend

ao_qat = pytest.importorskip("torchao.quantization.qat")
from torchao.quantization.granularity import PerRow, PerTensor  # noqa: E402
from torchao.quantization.qat import Float8FakeQuantizeConfig  # noqa: E402

KERNELS = backend("cpu") != "torch"
needs_kernels = pytest.mark.skipif(not KERNELS, reason="the fp8 GEMM runs on the kernel backends")
HALF = [torch.bfloat16, torch.float16]
CFG = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": F8_BLOCK_K, "GROUP_M": 4, "num_warps": 1,
       "num_stages": 1}  # fmt: skip


def _codes(x, per_tensor=False, lb=None, ub=None):
    plan = plan_float8_quantize(x.shape[1], x.dtype, per_tensor, lb, ub, False, True)
    return launch_float8_codes(plan, x)


UNIT = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
HALF_SUBNORMAL = {torch.float32: 2.0**-150, torch.bfloat16: 2.0**-134, torch.float16: 2.0**-25}


def _check_bound(out, x_fq, w_fq, bias, what=""):
    """``out`` against the fp64 product of the fake-quantized values (in their dtype ``dt``, as
    the reference holds them), element by element: the GEMM multiplies the values before their
    rounding to dt (each within dt's unit roundoff u of the rounded one), accumulates in fp32 and
    rounds once to the output dtype, so |out - ref| <= (2u + u^2 + K 2^-24) (|x_fq| @ |w_fq|.T)
    + u_out |ref|, plus half a subnormal step e per rounding where values are subnormal
    (e (|x_fq| @ 1 + 1 @ |w_fq|.T) + e_out; docs/numerics.md "Float8", forward GEMM).
    Non-finite exactly where the reference is (a row or column holding a NaN or an overflowed
    fake-quantized value: there NaN, or the reference's own inf)."""
    xd, wd = x_fq.double(), w_fq.double()
    ref = xd @ wd.T + (0 if bias is None else bias.double())
    bad = ~torch.isfinite(ref)  # elsewhere out is finite, or inf past the dtype's range (below)
    assert (out[bad].isnan() | (out[bad].double() == ref[bad])).all(), f"{what}: non-finite"
    ref = torch.where(bad, torch.full_like(ref, float("nan")), ref)
    u, u_out, K = UNIT[x_fq.dtype], UNIT[out.dtype], x_fq.shape[1]
    size = xd.abs().nan_to_num() @ wd.abs().nan_to_num().T
    e, e_out = HALF_SUBNORMAL[x_fq.dtype], HALF_SUBNORMAL[out.dtype]
    sums = xd.abs().nan_to_num().sum(1, keepdim=True) + wd.abs().nan_to_num().sum(1)[None, :]
    bound = (2 * u + u * u + K * 2.0**-24) * size + u_out * ref.abs() + e * sums + e_out
    big = torch.finfo(out.dtype).max
    over = ref.abs() > big  # past the output dtype's range: inf, or the largest finite value
    assert (out[over].double().abs() >= big * (1 - 4 * u_out)).all(), f"{what}: overflow"
    fin = ~ref.isnan() & ~over
    err = (out.double() - ref).abs()
    assert (err[fin] <= bound[fin]).all(), f"{what}: max err / bound {(err / bound)[fin].max()}"
    return torch.where(bad, xd @ wd.T, ref)  # the reference, its non-finite values kept


def _poisoned(dtype, R, K, seed):
    """Rows the reference makes NaN (a NaN, an inf, all zeros without a bound), a tiny row, a
    huge one."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(R, K, generator=g) * 2
    x[1, 3] = float("nan")
    x[2, 0] = float("inf")
    x[3] = 0
    x[4] *= 1e-4
    x[5] *= 300
    return x.to(dtype)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, *HALF], ids=str)
@pytest.mark.parametrize("bounds", [(None, None), (1e-12, None), (0.01, 2.0)], ids=str)
@pytest.mark.parametrize("per_tensor", [False, True])
def test_codes_are_torchs_e4m3_cast_and_gemm_scale_marks_nan_rows(dtype, bounds, per_tensor):
    x = _poisoned(dtype, 13, 67, 0)
    x[6, :4] = torch.tensor([1e-40, -3e-41, 0.0, -0.0]).to(dtype)  # subnormals, signed zeros
    codes, gscale = _codes(x, per_tensor, *bounds)
    y, s = float8_fake_quantize_torch(x, per_tensor, *bounds)
    want = torch.clamp(x.float() / s, -448, 448).to(torch.float8_e4m3fn)
    assert codes.dtype == torch.float8_e4m3fn and codes.shape == x.shape
    assert torch.equal(codes.view(torch.uint8), want.view(torch.uint8))
    # NaN where the reference row is not finite: a NaN code, or a value overflowing x's dtype
    nan_row = want.float().isnan().any(1) | y.isinf().any(1)
    expect = torch.where(nan_row, float("nan"), s.expand(x.shape[0], 1)[:, 0])
    assert torch.equal(gscale.isnan(), expect.isnan())
    assert torch.equal(gscale[~nan_row], expect[~nan_row])
    # codes * scale, rounded to x's dtype, are the fake-quantized values
    deq = (codes.float() * s).to(dtype)
    torch.testing.assert_close(deq, y, rtol=0, atol=0, equal_nan=True)


@needs_kernels
@pytest.mark.parametrize(
    "M,K,N", [(1, 16, 8), (67, 96, 40), (13, 200, 33), (130, 300, 70)], ids=lambda v: str(v)
)
@pytest.mark.parametrize("out_dtype", [torch.float32, *HALF], ids=str)
@pytest.mark.parametrize("tma", [0, 1])
def test_gemm_within_the_fp64_bound(M, K, N, out_dtype, tma):
    torch.manual_seed(M + K)
    x, w = torch.randn(M, K, dtype=out_dtype), torch.randn(N, K, dtype=out_dtype)
    bias = torch.randn(N, dtype=out_dtype)
    (xc, xs), (wc, ws) = _codes(x), _codes(w, per_tensor=True)
    out = float8_linear(xc, xs, wc, ws, bias, out_dtype, config={**CFG, "TMA": tma})
    x_fq, _ = float8_fake_quantize_torch(x, False, None, None)
    w_fq, _ = float8_fake_quantize_torch(w, True, None, None)
    assert out.dtype == out_dtype and out.shape == (M, N)
    ref = _check_bound(out, x_fq, w_fq, bias)
    assert ((out.double() - ref).abs().max() / ref.abs().max()).item() <= REL_TOL[out_dtype]


@needs_kernels
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_gemm_nan_rows_and_columns_are_the_references(dtype):
    """NaN / inf / zero rows of x and of w: the output's NaN rows and columns are exactly the
    reference's (fp64 product of the fake-quantized values), the rest within the bound; an
    upper bound makes an inf element finite (448 * s)."""
    x, w = _poisoned(dtype, 9, 40, 1), _poisoned(dtype, 7, 40, 2)
    for a_ub in (None, 4.0):
        (xc, xs), (wc, ws) = _codes(x, False, None, a_ub), _codes(w)
        out = float8_linear(xc, xs, wc, ws, None, dtype, config=CFG)
        x_fq, _ = float8_fake_quantize_torch(x, False, None, a_ub)
        w_fq, _ = float8_fake_quantize_torch(w, False, None, None)
        ref = _check_bound(out, x_fq, w_fq, None, f"ub={a_ub}")
        assert (~ref.isnan()).any() and ref.isnan().any()
        assert not ref[2].isnan().all() if a_ub else ref[2].isnan().all()  # the inf row


@needs_kernels
def test_values_overflowing_the_dtype_give_non_finite_outputs_where_the_reference_does():
    """fp16 x at its largest value: its fake-quantized value dt(448 * dt(m / 448)) overflows to
    inf in the reference, so that row is inf / NaN there; the GEMM (which multiplies q * s in
    fp32) gives NaN on such rows, finite values elsewhere. The same for an fp32 weight whose
    fake-quantized row overflows fp16 when the layer casts it to x's dtype."""
    x = torch.randn(4, 128, dtype=torch.float16)
    x[0, 0] = 65504.0
    w = torch.randn(6, 128, dtype=torch.float16)
    w[1, 0] = 0
    (xc, xs), (wc, ws) = _codes(x), _codes(w)
    out = float8_linear(xc, xs, wc, ws, None, torch.float16, config=CFG)
    x_fq, _ = float8_fake_quantize_torch(x, False, None, None)
    w_fq, _ = float8_fake_quantize_torch(w, False, None, None)
    assert x_fq[0].isinf().any()  # the reference's own overflow
    ref = _check_bound(out, x_fq, w_fq, None)
    assert (~torch.isfinite(ref[0])).all() and torch.isfinite(ref[1:]).all()
    # an fp32 weight row of values beyond fp16's range: the layer's column goes non-finite
    torch.manual_seed(3)
    lin, _ = _layers(torch.float16, "per_row", "per_row")
    lin.weight.data = lin.weight.data.float()
    with torch.no_grad():
        lin.weight[5] *= 1e6
    xs16 = torch.randn(3, 72, dtype=torch.float16)
    got = lin(xs16)
    w_ref = tq.fake_quantize(lin.weight.detach(), lin.weight_config).to(torch.float16)
    x_ref = tq.fake_quantize(xs16, lin.activation_config)
    assert w_ref[5].isinf().any()
    _check_bound(got, x_ref, w_ref, lin.bias.detach().to(torch.float16))
    conv = tq.convert(lin.eval())
    torch.testing.assert_close(conv(xs16), lin(xs16), rtol=0, atol=0, equal_nan=True)


def test_config_is_checked():
    for bad in ({**CFG, "BLOCK_K": 64}, {**CFG, "BLOCK_M": 48}, {**CFG, "TMA": 2}):
        with pytest.raises(ValueError, match="config"):
            check_float8_config(bad)


def _layers(dtype, a_gran="per_row", w_gran="per_tensor", lb=1e-12, ub=None):
    act, w = tq.Float8Config(a_gran, lb, ub), tq.Float8Config(w_gran)
    ao_act = Float8FakeQuantizeConfig(
        granularity=PerTensor() if a_gran == "per_tensor" else PerRow(), hp_value_lb=lb,
        hp_value_ub=ub,
    )  # fmt: skip
    ao_w = Float8FakeQuantizeConfig(granularity=PerTensor() if w_gran == "per_tensor" else PerRow())
    lin = tq.Linear(72, 24, activation=act, weight=w, dtype=dtype)
    ref = ao_qat.FakeQuantizedLinear(72, 24, activation_config=ao_act, weight_config=ao_w,
                                     dtype=dtype)  # fmt: skip
    ref.weight, ref.bias = lin.weight, lin.bias
    return lin, ref


@pytest.fixture
def op_calls(monkeypatch):
    """How often the fp8 GEMM op ran (so a test knows which path it checked)."""
    calls = []
    real = f8.float8_linear_op

    def counting(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(torch.ops.triton_qat, "float8_linear", counting, raising=False)
    return calls


@needs_kernels
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("grans", [("per_row", "per_tensor"), ("per_tensor", "per_row")], ids=str)
def test_layer_runs_the_fp8_gemm_with_torchaos_values_and_gradients(dtype, grans):
    """Output within the fp64 bound of torchao's own module's fake-quantized values; the
    gradients of x, w and the bias (an fp32 bias on a 16-bit layer too) equal torchao's: the
    same GEMMs on the same re-derived values, then torchao's float8 gradient."""
    torch.manual_seed(0)
    lin, ref = _layers(dtype, *grans)
    x = torch.randn(3, 5, 72, dtype=dtype, requires_grad=True)
    assert f8.fp8_gemm_runs(x, lin.activation_config)
    y, y_ref = lin(x), ref(x)
    assert y.dtype == dtype and y.shape == y_ref.shape
    x_fq = ref.activation_fake_quantizer(x.detach()).reshape(15, 72)
    w_fq = ref.weight_fake_quantizer(lin.weight.detach())
    _check_bound(y.detach().reshape(15, 24), x_fq, w_fq, lin.bias.detach().to(dtype))
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, lin.weight, lin.bias], g)
    want = torch.autograd.grad(y_ref, [x, ref.weight, ref.bias], g)
    for a, b, what in zip(got, want, ("x", "w", "bias"), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape, what
        torch.testing.assert_close(a, b, equal_nan=True, msg=what)


@needs_kernels
def test_fp32_and_weight_only_keep_the_dequantized_path():
    lin, _ = _layers(torch.float32)
    assert not f8.fp8_gemm_runs(torch.randn(2, 72), lin.activation_config)
    assert not f8.fp8_gemm_runs(torch.randn(2, 72, dtype=torch.bfloat16), tq.NOT_QUANTIZED)
    assert f8.fp8_gemm_runs(torch.randn(2, 72, dtype=torch.bfloat16), lin.activation_config)
    # a weight narrower than x (bf16 with fp16 inputs) takes the dequantized path, whose w_fq
    # is rounded in bf16 (the fp8 GEMM's epilogue scale never rounds it: 1.5e-3 off in fp16)
    half = torch.randn(2, 72, dtype=torch.float16)
    assert not f8.fp8_gemm_runs(half, lin.activation_config, torch.bfloat16)
    assert f8.fp8_gemm_runs(half, lin.activation_config, torch.float32)
    assert f8.fp8_gemm_runs(half, lin.activation_config, torch.float16)
    bf16 = tq.Linear(72, 24, activation=tq.Float8Config(), weight=tq.Float8Config())
    bf16 = bf16.to(torch.bfloat16)
    w_fq = tq.fake_quantize(bf16.weight.detach(), bf16.weight_config)
    ref = tq.fake_quantize(half, bf16.activation_config).double() @ w_fq.double().T
    ref = ref + bf16.bias.double()
    err = ((bf16(half).double() - ref).abs().max() / ref.abs().max()).item()
    assert err <= 5e-4, err  # the fp8 GEMM's unrounded code * scale: 1.1e-3 .. 1.6e-3
    bf16.eval()
    assert torch.equal(tq.convert(bf16)(half), bf16(half))


@needs_kernels
def test_backward_keeps_nothing_weight_sized():
    """The saved tensors are x and the weight itself (no codes, no fake-quantized copy)."""
    lin, _ = _layers(torch.bfloat16)
    x = torch.randn(4, 72, dtype=torch.bfloat16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = lin(x)
    own = {x.untyped_storage().data_ptr(), lin.weight.untyped_storage().data_ptr()}
    assert saved and all(t.untyped_storage().data_ptr() in own for t in saved)
    y.sum().backward()
    assert lin.weight.grad is not None and x.grad is not None


@needs_kernels
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_converted_layer_runs_the_same_fp8_gemm(dtype):
    """tq.convert keeps the prepared eval output's bits on the fp8 path: the stored codes are the
    codes the prepared forward makes, a NaN weight row included."""
    torch.manual_seed(0)
    lin, _ = _layers(dtype, "per_row", "per_row", lb=None)
    with torch.no_grad():
        lin.weight[2] = 0  # a NaN row of w_fq: a NaN column of the output
    lin.eval()
    x = torch.randn(2, 7, 72, dtype=dtype)
    want = lin(x)
    conv = tq.convert(lin)
    got = conv(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    assert got[..., 2].isnan().all() and not got[..., 3].isnan().any()
    assert conv(x[:0]).shape == (0, 7, 24)


@needs_kernels
def test_compile_fullgraph_and_opcheck():
    torch._dynamo.reset()
    lin, _ = _layers(torch.bfloat16)
    x = torch.randn(6, 72, dtype=torch.bfloat16, requires_grad=True)
    y = lin(x)
    yc = torch.compile(lin, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(yc, y, rtol=0, atol=0)
    (gc,) = torch.autograd.grad(yc.sum(), x)
    (ge,) = torch.autograd.grad(lin(x).sum(), x)
    torch.testing.assert_close(gc, ge, rtol=0, atol=0)
    xs = torch.randn(5, 40, dtype=torch.bfloat16)
    w = torch.randn(9, 40, dtype=torch.float32)
    b = torch.randn(9, dtype=torch.float32)
    torch.library.opcheck(
        torch.ops.triton_qat.float8_linear, (xs, w, b, False, 1e-12, None, True, None, None)
    )
    codes, scale = f8.float8_weight_codes(w, tq.Float8Config())
    # test_schema left out: torch's schema check does arithmetic on the float8 codes input,
    # which has no CPU kernel ("mul_cpu_reduced_float" not implemented for Float8_e4m3fn)
    torch.library.opcheck(
        torch.ops.triton_qat.float8_linear_codes,
        (xs, codes, scale, None, True, None, 8.0, torch.float32),
        test_utils=("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"),
    )


@needs_kernels
def test_model_trains_on_the_fp8_path():
    torch.manual_seed(0)
    cfg = tq.Float8Config()
    model = nn.Sequential(tq.Linear(32, 32, activation=cfg, weight=cfg, dtype=torch.bfloat16),
                          nn.ReLU(), tq.Linear(32, 8, activation=cfg, weight=cfg,
                                               dtype=torch.bfloat16))  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    x, target = torch.randn(16, 32, dtype=torch.bfloat16), torch.randn(16, 8, dtype=torch.bfloat16)
    losses = []
    for _ in range(3):
        loss = (model(x) - target).float().pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


# -- autotuning: the fp8 GEMM is a tuned kernel like the others --------------------------------
def test_every_candidate_is_a_valid_cache_entry_and_runs_the_kernel_checks():
    from triton_qat.autotune.cache import valid_entry
    from triton_qat.autotune.space import CURATED, candidates, default_config

    hopper = 227 * 1024
    got = candidates("f8fwd", (8192, 4096, 4096), 9, 2, hopper, curated=True)
    assert got[0] == default_config("f8fwd", (8192, 4096, 4096), False, 0, 2, 9)
    assert 8 <= len(got) <= len(CURATED["f8fwd"]) + 1
    ada = candidates("f8fwd", (8192, 4096, 4096), 8, 2, 99 * 1024, curated=True)
    assert ada and all(c["TMA"] == 0 for c in ada)  # TMA is Hopper's
    key = "f8fwd|M8192|N4096|K4096|bfloat16|"
    for c in got + ada + candidates("f8fwd", (8192, 4096, 4096), 9, 2, hopper):
        check_float8_config(c)
        assert valid_entry(key, {"config": c}), c
    assert not valid_entry(key, {"config": {**got[0], "BLOCK_K": 64}})  # the numerics' 128
    for bad in ({"num_warps": 2}, {"num_stages": 1}, {"BLOCK_M": 16}):  # no Gluon tile: a cache
        assert not valid_entry(key, {"config": {**got[0], "GLUON": 1, **bad}}), bad  # rejects it
    assert not valid_entry(key, {"config": {**got[0], "DEQUANT": 0}})  # not its keys


@needs_kernels
def test_tuning_stores_the_fp8_gemm_for_16_bit_layers_only(tmp_path, monkeypatch):
    from triton_qat import autotune
    from triton_qat.autotune.tune import LinearShape, tune

    monkeypatch.setenv("TRITON_QAT_CACHE_DIR", str(tmp_path))
    autotune._cache_for.cache_clear()
    try:
        cpu = torch.device("cpu")
        res = tune(LinearShape(32, 128, 48, torch.bfloat16), cpu, ("f8fwd",), store=False)
        assert set(res) == {"f8fwd"} and res["f8fwd"]["key"] == "f8fwd|M32|N48|K128|bfloat16|"
        assert res["f8fwd"]["config"]["BLOCK_K"] == F8_BLOCK_K and res["f8fwd"]["ms"] > 0
        assert tune(LinearShape(32, 128, 48, torch.float32), cpu, ("f8fwd",), store=False) == {}
    finally:
        autotune._cache_for.cache_clear()


@needs_kernels
def test_gluon_config_runs_the_triton_kernel_where_gluon_cannot():
    """A GLUON config (the sm_90 Gluon kernel, kernels/gemm_float8_gluon.py) off an sm_90 GPU
    (here the interpreter) runs the Triton kernel: the same bits as the config without it."""
    torch.manual_seed(1)
    x, w = torch.randn(40, 256, dtype=torch.bfloat16), torch.randn(24, 256, dtype=torch.bfloat16)
    (xc, xs), (wc, ws) = _codes(x), _codes(w)
    cfg = {**CFG, "BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2, "TMA": 1}
    outs = [float8_linear(xc, xs, wc, ws, None, torch.bfloat16, config={**cfg, "GLUON": g})
            for g in (0, 1)]  # fmt: skip
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="GLUON"):
        check_float8_config({**CFG, "GLUON": 1})  # 1 warp: no wgmma warpgroup


def test_layer_plans_take_a_gluon_config_where_the_device_runs_gluon(monkeypatch):
    """The layer's plan passes the device's Gluon capability on: with a GLUON config on a device
    that runs Gluon (faked here) the plan holds the Gluon kernel's plan; elsewhere none."""
    from triton_qat import autotune
    from triton_qat.autotune.space import F8_HOPPER_DEFAULT
    from triton_qat.kernels.gemm_int8_gluon import gluon_available

    if not gluon_available():
        pytest.skip("this Triton has no Gluon Hopper API")
    looked_up = autotune.gemm_config

    def gluon_cfg(kernel, *args, **kwargs):
        cfg = looked_up(kernel, *args, **kwargs)
        return {**F8_HOPPER_DEFAULT, "GLUON": 1} if kernel == "f8fwd" else cfg

    monkeypatch.setattr(autotune, "gemm_config", gluon_cfg)
    x = torch.randn(16, 256, dtype=torch.bfloat16)
    for runs in (False, True):
        monkeypatch.setattr(f8, "float8_gluon_device", lambda device, r=runs: r)
        f8._PLANS.clear()
        plan = f8._plans(x, 32, 256, False, (False, None, None), None)[2]
        assert (plan.gluon is not None) == runs
    f8._PLANS.clear()


def test_fp8_capability_query_compiles_without_a_graph_break(monkeypatch):
    """fp8_gemm_runs asks the GPU's compute capability inside the layer's forward, which
    torch.compile traces (fullgraph): the query is a constant to Dynamo (faked GPU here)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    torch._dynamo.reset()

    def fn(x):
        return x + 1 if f8._fp8_capable(torch.device("cuda", 0)) else x - 1

    assert torch.equal(torch.compile(fn, fullgraph=True, backend="eager")(torch.zeros(2)),
                       torch.ones(2))  # fmt: skip
    torch._dynamo.reset()
