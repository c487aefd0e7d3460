"""Float8 (e4m3) fake quantization: per-row or per-tensor scales, torchao's ``Float8FakeQuantizer``
bit for bit (docs/numerics.md "Float8"). Its plain-torch twin is kernels/quantize_float8_torch.py.

Two kernels: ``_f8_amax_kernel`` takes each row's max |x| (per tensor: launched again on the row
maxima), ``_f8_quantize_kernel`` turns a row's max into its scale and writes the fake-quantized
row, or (``CODES``, for the fp8 tensor-core GEMM of :mod:`.gemm_float8`) the row's e4m3 codes and
its GEMM scale: the scale, or NaN where a code is NaN (a zero element over a zero scale), so the
GEMM's epilogue makes the rows the reference makes NaN. Like everything in ``kernels/``, this
imports nothing from ``triton_qat``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, cast_to_dt, div_scalar, dtype_code, new_empty, round_to_dt
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
def _f8_amax_kernel(
    x_ptr, out_ptr, K, stride_x, DT: tl.constexpr, BLOCK_K: tl.constexpr
):  # fmt: skip
    """out[row] = max |x[row, :]| as fp32 (NaN if the row holds one): the int32 order of the
    sign-cleared fp32 bits is the float order, a NaN above +inf."""
    row = tl.program_id(0).to(tl.int64)
    o_k = tl.arange(0, BLOCK_K)  # [BK]
    b_max = tl.zeros([BLOCK_K], dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        m_k = (k0 + o_k) < K
        b_x = _to_f32(tl.load(x_ptr + row * stride_x + k0 + o_k, mask=m_k, other=0.0), DT)
        b_max = tl.maximum(b_max, b_x.to(tl.int32, bitcast=True) & 0x7FFFFFFF)
    tl.store(out_ptr + row, tl.max(b_max, axis=0).to(tl.float32, bitcast=True))


@triton.jit
def _f8_quantize_kernel(
    x_ptr, y_ptr, amax_ptr, scale_ptr, K, stride_x, stride_y, stride_amax, LB, UB,
    HAS_LB: tl.constexpr, HAS_UB: tl.constexpr, DT: tl.constexpr, DIV_BY_RECIP: tl.constexpr,
    CODES: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """y[row] = fp8(clamp(x / s, +-448)) * s in x's dtype, s = clamp(amax, LB, UB) / 448 in x's
    dtype then fp32 (LB / UB already rounded to x's dtype by the launcher, as torch.clamp does);
    scale_ptr[row * stride_amax] = s. ``CODES``: y_ptr (uint8) gets the e4m3 codes and
    scale_ptr[row] the GEMM scale (s, or NaN if a code of the row is NaN)."""
    row = tl.program_id(0).to(tl.int64)
    b_m = tl.load(amax_ptr + row * stride_amax)
    if HAS_LB:  # torch.clamp keeps NaN; tl.maximum would drop it
        b_m = tl.where(b_m != b_m, b_m, tl.maximum(b_m, LB))
    if HAS_UB:
        b_m = tl.where(b_m != b_m, b_m, tl.minimum(b_m, UB))
    b_s = round_to_dt(div_scalar(b_m, 448.0, DIV_BY_RECIP), DT)
    if not CODES and (stride_amax != 0 or row == 0):
        tl.store(scale_ptr + row * stride_amax, b_s)
    o_k = tl.arange(0, BLOCK_K)  # [BK]
    b_nan = tl.zeros([BLOCK_K], dtype=tl.int32)  # CODES: a NaN code seen in this lane
    for k0 in range(0, K, BLOCK_K):
        m_k = (k0 + o_k) < K
        b_x = _to_f32(tl.load(x_ptr + row * stride_x + k0 + o_k, mask=m_k, other=0.0), DT)
        b_t = tl.div_rn(b_x, tl.full([BLOCK_K], 1.0, tl.float32) * b_s)
        b_t = tl.where(b_t != b_t, b_t, tl.minimum(tl.maximum(b_t, -448.0), 448.0))
        if CODES:
            b_r = _to_e4m3(b_t)
            b_nan = tl.maximum(b_nan, ((b_r != b_r) & m_k).to(tl.int32))
            tl.store(y_ptr + row * stride_y + k0 + o_k, _e4m3_code(b_r), mask=m_k)
        else:
            b_y = cast_to_dt(_to_e4m3(b_t) * b_s, DT)
            tl.store(y_ptr + row * stride_y + k0 + o_k, b_y, mask=m_k)
    if CODES:
        tl.store(scale_ptr + row, tl.where(tl.max(b_nan, axis=0) > 0, float("nan"), b_s))


class Float8Plan(NamedTuple):
    """What a :func:`launch_float8_quantize` launch decides once per key."""

    per_tensor: bool
    lb: float | None  # torchao's hp_value_lb, rounded to x's dtype
    ub: float | None
    dt: int
    div_by_recip: bool
    block_k: int
    num_warps: int


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
) -> Float8Plan:
    """One program per row over blocks of up to 1024 columns (4096 under the interpreter, where
    each loop step costs host time)."""
    cap = 4096 if interpret else 1024
    block_k = min(triton.next_power_of_2(max(K, 16)), cap)
    return Float8Plan(
        per_tensor, _round_bound(lb, dtype), _round_bound(ub, dtype), dtype_code(dtype),
        is_cuda, block_k, 4 if block_k >= 1024 else 2,
    )  # fmt: skip


def launch_float8_quantize(p: Float8Plan, x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run plan ``p`` on ``x2d`` [R, K] (unit column stride, R, K >= 1): (y [R, K] in x's dtype,
    scale fp32 [R, 1], per tensor [1, 1])."""
    R, K = x2d.shape
    dev = x2d.device
    y = new_empty((R, K), x2d.dtype, dev)
    amax = new_empty((R,), torch.float32, dev)
    _f8_amax_kernel[(R,)](x2d, amax, K, x2d.stride(0), DT=p.dt, BLOCK_K=p.block_k,
                          num_warps=p.num_warps)  # fmt: skip
    if p.per_tensor:
        rows, amax = amax, new_empty((1,), torch.float32, dev)
        bk = min(triton.next_power_of_2(max(R, 16)), 4096 if INTERPRET else 1024)
        _f8_amax_kernel[(1,)](rows, amax, R, R, DT=0, BLOCK_K=bk, num_warps=4)
    scale = new_empty((1, 1) if p.per_tensor else (R, 1), torch.float32, dev)
    _f8_quantize_kernel[(R,)](
        x2d, y, amax, scale, K, x2d.stride(0), y.stride(0), 0 if p.per_tensor else 1,
        0.0 if p.lb is None else p.lb, 0.0 if p.ub is None else p.ub,
        HAS_LB=p.lb is not None, HAS_UB=p.ub is not None, DT=p.dt,
        DIV_BY_RECIP=p.div_by_recip, CODES=False, BLOCK_K=p.block_k, num_warps=p.num_warps,
    )  # fmt: skip
    return y, scale


def launch_float8_codes(p: Float8Plan, x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run plan ``p`` on ``x2d`` [R, K] (unit column stride, R, K >= 1) for the fp8 GEMM:
    (codes [R, K] float8_e4m3fn, GEMM scale fp32 [R]: the row's scale, per tensor the tensor's,
    or NaN where a code of the row is NaN). ``dequantize(codes) * scale`` is the fake-quantized
    row before its rounding to x's dtype."""
    R, K = x2d.shape
    dev = x2d.device
    codes = new_empty((R, K), torch.uint8, dev)
    amax = new_empty((R,), torch.float32, dev)
    _f8_amax_kernel[(R,)](x2d, amax, K, x2d.stride(0), DT=p.dt, BLOCK_K=p.block_k,
                          num_warps=p.num_warps)  # fmt: skip
    if p.per_tensor:
        rows, amax = amax, new_empty((1,), torch.float32, dev)
        bk = min(triton.next_power_of_2(max(R, 16)), 4096 if INTERPRET else 1024)
        _f8_amax_kernel[(1,)](rows, amax, R, R, DT=0, BLOCK_K=bk, num_warps=4)
    scale = new_empty((R,), torch.float32, dev)
    _f8_quantize_kernel[(R,)](
        x2d, codes, amax, scale, K, x2d.stride(0), codes.stride(0), 0 if p.per_tensor else 1,
        0.0 if p.lb is None else p.lb, 0.0 if p.ub is None else p.ub,
        HAS_LB=p.lb is not None, HAS_UB=p.ub is not None, DT=p.dt,
        DIV_BY_RECIP=p.div_by_recip, CODES=True, BLOCK_K=p.block_k, num_warps=p.num_warps,
    )  # fmt: skip
    return codes.view(torch.float8_e4m3fn), scale


def float8_quantize(
    x2d: torch.Tensor, per_tensor: bool, lb: float | None = None, ub: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 fake quantization of ``x2d`` [R, K] (fp32 / fp16 / bf16, unit column stride):
    (y in x's dtype, fp32 scale [R, 1] / [1, 1]). :func:`plan_float8_quantize` then
    :func:`launch_float8_quantize`."""
    p = plan_float8_quantize(x2d.shape[1], x2d.dtype, per_tensor, lb, ub, x2d.is_cuda, INTERPRET)
    return launch_float8_quantize(p, x2d)
