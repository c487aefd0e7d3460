"""Plain-torch reference of the whole QAT linear (NUMERICS.md family 1), the ops torchao's QAT
composes. Tests compare the kernels against it; perf/ and the demo use it as the baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from triton_qat.config import DEFAULT_ACTIVATION, DEFAULT_WEIGHT, QuantConfig
from triton_qat.kernels.quantize import eps_for, fake_quant_ref, group_qparams_ref, qparams_ref


def qparams_for(x2d: Tensor, config: QuantConfig, group_size: int) -> tuple[Tensor, Tensor]:
    """Family-1 (scale fp32, zero point int32) of x2d [R, C] per (row, group), shape [R, G]
    (per_tensor: [1, 1])."""
    if config.granularity == "per_tensor":
        s, zp = qparams_ref(
            x2d.amin(), x2d.amax(), config.qmin, config.qmax, config.symmetric, eps_for(x2d.dtype)
        )
        return s.reshape(1, 1), zp.reshape(1, 1)
    return group_qparams_ref(x2d, config.qmin, config.qmax, group_size, config.symmetric)


def fake_quantize_with_mask(x: Tensor, config: QuantConfig) -> tuple[Tensor, Tensor]:
    """(y, keep-mask) of x under ``config``; rows as in :func:`triton_qat.fake_quantize`."""
    if config.granularity == "per_channel":
        x2d = x.reshape(x.shape[0], -1)
        group = x2d.shape[1]
    else:
        x2d = x.reshape(-1, x.shape[-1])
        group = config.group_size if config.granularity == "per_group" else x2d.shape[1]
    R, C = x2d.shape
    s, zp = qparams_for(x2d, config, group)
    G = C // group
    xg = x2d.reshape(R, G, group)
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
        return grad * mask, None


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
    """``F.linear(fake_quantize(x), fake_quantize(weight), bias)`` in plain torch (STE autograd)."""
    return F.linear(
        fake_quantize_ref(x, activation), fake_quantize_ref(weight, weight_config), bias
    )


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
    the plain-torch QAT baseline the demo and perf/ compare against."""
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
