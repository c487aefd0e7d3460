"""QAT modes beyond int8 activations x symmetric weights, through the same layers (config -> spec ->
op -> dispatch -> launcher -> kernel): asymmetric weights (torchao's
``IntxFakeQuantizeConfig(..., is_symmetric=False)``) and weight-only QAT (torchao's
``QATConfig(activation_config=None, weight_config=...)``). Fake-quantized values are bit-exact
against torchao's own objects (when torchao is installed) and the plain-torch references; GEMM
outputs and gradients within the fp64 bounds of tests/conftest.py; convert equals prepared eval."""

import pytest
import torch
import torch.nn.functional as F
from conftest import DTYPES, assert_close_rel, dt_id
from torch import nn
from torch._dynamo.utils import counters

import triton_qat as tq
from triton_qat import ops
from triton_qat.config import NOT_QUANTIZED
from triton_qat.dispatch import activation_sum_group, int8_linear, quantize_rows
from triton_qat.kernels.gemm_int8 import fwd_mode
from triton_qat.kernels.quantize_torch import quantize_rows_torch
from triton_qat.reference import fake_quantize_with_mask

ASYM = {  # name -> (bits, group or None for per channel)
    "i8-per-channel": (8, None),
    "i4-g32": (4, 32),
    "i4-g16": (4, 16),
    "i2-g8": (2, 8),
}


def _asym_cfg(bits, group):
    if group is None:
        return tq.QuantConfig(bits=bits, granularity="per_channel", symmetric=False)
    return tq.QuantConfig(bits=bits, granularity="per_group", group_size=group, symmetric=False)


def _ao_cfg(bits, group, symmetric):
    qat = pytest.importorskip("torchao.quantization.qat")
    dtype = {8: torch.int8, 4: torch.int4, 2: torch.int2}[bits]
    if group is None:
        return qat.IntxFakeQuantizeConfig(dtype, "per_channel", is_symmetric=symmetric)
    return qat.IntxFakeQuantizeConfig(dtype, group_size=group, is_symmetric=symmetric)


def _ao_quantizer(bits, group, symmetric):
    from torchao.quantization.qat.fake_quantizer import IntxFakeQuantizer

    return IntxFakeQuantizer(_ao_cfg(bits, group, symmetric))


def _weight(N, K, dtype, device, scale=0.05):
    """Weights with groups torchao's asymmetric formula treats differently: offset rows (a
    non-zero zero point), all-zero and constant groups, one very wide row."""
    w = torch.randn(N, K, device=device) * scale
    w[1] += 3.0  # mid-range 3: zero point 3, most codes clip at qmax
    w[2] -= 1.5
    w[3, : K // 2] = 0.0
    w[4] = 0.25
    w[5, :3] *= 400
    return w.to(dtype)


# ---------------------------------------------------------------------------------------------
# asymmetric weights: fake quantization


@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
@pytest.mark.parametrize("name", list(ASYM), ids=list(ASYM))
def test_asym_weight_fake_quant_matches_torchao(name, dtype, device):
    """Scales, zero points and fake-quantized values bit-exact against torchao's
    IntxFakeQuantizer; the STE gradient within the dtype's bound of torchao's autograd (which
    multiplies by s and 1/s), zero exactly where torchao's is."""
    bits, group = ASYM[name]
    w = _weight(24, 96, dtype, device)
    fq = _ao_quantizer(bits, group, symmetric=False)
    wg_ao = w.clone().requires_grad_()
    want = fq(wg_ao)
    dy = torch.randn_like(w)
    want.backward(dy)
    cfg = _asym_cfg(bits, group)
    wg = w.clone().requires_grad_()
    got = tq.fake_quantize(wg, cfg)
    got.backward(dy)
    assert torch.equal(got, want)
    G = 96 // (group or 96)
    q = quantize_rows(w, cfg.qmin, cfg.qmax, group or 96, False, pack_mask=False, with_y=True,
                      asym_weight=True)  # fmt: skip
    assert torch.equal(q.scale, fq.scale.reshape(24, G))
    assert torch.equal(q.zero_point, fq.zero_point.reshape(24, G))
    assert (q.zero_point != 0).any() and (~q.mask.bool()).any()
    # clamped elements get no gradient from either (torchao's can also underflow: its chain
    # rounds dy * s in dt before multiplying by 1 / s); compare where that product is normal
    assert (wg_ao.grad[wg.grad == 0] == 0).all()
    s_elem = q.scale.repeat_interleave(group or 96, dim=1)
    normal = s_elem >= torch.finfo(dtype).smallest_normal
    assert normal.float().mean() > 0.5
    assert_close_rel(wg.grad[normal], wg_ao.grad[normal].double(), dtype, "grad vs torchao")


@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
@pytest.mark.parametrize("name", list(ASYM), ids=list(ASYM))
def test_asym_weight_kernel_twin_reference_agree(name, dtype, device):
    """The kernel, its plain-torch twin and triton_qat.reference: every output bit-exact."""
    bits, group = ASYM[name]
    cfg = _asym_cfg(bits, group)
    w = _weight(37, 96, dtype, device)
    args = (w, cfg.qmin, cfg.qmax, group or 96, False)
    got = quantize_rows(*args, pack_mask=False, with_y=True, asym_weight=True)
    twin = quantize_rows_torch(*args, pack_mask=False, with_y=True, asym_weight=True)
    for field in ("codes", "scale", "zero_point", "mask", "code_sum", "y"):
        assert torch.equal(getattr(got, field), getattr(twin, field)), field
    y_ref, mask_ref = fake_quantize_with_mask(w, cfg)
    assert torch.equal(got.y, y_ref) and torch.equal(got.mask.bool(), mask_ref)


@pytest.mark.parametrize(
    "bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"]
)
def test_asym_weight_non_finite_group_matches_torchao(bad):
    """A group holding NaN / inf: torchao's scale, zero point (torch's float -> int32 cast on this
    device) and values, NaN positions included; the other groups untouched."""
    w = _weight(6, 64, torch.float32, "cpu")
    w[2, 5] = bad
    fq = _ao_quantizer(4, 32, symmetric=False)
    want = fq(w)
    got = quantize_rows(w, -8, 7, 32, False, pack_mask=False, with_y=True, asym_weight=True)
    assert torch.equal(got.zero_point, fq.zero_point)
    assert torch.equal(got.scale.isnan(), fq.scale.isnan())
    assert torch.equal(got.y.isnan(), want.isnan())
    assert torch.equal(got.y.nan_to_num(), want.nan_to_num())


