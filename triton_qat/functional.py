"""Functional API: input checks, the 2-D layouts the ops take, and specs -> op keyword arguments."""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from triton_qat import calls as _ops  # the ops, skipping the dispatcher in plain eager code
from triton_qat.checks import (
    check_float_input,
    check_group,
    check_linear_inputs,
    check_no_grad_transform,
)
from triton_qat.config import (
    DEFAULT_ACTIVATION,
    DEFAULT_WEIGHT,
    FLOAT8_FAMILY,
    NOT_QUANTIZED,
    Float8Config,
    MXConfig,
    NVFP4Config,
    QuantConfig,
)
from triton_qat.dispatch import activation_sum_group
from triton_qat.fused import FusedLinear
from triton_qat.mx import check_mx_configs, mx_fake_quantize, mx_linear
from triton_qat.spec import QuantSpec, ao_spec, rows_2d, spec_for


def fake_quantize(x: Tensor, config: QuantConfig | Float8Config | MXConfig | NVFP4Config) -> Tensor:
    """Differentiable fake quantization of any float tensor (docs/numerics.md, family 1).

    Args:
        x: fp32 / fp16 / bf16 tensor of any shape. Rows are the last dim (per_token, per_group,
            per_tensor) or dim 0 (per_channel, rows = dim 0 with the rest flattened).
        config: a :class:`QuantConfig`, a :class:`Float8Config` (e4m3, torchao's
            ``Float8FakeQuantizer``: :func:`triton_qat.float8.float8_fake_quantize`), a
            :class:`Float8Int4WeightConfig` (a weight [N, K]: torchao's
            ``Int4WeightFakeQuantizer`` for float8 activations), or an :class:`MXConfig` /
            :class:`NVFP4Config` (torchao's MX / NVFP4 fake quantization, fp32 / bf16 only,
            gradient straight through: :func:`triton_qat.mx.mx_fake_quantize`).

    Returns:
        ``dequantize(quantize(x))`` in x's dtype and shape, bit-identical to the plain-torch
        reference. Gradient: straight-through, zero where the rounded value fell outside the code
        range.
    """
    if isinstance(config, FLOAT8_FAMILY):
        from triton_qat.float8 import weight_fake_quantize

        return weight_fake_quantize(x, config)
    if isinstance(config, (MXConfig, NVFP4Config)):
        return mx_fake_quantize(x, config)
    check_float_input(x, "x")
    if not isinstance(config, QuantConfig):
        raise TypeError(
            "config: expected a triton_qat.QuantConfig, Float8Config, MXConfig or NVFP4Config, "
            f"got {type(config).__name__}"
        )
    spec = spec_for(config)
    x2d = rows_2d(x, spec)
    if spec.group_size is not None:
        check_group(spec.group_size, x2d.shape[1], "group_size")
    if x2d.numel() == 0:
        return x * 1  # nothing to quantize; keeps autograd connected
    check_no_grad_transform("triton_qat.fake_quantize", x)
    y, _ = _ops.fake_quantize(x2d, **spec.quantize_args(x2d.shape[1]), scale=None, zero_point=None)
    return y.reshape(x.shape)


def qat_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: QuantConfig | None = DEFAULT_ACTIVATION,
    weight_config: QuantConfig = DEFAULT_WEIGHT,
) -> Tensor:
    """``F.linear(fake_quantize(x, activation), fake_quantize(weight, weight_config), bias)``,
    fused: int8 GEMM forward, int8 state saved for the STE backward.

    Args:
        x: [..., K] fp32 / fp16 / bf16 (any strides). weight: [N, K]; bias: [N] or None, in any
            float dtype: the weight is fake-quantized in its own dtype (as torchao does before
            autocast casts the result), the output and gradients are in x's dtype.
        activation: per_token or per_tensor config; ``None`` (or ``NOT_QUANTIZED``): weight-only
            QAT, a float GEMM on the fake-quantized weight. weight_config: per_channel or
            per_group (symmetric or not), or symmetric per_tensor config.
    Returns:
        [..., N] in x's dtype.
    """
    check_linear_inputs(x, weight, bias)
    activation = NOT_QUANTIZED if activation is None else activation
    check_configs(activation, weight_config, weight.shape[1])
    if isinstance(weight_config, FLOAT8_FAMILY):  # triton_qat.float8's linear
        from triton_qat.float8 import float8_linear

        return float8_linear(x, weight, bias, activation, weight_config)
    if isinstance(weight_config, (MXConfig, NVFP4Config)):  # the GEMM on dequantized values
        return mx_linear(x, weight, bias, activation, weight_config)
    a_spec = None if activation is NOT_QUANTIZED else spec_for(activation)
    return _shared_fused_linear(a_spec, spec_for(weight_config))(x, weight, bias)


_CONFIG_KINDS = {
    "activation": "QuantConfig, Float8Config, MXConfig, NVFP4Config or NOT_QUANTIZED",
    "weight": "QuantConfig, Float8Config, Float8Int4WeightConfig, MXConfig or NVFP4Config",
}


