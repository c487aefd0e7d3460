"""MX (MXFP8 e4m3 / e5m2, MXFP4 e2m1) and NVFP4 QAT, issue 30 item 2: bit-identical to torchao
0.18's own objects (``MXTensor.to_mx(...).dequantize()``, ``NVFP4Tensor.to_nvfp4(...)
.dequantize()``, the ``MXFakeQuantizedLinear`` modules QATConfig makes, the NVFP4 module's
backward), kernel (TRITON_INTERPRET) and plain-torch backends, on odd shapes and poison values;
gradients, compile fullgraph, opcheck, prepare / from / to torchao, convert (more in
tests/test_convert_fp.py), bad input.

torchao's NVFP4FakeQuantizedLinear forward is a Blackwell fp4 ``_scaled_mm`` (it raises on a
CPU), so the NVFP4 layer is held to torchao's dequantized values (forward: the same ``mm`` on
them) and to its backward, called with the tensors its forward would save."""

from types import SimpleNamespace

import pytest
import torch
import triton
import triton.language as tl
from torch import nn

import triton_qat as tq
from kernels.quantize_mx import _to_e2m1, mx_quantize, nvfp4_quantize
from kernels.quantize_mx_torch import (
    mx_fake_quantize_torch,
    nvfp4_fake_quantize_torch,
    rceil_exponent,
)

pytest.importorskip("torchao.prototype.qat")
from torchao.prototype.mx_formats import (  # noqa: E402
    MXDynamicActivationMXWeightConfig,
    NVFP4DynamicActivationNVFP4WeightConfig,
)
from torchao.prototype.mx_formats.config import ScaleCalculationMode  # noqa: E402
from torchao.prototype.mx_formats.mx_tensor import MXTensor  # noqa: E402
from torchao.prototype.mx_formats.nvfp4_tensor import (  # noqa: E402
    NVFP4Tensor,
    per_tensor_amax_to_scale,
)
from torchao.prototype.qat import (  # noqa: E402
    MXFakeQuantizeConfig,
    MXFakeQuantizedLinear,
    NVFP4FakeQuantizeConfig,
    NVFP4FakeQuantizedLinear,
)
from torchao.prototype.qat.nvfp4 import (  # noqa: E402
    _NVFP4QuantizedForwardFakeQuantizedBackward as _NVFP4Autograd,
)
from torchao.quantization import quantize_  # noqa: E402
from torchao.quantization.qat import QATConfig  # noqa: E402
from torchao.quantization.quantize_.common.kernel_preference import (  # noqa: E402
    KernelPreference,
)

DTYPES = [torch.float32, torch.bfloat16]  # torchao's to_mx / to_nvfp4 reject fp16
ELEMS = [torch.float8_e4m3fn, torch.float8_e5m2, torch.float4_e2m1fn_x2]
MODES = ["floor", "rceil", "ceil", "even"]
ROWS = [1, 3, 13, 67]


def _name(elem: torch.dtype) -> str:
    return str(elem).removeprefix("torch.")


def _exact(a, b, what=""):
    """Bit-exact (NaN payloads aside), -0.0 kept."""
    assert a.dtype == b.dtype and a.shape == b.shape, what
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=what)
    fin = ~a.isnan()
    assert torch.equal(torch.signbit(a[fin]), torch.signbit(b[fin])), what