# ---------------------------------------------------------------------------------------------
# asymmetric weights: the int8 GEMM with weight zero points


@pytest.mark.parametrize("K,group", [(96, 32), (96, 96), (90, 9), (256, 64)],
                         ids=["mode1-g32", "mode0-per-channel", "mode2-g9", "mode1-g64"])  # fmt: skip
@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
@pytest.mark.parametrize("a_sym", [False, True], ids=["x-asym", "x-sym"])
def test_asym_weight_forward_gemm(K, group, dtype, a_sym, device, fwd_path):
    """sum_k (q_x - zp_x)(q_w - zp_w) with x's code sums per weight group (written by the
    activation quantize, or summed from the codes when not given): fp64 bound, same bits."""
    M, N = 13, 40
    x = (torch.randn(M, K, device=device) * 2).to(dtype)
    w = _weight(N, K, dtype, device, scale=0.1)
    sg = activation_sum_group(K, group)
    assert (sg is not None) == (fwd_mode(K, group) == 1)
    qa = quantize_rows(x, -128, 127, K, a_sym, pack_mask=True, with_y=True, sum_group=sg)
    qw = quantize_rows(w, -8, 7, group, False, pack_mask=False, with_y=True, asym_weight=True,
                       group_major=True)  # fmt: skip
    assert (qw.zero_point != 0).any()
    bias = torch.randn(N, device=device).to(dtype)
    args = (qa.codes, qa.scale, qa.zero_point, qw.codes, qw.scale, qw.code_sum, bias, dtype)
    x_sum = qa.code_sum if qa.code_sum.shape[1] == K // group else None
    out = int8_linear(*args, asymmetric=not a_sym, w_zero_point=qw.zero_point, x_code_sum=x_sum)
    ref = qa.y.double() @ qw.y.double().T + bias.double()
    assert_close_rel(out, ref, dtype, "out")
    summed = int8_linear(*args, asymmetric=not a_sym, w_zero_point=qw.zero_point)
    assert torch.equal(out, summed)
    want = int(fwd_path.path == "dequant" and group != K)
    # one lookup per key: the second call runs the kept launch
    assert [c["DEQUANT"] for c in fwd_path.used] == [want]


def test_unsigned_asym_weights_through_the_forward(fwd_path, device):
    """Asymmetric weights in [0, 255] store codes and zero points shifted by -128; the forward
    (either path) must undo the shift where it matters: bf16 weights near 40000, where the zero
    point is exact in bf16 and the shifted one is not."""
    M, K, N, group = 9, 64, 24, 32
    x = torch.randn(M, K, device=device).to(torch.bfloat16)
    w = (torch.rand(N, K, device=device) * 2000 + 40000).to(torch.bfloat16)
    qa = quantize_rows(x, -128, 127, K, False, pack_mask=True, with_y=True)
    qw = quantize_rows(w, 0, 255, group, False, pack_mask=False, with_y=True, asym_weight=True,
                       group_major=True)  # fmt: skip
    out = int8_linear(qa.codes, qa.scale, qa.zero_point, qw.codes, qw.scale, qw.code_sum, None,
                      torch.bfloat16, asymmetric=True, w_zero_point=qw.zero_point,
                      w_code_offset=-128)  # fmt: skip
    assert_close_rel(out, qa.y.double() @ qw.y.double().T, torch.bfloat16, "out")
    if fwd_path.path == "dequant":  # exactly the plain GEMM of the quantize kernel's own values
        from triton_qat.kernels.gemm_float import float_mm

        c = fwd_path.used[0]
        tiles = (c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"], c["GROUP_M"], c["num_warps"],
                 c["num_stages"])  # fmt: skip
        assert torch.equal(out, float_mm(qa.y, qw.y.t(), tiles=tiles, tma=bool(c["TMA"])))


@pytest.mark.parametrize("sum_group", [32, 64, 96, 12, 3, 384], ids=lambda g: f"sg{g}")
def test_activation_code_sums_per_weight_group(sum_group, device):
    """sum_group: tiles holding several sum groups, sum groups spanning whole tiles (96: the tile
    is narrowed to 32), none fitting (3: summed from the codes); the twin agrees."""
    x = torch.randn(37, 384, device=device)
    got = quantize_rows(x, -128, 127, 384, False, pack_mask=True, sum_group=sum_group)
    want = got.codes.to(torch.int32).reshape(37, -1, sum_group).sum(-1)
    assert torch.equal(got.code_sum, want)
    twin = quantize_rows_torch(x, -128, 127, 384, False, pack_mask=True, sum_group=sum_group)
    assert torch.equal(twin.code_sum, want) and torch.equal(twin.codes, got.codes)
    plain = quantize_rows(x, -128, 127, 384, False, pack_mask=True)
    assert torch.equal(plain.codes, got.codes) and torch.equal(plain.mask, got.mask)


