"""MX (MXFP8 / MXFP4) and NVFP4 QAT on the dequantized path: the ``torch.library`` ops, their
autograd, and the functional forms ``tq.fake_quantize`` / ``tq.Linear`` call for an
:class:`MXConfig` / :class:`NVFP4Config` (docs/numerics.md "MX and NVFP4").

* ``triton_qat::mx_fake_quantize(x2d, elem, block_size, scaling_mode) -> y`` and
  ``triton_qat::nvfp4_fake_quantize(x2d, per_tensor) -> y``: the Triton kernels
  (kernels/quantize_mx.py) on the kernel backends, their plain-torch twins on the ``"torch"``
  backend; bit-identical to torchao 0.18's ``MXTensor.to_mx(...).dequantize(x.dtype)`` /
  ``NVFP4Tensor.to_nvfp4(...).dequantize(x.dtype)``. Opaque custom ops with fake
  implementations, so ``torch.compile(fullgraph=True)`` keeps them as single nodes.
* Gradient: the identity (straight through, no clamp mask). That is torchao's: its
  ``MXFakeQuantizedLinear`` / ``NVFP4FakeQuantizedLinear`` backward is
  ``grad_x = g @ w_dq``, ``grad_w = g^T @ x_dq`` on the dequantized values.
* The linear is ``addmm(bias, x_dq, w_dq^T)`` (``mm`` without a bias) on the dequantized values:
  what torchao's ``MXFakeQuantizedLinear`` computes with ``KernelPreference.EMULATED``, bit for
  bit; for NVFP4 (whose torchao forward is a Blackwell-only fp4 ``_scaled_mm``) the same
  emulation. The tensor-core MX / NVFP4 GEMMs need Blackwell (sm_100), which triton_qat does not
  target. One difference from torchao: the bias gets its gradient (torchao's backward returns
  None for it, so a bias never trains there).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import Tensor

from triton_qat.checks import (
    check_dims,
    check_float_input,
    check_linear_inputs,
    check_no_grad_transform,
)
from triton_qat.config import (
    MX_ELEM_NAMES,
    MX_SCALING_MODES,
    NOT_QUANTIZED,
    NVFP4_BLOCK_SIZE,
    MXConfig,
    NVFP4Config,
)
from triton_qat.dispatch import use_kernels
from triton_qat.kernels import quantize_mx as _k
from triton_qat.kernels.quantize_mx_torch import (
    mx_fake_quantize_torch,
    nvfp4_fake_quantize_torch,
)

MX_CONFIGS = (MXConfig, NVFP4Config)


def _check_op_args(x: Tensor, block_size: int, elem: str = MX_ELEM_NAMES[2],
                   scaling_mode: str = "rceil") -> None:  # fmt: skip
    """The ops' argument checks (real and fake implementations alike), naming the argument."""
    check_float_input(x, "x")
    check_dims(x, "x", 2, "[rows, cols]")
    if elem not in MX_ELEM_NAMES:
        raise ValueError(f"elem: expected one of {MX_ELEM_NAMES}, got {elem!r}")
    if scaling_mode not in MX_SCALING_MODES:
        raise ValueError(f"scaling_mode: expected one of {MX_SCALING_MODES}, got {scaling_mode!r}")
    if block_size < 1:
        raise ValueError(f"block_size: expected a positive int, got {block_size}")
    check_mx_input(x, SimpleNamespace(block_size=block_size))


def _plan(x: Tensor, elem: str, block_size: int, scaling_mode: str) -> _k.MXPlan:
    """The kernel plan for ``x``'s dtype and device, decided once per key. Everything
    ``plan_mx_quantize`` reads is in the key: INTERPRET is fixed at import, and the capability
    query is in it, so a patched one (perf/kernel_static.py's fake GPU) is asked afresh."""
    key = (x.dtype, x.device, elem, block_size, scaling_mode, torch.cuda.get_device_capability)
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) > 4096:
            _PLANS.clear()
        fp8_cvt = scaling_mode != "nvfp4" and _k.e4m3_cvt_device(x.device)
        plan = _PLANS[key] = _k.plan_mx_quantize(
            x.dtype, elem, block_size, scaling_mode, x.is_cuda, _k.INTERPRET, fp8_cvt
        )
    return plan


_PLANS: dict = {}