def _poisoned(rows: int, k: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Values spread over 2**+-30 and, rows allowing: a NaN, +-inf, an all-zero block,
    subnormal and tiny blocks (scales down to 2**-127), huge blocks, signed zeros."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g) * torch.exp2(
        torch.randint(-30, 30, (rows, k), generator=g)
    )
    special = [
        lambda r: r.__setitem__(3, float("nan")),
        lambda r: r.__setitem__(slice(0, 32), 0.0),
        lambda r: r.__setitem__(5, float("inf")),
        lambda r: r.__setitem__(slice(0, k), torch.randn(k, generator=g) * 1e-39),
        lambda r: r.__setitem__(slice(0, k), torch.randn(k, generator=g) * 3e38),
        lambda r: r.__setitem__(40 % k, float("-inf")),
        lambda r: r.__setitem__(slice(0, 4), torch.tensor([1e-45, -0.0, 2.0**-130, -1e-44])),
        lambda r: r.__setitem__(slice(0, k), torch.randn(k, generator=g) * 448 * 2.0**-127),
    ]
    for i, poison in enumerate(special[: max(rows - 1, 0)]):
        poison(x[i + 1])
    return x.to(dtype)


def _ao_mx(x, elem, block, mode):
    return MXTensor.to_mx(x, elem, block, ScaleCalculationMode(mode)).dequantize(x.dtype)


def _ao_nvfp4(x, per_tensor):
    pts = per_tensor_amax_to_scale(torch.max(torch.abs(x))) if per_tensor else None
    return NVFP4Tensor.to_nvfp4(x, per_tensor_scale=pts).dequantize(x.dtype)


# -- fake quantization ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("elem", ELEMS, ids=_name)
def test_mx_fake_quantize_bit_identical_to_torchao(dtype, elem):
    """Kernel, plain-torch twin and tq.fake_quantize == torchao's to_mx + dequantize, every
    scaling mode, rows 1 / 3 / 13 / 67, block sizes 32 and 16, poisoned rows."""
    for mode in MODES:
        for rows, k, block in ((1, 64, 32), (3, 96, 32), (13, 64, 16), (67, 32, 32)):
            x = _poisoned(rows, k, dtype, seed=rows)
            want = _ao_mx(x, elem, block, mode)
            what = f"{mode} rows={rows} block={block}"
            _exact(mx_quantize(x, _name(elem), block, mode), want, "kernel " + what)
            _exact(mx_fake_quantize_torch(x, _name(elem), block, mode), want, "twin " + what)
            cfg = tq.MXConfig(elem, block, mode)
            _exact(tq.fake_quantize(x.reshape(rows, -1, block), cfg), want.reshape(rows, -1, block))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("per_tensor", [True, False], ids=["per_tensor", "blocks_only"])
def test_nvfp4_fake_quantize_bit_identical_to_torchao(dtype, per_tensor):
    """Kernel, twin and tq.fake_quantize == torchao's to_nvfp4 + dequantize (the per-tensor
    scale over all of x, as the module computes it), incl. an all-zero tensor (NaN with a
    per-tensor scale: 0 / 0) and a 3-D input."""
    cfg = tq.NVFP4Config(use_per_tensor_scale=per_tensor)
    cases = [_poisoned(r, 64, dtype, seed=r) for r in ROWS]
    cases += [_poisoned(13, 64, dtype)[9:], torch.zeros(3, 32, dtype=dtype)]  # finite, zeros
    for x in cases:
        want = _ao_nvfp4(x, per_tensor)
        _exact(nvfp4_quantize(x, per_tensor), want, f"kernel {tuple(x.shape)}")
        _exact(nvfp4_fake_quantize_torch(x, per_tensor), want, f"twin {tuple(x.shape)}")
        _exact(tq.fake_quantize(x, cfg), want)
    x3 = _poisoned(13, 64, dtype)[9:].reshape(2, 2, 64)
    _exact(tq.fake_quantize(x3, cfg), NVFP4Tensor.to_nvfp4(x3, per_tensor_scale=(
        per_tensor_amax_to_scale(x3.abs().max()) if per_tensor else None)).dequantize(dtype))  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nvfp4_tiny_tensor_matches_torchao(dtype):
    """A tensor below ~5e-34 with the per-tensor scale: ``(1 / pts) / s8`` overflows to inf,
    so ``x * r`` is NaN at the zeros (0 * inf) and e2m1 has no NaN; torchao's bit arithmetic
    gives that NaN a code (this CPU's ``0 * inf`` NaN: -1.5), and the kernel and the twin give
    the same value (a tiny nonzero), nonzero elements saturating as torchao's do."""
    x = torch.randn(4, 32) * 1e-35
    x[1] *= 1e-4  # small blocks: s8 < 0.3, so (1 / pts) / s8 > 1e38 / 0.3 overflows
    x[1, :3] = 0
    x[1, 3:5] = -0.0  # the kernel takes the block's 0 * inf NaN for every zero's: either sign
    x[3, 16:] = 0  # a whole block of zeros: its s8 is 2**-6, the largest multiplier
    x[0, :3] = 0  # a block whose multiplier is finite: zeros stay zeros
    x = x.to(dtype)
    want = _ao_nvfp4(x, True)
    assert (want[1, :5] != 0).all() and want.isfinite().all() and (want[0, :3] == 0).all()
    assert (want[3, 16:] != 0).all()
    _exact(nvfp4_quantize(x, True), want, "kernel")
    _exact(nvfp4_fake_quantize_torch(x, True), want, "twin")
    _exact(tq.fake_quantize(x, tq.NVFP4Config(True)), want)