# ---------------------------------------------------------------------------------------------
# asymmetric weights: the layer


def _fp64_reference(x, lin, act, wcfg):
    """Output and gradients of F.linear over the fake-quantized values, in fp64, with STE masks
    (act=None: x itself, weight-only)."""
    if act is None:
        x_fq, mx = x.detach(), torch.ones(x.shape, dtype=torch.bool, device=x.device)
    else:
        x_fq, mx = fake_quantize_with_mask(x.detach(), act)
    w_fq, mw = fake_quantize_with_mask(lin.weight.detach(), wcfg)
    xd = x_fq.double().requires_grad_()
    wd = w_fq.double().requires_grad_()
    bd = lin.bias.detach().double().requires_grad_()
    return F.linear(xd, wd, bd), xd, wd, bd, mx, mw


LAYER_W = {
    "i8-per-channel": (8, None),
    "i4-g32": (4, 32),
    "i4-g12": (4, 12),  # MODE 2: the zero point applied per element
}


@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
@pytest.mark.parametrize("wname", list(LAYER_W), ids=list(LAYER_W))
@pytest.mark.parametrize("act", [tq.QuantConfig(), tq.QuantConfig(symmetric=True)],
                         ids=["x-asym", "x-sym"])  # fmt: skip
def test_asym_weight_linear_forward_backward(act, wname, dtype, device):
    wcfg = _asym_cfg(*LAYER_W[wname])
    lin = tq.Linear(96, 40, activation=act, weight=wcfg, device=device, dtype=dtype)
    with torch.no_grad():
        lin.weight[1] += 2.0  # a non-zero zero point
    x = (torch.randn(3, 7, 96, device=device) * 2).to(dtype).requires_grad_()
    out = lin(x)
    dy = torch.randn_like(out)
    out.backward(dy)
    ref, xd, wd, bd, mx, mw = _fp64_reference(x, lin, act, wcfg)
    ref.backward(dy.double())
    assert out.shape == (3, 7, 40) and out.dtype == dtype
    assert_close_rel(out, ref, dtype, "out")
    assert_close_rel(x.grad, xd.grad * mx, dtype, "grad_x")
    assert_close_rel(lin.weight.grad, wd.grad * mw, dtype, "grad_w")
    assert_close_rel(lin.bias.grad, bd.grad, dtype, "grad_bias")
    assert (~mw).any()  # the offset row clips: its gradient is masked


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dt_id)
@pytest.mark.parametrize("wname", ["i8-per-channel", "i4-g32"])
def test_asym_weight_linear_matches_torchao_fake_quantized_linear(wname, dtype, device):
    """torchao's FakeQuantizedLinear with the same configs: output and every gradient within the
    fp64 bounds of each other (torchao's GEMM rounds in dt, ours in int32 + fp32)."""
    qat = pytest.importorskip("torchao.quantization.qat")
    bits, group = LAYER_W[wname]
    act_cfg = qat.IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)
    ref = qat.FakeQuantizedLinear(96, 40, True, act_cfg, _ao_cfg(bits, group, False),
                                  device=device, dtype=dtype)  # fmt: skip
    with torch.no_grad():
        ref.weight[1] += 2.0
    lin = tq.Linear(96, 40, activation=tq.QuantConfig(), weight=_asym_cfg(bits, group),
                    device=device, dtype=dtype)  # fmt: skip
    lin.load_state_dict(ref.state_dict())
    x = (torch.randn(5, 9, 96, device=device) * 2).to(dtype)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    want, got = ref(xa), lin(xb)
    dy = torch.randn_like(want)
    want.backward(dy)
    got.backward(dy)
    # torchao's fake-quantized operands, bit-exact
    assert torch.equal(tq.fake_quantize(lin.weight.detach(), lin.weight_config),
                       ref.weight_fake_quantizer(ref.weight.detach()))  # fmt: skip
    assert_close_rel(got, want.double(), dtype, "out vs torchao")
    assert_close_rel(xb.grad, xa.grad.double(), dtype, "grad_x vs torchao")
    assert_close_rel(lin.weight.grad, ref.weight.grad.double(), dtype, "grad_w vs torchao")
    assert_close_rel(lin.bias.grad, ref.bias.grad.double(), dtype, "grad_bias vs torchao")


@pytest.mark.parametrize("wname", list(LAYER_W), ids=list(LAYER_W))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dt_id)
def test_asym_weight_convert_equals_prepared_eval_and_state_dict(wname, dtype, device):
    """convert stores the zero points (state_dict ``weight_zero_point``) and computes bit for bit
    what the prepared layer computes in eval mode; a fresh layer loading the state_dict too."""
    wcfg = _asym_cfg(*LAYER_W[wname])
    model = nn.Sequential(nn.Linear(96, 64), nn.ReLU(), nn.Linear(64, 24)).to(device, dtype)
    with torch.no_grad():
        model[0].weight[1] += 2.0
    model = tq.prepare(model, weight=wcfg).eval()
    x = torch.randn(6, 96, device=device).to(dtype)
    with torch.no_grad():
        want = model(x)
        conv = tq.convert(model)
        got = conv(x)
    assert torch.equal(got, want)
    layer = conv[0]
    sd = layer.state_dict()
    assert sd["weight_zero_point"].dtype == torch.int32 and (sd["weight_zero_point"] != 0).any()
    fresh = tq.QuantizedLinear(96, 64, activation=tq.QuantConfig(), weight=wcfg, device=device,
                               dtype=dtype)  # fmt: skip
    fresh.load_state_dict(sd)
    with torch.no_grad():
        assert torch.equal(fresh(x), layer(x))


