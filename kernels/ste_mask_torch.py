"""Plain-torch twin of :mod:`.ste_mask` (the CPU backend without the interpreter)."""

from __future__ import annotations

import torch

from .quantize_torch import unpack_bits


def zero_masked_torch(c: torch.Tensor, mask: torch.Tensor, *, bits: bool) -> torch.Tensor:
    """Twin of :func:`.ste_mask.zero_masked`: ``c`` [M, N] with the elements whose mask bit
    (``bits``: uint8 [M, ceil(N/8)]) or byte (0/1 uint8 [M, N]) is 0 set to +0.0, in place."""
    keep = unpack_bits(mask, c.shape[1]) if bits else mask.to(torch.bool)
    return c.masked_fill_(~keep, 0.0)
