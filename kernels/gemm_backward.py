"""STE backward GEMMs: a plain GEMM of dequantized operands with the clamp mask in the epilogue.

    grad_x = (grad_y @ w_fq) * mask_x        # dgrad: A = grad_y [M, N], B = w_fq [N, K]
    grad_w = (grad_y^T @ x_fq) * mask_w      # wgrad: A = grad_y^T [N, M], B = x_fq [M, K]

(docs/numerics.md "Backward"). The backward re-derives w_fq and mask_w from the weight parameter
and dequantizes x_fq from the saved int8 codes, each once per backward into a transient buffer in
the input dtype (:func:`dequantize_rows`; the weight through the quantize kernel), so the hot loop
here is the loop of a plain Triton matmul: two tile loads and one ``tl.dot`` per step, nothing
weight-sized kept between forward and backward. grad_y stays unquantized (that is what STE means);
the only difference from an fp64 reference is the dot's own rounding (fp32 accumulation; fp32
inputs use IEEE-precision dots, not TF32).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import cast_to_dt, dot_in_fp32, dtype_code, new_empty, rint
from .gemm_int8 import _swizzle


@triton.jit
def _dot(a, b, acc, DT: tl.constexpr, DOT_FP32: tl.constexpr):
    """acc += a @ b on tiles loaded in the input dtype (exact fp32 products under the
    interpreter, whose bf16 dot is wrong)."""
    if DOT_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    elif DT == 0:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _masked_mm_kernel(
    a_ptr,
    b_ptr,
    mask_ptr,
    c_ptr,
    M,
    N,
    K,
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    stride_cm,
    stride_mask,
    w_ptr,
    s_ptr,
    part_ptr,
    stride_wr,
    stride_wc,
    stride_sr,
    stride_sg,
    stride_pr,
    w_group,
    MASK_BITS: tl.constexpr,
    DT: tl.constexpr,
    DOT_FP32: tl.constexpr,
    SCALE_GRAD: tl.constexpr,
    SG_GROUP: tl.constexpr,
    QMIN: tl.constexpr,
    QMAX: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """C [M, N] = (A [M, K] @ B [K, N]) * mask, mask 0/1 bytes [M, N] or bits [M, ceil(N/8)].

    ``SCALE_GRAD`` (wgrad of a weight W = C's shape, with learned symmetric scales s [M, N / G]):
    also the scale gradient's partial sums of ``(A @ B) * t`` over each tile's columns of one
    group (``SG_GROUP`` 0: the tile lies in one group, one [BM] sum per tile; else the group size,
    several whole groups per tile), with t = q - w / s inside the code range, q outside."""
    pid_m, pid_n = _swizzle(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    o_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    o_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    o_k = tl.arange(0, BLOCK_K)  # [BK]
    # rows / columns past the edge read row 0 (in bounds) and are never stored: the loop only
    # masks along K, as a plain matmul does
    p_a = a_ptr + (o_m % M)[:, None] * stride_am + o_k[None, :] * stride_ak  # [BM, BK]
    p_b = b_ptr + o_k[:, None] * stride_bk + (o_n % N)[None, :] * stride_bn  # [BK, BN]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        b_a = tl.load(p_a, mask=(k0 + o_k)[None, :] < K, other=0.0)
        b_b = tl.load(p_b, mask=(k0 + o_k)[:, None] < K, other=0.0)
        acc = _dot(b_a, b_b, acc, DT, DOT_FP32)
        p_a += BLOCK_K * stride_ak
        p_b += BLOCK_K * stride_bk
    m_out = (o_m < M)[:, None] & (o_n < N)[None, :]
    if MASK_BITS:
        p_m = mask_ptr + o_m[:, None] * stride_mask + (o_n // 8)[None, :]
        b_keep = (tl.load(p_m, mask=m_out, other=0).to(tl.int32) >> (o_n % 8)[None, :]) & 1
    else:
        b_keep = tl.load(mask_ptr + o_m[:, None] * stride_mask + o_n[None, :], mask=m_out, other=0)
    if SCALE_GRAD:
        # the quantize kernel's own x * (1/s) and rounding (this kernel runs without FMA
        # contraction), so q here is the code the forward used; the mask decides in-range
        o_mw, o_nw = o_m % M, o_n % N
        p_w = w_ptr + o_mw[:, None] * stride_wr + o_nw[None, :] * stride_wc
        b_w = tl.load(p_w).to(tl.float32)
        b_s = tl.load(s_ptr + o_mw[:, None] * stride_sr + (o_nw // w_group)[None, :] * stride_sg)
        b_v = b_w * tl.div_rn(tl.full([BLOCK_M, BLOCK_N], 1.0, tl.float32), b_s)
        b_q = tl.minimum(tl.maximum(rint(b_v), QMIN), QMAX)
        b_t = tl.where(b_keep != 0, b_q - b_v, b_q)
        b_c = tl.where(m_out, acc * b_t, 0.0)
        if SG_GROUP == 0:
            tl.store(part_ptr + o_m * stride_pr + pid_n, tl.sum(b_c, axis=1), mask=o_m < M)
        else:
            b_p = tl.sum(tl.reshape(b_c, [BLOCK_M, BLOCK_N // SG_GROUP, SG_GROUP]), 2)
            o_g = pid_n * (BLOCK_N // SG_GROUP) + tl.arange(0, BLOCK_N // SG_GROUP)
            m_g = (o_m < M)[:, None] & (o_g < N // SG_GROUP)[None, :]
            tl.store(part_ptr + o_m[:, None] * stride_pr + o_g[None, :], b_p, mask=m_g)
    acc = tl.where(b_keep != 0, acc, 0.0)
    tl.store(c_ptr + o_m[:, None] * stride_cm + o_n[None, :], cast_to_dt(acc, DT), mask=m_out)


@triton.jit
def _dequantize_rows_kernel(
    codes_ptr,
    scale_ptr,
    zp_ptr,
    y_ptr,
    R,
    C,
    DT: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """y [R, C] = dt((codes - zero_point[r]) * scale[r]): exactly the forward's fake-quantized x."""
    o_r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BR]
    o_c = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)  # [BC]
    m_r = o_r < R
    m_rc = m_r[:, None] & (o_c < C)[None, :]
    b_s = tl.load(scale_ptr + o_r, mask=m_r, other=0.0)
    b_zp = tl.load(zp_ptr + o_r, mask=m_r, other=0)
    b_q = tl.load(codes_ptr + o_r[:, None] * C + o_c[None, :], mask=m_rc, other=0).to(tl.int32)
    b_y = (b_q - b_zp[:, None]).to(tl.float32) * b_s[:, None]
    tl.store(y_ptr + o_r[:, None] * C + o_c[None, :], cast_to_dt(b_y, DT), mask=m_rc)