# ---------------------------------------------------------------------------------------------
# weight-only QAT


WO = {  # name -> weight config
    "i4-g32-sym": tq.QuantConfig(bits=4, granularity="per_group", group_size=32, symmetric=True),
    "i8-per-channel-sym": tq.QuantConfig(granularity="per_channel", symmetric=True),
    "i4-g32-asym": tq.QuantConfig(bits=4, granularity="per_group", group_size=32),
    "i8-per-tensor": tq.QuantConfig(granularity="per_tensor", symmetric=True),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
@pytest.mark.parametrize("wname", list(WO), ids=list(WO))
def test_weight_only_linear_forward_backward(wname, dtype, device):
    wcfg = WO[wname]
    lin = tq.Linear(96, 40, activation=NOT_QUANTIZED, weight=wcfg, device=device, dtype=dtype)
    x = (torch.randn(3, 7, 96, device=device) * 2).to(dtype).requires_grad_()
    out = lin(x)
    dy = torch.randn_like(out)
    out.backward(dy)
    ref, xd, wd, bd, _, mw = _fp64_reference(x, lin, None, wcfg)
    ref.backward(dy.double())
    assert out.shape == (3, 7, 40) and out.dtype == dtype
    assert_close_rel(out, ref, dtype, "out")
    assert_close_rel(x.grad, xd.grad, dtype, "grad_x")
    assert_close_rel(lin.weight.grad, wd.grad * mw, dtype, "grad_w")
    assert_close_rel(lin.bias.grad, bd.grad, dtype, "grad_bias")


@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
@pytest.mark.parametrize("wname", ["i4-g32-sym", "i8-per-channel-sym", "i4-g32-asym"])
def test_weight_only_matches_torchao(wname, dtype, device):
    """torchao's QAT with activation_config=None: the fake-quantized weight and the output bit for
    bit (the same F.linear on the same operands), gradients within float rounding of torchao's
    autograd."""
    qat = pytest.importorskip("torchao.quantization.qat")
    wcfg = WO[wname]
    group = wcfg.group_size
    ref = qat.FakeQuantizedLinear(96, 40, True, None, _ao_cfg(wcfg.bits, group, wcfg.symmetric),
                                  device=device, dtype=dtype)  # fmt: skip
    lin = tq.Linear(96, 40, activation=NOT_QUANTIZED, weight=wcfg, device=device, dtype=dtype)
    lin.load_state_dict(ref.state_dict())
    x = (torch.randn(5, 9, 96, device=device) * 2).to(dtype)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    want, got = ref(xa), lin(xb)
    assert torch.equal(got, want)
    dy = torch.randn_like(want)
    want.backward(dy)
    got.backward(dy)
    assert_close_rel(xb.grad, xa.grad.double(), dtype, "grad_x vs torchao")
    assert_close_rel(lin.weight.grad, ref.weight.grad.double(), dtype, "grad_w vs torchao")
    assert (ref.weight.grad[lin.weight.grad == 0] == 0).all()  # torchao's may also underflow
    assert torch.equal(lin.bias.grad, ref.bias.grad)


def test_weight_only_saves_x_and_the_weight_only(device):
    """Autograd keeps the input (as nn.Linear does) and the weight parameter itself: no
    fake-quantized weight and no weight-sized mask between forward and backward."""
    lin = tq.Linear(64, 48, activation=NOT_QUANTIZED, weight=WO["i4-g32-sym"], device=device)
    x = torch.randn(5, 64, device=device, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        lin(x).sum().backward()
    ptrs = {t.data_ptr() for t in saved if t is not None}
    assert ptrs == {x.data_ptr(), lin.weight.data_ptr()}, [tuple(t.shape) for t in saved]


@pytest.mark.parametrize("wname", list(WO), ids=list(WO))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dt_id)
def test_weight_only_convert_equals_prepared_eval(wname, dtype, device):
    """prepare(activation=NOT_QUANTIZED) passes through tq.prepare; convert stores int8 / packed
    int4 codes + scales (+ zero points) and runs the same float GEMM on the same dequantized
    weight: bit-exact, through a state_dict round trip too."""
    wcfg = WO[wname]
    model = nn.Sequential(nn.Linear(96, 64), nn.ReLU(), nn.Linear(64, 32)).to(device, dtype)
    model = tq.prepare(model, activation=NOT_QUANTIZED, weight=wcfg).eval()
    assert model[0].activation_config is NOT_QUANTIZED
    x = torch.randn(2, 5, 96, device=device).to(dtype)
    with torch.no_grad():
        want = model(x)
        conv = tq.convert(model)
        got = conv(x)
    assert torch.equal(got, want)
    layer = conv[0]
    assert layer.weight_only and layer.weight_codes.dtype == (
        torch.uint8 if wcfg.bits <= 4 else torch.int8
    )
    fresh = tq.QuantizedLinear(96, 64, activation=NOT_QUANTIZED, weight=wcfg, device=device,
                               dtype=dtype)  # fmt: skip
    fresh.load_state_dict(layer.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), layer(x))


