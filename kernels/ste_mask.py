"""The STE mask applied after a GEMM: zero the elements of C whose clamp-mask bit (or byte) is 0.

    C[m, n] = 0 where mask[m, n] == 0          (in place; C's other elements are not touched)

The backward GEMMs can run as a plain GEMM (cuBLAS, ``torch.mm``) followed by this pass
(:mod:`.gemm_backward`, configs with ``CUBLAS``): ``torch.where(mask, A @ B, 0)`` in two steps.
The pass reads the mask (a bit or a byte per element) and stores only where the mask is 0, so it
moves ``M * N / 8`` bytes (bits) or ``M * N`` (bytes) plus the zeros it writes. With dynamic
qparams few elements clip (docs/numerics.md "Which configs clip"), so it writes next to nothing;
with static qparams it writes at most one element per element of C. NaN and inf in C are zeroed
where masked, as ``torch.where`` does.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, cdiv


@triton.jit
def _zero_masked_kernel(
    c_ptr,
    mask_ptr,
    M,
    N,
    stride_cm,
    stride_mask,
    BITS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """C [M, N] (unit column stride) = 0 where ``mask`` is 0: bits [M, ceil(N/8)] (bit j of byte
    b is column 8 b + j) with ``BITS``, else 0/1 bytes [M, N]; unit column stride either way."""
    pid = tl.program_id(0)
    n_cols = tl.cdiv(N, BLOCK_N)
    o_m = (pid // n_cols).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    o_n = (pid % n_cols) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    m_in = (o_m[:, None] < M) & (o_n[None, :] < N)  # [BM, BN]
    if BITS:
        p_mask = mask_ptr + o_m[:, None] * stride_mask + (o_n // 8)[None, :]
        b_byte = tl.load(p_mask, mask=m_in, other=255).to(tl.int32)  # [BM, BN]
        b_keep = (b_byte >> (o_n % 8)[None, :]) & 1
    else:
        p_mask = mask_ptr + o_m[:, None] * stride_mask + o_n[None, :]
        b_keep = tl.load(p_mask, mask=m_in, other=1)  # [BM, BN]
    b_zero = tl.zeros([BLOCK_M, BLOCK_N], dtype=c_ptr.dtype.element_ty)
    tl.store(c_ptr + o_m[:, None] * stride_cm + o_n[None, :], b_zero, mask=m_in & (b_keep == 0))


class ZeroMaskedPlan(NamedTuple):
    """What a :func:`launch_zero_masked` launch decides once per key."""

    bits: bool
    block_m: int
    block_n: int
    num_warps: int


def plan_zero_masked(bits: bool, interpret: bool = False) -> ZeroMaskedPlan:
    """The pass over a mask of bits (``bits``) or bytes: 32 x 256 elements per program, 4 warps
    (64 mask elements a thread; a memory-bound pass); 64 x 64 under the interpreter."""
    if interpret:
        return ZeroMaskedPlan(bits, 64, 64, 1)
    return ZeroMaskedPlan(bits, 32, 256, 4)


def launch_zero_masked(
    p: ZeroMaskedPlan, c: torch.Tensor, mask: torch.Tensor, kernel=None
) -> torch.Tensor:
    """Run plan ``p`` on ``c`` [M, N] (unit column stride) in place, with ``mask`` as the plan
    says (uint8, unit column stride); returns ``c``. ``kernel``: the kernel object to launch
    (default this module's; a traced wrapper under ``torch.compile``)."""
    M, N = c.shape
    if M == 0 or N == 0:
        return c
    grid = (cdiv(M, p.block_m) * cdiv(N, p.block_n),)
    args = (c, mask, M, N, c.stride(0), mask.stride(0))
    meta = dict(BITS=p.bits, BLOCK_M=p.block_m, BLOCK_N=p.block_n, num_warps=p.num_warps)
    if kernel is None:  # JITFunction.run: what kernel[grid](...) calls, without its two frames
        _zero_masked_kernel.run(*args, grid=grid, warmup=False, **meta)
    else:
        kernel[grid](*args, **meta)
    return c


def zero_masked(c: torch.Tensor, mask: torch.Tensor, *, bits: bool) -> torch.Tensor:
    """``c`` [M, N] (float, unit column stride) with the elements whose ``mask`` bit / byte is 0
    set to +0.0, in place; ``mask`` uint8 bits [M, ceil(N/8)] (``bits``) or 0/1 bytes [M, N].
    Returns ``c``. :func:`plan_zero_masked` then :func:`launch_zero_masked`."""
    return launch_zero_masked(plan_zero_masked(bits, INTERPRET), c, mask)
