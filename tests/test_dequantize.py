"""The dequantize kernel gives back exactly the fake-quantized values the quantize kernel wrote.

Both GEMM paths depend on it: the backward dequantizes the saved activation codes (x_fq for
wgrad), and the forward's DEQUANT path both operands. Bit-exact against the quantize kernel's own
``y`` and against the plain-torch twin."""

import pytest
import torch
from conftest import DTYPES, dt_id

from triton_qat import autotune
from triton_qat.dispatch import quantize_rows
from triton_qat.kernels.dequantize import dequantize_rows
from triton_qat.kernels.dequantize_torch import dequantize_rows_torch


def _bits_equal(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape, what
    same = (a == b) | (a.isnan() & b.isnan())
    assert same.all(), f"{what}: {(~same).sum().item()} elements differ"


def _both(codes, scale, zp, dtype, device, **kw):
    cfg = autotune.dequantize_config(*codes.shape, torch.device(device), dtype)
    got = dequantize_rows(codes, scale, zp, dtype, config=cfg, **kw)
    twin = dequantize_rows_torch(codes, scale, zp, dtype, **kw)
    return got, twin


CASES = {  # rows, columns, group (0: per row), bits, symmetric
    "per-token asym": (37, 130, 0, 8, False),
    "per-token sym": (5, 64, 0, 8, True),
    "per-channel int8": (24, 96, 0, 8, True),
    "int4 g32": (40, 96, 32, 4, True),
    "int4 g9": (17, 90, 9, 4, True),
    "int4 g128 wide": (8, 256, 128, 4, True),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("group_major", [False, True], ids=["row-major", "group-major"])
def test_dequantize_gives_back_the_quantized_values(name, dtype, group_major, device):
    R, C, group, bits, sym = CASES[name]
    x = (torch.randn(R, C, device=device) * 3).to(dtype)
    x[0, :5] = 0.0  # some exact zeros (codes at the zero point)
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    q = quantize_rows(x, qmin, qmax, group or C, sym, pack_mask=False, with_y=True,
                      group_major=group_major)  # fmt: skip
    got, twin = _both(q.codes, q.scale, q.zero_point, dtype, device)
    _bits_equal(got, q.y, f"{name}: kernel vs the quantize's y")
    _bits_equal(twin, q.y, f"{name}: twin vs the quantize's y")
    if sym:  # a symmetric zero point may be left out (the forward's weights: no zeros tensor)
        got, twin = _both(q.codes, q.scale, None, dtype, device)
        _bits_equal(got, q.y, f"{name}: kernel without a zero point")
        _bits_equal(twin, q.y, f"{name}: twin without a zero point")


@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
def test_asymmetric_weight_formula_and_shifted_codes(dtype, device):
    """torchao's asymmetric weights (dt(dt(q) - dt(zp)) * s) and quint8 codes stored shifted by
    -128 with their zero point (torch.ao's activations) both come back exactly."""
    w = (torch.randn(24, 64, device=device) + 5).to(dtype)  # off-centre: zero points != 0
    qw = quantize_rows(w, -8, 7, 32, False, pack_mask=False, with_y=True, asym_weight=True)
    assert (qw.zero_point != 0).any()
    got, twin = _both(qw.codes, qw.scale, qw.zero_point, dtype, device, asym_weight=True)
    _bits_equal(got, qw.y, "asym weight: kernel")
    _bits_equal(twin, qw.y, "asym weight: twin")
    # unsigned asymmetric weights ([0, 255]: codes and zero points stored shifted by -128) near
    # 40000, where bf16 steps by 256: the zero point is exact in dt, zero point - 128 is not, so
    # the formula must undo the shift before rounding
    w = (torch.rand(24, 64, device=device) * 2000 + 40000).to(dtype)
    qu = quantize_rows(w, 0, 255, 32, False, pack_mask=False, with_y=True, asym_weight=True)
    assert (qu.zero_point > 30000).all()
    got, twin = _both(qu.codes, qu.scale, qu.zero_point, dtype, device, asym_weight=True,
                      code_offset=-128)  # fmt: skip
    _bits_equal(got, qu.y, "asym uint8 weight: kernel")
    _bits_equal(twin, qu.y, "asym uint8 weight: twin")
    x = torch.relu(torch.randn(9, 48, device=device)).to(dtype)
    scale = torch.full((9, 1), 0.02, device=device)
    zp = torch.full((9, 1), 3, dtype=torch.int32, device=device)
    qx = quantize_rows(x, 0, 255, 48, False, pack_mask=True, with_y=True, scale=scale,
                       zero_point=zp)  # fmt: skip
    assert (qx.zero_point == 3 - 128).all()  # stored shifted, like the codes
    got, twin = _both(qx.codes, qx.scale, qx.zero_point, dtype, device)
    _bits_equal(got, qx.y, "quint8: kernel")
    _bits_equal(twin, qx.y, "quint8: twin")


def test_non_finite_rows_come_back_nan(device):
    """A row with +inf (scale inf) or NaN (scale NaN) is all NaN in the quantize's y, and so here
    (codes alone would give +-inf where a code differs from the zero point). A -inf row's y holds
    NaN and, on CPU, inf (its NaN zero point casts to INT32_MIN); here it is all NaN: either way
    every output of a GEMM reading the row is NaN, as the reference's."""
    x = torch.randn(4, 32, device=device)
    x[1, 3] = float("inf")
    x[2, 7] = float("nan")
    x[3, 0] = -float("inf")
    q = quantize_rows(x, -128, 127, 32, False, pack_mask=True, with_y=True)
    assert q.y[1:3].isnan().all() and q.y[0].isfinite().all() and q.y[3].isnan().any()
    got, twin = _both(q.codes, q.scale, q.zero_point, torch.float32, device)
    _bits_equal(got[:3], q.y[:3], "kernel")
    _bits_equal(twin[:3], q.y[:3], "twin")
    assert got[3].isnan().all() and twin[3].isnan().all()


def test_strided_codes_and_empty_inputs(device):
    x = torch.randn(6, 40, device=device)
    q = quantize_rows(x, -128, 127, 40, False, pack_mask=True, with_y=True)
    wide = torch.zeros(6, 64, dtype=torch.int8, device=device)
    wide[:, :40] = q.codes
    got, _ = _both(wide[:, :40], q.scale, q.zero_point, torch.float32, device)
    _bits_equal(got, q.y, "row-strided codes")
    empty = torch.zeros(0, 40, dtype=torch.int8, device=device)
    got, _ = _both(empty, q.scale[:0], q.zero_point[:0], torch.float32, device)
    assert got.shape == (0, 40)


@pytest.mark.parametrize("w_dtype", [torch.float16, torch.float32], ids=dt_id)
@pytest.mark.parametrize("asym", [False, True], ids=["sym", "asym"])
def test_formed_in_the_weight_dtype_and_stored_in_another(w_dtype, asym, device):
    """``out_dtype``: the values formed in the weight's dtype, then cast once (what autocast does to
    the reference's w_fq), in one pass: bit for bit ``y.to(out_dtype)``. fp16 -> bf16 rounds
    twice, so forming them directly in bf16 would differ."""
    w = (torch.randn(24, 64, device=device) * 3 + (300 if asym else 0)).to(w_dtype)
    q = quantize_rows(w, -8, 7, 32, not asym, pack_mask=False, with_y=True, asym_weight=asym)
    got, twin = _both(q.codes, q.scale, q.zero_point, w_dtype, device, asym_weight=asym,
                      out_dtype=torch.bfloat16)  # fmt: skip
    want = q.y.to(torch.bfloat16)
    _bits_equal(got, want, "kernel")
    _bits_equal(twin, want, "twin")
    if (
        w_dtype == torch.float16 and not asym
    ):  # the double rounding is real: one pass in bf16 differs
        direct, _ = _both(q.codes, q.scale, q.zero_point, torch.bfloat16, device)
        assert not torch.equal(direct, want)