def test_weight_only_fp32_weights_bf16_input(device):
    """The weight is fake-quantized in its own dtype (fp32), the GEMM runs in the input's dtype."""
    lin = tq.Linear(64, 24, activation=NOT_QUANTIZED, weight=WO["i4-g32-sym"], device=device)
    x = torch.randn(5, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
    out = lin(x)
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16 and x.grad.dtype == torch.bfloat16
    assert lin.weight.grad.dtype == torch.float32
    w_fq, _ = fake_quantize_with_mask(lin.weight.detach(), lin.weight_config)
    assert torch.equal(out, F.linear(x.detach(), w_fq.to(torch.bfloat16),
                                     lin.bias.detach().to(torch.bfloat16)))  # fmt: skip
    lin.eval()
    with torch.no_grad():
        assert torch.equal(tq.convert(lin)(x.detach()), lin(x.detach()))


def test_functional_qat_linear_weight_only(device):
    x = torch.randn(4, 64, device=device)
    w = torch.randn(16, 64, device=device) * 0.1
    wcfg = WO["i4-g32-asym"]
    got = tq.qat_linear(x, w, None, activation=None, weight_config=wcfg)
    assert torch.equal(got, tq.qat_linear(x, w, None, NOT_QUANTIZED, wcfg))
    assert torch.equal(got, F.linear(x, tq.fake_quantize(w, wcfg)))


# ---------------------------------------------------------------------------------------------
# registration: opcheck, torch.compile, errors


def test_opcheck_new_arguments(device):
    x = torch.randn(13, 64, device=device)
    w = _weight(24, 64, torch.float32, device)
    _opcheck = torch.library.opcheck
    _opcheck(ops.quantize, (x, -128, 127, 64, False, False, True, None, None, False, 32))
    _opcheck(ops.quantize, (w, -8, 7, 32, False, False, False, None, None, True, 0))
    _opcheck(ops.fake_quantize, (w.clone().requires_grad_(), -8, 7, 32, False, False, None, None,
                                 True))  # fmt: skip
    qa = ops.quantize(x, -128, 127, 64, False, False, True, None, None, False, 32)
    qw = ops.quantize(w, -8, 7, 32, False, False, False, None, None, True, 0)
    _opcheck(ops.int8_linear, (qa[0], qa[1], qa[2], qw[0], qw[1], qw[4], None, torch.float32,
                               qw[2], qa[4]))  # fmt: skip
    _opcheck(ops.int8_linear, (qa[0], qa[1], qa[2], qw[0], qw[1], qw[4], None, torch.float32,
                               qw[2], None))  # fmt: skip
    xg = x.clone().requires_grad_()
    wg = w.clone().requires_grad_()
    b = torch.randn(24, device=device, requires_grad=True)
    state = list(qa[:4])
    w_args = (-8, 7, 32, False, None)
    _opcheck(ops.qat_linear, (xg, *state, wg, b, True, *w_args, False, qa[4]))
    _opcheck(ops.qat_linear, (xg, *state, wg, b, True, *w_args, False, None))
    dy = torch.randn(13, 24, device=device)
    _opcheck(ops.qat_linear_backward, (dy, *state, w, *w_args, True, True, True, False))
    xt = torch.randn(64, 13, device=device).t().requires_grad_()  # non-contiguous input
    for sym, group in ((True, 32), (False, 64), (True, 64)):
        _opcheck(ops.weight_only_linear, (xg, wg, b, -8, 7, group, sym, False))
        _opcheck(ops.weight_only_linear, (xt, wg, None, -128, 127, group, sym, False))
        _opcheck(ops.weight_only_linear_backward, (dy, x, w, -8, 7, group, sym, False, True,
                                                   True, True))  # fmt: skip
    _opcheck(ops.weight_only_linear, (xg, wg, b, -128, 127, 64, True, True))


def _mlp(device, dtype, activation, weight):
    torch.manual_seed(0)
    return nn.Sequential(
        tq.Linear(32, 64, device=device, dtype=dtype, activation=activation, weight=weight),
        nn.ReLU(),
        tq.Linear(64, 16, device=device, dtype=dtype, activation=activation, weight=weight),
    )


def _step(model, x):
    out = model(x)
    out.square().mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return out.detach(), grads


@pytest.mark.parametrize(
    "activation,weight",
    [
        (tq.QuantConfig(), tq.QuantConfig(bits=4, granularity="per_group", group_size=32)),
        (tq.QuantConfig(), tq.QuantConfig(granularity="per_channel")),
        (NOT_QUANTIZED, WO["i4-g32-sym"]),
        (NOT_QUANTIZED, WO["i4-g32-asym"]),
    ],
    ids=["asym-g32", "asym-per-channel", "weight-only-sym", "weight-only-asym"],
)
def test_compile_fullgraph_matches_eager(activation, weight, device):
    torch._dynamo.reset()
    counters.clear()
    model = _mlp(device, torch.float32, activation, weight)
    compiled = torch.compile(model, fullgraph=True)
    for _ in range(2):
        x = torch.randn(5, 9, 32, device=device, requires_grad=True)
        e_out, e_grads = _step(model, x)
        c_out, c_grads = _step(compiled, x)
        torch.testing.assert_close(c_out, e_out, rtol=0, atol=0)
        for g, e in zip(c_grads, e_grads, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])


@pytest.mark.parametrize(
    "kwargs,exc,needle",
    [
        (dict(weight=tq.QuantConfig(granularity="per_tensor")), ValueError, "weight: symmetric"),
        (dict(activation="none"), TypeError, "activation: expected .*NOT_QUANTIZED"),
        (dict(activation=NOT_QUANTIZED, weight=NOT_QUANTIZED), TypeError, "weight"),
    ],
    ids=["per-tensor-asym-weight", "activation-str", "weight-not-quantized"],
)
def test_bad_mode_configs_name_the_argument(kwargs, exc, needle):
    with pytest.raises(exc, match=needle):
        tq.Linear(64, 16, **kwargs)


