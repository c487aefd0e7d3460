"""Plain-torch twin of :mod:`.gemm_backward` (the CPU backend without the interpreter)."""

from __future__ import annotations

import torch

from .gemm_int8_torch import dequantize_torch
from .quantize_torch import unpack_bits


def dgrad_torch(
    grad_y: torch.Tensor, w_codes: torch.Tensor, w_scale: torch.Tensor, x_mask: torch.Tensor
) -> torch.Tensor:
    """Twin of :func:`.gemm_backward.dgrad`."""
    dt = grad_y.dtype
    w_fq = dequantize_torch(w_codes, w_scale, None).to(dt)
    dx = grad_y.to(torch.float32) @ w_fq.to(torch.float32)
    return (dx * unpack_bits(x_mask, w_codes.shape[1])).to(dt)


def wgrad_torch(
    grad_y: torch.Tensor,
    x_codes: torch.Tensor,
    x_scale: torch.Tensor,
    x_zero_point: torch.Tensor,
    w_mask: torch.Tensor,
    with_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Twin of :func:`.gemm_backward.wgrad`."""
    dt = grad_y.dtype
    x_fq = dequantize_torch(x_codes, x_scale, x_zero_point).to(dt)
    dw = (grad_y.to(torch.float32).T @ x_fq.to(torch.float32)) * w_mask.to(torch.bool)
    db = grad_y.to(torch.float32).sum(0).to(dt) if with_bias else None
    return dw.to(dt), db
