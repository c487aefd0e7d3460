"""Float8 (e4m3) QAT, issue 30 part A: bit-identical to torchao's own Float8FakeQuantizer /
FakeQuantizedLinear objects (values and gradients), kernel vs twin vs reference, the library
paths (prepare through QATConfig, from/to_torchao, compile fullgraph, opcheck), bad configs;
``tq.convert`` to ``QuantizedFloat8Linear`` (bit-identical to the prepared layer in eval mode) and
what a converted module supports (state dicts, safetensors, casts, autocast, meta, compile)."""

import copy

import pytest
import torch
import triton
import triton.language as tl
from safetensors.torch import load_file, save_file
from torch import nn

import triton_qat as tq
from kernels.quantize_float8 import _div_by_scale, float8_quantize
from kernels.quantize_float8_torch import (
    float8_fake_quantize_backward_torch,
    float8_fake_quantize_torch,
)
from triton_qat.reference import float8_fake_quantize_ref, float8_scale_ref

ao_qat = pytest.importorskip("torchao.quantization.qat")
from torchao.quantization import Float8DynamicActivationFloat8WeightConfig  # noqa: E402
from torchao.quantization.granularity import PerRow, PerTensor  # noqa: E402
from torchao.quantization.qat import Float8FakeQuantizeConfig, QATConfig  # noqa: E402
from torchao.quantization.qat.fake_quantizer import Float8FakeQuantizer  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
BOUNDS = [(None, None), (1e-12, None), (0.01, 2.0), (None, 1.0), (1.001, None)]


def _exact(a, b, what=""):
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=what)
    fin = ~a.isnan()
    assert torch.equal(torch.signbit(a[fin]), torch.signbit(b[fin])), what  # -0.0 kept


