"""Plain-torch twin of :mod:`.gemm_backward` (the CPU backend without the interpreter)."""

from __future__ import annotations

import torch

from .quantize_torch import unpack_bits


def dgrad_torch(grad_y: torch.Tensor, w_fq: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
    """Twin of :func:`.gemm_backward.dgrad`."""
    dx = grad_y.to(torch.float32) @ w_fq.to(torch.float32)
    # masked elements exactly +0.0, NaN and -0.0 too (the kernels' select, not a product)
    return torch.where(unpack_bits(x_mask, w_fq.shape[1]), dx, 0.0).to(grad_y.dtype)


def wgrad_torch(
    grad_y: torch.Tensor,
    x_fq: torch.Tensor,
    w_mask: torch.Tensor,
    weight: torch.Tensor | None = None,
    w_scale: torch.Tensor | None = None,
    qmin: int = -128,
    qmax: int = 127,
    mask_bits: bool = False,
):
    """Twin of :func:`.gemm_backward.wgrad` (with ``weight`` and ``w_scale``: also the scale
    gradient; ``mask_bits``: w_mask holds bits [N, ceil(K/8)])."""
    dw = grad_y.to(torch.float32).T @ x_fq.to(torch.float32)
    keep = unpack_bits(w_mask, x_fq.shape[1]) if mask_bits else w_mask.to(torch.bool)
    grad_w = torch.where(keep, dw, 0.0).to(grad_y.dtype)
    if weight is None:
        return grad_w
    N, K = weight.shape
    G = w_scale.shape[1]
    inv = (1.0 / w_scale.to(torch.float32)).repeat_interleave(K // G, 1)
    v = weight.to(torch.float32) * inv
    q = torch.clamp(torch.round(v), qmin, qmax)
    t = torch.where(keep, q - v, q)
    return grad_w, (dw * t).reshape(N, G, K // G).sum(-1)
