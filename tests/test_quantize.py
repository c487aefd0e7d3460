"""Quantize kernels: codes, scales, zero points, masks and fake-quantized values bit-exact against
the plain-torch docs/numerics.md reference and against torch's own fake_quantize ops."""

import pytest
import torch
from conftest import DTYPES, dt_id
from hypothesis import given, settings
from hypothesis import strategies as st

import triton_qat as tq
from triton_qat import autotune
from triton_qat.dispatch import quantize_rows
from triton_qat.kernels.quantize import code_offset
from triton_qat.kernels.quantize_torch import quantize_rows_torch as quantize_rows_ref
from triton_qat.kernels.quantize_torch import unpack_bits
from triton_qat.reference import fake_quantize_ref, fake_quantize_with_mask

SHAPES = [(1, 40), (3, 96), (13, 130), (67, 33)]


def _assert_same(a, b, what=""):
    for name, u, v in zip(a._fields, a, b, strict=True):
        if u is None and v is None:
            continue
        assert u.dtype == v.dtype and u.shape == v.shape, (
            f"{what} {name}: {u.dtype}{tuple(u.shape)}"
        )
        assert torch.equal(u, v) or (
            u.is_floating_point()
            and torch.equal(u.isnan(), v.isnan())
            and torch.equal(u.nan_to_num(), v.nan_to_num())
        ), f"{what} {name}: {(u != v).sum().item()} of {u.numel()} differ"