def _hard_input(dtype, R=9, K=37, seed=0):
    """Odd shape; a zero row, NaN and inf rows, subnormals, tiny and huge rows, ties."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(R, K, generator=g) * 3
    x[1] = 0
    x[2, 3] = float("nan")
    x[3, 1] = float("inf")
    x[4, :5] = torch.tensor([1e-40, -1e-39, 3e-41, 0.0, -0.0])
    x[5] *= 1e-3
    x[6] *= 1000  # beyond 448 * scale where an upper bound clamps
    x[7, 2] = -x[7].abs().max()  # a tie for the row max
    x[7, 9] = x[7].abs().max()
    x[8, 4] = float("-inf")
    return x.to(dtype)


def _grad_match(got, want, x, g, per_tensor, lb=None, ub=None, what=""):
    """The gradient against torchao's: bit-exact in bf16 / fp16 and everywhere on the torch
    backend. fp32 on the kernel backends: bit-exact but at the elements whose |x| is the row's
    (tensor's) max, which carry the scale's gradient, whose two fp32 sums the kernel adds in
    another order than torch: there within 2 K 2^-24 (sum |g q| + sum |gt x / s^2|) / 448 /
    count + one fp32 ulp (docs/numerics.md "Float8", backward)."""
    from triton_qat.dispatch import backend

    if got.dtype != torch.float32 or backend(got.device) == "torch":
        return _exact(got, want, what)
    x2d, g2d = x.detach().reshape(-1, x.shape[-1]), g.reshape(-1, x.shape[-1]).float()
    dims = (0, 1) if per_tensor else (1,)
    m = x2d.abs().amax(dim=dims, keepdim=True)
    at_max = (x2d.abs() == m).reshape(got.shape)
    _exact(got[~at_max], want[~at_max], what)
    _, s = float8_fake_quantize_torch(x2d, per_tensor, lb, ub)
    t = x2d.float() / s
    q = torch.clamp(t, -448, 448).to(torch.float8_e4m3fn).float()
    gt = (g2d * s).to(torch.float8_e4m3fn).float()
    size = (g2d * q).abs().sum(dims, keepdim=True) + (gt * t / s).abs().sum(dims, keepdim=True)
    size = size.nan_to_num(nan=float("inf"))  # a non-finite row: its values are NaN (checked)
    cnt = (x2d.abs() == m).sum(dims, keepdim=True).clamp_min(1)
    bound = (2 * x2d.numel() * 2.0**-24 * size / 448 / cnt).expand(x2d.shape).reshape(got.shape)
    a, b = got[at_max].double(), want[at_max].double()
    fin = ~b.isnan()
    assert torch.equal(a.isnan(), b.isnan()), what
    err = (a - b).abs()[fin]
    ulp = b[fin].abs() * 2.0**-23
    assert (err <= bound[at_max][fin].double() + ulp).all(), f"{what}: {err.max()}"


def _ao(granularity, lb, ub):
    g = PerTensor() if granularity == "per_tensor" else PerRow()
    return Float8FakeQuantizer(
        Float8FakeQuantizeConfig(granularity=g, hp_value_lb=lb, hp_value_ub=ub)
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("granularity", ["per_row", "per_tensor"])
def test_fake_quantize_bit_identical_to_torchao(dtype, granularity):
    """tq.fake_quantize (the op -> kernel) == torchao's Float8FakeQuantizer, values and
    gradients, on finite rows and, separately, on the hard rows (NaN / inf / zero rows)."""
    for lb, ub in BOUNDS:
        cfg = tq.Float8Config(granularity, lb, ub)
        for x in (_hard_input(dtype), _hard_input(dtype)[[0, 4, 5, 6, 7]].reshape(1, 5, 37)):
            x = x.clone().requires_grad_(True)
            y_ao = _ao(granularity, lb, ub)(x)
            y = tq.fake_quantize(x, cfg)
            _exact(y, y_ao, f"{dtype} {granularity} {lb} {ub}")
            g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
            (gx_ao,) = torch.autograd.grad(y_ao, x, g)
            (gx,) = torch.autograd.grad(y, x, g)
            _grad_match(gx, gx_ao, x, g, granularity == "per_tensor", lb, ub,
                        f"grad {dtype} {granularity} {lb} {ub}")  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernel_twin_reference_agree(dtype):
    for per_tensor in (False, True):
        for lb, ub in BOUNDS:
            x = _hard_input(dtype, R=13, K=67, seed=3)
            y_k, s_k = float8_quantize(x, per_tensor, lb, ub)
            y_t, s_t = float8_fake_quantize_torch(x, per_tensor, lb, ub)
            cfg = tq.Float8Config("per_tensor" if per_tensor else "per_row", lb, ub)
            _exact(y_k, y_t)
            _exact(y_k, float8_fake_quantize_ref(x, cfg))
            _exact(s_k, s_t)
            _exact(s_k, float8_scale_ref(x, cfg))
            assert s_k.dtype == torch.float32


def test_reference_and_twin_gradients_equal_torchao():
    for dtype in DTYPES:
        for gran in ("per_row", "per_tensor"):
            x = _hard_input(dtype)[[0, 5, 6, 7]].requires_grad_(True)
            g = torch.randn(x.shape).to(dtype)
            (want,) = torch.autograd.grad(_ao(gran, 0.01, 2.0)(x), x, g)
            (got,) = torch.autograd.grad(
                float8_fake_quantize_ref(x, tq.Float8Config(gran, 0.01, 2.0)), x, g
            )
            _exact(got, want)
            _, s = float8_fake_quantize_torch(x.detach(), gran == "per_tensor", 0.01, 2.0)
            twin = float8_fake_quantize_backward_torch(
                g, x.detach(), s, gran == "per_tensor", 0.01, 2.0
            )
            _exact(twin, want)


def test_gradient_is_torchao_not_plain_ste():
    """torchao's gradient flows through the scale into the row's max |x| and its STE part is
    rounded to e4m3: a plain STE would give g itself."""
    x = torch.tensor([[1.0, 2.0, -4.0, 0.5]], requires_grad=True)
    g = torch.tensor([[0.3, 0.0, 0.0, 0.0]])
    (gx,) = torch.autograd.grad(tq.fake_quantize(x, tq.Float8Config()), x, g)
    assert abs(gx[0, 0].item() - 0.21875) < 1e-6  # fp8(0.3 * 4/448) / (4/448), not 0.3
    assert gx[0, 2] != 0 and gx[0, 1] == 0  # the max's element gets the scale's gradient


def _pair(dtype, a_gran="per_row", w_gran="per_row", lb=1e-12):
    act = tq.Float8Config(a_gran, hp_value_lb=lb)
    w = tq.Float8Config(w_gran)
    ao_act = Float8FakeQuantizeConfig(
        granularity=PerTensor() if a_gran == "per_tensor" else PerRow(), hp_value_lb=lb
    )
    ao_w = Float8FakeQuantizeConfig(granularity=PerTensor() if w_gran == "per_tensor" else PerRow())
    lin = tq.Linear(37, 19, activation=act, weight=w, dtype=dtype)
    ref = ao_qat.FakeQuantizedLinear(
        37, 19, activation_config=ao_act, weight_config=ao_w, dtype=dtype
    )
    ref.weight, ref.bias = lin.weight, lin.bias
    return lin, ref


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "grans", [("per_row", "per_row"), ("per_tensor", "per_row"), ("per_row", "per_tensor")]
)
def test_linear_equals_torchao_fake_quantized_linear(dtype, grans, monkeypatch):
    """The dequantized path (fp32, weight-only, the torch backend, GPUs without fp8 tensor
    cores): bit-identical to torchao's module. The fp8 GEMM path at 16-bit dtypes is held to the
    fp64 bound in tests/test_float8_gemm.py."""
    import triton_qat.float8 as f8

    monkeypatch.setattr(f8, "fp8_gemm_runs", lambda x, activation, w_dtype=None: False)
    torch.manual_seed(0)
    lin, ref = _pair(dtype, *grans)
    x = torch.randn(3, 5, 37, dtype=dtype, requires_grad=True)
    y, y_ref = lin(x), ref(x)
    _exact(y, y_ref)  # the same F.linear on the same fake-quantized values
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, lin.weight, lin.bias], g)
    want = torch.autograd.grad(y_ref, [x, ref.weight, ref.bias], g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, equal_nan=True)  # the dtype's default bound


def test_prepare_qatconfig_and_torchao_round_trip():
    torch.manual_seed(0)
    base = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    model = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 16))
    twin = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 16))
    twin.load_state_dict(model.state_dict())
    tq.prepare(model, QATConfig(base))
    assert isinstance(model[0], tq.Linear) and isinstance(model[0].weight_config, tq.Float8Config)
    from torchao.quantization import quantize_

    quantize_(twin, QATConfig(base, step="prepare"))
    x = torch.randn(4, 32)
    _exact(model(x), twin(x))
    tq.to_torchao(model)
    assert isinstance(model[0], ao_qat.FakeQuantizedLinear)
    _exact(model(x), twin(x))
    tq.from_torchao(model)
    assert isinstance(model[2], tq.Linear) and model[2].weight_config == tq.Float8Config()
    _exact(model(x), twin(x))
    want = model.eval()(x)
    tq.convert(model)
    assert isinstance(model[0], tq.QuantizedFloat8Linear)
    _exact(model(x), want)


def test_double_backward_raises_instead_of_a_wrong_second_order_graph():
    """``create_graph=True`` through a float8 fake quantization (the op, the layer on its eager
    direct path and through the dispatcher, the float8-int4 weight) raises the project's message
    at once: the backward kernel has no gradient of its own. First-order gradients still run."""
    from triton_qat import calls

    x = torch.randn(5, 32, requires_grad=True)
    f8 = tq.Float8Config()
    layers = [tq.Linear(32, 8, activation=f8, weight=f8),
              tq.Linear(32, 8, activation=f8, weight=tq.Float8Int4WeightConfig(16))]  # fmt: skip
    runs = [lambda: tq.fake_quantize(x, f8)] + [lambda lin=lin: lin(x) for lin in layers]
    prev = calls.set_enabled(True)
    try:
        for direct in (True, False):  # the eager direct path, then through the ops
            calls.set_enabled(direct)
            for run in runs:
                with pytest.raises(RuntimeError, match="double backward"):
                    torch.autograd.grad(run().square().sum(), x, create_graph=True)
                (g,) = torch.autograd.grad(run().square().sum(), x)
                assert g.shape == x.shape and not g.requires_grad
    finally:
        calls.set_enabled(prev)


def test_compile_fullgraph_and_opcheck():
    torch._dynamo.reset()
    lin = tq.Linear(24, 8, activation=tq.Float8Config("per_tensor"), weight=tq.Float8Config())
    x = torch.randn(5, 24, requires_grad=True)
    y = lin(x)
    yc = torch.compile(lin, fullgraph=True)(x)
    _exact(yc, y)
    (gc,) = torch.autograd.grad(yc.sum(), x)
    (ge,) = torch.autograd.grad(lin(x).sum(), x)
    _exact(gc, ge)
    xs = torch.randn(3, 17)
    for per_tensor in (False, True):
        torch.library.opcheck(
            torch.ops.triton_qat.float8_fake_quantize, (xs, per_tensor, 1e-12, None)
        )
        _, s = torch.ops.triton_qat.float8_fake_quantize(xs, per_tensor, None, None)
        torch.library.opcheck(
            torch.ops.triton_qat.float8_fake_quantize_backward,
            (torch.randn(3, 17), xs, s, per_tensor, None, None),
        )


def test_bad_configs_name_the_argument():
    with pytest.raises(TypeError, match="bits"):
        tq.Float8Config(bits=8)
    with pytest.raises(TypeError, match="symmetric"):
        tq.Float8Config(symmetric=False)
    with pytest.raises(ValueError, match="granularity"):
        tq.Float8Config("per_group")
    with pytest.raises(ValueError, match="dtype"):
        tq.Float8Config(dtype=torch.float8_e5m2)
    with pytest.raises(ValueError, match="hp_value_lb"):
        tq.Float8Config(hp_value_lb=2.0, hp_value_ub=1.0)
    with pytest.raises(ValueError, match="activation"):
        tq.Linear(8, 8, activation=tq.QuantConfig(), weight=tq.Float8Config())
    with pytest.raises(ValueError, match="activation"):
        tq.Linear(
            8,
            8,
            activation=tq.Float8Config(),
            weight=tq.QuantConfig(granularity="per_channel", symmetric=True),
        )


# -- convert: QuantizedFloat8Linear ----------------------------------------------------------

F8_LINEARS = {  # tq.Linear keyword arguments
    "row-row": dict(activation=tq.Float8Config(hp_value_lb=1e-12), weight=tq.Float8Config()),
    "tensor-tensor": dict(
        activation=tq.Float8Config("per_tensor"), weight=tq.Float8Config("per_tensor")
    ),
    "row-tensor-bounds": dict(
        activation=tq.Float8Config(hp_value_lb=0.01, hp_value_ub=2.0),
        weight=tq.Float8Config("per_tensor", hp_value_lb=0.5),
    ),
    "tensor-row-bounds": dict(
        activation=tq.Float8Config("per_tensor"), weight=tq.Float8Config(hp_value_ub=0.05)
    ),
    "weight-only": dict(activation=tq.NOT_QUANTIZED, weight=tq.Float8Config()),
}


def _codes_equal(a, b) -> bool:
    """Float8 buffers compared by their bits (torch.equal has no float8 CPU kernel)."""
    if a.dtype == torch.float8_e4m3fn:
        a, b = a.view(torch.uint8), b.view(torch.uint8)
    return a.dtype == b.dtype and torch.equal(a, b)


def _f8_linear(name, dtype=torch.float32, K=37, N=19, bias=True, device="cpu"):
    return tq.Linear(K, N, bias, device=device, dtype=dtype, **F8_LINEARS[name]).eval()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(F8_LINEARS))
def test_convert_equals_prepared_eval(name, dtype):
    """Converted == prepared eval, bit for bit (NaN rows too): the stored codes dequantize to
    the bits of the fake-quantized weight the QAT forward used."""
    torch.manual_seed(0)
    for K, N, bias in ((67, 13, True), (8, 1, False)):
        lin = _f8_linear(name, dtype, K, N, bias)
        with torch.no_grad():  # a zero row (NaN without a lower bound), a huge and a tiny row
            lin.weight[0] = 0
            lin.weight[-1] *= 1e3 if N > 1 else 1
        conv = tq.convert(lin)
        assert isinstance(conv, tq.QuantizedFloat8Linear)
        assert conv.weight_codes.dtype == torch.float8_e4m3fn and conv.weight_codes.shape == (N, K)
        rows = 1 if lin.weight_config.per_tensor else N
        assert conv.weight_scale.shape == (rows, 1) and conv.weight_scale.dtype == torch.float32
        _exact(conv.dequantized_weight(), tq.fake_quantize(lin.weight, lin.weight_config))
        for shape in ((3, 5, K), (K,)):
            x = torch.randn(shape, dtype=dtype)
            _exact(conv(x), lin(x), f"{name} {dtype} {shape}")


def _on_e4m3_grid(weight):
    """Rows of e4m3 values times 2^-e with a row max of 448 * 2^-e: fake quantization gives the
    same codes and scales (and values) in fp32, fp16 and bf16."""
    N, K = weight.shape
    q = (torch.randn(N, K) * 60).clamp(-448, 448).to(torch.float8_e4m3fn).float()
    q[:, 0] = 448.0
    step = 2.0 ** -torch.randint(2, 8, (N, 1)).float()
    with torch.no_grad():
        weight.copy_(q * step)


_CASTS = {
    "to-bf16": (torch.float32, lambda m: m.to(torch.bfloat16)),
    "half": (torch.float32, lambda m: m.half()),
    "bf16-trained-float": (torch.bfloat16, lambda m: m.float()),
}


@pytest.mark.parametrize("cast", list(_CASTS))
def test_convert_cast_autocast_and_empty_inputs(cast):
    """As the int family (tests/test_converted.py): a dtype cast casts the dtype w_fq is formed
    in and the bias, not the codes or scales; on weights every dtype quantizes alike, the cast
    converted layer equals the prepared layer cast the same way. Autocast gives the autocast
    dtype, as tq.Linear; empty inputs give empty outputs."""
    dtype, fn = _CASTS[cast]
    torch.manual_seed(0)
    lin = _f8_linear("row-row", dtype, K=32, N=24)
    _on_e4m3_grid(lin.weight)
    conv = tq.convert(copy.deepcopy(lin))
    codes, scale = conv.weight_codes.clone(), conv.weight_scale.clone()
    assert fn(conv) is conv
    fn(lin)
    new = lin.weight.dtype
    assert conv.weight_dtype == new and conv.bias.dtype == new
    assert _codes_equal(conv.weight_codes, codes) and torch.equal(conv.weight_scale, scale)
    x = torch.randn(3, 5, 32, dtype=new)
    _exact(conv(x), lin(x))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got, want = conv(x.float()), lin(x.float())
    assert want.dtype == torch.bfloat16
    _exact(got, want)
    for shape in [(0, 32), (2, 0, 32)]:
        x = torch.randn(shape, dtype=new)
        got, want = conv(x), lin(x)
        assert got.shape == want.shape == (*shape[:-1], 24) and got.dtype == want.dtype == new
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = conv(torch.randn(0, 32))
    assert got.shape == (0, 24) and got.dtype == torch.bfloat16
    conv.double()
    with pytest.raises(TypeError, match=r"QuantizedFloat8Linear.*float64"):
        conv(torch.randn(2, 32))


@pytest.mark.parametrize("name", ["row-row", "tensor-row-bounds", "weight-only"])
def test_convert_state_dict_safetensors_and_meta_skeleton(name, tmp_path):
    """State dicts hold tensors only: a strict load into a fresh skeleton (built directly, or a
    prepared layer converted on the meta device then ``to_empty``), safetensors save / load."""
    torch.manual_seed(0)
    lin = _f8_linear(name, torch.bfloat16, K=32, N=24)
    conv = tq.convert(copy.deepcopy(lin))
    x = torch.randn(4, 32, dtype=torch.bfloat16)
    want = conv(x)
    state = conv.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    save_file(state, tmp_path / "f8.safetensors")
    loaded = load_file(tmp_path / "f8.safetensors")
    assert loaded["weight_codes"].dtype == torch.float8_e4m3fn
    cfg = F8_LINEARS[name]
    fresh = tq.QuantizedFloat8Linear(32, 24, **cfg)
    meta = tq.convert(tq.Linear(32, 24, **cfg).to("meta"))
    built_meta = tq.QuantizedFloat8Linear(32, 24, device="meta", **cfg)
    for m in (meta, built_meta):
        assert all(b.is_meta for b in m.buffers())
        m.to_empty(device="cpu")
    for other, sd in ((fresh, state), (meta, loaded), (built_meta, loaded)):
        other.load_state_dict(sd, strict=True)
        assert other.weight_dtype == torch.bfloat16
        for k, v in conv.state_dict().items():
            assert _codes_equal(other.state_dict()[k].to(v.dtype), v), k
        _exact(other.to(torch.bfloat16)(x), want)


def test_convert_compile_fullgraph_equals_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    conv = tq.convert(_f8_linear("row-tensor-bounds", torch.bfloat16, K=24, N=8))
    x = torch.randn(5, 24, dtype=torch.bfloat16)
    _exact(torch.compile(conv, fullgraph=True)(x), conv(x))


def test_mixed_int_and_float8_model_converts_all_or_nothing():
    torch.manual_seed(0)
    model = nn.Sequential(
        tq.Linear(32, 48, **F8_LINEARS["row-row"]),
        nn.ReLU(),
        tq.Linear(48, 16),
        tq.Linear(16, 16, **F8_LINEARS["tensor-tensor"]),
    ).eval()
    x = torch.randn(3, 32)
    want = model(x)
    broken = copy.deepcopy(model)
    broken[3].double()  # a float64 weight: the float8 op refuses it
    with pytest.raises(TypeError, match=r"^3: dtype: expected float32"):
        tq.convert(broken)
    assert [type(m) for m in broken] == [tq.Linear, nn.ReLU, tq.Linear, tq.Linear]
    tq.convert(model)
    assert [type(m) for m in model] == [
        tq.QuantizedFloat8Linear, nn.ReLU, tq.QuantizedLinear, tq.QuantizedFloat8Linear,
    ]  # fmt: skip
    assert torch.equal(model(x), want)
    stored = tq.weight_nbytes(model)["stored"]
    f8_row = 48 * 32 + 4 * 48 + 4 * 48  # 1-byte codes, fp32 scales per row, fp32 bias
    int8 = 16 * 48 + 3 * 4 * 16  # codes, scales, code sums, bias
    f8_tensor = 16 * 16 + 4 + 4 * 16
    assert stored == f8_row + int8 + f8_tensor


def test_tied_float8_linears_share_their_codes():
    lin = tq.Linear(16, 16, **F8_LINEARS["row-row"])
    model = nn.Sequential(lin, nn.Linear(16, 16))
    model[1] = tq.Linear(16, 16, **F8_LINEARS["row-row"])
    model[1].weight = lin.weight
    tq.convert(model)
    assert model[1].weight_codes is model[0].weight_codes
    assert model[1].weight_scale is model[0].weight_scale


def test_quantized_float8_linear_arguments_are_checked():
    with pytest.raises(ValueError, match="in_features: expected a positive int"):
        tq.QuantizedFloat8Linear(0, 8)
    with pytest.raises(ValueError, match="out_features: expected a positive int"):
        tq.QuantizedFloat8Linear(8, 0)
    with pytest.raises(TypeError, match="dtype: expected float32, float16 or bfloat16"):
        tq.QuantizedFloat8Linear(8, 8, dtype=torch.float64)
    with pytest.raises(TypeError, match="weight: expected a triton_qat.Float8Config"):
        tq.QuantizedFloat8Linear(8, 8, weight=tq.QuantConfig())
    with pytest.raises(TypeError, match="activation: expected a triton_qat.Float8Config"):
        tq.QuantizedFloat8Linear(8, 8, activation=tq.QuantConfig())


# -- float8 activations, int4 weights (torchao's Float8DynamicActivationInt4WeightConfig) ------
def _int4_weight_fq(group_size=128):
    from torchao.quantization.qat.fake_quantize_config import Int4WeightFakeQuantizeConfig
    from torchao.quantization.qat.fake_quantizer import Int4WeightFakeQuantizer

    return Int4WeightFakeQuantizer(
        Int4WeightFakeQuantizeConfig(group_size=group_size, activation_dtype=torch.float8_e4m3fn)
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("group_size", [128, 32])
def test_float8_int4_weight_values_and_gradients_are_torchaos(dtype, group_size):
    """Bit-identical values and gradients with torchao's Int4WeightFakeQuantizer (fp8
    activations): zero, tiny, huge and NaN rows, a row whose groups clamp at the scale floor."""
    g = torch.Generator().manual_seed(group_size)
    w = torch.randn(7, 256, generator=g)
    w[1] = 0
    w[2] *= 1e-7  # group scales at the 1e-6 floor
    w[3] *= 1e3
    w[4, 5] = float("nan")
    w = w.to(dtype).requires_grad_(True)
    cfg = tq.Float8Int4WeightConfig(group_size)
    got = tq.fake_quantize(w, cfg)
    want = _int4_weight_fq(group_size)(w)
    _exact(got, want)
    gy = torch.randn_like(got)
    (g_got,) = torch.autograd.grad(got, w, gy)
    (g_want,) = torch.autograd.grad(want, w, gy)
    # fp32 on the kernel backends: the float8 step's scale gradient (at each row's max |w|) sums
    # in another order than torch (_grad_match); elsewhere bit-exact
    at_max = w.detach().abs() == w.detach().abs().amax(1, keepdim=True)
    if dtype == torch.float32:
        _exact(g_got[~at_max], g_want[~at_max])
        torch.testing.assert_close(g_got[at_max], g_want[at_max], rtol=1e-5, atol=1e-6,
                                   equal_nan=True)  # fmt: skip
    else:
        _exact(g_got, g_want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_float8_int4_linear_prepare_round_trip_and_convert(dtype):
    from torchao.quantization import Float8DynamicActivationInt4WeightConfig, quantize_

    torch.manual_seed(0)
    base = Float8DynamicActivationInt4WeightConfig()
    model = nn.Sequential(nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 8)).to(dtype)
    twin = copy.deepcopy(model)
    tq.prepare(model, QATConfig(base), filter_fn=lambda m, fqn: fqn == "0")
    quantize_(twin, QATConfig(base, step="prepare"), filter_fn=lambda m, fqn: fqn == "0")
    assert isinstance(model[0], tq.Linear) and isinstance(model[2], nn.Linear)
    assert model[0].weight_config == tq.Float8Int4WeightConfig(128)
    assert model[0].activation_config == tq.Float8Config("per_row")
    x = torch.randn(5, 256, dtype=dtype, requires_grad=True)
    y, y_ref = model(x), twin(x)
    _exact(y, y_ref)
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, model[0].weight], gy)
    want = torch.autograd.grad(y_ref, [x, twin[0].weight], gy)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, equal_nan=True)
    tq.to_torchao(model)
    assert isinstance(model[0], ao_qat.FakeQuantizedLinear)
    _exact(model(x), y_ref)
    tq.from_torchao(model)
    assert model[0].weight_config == tq.Float8Int4WeightConfig(128)
    want = model.eval()(x)
    tq.convert(model)  # bit-identical (more in tests/test_convert_fp.py)
    assert isinstance(model[0], tq.QuantizedFloat8Linear) and model[0].int4
    _exact(model(x), want)


def test_float8_int4_bad_configs_name_the_argument():
    with pytest.raises(ValueError, match="group_size"):
        tq.Float8Int4WeightConfig(0)
    with pytest.raises(ValueError, match="group_size=128 does not divide in_features=96"):
        tq.Linear(96, 8, activation=tq.Float8Config(), weight=tq.Float8Int4WeightConfig())
    with pytest.raises(ValueError, match="activation"):
        tq.Linear(128, 8, activation=tq.Float8Int4WeightConfig(),
                  weight=tq.Float8Int4WeightConfig())  # fmt: skip
    with pytest.raises(ValueError, match="weight"):
        tq.fake_quantize(torch.randn(4, 96), tq.Float8Int4WeightConfig())


def test_prepare_with_float8_configs_directly():
    """tq.prepare(model, activation=, weight=) with float8 configs (not only through QATConfig);
    a layer whose in_features the int4 group does not divide is left float and named."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 96), nn.ReLU(), nn.Linear(96, 8))
    ref = copy.deepcopy(model)
    f8 = tq.prepare(copy.deepcopy(model), activation=tq.Float8Config(hp_value_lb=1e-12),
                    weight=tq.Float8Config())  # fmt: skip
    assert isinstance(f8[0], tq.Linear) and isinstance(f8[2], tq.Linear)
    x = torch.randn(3, 256)
    lin = f8[0]
    _exact(lin(x), tq.qat_linear(x, ref[0].weight, ref[0].bias, lin.activation_config,
                                 lin.weight_config))  # fmt: skip
    with pytest.warns(UserWarning, match="group_size=128 does not divide"):
        i4 = tq.prepare(copy.deepcopy(model), activation=tq.Float8Config(),
                        weight=tq.Float8Int4WeightConfig())  # fmt: skip
    assert isinstance(i4[0], tq.Linear) and type(i4[2]) is nn.Linear


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("per_tensor", [False, True])
def test_backward_kernel_equals_twin(dtype, per_tensor):
    """_f8_backward_kernel (launch_float8_backward) against the twin on the hard rows and a
    wide random block, every bound: bit-exact in bf16 / fp16; fp32 bit-exact but at the max
    elements (the scale gradient's sums, _grad_match's bound)."""
    from triton_qat.dispatch import backend
    from triton_qat.kernels.quantize_float8 import launch_float8_backward, plan_float8_quantize

    if backend("cpu") == "torch":
        pytest.skip("the kernel runs on the kernel backends")
    ties = torch.randn(3, 2100)  # 257 / 2049 elements at the row max: torch divides the share
    ties[1, :2049] = 5.0  # by the count rounded to x's dtype (256 in bf16, 2048 in fp16)
    ties[2, :257] = -5.0
    for lb, ub in BOUNDS:
        for x in (_hard_input(dtype), (torch.randn(5, 300) * 3).to(dtype), ties.to(dtype)):
            g = torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).to(dtype)
            _, s = float8_fake_quantize_torch(x, per_tensor, lb, ub)
            want = float8_fake_quantize_backward_torch(g, x, s, per_tensor, lb, ub)
            plan = plan_float8_quantize(x.shape[1], dtype, per_tensor, lb, ub, False, True)
            got = launch_float8_backward(plan, g, x, s)
            _grad_match(got, want, x, g, per_tensor, lb, ub, f"{dtype} {per_tensor} {lb} {ub}")


