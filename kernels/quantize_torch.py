"""Plain-torch twin of :mod:`.quantize`: the same outputs, layouts and bits as the kernel.

It is the CPU backend when Triton's interpreter is off (``triton_qat.dispatch``), and the tests hold
it bit-identical to the kernel. It is written independently of the test reference
(``triton_qat.reference``), which states docs/numerics.md literally.
"""

from __future__ import annotations

import torch

from .quantize import ASYM_WEIGHT_EPS, Quantized, code_offset, eps_for


def qparams_torch(
    mn: torch.Tensor, mx: torch.Tensor, qmin: int, qmax: int, symmetric: bool, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Family-1 qparams from a group's min and max, computed in their dtype.

    Returns (fp32 scale, int32 zero point) of mn's shape. A NaN zero point (min -inf) is cast
    with torch's cast on the tensor's device, as the references do.
    """
    zero = torch.zeros((), dtype=mn.dtype, device=mn.device)
    mn = torch.minimum(mn, zero)
    mx = torch.maximum(mx, zero)
    if symmetric:
        s = torch.clamp(torch.maximum(-mn, mx) / ((qmax - qmin) / 2), min=eps)
        zp = torch.zeros(s.shape, dtype=torch.int32, device=s.device)
    else:
        s = torch.clamp((mx - mn) / float(qmax - qmin), min=eps)
        zp = torch.clamp(qmin - torch.round(mn / s), qmin, qmax).to(torch.int32)
    return s.to(torch.float32), zp


def asym_weight_qparams_torch(
    mn: torch.Tensor, mx: torch.Tensor, qmin: int, qmax: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """torchao's asymmetric weight qparams from a group's own min and max (zero not included), in
    their dtype: (fp32 scale, int32 zero point = the float-domain zero point truncated)."""
    s = torch.clamp((mx - mn) / float(qmax - qmin), min=ASYM_WEIGHT_EPS)
    zp = (mn + s * ((qmax - qmin + 1) // 2)).to(torch.float32).to(torch.int32)
    return s.to(torch.float32), zp


def per_tensor_qparams(
    x: torch.Tensor, qmin: int, qmax: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Family-1 per-tensor qparams of x (in x's dtype): [1, 1] fp32 scale, [1, 1] int32 zp."""
    if x.numel() == 0:
        one = torch.ones((1, 1), dtype=torch.float32, device=x.device)
        return one, torch.zeros((1, 1), dtype=torch.int32, device=x.device)
    s, zp = qparams_torch(x.amin(), x.amax(), qmin, qmax, symmetric, eps_for(x.dtype))
    return s.reshape(1, 1), zp.reshape(1, 1)


def quantize_rows_torch(
    x: torch.Tensor,
    qmin: int,
    qmax: int,
    group_size: int,
    symmetric: bool,
    *,
    pack_mask: bool,
    scale: torch.Tensor | None = None,
    zero_point: torch.Tensor | None = None,
    with_y: bool = False,
    asym_weight: bool = False,
    sum_group: int | None = None,
) -> Quantized:
    """Plain-torch twin of :func:`.quantize.quantize_rows` (same arguments but ``config``)."""
    R, C = x.shape
    n_groups = C // group_size
    offset = code_offset(qmin, qmax)
    xg = x.reshape(R, n_groups, group_size)
    if scale is None:
        if R * C == 0:
            s = torch.ones((R, n_groups), dtype=torch.float32, device=x.device)
            zp = torch.zeros((R, n_groups), dtype=torch.int32, device=x.device)
        elif asym_weight and not symmetric:
            s, zp = asym_weight_qparams_torch(xg.amin(-1), xg.amax(-1), qmin, qmax)
        else:  # torch.amin / amax propagate NaN, as the contract needs
            s, zp = qparams_torch(xg.amin(-1), xg.amax(-1), qmin, qmax, symmetric, eps_for(x.dtype))
    else:
        s = scale.to(torch.float32).expand(R, n_groups).clone()
        zp0 = zero_point if zero_point is not None else torch.zeros((), dtype=torch.int32)
        zp = zp0.to(device=x.device, dtype=torch.int32).expand(R, n_groups).clone()
    s3, zp3 = s[..., None], zp[..., None]
    qu = torch.round(xg.to(torch.float32) * (1.0 / s3)) + zp3
    q = torch.clamp(qu, qmin, qmax)
    keep = ((qu >= qmin) & (qu <= qmax)).reshape(R, C)
    q_int = torch.nan_to_num(q, nan=0.0)  # codes of NaN inputs are unspecified; keep them defined
    codes = (q_int.to(torch.int32) + offset).reshape(R, C)
    sum_group = group_size if sum_group is None else sum_group
    code_sum = codes.reshape(R, C // sum_group, sum_group).sum(-1, dtype=torch.int32)
    mask = pack_bits(keep) if pack_mask else keep.to(torch.uint8)
    y = None
    if with_y:
        y = unaliased(((q.to(x.dtype) - zp3.to(x.dtype)) * s3).to(x.dtype).reshape(R, C))
    return Quantized(codes.to(torch.int8), s, zp + offset, mask, code_sum, y)


def unaliased(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a copy where it is a view of another tensor: what a twin returns is an op's
    output, which must be a tensor of its own (autograd refuses in-place writes to a view made
    inside a custom op, so ``y.mul_(2)`` on a fake-quantized ``y`` would fail)."""
    return t if t._base is None else t.clone()


def pack_bits(keep: torch.Tensor) -> torch.Tensor:
    """bool [R, C] -> uint8 [R, ceil(C/8)], element c in bit c % 8 of byte c // 8."""
    R, C = keep.shape
    pad = (-C) % 8
    bits = torch.nn.functional.pad(keep.to(torch.uint8), (0, pad)).reshape(R, (C + pad) // 8, 8)
    bits = bits.to(torch.int32)
    weights = 1 << torch.arange(8, device=keep.device, dtype=torch.int32)
    return (bits * weights).sum(-1).to(torch.uint8)


def unpack_bits(mask: torch.Tensor, C: int) -> torch.Tensor:
    """uint8 [R, ceil(C/8)] -> bool [R, C]; inverse of :func:`pack_bits`."""
    shifts = torch.arange(8, device=mask.device, dtype=torch.int32)
    bits = (mask.to(torch.int32)[..., None] >> shifts) & 1
    return bits.reshape(mask.shape[0], mask.shape[1] * 8)[:, :C].to(torch.bool)