def test_ops_check_the_new_arguments(device):
    x = torch.randn(6, 64, device=device)
    w = torch.randn(8, 64, device=device)
    with pytest.raises(ValueError, match="asym_weight"):
        ops.quantize(w, -8, 7, 32, True, False, False, None, None, True, 0)
    with pytest.raises(ValueError, match="asym_weight"):
        ops.quantize(w, -8, 7, 64, False, True, False, None, None, True, 0)
    with pytest.raises(ValueError, match="sum_group"):
        ops.quantize(x, -128, 127, 64, False, False, True, None, None, False, 48)
    qa = ops.quantize(x, -128, 127, 64, False, False, True, None, None, False, 32)
    qw = ops.quantize(w, -8, 7, 32, False, False, False, None, None, True, 0)
    good = [qa[0], qa[1], qa[2], qw[0], qw[1], qw[4], None, torch.float32, qw[2], qa[4]]
    for i, bad, needle in [
        (8, qw[2].float(), "w_zero_point"),
        (8, qw[2][:, :1], "w_zero_point"),
        (9, qa[4][:, :1], "x_code_sum"),
    ]:
        args = list(good)
        args[i] = bad
        with pytest.raises((ValueError, TypeError), match=needle):
            ops.int8_linear(*args)
    with pytest.raises(ValueError, match="x_code_sum"):
        ops.int8_linear(*good[:8], None, qa[4])
    state = list(qa[:4])
    with pytest.raises(ValueError, match="w_symmetric"):
        ops.qat_linear(x, *state, w, None, True, -8, 7, 64, True, None, False)
    with pytest.raises(ValueError, match="x_code_sum"):
        ops.qat_linear(x, *state, w, None, True, -8, 7, 32, False, None, False, qa[4][:, :1])
    with pytest.raises(ValueError, match="x_code_sum"):
        ops.qat_linear(x, *state, w, None, True, -8, 7, 32, False, None, True, qa[4])
    with pytest.raises(ValueError, match="w_group_size"):
        ops.weight_only_linear(x, w, None, -8, 7, 48, True, False)
    with pytest.raises(ValueError, match="grad_out"):
        ops.weight_only_linear_backward(x, x, w, -8, 7, 32, True, False, True, True, False)


# ---------------------------------------------------------------------------------------------
# learnable ranges (torchao's range_learning=True): the weight scales are trained parameters


def _rl_cfg(bits, group):
    gran = "per_group" if group else "per_channel"
    return tq.QuantConfig(bits=bits, granularity=gran, group_size=group, symmetric=True,
                          range_learning=True)  # fmt: skip


def _ao_rl_quantizer(bits, group, w):
    """torchao's range-learning weight fake quantizer, initialized on ``w`` as
    initialize_fake_quantizers does."""
    qat = pytest.importorskip("torchao.quantization.qat")
    from torchao.quantization.qat.fake_quantizer import IntxFakeQuantizer

    dtype = {8: torch.int8, 4: torch.int4, 2: torch.int2}[bits]
    kw = dict(is_symmetric=True, is_dynamic=False, range_learning=True)
    cfg = (qat.IntxFakeQuantizeConfig(dtype, group_size=group, **kw) if group
           else qat.IntxFakeQuantizeConfig(dtype, "per_channel", **kw))  # fmt: skip
    fq = IntxFakeQuantizer(cfg)
    fq._initialized = True
    fq(w.detach())
    return fq


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dt_id)
@pytest.mark.parametrize("group", [32, None], ids=["g32", "per-channel"])
@pytest.mark.parametrize("weight_only", [False, True], ids=["int8-x", "weight-only"])
def test_range_learning_matches_torchao(weight_only, group, dtype, device):
    """Initialized scales equal torchao's; after the scales moved, the layer's output (weight-only:
    bit-exact; int8 activations: fp64 bound) and the gradients of the scales, the weight and x
    match torchao's range-learning autograd within the dtype's bound."""
    act = NOT_QUANTIZED if weight_only else tq.QuantConfig()
    lin = tq.Linear(96, 40, activation=act, weight=_rl_cfg(4, group), device=device, dtype=dtype)
    fq = _ao_rl_quantizer(4, group, lin.weight)
    assert torch.equal(lin.weight_scale.detach(), fq.scale.detach())
    with torch.no_grad():  # training moved the ranges: some tighter (more clipping), some wider
        lin.weight_scale.mul_(torch.rand_like(lin.weight_scale) * 0.8 + 0.5)
        fq.scale.copy_(lin.weight_scale)
    x = (torch.randn(5, 7, 96, device=device) * 2).to(dtype)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    wa = lin.weight.detach().clone().requires_grad_()
    x_fq = xa if weight_only else fake_quantize_with_mask(xa.detach(), act)[0]
    want = F.linear(x_fq, fq(wa), lin.bias.detach())
    got = lin(xb)
    dy = torch.randn_like(want)
    want.backward(dy)
    got.backward(dy)
    if weight_only:  # the same F.linear on the same operands; x's gradient too
        assert torch.equal(got, want)
        assert_close_rel(xb.grad, xa.grad.double(), dtype, "grad_x vs torchao")
    else:
        assert_close_rel(got, want.double(), dtype, "out vs torchao")
    assert_close_rel(lin.weight.grad, wa.grad.double(), dtype, "grad_w vs torchao")
    assert_close_rel(lin.weight_scale.grad, fq.scale.grad.double(), dtype, "grad_scale vs torchao")
    assert lin.weight_scale.grad.dtype == torch.float32


