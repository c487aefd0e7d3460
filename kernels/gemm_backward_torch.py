"""Plain-torch twin of :mod:`.gemm_backward` (the CPU backend without the interpreter)."""

from __future__ import annotations

import torch

from .quantize_torch import unpack_bits


def dgrad_torch(grad_y: torch.Tensor, w_fq: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
    """Twin of :func:`.gemm_backward.dgrad`."""
    dx = grad_y.to(torch.float32) @ w_fq.to(torch.float32)
    return (dx * unpack_bits(x_mask, w_fq.shape[1])).to(grad_y.dtype)


def wgrad_torch(grad_y: torch.Tensor, x_fq: torch.Tensor, w_mask: torch.Tensor) -> torch.Tensor:
    """Twin of :func:`.gemm_backward.wgrad`."""
    dw = grad_y.to(torch.float32).T @ x_fq.to(torch.float32)
    return (dw * w_mask.to(torch.bool)).to(grad_y.dtype)


def dequantize_rows_torch(
    codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """Twin of :func:`.gemm_backward.dequantize_rows`."""
    q = codes.to(torch.int32) - zero_point.reshape(-1, 1).to(torch.int32)
    return (q.to(torch.float32) * scale.reshape(-1, 1).to(torch.float32)).to(dtype)
