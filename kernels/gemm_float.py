"""A plain GEMM on operands in the input dtype (fp32 accumulation) with the epilogues QAT needs.

    C [M, N] = (A [M, K] @ B [K, N]) * mask + bias

Its hot loop is the loop of a plain Triton matmul: two tile loads and one ``tl.dot`` per step
(wgmma on Hopper for 16-bit operands; fp32 operands use IEEE-precision dots, not TF32). The
operands are fake-quantized values dequantized once into transient buffers, so the only difference
from an fp64 product of the same values is the dot's own rounding. Three users:

* the STE backward (:mod:`.gemm_backward`): dgrad and wgrad, with the clamp mask (bytes or bits)
  and, for learned weight scales, the scale gradient's partial sums in the epilogue;
* the dequantized forward of per-group weights (:mod:`.gemm_int8`, a config with ``DEQUANT``):
  ``x_fq @ w_fq.T + bias``, which is exactly the GEMM the reference runs on its fake-quantized
  values (docs/numerics.md "Forward GEMM").
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from ._common import (
    PTX_ASM,
    cast_to_dt,
    dot_in_fp32,
    dtype_code,
    empty,
    mul_rn,
    rint,
    swizzle,
)

NO_MASK, MASK_BYTES, MASK_BITS = 0, 1, 2


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
def _keep_where(acc, b_keep):
    """``acc`` where the mask byte / bit ``b_keep`` is set, else +0.0 (the STE mask; NaN and inf
    are zeroed too, as ``torch.where`` does). On NVIDIA GPUs one inline ``selp.f32`` per element:
    LLVM sinks a plain select past the cast to the output dtype, and ptxas then serializes every
    wgmma of the hot loop (C7514: "non wgmma instructions reading accumulator registers"), so
    no MMA group stays in flight; the plain form (the CPU tests run it) computes the same bits."""
    if PTX_ASM:
        return tl.inline_asm_elementwise(
            "{ .reg .pred p; setp.ne.b32 p, $2, 0; selp.f32 $0, $1, 0f00000000, p; }",
            "=r,r,r", [acc, b_keep.to(tl.int32)], dtype=tl.float32, is_pure=True, pack=1,
        )  # fmt: skip
    else:
        return tl.where(b_keep != 0, acc, 0.0)


@triton.jit
def _float_mm_kernel(
    a_ptr,
    b_ptr,
    a_desc,
    b_desc,
    mask_ptr,
    bias_ptr,
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
    TMA: tl.constexpr,
    A_T: tl.constexpr,
    B_T: tl.constexpr,
    MASK: tl.constexpr,
    HAS_BIAS: tl.constexpr,
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
    """C [M, N] = (A [M, K] @ B [K, N]) * mask + bias[N]; ``MASK``: none, 0/1 bytes [M, N] or
    bits [M, ceil(N/8)].

    ``SCALE_GRAD`` (wgrad of a weight W = C's shape, with learned symmetric scales s [M, N / G]):
    also the scale gradient's partial sums of ``(A @ B) * t`` over each tile's columns of one
    group (``SG_GROUP`` 0: the tile lies in one group, one [BM] sum per tile; else the group size,
    several whole groups per tile), with t = q - w / s inside the code range, q outside.

    ``TMA``: the operand tiles come through tensor descriptors (Hopper's TMA: one thread issues a
    tile copy, no per-thread addresses or masks; out-of-bounds elements read as zero). A
    descriptor's last dimension is its unit-stride one: ``A_T`` / ``B_T`` say that it describes
    the operand's transpose (A^T [K, M], B^T [N, K]), whose tiles are transposed on use."""
    pid_m, pid_n = swizzle(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    o_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    o_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if TMA:
        m0, n0 = pid_m * BLOCK_M, pid_n * BLOCK_N
        for k0 in range(0, K, BLOCK_K):
            b_a = a_desc.load([k0, m0]).T if A_T else a_desc.load([m0, k0])  # [BM, BK]
            b_b = b_desc.load([n0, k0]).T if B_T else b_desc.load([k0, n0])  # [BK, BN]
            acc = _dot(b_a, b_b, acc, DT, DOT_FP32)
    else:
        o_k = tl.arange(0, BLOCK_K)  # [BK]
        # rows / columns past the edge read row 0 (in bounds) and are never stored: the loop
        # only masks along K, as a plain matmul does
        p_a = a_ptr + (o_m % M)[:, None] * stride_am + o_k[None, :] * stride_ak  # [BM, BK]
        p_b = b_ptr + o_k[:, None] * stride_bk + (o_n % N)[None, :] * stride_bn  # [BK, BN]
        for k0 in range(0, K, BLOCK_K):
            b_a = tl.load(p_a, mask=(k0 + o_k)[None, :] < K, other=0.0)
            b_b = tl.load(p_b, mask=(k0 + o_k)[:, None] < K, other=0.0)
            acc = _dot(b_a, b_b, acc, DT, DOT_FP32)
            p_a += BLOCK_K * stride_ak
            p_b += BLOCK_K * stride_bk
    m_out = (o_m < M)[:, None] & (o_n < N)[None, :]
    if MASK == 2:
        p_m = mask_ptr + o_m[:, None] * stride_mask + (o_n // 8)[None, :]
        b_keep = (tl.load(p_m, mask=m_out, other=0).to(tl.int32) >> (o_n % 8)[None, :]) & 1
    elif MASK == 1:
        b_keep = tl.load(mask_ptr + o_m[:, None] * stride_mask + o_n[None, :], mask=m_out, other=0)
    if SCALE_GRAD:
        # the quantize kernel's own x * (1/s) (mul_rn: never contracted) and rounding, so q here
        # is the code the forward used; the mask decides in-range
        o_mw, o_nw = o_m % M, o_n % N
        p_w = w_ptr + o_mw[:, None] * stride_wr + o_nw[None, :] * stride_wc
        b_w = tl.load(p_w).to(tl.float32)
        if SG_GROUP == 0:  # the tile lies in one group: one scale per row, 1/s per row
            g0 = (pid_n * BLOCK_N) // w_group
            b_s = tl.load(s_ptr + o_mw * stride_sr + g0 * stride_sg)  # [BM]
            b_v = mul_rn(b_w, tl.div_rn(tl.full([BLOCK_M], 1.0, tl.float32), b_s)[:, None])
        else:  # whole groups of SG_GROUP columns: a constexpr group index per column
            b_s = tl.load(
                s_ptr + o_mw[:, None] * stride_sr + (o_nw // SG_GROUP)[None, :] * stride_sg
            )
            b_v = mul_rn(b_w, tl.div_rn(tl.full([BLOCK_M, BLOCK_N], 1.0, tl.float32), b_s))
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
    if MASK != 0:
        acc = _keep_where(acc, b_keep)
    if HAS_BIAS:  # fp32 accumulator + bias, one rounding to dt (as F.linear's epilogue)
        acc += tl.load(bias_ptr + o_n % N).to(tl.float32)[None, :]
    tl.store(c_ptr + o_m[:, None] * stride_cm + o_n[None, :], cast_to_dt(acc, DT), mask=m_out)


def tiles_of(config: dict, rows: str, cols: str, red: str) -> tuple:
    """:func:`float_mm`'s ``tiles`` from a GEMM config: the config keys tiling C's rows, C's
    columns and the reduction (each GEMM maps the linear's BLOCK_M / BLOCK_N / BLOCK_K its own
    way), then GROUP_M, num_warps, num_stages."""
    c = config
    return (c[rows], c[cols], c[red], c["GROUP_M"], c["num_warps"], c["num_stages"])


def _tma_view(t: torch.Tensor) -> tuple[torch.Tensor, bool, tuple] | None:
    """(view, transposed, its strides): ``t`` [R, C] as a tensor descriptor can take it, itself
    (unit column stride) or its transpose (unit row stride), with a 16-byte aligned base and
    other stride; None when neither fits."""
    fake = type(t).__name__ in ("FakeTensor", "FunctionalTensor")  # compile-only capture
    if not (fake or t.data_ptr() % 16 == 0):
        return None
    (rows, cols), (s0, s1), size = t.shape, t.stride(), t.dtype.itemsize
    # rows apart: no zero-stride (expanded) or overlapping rows
    if s1 == 1 and s0 >= cols and (s0 * size) % 16 == 0:
        return t, False, (s0, 1)
    if s0 == 1 and s1 >= rows and (s1 * size) % 16 == 0:
        return t.t(), True, (s1, 1)
    return None


def descriptor(view: torch.Tensor, strides: tuple, block: list) -> TensorDescriptor:
    """``TensorDescriptor.from_tensor(view, block)`` without its checks, which
    :func:`_tma_view` (alignment, strides) and the configs (power-of-two tiles) have made: they
    cost more host time than the rest of a launch."""
    desc = object.__new__(TensorDescriptor)
    desc.base, desc.shape, desc.strides, desc.block_shape = view, view.shape, strides, block
    desc.padding, desc.round_f32_to_tf32 = "zero", False
    return desc


def k_major_descriptors_fit(a: torch.Tensor, sa: tuple, b: torch.Tensor, sb: tuple) -> bool:
    """Whether int8 a [M, K] and b [N, K] with strides ``sa`` / ``sb`` (unit column strides)
    can be K-major tensor descriptors: 16-byte aligned bases and row strides, rows apart (no
    zero-stride or overlapping rows)."""
    K = a.shape[1]
    if sa[0] < K or sb[0] < K or (sa[0] | sb[0]) % 16:
        return False
    if type(a).__name__ in ("FakeTensor", "FunctionalTensor"):  # compile-only capture
        return True
    return (a.data_ptr() | b.data_ptr()) % 16 == 0


def tma_descriptors(a, b, block_m, block_n, block_k):
    """(a_desc, b_desc, A_T, B_T): tensor descriptors of a [M, K] and b [K, N] with tiles
    [BLOCK_M, BLOCK_K] / [BLOCK_K, BLOCK_N] (of the transpose where that is the unit-stride view:
    A_T, B_T), or None when an operand does not fit a descriptor."""
    va, vb = _tma_view(a), _tma_view(b)
    if va is None or vb is None:
        return None
    (va, a_t, sa), (vb, b_t, sb) = va, vb
    a_desc = descriptor(va, sa, [block_k, block_m] if a_t else [block_m, block_k])
    b_desc = descriptor(vb, sb, [block_n, block_k] if b_t else [block_k, block_n])
    return a_desc, b_desc, a_t, b_t


class FloatMMPlan(NamedTuple):
    """What a :func:`float_mm` launch decides once per key (:func:`plan_float_mm`)."""

    block_m: int
    block_n: int
    tma: bool  # try tensor descriptors (per launch: the operands must allow them)
    meta: dict  # constexprs and launch options but TMA / A_T / B_T


def plan_float_mm(
    dtype: torch.dtype,
    *,
    tiles: tuple,
    mask: int = NO_MASK,
    bias: bool = False,
    scale_grad: tuple[int, int, int] | None = None,
    tma: bool = False,
) -> FloatMMPlan:
    """The plan of :func:`float_mm` in ``dtype``: ``mask`` NO_MASK / MASK_BYTES / MASK_BITS,
    ``bias`` whether one is added, ``scale_grad`` (qmin, qmax, sg_group) for the scale-gradient
    epilogue."""
    block_m, block_n, block_k, group_m, num_warps, num_stages = tiles
    qmin, qmax, sg_group = scale_grad if scale_grad is not None else (0, 0, 0)
    meta = dict(
        MASK=mask,
        HAS_BIAS=bias,
        DT=dtype_code(dtype),
        DOT_FP32=dot_in_fp32(dtype),
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
    )
    return FloatMMPlan(block_m, block_n, tma, meta)


def launch_float_mm(
    p: FloatMMPlan,
    a: torch.Tensor,
    b: torch.Tensor,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    scale_grad: tuple | None = None,
    kernel=None,
) -> torch.Tensor:
    """Run plan ``p`` (:func:`plan_float_mm`): C [M, N] = (a [M, K] @ b [K, N]) * mask + bias in
    the plan's dtype; ``scale_grad`` = (w, s, part) with the plan's epilogue. ``kernel``: the
    kernel object to launch (default this module's; a traced wrapper under ``torch.compile``)."""
    M, K = a.shape
    N = b.shape[1]
    out = empty((M, N), dtype=a.dtype, device=a.device)
    if M == 0 or N == 0:
        return out
    if K == 0:
        if scale_grad is not None:
            scale_grad[-1].zero_()
        return out.copy_(bias.expand(M, N)) if bias is not None else out.zero_()
    if scale_grad is not None:
        w, s, part = scale_grad
        sg = (w, s, part, w.stride(0), w.stride(1), s.stride(0), s.stride(1), part.stride(0),
              N // s.shape[1])  # fmt: skip
    else:
        sg = (out, out, out, 0, 0, 0, 0, 0, 1)
    descs = None
    if p.tma:
        descs = tma_descriptors(a, b, p.block_m, p.block_n, p.meta["BLOCK_K"])
    a_desc, b_desc, a_t, b_t = descs if descs is not None else (a, b, False, False)
    sa, sb = a.stride(), b.stride()
    mask_arg = out if mask is None else mask
    args = (a, b, a_desc, b_desc, mask_arg, out if bias is None else bias.contiguous(), out, M, N,
            K, sa[0], sa[1], sb[0], sb[1], N, 0 if mask is None else mask.stride(0), *sg)  # fmt: skip
    grid = (-(-M // p.block_m) * -(-N // p.block_n),)
    tma = descs is not None
    if kernel is None:  # JITFunction.run: what kernel[grid](...) calls, without its two frames
        _float_mm_kernel.run(*args, grid=grid, warmup=False, TMA=tma, A_T=a_t, B_T=b_t, **p.meta)
    else:
        kernel[grid](*args, TMA=tma, A_T=a_t, B_T=b_t, **p.meta)
    return out


def float_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    tiles: tuple,
    mask: torch.Tensor | None = None,
    mask_bits: bool = False,
    bias: torch.Tensor | None = None,
    scale_grad: tuple | None = None,
    tma: bool = False,
    kernel=None,
) -> torch.Tensor:
    """C [M, N] = (a [M, K] @ b [K, N]) * mask + bias, in a's dtype (a, b: same float dtype, any
    strides). ``tiles`` = (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, warps, stages) in C's terms (rows,
    columns, reduction). ``mask``: uint8 0/1 [M, N], or bits [M, ceil(N/8)] with ``mask_bits``
    (contiguous rows); ``bias`` [N] (any float dtype, added in fp32). ``scale_grad`` = (w, s, qmin,
    qmax, sg_group, part): the kernel's SCALE_GRAD epilogue writes its partial sums into ``part``
    (needs ``mask``). ``tma``: load the operand tiles through tensor descriptors (Hopper's TMA)
    where both operands allow it (a unit stride, 16-byte aligned base and other stride); the
    pointer loop otherwise, with the same result. :func:`plan_float_mm` then
    :func:`launch_float_mm`."""
    mask_mode = NO_MASK if mask is None else MASK_BITS if mask_bits else MASK_BYTES
    sg_plan = sg_args = None
    if scale_grad is not None:
        w, s, qmin, qmax, sg_group, part = scale_grad
        sg_plan, sg_args = (qmin, qmax, sg_group), (w, s, part)
    plan = plan_float_mm(a.dtype, tiles=tiles, mask=mask_mode, bias=bias is not None,
                         scale_grad=sg_plan, tma=tma)  # fmt: skip
    return launch_float_mm(plan, a, b, mask, bias, sg_args, kernel)


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
