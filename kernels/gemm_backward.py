"""STE backward GEMMs: a plain GEMM of dequantized operands with the clamp mask in the epilogue.

    grad_x = (grad_y @ w_fq) * mask_x        # dgrad: A = grad_y [M, N], B = w_fq [N, K]
    grad_w = (grad_y^T @ x_fq) * mask_w      # wgrad: A = grad_y^T [N, M], B = x_fq [M, K]

(docs/numerics.md "Backward"). The backward re-derives w_fq and mask_w from the weight parameter
and dequantizes x_fq from the saved int8 codes (:mod:`.dequantize`), each once per backward into a
transient buffer in the input dtype (the weight through the quantize kernel), so the hot loop is
the loop of a plain Triton matmul (:mod:`.gemm_float`): two tile loads and one ``tl.dot`` per
step, nothing weight-sized kept between forward and backward. grad_y stays unquantized (that is
what STE means); the only difference from an fp64 reference is the dot's own rounding (fp32
accumulation; fp32 inputs use IEEE-precision dots, not TF32).

A config with ``CUBLAS`` runs the same product as a plain ``torch.mm`` (cuBLAS on a GPU) and then
zeroes the masked elements in place (:mod:`.ste_mask`): the mask applies elementwise to the GEMM's
output, so ``torch.where(mask, A @ B, 0)`` may be computed in two steps, and the second reads one
bit (dgrad; wgrad of per-channel / per-tensor weights) or byte (per-group wgrad) per element and writes only the few elements that clip
(docs/numerics.md "Which configs clip"). For 16-bit operands only: an fp32 ``torch.mm`` follows
``torch.backends.cuda.matmul.allow_tf32``, the Triton kernel never uses TF32. The product is then
cuBLAS's, reductions included (torch's ``allow_bf16/fp16_reduced_precision_reduction``, as for
``nn.Linear``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._common import INTERPRET, cdiv, new_empty
from .gemm_float import (
    MASK_BITS,
    MASK_BYTES,
    FloatMMPlan,
    float_mm,
    launch_float_mm,
    plan_float_mm,
    scale_grad_layout,
    tiles_of,
)
from .ste_mask import ZeroMaskedPlan, launch_zero_masked, plan_zero_masked

# Accumulator elements per thread the scale-gradient epilogue compiles with, without spilling
# (sm_90a, Triton 3.9, perf/kernel_static.py "wgrad scale-grad"): 64 (Hopper's 256x128 / 8-warp
# wgrad tile holds 128 and spilled 4016 B).
SCALE_GRAD_ACC = 64


class CublasPlan(NamedTuple):
    """A backward GEMM as ``torch.mm`` and then the mask pass (a config with ``CUBLAS``)."""

    zero_masked: ZeroMaskedPlan


def uses_cublas(config: dict, dtype: torch.dtype) -> bool:
    """Whether ``config`` runs a backward GEMM in ``dtype`` as ``torch.mm`` + the mask pass
    (``CUBLAS`` set, 16-bit operands: fp32 keeps the IEEE Triton dot, see the module doc)."""
    return bool(config.get("CUBLAS")) and dtype in (torch.float16, torch.bfloat16)


def plan_dgrad(dtype: torch.dtype, config: dict) -> FloatMMPlan | CublasPlan:
    """The plan of :func:`dgrad` in ``dtype`` (run it with ``launch_backward(plan, grad_y, w_fq,
    x_mask)``)."""
    if uses_cublas(config, dtype):
        return CublasPlan(plan_zero_masked(True, INTERPRET))
    tiles = tiles_of(config, "BLOCK_M", "BLOCK_K", "BLOCK_N")
    return plan_float_mm(dtype, tiles=tiles, mask=MASK_BITS, tma=bool(config.get("TMA")))


def plan_wgrad(
    dtype: torch.dtype, config: dict, mask_bits: bool = False
) -> FloatMMPlan | CublasPlan:
    """The plan of :func:`wgrad` without a scale gradient, in ``dtype``, for a weight mask of bits
    [N, ceil(K/8)] (``mask_bits``: per-channel / per-tensor weights, whose quantize packs them)
    or bytes [N, K] (run it with ``launch_backward(plan, grad_y.t(), x_fq, w_mask)``)."""
    if uses_cublas(config, dtype):
        return CublasPlan(plan_zero_masked(mask_bits, INTERPRET))
    tiles = tiles_of(config, "BLOCK_N", "BLOCK_K", "BLOCK_M")
    mask = MASK_BITS if mask_bits else MASK_BYTES
    return plan_float_mm(dtype, tiles=tiles, mask=mask, tma=bool(config.get("TMA")))


def launch_backward(
    p: FloatMMPlan | CublasPlan,
    a: torch.Tensor,
    b: torch.Tensor,
    mask: torch.Tensor,
    kernel=None,
    mask_kernel=None,
) -> torch.Tensor:
    """Run a :func:`plan_dgrad` / :func:`plan_wgrad` plan: (a [M, K] @ b [K, N]) * mask in a's
    dtype (a, b: the same dtype, any strides). ``kernel`` / ``mask_kernel``: the GEMM's and the
    mask pass's kernel objects (default the modules' own; traced wrappers under
    ``torch.compile``)."""
    if isinstance(p, CublasPlan):
        return launch_zero_masked(p.zero_masked, torch.mm(a, b), mask, kernel=mask_kernel)
    return launch_float_mm(p, a, b, mask, kernel=kernel)


def dgrad(
    grad_y: torch.Tensor, w_fq: torch.Tensor, x_mask: torch.Tensor, *, config: dict
) -> torch.Tensor:
    """grad_x [M, K] = (grad_y [M, N] @ w_fq [N, K]) * unpack(x_mask), in grad_y's dtype.

    w_fq in grad_y's dtype (any strides), x_mask uint8 bits [M, ceil(K/8)] (contiguous rows).
    ``config`` tiles the linear's M, N, K (BLOCK_M, BLOCK_N, BLOCK_K) like every GEMM config of
    the project: here the output tile is [BLOCK_M, BLOCK_K] and BLOCK_N steps the reduction;
    ``TMA`` loads the operands through tensor descriptors where they allow it; ``CUBLAS`` runs
    ``torch.mm`` and then the mask pass (16-bit dtypes)."""
    return launch_backward(plan_dgrad(grad_y.dtype, config), grad_y, w_fq, x_mask)


def scale_grad_tiles(tiles: tuple, K: int, n_groups: int) -> tuple[int, tuple]:
    """(SG_GROUP, tiles) of wgrad's scale-gradient epilogue: ``tiles`` (:func:`tiles_of`, C's
    terms) with the column tile fitted to the weight's ``n_groups`` groups per row of K
    (:func:`scale_grad_layout`; SG_GROUP -1: no tile fits, tiles unchanged), then made small
    enough that a thread holds at most :data:`SCALE_GRAD_ACC` accumulator elements (the epilogue
    holds the weight tile, its codes and the products beside the fp32 accumulator): rows halved
    down to 64 (a warpgroup's wgmma rows), then columns while the groups still fit, then rows."""
    rows, cols, red, group_m, warps, stages = tiles
    sg_group, cols = scale_grad_layout(K, n_groups, cols)

    def over() -> bool:
        return rows * cols > SCALE_GRAD_ACC * 32 * warps

    if sg_group >= 0:
        while over() and rows > 64:
            rows //= 2
        while over() and cols > 16 and scale_grad_layout(K, n_groups, cols // 2)[1] == cols // 2:
            sg_group, cols = scale_grad_layout(K, n_groups, cols // 2)
        while over() and rows > 16:
            rows //= 2
    return sg_group, (rows, cols, red, group_m, warps, stages)


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
    kernel=None,
    mask_bits: bool = False,
):
    """grad_w [N, K] = (grad_y^T [N, M] @ x_fq [M, K]) * w_mask, in grad_y's dtype.

    x_fq [M, K] in grad_y's dtype, w_mask uint8 [N, K] (0/1, contiguous rows), or bits
    [N, ceil(K/8)] with ``mask_bits`` (no scale gradient). ``config`` tiles
    the linear's M, N, K: the output tile is [BLOCK_N, BLOCK_K] and BLOCK_M steps the reduction
    over tokens; ``CUBLAS`` runs ``torch.mm`` and then the mask pass (16-bit dtypes, no scale
    gradient). With ``weight`` [N, K] and its learned symmetric scales ``w_scale`` fp32 [N, G]
    (codes in [qmin, qmax]; always the Triton kernel, whose epilogue reduces it), returns (grad_w, grad_scale fp32 [N, G]): the scale gradient
    ``sum_{k in g} g_fq[n, k] * (q - w / s if in range else q)`` of the unmasked ``g_fq =
    grad_y^T @ x_fq``, reduced in the GEMM's epilogue (per-tile partial sums, added here)."""
    c = config
    tiles = tiles_of(c, "BLOCK_N", "BLOCK_K", "BLOCK_M")
    a, tma = grad_y.t(), bool(c.get("TMA"))
    if weight is None:
        plan = plan_wgrad(grad_y.dtype, c, mask_bits)
        return launch_backward(plan, a, x_fq, w_mask, kernel=kernel)
    if mask_bits:
        raise ValueError("mask_bits: the scale-gradient epilogue reads a byte mask")
    N, K = weight.shape
    G = w_scale.shape[1]
    sg_group, tiles = scale_grad_tiles(tiles, K, G)
    if sg_group < 0:  # no tile fits the groups: the unmasked gradient in fp32, reduced here
        g_fq = grad_y.to(torch.float32).t() @ x_fq.to(torch.float32)
        v = weight.to(torch.float32) * (1.0 / w_scale.to(torch.float32)).repeat_interleave(
            K // G, 1
        )
        q = torch.clamp(torch.round(v), qmin, qmax)
        t = torch.where(w_mask.bool(), q - v, q)
        grad_s = (g_fq * t).reshape(N, G, K // G).sum(-1)
        return (g_fq * w_mask).to(grad_y.dtype), grad_s
    n_tiles = cdiv(K, tiles[1])
    part = new_empty((N, G if sg_group else n_tiles), torch.float32, grad_y.device)
    grad_w = float_mm(a, x_fq, tiles=tiles, mask=w_mask, tma=tma, kernel=kernel,
                      scale_grad=(weight, w_scale, qmin, qmax, sg_group, part))  # fmt: skip
    if sg_group:
        return grad_w, part
    if G == 1:
        return grad_w, part.sum(1, keepdim=True)
    return grad_w, part.reshape(N, G, n_tiles // G).sum(-1)