def test_e2m1_rounding_of_nans_is_torchaos():
    """torchao's f32_to_f4_unpacked on NaN bits (quiet, signalling, either sign, all payloads
    up to 0x7FFFFFFF) -> codes 2 / 3 / 4 by the top mantissa bits: the twin's to_e2m1 and the
    kernel (through the rceil MX path: clamped NaN, scale NaN) agree on those values."""
    from torchao.prototype.custom_fp_utils import (
        _f32_to_floatx_unpacked,
        _floatx_unpacked_to_f32,
    )

    from kernels.quantize_mx_torch import to_e2m1

    mags = [0x7F800001, 0x7FA00000, 0x7FBFFFFF, 0x7FC00000, 0x7FDFFFFF, 0x7FE00000, 0x7FFFFFFF]
    bits = torch.tensor(mags + [m | -0x80000000 for m in mags], dtype=torch.int64)
    t = bits.to(torch.int32).view(torch.float32)
    want = _floatx_unpacked_to_f32(_f32_to_floatx_unpacked(t, 2, 1), 2, 1)
    assert set(want.abs().tolist()) == {1.0, 1.5, 2.0}
    _exact(to_e2m1(t), want, "twin")


@triton.jit
def _e2m1_kernel(t_ptr, out_ptr, N, NAN_CODES: tl.constexpr, BN: tl.constexpr):
    """out = _to_e2m1(t), fp32."""
    o = tl.program_id(0) * BN + tl.arange(0, BN)
    t = tl.load(t_ptr + o, mask=o < N, other=0.0)
    tl.store(out_ptr + o, _to_e2m1(t, NAN_CODES), mask=o < N)


def _e2m1_inputs() -> torch.Tensor:
    """Every bf16 (all 65536 bit patterns: both signs, subnormals, inf, NaN) and, in fp32, every
    grid point and rounding midpoint of e2m1 up to 8 (k 2**-2, k < 32), their neighbours 1 to
    4 ulps away, and the fp32 just around 6, 0 and 2**-126."""
    bf16 = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    points = torch.arange(0, 33, dtype=torch.float32) * 0.25
    bits = points.view(torch.int32)[:, None] + torch.arange(-4, 5, dtype=torch.int32)[None, :]
    extra = torch.tensor([0, 1, 0x7FFFFF, 0x800000, 0x40BFFFFF, 0x40C00000, 0x40C00001],
                         dtype=torch.int32)  # fmt: skip
    f32 = torch.cat([bits.flatten().clamp(min=0), extra]).view(torch.float32)
    return torch.cat([bf16.float(), f32, -f32])


