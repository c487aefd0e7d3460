"""Float8 (e4m3) fake quantization: per-row or per-tensor scales, torchao's ``Float8FakeQuantizer``
bit for bit (docs/numerics.md "Float8"). Its plain-torch twin is kernels/quantize_float8_torch.py.

Two kernels: ``_f8_amax_kernel`` takes each row's max |x| (per tensor only: launched again on the
row maxima), ``_f8_quantize_kernel`` takes a row's max (per row: itself, in a first pass over the
row), turns it into its scale and writes the fake-quantized row, or (``CODES``, for the fp8 tensor-core GEMM of :mod:`.gemm_float8`) the row's e4m3 codes and
its GEMM scale: the scale, or NaN where a code is NaN (a zero element over a zero scale), so the
GEMM's epilogue makes the rows the reference makes NaN. Like everything in ``kernels/``, this
imports nothing from ``triton_qat``.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._common import (
    INTERPRET,
    cast_to_dt,
    device_capability,
    div_scalar,
    dtype_code,
    mul_rn,
    new_empty,
    round_to_dt,
)
from .quantize import _to_f32

F8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max


@triton.jit
def _to_e4m3(t):
    """fp32 -> the nearest-even e4m3 value as fp32, for |t| <= 448 or NaN (the caller clamps;
    torch's saturating cast then agrees). Bit level on every backend: normals keep 3 mantissa
    bits (round at bit 20), subnormals (|t| < 2**-6) are multiples of 2**-9, rounded by adding
    and subtracting 1.5 * 2**14. NaN passes through; -0.0 keeps its sign."""
    bits = t.to(tl.uint32, bitcast=True)
    sign = bits & 0x80000000
    a = bits & 0x7FFFFFFF
    normal = ((a + 0x7FFFF + ((a >> 20) & 1)) & 0xFFF00000).to(tl.float32, bitcast=True)
    v = a.to(tl.float32, bitcast=True)
    sub = (v + 24576.0) - 24576.0
    r = tl.where(a >= 0x3C800000, normal, sub)
    r = (r.to(tl.uint32, bitcast=True) | sign).to(tl.float32, bitcast=True)
    return tl.where(t != t, t, r)


@triton.jit
def _e4m3_code(r):
    """The float8_e4m3fn byte (uint8) of ``r``, an e4m3 value as fp32 (:func:`_to_e4m3`'s result:
    |r| <= 448 or NaN), at the bit level: normals (|r| >= 2**-6) re-bias the exponent (127 -> 7)
    and keep 3 mantissa bits, subnormals are r * 2**9 (0..7), NaN is 0x7F; the sign on top."""
    bits = r.to(tl.uint32, bitcast=True)
    a = bits & 0x7FFFFFFF
    normal = (((a >> 23) - 120) << 3) | ((a >> 20) & 7)
    small = a < 0x3C800000
    sub = (tl.where(small, a, 0).to(tl.float32, bitcast=True) * 512.0).to(tl.uint32)  # exact
    code = tl.where(small, sub, normal)
    code = tl.where(r != r, 0x7F, code) | ((bits >> 24) & 0x80)
    return code.to(tl.uint8)


@triton.jit
def _fast_division(m_raw, s, r):
    """Whether :func:`_div_by_scale` computes IEEE ``x / s`` for every x of a row (scalars: the
    row's max |x| before any bound clamped it, its scale s, r = RN(1 / s)): s finite and at least
    2**-90 (every residual of a quotient that can reach an e4m3 rounding boundary is then exact),
    max |x| * r at most 2**100 (no product overflows). NaN and inf fail every comparison
    (docs/numerics.md "Float8", "Division without a divide")."""
    ok = (s >= 8.077935669463161e-28) & (s <= 3.4028234663852886e38)  # [2**-90, FLT_MAX]
    return ok & (m_raw * r <= 1.2676506002282294e30)  # 2**100


@triton.jit
def _div_by_scale(x, s, r, NARROW: tl.constexpr):
    """IEEE ``x / s`` (fp32) without a division: q = x * r, r = RN(1 / s), corrected by its exact
    FMA residual ``x - q * s``, then x's sign on top (a zero or tiny quotient keeps it, as the
    division does). ``NARROW``: x and s are fp16 / bf16 values (at most 11 significant bits),
    or x is an e4m3 value (at most 4) and s any fp32 value: one correction, exact for every such
    pair of significands (tests/test_float8.py); else two, the second starting within one ulp
    (Markstein's theorem). Exact where
    :func:`_fast_division` holds for the row: 3 or 5 FMA-pipe instructions and a LOP3 per element
    where the IEEE division takes ~15 and a slow path (docs/numerics.md "Float8")."""
    q = x * r
    q = tl.fma(tl.fma(-q, s, x), r, q)
    if not NARROW:
        q = tl.fma(tl.fma(-q, s, x), r, q)
    sign = x.to(tl.uint32, bitcast=True) & 0x80000000
    return (q.to(tl.uint32, bitcast=True) | sign).to(tl.float32, bitcast=True)


@triton.jit
def _e4m3_value(t, E4M3_CVT: tl.constexpr):
    """e4m3(clamp(t, +-448)) as fp32 for a NaN-free t: the hardware's saturating conversion where
    ``E4M3_CVT`` (:func:`e4m3_cvt_capability`, compiled: ``cvt.rn.satfinite.e4m3x2.f32``, which clamps and rounds to
    nearest even as torch's cast of the clamped value does), else the bit-level :func:`_to_e4m3`."""
    if E4M3_CVT:
        return t.to(tl.float8e4nv).to(tl.float32)
    else:
        return _to_e4m3(tl.minimum(tl.maximum(t, -448.0), 448.0))


@triton.jit
def _e4m3_byte(t, E4M3_CVT: tl.constexpr):
    """The float8_e4m3fn byte (uint8) of e4m3(clamp(t, +-448)) for a NaN-free t, as
    :func:`_e4m3_value` computes it."""
    if E4M3_CVT:
        return t.to(tl.float8e4nv).to(tl.uint8, bitcast=True)
    else:
        return _e4m3_code(_to_e4m3(tl.minimum(tl.maximum(t, -448.0), 448.0)))


@triton.jit
def _row_amax(p_x, K, DT: tl.constexpr, BLOCK_K: tl.constexpr):
    """max |x| of the row at ``p_x`` (K elements) as fp32, NaN if the row holds one: the int32
    order of the sign-cleared fp32 bits is the float order, a NaN above +inf."""
    o_k = tl.arange(0, BLOCK_K)  # [BK]
    if DT == 0:
        b_max = tl.zeros([BLOCK_K], dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):
            m_k = (k0 + o_k) < K
            b_x = tl.load(p_x + k0 + o_k, mask=m_k, other=0.0)
            b_max = tl.maximum(b_max, b_x.to(tl.int32, bitcast=True) & 0x7FFFFFFF)
        return tl.max(b_max, axis=0).to(tl.float32, bitcast=True)
    else:  # 16-bit: the sign-cleared bits order the same way, reduced before widening
        b_max16 = tl.zeros([BLOCK_K], dtype=tl.int16)
        for k0 in range(0, K, BLOCK_K):
            m_k = (k0 + o_k) < K
            b_h = tl.load(p_x + k0 + o_k, mask=m_k, other=0.0).to(tl.int16, bitcast=True)
            b_max16 = tl.maximum(b_max16, b_h & 0x7FFF)
        m16 = tl.max(b_max16, axis=0).to(tl.int16)
        return _to_f32(m16.to(p_x.dtype.element_ty, bitcast=True), DT)


@triton.jit
def _f8_amax_kernel(
    x_ptr, out_ptr, K, stride_x, DT: tl.constexpr, BLOCK_K: tl.constexpr
):  # fmt: skip
    """out[row] = max |x[row, :]| as fp32 (:func:`_row_amax`)."""
    row = tl.program_id(0).to(tl.int64)
    tl.store(out_ptr + row, _row_amax(x_ptr + row * stride_x, K, DT, BLOCK_K))


@triton.jit
def _f8_quantize_kernel(
    x_ptr, y_ptr, amax_ptr, scale_ptr, K, stride_x, stride_y, stride_amax, LB, UB,
    HAS_LB: tl.constexpr, HAS_UB: tl.constexpr, DT: tl.constexpr, DIV_BY_RECIP: tl.constexpr,
    CODES: tl.constexpr, OUT_DT: tl.constexpr, ROW_AMAX: tl.constexpr, E4M3_CVT: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    """y[row] = fp8(clamp(x / s, +-448)) * s in x's dtype, s = clamp(amax, LB, UB) / 448 in x's
    dtype then fp32 (LB / UB already rounded to x's dtype by the launcher, as torch.clamp does);
    scale_ptr[row * stride_amax] = s. ``CODES``: y_ptr (uint8) gets the e4m3 codes and
    scale_ptr[row] the GEMM scale: s, or NaN where the reference's row is not finite: a NaN
    code, or a fake-quantized value that overflows to inf in x's dtype and then in ``OUT_DT``
    (the dtype the GEMM's reference computes in: a weight's values are cast to x's). ``ROW_AMAX`` (per
    row): the row's max |x| taken here in a first pass over the row (the row is then read again
    from cache), not read from ``amax_ptr``: one launch instead of two. A row that
    :func:`_fast_division` admits (every finite row of a sane scale) divides by the product and
    corrections of :func:`_div_by_scale`, converts with ``E4M3_CVT``'s hardware conversion, and
    (``CODES``) checks only its largest value for overflow; any other row takes the IEEE
    division and the bit-level conversion element by element."""
    row = tl.program_id(0).to(tl.int64)
    if ROW_AMAX:
        b_raw = _row_amax(x_ptr + row * stride_x, K, DT, BLOCK_K)
    else:
        b_raw = tl.load(amax_ptr + row * stride_amax)
    b_m = b_raw
    if HAS_LB:  # torch.clamp keeps NaN; tl.maximum would drop it
        b_m = tl.where(b_m != b_m, b_m, tl.maximum(b_m, LB))
    if HAS_UB:
        b_m = tl.where(b_m != b_m, b_m, tl.minimum(b_m, UB))
    b_s = round_to_dt(div_scalar(b_m, 448.0, DIV_BY_RECIP), DT)
    if not CODES and (stride_amax != 0 or row == 0):
        tl.store(scale_ptr + row * stride_amax, b_s)
    b_inv = tl.div_rn(tl.full([], 1.0, tl.float32), b_s)
    p_x, p_y = x_ptr + row * stride_x, y_ptr + row * stride_y
    if _fast_division(b_raw, b_s, b_inv):  # no NaN and no inf quotient in this row
        _f8_row_fast(p_x, p_y, scale_ptr + row, K, b_s, b_inv, DT, OUT_DT, CODES, E4M3_CVT, BLOCK_K)
    else:
        _f8_row_ieee(p_x, p_y, scale_ptr + row, K, b_s, DT, OUT_DT, CODES, BLOCK_K)


@triton.jit
def _f8_row_fast(p_x, p_y, p_scale, K, b_s, b_inv, DT: tl.constexpr, OUT_DT: tl.constexpr,
                 CODES: tl.constexpr, E4M3_CVT: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """:func:`_f8_quantize_kernel`'s row where :func:`_fast_division` holds (no x / s is NaN or
    inf): the division of :func:`_div_by_scale`, the conversion of :func:`_e4m3_byte` /
    :func:`_e4m3_value`; ``CODES``: the GEMM scale NaN only where the row's largest value
    overflows (every value is monotone in |x / s|)."""
    o_k = tl.arange(0, BLOCK_K)  # [BK]
    b_tmax = tl.zeros([BLOCK_K], dtype=tl.float32)  # CODES: the largest |x / s| in this lane
    for k0 in range(0, K, BLOCK_K):
        m_k = (k0 + o_k) < K
        b_x = _to_f32(tl.load(p_x + k0 + o_k, mask=m_k, other=0.0), DT)
        b_t = _div_by_scale(b_x, b_s, b_inv, DT != 0)
        if CODES:
            b_tmax = tl.maximum(b_tmax, tl.abs(b_t))
            tl.store(p_y + k0 + o_k, _e4m3_byte(b_t, E4M3_CVT), mask=m_k)
        else:
            tl.store(p_y + k0 + o_k, cast_to_dt(_e4m3_value(b_t, E4M3_CVT) * b_s, DT), mask=m_k)
    if CODES:
        b_big = _e4m3_value(tl.max(b_tmax, axis=0), False)
        b_v = round_to_dt(round_to_dt(mul_rn(b_big, b_s), DT), OUT_DT)
        b_inf = (b_v == float("inf")) | (b_v == -float("inf"))
        tl.store(p_scale, tl.where(b_inf, float("nan"), b_s))


@triton.jit
def _f8_row_ieee(p_x, p_y, p_scale, K, b_s, DT: tl.constexpr, OUT_DT: tl.constexpr,
                 CODES: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """:func:`_f8_quantize_kernel`'s other rows (a NaN, an inf, a scale of 0, inf or below
    2**-90): torch's ops element by element, the IEEE division and the bit-level e4m3 rounding;
    ``CODES``: the GEMM scale NaN where any code is NaN or any value overflows."""
    o_k = tl.arange(0, BLOCK_K)  # [BK]
    b_nan = tl.zeros([BLOCK_K], dtype=tl.int32)  # CODES: a NaN code seen in this lane
    for k0 in range(0, K, BLOCK_K):
        m_k = (k0 + o_k) < K
        b_x = _to_f32(tl.load(p_x + k0 + o_k, mask=m_k, other=0.0), DT)
        b_t = tl.div_rn(b_x, tl.full([BLOCK_K], 1.0, tl.float32) * b_s)
        b_t = tl.where(b_t != b_t, b_t, tl.minimum(tl.maximum(b_t, -448.0), 448.0))
        if CODES:
            b_r = _to_e4m3(b_t)
            b_v = round_to_dt(round_to_dt(mul_rn(b_r, b_s), DT), OUT_DT)  # the reference's value
            b_bad = (b_r != b_r) | ((b_v == float("inf")) | (b_v == -float("inf")))
            b_nan = tl.maximum(b_nan, (b_bad & m_k).to(tl.int32))
            tl.store(p_y + k0 + o_k, _e4m3_code(b_r), mask=m_k)
        else:
            tl.store(p_y + k0 + o_k, cast_to_dt(_to_e4m3(b_t) * b_s, DT), mask=m_k)
    if CODES:
        tl.store(p_scale, tl.where(tl.max(b_nan, axis=0) > 0, float("nan"), b_s))


@triton.jit
def _f8_grad_terms(b_g, b_x, b_s):
    """Per element of a row: (g_direct before its rounding to dt, g * q, -gt * (x / s) / s),
    fp32, the terms of torchao's float8 gradient (docs/numerics.md "Float8", backward): t = x / s,
    q = e4m3(clamp(t)), gt = e4m3(clamp(g * s)) where |t| <= 448 (else 0), g_direct = gt / s.
    Every product rounded on its own (mul_rn), every quotient IEEE, as torch computes them."""
    b_t = tl.div_rn(b_x, b_s)
    b_in = (b_t >= -448.0) & (b_t <= 448.0)  # NaN: out
    b_q = _to_e4m3(tl.where(b_t != b_t, b_t, tl.minimum(tl.maximum(b_t, -448.0), 448.0)))
    b_v = mul_rn(b_g, b_s)
    b_gt = _to_e4m3(tl.where(b_v != b_v, b_v, tl.minimum(tl.maximum(b_v, -448.0), 448.0)))
    b_gt = tl.where(b_in, b_gt, 0.0)
    return tl.div_rn(b_gt, b_s), mul_rn(b_g, b_q), mul_rn(-b_gt, tl.div_rn(b_t, b_s))


@triton.jit
def _f8_grad_terms_fast(b_g, b_x, b_s, b_inv, NARROW: tl.constexpr, E4M3_CVT: tl.constexpr):
    """:func:`_f8_grad_terms` for a row whose divisions :func:`_f8_backward_fast` admits: each
    quotient by :func:`_div_by_scale` (x / s: one correction where ``NARROW``, x and s bf16 /
    fp16 values; gt / s: one, gt an e4m3 value; t / s: two), each e4m3 rounding by the
    hardware's conversion where ``E4M3_CVT`` (it keeps NaN and saturates inf, as the clamp
    does)."""
    b_t = _div_by_scale(b_x, b_s, b_inv, NARROW)  # finite: x is, s is normal
    b_in = (b_t >= -448.0) & (b_t <= 448.0)
    b_q = _e4m3_value(b_t, E4M3_CVT)
    b_v = mul_rn(b_g, b_s)  # g may be NaN or inf
    if E4M3_CVT:
        b_gt = b_v.to(tl.float8e4nv).to(tl.float32)
    else:
        b_gt = _to_e4m3(tl.where(b_v != b_v, b_v, tl.minimum(tl.maximum(b_v, -448.0), 448.0)))
    b_gt = tl.where(b_in, b_gt, 0.0)
    b_d = _div_by_scale(b_gt, b_s, b_inv, True)
    return b_d, mul_rn(b_g, b_q), mul_rn(-b_gt, _div_by_scale(b_t, b_s, b_inv, False))


@triton.jit
def _f8_backward_fast(m, nz_min, s, r, SUMS: tl.constexpr):
    """Whether a row's quotients may take :func:`_div_by_scale` (scalars: the row's (tensor's)
    max |x| m before any bound, its smallest nonzero |x|, the scale s, r = RN(1 / s)): the
    output pass needs x / s only against 448 and gt / s (gt 0 or at least 2**-9), exact for s in
    [2**-90, 2**100] and m * r <= 2**100; the sums (``SUMS``) need x / s and (x / s) / s exact at
    every magnitude, which holds where every nonzero |x| >= 2**-100 max(1, s * s) (each residual's
    lowest bit >= 2**-149, no quotient subnormal) and m * r * r <= 2**100
    (docs/numerics.md "Float8", backward)."""
    ok = (s >= 8.077935669463161e-28) & (s <= 1.2676506002282294e30)  # [2**-90, 2**100]
    ok &= m * r <= 1.2676506002282294e30
    if SUMS:
        ok &= (m * r) * r <= 1.2676506002282294e30
        ok &= nz_min >= 7.888609052210118e-31 * tl.maximum(1.0, s * s)  # 2**-100
    return ok


@triton.jit
def _row_max_and_min_nonzero(p_x, K, DT: tl.constexpr, BLOCK_K: tl.constexpr):
    """(max |x|, smallest nonzero |x|) of the row at ``p_x`` as fp32 bits (int32; NaN above inf,
    the minimum 0x7FFFFFFF for a row of zeros), in one pass."""
    o_k = tl.arange(0, BLOCK_K)  # [BK]
    b_max = tl.zeros([BLOCK_K], dtype=tl.int32)
    b_min = tl.full([BLOCK_K], 0x7FFFFFFF, dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        m_k = (k0 + o_k) < K
        b_x = _to_f32(tl.load(p_x + k0 + o_k, mask=m_k, other=0.0), DT)
        b_a = b_x.to(tl.int32, bitcast=True) & 0x7FFFFFFF
        b_max = tl.maximum(b_max, b_a)
        b_min = tl.minimum(b_min, tl.where(b_a == 0, 0x7FFFFFFF, b_a))
    return tl.max(b_max, axis=0), tl.min(b_min, axis=0)


@triton.jit
def _f8_block_terms(p_x, p_g, k0, o_k, K, b_s, b_inv, DT: tl.constexpr, FAST: tl.constexpr,
                    E4M3_CVT: tl.constexpr):  # fmt: skip
    """(mask, x, g, then :func:`_f8_grad_terms`'s three terms) of the row's block at column
    ``k0`` (``o_k``: the block's column offsets), the terms by :func:`_f8_grad_terms_fast`
    (``FAST``) or :func:`_f8_grad_terms` (the caller's unused terms compile away)."""
    m_k = (k0 + o_k) < K
    b_x = _to_f32(tl.load(p_x + k0 + o_k, mask=m_k, other=0.0), DT)
    b_g = _to_f32(tl.load(p_g + k0 + o_k, mask=m_k, other=0.0), DT)
    if FAST:
        b_d, b_gq, b_gts = _f8_grad_terms_fast(b_g, b_x, b_s, b_inv, DT != 0, E4M3_CVT)
    else:
        b_d, b_gq, b_gts = _f8_grad_terms(b_g, b_x, b_s)
    return m_k, b_x, b_g, b_d, b_gq, b_gts


@triton.jit
def _f8_row_sums(p_x, p_g, K, b_s, b_inv, m_bits, DT: tl.constexpr, FAST: tl.constexpr,
                 E4M3_CVT: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """(how many |x| of the row have the bits ``m_bits``, sum g * q, sum -gt * (x / s) / s): the
    scale gradient's pass over a row, its terms by :func:`_f8_grad_terms_fast` (``FAST``) or
    :func:`_f8_grad_terms`, summed per lane in the same order either way."""
    o_k = tl.arange(0, BLOCK_K)  # [BK]
    b_cnt = tl.zeros([BLOCK_K], dtype=tl.int32)
    b_s1 = tl.zeros([BLOCK_K], dtype=tl.float32)
    b_s2 = tl.zeros([BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        m_k, b_x, _, _, b_gq, b_gts = _f8_block_terms(p_x, p_g, k0, o_k, K, b_s, b_inv, DT, FAST,
                                                      E4M3_CVT)  # fmt: skip
        b_s1 += tl.where(m_k, b_gq, 0.0)
        b_s2 += tl.where(m_k, b_gts, 0.0)
        b_cnt += (m_k & ((b_x.to(tl.int32, bitcast=True) & 0x7FFFFFFF) == m_bits)).to(tl.int32)
    return tl.sum(b_cnt, axis=0), tl.sum(b_s1, axis=0), tl.sum(b_s2, axis=0)


@triton.jit
def _f8_row_grad(p_x, p_g, p_o, K, b_s, b_inv, m, b_share, DT: tl.constexpr,
                 FAST: tl.constexpr, E4M3_CVT: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """The gradient's pass over a row: ``dt(dt(g_direct) + dt(dt(share * [|x| == m]) *
    sgn(x)))``, g_direct by :func:`_f8_grad_terms_fast` (``FAST``) or :func:`_f8_grad_terms`."""
    o_k = tl.arange(0, BLOCK_K)  # [BK]
    for k0 in range(0, K, BLOCK_K):
        m_k, b_x, _, b_d, _, _ = _f8_block_terms(p_x, p_g, k0, o_k, K, b_s, b_inv, DT, FAST,
                                                 E4M3_CVT)  # fmt: skip
        b_at = (tl.abs(b_x) == m).to(tl.float32)
        b_abs = round_to_dt(mul_rn(b_share, b_at), DT)  # (exact products, never contracted)
        b_sgn = (b_x > 0).to(tl.float32) - (b_x < 0).to(tl.float32)
        b_out = round_to_dt(b_d, DT) + round_to_dt(mul_rn(b_abs, b_sgn), DT)
        tl.store(p_o + k0 + o_k, cast_to_dt(b_out, DT), mask=m_k)


@triton.jit
def _f8_backward_kernel(
    g_ptr, x_ptr, s_ptr, m_ptr, share_ptr, out_ptr, sums_ptr, K, stride_g, stride_x, stride_o,
    stride_s, LB, UB, HAS_LB: tl.constexpr, HAS_UB: tl.constexpr, DT: tl.constexpr,
    DIV_BY_RECIP: tl.constexpr, PHASE: tl.constexpr, E4M3_CVT: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    """torchao's float8 gradient of one row of x [R, K] (g, x, out in dt; s fp32 per row, or
    one per tensor with ``stride_s`` 0). ``PHASE`` 0 (per row): a first pass for the row's max
    |x| m (and its smallest nonzero |x|), a second for how many elements equal m and the scale
    gradient's two sums (:func:`_f8_row_sums`); the share ``g_m / count`` with ``g_m =
    dt(dt(sum) / 448)`` (0 where the bounds clamped m); a third pass writes the gradient
    (:func:`_f8_row_grad`). Per tensor: ``PHASE`` 1 writes the row's sums and count (against the
    tensor's max at ``m_ptr``) to ``sums_ptr`` [R, 3], the launcher reduces them and computes the
    share (``share_ptr``), ``PHASE`` 2 writes the row. Each pass takes the fast divisions and
    conversions on a row that :func:`_f8_backward_fast` admits, torch's operations elsewhere."""
    row = tl.program_id(0).to(tl.int64)
    b_s = tl.load(s_ptr + row * stride_s)
    b_inv = tl.div_rn(tl.full([], 1.0, tl.float32), b_s)
    p_g, p_x = g_ptr + row * stride_g, x_ptr + row * stride_x
    if PHASE != 2:
        row_bits, nz_bits = _row_max_and_min_nonzero(p_x, K, DT, BLOCK_K)
        m_bits = row_bits if PHASE == 0 else tl.load(m_ptr).to(tl.int32, bitcast=True)
        m = m_bits.to(tl.float32, bitcast=True)  # per tensor: at least the row's max
        nz_min = nz_bits.to(tl.float32, bitcast=True)
        if _f8_backward_fast(m, nz_min, b_s, b_inv, True):
            cnt, b_s1, b_s2 = _f8_row_sums(p_x, p_g, K, b_s, b_inv, m_bits, DT, True, E4M3_CVT,
                                           BLOCK_K)  # fmt: skip
        else:
            cnt, b_s1, b_s2 = _f8_row_sums(p_x, p_g, K, b_s, b_inv, m_bits, DT, False, E4M3_CVT,
                                           BLOCK_K)  # fmt: skip
        cnt = tl.where(m != m, 0, cnt)  # |x| == NaN holds nowhere
        if PHASE == 1:
            tl.store(sums_ptr + row * 3, b_s1)
            tl.store(sums_ptr + row * 3 + 1, b_s2)
            tl.store(sums_ptr + row * 3 + 2, cnt.to(tl.float32))
            return
        b_gm = round_to_dt(div_scalar(round_to_dt(b_s1 + b_s2, DT), 448.0, DIV_BY_RECIP), DT)
        keep = m == m
        if HAS_LB:
            keep &= m >= LB
        if HAS_UB:
            keep &= m <= UB
        if HAS_LB or HAS_UB:
            b_gm = tl.where(keep, b_gm, 0.0)
        # torch divides by the count converted to x's dtype (257 elements at the max are 256
        # in bf16, 2049 are 2048 in fp16)
        b_share = round_to_dt(tl.div_rn(b_gm, round_to_dt(cnt.to(tl.float32), DT)), DT)
    else:
        m = tl.load(m_ptr)
        b_share = tl.load(share_ptr)
    p_o = out_ptr + row * stride_o
    if _f8_backward_fast(m, m, b_s, b_inv, False):
        _f8_row_grad(p_x, p_g, p_o, K, b_s, b_inv, m, b_share, DT, True, E4M3_CVT, BLOCK_K)
    else:
        _f8_row_grad(p_x, p_g, p_o, K, b_s, b_inv, m, b_share, DT, False, E4M3_CVT, BLOCK_K)


class Float8Plan(NamedTuple):
    """What a :func:`launch_float8_quantize` launch decides once per key."""

    per_tensor: bool
    lb: float | None  # torchao's hp_value_lb, rounded to x's dtype
    ub: float | None
    dt: int
    div_by_recip: bool
    block_k: int
    num_warps: int
    out_dt: int = -1  # codes: the dtype code the reference's GEMM casts the values to (-1: dt)
    e4m3_cvt: bool = False  # the hardware's fp32 -> e4m3 conversion (:func:`e4m3_cvt_device`)


def _round_bound(v: float | None, dtype: torch.dtype) -> float | None:
    return None if v is None else float(torch.tensor(v, dtype=torch.float64).to(dtype))


def plan_float8_quantize(
    K: int,
    dtype: torch.dtype,
    per_tensor: bool,
    lb: float | None,
    ub: float | None,
    is_cuda: bool,
    interpret: bool = False,
    out_dtype: torch.dtype | None = None,
    e4m3_cvt: bool = False,
) -> Float8Plan:
    """One program per row over blocks of up to 1024 columns (4096 under the interpreter, where
    each loop step costs host time). ``out_dtype`` (codes only): the dtype the GEMM's reference
    casts the fake-quantized values to (a weight's: the input's; default ``dtype``).
    ``e4m3_cvt``: convert with the hardware's saturating fp32 -> e4m3 instruction
    (:func:`e4m3_cvt_device` of the tensor's device)."""
    cap = 4096 if interpret else 1024
    block_k = min(triton.next_power_of_2(max(K, 16)), cap)
    out_dt = dtype_code(out_dtype if out_dtype is not None else dtype)
    return Float8Plan(
        per_tensor, _round_bound(lb, dtype), _round_bound(ub, dtype), dtype_code(dtype),
        is_cuda, block_k, 4 if block_k >= 1024 else 2, out_dt, e4m3_cvt,
    )  # fmt: skip


# Whether this Triton lowers an fp32 -> fp8 cast on sm_89 to the one correctly rounded
# ``cvt.rn.satfinite.e4m3x2.f32`` (3.9 does). Triton 3.6 goes through ``cvt.rz.f16.f32`` first
# there, a double rounding that is wrong just above an e4m3 midpoint; it emits the direct
# conversion for sm_90 and later. (tests/test_float8.py compiles both and holds this to the PTX.)
_TRITON_MAJOR_MINOR = re.match(r"(\d+)\.(\d+)", triton.__version__)
SM89_DIRECT_FP8_CVT = bool(_TRITON_MAJOR_MINOR) and tuple(
    map(int, _TRITON_MAJOR_MINOR.groups())
) >= (3, 9)


def e4m3_cvt_capability(capability: tuple[int, int]) -> bool:
    """Whether Triton's fp32 -> e4m3 / e5m2 cast compiles for an NVIDIA GPU of ``capability``
    to the hardware's correctly rounded saturating conversion: sm_90 and later, sm_89 where
    :data:`SM89_DIRECT_FP8_CVT`."""
    return capability >= (9, 0) or (capability >= (8, 9) and SM89_DIRECT_FP8_CVT)


def e4m3_cvt_device(device: torch.device) -> bool:
    """Whether compiled kernels on ``device`` convert fp32 to e4m3 (and e5m2) in hardware
    (``cvt.rn.satfinite.e4m3x2.f32``, :func:`e4m3_cvt_capability`; never under the
    interpreter, whose fp8 cast differs from torch's for tiny values)."""
    return (not INTERPRET and torch.version.hip is None
            and e4m3_cvt_capability(device_capability(device)))  # fmt: skip


def launch_float8_quantize(p: Float8Plan, x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run plan ``p`` on ``x2d`` [R, K] (unit column stride, R, K >= 1): (y [R, K] in x's dtype,
    scale fp32 [R, 1], per tensor [1, 1])."""
    R, K = x2d.shape
    dev = x2d.device
    y = new_empty((R, K), x2d.dtype, dev)
    scale = new_empty((1, 1) if p.per_tensor else (R, 1), torch.float32, dev)
    _f8_quantize_kernel[(R,)](
        x2d, y, _tensor_amax(p, x2d), scale, K, x2d.stride(0), y.stride(0),
        0 if p.per_tensor else 1, 0.0 if p.lb is None else p.lb, 0.0 if p.ub is None else p.ub,
        HAS_LB=p.lb is not None, HAS_UB=p.ub is not None, DT=p.dt, DIV_BY_RECIP=p.div_by_recip,
        CODES=False, OUT_DT=p.dt, ROW_AMAX=not p.per_tensor, E4M3_CVT=p.e4m3_cvt,
        BLOCK_K=p.block_k, num_warps=p.num_warps,
    )  # fmt: skip
    return y, scale


def _tensor_amax(p: Float8Plan, x2d: torch.Tensor) -> torch.Tensor:
    """Per tensor: max |x| of all of ``x2d`` (fp32 [1]; each row's, then theirs). Per row: an
    unused placeholder (the quantize kernel takes each row's max itself, ``ROW_AMAX``)."""
    R, K = x2d.shape
    if not p.per_tensor:
        return x2d
    rows = new_empty((R,), torch.float32, x2d.device)
    _f8_amax_kernel[(R,)](x2d, rows, K, x2d.stride(0), DT=p.dt, BLOCK_K=p.block_k,
                          num_warps=p.num_warps)  # fmt: skip
    amax = new_empty((1,), torch.float32, x2d.device)
    bk = min(triton.next_power_of_2(max(R, 16)), 4096 if INTERPRET else 1024)
    _f8_amax_kernel[(1,)](rows, amax, R, R, DT=0, BLOCK_K=bk, num_warps=4)
    return amax


def launch_float8_codes(p: Float8Plan, x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run plan ``p`` on ``x2d`` [R, K] (unit column stride, R, K >= 1) for the fp8 GEMM:
    (codes [R, K] float8_e4m3fn, GEMM scale fp32 [R]: the row's scale, per tensor the tensor's,
    or NaN where the reference's row is not finite: a NaN code, or a value overflowing the
    plan's ``out_dt``). ``dequantize(codes) * scale`` is the fake-quantized
    row before its rounding to x's dtype."""
    R, K = x2d.shape
    dev = x2d.device
    codes = new_empty((R, K), torch.uint8, dev)
    scale = new_empty((R,), torch.float32, dev)
    _f8_quantize_kernel[(R,)](
        x2d, codes, _tensor_amax(p, x2d), scale, K, x2d.stride(0), codes.stride(0),
        0 if p.per_tensor else 1, 0.0 if p.lb is None else p.lb, 0.0 if p.ub is None else p.ub,
        HAS_LB=p.lb is not None, HAS_UB=p.ub is not None, DT=p.dt, DIV_BY_RECIP=p.div_by_recip,
        CODES=True, OUT_DT=p.dt if p.out_dt < 0 else p.out_dt, ROW_AMAX=not p.per_tensor,
        E4M3_CVT=p.e4m3_cvt, BLOCK_K=p.block_k, num_warps=p.num_warps,
    )  # fmt: skip
    return codes.view(torch.float8_e4m3fn), scale


def launch_float8_backward(
    p: Float8Plan, grad: torch.Tensor, x2d: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Run plan ``p``'s gradient (the plan of the forward's quantize) on ``grad`` and ``x2d``
    [R, K] (x's dtype, unit column strides, R, K >= 1) with the forward's fp32 ``scale`` [R, 1] /
    [1, 1]: torchao's float8 gradient [R, K] in x's dtype (:func:`_f8_backward_kernel`)."""
    R, K = x2d.shape
    dev = x2d.device
    out = new_empty((R, K), x2d.dtype, dev)
    scale = scale.reshape(-1)
    args = (0.0 if p.lb is None else p.lb, 0.0 if p.ub is None else p.ub)
    # 8 warps on 1024-column blocks: 4 elements per thread (at 4 warps, 8 per thread spilled 4 B
    # on sm_90a: its terms hold three IEEE quotients per element)
    warps = 8 if p.block_k >= 1024 and not INTERPRET else p.num_warps
    meta = dict(HAS_LB=p.lb is not None, HAS_UB=p.ub is not None, DT=p.dt,
                DIV_BY_RECIP=p.div_by_recip, E4M3_CVT=p.e4m3_cvt, BLOCK_K=p.block_k,
                num_warps=warps)  # fmt: skip
    strides = (K, grad.stride(0), x2d.stride(0), out.stride(0), 0 if p.per_tensor else 1)
    if not p.per_tensor:
        _f8_backward_kernel[(R,)](grad, x2d, scale, scale, scale, out, scale, *strides, *args,
                                  PHASE=0, **meta)  # fmt: skip
        return out
    # per tensor: the tensor's max |x|, each row's sums and count, their totals, the share
    m = _tensor_amax(p, x2d)
    sums = new_empty((R, 3), torch.float32, dev)
    _f8_backward_kernel[(R,)](grad, x2d, scale, m, scale, out, sums, *strides, *args, PHASE=1,
                              **meta)  # fmt: skip
    share = _share(sums.sum(0), m, x2d.dtype, p)
    _f8_backward_kernel[(R,)](grad, x2d, scale, m, share, out, sums, *strides, *args, PHASE=2,
                              **meta)  # fmt: skip
    return out


def _share(totals: torch.Tensor, m: torch.Tensor, dtype: torch.dtype, p: Float8Plan):
    """``g_m / count`` in ``dtype`` (as fp32 [1]) from the tensor's totals (sum of g * q, sum of
    -gt * x / s^2, count of |x| == m) and its max |x| ``m``, torch's ops in torch's order."""
    g_m = (totals[0] + totals[1]).to(dtype) / 448.0
    mt = m.to(dtype)
    keep = mt == mt
    if p.lb is not None:
        keep &= mt >= p.lb
    if p.ub is not None:
        keep &= mt <= p.ub
    if p.lb is not None or p.ub is not None:
        g_m = torch.where(keep, g_m, torch.zeros((), dtype=dtype, device=m.device))
    return (g_m / totals[2].to(torch.int64)).to(torch.float32)


def float8_quantize(
    x2d: torch.Tensor, per_tensor: bool, lb: float | None = None, ub: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 fake quantization of ``x2d`` [R, K] (fp32 / fp16 / bf16, unit column stride):
    (y in x's dtype, fp32 scale [R, 1] / [1, 1]). :func:`plan_float8_quantize` then
    :func:`launch_float8_quantize`."""
    p = plan_float8_quantize(x2d.shape[1], x2d.dtype, per_tensor, lb, ub, x2d.is_cuda, INTERPRET,
                             e4m3_cvt=e4m3_cvt_device(x2d.device))  # fmt: skip
    return launch_float8_quantize(p, x2d)
