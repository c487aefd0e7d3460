"""Plain-torch twin of kernels/quantize_float8.py (the ``"torch"`` backend): the float8 fake
quantization and its backward (the twin of ``_f8_backward_kernel``).

``x2d`` is [R, K] (rows = the last dim of the caller's tensor) in fp32 / fp16 / bf16; per-tensor
scales are [1, 1], per-row [R, 1], fp32. Bounds ``lb`` / ``ub`` are torchao's ``hp_value_lb`` /
``hp_value_ub`` (None: none). Like everything in ``kernels/``, this imports nothing from
``triton_qat``.
"""

from __future__ import annotations

import torch

F8 = torch.float8_e4m3fn
F8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max


def _max_abs(x2d: torch.Tensor, per_tensor: bool, lb, ub) -> torch.Tensor:
    dims = (0, 1) if per_tensor else (1,)
    m = x2d.abs().amax(dim=dims, keepdim=True)  # in x's dtype: exact, NaN kept
    if lb is not None or ub is not None:
        m = torch.clamp(m, min=lb, max=ub)  # the bounds round to x's dtype first (as torch does)
    return m


def float8_fake_quantize_torch(
    x2d: torch.Tensor, per_tensor: bool, lb: float | None, ub: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y [R, K] in x's dtype, scale fp32 [R, 1] / [1, 1]): e4m3 fake quantization."""
    scale = (_max_abs(x2d, per_tensor, lb, ub) / F8_MAX).to(torch.float32)
    t = torch.clamp(x2d.to(torch.float32) / scale, -F8_MAX, F8_MAX)
    y = (t.to(F8).to(torch.float32) * scale).to(x2d.dtype)
    return y, scale


def float8_fake_quantize_backward_torch(
    grad: torch.Tensor,
    x2d: torch.Tensor,
    scale: torch.Tensor,
    per_tensor: bool,
    lb: float | None,
    ub: float | None,
) -> torch.Tensor:
    """grad_x [R, K] in x's dtype: what torch's autograd gives for torchao's op sequence
    (docs/numerics.md "Float8", backward), each step the derivative formula torch uses:

    * direct: ``(fp8(g * s) * [|x / s| <= 448]) / s``, the STE of the fp8 rounding, whose
      incoming gradient the backward of ``q.to(float32)`` rounds to e4m3 (saturating);
    * through the scale: ``ds = sum(g * q) - sum(gt * (x / s) / s)`` per row (tensor), cast to
      x's dtype, ``/ 448``, zeroed where the bounds clamped max |x|, shared equally by the
      elements whose |x| equals the max, times ``sign(x)``."""
    dims = (0, 1) if per_tensor else (1,)
    dt = x2d.dtype
    g32 = grad.to(torch.float32)
    xf = x2d.to(torch.float32)
    t = xf / scale
    tc = torch.clamp(t, -F8_MAX, F8_MAX)
    q32 = tc.to(F8).to(torch.float32)
    gt = (g32 * scale).to(F8).to(torch.float32)  # ToCopy backward of q.to(fp32), STE through fp8
    gt = torch.where((t >= -F8_MAX) & (t <= F8_MAX), gt, torch.zeros((), dtype=gt.dtype))
    g_direct = (gt / scale).to(dt)
    g_scale = (g32 * q32).sum(dims, keepdim=True) + (-gt * ((xf / scale) / scale)).sum(
        dims, keepdim=True
    )
    g_m = g_scale.to(dt) / F8_MAX
    m = x2d.abs().amax(dim=dims, keepdim=True)
    if lb is not None or ub is not None:
        keep = torch.ones_like(m, dtype=torch.bool)
        if lb is not None:
            keep &= m >= lb
        if ub is not None:
            keep &= m <= ub
        g_m = torch.where(keep, g_m, torch.zeros((), dtype=dt))
    at_max = x2d.abs() == m
    g_abs = (g_m / at_max.sum(dims, keepdim=True)) * at_max
    return g_direct + g_abs * x2d.sgn()