@pytest.mark.parametrize("nan_codes", [False, True], ids=["mx", "nvfp4"])
def test_e2m1_rounding_by_adding_a_power_of_two_is_torchaos(nan_codes):
    """The kernel's e2m1 rounding (clamp |t| to 6, add and subtract 2**22 / 2**23 / 2**24 by
    t's binade, OR the sign back) == the twin's ``to_e2m1`` (torchao's bit arithmetic) and
    torchao's own ``_f32_to_floatx_unpacked`` round trip, bit for bit with -0.0, on every bf16
    and on the fp32 at and around each rounding midpoint; NaNs take torchao's code when
    ``NAN_CODES`` (NVFP4's), and are left unspecified for MX blocks (a NaN scale follows)."""
    from torchao.prototype.custom_fp_utils import (
        _f32_to_floatx_unpacked,
        _floatx_unpacked_to_f32,
    )

    from kernels.quantize_mx_torch import to_e2m1

    t = _e2m1_inputs()
    out = torch.empty_like(t)
    _e2m1_kernel[(triton.cdiv(t.numel(), 8192),)](t, out, t.numel(), NAN_CODES=nan_codes,
                                                   BN=8192)  # fmt: skip
    want = _floatx_unpacked_to_f32(_f32_to_floatx_unpacked(t, 2, 1), 2, 1)
    assert torch.equal(to_e2m1(t).view(torch.int32), want.view(torch.int32))
    keep = slice(None) if nan_codes else ~t.isnan()
    assert torch.equal(out[keep].view(torch.int32), want[keep].view(torch.int32))
    assert t.isnan().sum() > 100 and (t.abs() == 6).any() and ((t == 0) & t.signbit()).any()


def test_rceil_exponent_is_torchs_ceil_log2():
    """RCEIL's exponent from bits (no log2 call) == torchao's clamp(ceil(log2(d))) + 127 for
    every fp32 d = 2**k (1 + j 2**-23), j < 64 (where log2 rounds to the integer k or not),
    the subnormals in (2**-127, 2**-126), 0, inf and NaN; and the kernel on blocks whose max
    sits on those thresholds."""
    ks = torch.arange(-126, 128, dtype=torch.int32)
    bits = ((ks[:, None] + 127) << 23) | torch.arange(64, dtype=torch.int32)[None, :]
    sub = torch.arange(0x400000, 0x800000, 97, dtype=torch.int32)
    d = torch.cat([bits.flatten(), sub, torch.tensor([0, 1, 0x7F800000, 0x7FC00000])])
    d = d.view(torch.float32)
    want = torch.clamp(torch.ceil(torch.log2(d)), -127, 127) + 127
    want = torch.where(d.isinf(), 254, torch.where(d.isnan(), 255, want)).to(torch.int32)
    assert torch.equal(rceil_exponent(d), want)
    for elem in (torch.float4_e2m1fn_x2, torch.float8_e4m3fn):
        maxv = 6.0 if elem == torch.float4_e2m1fn_x2 else 448.0
        amax = (torch.arange(-120, 120, 7)[:, None] + 127).to(torch.int32) << 23
        amax = (amax | torch.arange(0, 32, dtype=torch.int32)[None, :]).view(torch.float32)
        x = torch.rand(amax.numel(), 32) * amax.reshape(-1, 1) * maxv
        x[:, 7] = amax.reshape(-1) * maxv
        _exact(mx_quantize(x, _name(elem), 32, "rceil"), _ao_mx(x, elem, 32, "rceil"))


def test_op_torch_backend_equals_torchao(monkeypatch):
    """The ops' plain-torch branch (the "torch" backend: a CPU without the interpreter)."""
    import triton_qat.mx as mx

    monkeypatch.setattr(mx, "use_kernels", lambda t: False)
    x = _poisoned(13, 64, torch.bfloat16)
    _exact(tq.fake_quantize(x, tq.MXConfig()), _ao_mx(x, torch.float4_e2m1fn_x2, 32, "rceil"))
    _exact(tq.fake_quantize(x, tq.NVFP4Config()), _ao_nvfp4(x, True))