def check_configs(activation: object, weight: object, in_features: int) -> None:
    """TypeError / ValueError naming the argument unless both configs fit a linear
    (``activation`` may be ``NOT_QUANTIZED``: weight-only)."""
    if isinstance(weight, FLOAT8_FAMILY) or isinstance(activation, FLOAT8_FAMILY):
        from triton_qat.float8 import check_float8_configs

        return check_float8_configs(activation, weight, in_features)
    if isinstance(weight, (MXConfig, NVFP4Config)) or isinstance(
        activation, (MXConfig, NVFP4Config)
    ):
        return check_mx_configs(activation, weight, in_features)
    roles = [("weight", weight)]
    if activation is not NOT_QUANTIZED:
        roles.insert(0, ("activation", activation))
    for role, cfg in roles:
        if not isinstance(cfg, QuantConfig):
            kinds = _CONFIG_KINDS[role]
            raise TypeError(f"{role}: expected a triton_qat.{kinds}, got {type(cfg).__name__}")
        cfg.check_role(role)
    if not weight.symmetric and weight.granularity == "per_tensor":
        raise ValueError(
            "weight: symmetric=False needs granularity 'per_channel' or 'per_group' (torchao's "
            "asymmetric weights); per_tensor weights are symmetric"
        )
    w_group = spec_for(weight).group_size
    if w_group is not None:
        check_group(w_group, in_features, "weight.group_size")


def linear_ops(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    w_scale: Tensor | None = None,
    a_qparams: tuple[Tensor, Tensor] | None = None,
    *,
    activation: QuantSpec | None,
    weight_spec: QuantSpec,
) -> Tensor:
    """The fused QAT linear through the ``torch.library`` ops (what ``torch.compile``, tracers,
    transforms and modes see; :class:`~triton_qat.fused.FusedLinear` runs it where the eager
    direct path does not hold). The activation is quantized by its own op,
    ``triton_qat::quantize`` (so the compiler deduplicates it across linears reading the same
    ``x``), then ``triton_qat::qat_linear`` runs the int8 GEMM; ``activation=None``: weight-only,
    ``triton_qat::weight_only_linear``. ``a_qparams`` (per-tensor scale [1, 1] fp32, zero point
    [1, 1] int32) and ``w_scale`` ([N, G] fp32: learned; torch.ao's as [N, 1]) are given where
    the caller has them."""
    check_linear_inputs(x, weight, bias)  # named errors before anything reads x
    check_no_grad_transform("triton_qat.Linear / qat_linear", x, weight, bias, w_scale)
    K = weight.shape[1]
    w_args = weight_spec.linear_args("w", K)
    # the ops run on x [M, K], so that their outputs are their GEMMs' own, and the view to
    # [..., N] is made here (one made inside an op could not be changed in place, e.g. by a
    # following ReLU(inplace=True))
    out_shape = (*x.shape[:-1], weight.shape[0])
    if activation is None:
        out = torch.ops.triton_qat.weight_only_linear(x.reshape(-1, K), weight, bias, **w_args,
                                                      w_scale=w_scale)  # fmt: skip
        return out.view(out_shape)
    x2d_grad = x.reshape(-1, K)  # what autograd differentiates
    x2d = x2d_grad.detach()  # qparams are constants of the STE: no graph
    x_code_sum = None
    if a_qparams is None:
        # x's code sums serve only the zero points of asymmetric weights (per weight group)
        sum_group, with_sums = None, not weight_spec.symmetric
        if with_sums:
            sum_group = activation_sum_group(K, w_args["w_group_size"])
        *state, code_sum = torch.ops.triton_qat.quantize(
            x2d, **activation.quantize_args(K), pack_mask=True, scale=None, zero_point=None,
            sum_group=sum_group or 0, with_sums=with_sums,
        )  # fmt: skip
        if with_sums and code_sum.shape[1] == K // w_args["w_group_size"]:
            x_code_sum = code_sum
    else:
        state = torch.ops.triton_qat.quantize(
            x2d, **activation.quantize_args(K), pack_mask=True, scale=a_qparams[0],
            zero_point=a_qparams[1], with_sums=False,
        )[:4]  # fmt: skip
    asym = not activation.symmetric or a_qparams is not None
    out = torch.ops.triton_qat.qat_linear(x2d_grad, *state, weight, bias, asym, **w_args,
                                          w_scale=w_scale, x_code_sum=x_code_sum)  # fmt: skip
    return out.view(out_shape)


def fused_linear(activation: QuantSpec | None, weight_spec: QuantSpec) -> FusedLinear:
    """The :class:`~triton_qat.fused.FusedLinear` of a spec pair, its ops path
    :func:`linear_ops`."""
    via_ops = functools.partial(linear_ops, activation=activation, weight_spec=weight_spec)
    return FusedLinear(activation, weight_spec, via_ops)


_FUSED: dict[tuple, FusedLinear] = {}  # qat_linear's, per spec pair (a few per process)


def _shared_fused_linear(activation: QuantSpec | None, weight_spec: QuantSpec) -> FusedLinear:
    fused = _FUSED.get((activation, weight_spec))
    if fused is None:
        fused = _FUSED[activation, weight_spec] = fused_linear(activation, weight_spec)
    return fused


def ao_fake_quantize(
    x: Tensor, q_range: tuple[int, int], scale: Tensor, zero_point: Tensor | None
) -> Tensor:
    """torch.ao fake quantization with given qparams (STE): per-tensor (scale [1]) over all of x,
    or per row of a 2-D x (scale [R, 1]); used when only one half of a torch.ao layer is on."""
    spec = ao_spec(*q_range)
    x2d = rows_2d(x, spec)
    scale = scale.to(torch.float32).reshape(-1, 1)
    zp = zero_point.to(torch.int32).reshape(-1, 1) if zero_point is not None else None
    args = spec.quantize_args(x2d.shape[1])
    check_no_grad_transform("triton_qat (torch.ao fake quantization)", x)
    y, _ = _ops.fake_quantize(x2d, **args, scale=scale, zero_point=zp)
    return y.reshape(x.shape)