def _masked_mm(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, bits: bool, tiles: tuple,
               scale_grad: tuple | None = None):  # fmt: skip
    """C = (a @ b) * mask with ``tiles`` = (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, warps, stages)
    in C's terms (rows, columns, reduction). ``scale_grad`` = (w, s, qmin, qmax, sg_group, part):
    the kernel's SCALE_GRAD epilogue writes its partial sums into ``part``."""
    M, K = a.shape
    N = b.shape[1]
    block_m, block_n, block_k, group_m, num_warps, num_stages = tiles
    out = new_empty((M, N), a.dtype, a.device)
    if M == 0 or N == 0:
        return out
    if K == 0:
        if scale_grad is not None:
            scale_grad[-1].zero_()
        return out.zero_()
    if scale_grad is not None:
        w, s, qmin, qmax, sg_group, part = scale_grad
        sg = (w, s, part, w.stride(0), w.stride(1), s.stride(0), s.stride(1), part.stride(0),
              N // s.shape[1])  # fmt: skip
    else:
        qmin, qmax, sg_group = 0, 0, 0
        sg = (mask, mask, mask, 0, 0, 0, 0, 0, 1)
    grid = (triton.cdiv(M, block_m) * triton.cdiv(N, block_n),)
    _masked_mm_kernel[grid](
        a,
        b,
        mask,
        out,
        M,
        N,
        K,
        a.stride(0),
        a.stride(1),
        b.stride(0),
        b.stride(1),
        out.stride(0),
        mask.stride(0),
        *sg,
        MASK_BITS=bits,
        DT=dtype_code(a.dtype),
        DOT_FP32=dot_in_fp32(a.dtype),
        SCALE_GRAD=scale_grad is not None,
        SG_GROUP=sg_group,
        QMIN=qmin,
        QMAX=qmax,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        GROUP_M=group_m,
        num_warps=num_warps,
        num_stages=num_stages,
        # the scale-gradient epilogue must round w * (1/s) as the quantize kernel does
        **({"enable_fp_fusion": False} if scale_grad is not None else {}),
    )
    return out


def scale_grad_layout(K: int, n_groups: int, block: int) -> tuple[int, int]:
    """(SG_GROUP, column tile) of the wgrad scale-gradient epilogue for ``n_groups`` scales per
    row of K columns and a configured column tile ``block``: SG_GROUP 0 (each tile inside one
    group: per-tile partial sums), the group size (several whole power-of-two groups per tile), or
    -1 when no tile of at least 16 columns fits the groups (the launcher reduces in torch)."""
    group = K // n_groups
    if n_groups == 1 or group % block == 0:
        return 0, block
    if block % group == 0 and group & (group - 1) == 0:
        return group, block
    low = group & -group  # the largest power of two dividing the group
    return (0, low) if low >= 16 else (-1, block)


def dgrad(
    grad_y: torch.Tensor, w_fq: torch.Tensor, x_mask: torch.Tensor, *, config: dict
) -> torch.Tensor:
    """grad_x [M, K] = (grad_y [M, N] @ w_fq [N, K]) * unpack(x_mask), in grad_y's dtype.

    w_fq in grad_y's dtype (any strides), x_mask uint8 bits [M, ceil(K/8)] (contiguous rows).
    ``config`` tiles the linear's M, N, K (BLOCK_M, BLOCK_N, BLOCK_K) like every GEMM config of
    the project: here the output tile is [BLOCK_M, BLOCK_K] and BLOCK_N steps the reduction."""
    c = config
    tiles = (
        c["BLOCK_M"],
        c["BLOCK_K"],
        c["BLOCK_N"],
        c["GROUP_M"],
        c["num_warps"],
        c["num_stages"],
    )
    return _masked_mm(grad_y, w_fq, x_mask, True, tiles)


def wgrad(
    grad_y: torch.Tensor,
    x_fq: torch.Tensor,
    w_mask: torch.Tensor,
    *,
    config: dict,
    weight: torch.Tensor | None = None,
    w_scale: torch.Tensor | None = None,
    qmin: int = -128,
    qmax: int = 127,
):
    """grad_w [N, K] = (grad_y^T [N, M] @ x_fq [M, K]) * w_mask, in grad_y's dtype.

    x_fq [M, K] in grad_y's dtype, w_mask uint8 [N, K] (0/1, contiguous rows). ``config`` tiles
    the linear's M, N, K: the output tile is [BLOCK_N, BLOCK_K] and BLOCK_M steps the reduction
    over tokens. With ``weight`` [N, K] and its learned symmetric scales ``w_scale`` fp32 [N, G]
    (codes in [qmin, qmax]), returns (grad_w, grad_scale fp32 [N, G]): the scale gradient
    ``sum_{k in g} g_fq[n, k] * (q - w / s if in range else q)`` of the unmasked ``g_fq =
    grad_y^T @ x_fq``, reduced in the GEMM's epilogue (per-tile partial sums, added here)."""
    c = config
    tiles = [
        c["BLOCK_N"],
        c["BLOCK_K"],
        c["BLOCK_M"],
        c["GROUP_M"],
        c["num_warps"],
        c["num_stages"],
    ]
    a = grad_y.t()
    if weight is None:
        return _masked_mm(a, x_fq, w_mask, False, tuple(tiles))
    N, K = weight.shape
    G = w_scale.shape[1]
    sg_group, tiles[1] = scale_grad_layout(K, G, tiles[1])
    if sg_group < 0:  # no tile fits the groups: the unmasked gradient in fp32, reduced here
        g_fq = grad_y.to(torch.float32).t() @ x_fq.to(torch.float32)
        v = weight.to(torch.float32) * (1.0 / w_scale.to(torch.float32)).repeat_interleave(
            K // G, 1
        )
        q = torch.clamp(torch.round(v), qmin, qmax)
        t = torch.where(w_mask.bool(), q - v, q)
        grad_s = (g_fq * t).reshape(N, G, K // G).sum(-1)
        return (g_fq * w_mask).to(grad_y.dtype), grad_s
    n_tiles = triton.cdiv(K, tiles[1])
    part = new_empty((N, G if sg_group else n_tiles), torch.float32, grad_y.device)
    grad_w = _masked_mm(a, x_fq, w_mask, False, tuple(tiles),
                        (weight, w_scale, qmin, qmax, sg_group, part))  # fmt: skip
    if sg_group:
        return grad_w, part
    if G == 1:
        return grad_w, part.sum(1, keepdim=True)
    return grad_w, part.reshape(N, G, n_tiles // G).sum(-1)


def dequantize_rows(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    dtype: torch.dtype,
    *,
    config: dict,
) -> torch.Tensor:
    """[R, C] ``dtype((codes - zero_point) * scale)`` of int8 codes [R, C] (contiguous) with one
    fp32 scale and int32 zero point per row ([R] or [R, 1]). ``config``: BLOCK_R, BLOCK_C,
    num_warps."""
    R, C = codes.shape
    y = new_empty((R, C), dtype, codes.device)
    if R == 0 or C == 0:
        return y
    grid = (triton.cdiv(R, config["BLOCK_R"]), triton.cdiv(C, config["BLOCK_C"]))
    _dequantize_rows_kernel[grid](
        codes,
        scale.contiguous(),
        zero_point.contiguous(),
        y,
        R,
        C,
        DT=dtype_code(dtype),
        BLOCK_R=config["BLOCK_R"],
        BLOCK_C=config["BLOCK_C"],
        num_warps=config["num_warps"],
    )
    return y