def test_ops_plan_once_per_key(monkeypatch):
    """The ops decide their kernel plan once per (dtype, device, format, capability query):
    repeated calls only launch; a new dtype, format or capability query plans afresh."""
    import triton_qat.mx as mx

    planned = []
    real = mx._k.plan_mx_quantize
    monkeypatch.setattr(mx._k, "plan_mx_quantize", lambda *a: planned.append(a) or real(*a))
    mx._PLANS.clear()
    x = torch.randn(4, 64)
    for _ in range(3):
        _exact(torch.ops.triton_qat.mx_fake_quantize(x, "float4_e2m1fn_x2", 32, "rceil"),
               _ao_mx(x, torch.float4_e2m1fn_x2, 32, "rceil"))  # fmt: skip
        _exact(torch.ops.triton_qat.nvfp4_fake_quantize(x, True), _ao_nvfp4(x, True))
    assert len(planned) == 2
    torch.ops.triton_qat.mx_fake_quantize(x.bfloat16(), "float4_e2m1fn_x2", 32, "rceil")
    torch.ops.triton_qat.mx_fake_quantize(x, "float8_e4m3fn", 32, "rceil")
    assert len(planned) == 4
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    torch.ops.triton_qat.mx_fake_quantize(x, "float8_e4m3fn", 32, "rceil")
    assert len(planned) == 5
    mx._PLANS.clear()


def test_fake_quantize_gradient_is_straight_through():
    """torchao's MX / NVFP4 backward treats the fake quantization as the identity (its linear's
    grad_input is g @ w_dq); tq.fake_quantize's gradient is g itself, no clamp mask."""
    x = (torch.randn(3, 64) * 100).requires_grad_(True)
    g = torch.randn(3, 64)
    for cfg in (tq.MXConfig(torch.float8_e4m3fn, 32, "floor"), tq.NVFP4Config()):
        (gx,) = torch.autograd.grad(tq.fake_quantize(x, cfg), x, g)
        _exact(gx, g)


# -- the linear ----------------------------------------------------------------------------


def _mx_pair(dtype, elem, mode, bias, k=64, n=24):
    ao_cfg = MXFakeQuantizeConfig(elem, 32, ScaleCalculationMode(mode), KernelPreference.EMULATED)
    ref = MXFakeQuantizedLinear(
        k, n, bias, activation_config=ao_cfg, weight_config=ao_cfg, dtype=dtype
    )
    cfg = tq.MXConfig(elem, 32, mode)
    lin = tq.Linear(k, n, bias, activation=cfg, weight=cfg, dtype=dtype)
    lin.weight, lin.bias = ref.weight, ref.bias
    return lin, ref


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("elem", ELEMS, ids=_name)
def test_mx_linear_equals_torchao_module(dtype, elem):
    """tq.Linear == torchao's MXFakeQuantizedLinear (EMULATED): outputs and the gradients of x
    and the weight bit for bit, rows 1 / 3 / 13 (3-D input too), with and without a bias. The
    bias gets sum(g) (torchao's backward returns None for it)."""
    torch.manual_seed(0)
    for bias, mode, shape in ((True, "rceil", (3, 13, 64)), (False, "floor", (1, 64)),
                              (True, "even", (13, 64))):  # fmt: skip
        lin, ref = _mx_pair(dtype, elem, mode, bias)
        x = (torch.randn(shape) * 4).to(dtype).requires_grad_(True)
        y, y_ref = lin(x), ref(x)
        _exact(y, y_ref, f"forward {mode}")
        g = torch.randn_like(y)
        got = torch.autograd.grad(y, [x, lin.weight], g, retain_graph=True)
        want = torch.autograd.grad(y_ref, [x, ref.weight], g)
        for a, b in zip(got, want, strict=True):
            _exact(a, b, f"grad {mode}")
        if bias:
            (gb,) = torch.autograd.grad(y, lin.bias, g)
            _exact(gb, g.reshape(-1, g.shape[-1]).sum(0))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nvfp4_linear_equals_torchao_dequantized_and_backward(dtype):
    """NVFP4 tq.Linear forward == mm / addmm on torchao's dequantized input and weight; its
    gradients == torchao's _NVFP4QuantizedForwardFakeQuantizedBackward.backward on the
    NVFP4Tensors its forward would save."""
    torch.manual_seed(0)
    for per_tensor in (True, False):
        for bias in (False, True):
            cfg = tq.NVFP4Config(per_tensor)
            lin = tq.Linear(64, 24, bias, activation=cfg, weight=cfg, dtype=dtype)
            x = (torch.randn(13, 64) * 3).to(dtype).requires_grad_(True)
            y = lin(x)
            x_dq, w_dq = (
                _ao_nvfp4(x.detach(), per_tensor),
                _ao_nvfp4(lin.weight.detach(), per_tensor),
            )
            want = torch.addmm(lin.bias, x_dq, w_dq.t()) if bias else torch.mm(x_dq, w_dq.t())
            _exact(y, want)
            g = torch.randn_like(y)
            gx, gw = torch.autograd.grad(y, [x, lin.weight], g)

            def q(t, pt=per_tensor):
                s = per_tensor_amax_to_scale(t.abs().max()) if pt else None
                return NVFP4Tensor.to_nvfp4(t.detach(), per_tensor_scale=s)

            ctx = SimpleNamespace(
                saved_tensors=(q(x), q(lin.weight)), _fwd_used_autocast=False, _dtype=None
            )
            gx_ao, gw_ao, *_ = _NVFP4Autograd.backward(ctx, g)
            _exact(gx, gx_ao)
            _exact(gw, gw_ao)