@torch.library.custom_op("triton_qat::mx_fake_quantize", mutates_args=())
def mx_fake_quantize_op(x: Tensor, elem: str, block_size: int, scaling_mode: str) -> Tensor:
    """x [R, K] fp32 / bf16 (K a multiple of block_size) -> the MX fake-quantized x, [R, K]
    in x's dtype."""
    _check_op_args(x, block_size, elem, scaling_mode)
    x = x.contiguous()
    if use_kernels(x):
        return _k.launch_mx_quantize(_plan(x, elem, block_size, scaling_mode), x)
    return mx_fake_quantize_torch(x, elem, block_size, scaling_mode)


@mx_fake_quantize_op.register_fake
def _(x: Tensor, elem: str, block_size: int, scaling_mode: str) -> Tensor:
    _check_op_args(x, block_size, elem, scaling_mode)
    return x.new_empty(x.shape)


@torch.library.custom_op("triton_qat::nvfp4_fake_quantize", mutates_args=())
def nvfp4_fake_quantize_op(x: Tensor, per_tensor: bool) -> Tensor:
    """x [R, K] fp32 / bf16 (K a multiple of 16) -> the NVFP4 fake-quantized x, [R, K] in x's
    dtype (``per_tensor``: with the per-tensor scale of all of x)."""
    _check_op_args(x, NVFP4_BLOCK_SIZE)
    x = x.contiguous()
    if use_kernels(x):
        plan = _plan(x, MX_ELEM_NAMES[2], NVFP4_BLOCK_SIZE, "nvfp4")
        return _k.launch_nvfp4_quantize(plan, x, per_tensor)
    return nvfp4_fake_quantize_torch(x, per_tensor)


@nvfp4_fake_quantize_op.register_fake
def _(x: Tensor, per_tensor: bool) -> Tensor:
    _check_op_args(x, NVFP4_BLOCK_SIZE)
    return x.new_empty(x.shape)


def _straight_through_mx(ctx, grad: Tensor):
    return grad, None, None, None


def _straight_through_nvfp4(ctx, grad: Tensor):
    return grad, None


mx_fake_quantize_op.register_autograd(_straight_through_mx)
nvfp4_fake_quantize_op.register_autograd(_straight_through_nvfp4)


def check_mx_dtype(dtype: torch.dtype, name: str) -> None:
    """ValueError naming ``name`` for float16, which MX / NVFP4 fake quantization does not take."""
    if dtype == torch.float16:
        raise ValueError(
            f"{name}: MX / NVFP4 fake quantization takes float32 or bfloat16 (torchao's to_mx / "
            "to_nvfp4 reject float16, so there are no numerics to follow), got torch.float16"
        )


def check_mx_input(x: object, config: MXConfig | NVFP4Config | object, name: str = "x") -> None:
    """TypeError / ValueError naming ``name`` unless ``x`` is an fp32 / bf16 tensor whose last
    dim is a multiple of the config's block size (torchao's ``to_mx`` / ``to_nvfp4`` take
    these only: they reject fp16 and pad nothing)."""
    check_float_input(x, name)
    check_mx_dtype(x.dtype, name)
    k = x.shape[-1] if x.dim() else 1
    if k % config.block_size:
        raise ValueError(
            f"{name}: the last dim ({k}) must be a multiple of block_size={config.block_size} "
            "(torchao pads nothing)"
        )


def mx_fake_quantize(x: Tensor, config: MXConfig | NVFP4Config, name: str = "x") -> Tensor:
    """MX / NVFP4 fake quantization of ``x``, bit-identical to torchao 0.18's
    ``MXTensor.to_mx(x, dtype, block_size, scaling_mode).dequantize(x.dtype)`` /
    ``NVFP4Tensor.to_nvfp4(x, per_tensor_scale=...).dequantize(x.dtype)``; gradient: the
    identity (torchao's, see the module docstring).

    Args:
        x: fp32 / bf16, any shape, the last dim a multiple of ``config.block_size``: blocks run
            along the last dim; NVFP4's per-tensor scale is taken over all of x.
        config: an :class:`MXConfig` or :class:`NVFP4Config`.
        name: how errors name ``x``.
    Returns: x's dtype and shape.
    """
    check_mx_input(x, config, name)
    if x.numel() == 0:
        return x * 1
    check_no_grad_transform("triton_qat MX / NVFP4 fake quantization", x)
    x2d = x.reshape(-1, x.shape[-1])
    if isinstance(config, NVFP4Config):
        y = torch.ops.triton_qat.nvfp4_fake_quantize(x2d, config.use_per_tensor_scale)
    else:
        y = torch.ops.triton_qat.mx_fake_quantize(
            x2d, config.elem, config.block_size, config.scaling_mode
        )
    return y.reshape(x.shape)


