"""Forward GEMM: int8 x int8 -> int32 on tensor cores with a dequantizing epilogue.

    out[m, n] = s_x[m] * sum_g s_w[n, g] * (sum_{k in g} q_x[m, k] q_w[n, k] - zp_x[m] * colsum_w[n, g])
                + bias[n]

which equals ``x_fq @ w_fq.T + bias`` up to float rounding (the integer part is exact; NUMERICS.md
"How a fused kernel gets exactly this"). Three modes, chosen by the launcher:

* ``MODE 0`` per-channel / per-tensor weights: one int32 accumulator, all scaling in the epilogue.
* ``MODE 1`` per-group weights with ``group_size % BLOCK_K == 0``: an int32 accumulator per group,
  flushed into fp32 with that group's scales (the scale varies along K, so not in the epilogue).
* ``MODE 2`` per-group weights with other group sizes: codes are dequantized per element into an
  fp32 dot (IEEE precision). Correct for any divisor of K, slower.

Layouts: q_x int8 [M, K] (row stride given), s_x fp32 [M], zp_x int32 [M]; q_w int8 [N, K]
(row stride given), s_w fp32 [N, G], colsum_w int32 [N, G]; bias [N]; out [M, N] contiguous.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from triton_qat.autotune import gemm_config

from ._common import cast_to_dt, dtype_code, new_empty, use_kernels


@triton.jit
def _swizzle(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Grouped program ordering so neighbouring programs share operand tiles in L2."""
    n_pid_m = tl.cdiv(M, BLOCK_M)
    n_pid_n = tl.cdiv(N, BLOCK_N)
    n_in_group = GROUP_M * n_pid_n
    group_id = pid // n_in_group
    first_m = group_id * GROUP_M
    size_m = tl.minimum(n_pid_m - first_m, GROUP_M)
    pid_m = first_m + ((pid % n_in_group) % size_m)
    pid_n = (pid % n_in_group) // size_m
    return pid_m, pid_n