def test_compile_fullgraph_and_opcheck():
    torch._dynamo.reset()
    x = torch.randn(5, 64, requires_grad=True)
    for cfg in (tq.MXConfig(torch.float8_e4m3fn), tq.NVFP4Config()):
        lin = tq.Linear(64, 8, activation=cfg, weight=cfg)
        y = lin(x)
        yc = torch.compile(lin, backend="aot_eager", fullgraph=True)(x)
        _exact(yc, y)
        got = torch.autograd.grad(yc.sum(), [x, lin.weight])
        want = torch.autograd.grad(lin(x).sum(), [x, lin.weight])
        for a, b in zip(got, want, strict=True):
            _exact(a, b)
    xs = torch.randn(3, 32)
    for elem in ELEMS:
        torch.library.opcheck(torch.ops.triton_qat.mx_fake_quantize, (xs, _name(elem), 32, "ceil"))
    for per_tensor in (True, False):
        torch.library.opcheck(torch.ops.triton_qat.nvfp4_fake_quantize, (xs, per_tensor))


# -- workflow: prepare / from / to torchao, convert ----------------------------------------


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32))


def test_prepare_qatconfig_mx_and_torchao_round_trip():
    base = MXDynamicActivationMXWeightConfig(kernel_preference=KernelPreference.EMULATED)
    model, twin = _model(), _model()
    tq.prepare(model, QATConfig(base))
    quantize_(twin, QATConfig(base, step="prepare"))
    assert isinstance(model[0], tq.Linear) and isinstance(twin[0], MXFakeQuantizedLinear)
    assert model[0].weight_config == tq.MXConfig(torch.float8_e4m3fn, 32, "rceil")
    x = torch.randn(5, 64)
    _exact(model(x), twin(x))
    tq.to_torchao(model)
    assert isinstance(model[2], MXFakeQuantizedLinear)
    assert model[2].weight_config == twin[2].weight_config
    _exact(model(x), twin(x))
    tq.from_torchao(model)
    assert isinstance(model[2], tq.Linear) and model[2].weight_config == tq.MXConfig(
        torch.float8_e4m3fn
    )
    _exact(model(x), twin(x))
    tq.from_torchao(twin)  # torchao's own prepared model
    assert isinstance(twin[0], tq.Linear) and twin[0].activation_config == tq.MXConfig(
        torch.float8_e4m3fn
    )
    # torchao's default AUTO kernel (Blackwell's MX GEMM) is run emulated; to_torchao keeps it
    auto = _model()
    tq.prepare(auto, QATConfig(MXDynamicActivationMXWeightConfig()))
    _exact(auto(x), model(x))
    tq.to_torchao(auto)
    assert auto[0].weight_config.kernel_preference == KernelPreference.AUTO
    # a triton_qat layer made from configs maps to EMULATED torchao configs
    cfg = tq.MXConfig(torch.float8_e5m2, 32, "even")
    own = tq.to_torchao(tq.Linear(64, 8, activation=cfg, weight=cfg))
    assert own.weight_config == MXFakeQuantizeConfig(
        torch.float8_e5m2, 32, ScaleCalculationMode.EVEN, KernelPreference.EMULATED
    )