def check_mx_configs(activation: object, weight: object, in_features: int) -> None:
    """ValueError naming the argument unless both halves are MX, or both NVFP4 (torchao has no
    weight-only MX / NVFP4 QAT and mixes neither with the other nor with int / float8), with
    ``in_features`` a multiple of both block sizes."""
    if not isinstance(weight, MX_CONFIGS):
        raise ValueError(
            f"activation: an MX / NVFP4 activation needs a weight config of the same kind, got "
            f"weight={weight!r}"
        )
    kind = type(weight)
    if activation is NOT_QUANTIZED:
        raise ValueError(
            f"activation: {kind.__name__} weights need a {kind.__name__} activation (torchao has "
            "no weight-only MX / NVFP4 QAT), got NOT_QUANTIZED"
        )
    if type(activation) is not kind:
        raise ValueError(
            f"activation: with a {kind.__name__} weight, expected a {kind.__name__}, got "
            f"{activation!r}"
        )
    for role, cfg in (("activation", activation), ("weight", weight)):
        if in_features % cfg.block_size:
            raise ValueError(
                f"in_features: {in_features} is not a multiple of the {role}'s "
                f"block_size={cfg.block_size} (torchao pads nothing)"
            )


def mx_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    activation: MXConfig | NVFP4Config,
    weight_config: MXConfig | NVFP4Config,
) -> Tensor:
    """``addmm(bias, fq(x), fq(weight)^T)`` on the rows of x (``mm`` without a bias): torchao's
    ``MXFakeQuantizedLinear`` (emulated) / ``NVFP4FakeQuantizedLinear`` forward on the
    dequantized values, with its gradients (the fake quantization passes them straight
    through; the bias gets ``sum(g)``).

    Args:
        x: [..., K] fp32 / bf16. weight: [N, K] fp32 / bf16, fake-quantized in its own dtype
            then cast to x's (torchao needs one dtype for both). bias: [N] or None.
    Returns: [..., N] in x's dtype.
    """
    w_fq = mx_fake_quantize(weight, weight_config, "weight")
    return mx_linear_on_weight(x, w_fq, bias, activation)


def mx_linear_on_weight(
    x: Tensor, w_fq: Tensor, bias: Tensor | None, activation: MXConfig | NVFP4Config
) -> Tensor:
    """``addmm(bias, fq(x), w_fq^T)`` (``mm`` without a bias) with ``w_fq`` [N, K] (the
    fake-quantized weight, fp32 / bf16) and ``bias`` cast to x's dtype: the prepared MX / NVFP4
    layer's GEMM (:func:`mx_linear`) and the converted one's
    (:class:`triton_qat.quantized_mx.QuantizedMXLinear`), the same ops in the same order.
    x: [..., K] fp32 / bf16 -> [..., N] in x's dtype."""
    k = w_fq.shape[1]
    x_fq = mx_fake_quantize(x, activation, "input").reshape(-1, k)
    w_fq = w_fq.to(x.dtype)
    if bias is None:
        out = torch.mm(x_fq, w_fq.t())
    else:
        out = torch.addmm(bias.to(x.dtype), x_fq, w_fq.t())
    return out.reshape(*x.shape[:-1], w_fq.shape[0])


class MXLinear:
    """An MX / NVFP4 layer's forward, called as the fused int linears are:
    ``f(x, weight, bias, w_scale=None)`` (``w_scale`` unused: the scales are dynamic)."""

    __slots__ = ("activation", "weight_config")

    def __init__(self, activation: MXConfig | NVFP4Config, weight_config: MXConfig | NVFP4Config):
        self.activation, self.weight_config = activation, weight_config

    def __call__(self, x: Tensor, weight: Tensor, bias: Tensor | None, w_scale=None) -> Tensor:
        check_linear_inputs(x, weight, bias)
        return mx_linear(x, weight, bias, self.activation, self.weight_config)
