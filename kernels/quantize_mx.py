"""MX (OCP Microscaling: MXFP8 e4m3 / e5m2, MXFP4 e2m1) and NVFP4 fake quantization, torchao
0.18's ``MXTensor.to_mx(...).dequantize()`` / ``NVFP4Tensor.to_nvfp4(...).dequantize()`` bit for
bit (docs/numerics.md "MX and NVFP4"). The plain-torch twin is kernels/quantize_mx_torch.py.

Both kernels see the input as a flat run of blocks (a contiguous [R, K] tensor with K a multiple
of the block size: every ``BS`` consecutive elements are one block) and write the dequantized
values in the input's dtype. Every rounding is done on bits, so the interpreter and a GPU agree:
the element formats (:func:`_to_e5m2`, :func:`_to_e2m1`, and float8's ``_to_e4m3``), and RCEIL's
``ceil(log2(amax / max))`` (:func:`_rceil_exponent`), which equals torch's correctly rounded fp32
``log2`` followed by ``ceil``. Like everything in ``kernels/``, this imports nothing from
``triton_qat``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, cast_to_dt, cdiv, div_scalar, dtype_code, new_empty
from .quantize import _to_f32
from .quantize_float8 import _f8_amax_kernel, _to_e4m3, e4m3_cvt_device

# element formats: (code, largest value, log2 of its largest power of two, mantissa bits)
ELEM_CODES = {"float8_e4m3fn": 0, "float8_e5m2": 1, "float4_e2m1fn_x2": 2}
ELEM_MAX = {0: 448.0, 1: 57344.0, 2: 6.0}
ELEM_MAX_POW2 = {0: 8, 1: 15, 2: 2}
ELEM_MBITS = {0: 3, 1: 2, 2: 1}
MODE_CODES = {"floor": 0, "ceil": 1, "even": 2, "rceil": 3}
NVFP4_BLOCK = 16
NVFP4_PER_TENSOR_DIV = 448.0 * 6.0  # torchao's per_tensor_amax_to_scale: amax / (448 * 6)


@triton.jit
def _to_e5m2(t):
    """fp32 -> the nearest-even e5m2 value as fp32, for |t| <= 57344 or NaN (the caller clamps).
    Normals keep 2 mantissa bits (round at bit 21); subnormals (|t| < 2**-14) are multiples of
    2**-16, rounded by adding and subtracting 1.5 * 2**7. NaN passes; -0.0 keeps its sign."""
    bits = t.to(tl.uint32, bitcast=True)
    sign = bits & 0x80000000
    a = bits & 0x7FFFFFFF
    normal = ((a + 0xFFFFF + ((a >> 21) & 1)) & 0xFFE00000).to(tl.float32, bitcast=True)
    v = a.to(tl.float32, bitcast=True)
    sub = (v + 192.0) - 192.0
    r = tl.where(a >= 0x38800000, normal, sub)
    r = (r.to(tl.uint32, bitcast=True) | sign).to(tl.float32, bitcast=True)
    return tl.where(t != t, t, r)


@triton.jit
def _e2m1_magnitude(t):
    """min(|t|, 6) rounded to nearest even on the e2m1 grid (0, 0.5, 1, 1.5, 2, 3, 4, 6), as
    fp32, t not NaN: the grid's step is 0.5 below 2, 1 in [2, 4), 2 from 4, so adding and
    subtracting c = 2**22, 2**23 or 2**24 (2**22 times the larger of 1 and v's power of two)
    rounds v to it, ties to the even code (a value's code has the parity of its multiple of the
    step); 6 is on the grid, so the clamp first is exact. Seven instructions on sm_90 (the clamp, three integer ops for c, two adds)."""
    v = tl.minimum(tl.abs(t), 6.0)
    c_bits = (tl.maximum(v.to(tl.uint32, bitcast=True), 0x3F800000) & 0x7F800000) + (22 << 23)
    c = c_bits.to(tl.float32, bitcast=True)
    return (v + c) - c


@triton.jit
def _to_e2m1(t, NAN_CODES: tl.constexpr):
    """fp32 -> the nearest-even e2m1 value as fp32, saturating at 6 (inf too), as torchao's
    ``f32_to_f4_unpacked`` (the twin: kernels/quantize_mx_torch.py ``to_e2m1``); -0.0 and every
    value rounding to zero keep their sign. A NaN t gives an unspecified value unless
    ``NAN_CODES``: then the code torchao's bit arithmetic makes of the NaN's bits (+-1, 1.5 or
    2; the NaN ``0 * inf`` gives is -1.5 on x86 CPUs, +2 on NVIDIA GPUs). MX blocks holding a
    NaN dequantize with a NaN scale, so only NVFP4 (whose finite scale times a multiplier that
    overflowed makes NaNs of zeros) needs it."""
    bits = t.to(tl.uint32, bitcast=True)
    sign = bits & 0x80000000
    r = _e2m1_magnitude(t)
    if NAN_CODES:
        # torchao's normal branch on a NaN's bits: its 8-bit exponent wraps to the e2m1 code
        # 2, 3 or 4 (1, 1.5, 2), the fp32 whose bits are the rounded NaN's minus 2**30
        a = bits & 0x7FFFFFFF
        rounded = (a + 0x1FFFFF + ((a >> 22) & 1)) & 0xFFC00000
        r = tl.where(t != t, (rounded - 0x40000000).to(tl.float32, bitcast=True), r)
    return (r.to(tl.uint32, bitcast=True) | sign).to(tl.float32, bitcast=True)


@triton.jit
def _clamp_keep_nan(v, lo, hi):
    """torch.clamp(v, lo, hi): NaN stays NaN (tl.minimum / tl.maximum may drop it on a GPU)."""
    return tl.where(v != v, v, tl.minimum(tl.maximum(v, lo), hi))


@triton.jit
def _round_elem(t, ELEM: tl.constexpr, FP8_CVT: tl.constexpr):
    """t rounded to nearest even on the element grid, saturating at the format's largest value,
    as fp32, for an MX block (a NaN t gives a NaN or an unspecified value: its block's scale is
    NaN). e4m3 / e5m2 by the hardware's saturating conversion where ``FP8_CVT`` (:func:`~.quantize_float8.e4m3_cvt_capability`,
    compiled: ``cvt.rn.satfinite.e4m3x2 / e5m2x2.f32``, which clamps as torch's clamp then cast
    does), else clamped and rounded at the bit level; e2m1 always at the bit level."""
    if ELEM == 0:
        if FP8_CVT:
            return t.to(tl.float8e4nv).to(tl.float32)
        else:
            return _to_e4m3(_clamp_keep_nan(t, -448.0, 448.0))
    elif ELEM == 1:
        if FP8_CVT:
            return t.to(tl.float8e5).to(tl.float32)
        else:
            return _to_e5m2(_clamp_keep_nan(t, -57344.0, 57344.0))
    else:
        return _to_e2m1(t, False)


@triton.jit
def _log2_threshold(k):
    """The least mantissa step count j (units of 2**-23) for which the fp32 ``log2`` of
    ``2**k * (1 + j 2**-23)``, correctly rounded, is above k: the fp32 spacing next to k, halved,
    reached by ``log2(1 + j 2**-23) ~ j 2**-23 / ln 2``. p is the exponent of the fp32 numbers
    between k and k + 1: 1, 1, 2, 3, 6, 12, 23 for p <= 1, 2, ... 6 (ceil(2**(p-1) ln 2))."""
    u = tl.where(k > 0, k, -k - 1)  # k < 0: magnitudes in (|k| - 1, |k|)
    p = ((u.to(tl.float32).to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127  # floor(log2 u)
    return tl.where(p >= 6, 23, tl.where(p == 5, 12, tl.where(p == 4, 6, tl.where(
        p == 3, 3, tl.where(p == 2, 2, 1)))))  # fmt: skip


@triton.jit
def _rceil_exponent(d):
    """torchao's RCEIL biased e8m0 exponent of ``d = amax / max`` (fp32 >= 0 or NaN):
    255 for NaN, 254 for inf, else ``clamp(ceil(log2(d)), -127, 127) + 127``, with ``log2`` the
    correctly rounded fp32 one (torch's on the CPU), computed from d's bits. Below 2**-127 the
    clamp decides; in (2**-127, 2**-126) d is subnormal and its mantissa is read at 2**-22 steps."""
    bits = d.to(tl.int32, bitcast=True)
    ex = (bits >> 23) & 0xFF
    k = tl.where(ex == 0, -127, ex - 127)
    j = tl.where(ex == 0, tl.maximum(bits - 0x400000, 0) * 2, bits & 0x7FFFFF)
    e = k + (j >= _log2_threshold(k)).to(tl.int32)
    e = tl.minimum(tl.maximum(e, -127), 127) + 127
    return tl.where(d != d, 255, tl.where(bits == 0x7F800000, 254, e))


@triton.jit
def _pow2_f32(e):
    """The e8m0 value 2**(e - 127) as fp32 for a biased exponent e in [0, 255]: 0 gives the
    subnormal 2**-127, 255 NaN (torchao's ``get_fp_scale``)."""
    bits = tl.where(e == 0, 0x400000, tl.where(e == 255, 0x7FC00000, e << 23))
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _mx_kernel(
    x_ptr, y_ptr, n_blocks, BS: tl.constexpr, BSP: tl.constexpr, BLOCKS: tl.constexpr,
    ELEM: tl.constexpr, MODE: tl.constexpr, DT: tl.constexpr, DIV_BY_RECIP: tl.constexpr,
    FP8_CVT: tl.constexpr,
):  # fmt: skip
    """``BLOCKS`` blocks of ``BS`` elements per program (tile [BLOCKS, BSP], BSP = BS rounded
    up to a power of two): y = dt(e(x / s) * s') per block, s from the block's max |x| by
    ``MODE`` (0 floor, 1 ceil, 2 even, 3 rceil), e the element rounding ``ELEM``
    (:func:`_round_elem`, ``FP8_CVT``: the hardware's fp8 conversion)."""
    MAXV: tl.constexpr = 448.0 if ELEM == 0 else (57344.0 if ELEM == 1 else 6.0)
    TARGET: tl.constexpr = 8 if ELEM == 0 else (15 if ELEM == 1 else 2)
    MBITS: tl.constexpr = 3 if ELEM == 0 else (2 if ELEM == 1 else 1)
    pid = tl.program_id(0).to(tl.int64)
    o_b = pid * BLOCKS + tl.arange(0, BLOCKS)  # [BB]
    o_c = tl.arange(0, BSP)  # [BSP]
    m_x = (o_b[:, None] < n_blocks) & (o_c[None, :] < BS)
    p_x = o_b[:, None] * BS + o_c[None, :]
    b_x = _to_f32(tl.load(x_ptr + p_x, mask=m_x, other=0.0), DT)  # [BB, BSP]
    # the block's max |x| as sign-cleared fp32 bits: int order = float order, NaN above inf
    b_m = tl.max(b_x.to(tl.int32, bitcast=True) & 0x7FFFFFFF, axis=1)  # [BB]
    if MODE == 3:  # rceil: e8m0 = ceil(log2(amax / max)); quantize by multiplying by 2**(127-e)
        b_d = div_scalar(b_m.to(tl.float32, bitcast=True), MAXV, DIV_BY_RECIP)
        b_e = _rceil_exponent(b_d)
        b_r = tl.where(b_e == 0, 1.0, _pow2_f32(tl.maximum(254 - b_e, 0)))  # 254: 2**-127
        b_r = tl.where(b_e == 255, b_d, b_r)  # NaN
        b_t = b_x * b_r[:, None]
    else:  # floor / ceil / even: the exponent bits of (rounded) amax minus the format's
        b_k = b_m
        if MODE == 2:  # even: round amax to MBITS mantissa bits first
            b_k = b_k + (1 << (22 - MBITS))
        b_p = ((b_k >> 23) & 0xFF) - 127
        if MODE == 1:  # ceil: one up unless amax is a power of two
            b_p = b_p + ((b_m & 0x7FFFFF) != 0).to(tl.int32)
        b_e = tl.minimum(tl.maximum(b_p - TARGET, -127), 128) + 127
        b_e = tl.where(b_m > 0x7F800000, 255, b_e)
        # torchao divides by max(2**(e-127), 2**-126): a power of two whose reciprocal is an
        # fp32 (2**126 for e = 0, 2**(127-e) down to the subnormal 2**-127 for e = 254), so x
        # times it is the quotient's exact value, rounded once as the division's. e = 255 (the
        # block holds a NaN) dequantizes with a NaN scale, whatever the multiplier.
        b_r = tl.where(b_e == 0, 2.0**126, _pow2_f32(tl.maximum(254 - b_e, 0)))
        b_t = b_x * b_r[:, None]
    b_q = _round_elem(b_t, ELEM, FP8_CVT)
    # dequantize: q * 2**(e-127) (NaN for e = 255) is exact in fp32 (or overflows to inf)
    b_y = cast_to_dt(b_q * _pow2_f32(b_e)[:, None], DT)
    tl.store(y_ptr + p_x, b_y, mask=m_x)


@triton.jit
def _nvfp4_kernel(
    x_ptr, y_ptr, amax_ptr, n_blocks, HAS_PTS: tl.constexpr, BLOCKS: tl.constexpr,
    DT: tl.constexpr, DIV_BY_RECIP: tl.constexpr,
):  # fmt: skip
    """``BLOCKS`` blocks of 16 per program: torchao's ``nvfp4_quantize`` then ``dequantize``.
    Block scale ``e4m3(clamp(amax / 6 [/ pts], 2**-6, 448))``, elements
    ``e2m1(clamp(x * r, -6, 6))`` with ``r = 1 / s8`` (or ``(1 / pts) / s8``), value
    ``dt(q * s8)`` (or ``dt(q * (pts * s8))``), each step one fp32 rounding as torch does it;
    ``pts = amax(|x|) / 2688`` (amax_ptr: the whole tensor's, when ``HAS_PTS``)."""
    pid = tl.program_id(0).to(tl.int64)
    o_b = pid * BLOCKS + tl.arange(0, BLOCKS)  # [BB]
    o_c = tl.arange(0, 16)  # [16]
    m_x = (o_b[:, None] < n_blocks) & (o_c[None, :] < 16)
    p_x = o_b[:, None] * 16 + o_c[None, :]
    b_x = _to_f32(tl.load(x_ptr + p_x, mask=m_x, other=0.0), DT)  # [BB, 16]
    b_m = tl.max(b_x.to(tl.int32, bitcast=True) & 0x7FFFFFFF, axis=1)  # [BB], NaN above inf
    b_bs = div_scalar(b_m.to(tl.float32, bitcast=True), 6.0, DIV_BY_RECIP)
    b_one = tl.full([BLOCKS], 1.0, tl.float32)
    if HAS_PTS:
        b_pts = div_scalar(tl.load(amax_ptr + o_b * 0), 2688.0, DIV_BY_RECIP)  # [BB], all equal
        b_s8 = _to_e4m3(_clamp_keep_nan(tl.div_rn(b_bs, b_pts), 0.015625, 448.0))
        b_r = tl.div_rn(tl.div_rn(b_one, b_pts), b_s8)
        b_sd = b_pts * b_s8
    else:
        b_s8 = _to_e4m3(_clamp_keep_nan(b_bs, 0.015625, 448.0))
        b_r = tl.div_rn(b_one, b_s8)
        b_sd = b_s8
    # saturating, as torch's clamp to +-6 first
    b_t = b_x * b_r[:, None]
    b_q = _to_e2m1(b_t, False)
    if HAS_PTS:
        # A NaN x * r with a finite scale takes torchao's code for the NaN's bits. It is always
        # +-0 * inf (a tiny tensor's multiplier overflowed; a NaN or inf in x makes the tensor's
        # scale NaN or inf, so every block scale NaN or its values inf / NaN), and the device
        # gives every 0 * inf the same NaN (x86 0xFFC00000, NVIDIA 0x7FFFFFFF), so the block's
        # 0 * r has the code: one per block, not the NaN bit arithmetic per element. Without a
        # per-tensor scale r is finite (1 / s8, s8 >= 2**-6) and a NaN x makes s8 NaN.
        b_nan = _to_e2m1(0.0 * b_r, True)  # [BB]
        b_q = tl.where(b_t != b_t, b_nan[:, None], b_q)
    b_y = cast_to_dt(b_q * b_sd[:, None], DT)
    tl.store(y_ptr + p_x, b_y, mask=m_x)


class MXPlan(NamedTuple):
    """What a :func:`launch_mx_quantize` / :func:`launch_nvfp4_quantize` launch decides once per
    key."""

    elem: int  # ELEM_CODES (NVFP4: e2m1)
    mode: int  # MODE_CODES (NVFP4: -1)
    block_size: int
    bsp: int  # block_size rounded up to a power of two
    blocks: int  # blocks per program
    dt: int
    div_by_recip: bool
    num_warps: int
    fp8_cvt: bool = False  # e4m3 / e5m2 elements by the hardware's conversion


def plan_mx_quantize(
    dtype: torch.dtype,
    elem: str,
    block_size: int,
    scaling_mode: str,
    is_cuda: bool,
    interpret: bool = False,
    fp8_cvt: bool = False,
) -> MXPlan:
    """About 1024 elements per program (4096 under the interpreter, where each program costs
    host time). ``elem``: an ``ELEM_CODES`` name; ``scaling_mode``: a ``MODE_CODES`` name, or
    ``"nvfp4"`` (block_size 16, e4m3 scales). ``fp8_cvt``: round e4m3 / e5m2 elements with the
    hardware's conversion (:func:`~.quantize_float8.e4m3_cvt_device` of the tensor's device)."""
    bsp = triton.next_power_of_2(block_size)
    blocks = max(1, (4096 if interpret else 1024) // bsp)
    mode = -1 if scaling_mode == "nvfp4" else MODE_CODES[scaling_mode]
    warps = 4 if blocks * bsp >= 1024 else 2
    return MXPlan(ELEM_CODES[elem], mode, block_size, bsp, blocks, dtype_code(dtype), is_cuda,
                  warps, fp8_cvt)  # fmt: skip


def launch_mx_quantize(p: MXPlan, x2d: torch.Tensor) -> torch.Tensor:
    """Run plan ``p`` on a contiguous ``x2d`` [R, K] (K a multiple of the block size, R K >= 1):
    the fake-quantized values [R, K] in x's dtype."""
    y = new_empty(x2d.shape, x2d.dtype, x2d.device)
    n_blocks = x2d.numel() // p.block_size
    grid = (cdiv(n_blocks, p.blocks),)
    _mx_kernel[grid](
        x2d, y, n_blocks, BS=p.block_size, BSP=p.bsp, BLOCKS=p.blocks, ELEM=p.elem,
        MODE=p.mode, DT=p.dt, DIV_BY_RECIP=p.div_by_recip, FP8_CVT=p.fp8_cvt,
        num_warps=p.num_warps,
    )  # fmt: skip
    return y


def tensor_amax(x2d: torch.Tensor) -> torch.Tensor:
    """max |x| over all of ``x2d`` [R, K] as fp32 [1] (NaN if it holds one): float8's row-max
    kernel, then again over the row maxima."""
    R, K = x2d.shape
    rows = new_empty((R,), torch.float32, x2d.device)
    bk = min(triton.next_power_of_2(max(K, 16)), 4096 if INTERPRET else 1024)
    _f8_amax_kernel[(R,)](x2d, rows, K, x2d.stride(0), DT=dtype_code(x2d.dtype), BLOCK_K=bk,
                          num_warps=4)  # fmt: skip
    amax = new_empty((1,), torch.float32, x2d.device)
    br = min(triton.next_power_of_2(max(R, 16)), 4096 if INTERPRET else 1024)
    _f8_amax_kernel[(1,)](rows, amax, R, R, DT=0, BLOCK_K=br, num_warps=4)
    return amax


def launch_nvfp4_quantize(p: MXPlan, x2d: torch.Tensor, per_tensor: bool) -> torch.Tensor:
    """Run an NVFP4 plan (``plan_mx_quantize(..., "float4_e2m1fn_x2", 16, "nvfp4", ...)``) on a
    contiguous ``x2d`` [R, K] (K a multiple of 16): the fake-quantized values in x's dtype,
    with the per-tensor scale of all of ``x2d`` when ``per_tensor``."""
    y = new_empty(x2d.shape, x2d.dtype, x2d.device)
    n_blocks = x2d.numel() // NVFP4_BLOCK
    amax = tensor_amax(x2d) if per_tensor else y  # (y: an unread placeholder)
    grid = (cdiv(n_blocks, p.blocks),)
    _nvfp4_kernel[grid](x2d, y, amax, n_blocks, HAS_PTS=per_tensor, BLOCKS=p.blocks, DT=p.dt,
                        DIV_BY_RECIP=p.div_by_recip, num_warps=p.num_warps)  # fmt: skip
    return y


def mx_quantize(x2d: torch.Tensor, elem: str, block_size: int, scaling_mode: str) -> torch.Tensor:
    """MX fake quantization of a contiguous ``x2d`` [R, K] (fp32 / bf16; K a multiple of
    ``block_size``): :func:`plan_mx_quantize` then :func:`launch_mx_quantize`."""
    p = plan_mx_quantize(x2d.dtype, elem, block_size, scaling_mode, x2d.is_cuda, INTERPRET,
                         e4m3_cvt_device(x2d.device))  # fmt: skip
    return launch_mx_quantize(p, x2d)


def nvfp4_quantize(x2d: torch.Tensor, per_tensor: bool) -> torch.Tensor:
    """NVFP4 fake quantization of a contiguous ``x2d`` [R, K] (fp32 / bf16; K a multiple of
    16): :func:`plan_mx_quantize` then :func:`launch_nvfp4_quantize`."""
    p = plan_mx_quantize(x2d.dtype, "float4_e2m1fn_x2", NVFP4_BLOCK, "nvfp4", x2d.is_cuda,
                         INTERPRET)  # fmt: skip
    return launch_nvfp4_quantize(p, x2d, per_tensor)
