"""tq.Linear (torchao numerics): forward and all gradients against an fp64 product of the same
fake-quantized values, shapes, toggles, conversion, saved-activation memory, bad input."""

import copy
import dataclasses

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from conftest import DTYPES, assert_close_rel, dt_id
from torch import nn

import triton_qat as tq
from triton_qat.reference import fake_quantize_with_mask, qat_linear_ref

CONFIGS = {
    "default": (tq.QuantConfig(), tq.QuantConfig(granularity="per_channel", symmetric=True)),
    "sym-act-i4g32": (
        tq.QuantConfig(symmetric=True),
        tq.QuantConfig(bits=4, granularity="per_group", group_size=32, symmetric=True),
    ),
    "per-tensor": (
        tq.QuantConfig(granularity="per_tensor"),
        tq.QuantConfig(granularity="per_tensor", symmetric=True),
    ),
}


def _fp64_reference(x, lin, act, wcfg):
    """Output and gradients of F.linear over the fake-quantized values, in fp64, with STE masks."""
    x_fq, mx = fake_quantize_with_mask(x.detach(), act)
    w_fq, mw = fake_quantize_with_mask(lin.weight.detach(), wcfg)
    xd = x_fq.double().requires_grad_()
    wd = w_fq.double().requires_grad_()
    bd = lin.bias.detach().double().requires_grad_()
    out = F.linear(xd, wd, bd)
    return out, xd, wd, bd, mx, mw


@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
@pytest.mark.parametrize("cfg", list(CONFIGS), ids=list(CONFIGS))
@pytest.mark.parametrize(
    "lead", [(1,), (3,), (13,), (67,), (2, 3, 5)], ids=lambda s: "x".join(map(str, s))
)
def test_linear_forward_backward(lead, cfg, dtype, device):
    act, wcfg = CONFIGS[cfg]
    lin = tq.Linear(96, 40, activation=act, weight=wcfg, device=device, dtype=dtype)
    x = (torch.randn(*lead, 96, device=device) * 2).to(dtype).requires_grad_()
    out = lin(x)
    dy = torch.randn_like(out)
    out.backward(dy)
    ref, xd, wd, bd, mx, mw = _fp64_reference(x, lin, act, wcfg)
    ref.backward(dy.double())
    assert out.shape == (*lead, 40) and out.dtype == dtype
    assert_close_rel(out, ref, dtype, "out")
    assert_close_rel(x.grad, xd.grad * mx, dtype, "grad_x")
    assert_close_rel(lin.weight.grad, wd.grad * mw, dtype, "grad_w")
    assert_close_rel(lin.bias.grad, bd.grad, dtype, "grad_bias")


def test_non_contiguous_input(device):
    lin = tq.Linear(40, 24, device=device)
    base = torch.randn(40, 6, 5, device=device)
    x = base.permute(1, 2, 0)  # [6, 5, 40], not contiguous
    assert not x.is_contiguous()
    assert torch.equal(lin(x), lin(x.contiguous()))


def test_no_bias_and_frozen_input(device):
    lin = tq.Linear(40, 24, bias=False, device=device)
    x = torch.randn(5, 40, device=device)  # no grad wanted for x: only grad_w is computed
    lin(x).sum().backward()
    assert (
        lin.bias is None and lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()
    )


def test_disable_fake_quant_is_exact_linear(device):
    lin = tq.Linear(40, 24, device=device)
    x = torch.randn(7, 40, device=device)
    ref = F.linear(x, lin.weight, lin.bias)
    assert not torch.equal(lin(x), ref)
    lin.disable_fake_quant()
    assert torch.equal(lin(x), ref)
    lin.enable_fake_quant()
    assert not torch.equal(lin(x), ref)


def test_from_float_shares_parameters_and_to_float(device):
    fl = nn.Linear(40, 24, device=device)
    opt = torch.optim.SGD(fl.parameters(), lr=0.1)
    q = tq.Linear.from_float(fl)
    assert q.weight is fl.weight and q.bias is fl.bias
    before = fl.weight.detach().clone()
    q(torch.randn(3, 40, device=device)).sum().backward()
    opt.step()
    assert not torch.equal(before, fl.weight)
    back = q.to_float()
    assert type(back) is nn.Linear and back.weight is q.weight and back.bias is q.bias
    x = torch.randn(3, 40, device=device)
    assert torch.equal(back(x), fl(x))