def _data(shape, dtype, device, scale=3.0):
    x = torch.randn(shape, device=device) * scale
    x[0, : shape[1] // 3] *= 40  # one row with a much wider range, and a near-constant one
    if shape[0] > 2:
        x[2] = x[2] * 1e-3 + 0.5
    return x.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
@pytest.mark.parametrize("R,C", SHAPES, ids=[f"R{r}-C{c}" for r, c in SHAPES])
@pytest.mark.parametrize(
    "bits,symmetric",
    [(8, False), (8, True), (4, False), (2, True)],
    ids=["i8-asym", "i8-sym", "i4-asym", "i2-sym"],
)
def test_per_token_bit_exact(R, C, dtype, bits, symmetric, device):
    cfg = tq.QuantConfig(bits=bits, symmetric=symmetric)
    x = _data((R, C), dtype, device)
    args = (x, cfg.qmin, cfg.qmax, C, symmetric)
    got = quantize_rows(*args, pack_mask=True, with_y=True)
    want = quantize_rows_ref(*args, pack_mask=True, with_y=True)
    _assert_same(got, want, "per-token")
    # the public fake_quantize is the same numbers, and its mask drives the STE gradient
    xg = x.clone().requires_grad_()
    y = tq.fake_quantize(xg, cfg)
    y.backward(torch.ones_like(y))
    assert torch.equal(y, want.y)
    assert torch.equal(xg.grad != 0, unpack_bits(want.mask, C))


@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
@pytest.mark.parametrize(
    "N,K,group,bits",
    [(40, 96, 32, 4), (17, 96, 96, 8), (24, 130, 13, 8), (5, 64, 64, 4), (33, 256, 128, 4)],
    ids=["g32-i4", "per-channel-i8", "g13-i8", "per-channel-i4", "g128-i4"],
)
def test_weight_groups_bit_exact(N, K, group, bits, dtype, device):
    w = _data((N, K), dtype, device, scale=0.05)
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    got = quantize_rows(w, qmin, qmax, group, True, pack_mask=False, with_y=True)
    want = quantize_rows_ref(w, qmin, qmax, group, True, pack_mask=False, with_y=True)
    _assert_same(got, want, "weight")
    assert torch.equal(got.code_sum, got.codes.to(torch.int32).reshape(N, -1, group).sum(-1))
    gran = "per_channel" if group == K else "per_group"
    cfg = tq.QuantConfig(
        bits=bits,
        granularity=gran,
        symmetric=True,
        group_size=group if gran == "per_group" else None,
    )
    assert torch.equal(tq.fake_quantize(w, cfg), fake_quantize_ref(w, cfg))


@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
@pytest.mark.parametrize(
    "R,C,group,pack",
    [(13, 130, 130, True), (40, 96, 32, False), (17, 96, 96, False), (24, 130, 13, False)],
    ids=["token-bits", "g32", "per-channel", "g13"],
)
def test_skipped_mask_and_sums_leave_the_rest(R, C, group, pack, dtype, device):
    """write_mask=False (the forward's weight) and write_sums=False (an activation for symmetric
    weights) drop exactly those outputs, empty on every backend: codes, qparams and the sums or
    mask still written are the full call's bits."""
    x = _data((R, C), dtype, device)
    args = (x, -128, 127, group, False)
    full = quantize_rows(*args, pack_mask=pack)
    no_mask = quantize_rows(*args, pack_mask=pack, write_mask=False)
    no_sums = quantize_rows(*args, pack_mask=pack, write_sums=False)
    assert no_mask.mask.shape == (0,) and no_sums.code_sum.shape == (R, 0)
    _assert_same(no_mask._replace(mask=full.mask), full, "write_mask=False")
    _assert_same(no_sums._replace(code_sum=full.code_sum), full, "write_sums=False")
    assert full.mask.numel() and full.code_sum.numel()
    # symmetric weights' zero points (the code offset) are not stored; given ones come back
    sym = (x, -8, 7, group, True)
    full, no_zp = (quantize_rows(*sym, pack_mask=pack, write_zero_point=w) for w in (True, False))
    assert no_zp.zero_point.shape == (R, 0)
    _assert_same(no_zp._replace(zero_point=full.zero_point), full, "write_zero_point=False")
    given = dict(scale=full.scale[:, :1], zero_point=torch.zeros_like(full.scale[:, :1]).int())
    kept = quantize_rows(*args, pack_mask=pack, write_zero_point=False, **given)
    assert kept.zero_point.shape == (R, C // group)


@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_per_tensor_matches_reference(dtype, symmetric, device):
    x = _data((13, 40), dtype, device)
    cfg = tq.QuantConfig(granularity="per_tensor", symmetric=symmetric)
    y = tq.fake_quantize(x, cfg)
    y_ref, _ = fake_quantize_with_mask(x, cfg)
    assert torch.equal(y, y_ref)
    assert len(torch.unique(y.float())) > 20


@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
def test_matches_torch_fake_quantize_per_channel(dtype, device):
    """Codes and values with our own (family-1) scales equal torch.fake_quantize_per_channel_affine."""
    w = _data((24, 96), dtype, device, scale=0.1)
    got = quantize_rows(w, -128, 127, 96, True, pack_mask=False, with_y=True)
    scale = got.scale[:, 0]
    zp = torch.zeros(24, dtype=torch.int32, device=device)
    wg = w.clone().requires_grad_()
    want = torch.fake_quantize_per_channel_affine(wg, scale, zp, 0, -128, 127)
    want.backward(torch.ones_like(want))
    assert torch.equal(got.y, want.detach())
    assert torch.equal(got.mask.bool(), wg.grad != 0)
    if dtype == torch.float32:  # in fp32 a row's +amax lands on 127.5 -> 128: clipped, masked
        assert (~got.mask.bool()).any(), "the positive amax must clip to 127 and be masked"


@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
@pytest.mark.parametrize(
    "qmin,qmax", [(0, 255), (0, 127), (-128, 127)], ids=["quint8", "reduce", "qint8"]
)
def test_matches_torch_fake_quantize_per_tensor(dtype, qmin, qmax, device):
    """Given torch.ao-style qparams, values and mask equal torch.fake_quantize_per_tensor_affine."""
    x = _data((13, 40), dtype, device)
    scale = torch.tensor([0.037], device=device)
    zp = torch.tensor([(qmin + qmax) // 2 + 3], dtype=torch.int32, device=device)
    got = quantize_rows(
        x, qmin, qmax, 40, False, pack_mask=True, scale=scale, zero_point=zp, with_y=True
    )
    xg = x.clone().requires_grad_()
    want = torch.fake_quantize_per_tensor_affine(xg, scale, zp, qmin, qmax)
    want.backward(torch.ones_like(want))
    assert torch.equal(got.y, want.detach())
    assert torch.equal(unpack_bits(got.mask, 40), xg.grad != 0)
    offset = code_offset(qmin, qmax)
    assert torch.equal(got.zero_point, (zp + offset).expand(13, 1))
    codes = got.codes.to(torch.int32) - offset
    assert codes.min() >= qmin and codes.max() <= qmax


@settings(max_examples=25, deadline=None)
@given(
    rows=st.lists(
        st.one_of(
            st.floats(-1e4, 1e4, width=32),
            st.sampled_from([0.0, -0.0, 1e-30, -1e-30, 65504.0, -3.0e38, 2.5, -2.5, 0.5]),
        ),
        min_size=8,
        max_size=8,
    ).map(lambda v: v * 3),
    dtype=st.sampled_from(DTYPES),
    symmetric=st.booleans(),
)
def test_property_special_values(rows, dtype, symmetric):
    """Zeros, signed zeros, denormal-ish, huge, exact halves: still bit-exact (finite rows)."""
    x = torch.tensor(rows, dtype=torch.float32).reshape(3, 8).to(dtype)
    if not torch.isfinite(x).all():
        return
    got = quantize_rows(x, -128, 127, 8, symmetric, pack_mask=True, with_y=True)
    want = quantize_rows_ref(x, -128, 127, 8, symmetric, pack_mask=True, with_y=True)
    _assert_same(got, want, "special")


def test_all_zero_row(device):
    x = torch.zeros(2, 16, device=device, dtype=torch.bfloat16)
    got = quantize_rows(x, -128, 127, 16, False, pack_mask=True, with_y=True)
    assert torch.equal(
        got.scale, torch.full_like(got.scale, torch.finfo(torch.bfloat16).smallest_normal)
    )
    assert torch.equal(got.zero_point, torch.full_like(got.zero_point, -128))
    assert torch.equal(got.y, x)


@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_cuda_nan_zero_point_rows(dtype, symmetric, device, monkeypatch):
    """With CUDA's NaN zero point (0, in range) every row's mask test is constant and a
    non-finite row's values are NaN through a NaN scale factor (no NaN bits OR-ed in): run
    here by giving the CPU launch CUDA's cast. Rows holding inf / -inf / NaN: y all NaN, the mask
    the reference's for a zero point of 0; the other rows: the same bits as with the CPU's cast."""
    from triton_qat.kernels import quantize as qk

    x = _data((6, 40), dtype, device)
    x[1, 3], x[3, 9], x[4, 0] = float("inf"), -float("inf"), float("nan")
    args = (x, -128, 127, 40, symmetric)
    cpu = quantize_rows(*args, pack_mask=False, with_y=True)
    monkeypatch.setitem(qk.NAN_ZERO_POINT, "cpu", qk.NAN_ZERO_POINT["cuda"])
    autotune.invalidate()  # launches are planned once per key: plan again with CUDA's cast
    got = quantize_rows(*args, pack_mask=False, with_y=True)
    autotune.invalidate()
    bad, good = [1, 3, 4], [0, 2, 5]
    assert torch.isnan(got.y[bad]).all()
    for name in ("codes", "scale", "zero_point", "mask", "y"):
        u, v = getattr(got, name)[good], getattr(cpu, name)[good]
        assert torch.equal(u, v), name
    # bad rows: the reference's mask QMIN <= rne(x * (1/s)) + zp <= QMAX with zp = 0: x * 0 = 0
    # (in range) for finite x where s = inf; NaN (never in range) for inf x or a NaN scale
    want = torch.isfinite(x[bad]) & ~torch.isnan(got.scale[bad])
    assert torch.equal(got.mask[bad].bool(), want)


@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
@pytest.mark.parametrize("group", [32, 64], ids=["g32", "per-row"])
def test_negative_nan_is_not_lost(dtype, group, device):
    """A NaN with its sign bit set (x86's default NaN; -NaN in any dtype) among positive values:
    the row's range holds it (the 16-bit maxima are widened keeping a NaN's sign, which the GPU's
    fp16 -> fp32 conversion drops), so the row's scale and values are NaN, as the reference's."""
    x = _data((4, 64), dtype, device).abs()  # only the NaN is negative
    # -NaN by its bits (0xFFC00000, 0xFE00, 0xFFC0): torch's own neg() may drop the sign
    bits = {torch.float32: (-4194304, torch.int32), torch.float16: (-512, torch.int16),
            torch.bfloat16: (-64, torch.int16)}[dtype]  # fmt: skip
    neg_nan = torch.tensor([bits[0]], dtype=bits[1]).view(dtype)
    assert torch.isnan(neg_nan).all()
    x[1, 5] = neg_nan[0].to(device)
    args = (x, -128, 127, group, False)
    got = quantize_rows(*args, pack_mask=group == 64, with_y=True)
    want = quantize_rows_ref(*args, pack_mask=group == 64, with_y=True)
    _assert_same(got, want, "-NaN")
    assert torch.isnan(got.scale[1, 0]) and torch.isnan(got.y[1, :group]).all()


@pytest.mark.parametrize(
    "bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"]
)
@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_non_finite_token_stays_in_its_row(bad, symmetric, device):
    x = _data((5, 24), torch.float32, device)
    x[3, 7] = bad
    args = (-128, 127, 24, symmetric)
    got = quantize_rows(x, *args, pack_mask=True, with_y=True)
    clean = quantize_rows(torch.cat([x[:3], x[4:]]), *args, pack_mask=True, with_y=True)
    keep = [0, 1, 2, 4]
    assert torch.equal(got.y[keep], clean.y) and torch.equal(got.codes[keep], clean.codes)
    # the row itself is what the reference says, NaN for NaN (a NaN must never be hidden)
    want = quantize_rows_ref(x, *args, pack_mask=True, with_y=True)
    assert torch.equal(got.y.isnan(), want.y.isnan()) and torch.isnan(got.y[3]).any()
    assert torch.equal(got.y.nan_to_num(), want.y.nan_to_num())
    assert torch.equal(got.mask, want.mask)


def test_nan_weight_channel_is_not_hidden(device):
    w = _data((4, 32), torch.bfloat16, device, scale=0.1)
    w[1, 3] = float("nan")
    y = tq.fake_quantize(w, tq.QuantConfig(granularity="per_channel", symmetric=True))
    assert torch.isnan(y[1]).all() and torch.isfinite(y[[0, 2, 3]]).all()


def test_empty_batch(device):
    x = torch.empty(0, 32, device=device)
    assert tq.fake_quantize(x, tq.QuantConfig()).shape == (0, 32)
    got = quantize_rows(x, -128, 127, 32, False, pack_mask=True)
    assert got.codes.shape == (0, 32) and got.mask.shape == (0, 4)


def test_bf16_rounded_scale_can_clip_the_row_max():
    """NUMERICS: for bf16 the rounded scale can push the row max past qmax, so the mask is not
    always all-true; the kernel and the reference must agree on exactly those elements."""
    torch.manual_seed(1)
    x = torch.randn(256, 64).to(torch.bfloat16)
    got = quantize_rows(x, -128, 127, 64, False, pack_mask=False)
    want = quantize_rows_ref(x, -128, 127, 64, False, pack_mask=False)
    assert torch.equal(got.mask, want.mask)
    assert (got.mask == 0).any()


@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
def test_minus_inf_row_matches_torch_on_the_device(dtype, device):
    """A row whose min is -inf has a NaN zero point; the references cast it with torch's cast on
    the tensor's device (x86 CPU: INT32_MIN, so torchao gives [nan, inf, inf, inf])."""
    x = torch.tensor([[-float("inf"), 1.0, -3.0, 0.5]], device=device).to(dtype)
    nan_zp = torch.tensor([float("nan")], device=device).to(torch.int32).item()
    got = quantize_rows(x, -128, 127, 4, False, pack_mask=True, with_y=True)
    assert got.zero_point.item() == nan_zp
    want, _ = fake_quantize_with_mask(x, tq.QuantConfig())
    assert torch.equal(got.y.isnan(), want.isnan()) and torch.equal(
        got.y.nan_to_num(posinf=1, neginf=-1), want.nan_to_num(posinf=1, neginf=-1)
    )
    if device == "cpu":  # the literal row the hostile trial compared against torchao on x86
        assert torch.isnan(got.y[0, 0]) and torch.isposinf(got.y[0, 1:].float()).all()
    assert torch.equal(tq.fake_quantize(x, tq.QuantConfig()).isnan(), want.isnan())


# ------------------------------------------------------------------------------------------------
# Rows the per-row rounding constants treat apart (kernels/quantize.py: _rounding_consts,
# _y_consts): every output bit-exact against the plain-torch twin, for one-tile and multi-tile
# groups (the interpreter's tiles are at most 64 wide), both mask layouts and all dtypes.

NAN, INF = float("nan"), float("inf")


def _special_rows(C, dtype, device):
    """Ordinary rows and rows holding NaN, +-inf, both infinities, NaN and inf, only NaN, only
    zeros, -0.0, a range that overflows fp16, huge and tiny values."""
    big = 6.0e4 if dtype == torch.float16 else 3.0e38
    rows = [torch.randn(C) * 3 for _ in range(2)]
    for bad in ([NAN], [INF], [-INF], [INF, -INF], [NAN, INF], [NAN, -INF]):
        r = torch.randn(C)
        r[torch.randperm(C)[: len(bad)]] = torch.tensor(bad)
        rows.append(r)
    rows += [torch.full((C,), NAN), torch.zeros(C), torch.full((C,), -0.0)]
    rows.append(torch.linspace(-big, big, C))  # fp16: mx - mn overflows (scale inf, no inf in x)
    rows.append(torch.randn(C) * 1e-38)  # subnormal fp32 range: the scale clamps to eps
    return torch.stack(rows).to(dtype).to(device)


@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
@pytest.mark.parametrize("C", [24, 130], ids=["one-tile", "multi-tile"])
@pytest.mark.parametrize(
    "qmin,qmax,symmetric",
    [(-128, 127, False), (-128, 127, True), (-8, 7, False), (-127, 127, False), (0, 255, False),
     (-10, -5, False), (-10, -5, True), (3, 100, False)],
    ids=["i8-asym", "i8-sym", "i4-asym", "narrow", "quint8", "neg-range", "neg-range-sym",
         "pos-range"],
)  # fmt: skip
@pytest.mark.parametrize("pack_mask", [True, False], ids=["bits", "bytes"])
def test_non_finite_rows_match_twin(C, dtype, qmin, qmax, symmetric, pack_mask, device):
    """NaN / inf rows get NaN or inf scales: their codes, zero points, masks, code sums and
    fake-quantized values equal the twin's bit for bit (NaN positions compared), including the
    x86 NaN zero point (INT32_MIN, the row's y then +inf where x is finite) and ranges that do
    not hold 0 (these test NaN products per element)."""
    x = _special_rows(C, dtype, device)
    args = (x, qmin, qmax, C, symmetric)
    got = quantize_rows(*args, pack_mask=pack_mask, with_y=True)
    want = quantize_rows_ref(*args, pack_mask=pack_mask, with_y=True)
    _assert_same(got, want, "special rows")


@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
@pytest.mark.parametrize("group", [13, 32, 416], ids=["g13", "g32", "per-channel"])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym-weight"])
def test_special_weight_groups_match_twin(group, symmetric, dtype, device):
    """Weight groups with NaN, inf, huge offsets (torchao's asymmetric zero point past 2**21, so
    every code clamps) and constant values: every output equals the twin's."""
    torch.manual_seed(0)
    w = torch.randn(10, 416) * 0.05
    w[1, 5] = NAN
    w[2, 40] = INF
    w[3, 70] = -INF
    w[4] = 1.0e7 + torch.arange(416) * 0.5  # asym: midrange 1e7 -> zp ~1e7, every code clamps
    w[5] = -3.0e6 - torch.arange(416) * 0.25
    w[6] = 0.25  # constant groups: range 0, scale eps
    w[7, :208] = INF
    w[7, 208:] = -INF
    w = w.to(dtype).to(device)
    bits = 4
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    kw = dict(pack_mask=False, with_y=True, asym_weight=not symmetric)
    got = quantize_rows(w, qmin, qmax, group, symmetric, **kw)
    want = quantize_rows_ref(w, qmin, qmax, group, symmetric, **kw)
    _assert_same(got, want, "weight groups")
    # the backward's call (no codes, no sums): the same scales, masks and values
    again = quantize_rows(w, qmin, qmax, group, symmetric, write_codes=False, **kw)
    for a, b in ((again.mask, got.mask), (again.scale, got.scale), (again.y, got.y)):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
@pytest.mark.parametrize(
    "qmin,qmax,zp", [(0, 255, 131), (0, 127, 0), (-128, 127, -3), (-128, 127, 127)],
    ids=["quint8", "reduce", "qint8", "qint8-edge"],
)  # fmt: skip
@pytest.mark.parametrize("scale", [0.037, 1e-30, 3.0e35], ids=["s", "tiny", "huge"])
def test_given_qparams_special_values_match_twin(qmin, qmax, zp, scale, dtype, device):
    """Given (torch.ao / per-tensor) qparams meet NaN products in any row, products past 2**22
    (a tiny scale) and infinities: codes (stored shifted for quint8), masks, sums and y match."""
    x = _special_rows(40, dtype, device)
    s = torch.tensor([scale], device=device)
    z = torch.tensor([zp], dtype=torch.int32, device=device)
    kw = dict(pack_mask=True, scale=s, zero_point=z, with_y=True)
    got = quantize_rows(x, qmin, qmax, 40, False, **kw)
    want = quantize_rows_ref(x, qmin, qmax, 40, False, **kw)
    _assert_same(got, want, "given qparams")


@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
@pytest.mark.parametrize("group", [4, 8, 16, 64], ids=lambda g: f"g{g}")
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym-weight"])
@pytest.mark.parametrize("transposed", [False, True], ids=["rows", "x.T"])
def test_small_groups_as_tile_rows_match_twin(group, symmetric, transposed, dtype, device):
    """Power-of-two groups narrower than the row run as rows of groups (GROUP_ROWS: a program
    walks one row, BLOCK_R of its groups per step). 2048 columns make several steps per row;
    NaN / inf groups, a strided x and both weight formulas stay bit-exact against the twin, with
    the group-major qparam layout the forward uses."""
    torch.manual_seed(0)
    w = torch.randn(6, 2048) * 0.05
    w[1, 5] = NAN
    w[2, 1000] = INF
    w[3, 2047] = -INF
    w[4, 64:128] = 3.0e5  # an offset group
    w = w.to(dtype).to(device)
    if transposed:
        w = w.T.contiguous().T  # same values, column-major strides
    qmin, qmax = -8, 7
    kw = dict(pack_mask=False, with_y=True, asym_weight=not symmetric)
    got = quantize_rows(w, qmin, qmax, group, symmetric, group_major=True, **kw)
    want = quantize_rows_ref(w, qmin, qmax, group, symmetric, **kw)
    _assert_same(got, want, "groups as rows")


@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
@pytest.mark.parametrize("block_r", [8, 16], ids=["32-per-thread", "64-per-thread"])
@pytest.mark.parametrize("write_codes", [False, True], ids=["backward", "forward"])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_split_groups_match_twin(block_r, write_codes, symmetric, dtype, device, monkeypatch):
    """Rows of groups split into several tile rows per group (the kernel's SPLIT, so that a
    thread holds one group's elements: kernels/quantize.py ``group_split``), as the backward's
    weight re-derivation (y and byte mask, no codes) and the forward's weight (codes, no sums)
    run them, two steps per row: codes, scales, masks and y bit-exact against the twin, NaN /
    inf / huge / constant groups included. The launch is spied on, so the test fails if these
    configs stop running the split layout."""
    import triton_qat.kernels.quantize as qmod

    launched = []
    real = qmod._quantize_rows_kernel

    class Spy:
        def __getitem__(self, grid):
            def run(*args, **kwargs):
                launched.append(kwargs)
                return real[grid](*args, **kwargs)

            return run

        def run(self, *args, grid, warmup, **kwargs):  # what the launcher calls
            return self[grid](*args, **kwargs)

    monkeypatch.setattr(qmod, "_quantize_rows_kernel", Spy())
    torch.manual_seed(0)
    big = 6.0e4 if dtype == torch.float16 else 3.0e38
    w = torch.randn(5, 4096) * 0.05
    w[1, 5], w[1, 300] = NAN, INF
    w[2, 4000] = -INF
    w[3, 128:256] = torch.linspace(-big, big, 128)  # a huge scale
    w[3, 2304:2432] = 0.25  # a constant group in the second step: scale eps
    w[4, 512:640] = 0.0
    w = w.to(dtype).to(device)
    config = {"BLOCK_R": block_r, "BLOCK_C": 128, "num_warps": 1}
    kw = dict(pack_mask=False, with_y=True, write_codes=write_codes, write_sums=False,
              write_zero_point=not symmetric)  # fmt: skip
    got = qmod.quantize_rows(w, -8, 7, 128, symmetric, config=config, group_major=True, **kw)
    k = launched[-1]
    steps = 4096 // (k["BLOCK_R"] * k["BLOCK_C"] * k["SPLIT"])
    assert k["GROUP_ROWS"] and k["SPLIT"] > 1 and steps > 1, (k["SPLIT"], steps)
    want = quantize_rows_ref(w, -8, 7, 128, symmetric, pack_mask=False, with_y=True)
    for name in (
        ("scale", "mask", "y")
        + (("codes",) if write_codes else ())
        + (() if symmetric else ("zero_point",))
    ):
        a, b = getattr(got, name), getattr(want, name)
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=name)