def test_range_learning_matches_torch_learnable_per_channel(device):
    """torch.ao's _LearnableFakeQuantize op (per channel, zero point 0, grad_factor 1): values
    bit-exact, scale and weight gradients within fp32 rounding (the zero point is not learned)."""
    lin = tq.Linear(64, 24, activation=NOT_QUANTIZED, weight=_rl_cfg(8, None), device=device)
    with torch.no_grad():
        lin.weight_scale.mul_(0.6)
    s = lin.weight_scale.detach()[:, 0].clone().requires_grad_()
    zp = torch.zeros(24, device=device)
    wa = lin.weight.detach().clone().requires_grad_()
    w_fq = torch._fake_quantize_learnable_per_channel_affine(wa, s, zp, 0, -128, 127, 1.0)
    x = torch.randn(9, 64, device=device)
    want = F.linear(x, w_fq, lin.bias.detach())
    got = lin(x)
    assert torch.equal(got, want)
    dy = torch.randn_like(want)
    want.backward(dy)
    got.backward(dy)
    assert_close_rel(lin.weight.grad, wa.grad.double(), torch.float32, "grad_w")
    assert_close_rel(lin.weight_scale.grad[:, 0], s.grad.double(), torch.float32, "grad_scale")


@pytest.mark.parametrize(
    "N,K,G", [(24, 96, 1), (24, 130, 1), (24, 96, 3), (24, 128, 4), (8, 192, 2), (8, 96, 8),
              (8, 90, 10)],
    ids=["per-channel", "per-channel-K130", "g32", "g32-K128", "g96", "g12-fallback", "g9-fallback"],
)  # fmt: skip
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dt_id)
def test_scale_gradient_in_the_wgrad_epilogue(N, K, G, dtype, device):
    """The wgrad GEMM's epilogue reduces sum_{k in g} g_fq * (q - w/s inside the range, q outside)
    per (row, group) for every tile layout (tiles inside a group, groups inside a tile, a
    narrowed tile, groups no tile fits); fp64 bound, grad_w unchanged, the twin agrees."""
    from triton_qat.dispatch import wgrad
    from triton_qat.kernels.gemm_backward_torch import wgrad_torch

    M = 13
    w = (torch.randn(N, K, device=device) * 0.1).to(dtype)
    s = torch.rand(N, G, device=device) * 0.01 + 0.004
    q = quantize_rows(w, -8, 7, K // G, True, pack_mask=False, scale=s, with_y=True)
    assert (~q.mask.bool()).any() and q.mask.bool().any()
    dy = torch.randn(M, N, device=device).to(dtype)
    x = torch.randn(M, K, device=device).to(dtype)
    grad_w, grad_s = wgrad(dy, x, q.mask, w, s, -8, 7)
    g_fq = dy.double().T @ x.double()
    v = w.float() * (1.0 / s).repeat_interleave(K // G, 1)
    code = torch.clamp(torch.round(v), -8, 7)
    t = torch.where(q.mask.bool(), code - v, code).double()
    assert_close_rel(grad_s, (g_fq * t).reshape(N, G, -1).sum(-1), torch.float32, "grad_scale")
    assert_close_rel(grad_w, g_fq * q.mask.bool(), dtype, "grad_w")
    twin_w, twin_s = wgrad_torch(dy, x, q.mask, w, s, -8, 7)
    assert_close_rel(twin_s, (g_fq * t).reshape(N, G, -1).sum(-1), torch.float32, "twin")


def test_range_learning_trains_converts_and_saves(device):
    """prepare with a range-learning weight config: the scales are parameters an optimizer
    trains, saved in the state_dict; convert quantizes with the learned scales and equals the
    prepared eval output bit for bit."""
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16)).to(device)
    model = tq.prepare(model, weight=_rl_cfg(4, 32))
    assert "0.weight_scale" in model.state_dict()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    before = model[0].weight_scale.detach().clone()
    for _ in range(2):
        model(torch.randn(8, 64, device=device)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    assert not torch.equal(before, model[0].weight_scale.detach())
    model.eval()
    x = torch.randn(5, 64, device=device)
    with torch.no_grad():
        want = model(x)
        got = tq.convert(model)(x)
    assert torch.equal(got, want)


def test_range_learning_op_registration(device):
    x = torch.randn(13, 64, device=device, requires_grad=True)
    w = torch.randn(24, 64, device=device, requires_grad=True)
    b = torch.randn(24, device=device, requires_grad=True)
    s = (torch.rand(24, 2, device=device) * 0.02 + 0.01).requires_grad_()
    qa = ops.quantize(x.detach(), -128, 127, 64, False, False, True, None, None)
    torch.library.opcheck(ops.qat_linear, (x, *qa[:4], w, b, True, -8, 7, 32, False, s))
    torch.library.opcheck(ops.weight_only_linear, (x, w, b, -8, 7, 32, True, False, s))
    dy = torch.randn(13, 24, device=device)
    torch.library.opcheck(ops.qat_linear_backward, (dy, *qa[:4], w.detach(), -8, 7, 32, False,
                                                    s.detach(), True, True, True, True, True))  # fmt: skip
    torch.library.opcheck(ops.weight_only_linear_backward, (dy, x.detach(), w.detach(), -8, 7, 32,
                                                            True, False, True, True, True,
                                                            s.detach(), True))  # fmt: skip
    with pytest.raises(ValueError, match="need_w_scale"):
        ops.qat_linear_backward(dy, *qa[:4], w.detach(), -8, 7, 32, False, None, True, True, True,
                                True, True)  # fmt: skip


@pytest.mark.parametrize("weight_only", [False, True], ids=["int8-x", "weight-only"])
def test_range_learning_compile_fullgraph(weight_only, device):
    torch._dynamo.reset()
    counters.clear()
    act = NOT_QUANTIZED if weight_only else tq.QuantConfig()
    model = _mlp(device, torch.float32, act, _rl_cfg(4, 32))
    compiled = torch.compile(model, fullgraph=True)
    for _ in range(2):
        x = torch.randn(5, 9, 32, device=device, requires_grad=True)
        e_out, e_grads = _step(model, x)
        c_out, c_grads = _step(compiled, x)
        torch.testing.assert_close(c_out, e_out, rtol=0, atol=0)
        assert len(c_grads) == 6  # weight, bias, weight_scale of each layer
        for g, e in zip(c_grads, e_grads, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])