def test_prepare_qatconfig_nvfp4_and_torchao_round_trip():
    base = NVFP4DynamicActivationNVFP4WeightConfig()
    model, twin = _model(), _model()
    tq.prepare(model, QATConfig(base))
    quantize_(twin, QATConfig(base, step="prepare"))
    assert isinstance(twin[0], NVFP4FakeQuantizedLinear)
    assert model[0].activation_config == model[0].weight_config == tq.NVFP4Config(True)
    weights = [model[0].weight, model[2].weight]
    tq.to_torchao(model)
    for a, b, w in ((model[0], twin[0], weights[0]), (model[2], twin[2], weights[1])):
        assert isinstance(a, NVFP4FakeQuantizedLinear) and a.weight is w  # shared
        assert (a.activation_config, a.weight_config) == (b.activation_config, b.weight_config)
    tq.from_torchao(model)
    assert model[2].weight_config == tq.NVFP4Config(True)
    direct = tq.prepare(_model(), QATConfig(base))  # the same weights
    x = torch.randn(5, 64)
    _exact(model(x), direct(x))
    own = tq.to_torchao(tq.Linear(32, 8, activation=tq.NVFP4Config(False),
                                  weight=tq.NVFP4Config(False)))  # fmt: skip
    assert own.activation_config == NVFP4FakeQuantizeConfig(False, use_swizzled_scales=False)
    assert own.weight_config == NVFP4FakeQuantizeConfig(False, use_swizzled_scales=True)


def test_convert_mx_layers_and_to_torchao_of_a_disabled_layer():
    cfg = tq.MXConfig(torch.float8_e4m3fn)
    nv = tq.NVFP4Config()
    model = nn.Sequential(
        tq.Linear(64, 32), nn.ReLU(), tq.Linear(32, 32, activation=cfg, weight=cfg),
        tq.Linear(32, 16, activation=nv, weight=nv),
    ).eval()  # fmt: skip
    x = torch.randn(3, 64)
    want = model(x)
    tq.convert(model)
    assert [type(m) for m in model] == [
        tq.QuantizedLinear, nn.ReLU, tq.QuantizedMXLinear, tq.QuantizedMXLinear,
    ]  # fmt: skip
    _exact(model(x), want)
    assert tq.to_torchao(model)[2] is model[2]  # converted layers stay (no torchao module)
    off = tq.Linear(32, 8, activation=cfg, weight=cfg).disable_fake_quant()
    with pytest.raises(NotImplementedError, match="disabled"):
        tq.to_torchao(off)