def test_saved_activation_memory_is_int8_plus_bits(device):
    """bf16 input: backward keeps codes + per-row qparams + 1-bit mask, <= 1.25 B/element, not x."""
    M, K, N = 64, 128, 32
    lin = tq.Linear(K, N, device=device, dtype=torch.bfloat16)
    x = torch.randn(M, K, device=device, dtype=torch.bfloat16, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lin(x)
    assert all(t.data_ptr() != x.data_ptr() for t in saved), "x itself must not be saved"
    per_token = [t for t in saved if t.dim() >= 1 and t.shape[0] == M]
    act_bytes = sum(t.numel() * t.element_size() for t in per_token)
    assert act_bytes / (M * K) <= 1.25, f"{act_bytes / (M * K):.3f} bytes per activation element"


def test_non_finite_token_only_affects_its_row(device):
    lin = tq.Linear(40, 24, device=device)
    x = torch.randn(6, 40, device=device)
    x[2, 5] = float("nan")
    x.requires_grad_()
    out = lin(x)
    keep = [0, 1, 3, 4, 5]
    clean = lin(x.detach()[keep])
    assert torch.equal(out[keep], clean) and torch.isnan(out[2]).all()
    out[keep].sum().backward()
    assert torch.isfinite(x.grad[keep]).all()


def test_empty_batch(device):
    lin = tq.Linear(40, 24, device=device)
    x = torch.randn(0, 40, device=device, requires_grad=True)
    out = lin(x)
    assert out.shape == (0, 24)
    out.sum().backward()
    assert x.grad.shape == (0, 40) and torch.equal(lin.bias.grad, torch.zeros(24, device=device))


@pytest.mark.parametrize(
    "make_input,exc,needle",
    [
        (lambda d: torch.randn(3, 41, device=d), ValueError, "in_features = 40"),
        (lambda d: torch.randint(0, 5, (3, 40), device=d), TypeError, "input"),
        (lambda d: torch.randn(3, 40, dtype=torch.complex64, device=d), TypeError, "input"),
        (lambda d: torch.tensor(1.0, device=d), ValueError, "input"),
        (lambda d: [[1.0] * 40], TypeError, "input"),
    ],
    ids=["wrong-features", "int", "complex", "0-dim", "list"],
)
def test_bad_input(make_input, exc, needle, device):
    lin = tq.Linear(40, 24, device=device)
    with pytest.raises(exc, match=needle):
        lin(make_input(device))


def test_mismatched_devices():
    """The weight on one device, the input on another (cuda vs cpu where a GPU exists, else meta)."""
    other = "cuda" if torch.cuda.is_available() else "meta"
    lin = tq.Linear(40, 24, device=other)
    with pytest.raises(ValueError, match="input: expected device"):
        lin(torch.randn(3, 40))


@pytest.mark.parametrize(
    "kwargs,exc,needle",
    [
        (
            dict(
                weight=tq.QuantConfig(bits=4, granularity="per_group", group_size=7, symmetric=True)
            ),
            ValueError,
            "group_size",
        ),
        (
            dict(activation=tq.QuantConfig(granularity="per_channel", symmetric=True)),
            ValueError,
            "activation",
        ),
        (dict(weight=tq.QuantConfig()), ValueError, "weight"),
        (dict(weight=tq.QuantConfig(granularity="per_tensor")), ValueError, "symmetric"),
        (dict(activation="int8"), TypeError, "activation"),
    ],
    ids=[
        "group-not-dividing",
        "act-per-channel",
        "weight-per-token",
        "weight-asym",
        "not-a-config",
    ],
)
def test_bad_module_config(kwargs, exc, needle):
    with pytest.raises(exc, match=needle):
        tq.Linear(40, 24, **kwargs)


def test_fp32_parameters_bf16_input(device):
    """Mixed precision: the weight is fake-quantized in its own dtype (fp32), as torchao does
    before autocast casts the result; output and grad_x in bf16, parameter grads in fp32."""
    lin = tq.Linear(64, 24, device=device)  # fp32 parameters
    x = torch.randn(5, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
    out = lin(x)
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16 and x.grad.dtype == torch.bfloat16
    assert lin.weight.grad.dtype == torch.float32 and lin.bias.grad.dtype == torch.float32
    w_fq, _ = fake_quantize_with_mask(lin.weight.detach(), lin.weight_config)  # fp32 numerics
    x_fq, _ = fake_quantize_with_mask(x.detach(), lin.activation_config)
    ref = x_fq.double() @ w_fq.double().T + lin.bias.double()
    assert_close_rel(out, ref, torch.bfloat16, "out")
    lin.eval()
    assert torch.equal(tq.convert(lin)(x.detach()), lin(x.detach()))


NARROW_WEIGHT_CONFIGS = {
    "per_channel": tq.QuantConfig(granularity="per_channel", symmetric=True),
    "per_tensor": tq.QuantConfig(granularity="per_tensor", symmetric=True),
    "int4 g32": tq.QuantConfig(bits=4, granularity="per_group", group_size=32, symmetric=True),
    "int4 g32 asym": tq.QuantConfig(bits=4, granularity="per_group", group_size=32,
                                    symmetric=False),
}  # fmt: skip


@pytest.mark.parametrize("w_cfg", list(NARROW_WEIGHT_CONFIGS), ids=str)
@pytest.mark.parametrize(
    "w_dtype,x_dtype",
    [(torch.bfloat16, torch.float32), (torch.float16, torch.float32),
     (torch.bfloat16, torch.float16)],
    ids=["bf16w-fp32x", "fp16w-fp32x", "bf16w-fp16x"],
)  # fmt: skip
def test_weight_narrower_than_input_forms_w_fq_in_its_dtype(device, w_cfg, w_dtype, x_dtype):
    """A weight with fewer mantissa bits than x: the forward is ``x_fq @ w_fq.T`` with w_fq
    rounded in the weight's dtype (the values the backward uses, docs/numerics.md), within x's
    dtype's bound, where the int8 GEMM computed the unrounded ``q * s`` (2e-3 off in fp32) and
    the forward's two paths disagreed; convert stays bit-identical to the prepared eval."""
    cfg = NARROW_WEIGHT_CONFIGS[w_cfg]
    lin = tq.Linear(64, 24, weight=cfg, device=device).to(w_dtype)
    x = torch.randn(5, 64, device=device, dtype=x_dtype, requires_grad=True)
    out = lin(x)
    assert out.dtype == x_dtype
    w_fq, w_mask = fake_quantize_with_mask(lin.weight.detach(), cfg)  # in the weight's dtype
    x_fq, x_mask = fake_quantize_with_mask(x.detach(), lin.activation_config)
    ref = x_fq.double() @ w_fq.double().T + lin.bias.double()
    assert_close_rel(out, ref, x_dtype, "out")
    # at fp16 the int8 GEMM's unrounded q * s was 1.2e-3 .. 1.8e-3 off, inside fp16's bound:
    # the product of the bf16 w_fq is a few fp16 roundings (2e-4 .. 3e-4)
    err = ((out.detach().double() - ref).abs().max() / ref.abs().max()).item()
    assert x_dtype != torch.float16 or err <= 5e-4, err
    dy = torch.randn_like(out)
    out.backward(dy)
    assert_close_rel(x.grad, (dy.double() @ w_fq.double()) * x_mask, x_dtype, "grad_x")
    lin.eval()
    assert torch.equal(tq.convert(lin)(x.detach()), lin(x.detach()))


def test_autocast_output_dtype_like_nn_linear(device):
    lin = tq.Linear(64, 24, device=device)
    ref = nn.Linear(64, 24, device=device)
    x = torch.randn(5, 64, device=device, requires_grad=True)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        out, want = lin(x), ref(x)
    assert out.dtype == want.dtype == torch.bfloat16
    out.float().sum().backward()
    assert x.grad.dtype == torch.float32 and lin.weight.grad.dtype == torch.float32


def test_strided_bias_and_weight(device):
    w_big = torch.randn(24, 80, device=device)
    b_big = torch.randn(24, 3, device=device)
    x = torch.randn(5, 40, device=device)
    w, b = w_big[:, ::2], b_big[:, 1]
    assert not w.is_contiguous() and not b.is_contiguous()
    assert torch.equal(tq.qat_linear(x, w, b), tq.qat_linear(x, w.contiguous(), b.contiguous()))


@pytest.mark.parametrize(
    "weight,bias,needle",
    [
        (torch.randn(40), None, "weight: expected 2 dims"),
        (torch.randn(24, 40), torch.randn(1), r"bias: expected shape \(24,\)"),
        (torch.randn(24, 40), torch.randn(4, 24), r"bias: expected shape \(24,\)"),
        (torch.randn(24, 40), torch.arange(24), "bias"),
    ],
    ids=["1d-weight", "bias-1", "bias-2d", "int-bias"],
)
def test_bad_weight_or_bias(weight, bias, needle):
    with pytest.raises((ValueError, TypeError), match=needle):
        tq.qat_linear(torch.randn(3, 40), weight, bias)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dt_id)
def test_large_and_infinite_rows_match_the_reference(dtype, device):
    """A constant 1e36 token must not overflow the GEMM epilogue (the reference is finite, 7e35
    in the hostile trial); a token holding inf gives a non-finite row exactly where the reference
    does (NaN), and no other row changes."""
    lin = tq.Linear(64, 24, device=device, dtype=dtype)
    x = (torch.randn(4, 64, device=device) * 0.5).to(dtype)
    x[1] = 1e36
    x[2, 5] = float("inf")
    x[3, 0] = -float("inf")
    out = lin(x)
    ref = qat_linear_ref(x.double(), lin.weight.double(), lin.bias.double(),
                         lin.activation_config, lin.weight_config)  # fmt: skip
    ref_dt = qat_linear_ref(x, lin.weight, lin.bias, lin.activation_config, lin.weight_config)
    assert torch.equal(torch.isfinite(out), torch.isfinite(ref_dt))
    assert torch.isfinite(out[:2]).all() and not torch.isfinite(out[2:]).any()
    assert_close_rel(out[1], ref_dt[1].double(), dtype, "1e36 row")
    assert out[1].abs().max() > 1e35 and ref[1].abs().max() > 1e35


def test_double_backward_raises_instead_of_a_detached_gradient(device):
    lin = tq.Linear(32, 8, device=device)
    x = torch.randn(5, 32, device=device, requires_grad=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(lin(x).square().sum(), x, create_graph=True)
    # first-order gradients are unaffected, and a fake_quantize STE is twice differentiable
    (g,) = torch.autograd.grad(lin(x).square().sum(), x)
    assert g.shape == x.shape and not g.requires_grad
    y = tq.fake_quantize(x, tq.QuantConfig())
    (g1,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    (g2,) = torch.autograd.grad(g1.sum(), x)
    mask = fake_quantize_with_mask(x.detach(), tq.QuantConfig())[1]
    assert torch.equal(g2, 2.0 * mask.to(g2.dtype))


def test_torch_func_vmap_works_and_grad_gives_a_clear_error(device, capfd):
    lin = tq.Linear(16, 8, device=device)
    xb = torch.randn(2, 3, 16, device=device)
    per_tensor = tq.QuantConfig(granularity="per_tensor")
    capfd.readouterr()
    y = torch.func.vmap(lin)(xb)
    fq = torch.func.vmap(lambda v: tq.fake_quantize(v, per_tensor))(xb)
    # torch's vmap fallback says "not yet implemented the batching rule" on stderr (from C++, not
    # through Python's warnings): our ops have rules, so it must stay silent
    assert "batching rule" not in capfd.readouterr().err
    assert torch.equal(y, torch.stack([lin(v) for v in xb]))
    assert torch.equal(fq, torch.stack([tq.fake_quantize(v, per_tensor) for v in xb]))
    with pytest.raises(RuntimeError, match="torch.func.grad"):
        torch.func.grad(lambda v: lin(v).sum())(xb[0])
    with pytest.raises(RuntimeError, match="torch.func.grad"):
        torch.func.grad(lambda v: tq.fake_quantize(v, per_tensor).sum())(xb[0])


FORMAT_CONFIGS = {
    "int8": tq.QuantConfig(),
    "float8": tq.Float8Config(),
    "mx": tq.MXConfig(),
    "nvfp4": tq.NVFP4Config(),
}


@pytest.mark.parametrize("kind", ["int8", "weight-only", "float8", "float8-int4", "mx", "nvfp4"])
def test_forward_mode_ad_and_func_transforms_raise_instead_of_a_wrong_tangent(kind):
    """No jvp is defined for the STE ops: forward-mode AD (a dual input) and torch.func's jvp /
    jacfwd / grad raise triton_qat's error for every layer kind and fake-quant format, where
    torch dropped the tangent silently (fake_quantize, the float8 / MX / NVFP4 layers), derived a
    wrong one (torch.func.jvp of the float8 / MX layers) or raised its own error; a transform
    under vmap too. A dual_level with plain inputs, vmap in it too, still works."""
    per_channel, f8 = tq.QuantConfig(granularity="per_channel", symmetric=True), tq.Float8Config()
    act, weight = {
        "int8": (tq.QuantConfig(), per_channel),
        "weight-only": (tq.NOT_QUANTIZED, per_channel),
        "float8": (f8, f8),
        "float8-int4": (f8, tq.Float8Int4WeightConfig(group_size=32)),
        "mx": (tq.MXConfig(), tq.MXConfig()),
        "nvfp4": (tq.NVFP4Config(), tq.NVFP4Config()),
    }[kind]
    lin = tq.Linear(64, 16, activation=act, weight=weight)
    x, t = torch.randn(3, 64), torch.randn(3, 64)
    fqs = [lambda v: lin(v)]
    if kind in FORMAT_CONFIGS:
        fqs.append(lambda v: tq.fake_quantize(v, FORMAT_CONFIGS[kind]))
    xb, tb = x.reshape(3, 1, 64), t.reshape(3, 1, 64)
    for f in fqs:
        with fwAD.dual_level():
            assert torch.equal(f(x), f(x.clone()))  # plain inputs in a dual level run, vmap too
            torch.testing.assert_close(torch.func.vmap(f)(xb), torch.stack([f(r) for r in xb]))
            with pytest.raises(RuntimeError, match="triton_qat.*forward-mode AD"):
                f(fwAD.make_dual(x, t))
            with pytest.raises(RuntimeError, match="triton_qat.*forward-mode AD"):
                torch.func.vmap(f)(fwAD.make_dual(xb, tb))
        for transform in (
            lambda f=f: torch.func.jvp(f, (x,), (t,)),
            lambda f=f: torch.func.jacfwd(f)(x[:1]),
            lambda f=f: torch.func.grad(lambda v: f(v).sum())(x),
            lambda f=f: torch.func.grad(lambda v: torch.func.vmap(f)(v).sum())(xb),
            lambda f=f: torch.func.jvp(torch.func.vmap(f), (xb,), (tb,)),
        ):
            with pytest.raises(RuntimeError, match="triton_qat.*torch.func.grad / jvp"):
                transform()
    with fwAD.dual_level():  # a weight with a tangent (functional_call) is refused too
        w = fwAD.make_dual(lin.weight.detach(), torch.randn_like(lin.weight))
        with pytest.raises(RuntimeError, match="forward-mode AD"):
            torch.func.functional_call(lin, {"weight": w}, (x,))


@pytest.mark.parametrize("ops", [False, True], ids=["direct", "ops"])
@pytest.mark.parametrize(
    "kind", ["int8", "i4g32", "weight-only", "torch.ao", "float8", "learned", "learned-weight-only"]
)
def test_a_module_cast_between_forward_and_backward(kind, ops):
    """The backward re-derives w_fq from the weight parameter, which a module cast between the
    forward and its backward changes in place: cast up (bf16 -> fp32) the gradients are the
    uncast layer's bits (the backward casts back, exactly); cast down (fp32 -> bf16) the
    forward's values are gone, and it raises naming the weight (the kernels read the new dtype's
    bytes as the old one's, and the torch backend gave a silently different gradient). fp32
    float8 layers keep the values F.linear read, so they give the uncast gradients. Learned
    scales (fp32 parameters) likewise: a bf16 layer cast to bf16 again narrows only them, and
    raises naming weight_scale (the direct path's scale gradient was silently the bf16 one's)."""
    per_channel, f8 = tq.QuantConfig(granularity="per_channel", symmetric=True), tq.Float8Config()
    i4g32 = tq.QuantConfig(bits=4, granularity="per_group", group_size=32, symmetric=True)
    kw = {
        "int8": {},
        "i4g32": dict(weight=i4g32),
        "weight-only": dict(activation=tq.NOT_QUANTIZED, weight=per_channel),
        "torch.ao": dict(qconfig=torch.ao.quantization.default_dynamic_qat_qconfig),
        "float8": dict(activation=f8, weight=f8),  # bf16: the fp8 GEMM's direct path
        "learned": dict(weight=dataclasses.replace(i4g32, range_learning=True)),
        "learned-weight-only": dict(
            activation=tq.NOT_QUANTIZED, weight=dataclasses.replace(i4g32, range_learning=True)
        ),
    }[kind]
    learned = kind.startswith("learned")
    casts = [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16)]
    prev = tq.fused.set_enabled(not ops)
    try:
        for dtype, cast in casts + [(torch.bfloat16, torch.bfloat16)] * learned:
            torch.manual_seed(0)
            lin = tq.Linear(64, 24, dtype=dtype, **kw)
            twin = copy.deepcopy(lin)
            x = torch.randn(5, 64, dtype=dtype, requires_grad=True)
            dy = torch.randn(5, 24, dtype=dtype)
            params = [twin.weight, twin.bias] + ([twin.weight_scale] if learned else [])
            want = torch.autograd.grad(twin(x), [x, *params], dy)
            out = lin(x)
            lin.to(cast)
            # fp32 float8 layers run F.linear on a fake-quantized weight it keeps: no re-derivation
            if cast == torch.bfloat16 and not (kind == "float8" and dtype == torch.float32):
                name = "weight_scale" if dtype == cast else "weight"
                with pytest.raises(
                    RuntimeError, match=f"^{name}: its dtype changed from torch.float32"
                ):
                    out.backward(dy)
                continue
            out.backward(dy)
            got = [x.grad, lin.weight.grad, lin.bias.grad] + (
                [lin.weight_scale.grad] if learned else []
            )
            for g, w in zip(got, want, strict=True):
                assert torch.equal(g.to(w.dtype), w)
    finally:
        tq.fused.set_enabled(prev)


def test_compiled_inside_a_dual_level_never_drops_a_tangent():
    """A trace cannot see tangents: compiled inside a dual_level, the layers refuse the trace,
    Dynamo (no fullgraph) runs them eagerly, where a dual input raises triton_qat's error and a
    plain one works; with fullgraph=True the trace fails with that message. (The eager and
    aot_eager backends kept plain torch's tangents and dropped the converted layer's.)"""
    torch.manual_seed(0)
    lin = tq.Linear(32, 16).eval()
    conv = tq.convert(copy.deepcopy(lin))
    x = torch.randn(4, 32)
    for layer in (lin, conv):
        want = layer(x)
        for backend in ("eager", "aot_eager"):
            torch._dynamo.reset()
            f = torch.compile(lambda t, layer=layer: layer(t) + t.sum(-1, keepdim=True),
                              backend=backend)  # fmt: skip
            with fwAD.dual_level():
                with pytest.raises(RuntimeError, match="forward-mode AD"):
                    f(fwAD.make_dual(x, torch.ones_like(x)))
                assert torch.equal(f(x), want + x.sum(-1, keepdim=True))
            torch._dynamo.reset()
            strict = torch.compile(layer, backend=backend, fullgraph=True)
            with fwAD.dual_level(), pytest.raises(Exception, match="dual_level is not supported"):
                strict(x)


def test_unsupported_dtype_fails_at_construction_and_from_float_takes_qconfig():
    with pytest.raises(TypeError, match="dtype"):
        tq.Linear(16, 8, dtype=torch.float64)
    import torch.ao.quantization as q

    lin = tq.Linear.from_float(nn.Linear(16, 8), qconfig=q.default_dynamic_qat_qconfig)
    assert lin.uses_ao_numerics and lin(torch.randn(3, 16)).shape == (3, 8)
    with pytest.raises(ValueError, match="qconfig"):
        tq.Linear.from_float(nn.Linear(16, 8), qconfig=q.default_dynamic_qat_qconfig,
                             weight=tq.QuantConfig(granularity="per_channel", symmetric=True))  # fmt: skip


@pytest.mark.parametrize("group", [None, 32], ids=["perchannel", "g32"])
def test_nan_weight_channel_gives_a_nan_output_column(group, device):
    """A NaN in a weight row makes that channel's scale NaN: the reference's output column is
    NaN, and the kernel's epilogue must not drop it (tl.minimum / maximum ignore NaN)."""
    weight = tq.QuantConfig(bits=4, granularity="per_group", group_size=group, symmetric=True) \
        if group else tq.QuantConfig(granularity="per_channel", symmetric=True)  # fmt: skip
    lin = tq.Linear(64, 6, device=device, weight=weight)
    with torch.no_grad():
        lin.weight[2, 5] = float("nan")
    x = torch.randn(3, 64, device=device)
    out = lin(x)
    ref = qat_linear_ref(x, lin.weight, lin.bias, lin.activation_config, lin.weight_config)
    assert torch.equal(out.isnan(), ref.isnan()) and out[:, 2].isnan().all()
    assert torch.isfinite(out[:, [0, 1, 3, 4, 5]]).all()
