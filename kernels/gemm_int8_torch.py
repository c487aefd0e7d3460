"""Plain-torch twin of :mod:`.gemm_int8` (the CPU backend without the interpreter; the tests hold
it to the same fp64 bounds as the kernel)."""

from __future__ import annotations

import torch

from ._common import weight_narrower


def _groups(qparam: torch.Tensor) -> int:
    """Groups per row of a qparam given as [R], [R, 1] or [R, G]."""
    return qparam.shape[1] if qparam.dim() == 2 else 1


def dequantize_torch(
    codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None
) -> torch.Tensor:
    """fp32 ``(codes - zero_point) * scale`` of codes [R, C] with scale [R, G] (or [R]) per
    (row, group) and zero_point [R] / [R, 1] / [R, G] or None."""
    R, C = codes.shape
    n_groups = _groups(scale)
    scale = scale.reshape(R, n_groups)  # (not -1: R may be 0)
    q = codes.to(torch.float32).reshape(R, n_groups, C // n_groups)
    if zero_point is not None:
        q = q - zero_point.reshape(R, _groups(zero_point), 1).to(torch.float32)
    return (q * scale[..., None]).reshape(R, C)


def int8_linear_torch(
    x_codes: torch.Tensor,
    x_scale: torch.Tensor,
    x_zero_point: torch.Tensor,
    w_codes: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    w_zero_point: torch.Tensor | None = None,
    w_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Twin of :func:`.gemm_int8.int8_linear`: fp32 math on the dequantized codes; a token whose
    scale is non-finite gives a NaN row, as in the kernel. A weight of a ``w_dtype`` with fewer
    mantissa bits than ``out_dtype`` (the kernels' dequantized path): x_fq in ``out_dtype``,
    w_fq in ``w_dtype``, as the kernels form them."""
    x = dequantize_torch(x_codes, x_scale, x_zero_point)
    w = dequantize_torch(w_codes, w_scale, w_zero_point)
    if weight_narrower(w_dtype, out_dtype):
        x, w = x.to(out_dtype).float(), w.to(w_dtype).float()
    out = x @ w.T
    finite_row = torch.isfinite(x_scale.reshape(-1, 1).to(torch.float32))
    out = torch.where(finite_row, out, float("nan"))
    if bias is not None:
        out = out + bias.to(torch.float32)
    return out.to(out_dtype)