@triton.jit
def _int8_linear_kernel(
    xq_ptr,
    sx_ptr,
    zpx_ptr,
    wq_ptr,
    sw_ptr,
    wsum_ptr,
    bias_ptr,
    out_ptr,
    M,
    N,
    K,
    GROUP,
    stride_xm,
    stride_wn,
    stride_om,
    HAS_BIAS: tl.constexpr,
    ASYM: tl.constexpr,
    MODE: tl.constexpr,
    DT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _swizzle(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    o_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    o_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    o_k = tl.arange(0, BLOCK_K)  # [BK]
    m_m = o_m < M
    m_n = o_n < N
    n_groups = K // GROUP
    b_sx = tl.load(sx_ptr + o_m, mask=m_m, other=1.0)  # [BM]
    b_zp = tl.load(zpx_ptr + o_m, mask=m_m, other=0)  # [BM]
    p_x = xq_ptr + o_m[:, None] * stride_xm  # [BM, 1]
    p_w = wq_ptr + o_n[None, :] * stride_wn  # [1, BN]
    if MODE == 0:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):
            m_k = (k0 + o_k) < K
            b_a = tl.load(p_x + (k0 + o_k)[None, :], mask=m_m[:, None] & m_k[None, :], other=0)
            b_b = tl.load(p_w + (k0 + o_k)[:, None], mask=m_k[:, None] & m_n[None, :], other=0)
            acc += tl.dot(b_a, b_b, out_dtype=tl.int32)  # [BM, BN]
        if ASYM:
            b_ws = tl.load(wsum_ptr + o_n, mask=m_n, other=0)
            acc -= b_zp[:, None] * b_ws[None, :]
        b_sw = tl.load(sw_ptr + o_n, mask=m_n, other=1.0)
        b_out = acc.to(tl.float32) * b_sx[:, None] * b_sw[None, :]
    elif MODE == 1:
        acc_f = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for g in range(0, n_groups):
            acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
            for k0 in range(g * GROUP, (g + 1) * GROUP, BLOCK_K):
                b_a = tl.load(p_x + (k0 + o_k)[None, :], mask=m_m[:, None], other=0)
                b_b = tl.load(p_w + (k0 + o_k)[:, None], mask=m_n[None, :], other=0)
                acc += tl.dot(b_a, b_b, out_dtype=tl.int32)
            if ASYM:
                b_ws = tl.load(wsum_ptr + o_n * n_groups + g, mask=m_n, other=0)
                acc -= b_zp[:, None] * b_ws[None, :]
            b_sw = tl.load(sw_ptr + o_n * n_groups + g, mask=m_n, other=1.0)
            acc_f += acc.to(tl.float32) * b_sw[None, :]
        b_out = acc_f * b_sx[:, None]
    else:
        acc_f = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            m_k = (k0 + o_k) < K
            m_a = m_m[:, None] & m_k[None, :]
            m_b = m_k[:, None] & m_n[None, :]
            b_a = tl.load(p_x + (k0 + o_k)[None, :], mask=m_a, other=0).to(tl.int32)
            b_a = tl.where(m_a, b_a - b_zp[:, None], 0).to(tl.float32)  # [BM, BK]
            b_b = tl.load(p_w + (k0 + o_k)[:, None], mask=m_b, other=0).to(tl.float32)
            p_sw = sw_ptr + o_n[None, :] * n_groups + ((k0 + o_k) // GROUP)[:, None]
            b_b = b_b * tl.load(p_sw, mask=m_b, other=0.0)  # [BK, BN]
            acc_f += tl.dot(b_a, b_b, input_precision="ieee")
        b_out = acc_f * b_sx[:, None]
    if HAS_BIAS:
        b_out += tl.load(bias_ptr + o_n, mask=m_n, other=0.0).to(tl.float32)[None, :]
    p_o = out_ptr + o_m[:, None] * stride_om + o_n[None, :]
    tl.store(p_o, cast_to_dt(b_out, DT), mask=m_m[:, None] & m_n[None, :])


def _pick_mode(K: int, group_size: int, block_k: int) -> tuple[int, int]:
    """(MODE, BLOCK_K) for a weight quantized in groups of ``group_size`` along K."""
    if group_size == K:
        return 0, block_k
    if group_size % 32 == 0:  # int8 tensor-core tiles need BLOCK_K >= 32
        return 1, min(block_k, group_size & -group_size)
    # fp32 operand tiles: BLOCK_K 128 x 3 stages needs 256 KiB of shared memory; 32 x 2 needs 48
    return 2, min(block_k, 32)


def int8_linear(
    x_codes: torch.Tensor,
    x_scale: torch.Tensor,
    x_zero_point: torch.Tensor,
    w_codes: torch.Tensor,
    w_scale: torch.Tensor,
    w_code_sum: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    asymmetric: bool = True,
    config: dict | None = None,
) -> torch.Tensor:
    """``x_fq @ w_fq.T + bias`` from int8 codes.

    x_codes int8 [M, K], x_scale fp32 [M] or [M, 1], x_zero_point int32 [M] or [M, 1] (stored
    shifted like the codes); w_codes int8 [N, K], w_scale fp32 [N, G], w_code_sum int32 [N, G]
    (G groups of K // G along K); bias [N] or None. Returns [M, N] in ``out_dtype``.
    """
    M, K = x_codes.shape
    N = w_codes.shape[0]
    n_groups = w_scale.shape[1]
    group_size = K // n_groups
    if not use_kernels(x_codes):
        return int8_linear_ref(x_codes, x_scale, x_zero_point, w_codes, w_scale, bias, out_dtype)
    out = new_empty((M, N), out_dtype, x_codes.device)
    if M == 0 or N == 0:
        return out
    if K == 0:
        return out.copy_(bias.expand(M, N) if bias is not None else torch.zeros_like(out))
    x_codes = x_codes if x_codes.stride(1) == 1 else x_codes.contiguous()
    w_codes = w_codes if w_codes.stride(1) == 1 else w_codes.contiguous()
    cfg = config or gemm_config("fwd", M, N, K, x_codes.device, out_dtype, group_size)
    mode, block_k = _pick_mode(K, group_size, cfg["BLOCK_K"])
    grid = (triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"]),)
    _int8_linear_kernel[grid](
        x_codes,
        x_scale.contiguous(),
        x_zero_point.contiguous(),
        w_codes,
        w_scale.contiguous(),
        w_code_sum.contiguous(),
        bias.contiguous() if bias is not None else out,
        out,
        M,
        N,
        K,
        group_size,
        x_codes.stride(0),
        w_codes.stride(0),
        out.stride(0),
        HAS_BIAS=bias is not None,
        ASYM=asymmetric,
        MODE=mode,
        DT=dtype_code(out_dtype),
        BLOCK_M=cfg["BLOCK_M"],
        BLOCK_N=cfg["BLOCK_N"],
        BLOCK_K=block_k,
        GROUP_M=cfg["GROUP_M"],
        num_warps=cfg["num_warps"],
        num_stages=min(cfg["num_stages"], 2) if mode == 2 else cfg["num_stages"],
    )
    return out


def dequantize_ref(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None):
    """fp32 values ``(codes - zero_point) * scale`` with per-(row, group) scale [R, G] (or [R])."""
    R, C = codes.shape
    scale = scale.reshape(R, -1)
    n_groups = scale.shape[1]
    q = codes.to(torch.float32).reshape(R, n_groups, C // n_groups)
    if zero_point is not None:
        q = q - zero_point.reshape(R, -1, 1).to(torch.float32)
    return (q * scale[..., None]).reshape(R, C)


def int8_linear_ref(x_codes, x_scale, x_zero_point, w_codes, w_scale, bias, out_dtype):
    """Plain-torch twin of :func:`int8_linear` (fp32 math on the dequantized codes)."""
    x = dequantize_ref(x_codes, x_scale, x_zero_point)
    w = dequantize_ref(w_codes, w_scale, None)
    out = x @ w.T
    if bias is not None:
        out = out + bias.to(torch.float32)
    return out.to(out_dtype)
