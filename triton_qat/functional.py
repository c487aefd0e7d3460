"""Functional API: input checks, reshaping to the ops' 2-D layouts, config -> op arguments."""

from __future__ import annotations

import torch
from torch import Tensor

from triton_qat import ops
from triton_qat.config import DEFAULT_ACTIVATION, DEFAULT_WEIGHT, QuantConfig
from triton_qat.kernels.quantize import check_float_input


def _rows_for(x: Tensor, config: QuantConfig) -> tuple[Tensor, int]:
    """2-D view of x whose rows carry the scales of ``config``, and the group size along them."""
    if x.dim() == 0:
        x = x.reshape(1, 1)
    if config.granularity == "per_channel":
        x2d = x.reshape(x.shape[0], -1)
        return x2d, x2d.shape[1]
    x2d = x.reshape(-1, x.shape[-1])
    K = x2d.shape[1]
    if config.granularity == "per_group":
        if K == 0 or K % config.group_size != 0:
            raise ValueError(
                f"group_size: expected a divisor of the last dim ({K}), got {config.group_size}"
            )
        return x2d, config.group_size
    return x2d, max(K, 1)


def fake_quantize(x: Tensor, config: QuantConfig) -> Tensor:
    """Differentiable fake quantization of any float tensor (NUMERICS.md family 1).

    Args:
        x: fp32 / fp16 / bf16 tensor of any shape. Rows are the last dim (per_token, per_group,
            per_tensor) or dim 0 (per_channel, rows = dim 0 with the rest flattened).
        config: a :class:`QuantConfig`.

    Returns:
        ``dequantize(quantize(x))`` in x's dtype and shape, bit-identical to the plain-torch
        reference. Gradient: straight-through, zero where the rounded value fell outside the code
        range.
    """
    check_float_input(x, "x")
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config: expected a triton_qat.QuantConfig, got {type(config).__name__}")
    x2d, group = _rows_for(x, config)
    if x2d.numel() == 0:
        return x * 1  # nothing to quantize; keeps autograd connected
    y, _ = ops.fake_quantize(
        x2d,
        config.qmin,
        config.qmax,
        group,
        config.symmetric,
        config.granularity == "per_tensor",
        None,
        None,
    )
    return y.reshape(x.shape)


def check_input(x: Tensor, in_features: int, device: torch.device) -> None:
    """TypeError / ValueError naming ``input`` unless it is a float tensor [..., in_features] on
    ``device``."""
    check_float_input(x, "input")
    if x.dim() < 1:
        raise ValueError("input: expected at least 1 dimension, got a 0-dim tensor")
    if x.shape[-1] != in_features:
        raise ValueError(
            f"input: expected last dim == in_features = {in_features}, got shape {tuple(x.shape)}"
        )
    if x.device != device:
        raise ValueError(f"input: expected device {device} (the weight's), got {x.device}")


# The int8 GEMM accumulates sum_k (q_x - zp) * q_w in int32: |.| <= 255 * 128 * K must fit.
MAX_IN_FEATURES = 65536


def check_in_features(k: int) -> None:
    if k > MAX_IN_FEATURES:
        raise ValueError(
            f"in_features: at most {MAX_IN_FEATURES} (the int8 GEMM's int32 accumulator), got {k}"
        )


def check_linear_inputs(x: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    """TypeError / ValueError naming the argument for anything the kernels cannot take."""
    check_float_input(weight, "weight")
    if weight.dim() != 2:
        raise ValueError(
            f"weight: expected 2 dims [out_features, in_features], got {tuple(weight.shape)}"
        )
    check_input(x, weight.shape[1], weight.device)
    check_in_features(weight.shape[1])
    if bias is not None:
        check_float_input(bias, "bias")
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"bias: expected shape ({weight.shape[0]},), got {tuple(bias.shape)}")
        if bias.device != weight.device:
            raise ValueError(
                f"bias: expected device {weight.device} (the weight's), got {bias.device}"
            )


def qat_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: QuantConfig = DEFAULT_ACTIVATION,
    weight_config: QuantConfig = DEFAULT_WEIGHT,
) -> Tensor:
    """``F.linear(fake_quantize(x, activation), fake_quantize(weight, weight_config), bias)``,
    fused: int8 GEMM forward, int8 state saved for the STE backward.

    Args:
        x: [..., K] fp32 / fp16 / bf16 (any strides). weight: [N, K]; bias: [N] or None, in any
            float dtype: the weight is fake-quantized in its own dtype (as torchao does before
            autocast casts the result), the output and gradients are in x's dtype.
        activation: per_token or per_tensor config. weight_config: symmetric per_channel,
            per_group or per_tensor config.
    Returns:
        [..., N] in x's dtype.
    """
    check_linear_inputs(x, weight, bias)
    activation.check_role("activation")
    weight_config.check_role("weight")
    K = weight.shape[1]
    w_group = weight_config.group_size_for(K)
    if K % w_group != 0:
        raise ValueError(f"group_size: expected a divisor of in_features={K}, got {w_group}")
    if not weight_config.symmetric:
        raise ValueError("weight_config: symmetric=False is not supported for weights")
    out = ops.qat_linear(
        x,
        weight,
        bias,
        activation.qmin,
        activation.qmax,
        activation.symmetric,
        activation.granularity == "per_tensor",
        None,
        None,
        weight_config.qmin,
        weight_config.qmax,
        w_group,
        weight_config.granularity == "per_tensor",
        None,
    )
    return out[0]


def ao_qat_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    a_range: tuple[int, int],
    a_scale: Tensor,
    a_zero_point: Tensor,
    w_range: tuple[int, int],
    w_scale: Tensor,
) -> Tensor:
    """The fused linear with torch.ao (family 2) qparams given: per-tensor activation
    scale/zero point ([1]), per-tensor ([1]) or per-channel ([N]) symmetric weight scale."""
    N = weight.shape[0]
    out = ops.qat_linear(
        x,
        weight,
        bias,
        a_range[0],
        a_range[1],
        False,
        False,
        a_scale.reshape(1, 1).to(torch.float32),
        a_zero_point.reshape(1, 1).to(torch.int32),
        w_range[0],
        w_range[1],
        weight.shape[1],
        False,
        w_scale.to(torch.float32).reshape(-1, 1).expand(N, 1),
    )
    return out[0]


def ao_fake_quantize(
    x: Tensor, q_range: tuple[int, int], scale: Tensor, zero_point: Tensor | None
) -> Tensor:
    """torch.ao fake quantization with given qparams (STE): per-tensor (scale [1]) over all of x,
    or per row of a 2-D x (scale [R, 1]); used when only one half of a torch.ao layer is on."""
    x2d = x.reshape(-1, x.shape[-1])
    scale = scale.to(torch.float32).reshape(-1, 1)
    zp = zero_point.to(torch.int32).reshape(-1, 1) if zero_point is not None else None
    y, _ = ops.fake_quantize(x2d, q_range[0], q_range[1], x2d.shape[1], False, False, scale, zp)
    return y.reshape(x.shape)
