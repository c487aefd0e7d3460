"""Plain-torch reference of the whole QAT linear (docs/numerics.md family 1): the contract stated
literally as torch ops in the input dtype, the ops torchao's QAT composes. It shares no code with
the kernels or their plain-torch twins (``kernels/*_torch.py``), so the tests that compare the two
compare independent implementations. perf/ and the demo use it as the baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from triton_qat.checks import check_group
from triton_qat.config import (
    DEFAULT_ACTIVATION,
    DEFAULT_WEIGHT,
    FLOAT8_MAX,
    Float8Config,
    QuantConfig,
)
from triton_qat.spec import rows_2d, spec_for


def qparams_ref(
    mn: Tensor, mx: Tensor, qmin: int, qmax: int, symmetric: bool, eps: float
) -> tuple[Tensor, Tensor]:
    """Family-1 (fp32 scale, int32 zero point) from a group's min and max, in their dtype; a NaN
    zero point is cast by torch on the tensor's device."""
    zero = torch.zeros((), dtype=mn.dtype, device=mn.device)
    mn, mx = torch.minimum(mn, zero), torch.maximum(mx, zero)
    if symmetric:
        s = torch.clamp(torch.maximum(-mn, mx) / ((qmax - qmin) / 2), min=eps)
        zp = torch.zeros(s.shape, dtype=torch.int32, device=s.device)
    else:
        s = torch.clamp((mx - mn) / float(qmax - qmin), min=eps)
        zp = torch.clamp(qmin - torch.round(mn / s), qmin, qmax).to(torch.int32)
    return s.to(torch.float32), zp


def asym_weight_qparams_ref(mn: Tensor, mx: Tensor, qmin: int, qmax: int) -> tuple[Tensor, Tensor]:
    """torchao's asymmetric weight qparams (``get_groupwise_affine_qparams``, 0.18) from a group's
    min and max, in their dtype: the range is the group's own (0 not included), eps 1e-6, a
    float-domain zero point ``mn + s * 2**(bits-1)`` (the midpoint of the unsigned range) cast to
    int32 by truncation, used as an integer-domain zero point with the signed code range."""
    s = torch.clamp((mx - mn) / float(qmax - qmin), min=1e-6)
    zp_float = mn + s * ((qmax - qmin + 1) / 2)
    return s.to(torch.float32), zp_float.to(torch.float32).to(torch.int32)