# -- the fast rows of the quantize kernel: x / s without a divide (docs/numerics.md "Float8") ----
SMALLEST_FAST_SCALE = 2.0**-90  # kernels/quantize_float8.py _fast_division


@triton.jit
def _div_kernel(x_ptr, s_ptr, out_ptr, N, NARROW: tl.constexpr, BS: tl.constexpr,
                BN: tl.constexpr):  # fmt: skip
    """out[i, j] = _div_by_scale(x[j], s[i], RN(1 / s[i])), fp32."""
    o_s = tl.program_id(0) * BS + tl.arange(0, BS)
    o_n = tl.program_id(1) * BN + tl.arange(0, BN)
    x = tl.load(x_ptr + o_n, mask=o_n < N, other=0.0)[None, :]
    s = tl.load(s_ptr + o_s)[:, None]
    r = tl.div_rn(tl.full([BS, 1], 1.0, tl.float32), s)
    q = _div_by_scale(x, s, r, NARROW)
    tl.store(out_ptr + o_s[:, None] * N + o_n[None, :], q, mask=(o_n < N)[None, :])


def _check_division(x: torch.Tensor, s: torch.Tensor, narrow: bool, what: str) -> int:
    """``_div_by_scale`` of every x by every s (fp32 values) against torch's IEEE x / s: the
    same bits where |x / s| >= 2**-11 (every quotient that can reach an e4m3 rounding boundary),
    elsewhere below 2**-10 (e4m3 zero) with x's sign; pairs whose quotient passes 2**99 (the
    fast rows' bound) are left out. Returns the number of pairs compared bit for bit."""
    BS, BN = 64, 1 << 14
    N = x.numel()
    x, s = x.to(DIV_DEVICE), s.to(DIV_DEVICE)
    got = torch.empty(s.numel(), N, device=DIV_DEVICE)
    _div_kernel[(s.numel() // BS, -(-N // BN))](x, s, got, N, NARROW=narrow, BS=BS, BN=BN)
    want = x[None, :] / s[:, None]
    inside = want.abs() <= 2.0**99
    exact = inside & (want.abs() >= 2.0**-11)
    diff = exact & (got.view(torch.int32) != want.view(torch.int32))
    assert not diff.any(), f"{what}: {diff.sum().item()} quotients differ, e.g. " + str(
        [(x[j].item(), s[i].item()) for i, j in diff.nonzero()[:3].tolist()]
    )
    tiny = inside & ~exact
    assert (got[tiny].abs() < 2.0**-10).all(), what
    assert torch.equal(got[tiny].signbit(), want[tiny].signbit()), what
    return int(exact.sum())


# the helper runs compiled on a GPU (its FFMAs), else in Triton's interpreter (an exact fma)
DIV_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


_CVT_PROBE = r"""
import json, triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from kernels.quantize_float8 import e4m3_cvt_capability

@triton.jit
def cast(x_ptr, y_ptr):
    o = tl.arange(0, 128)
    x = tl.load(x_ptr + o)
    tl.store(y_ptr + o, x.to(tl.float8e4nv).to(tl.float32))
    tl.store(y_ptr + 128 + o, x.to(tl.float8e5).to(tl.float32))

src = triton.compiler.ASTSource(fn=cast, signature={"x_ptr": "*fp32", "y_ptr": "*fp32"},
                                constexprs={})
out = {}
for cc in (89, 90, 100, 120):
    ptx = triton.compile(src, target=GPUTarget("cuda", cc, 32)).asm["ptx"]
    direct = ("cvt.rn.satfinite.e4m3x2.f32" in ptx and "cvt.rn.satfinite.e5m2x2.f32" in ptx
              and "cvt.rz" not in ptx)
    out[cc] = [direct, e4m3_cvt_capability((cc // 10, cc % 10))]
print(json.dumps(out))
"""


def test_hardware_fp8_conversion_only_where_triton_compiles_the_direct_instruction(tmp_path):
    """The kernels take Triton's fp32 -> e4m3 / e5m2 cast as the hardware's correctly rounded
    conversion (:func:`e4m3_cvt_capability`) exactly where this Triton compiles it to
    ``cvt.rn.satfinite.e4m3x2.f32`` / ``e5m2x2.f32`` alone: Triton 3.6 goes through
    ``cvt.rz.f16.f32`` first on sm_89 (a double rounding), 3.9 does not; on sm_80 Triton has no
    e4m3 cast at all, so the bit-level rounding runs there."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from kernels.quantize_float8 import e4m3_cvt_capability

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(root)}
    probe = tmp_path / "cvt_probe.py"  # (a file: @triton.jit reads its function's source)
    probe.write_text(_CVT_PROBE)
    res = subprocess.run([sys.executable, str(probe)], env=env, capture_output=True, text=True,
                         timeout=300, cwd=root)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    by_cc = json.loads(res.stdout.strip().splitlines()[-1])
    assert by_cc["90"] == [True, True] and not e4m3_cvt_capability((8, 0)), by_cc
    assert all(direct == gate for direct, gate in by_cc.values()), by_cc


@pytest.mark.skipif(DIV_DEVICE == "cpu" and __import__("os").environ.get("TRITON_INTERPRET") != "1",
                    reason="Triton runs on CPU tensors only in its interpreter")  # fmt: skip
def test_division_without_a_divide_is_ieee_for_every_half_precision_pair():
    """The quantize kernel's fast rows divide by the row's scale with one product and one FMA
    correction for bf16 / fp16 rows: exact for every pair of a finite x and a scale's
    significand: every bf16 / fp16 value against every bf16 significand, and every 8th fp16
    one and the 16 just below 2 (all 1024 passed once, 13 s), at 2**0 and at the smallest scale
    (the residual's exactness depends on the exponents only through underflow, which the bound
    rules out; 2**-90 for bf16, fp16's subnormal scales). fp32 rows take two corrections
    (Markstein's theorem), checked on random and adversarial pairs (significands just below
    2); the backward's e4m3 gradient over an fp32 scale takes one, checked on the same
    scales."""
    for dt, bits, exps in ((torch.bfloat16, 7, (-90, 0)), (torch.float16, 10, (-24, 0))):
        x = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dt).float()
        x = x[x.isfinite()]
        m = torch.arange(2**bits, dtype=torch.float64)
        if dt == torch.float16:  # every 8th significand and the last 16 (1024: 13 s, run once)
            m = torch.cat([m[::8], m[-16:]])
        s = torch.cat([((1 + m / 2**bits) * 2.0**e).to(dt).float() for e in exps]).unique()
        s = s[s >= SMALLEST_FAST_SCALE]
        s = torch.cat([s, s[: (-s.numel()) % 64]])  # whole blocks of 64 scales
        assert _check_division(x, s, True, str(dt)) > 100 * 2**14
    g = torch.Generator().manual_seed(0)
    below_two = 2 - torch.randint(1, 64, (1024,), generator=g).double() * 2.0**-23
    s = torch.cat([torch.rand(1024, generator=g).double() + 1, below_two])
    s = (s * 2.0 ** torch.randint(-90, 100, (2048,), generator=g)).float()
    x = torch.cat([torch.randn(2048, generator=g).double(), below_two])
    x = (x * 2.0 ** torch.randint(-120, 120, (3072,), generator=g)).float()
    assert _check_division(x, s, False, "fp32") > 10**6
    # the backward's gt / s: gt an e4m3 value (at most 4 significant bits), s any fp32 scale:
    # one correction (every e4m3 significand against every fp32 one passed once, in C)
    e4m3 = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).float()
    assert _check_division(e4m3[e4m3.isfinite()], s, True, "e4m3 / fp32") > 10**5


def _boundary_rows(dtype):
    """Rows at the fast division's bounds: a plain row; signed zeros and tiny values in a normal
    row; a scale of exactly 2**-90 (fast) and just below (the IEEE rows); a zero row; an inf; a
    row whose max over the bound's scale passes 2**100; a row at the dtype's largest value."""
    x = torch.randn(10, 40, generator=torch.Generator().manual_seed(4))
    x[1, :6] = torch.tensor([0.0, -0.0, -1e-30, 1e-30, -3e-39, 2.0**-20])
    x[2] = x[2] / x[2].abs().max() * 448 * 2.0**-90  # s = 2**-90 where the max is exact
    x[2, 0] = 448 * 2.0**-90
    x[3] = x[3] / x[3].abs().max() * 440 * 2.0**-90
    x[4] = 0
    x[5, 7] = float("-inf")
    x[6] = x[6] * 1e30
    x[7] = x[7] * torch.finfo(dtype).max / 8
    x[7, 3] = torch.finfo(dtype).max
    x[8] *= 1e-3
    return x.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bounds", [(None, None), (1e-12, None), (None, 1e-10), (None, 1.0)],
                         ids=str)  # fmt: skip
def test_rows_on_both_sides_of_the_fast_division_bounds(dtype, bounds):
    """The kernel's fast rows (product, correction, hardware-style conversion) and its IEEE rows
    agree with the twin bit for bit, values, scales and e4m3 codes, on rows either side of each
    bound of _fast_division, per row and per tensor."""
    from triton_qat.dispatch import backend
    from triton_qat.kernels.quantize_float8 import launch_float8_codes, plan_float8_quantize

    if backend("cpu") == "torch":
        pytest.skip("the kernel runs on the kernel backends")
    x = _boundary_rows(dtype)
    for per_tensor in (False, True):
        for rows in (x, x[[0, 1, 2, 8]], x[[3, 5]]):  # per tensor: fast and IEEE tensors
            what = f"{dtype} {bounds} per_tensor={per_tensor} rows={rows.shape[0]}"
            y_k, s_k = float8_quantize(rows, per_tensor, *bounds)
            y_t, s_t = float8_fake_quantize_torch(rows, per_tensor, *bounds)
            _exact(y_k, y_t, what)
            _exact(s_k, s_t, what)
            plan = plan_float8_quantize(rows.shape[1], dtype, per_tensor, *bounds, False, True)
            codes, gscale = launch_float8_codes(plan, rows)
            want = torch.clamp(rows.float() / s_t, -448, 448).to(torch.float8_e4m3fn)
            assert torch.equal(codes.view(torch.uint8), want.view(torch.uint8)), what
            bad = want.float().isnan().any(1) | y_t.isinf().any(1)
            expect = torch.where(bad, float("nan"), s_t.expand(rows.shape[0], 1)[:, 0])
            _exact(gscale, expect, what)


def _backward_boundary_rows(dtype):
    """Rows either side of each bound of the backward's fast divisions (_f8_backward_fast), in
    fp32 / bf16 (fp16's range reaches none of the sums' bounds: its rows there are inf or
    zero): a plain row; one whose smallest nonzero |x| is below 2**-100 (IEEE sums, fast
    output) and one just above it (fast sums); a scale of 2**61 with an element of 2**20, below
    2**-100 s^2 (IEEE sums); a scale of 2**101 (both IEEE); scales of 2**-90 and just below;
    zero, inf and NaN rows; signed zeros; a max of 2**90, whose m / s^2 passes 2**100 under an
    upper bound of 1 while m / s does not (IEEE sums, fast output)."""
    x = torch.randn(12, 40, generator=torch.Generator().manual_seed(5))
    x[1, 5] = 2.0**-110
    x[2] = x[2] / x[2].abs().max() * 448 * 2.0**61
    x[2, 7] = 2.0**20
    x[3] = x[3] / x[3].abs().max() * 448 * 2.0**101
    x[4] = x[4] / x[4].abs().max() * 448 * 2.0**-90
    x[5] = x[5] / x[5].abs().max() * 440 * 2.0**-90
    x[6] = 0
    x[7, 2] = float("inf")
    x[8, 3] = float("nan")
    x[9, :3] = torch.tensor([0.0, -0.0, -(2.0**-100)])
    x[10] = x[10] / x[10].abs().max() * 2.0**90
    x[11] = x[11] / x[11].abs().max() * 448
    x[11, 4] = -1.5 * 2.0**-100
    return x.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("per_tensor", [False, True])
def test_backward_rows_on_both_sides_of_the_fast_division_bounds(dtype, per_tensor):
    """_f8_backward_kernel's fast passes (sums and output) and its IEEE ones agree with the
    twin (_grad_match: bit-exact in bf16 / fp16, fp32 but at the max elements) on rows either
    side of each bound, with NaN / inf / huge gradient elements in fast rows too."""
    from triton_qat.dispatch import backend
    from triton_qat.kernels.quantize_float8 import launch_float8_backward, plan_float8_quantize

    if backend("cpu") == "torch":
        pytest.skip("the kernel runs on the kernel backends")
    x = _backward_boundary_rows(dtype)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(6))
    g[0, :3] = torch.tensor([float("nan"), float("inf"), -1e30])
    g = g.to(dtype)
    for bounds in ((None, None), (1e-12, None), (None, 1.0)):
        for rows in ((x, g), (x[[0, 1, 2, 9, 11]], g[[0, 1, 2, 9, 11]]), (x[[0, 4]], g[[0, 4]])):
            _, s = float8_fake_quantize_torch(rows[0], per_tensor, *bounds)
            want = float8_fake_quantize_backward_torch(rows[1], rows[0], s, per_tensor, *bounds)
            plan = plan_float8_quantize(x.shape[1], dtype, per_tensor, *bounds, False, True)
            got = launch_float8_backward(plan, rows[1], rows[0], s)
            _grad_match(got, want, rows[0], rows[1], per_tensor, *bounds,
                        f"{dtype} {per_tensor} {bounds} rows={rows[0].shape[0]}")  # fmt: skip
