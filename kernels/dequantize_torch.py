"""Plain-torch twin of :mod:`.dequantize` (the CPU backend without the interpreter)."""

from __future__ import annotations

import torch


def _per_column(t: torch.Tensor, R: int, C: int) -> torch.Tensor:
    """A qparam given per row ([R], [R, 1]) or per group ([R, G]) repeated to [R, C]."""
    t = t.reshape(R, t.shape[1] if t.dim() == 2 else 1)  # (not -1: R may be 0)
    return t.repeat_interleave(C // t.shape[1], 1)


def dequantize_rows_torch(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    dtype: torch.dtype,
    asym_weight: bool = False,
    code_offset: int = 0,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Twin of :func:`.dequantize.dequantize_rows`."""
    R, C = codes.shape
    out_dtype = out_dtype or dtype
    if R == 0 or C == 0:
        return torch.empty((R, C), dtype=out_dtype, device=codes.device)
    s = _per_column(scale.to(torch.float32), R, C)
    zp = 0 if zero_point is None else _per_column(zero_point.to(torch.int32), R, C)
    if asym_weight:  # torchao's dt(dt(q) - dt(zp)) * scale
        q = (codes.to(torch.int32) - code_offset).to(dtype)
        y = (q - (zp - code_offset).to(dtype)).to(torch.float32) * s
    else:
        y = (codes.to(torch.int32) - zp).to(torch.float32) * s
    return torch.where(torch.isfinite(s), y, torch.nan).to(dtype).to(out_dtype)