def fake_quant_ref(
    x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Codes (fp32 holding integers), mask and fake-quantized values of x with given qparams
    (broadcastable, scale fp32, zero_point int32): the same for both families."""
    qu = torch.round(x.to(torch.float32) * (1.0 / scale)) + zero_point
    q = torch.clamp(qu, qmin, qmax)
    mask = (qu >= qmin) & (qu <= qmax)
    y = ((q.to(x.dtype) - zero_point.to(x.dtype)) * scale).to(x.dtype)
    return q, mask, y


def qparams_for(x2d: Tensor, config: QuantConfig) -> tuple[Tensor, Tensor]:
    """Family-1 (scale, zero point) of x2d [R, C] per (row, group), [R, G] (per_tensor: [1, 1])."""
    spec = spec_for(config)
    eps = torch.finfo(x2d.dtype).smallest_normal
    qmin, qmax, sym = spec.qmin, spec.qmax, spec.symmetric
    if spec.per_tensor:
        s, zp = qparams_ref(x2d.amin(), x2d.amax(), qmin, qmax, sym, eps)
        return s.reshape(1, 1), zp.reshape(1, 1)
    R, C = x2d.shape
    group = spec.group_for(C)
    xg = x2d.reshape(R, C // group, group)
    if spec.asym_weight:
        return asym_weight_qparams_ref(xg.amin(-1), xg.amax(-1), qmin, qmax)
    return qparams_ref(xg.amin(-1), xg.amax(-1), qmin, qmax, sym, eps)  # amin/amax keep NaN


def fake_quantize_with_mask(x: Tensor, config: QuantConfig) -> tuple[Tensor, Tensor]:
    """(y, keep-mask) of x under ``config``; rows as in :func:`triton_qat.fake_quantize`. A
    ``group_size`` must divide the rows (ValueError, as the functional API says); a zero-size x has
    nothing to quantize: y is a copy of it and the mask keeps everything."""
    spec = spec_for(config)
    x2d = rows_2d(x, spec)
    if spec.group_size is not None:
        check_group(spec.group_size, x2d.shape[1], "group_size")
    if x.numel() == 0:
        return x.clone(), torch.ones_like(x, dtype=torch.bool)
    R, C = x2d.shape
    s, zp = qparams_for(x2d, config)
    G = s.shape[1]
    xg = x2d.reshape(R, G, C // G)
    _, mask, y = fake_quant_ref(
        xg, s.expand(R, G)[..., None], zp.expand(R, G)[..., None], config.qmin, config.qmax
    )
    return y.reshape(x.shape), mask.reshape(x.shape)


class _STE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, config: QuantConfig) -> Tensor:
        y, mask = fake_quantize_with_mask(x, config)
        ctx.save_for_backward(mask)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        (mask,) = ctx.saved_tensors
        # masked elements exactly +0.0, NaN too (torch's clamp backward selects the same way)
        return torch.where(mask, grad, 0.0), None


def fake_quantize_ref(x: Tensor, config: QuantConfig) -> Tensor:
    """Differentiable (STE) fake quantization, plain torch: what :func:`triton_qat.fake_quantize`
    must equal bit for bit."""
    return _STE.apply(x, config)


def qat_linear_ref(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: QuantConfig = DEFAULT_ACTIVATION,
    weight_config: QuantConfig = DEFAULT_WEIGHT,
) -> Tensor:
    """``F.linear(fake_quantize(x), fake_quantize(weight), bias)`` in plain torch (STE autograd);
    ``activation=None``: weight-only, ``F.linear(x, fake_quantize(weight), bias)``."""
    x_fq = x if activation is None else fake_quantize_ref(x, activation)
    return F.linear(x_fq, fake_quantize_ref(weight, weight_config), bias)


class ReferenceLinear(torch.nn.Linear):
    """nn.Linear running :func:`qat_linear_ref`: the plain-torch QAT baseline (torchao-style)."""

    def __init__(self, *args, activation=DEFAULT_ACTIVATION, weight=DEFAULT_WEIGHT, **kwargs):
        super().__init__(*args, **kwargs)
        self.activation_config = activation
        self.weight_config = weight

    def forward(self, x: Tensor) -> Tensor:
        return qat_linear_ref(
            x,
            self.weight.to(x.dtype),
            None if self.bias is None else self.bias.to(x.dtype),
            self.activation_config,
            self.weight_config,
        )


def prepare_reference(
    model: torch.nn.Module,
    activation: QuantConfig = DEFAULT_ACTIVATION,
    weight: QuantConfig = DEFAULT_WEIGHT,
    filter_fn=None,
) -> torch.nn.Module:
    """Swap every ``nn.Linear`` for a :class:`ReferenceLinear` sharing its parameters, in place:
    the plain-torch QAT baseline perf/ compares against."""
    for fqn, mod in list(model.named_modules()):
        if type(mod) is not torch.nn.Linear or (filter_fn is not None and not filter_fn(mod, fqn)):
            continue
        new = ReferenceLinear(
            mod.in_features,
            mod.out_features,
            mod.bias is not None,
            device="meta",
            activation=activation,
            weight=weight,
        )
        new.weight, new.bias = mod.weight, mod.bias
        parent_name, _, child = fqn.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return model


# -- float8 (e4m3) -------------------------------------------------------------------------------


def float8_fake_quantize_ref(x: Tensor, config: Float8Config) -> Tensor:
    """torchao's ``Float8FakeQuantizer`` (0.18) as plain torch ops, differentiable through torch's
    own autograd, which is how torchao's gradient arises (docs/numerics.md "Float8"): not a
    straight-through estimate but the STE of the fp8 rounding alone, so that the gradient also
    flows through the scale into the row's max |x|, and the STE gradient is itself rounded to
    e4m3 (the backward of ``q.to(float32)`` casts it to the fp8 dtype).

    Rows are the last dim ("per_row") or all of x ("per_tensor"). The scale is
    ``clamp(amax(|x|), lb, ub) / 448`` in x's dtype, then fp32; values ``x.float() / scale``
    clamped to +-448, rounded to e4m3 (nearest even), times the scale, cast to x's dtype."""
    if x.numel() == 0:
        return x * 1
    dims = tuple(range(x.dim())) if config.per_tensor else (-1,)
    max_abs = x.abs().amax(dim=dims, keepdim=True)
    if config.hp_value_lb is not None or config.hp_value_ub is not None:
        max_abs = torch.clamp(max_abs, min=config.hp_value_lb, max=config.hp_value_ub)
    scale = (max_abs / FLOAT8_MAX).to(torch.float32)
    t = torch.clamp(x.to(torch.float32) / scale, min=-FLOAT8_MAX, max=FLOAT8_MAX)
    q = _Float8RoundSTE.apply(t)
    return (q.to(torch.float32) * scale).to(x.dtype)


def float8_scale_ref(x: Tensor, config: Float8Config) -> Tensor:
    """The fp32 scale of :func:`float8_fake_quantize_ref`: [R, 1] per row of x's 2-D row view
    [R, K] (K = the last dim), [1, 1] per tensor."""
    x2d = x.detach().reshape(-1, x.shape[-1]) if x.dim() else x.detach().reshape(1, 1)
    dims = (0, 1) if config.per_tensor else (1,)
    max_abs = x2d.abs().amax(dim=dims, keepdim=True)
    if config.hp_value_lb is not None or config.hp_value_ub is not None:
        max_abs = torch.clamp(max_abs, min=config.hp_value_lb, max=config.hp_value_ub)
    return (max_abs / FLOAT8_MAX).to(torch.float32)


class _Float8RoundSTE(torch.autograd.Function):
    """``t.to(float8_e4m3fn)`` with its gradient passed through (torchao's ``_RoundToFloat8``)."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        return t.to(torch.float8_e4m3fn)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad


def float8_linear_ref(
    x: Tensor, weight: Tensor, bias: Tensor | None, activation, weight_config: Float8Config
) -> Tensor:
    """torchao's ``FakeQuantizedLinear`` with float8 configs: ``F.linear(fq(x), fq(w), bias)``
    (``activation=None``: weight-only)."""
    x_fq = x if activation is None else float8_fake_quantize_ref(x, activation)
    return F.linear(x_fq, float8_fake_quantize_ref(weight, weight_config), bias)
