"""STE backward GEMMs that dequantize the saved int8 codes on the fly (docs/numerics.md "Backward").

    grad_x    = (grad_y @ w_fq) * mask_x            # dgrad: w_fq = dt(q_w * s_w)
    grad_w    = (grad_y^T @ x_fq) * mask_w          # wgrad: x_fq = dt((q_x - zp_x) * s_x)
    grad_bias = grad_y summed over tokens           # fused into the wgrad kernel

grad_y stays unquantized (that is what STE means). Dequantizing to the input dtype before the dot
reproduces w_fq / x_fq exactly, so the only difference from an fp64 reference is the dot's own
float rounding (fp32 accumulation; fp32 inputs use IEEE-precision dots, not TF32).

Layouts: grad_y [M, N] (strides given); q_w int8 [N, K], s_w fp32 [N, G]; mask_x uint8 bits
[M, ceil(K/8)]; q_x int8 [M, K], s_x fp32 [M], zp_x int32 [M]; mask_w uint8 [N, K] (0/1).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import cast_to_dt, dot_in_fp32, dtype_code, new_empty, round_to_dt
from .gemm_int8 import _swizzle


@triton.jit
def _dot(a, b, acc, DT: tl.constexpr, DOT_FP32: tl.constexpr):
    """acc += a @ b for operands holding values exact in the input dtype (fp32 tiles)."""
    if DOT_FP32 or DT == 0:
        return tl.dot(a, b, acc, input_precision="ieee")
    elif DT == 1:
        return tl.dot(a.to(tl.float16), b.to(tl.float16), acc)
    else:
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)


@triton.jit
def _dgrad_kernel(
    dy_ptr,
    wq_ptr,
    sw_ptr,
    mask_ptr,
    dx_ptr,
    M,
    N,
    K,
    GROUP,
    stride_dym,
    stride_dyn,
    stride_wn,
    stride_dxm,
    DT: tl.constexpr,
    DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # output tile [BLOCK_M, BLOCK_K] of grad_x; the reduction runs over N in BLOCK_N steps
    pid_m, pid_k = _swizzle(tl.program_id(0), M, K, BLOCK_M, BLOCK_K, GROUP_M)
    o_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    o_k = pid_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    o_n = tl.arange(0, BLOCK_N).to(tl.int64)  # row offsets n * K can pass 2**31
    m_m = o_m < M
    m_k = o_k < K
    n_groups = K // GROUP
    acc = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        m_n = (n0 + o_n) < N
        p_dy = dy_ptr + o_m[:, None] * stride_dym + (n0 + o_n)[None, :] * stride_dyn
        b_dy = tl.load(p_dy, mask=m_m[:, None] & m_n[None, :], other=0.0).to(tl.float32)
        m_w = m_n[:, None] & m_k[None, :]
        p_w = wq_ptr + (n0 + o_n)[:, None] * stride_wn + o_k[None, :]
        b_q = tl.load(p_w, mask=m_w, other=0).to(tl.float32)  # [BN, BK]
        p_s = sw_ptr + (n0 + o_n)[:, None] * n_groups + (o_k // GROUP)[None, :]
        b_w = round_to_dt(b_q * tl.load(p_s, mask=m_w, other=0.0), DT)  # exactly w_fq
        acc = _dot(b_dy, b_w, acc, DT, DOT_FP32)
    n_bytes = (K + 7) // 8
    p_m = mask_ptr + o_m[:, None] * n_bytes + (o_k // 8)[None, :]
    m_out = m_m[:, None] & m_k[None, :]
    b_bits = (tl.load(p_m, mask=m_out, other=0).to(tl.int32) >> (o_k % 8)[None, :]) & 1
    acc = tl.where(b_bits != 0, acc, 0.0)
    tl.store(dx_ptr + o_m[:, None] * stride_dxm + o_k[None, :], cast_to_dt(acc, DT), mask=m_out)


@triton.jit
def _wgrad_kernel(
    dy_ptr,
    xq_ptr,
    sx_ptr,
    zpx_ptr,
    mask_ptr,
    dw_ptr,
    db_ptr,
    M,
    N,
    K,
    stride_dym,
    stride_dyn,
    stride_xm,
    stride_dwn,
    HAS_BIAS: tl.constexpr,
    DT: tl.constexpr,
    DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # output tile [BLOCK_N, BLOCK_K] of grad_w; the reduction runs over tokens M in BLOCK_M steps
    pid_n, pid_k = _swizzle(tl.program_id(0), N, K, BLOCK_N, BLOCK_K, GROUP_M)
    o_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    o_k = pid_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    o_m = tl.arange(0, BLOCK_M).to(tl.int64)  # token offsets m * N can pass 2**31
    m_n = o_n < N
    m_k = o_k < K
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    b_db = tl.zeros([BLOCK_N], dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        m_m = (m0 + o_m) < M
        p_dy = dy_ptr + (m0 + o_m)[None, :] * stride_dym + o_n[:, None] * stride_dyn
        b_dyt = tl.load(p_dy, mask=m_n[:, None] & m_m[None, :], other=0.0).to(tl.float32)
        m_x = m_m[:, None] & m_k[None, :]
        p_x = xq_ptr + (m0 + o_m)[:, None] * stride_xm + o_k[None, :]
        b_q = tl.load(p_x, mask=m_x, other=0).to(tl.int32)  # [BM, BK]
        b_zp = tl.load(zpx_ptr + m0 + o_m, mask=m_m, other=0)
        b_sx = tl.load(sx_ptr + m0 + o_m, mask=m_m, other=0.0)
        b_x = round_to_dt((b_q - b_zp[:, None]).to(tl.float32) * b_sx[:, None], DT)  # x_fq
        b_x = tl.where(m_x, b_x, 0.0)
        acc = _dot(b_dyt, b_x, acc, DT, DOT_FP32)
        if HAS_BIAS:
            b_db += tl.sum(b_dyt, axis=1)
    m_out = m_n[:, None] & m_k[None, :]
    b_keep = tl.load(mask_ptr + o_n[:, None] * K + o_k[None, :], mask=m_out, other=0)
    acc = tl.where(b_keep != 0, acc, 0.0)
    tl.store(dw_ptr + o_n[:, None] * stride_dwn + o_k[None, :], cast_to_dt(acc, DT), mask=m_out)
    if HAS_BIAS:
        # every K-tile sums the same grad_y rows; the first one writes
        m_db = m_n & ((tl.zeros([BLOCK_N], dtype=tl.int32) + pid_k) == 0)
        tl.store(db_ptr + o_n, cast_to_dt(b_db, DT), mask=m_db)


def dgrad(
    grad_y: torch.Tensor,
    w_codes: torch.Tensor,
    w_scale: torch.Tensor,
    x_mask: torch.Tensor,
    *,
    config: dict,
) -> torch.Tensor:
    """grad_x [M, K] in grad_y's dtype = (grad_y [M, N] @ w_fq [N, K]) * unpack(x_mask).

    w_codes int8 [N, K], w_scale fp32 [N, G], x_mask uint8 bits [M, ceil(K/8)]. ``config``:
    BLOCK_M/N/K, GROUP_M, num_warps, num_stages (BLOCK_N tiles the reduction over N)."""
    M, N = grad_y.shape
    K = w_codes.shape[1]
    dx = new_empty((M, K), grad_y.dtype, grad_y.device)
    if M == 0 or K == 0:
        return dx
    if N == 0:
        return dx.zero_()
    cfg = config
    grid = (triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(K, cfg["BLOCK_K"]),)
    _dgrad_kernel[grid](
        grad_y,
        w_codes.contiguous(),
        w_scale.contiguous(),
        x_mask.contiguous(),
        dx,
        M,
        N,
        K,
        K // w_scale.shape[1],
        grad_y.stride(0),
        grad_y.stride(1),
        K,
        dx.stride(0),
        DT=dtype_code(grad_y.dtype),
        DOT_FP32=dot_in_fp32(grad_y.dtype),
        BLOCK_M=cfg["BLOCK_M"],
        BLOCK_N=cfg["BLOCK_N"],
        BLOCK_K=cfg["BLOCK_K"],
        GROUP_M=cfg["GROUP_M"],
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    return dx


def wgrad(
    grad_y: torch.Tensor,
    x_codes: torch.Tensor,
    x_scale: torch.Tensor,
    x_zero_point: torch.Tensor,
    w_mask: torch.Tensor,
    with_bias: bool,
    *,
    config: dict,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(grad_w [N, K], grad_bias [N] or None) in grad_y's dtype, from grad_y [M, N] and x's codes.

    x_codes int8 [M, K], x_scale fp32 [M, 1], x_zero_point int32 [M, 1], w_mask uint8 [N, K]
    (0/1). ``config`` as for :func:`dgrad` (BLOCK_M tiles the reduction over tokens)."""
    M, N = grad_y.shape
    K = x_codes.shape[1]
    dw = new_empty((N, K), grad_y.dtype, grad_y.device)
    db = new_empty((N,), grad_y.dtype, grad_y.device) if with_bias else None
    if N == 0:
        return dw, db
    if M == 0 or K == 0:
        dw.zero_()
        if db is not None:
            db.zero_()
        if M == 0 or db is None:
            return dw, db
    cfg = config
    grid = (triton.cdiv(N, cfg["BLOCK_N"]) * triton.cdiv(max(K, 1), cfg["BLOCK_K"]),)
    _wgrad_kernel[grid](
        grad_y,
        x_codes.contiguous(),
        x_scale.contiguous(),
        x_zero_point.contiguous(),
        w_mask.contiguous(),
        dw,
        db if db is not None else dw,
        M,
        N,
        K,
        grad_y.stride(0),
        grad_y.stride(1),
        K,
        dw.stride(0),
        HAS_BIAS=with_bias,
        DT=dtype_code(grad_y.dtype),
        DOT_FP32=dot_in_fp32(grad_y.dtype),
        BLOCK_M=cfg["BLOCK_M"],
        BLOCK_N=cfg["BLOCK_N"],
        BLOCK_K=cfg["BLOCK_K"],
        GROUP_M=cfg["GROUP_M"],
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    return dw, db
