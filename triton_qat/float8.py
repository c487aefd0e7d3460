"""Float8 (e4m3) QAT on the dequantized path: the ``torch.library`` ops, their autograd, and the
functional forms ``tq.fake_quantize`` / ``tq.Linear`` call for a :class:`Float8Config`.

``triton_qat::float8_fake_quantize(x2d, per_tensor, lb, ub) -> (y, scale)`` runs the Triton
kernel (kernels/quantize_float8.py) on the kernel backends, its plain-torch twin on the
``"torch"`` backend; its backward ``triton_qat::float8_fake_quantize_backward`` computes
torchao's gradient from x and the scale (plain torch on every backend: no Triton backward kernel
yet). Both are opaque custom ops with fake implementations, so ``torch.compile(fullgraph=True)``
keeps them as single nodes. The linear is ``F.linear(fq(x), fq(w), bias)``, what torchao's
``FakeQuantizedLinear`` computes (the fp8 tensor-core GEMM is not done yet).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from triton_qat.checks import check_float_input
from triton_qat.config import FLOAT8_MAX, NOT_QUANTIZED, Float8Config
from triton_qat.dispatch import use_kernels
from triton_qat.kernels import quantize_float8 as _k
from triton_qat.kernels.quantize_float8_torch import (
    float8_fake_quantize_backward_torch,
    float8_fake_quantize_torch,
)


@torch.library.custom_op("triton_qat::float8_fake_quantize", mutates_args=())
def float8_fake_quantize_op(
    x: Tensor, per_tensor: bool, lb: float | None, ub: float | None
) -> tuple[Tensor, Tensor]:
    """x [R, K] (R, K >= 1) -> (y [R, K] in x's dtype, fp32 scale [R, 1] / [1, 1])."""
    x = x if x.stride(-1) == 1 else x.contiguous()
    if use_kernels(x):
        return _k.float8_quantize(x, per_tensor, lb, ub)
    return float8_fake_quantize_torch(x, per_tensor, lb, ub)


@float8_fake_quantize_op.register_fake
def _(x: Tensor, per_tensor: bool, lb: float | None, ub: float | None) -> tuple[Tensor, Tensor]:
    rows = 1 if per_tensor else x.shape[0]
    return x.new_empty(x.shape), x.new_empty((rows, 1), dtype=torch.float32)


@torch.library.custom_op("triton_qat::float8_fake_quantize_backward", mutates_args=())
def float8_fake_quantize_backward_op(
    grad: Tensor, x: Tensor, scale: Tensor, per_tensor: bool, lb: float | None, ub: float | None
) -> Tensor:
    """torchao's gradient of its float8 fake quantization (docs/numerics.md "Float8")."""
    return float8_fake_quantize_backward_torch(grad.to(x.dtype), x, scale, per_tensor, lb, ub)


@float8_fake_quantize_backward_op.register_fake
def _(grad, x, scale, per_tensor, lb, ub) -> Tensor:
    return x.new_empty(x.shape)


def _setup(ctx, inputs, output) -> None:
    x, per_tensor, lb, ub = inputs
    ctx.save_for_backward(x, output[1])
    ctx.args = (per_tensor, lb, ub)


def _backward(ctx, grad_y: Tensor, grad_scale: Tensor):
    x, scale = ctx.saved_tensors
    grad_x = torch.ops.triton_qat.float8_fake_quantize_backward(grad_y, x, scale, *ctx.args)
    return grad_x, None, None, None


float8_fake_quantize_op.register_autograd(_backward, setup_context=_setup)


def float8_fake_quantize(x: Tensor, config: Float8Config) -> Tensor:
    """e4m3 fake quantization of any float tensor, bit-identical to torchao's
    ``Float8FakeQuantizer(Float8FakeQuantizeConfig(...))``, with its gradient.

    Args:
        x: fp32 / fp16 / bf16, any shape; rows are the last dim ("per_row"), or all of x.
        config: a :class:`Float8Config`.
    Returns: x's dtype and shape.
    """
    check_float_input(x, "x")
    if x.numel() == 0:
        return x * 1
    x2d = x.reshape(-1, x.shape[-1]) if x.dim() else x.reshape(1, 1)
    y, _ = torch.ops.triton_qat.float8_fake_quantize(
        x2d, config.per_tensor, config.hp_value_lb, config.hp_value_ub
    )
    return y.reshape(x.shape)


def check_float8_configs(activation: object, weight: object) -> None:
    """ValueError naming the argument unless the pair is float8 weights with float8 or no
    activation quantization (int and float8 halves are not mixed)."""
    if not isinstance(weight, Float8Config):
        raise ValueError(
            f"activation: a Float8Config activation needs a Float8Config weight, got "
            f"weight={weight!r}"
        )
    if activation is not NOT_QUANTIZED and not isinstance(activation, Float8Config):
        raise ValueError(
            "activation: with a Float8Config weight, expected a Float8Config or NOT_QUANTIZED, "
            f"got {activation!r}"
        )


def float8_linear(
    x: Tensor, weight: Tensor, bias: Tensor | None, activation: object, weight_config: Float8Config
) -> Tensor:
    """``F.linear(fq(x), fq(weight), bias)`` (torchao's ``FakeQuantizedLinear`` with float8
    configs); the weight is fake-quantized in its own dtype, then cast to x's, as the int layers
    do. ``activation=NOT_QUANTIZED``: weight-only."""
    return linear_on_weight(x, float8_fake_quantize(weight, weight_config), bias, activation)


def linear_on_weight(x: Tensor, w_fq: Tensor, bias: Tensor | None, activation: object) -> Tensor:
    """``F.linear(fq(x), w_fq, bias)`` with ``w_fq`` (the fake-quantized weight, in the weight's
    dtype) and ``bias`` cast to x's dtype: the prepared layer's forward and the converted one's
    (:class:`triton_qat.quantized.QuantizedFloat8Linear`), the same ops in the same order."""
    x_fq = x if activation is NOT_QUANTIZED else float8_fake_quantize(x, activation)
    return F.linear(x_fq, w_fq.to(x.dtype), None if bias is None else bias.to(x.dtype))


@torch.no_grad()
def float8_weight_codes(weight: Tensor, config: Float8Config) -> tuple[Tensor, Tensor]:
    """(e4m3 codes [N, K] float8_e4m3fn, fp32 scale [N, 1] / [1, 1]) of a weight [N, K]: the
    scale the QAT forward's op computes (bounds applied), the codes ``e4m3(clamp(fp32(w) / s,
    -448, 448))`` (docs/numerics.md "Float8"), so that :func:`float8_dequantize` gives the bits
    of the fake-quantized weight the QAT forward used."""
    check_float_input(weight, "weight")
    _, scale = torch.ops.triton_qat.float8_fake_quantize(
        weight, config.per_tensor, config.hp_value_lb, config.hp_value_ub
    )
    t = torch.clamp(weight.to(torch.float32) / scale, -FLOAT8_MAX, FLOAT8_MAX)
    return t.to(torch.float8_e4m3fn), scale


def float8_dequantize(codes: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """``dt(fp32(q) * s)``: the fake-quantized values from e4m3 codes and fp32 scales (the last
    step of the float8 fake quantization, in the same dtypes)."""
    return (codes.to(torch.float32) * scale).to(dtype)