@pytest.mark.parametrize(
    "kwargs",
    [dict(granularity="per_channel", range_learning=True),
     dict(granularity="per_token", symmetric=True, range_learning=True),
     dict(granularity="per_tensor", symmetric=True, range_learning=True),
     dict(range_learning=1)],
    ids=["asym", "per-token", "per-tensor", "not-bool"],
)  # fmt: skip
def test_range_learning_config_errors(kwargs):
    with pytest.raises(ValueError, match="range_learning"):
        tq.QuantConfig(**kwargs)


def test_range_learning_scales_follow_reset_parameters_after_to_empty():
    """Meta-device init (as FSDP2 users build models): to_empty + reset_parameters must give
    the learned scales the new weight's scales, not the empty memory's contents."""
    cfg = tq.QuantConfig(bits=4, granularity="per_group", group_size=16, symmetric=True,
                         range_learning=True)  # fmt: skip
    lin = tq.Linear(32, 8, weight=cfg, device="meta")
    lin.to_empty(device="cpu")
    lin.reset_parameters()
    assert torch.isfinite(lin.weight_scale).all() and (lin.weight_scale > 0).all()
    assert torch.equal(lin.weight_scale, lin._initial_weight_scale())


class _Same(nn.Module):
    def forward(self, w):
        return w


@pytest.mark.parametrize(
    "init", ["to_empty", "assign", "prepared", "parametrized", "weight_norm", "spectral", "fsdp2"]
)
def test_range_learning_scales_follow_a_loaded_float_checkpoint(init):
    """A state dict with a weight and no weight_scale (a float checkpoint) initializes the
    learned scales from the loaded weight once the load is done (they were the uninitialized
    memory of to_empty, the meta tensor under assign=True, or the scales of the weight before: a
    parametrized weight's original, weight_norm's two, FSDP2's DTensors too), still listed
    missing; a state dict with its own weight_scale, or whose weight fails to load, leaves the
    scales alone; spectral_norm's loaded power-iteration vectors stay as loaded (the scales read
    the weight in eval mode)."""
    import torch.distributed as dist
    from torch.nn.utils import parametrize

    cfg = tq.QuantConfig(bits=4, granularity="per_group", group_size=16, symmetric=True,
                         range_learning=True)  # fmt: skip
    torch.manual_seed(0)
    src = nn.Sequential(nn.Linear(32, 8))
    device = "meta" if init in ("to_empty", "assign") else "cpu"
    model = nn.Sequential(nn.Linear(32, 8, device=device))
    for m in (src, model):
        if init == "parametrized":
            parametrize.register_parametrization(m[0], "weight", _Same())
        elif init in ("weight_norm", "spectral"):
            norm = nn.utils.parametrizations.weight_norm if init == "weight_norm" else (
                nn.utils.parametrizations.spectral_norm)  # fmt: skip
            norm(m[0])
    ckpt = src.state_dict()
    model = tq.prepare(model, weight=cfg)
    lin = model[0]
    if init == "to_empty":
        model.to_empty(device="cpu")
        lin.weight_scale.data.fill_(float("nan"))  # what empty memory may hold
    if init == "fsdp2":
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor import distribute_tensor

        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        fully_shard(model)
        mesh, placements = lin.weight.device_mesh, lin.weight.placements
        ckpt = {k: distribute_tensor(v, mesh, placements) for k, v in ckpt.items()}
    try:
        keys = model.load_state_dict(ckpt, strict=False, assign=init == "assign")
        assert keys.missing_keys == ["0.weight_scale"] and not keys.unexpected_keys
        full = (lambda t: t.full_tensor()) if init == "fsdp2" else (lambda t: t)
        if init == "spectral":  # (before any read of the weight in train mode iterates)
            for name in ("_u", "_v"):
                key = f"0.parametrizations.weight.0.{name}"
                assert torch.equal(model.state_dict()[key], ckpt[key])
        model.eval(), src.eval()  # (spectral_norm: the weight without a power iteration)
        assert torch.equal(full(lin.weight), src[0].weight) and lin.weight_scale.requires_grad
        want = lin._scales_of(src[0].weight.detach())
        assert torch.equal(full(lin.weight_scale), want)
        trained = {**ckpt, "0.weight_scale": lin.weight_scale.detach() * 3}
        model.load_state_dict(trained)
        assert torch.equal(full(lin.weight_scale), want * 3)
    finally:
        if init == "fsdp2":
            dist.destroy_process_group()
    if init == "prepared":
        bad = {k: v[:4] if k.endswith("weight") else v for k, v in ckpt.items()}
        with pytest.raises(RuntimeError, match="size mismatch for 0.weight"):
            model.load_state_dict(bad, strict=False)
        assert torch.equal(lin.weight_scale, want * 3)


def test_weight_only_convert_keeps_its_dtype_through_the_state_dict():
    cfg = tq.QuantConfig(bits=4, granularity="per_group", group_size=16, symmetric=True)
    lin = tq.Linear(32, 8, activation=tq.NOT_QUANTIZED, weight=cfg, dtype=torch.bfloat16)
    q = tq.convert(lin)
    x = torch.randn(3, 32).to(torch.bfloat16)
    fresh = tq.QuantizedLinear(32, 8, activation=tq.NOT_QUANTIZED, weight=cfg)  # fp32 default
    fresh.load_state_dict(q.state_dict())
    assert fresh.weight_dtype == torch.bfloat16 and torch.equal(fresh(x), q(x))