def test_bad_configs_and_inputs_name_the_argument():
    with pytest.raises(ValueError, match="^dtype:"):
        tq.MXConfig(torch.int8)
    with pytest.raises(ValueError, match="^block_size:"):
        tq.MXConfig(block_size=0)
    with pytest.raises(ValueError, match="^scaling_mode:"):
        tq.MXConfig(scaling_mode="nearest")
    assert tq.MXConfig(scaling_mode=ScaleCalculationMode.FLOOR).scaling_mode == "floor"
    with pytest.raises(ValueError, match="^use_per_tensor_scale:"):
        tq.NVFP4Config(use_per_tensor_scale=1)
    cfg = tq.MXConfig()
    with pytest.raises(ValueError, match="^x: MX / NVFP4 .* float16"):
        tq.fake_quantize(torch.randn(2, 32, dtype=torch.float16), cfg)
    with pytest.raises(ValueError, match=r"^x: the last dim \(40\) must be a multiple of block"):
        tq.fake_quantize(torch.randn(2, 40), cfg)
    with pytest.raises(ValueError, match="^x: the last dim"):
        tq.fake_quantize(torch.randn(2, 24), tq.NVFP4Config())
    with pytest.raises(ValueError, match="^in_features: 48 is not a multiple"):
        tq.Linear(48, 8, activation=cfg, weight=cfg)
    with pytest.raises(ValueError, match="^activation: .*weight-only"):
        tq.Linear(64, 8, activation=tq.NOT_QUANTIZED, weight=cfg)
    with pytest.raises(ValueError, match="^activation: with a NVFP4Config weight"):
        tq.Linear(64, 8, activation=cfg, weight=tq.NVFP4Config())
    with pytest.raises(ValueError, match="^activation: an MX / NVFP4 activation"):
        tq.Linear(64, 8, activation=cfg, weight=tq.QuantConfig(granularity="per_channel",
                                                               symmetric=True))  # fmt: skip
    lin = tq.Linear(64, 8, activation=cfg, weight=cfg)
    with pytest.raises(ValueError, match="^input: .*float16"):
        lin(torch.randn(2, 64, dtype=torch.float16))
    from triton_qat.torchao_compat import to_quant_config

    fp6 = MXFakeQuantizeConfig("fp6_e2m3")
    with pytest.raises(NotImplementedError, match="^weight_config.dtype:"):
        to_quant_config(fp6, "weight")


def test_prepare_with_mx_configs_leaves_indivisible_linears():
    model = nn.Sequential(nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 8))
    cfg = tq.MXConfig(torch.float8_e4m3fn)
    with pytest.warns(UserWarning, match=r"2 \(in_features=40: block_size=32 does not divide"):
        tq.prepare(model, activation=cfg, weight=cfg)
    assert type(model[0]) is tq.Linear and type(model[2]) is nn.Linear
    x = torch.randn(3, 64)
    _exact(model[0](x), torch.addmm(model[0].bias, tq.fake_quantize(x, cfg),
                                    tq.fake_quantize(model[0].weight, cfg).t()))  # fmt: skip


def test_ops_check_their_arguments():
    op, nv = torch.ops.triton_qat.mx_fake_quantize, torch.ops.triton_qat.nvfp4_fake_quantize
    x = torch.randn(2, 32)
    with pytest.raises(ValueError, match="^elem:"):
        op(x, "fp6_e2m3", 32, "rceil")
    with pytest.raises(ValueError, match="^scaling_mode:"):
        op(x, "float8_e4m3fn", 32, "RCEIL")
    with pytest.raises(ValueError, match="^block_size:"):
        op(x, "float8_e4m3fn", 0, "rceil")
    with pytest.raises(ValueError, match="^x: expected 2 dims"):
        op(x.reshape(2, 2, 16), "float8_e4m3fn", 16, "rceil")
    with pytest.raises(ValueError, match=r"^x: the last dim \(32\) must be a multiple"):
        op(x, "float8_e4m3fn", 64, "rceil")
    with pytest.raises(ValueError, match="^x: MX / NVFP4 .* float16"):
        nv(x.half(), True)
    with pytest.raises(ValueError, match=r"^x: the last dim \(8\)"):
        nv(x[:, :8], False)
