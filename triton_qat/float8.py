"""Float8 (e4m3) QAT: the ``torch.library`` ops, their autograd, and the functional forms
``tq.fake_quantize`` / ``tq.Linear`` call for a :class:`Float8Config` (and a
:class:`Float8Int4WeightConfig` weight).

``triton_qat::float8_fake_quantize(x2d, per_tensor, lb, ub) -> (y, scale)`` runs the Triton
kernel (kernels/quantize_float8.py) on the kernel backends, its plain-torch twin on the
``"torch"`` backend; its backward ``triton_qat::float8_fake_quantize_backward`` computes
torchao's gradient from x and the scale (the Triton kernel on the kernel backends, the twin on
``"torch"``). Both are opaque custom ops with fake implementations, so ``torch.compile(fullgraph=True)``
keeps them as single nodes.

The linear: where fp8 tensor cores run (:func:`fp8_gemm_runs`: a CUDA GPU of compute capability
8.9+ with compiled Triton, or the interpreter; 16-bit inputs with a float8 activation config),
``triton_qat::float8_linear`` quantizes x and w to e4m3 codes and runs the fp8 GEMM
(kernels/gemm_float8.py: the products of the same fake-quantized values, accumulated in fp32);
its STE backward re-derives x_fq and w_fq from the saved x and w (nothing weight-sized is kept)
and applies torchao's float8 gradient to ``grad_y @ w_fq`` and ``grad_y.T @ x_fq``. Elsewhere
(fp32 inputs, weight-only, the torch backend, older GPUs) the dequantized path:
``F.linear(fq(x), fq(w), bias)``, bit-identical to torchao's ``FakeQuantizedLinear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from triton_qat import autotune, calls
from triton_qat.checks import (
    check_float_input,
    check_no_grad_transform,
    functorch_level,
    saved_weight,
)
from triton_qat.config import FLOAT8_MAX, NOT_QUANTIZED, Float8Config, Float8Int4WeightConfig
from triton_qat.dispatch import rows_key, use_kernels
from triton_qat.kernels import gemm_float8 as _g
from triton_qat.kernels import quantize_float8 as _k
from triton_qat.kernels._common import INTERPRET
from triton_qat.kernels.gemm_float8_gluon import float8_gluon_device
from triton_qat.kernels.quantize_float8_torch import (
    float8_fake_quantize_backward_torch,
    float8_fake_quantize_torch,
)


@torch.library.custom_op("triton_qat::float8_fake_quantize", mutates_args=())
def float8_fake_quantize_op(
    x: Tensor, per_tensor: bool, lb: float | None, ub: float | None
) -> tuple[Tensor, Tensor]:
    """x [R, K] (R, K >= 1) -> (y [R, K] in x's dtype, fp32 scale [R, 1] / [1, 1])."""
    return _fq_impl(x, per_tensor, lb, ub)


def _fq_impl(x: Tensor, per_tensor: bool, lb, ub) -> tuple[Tensor, Tensor]:
    """The fake-quantize op's implementation (the eager direct path calls it too)."""
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
    """torchao's gradient of its float8 fake quantization (docs/numerics.md "Float8"): the
    Triton kernel on the kernel backends (its scale-gradient sums in another order than torch's:
    see the docs), the plain-torch twin on the torch backend."""
    return _fq_backward_impl(grad, x, scale, per_tensor, lb, ub)


def _fq_backward_impl(grad, x, scale, per_tensor, lb, ub) -> Tensor:
    """The fake-quantize backward op's implementation."""
    grad = grad.to(x.dtype)
    if not use_kernels(x) or x.numel() == 0:
        return float8_fake_quantize_backward_torch(grad, x, scale, per_tensor, lb, ub)
    x = x if x.stride(-1) == 1 else x.contiguous()
    grad = grad if grad.stride(-1) == 1 else grad.contiguous()
    # everything the plan reads is in the key (INTERPRET is fixed at import; the capability
    # query, which a fake GPU patches, decides the hardware conversion)
    key = (x.shape[1], x.dtype, x.device, per_tensor, lb, ub, torch.cuda.get_device_capability)
    plan = _BACKWARD_PLANS.get(key)
    if plan is None:
        if len(_BACKWARD_PLANS) > 4096:
            _BACKWARD_PLANS.clear()
        plan = _BACKWARD_PLANS[key] = _k.plan_float8_quantize(
            x.shape[1], x.dtype, per_tensor, lb, ub, x.is_cuda, INTERPRET,
            e4m3_cvt=_k.e4m3_cvt_device(x.device))  # fmt: skip
    return _k.launch_float8_backward(plan, grad, x, scale)


_BACKWARD_PLANS: dict = {}


@float8_fake_quantize_backward_op.register_fake
def _(grad, x, scale, per_tensor, lb, ub) -> Tensor:
    return x.new_empty(x.shape)


def _setup(ctx, inputs, output) -> None:
    x, per_tensor, lb, ub = inputs
    ctx.save_for_backward(x, output[1])
    ctx.args, ctx.x_dtype = (per_tensor, lb, ub), x.dtype


DOUBLE_BACKWARD_MSG = (
    "triton_qat: the float8 fake quantization's backward (torchao's gradient, one kernel) is not "
    "differentiable again (create_graph=True / double backward is not supported). For a "
    "gradient penalty, run that layer or tensor without float8 fake quantization."
)


def _no_double_backward() -> None:
    """RuntimeError under ``backward(create_graph=True)``: the backward kernels have no
    gradient of their own, so a second-order graph through them would be silently wrong."""
    if torch.is_grad_enabled():
        raise RuntimeError(DOUBLE_BACKWARD_MSG)


def _backward(ctx, grad_y: Tensor, grad_scale: Tensor):
    _no_double_backward()
    x, scale = ctx.saved_tensors
    if x.dtype is not ctx.x_dtype:  # a weight whose module was cast since the forward
        x = saved_weight(x, ctx.x_dtype, "input")
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
    check_no_grad_transform("triton_qat float8 fake quantization", x)
    x2d = x.reshape(-1, x.shape[-1]) if x.dim() else x.reshape(1, 1)
    y, _ = torch.ops.triton_qat.float8_fake_quantize(
        x2d, config.per_tensor, config.hp_value_lb, config.hp_value_ub
    )
    return y.reshape(x.shape)


class _RoundSTE(torch.autograd.Function):
    """``torch.round`` with a straight-through gradient (torchao's ``_Round``)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        return g


class _RoundSTEBatchable(_RoundSTE):
    """:class:`_RoundSTE` with forward and context apart, so torch.func.vmap can batch it (used
    under functorch only: ``apply`` then binds its arguments with ``inspect.signature``, about 70
    Python calls a call)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return torch.round(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass


# the e4m3 step of torchao's Int4WeightFakeQuantizer (fp8 activations): per row, lb 1e-12
_INT4_WEIGHT_F8 = Float8Config("per_row", hp_value_lb=1e-12)


def float8_int4_weight_fake_quantize(weight: Tensor, config: Float8Int4WeightConfig) -> Tensor:
    """torchao's ``Int4WeightFakeQuantizer(Int4WeightFakeQuantizeConfig(group_size,
    activation_dtype=torch.float8_e4m3fn))`` op for op, so values and gradients are its bits
    (docs/numerics.md "Float8 activations, int4 weights"): e4m3 per row (``hp_value_lb=1e-12``,
    the float8 op), then symmetric int4 per group in the weight's dtype,
    ``clamp(round(w8 * (1 / s)), -8, 7) * s`` with ``s = clamp(amax_group(|w8|) / 8, min=1e-6)``
    and a straight-through round (the scale's own gradient flows, as in torchao).

    Args:
        weight: [N, K] fp32 / fp16 / bf16, K a multiple of ``config.group_size``.
    Returns: [N, K] in the weight's dtype."""
    check_no_grad_transform("triton_qat float8-int4 weight fake quantization", weight)
    return int4_dequantize(*_int4_groups(weight, config))


def _int4_groups(weight: Tensor, config: Float8Int4WeightConfig) -> tuple[Tensor, Tensor]:
    """(q [N, G, g], s [N, G, 1]), both in the weight's dtype: torchao's int4 codes (NaN where
    ``w8 * (1 / s)`` is: a group whose s is NaN or inf, or a zero of a group whose ``1 / s``
    overflows, fp16's s below about 2^-16) and group scales, with their gradients."""
    check_float_input(weight, "weight")
    if weight.dim() != 2:
        raise ValueError(
            f"weight: expected a 2-D [N, K] weight (torchao's int4 weight fake quantization), "
            f"got shape {tuple(weight.shape)}"
        )
    if weight.shape[1] % config.group_size:
        raise ValueError(
            f"weight: expected [N, K] with K a multiple of group_size={config.group_size}, got "
            f"{tuple(weight.shape)}"
        )
    N = weight.shape[0]
    w8 = float8_fake_quantize(weight, _INT4_WEIGHT_F8)
    grouped = w8.view(N, -1, config.group_size)
    scale = torch.clamp(torch.amax(torch.abs(grouped), dim=-1, keepdim=False) / 8, min=1e-6)
    scale = scale.view(N, -1, 1)
    zero = torch.zeros_like(scale)
    v = grouped * (1.0 / scale)
    if not (v.requires_grad and torch.is_grad_enabled()):  # no gradient: the same bits, and a
        rounded = torch.round(v)  # traced graph torch.jit.save can write (no Python op in it)
    elif functorch_level() is None:
        rounded = _RoundSTE.apply(v)
    else:
        rounded = _RoundSTEBatchable.apply(v)
    return torch.clamp(rounded + zero, -8, 7), scale


def int4_dequantize(q: Tensor, scale: Tensor) -> Tensor:
    """``(dt(q) - 0) * s`` [N, G * g] in ``dt`` = the scale's dtype: the last step of
    :func:`float8_int4_weight_fake_quantize` (torchao's), on its codes q [N, G, g] (in ``dt``, or
    the int codes a converted layer stores) and group scales s [N, G, 1]."""
    dt = scale.dtype
    dq = (q.to(dt, copy=True) - torch.zeros_like(scale)) * scale
    return dq.view(q.shape[0], -1).to(dt)


@torch.no_grad()
def float8_int4_weight_codes(
    weight: Tensor, config: Float8Int4WeightConfig
) -> tuple[Tensor, Tensor]:
    """(int8 codes [N, K] in [-8, 7], fp32 group scales [N, K / g]) of a weight [N, K]: the
    codes and scales of :func:`float8_int4_weight_fake_quantize` (fp32 holds a bf16 / fp16 scale
    exactly); a NaN code is stored as 0, which :func:`float8_int4_dequantize` reads back."""
    q, scale = _int4_groups(weight, config)
    codes = torch.nan_to_num(q, nan=0.0).to(torch.int8).view(weight.shape)
    return codes, scale.view(weight.shape[0], -1).to(torch.float32)


def float8_int4_dequantize(codes: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """The fake-quantized weight [N, K] in ``dtype`` from int codes [N, K] and fp32 group scales
    [N, G] (:func:`float8_int4_weight_codes`): :func:`int4_dequantize` with the scales in
    ``dtype``, the bits of :func:`float8_int4_weight_fake_quantize` of a weight of that dtype.
    A code 0 in a group whose ``1 / s`` is inf stands for the NaN the reference has there (its
    nonzero values saturate to -8 / 7; ``w8 = 0`` gives ``0 * inf``); groups whose s is NaN or
    inf come out NaN from the product."""
    N, K = codes.shape
    s = scale.to(dtype).reshape(N, -1, 1)
    q = codes.reshape(N, s.shape[1], -1).to(dtype)
    q = torch.where((q == 0) & (1.0 / s).isinf(), float("nan"), q)
    return int4_dequantize(q, s)


def weight_fake_quantize(weight: Tensor, config: object) -> Tensor:
    """The fake-quantized weight of a float8-family layer (:class:`Float8Config` or
    :class:`Float8Int4WeightConfig`), in the weight's dtype."""
    if isinstance(config, Float8Int4WeightConfig):
        return float8_int4_weight_fake_quantize(weight, config)
    return float8_fake_quantize(weight, config)


def check_float8_configs(activation: object, weight: object, in_features: int = 0) -> None:
    """ValueError naming the argument unless the pair is float8 weights (:class:`Float8Config`,
    or :class:`Float8Int4WeightConfig` with a group dividing ``in_features``) with float8 or
    no activation quantization (int and float8 halves are not mixed)."""
    if isinstance(weight, Float8Int4WeightConfig):
        if in_features and in_features % weight.group_size:
            raise ValueError(
                f"weight: group_size={weight.group_size} does not divide in_features={in_features}"
            )
        if isinstance(activation, Float8Int4WeightConfig):
            weight.check_role("activation")
    elif not isinstance(weight, Float8Config):
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
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    activation: object,
    weight_config: Float8Config | Float8Int4WeightConfig,
) -> Tensor:
    """``fq(x) @ fq(weight).T + bias`` (torchao's ``FakeQuantizedLinear`` with float8 configs):
    on fp8 tensor cores where :func:`fp8_gemm_runs`, else ``F.linear`` on the fake-quantized
    values (the weight fake-quantized in its own dtype, then cast to x's, as the int layers do).
    ``activation=NOT_QUANTIZED``: weight-only (always the dequantized path). A
    :class:`Float8Int4WeightConfig` weight: the dequantized path (its per-group int4 scales vary
    along K, which the fp8 GEMM's per-row epilogue does not take)."""
    if isinstance(weight_config, Float8Int4WeightConfig):
        return linear_on_weight(x, float8_int4_weight_fake_quantize(weight, weight_config), bias,
                                activation)  # fmt: skip
    if fp8_gemm_runs(x, activation, weight.dtype) and x.numel() and weight.numel():
        x2d = x.reshape(-1, x.shape[-1])
        args = (x2d, weight, bias, *_args(activation), *_args(weight_config))
        if calls.usable(x2d, weight, bias):
            y = _Float8LinearDirect.apply(*args)
        else:
            check_no_grad_transform("triton_qat.Linear (float8)", x2d, weight, bias)
            y = torch.ops.triton_qat.float8_linear(*args)
        return y.reshape(*x.shape[:-1], weight.shape[0])
    return linear_on_weight(x, float8_fake_quantize(weight, weight_config), bias, activation)


def linear_on_weight(x: Tensor, w_fq: Tensor, bias: Tensor | None, activation: object) -> Tensor:
    """``F.linear(fq(x), w_fq, bias)`` with ``w_fq`` (the fake-quantized weight, in the weight's
    dtype) and ``bias`` cast to x's dtype: the prepared layer's dequantized forward and the
    converted one's (:class:`triton_qat.quantized.QuantizedFloat8Linear`), the same ops in the
    same order."""
    x_fq = x if activation is NOT_QUANTIZED else float8_fake_quantize(x, activation)
    return F.linear(x_fq, w_fq.to(x.dtype), None if bias is None else bias.to(x.dtype))


def linear_on_codes(
    x: Tensor,
    w_codes: Tensor,
    w_scale: Tensor,
    bias: Tensor | None,
    activation: Float8Config,
    w_dtype: torch.dtype,
) -> Tensor:
    """The converted layer's fp8 forward (where :func:`fp8_gemm_runs`): x quantized to e4m3
    codes as the prepared layer quantizes it, then the same fp8 GEMM on the stored weight codes
    [N, K] and their fp32 scale ([N, 1] / [1, 1]) of a weight of dtype ``w_dtype``, so the output
    is the prepared layer's bits."""
    x2d = x.reshape(-1, x.shape[-1])
    y = torch.ops.triton_qat.float8_linear_codes(x2d, w_codes, w_scale, bias,
                                                 *_args(activation), w_dtype)  # fmt: skip
    return y.reshape(*x.shape[:-1], w_codes.shape[0])


def _args(config: Float8Config) -> tuple:
    return config.per_tensor, config.hp_value_lb, config.hp_value_ub


def _config(per_tensor: bool, lb: float | None, ub: float | None) -> Float8Config:
    return Float8Config("per_tensor" if per_tensor else "per_row", lb, ub)


def fp8_gemm_runs(x: Tensor, activation: object, w_dtype: torch.dtype | None = None) -> bool:
    """Whether a float8 layer's forward on ``x`` runs the fp8 tensor-core GEMM: a float8
    activation config, a 16-bit x (fp32 models keep fp32 GEMMs: Hopper's fp8 accumulation, even
    promoted every 128 products, is not fp32-exact), a weight of ``w_dtype`` no narrower than x
    (a bf16 weight's ``w_fq`` is rounded in bf16, which the GEMM's epilogue scale never does:
    docs/numerics.md "Weights narrower than the input"), and kernels on fp8 tensor cores (CUDA of
    compute capability 8.9+ with compiled Triton on NVIDIA) or the interpreter."""
    if activation is NOT_QUANTIZED or x.dtype not in (torch.bfloat16, torch.float16):
        return False
    if w_dtype is not x.dtype and autotune.weight_narrower(w_dtype, x.dtype):
        return False
    if not use_kernels(x):
        return False
    return INTERPRET or (torch.version.hip is None and _fp8_capable(x.device))


_FP8_CAPABLE: dict = {}


@torch.compiler.assume_constant_result  # a device property: no graph break under torch.compile
def _fp8_capable(device: torch.device) -> bool:
    """Compute capability 8.9+ (asked once per device; a patched query is asked afresh)."""
    query = torch.cuda.get_device_capability
    key = (device.index, query)
    if key not in _FP8_CAPABLE:
        _FP8_CAPABLE[key] = tuple(query(device)) >= (8, 9)
    return _FP8_CAPABLE[key]


# -- the fp8 tensor-core forward -------------------------------------------------------------------
_PLANS: dict = {}


def _plans(x2d: Tensor, N: int, K: int, has_bias: bool, a: tuple, w: tuple | None):
    """(x's quantize plan, w's quantize plan or None, the GEMM plan), decided once per key and
    tuned-config generation (:data:`triton_qat.autotune.GENERATION`)."""
    key = (rows_key(x2d.shape[0]), N, K, x2d.dtype, x2d.device, has_bias, a, w,
           autotune.GENERATION[0], torch.cuda.get_device_capability)  # fmt: skip
    plans = _PLANS.get(key)
    if plans is None:
        if len(_PLANS) > 4096:
            _PLANS.clear()
        cuda = x2d.is_cuda
        cvt = _k.e4m3_cvt_device(x2d.device)
        qa = _k.plan_float8_quantize(K, x2d.dtype, *a, cuda, INTERPRET, e4m3_cvt=cvt)
        qw = None if w is None else _k.plan_float8_quantize(K, w[3], *w[:3], cuda, INTERPRET,
                                                             out_dtype=x2d.dtype, e4m3_cvt=cvt)  # fmt: skip
        cfg = autotune.gemm_config("f8fwd", rows_key(x2d.shape[0]), N, K, x2d.device, x2d.dtype)
        mm = _g.plan_float8_linear(K, N, x2d.dtype, config=cfg, has_bias=has_bias,
                                   gluon=float8_gluon_device(x2d.device))  # fmt: skip
        plans = _PLANS[key] = (qa, qw, mm)
    return plans


def _fp8_forward(x2d: Tensor, w_codes: Tensor, w_gscale: Tensor, bias, qa, mm) -> Tensor:
    """x2d's codes, then the GEMM; the bias rounded to x's dtype first, as ``F.linear(...,
    bias.to(x.dtype))`` of the dequantized path rounds it."""
    x2d = x2d if x2d.stride(-1) == 1 else x2d.contiguous()
    x_codes, x_gscale = _k.launch_float8_codes(qa, x2d)
    bias = None if bias is None else bias.to(x2d.dtype)
    return _g.launch_float8_linear(mm, x_codes, x_gscale, w_codes, w_gscale, bias)


@torch.library.custom_op("triton_qat::float8_linear", mutates_args=())
def float8_linear_op(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    a_per_tensor: bool,
    a_lb: float | None,
    a_ub: float | None,
    w_per_tensor: bool,
    w_lb: float | None,
    w_ub: float | None,
) -> Tensor:
    """x [M, K] (bf16 / fp16), weight [N, K] (any float dtype), bias [N] or None ->
    ``fq(x) @ fq(w).T + bias`` [M, N] in x's dtype on fp8 tensor cores (module doc)."""
    return _linear_impl(x, weight, bias, a_per_tensor, a_lb, a_ub, w_per_tensor, w_lb, w_ub)


def _linear_impl(x, weight, bias, a_per_tensor, a_lb, a_ub, w_per_tensor, w_lb, w_ub) -> Tensor:
    """The float8 linear op's implementation (the eager direct path calls it too)."""
    M, K, N = x.shape[0], x.shape[1], weight.shape[0]
    if M == 0 or N == 0 or K == 0:  # no codes to make: the dequantized path's result
        w_fq = float8_fake_quantize(weight, _config(w_per_tensor, w_lb, w_ub))
        return linear_on_weight(x, w_fq, bias, _config(a_per_tensor, a_lb, a_ub))
    a = (a_per_tensor, a_lb, a_ub)
    w = (w_per_tensor, w_lb, w_ub, weight.dtype)
    qa, qw, mm = _plans(x, N, K, bias is not None, a, w)
    w2d = weight if weight.stride(-1) == 1 else weight.contiguous()
    w_codes, w_gscale = _k.launch_float8_codes(qw, w2d)
    return _fp8_forward(x, w_codes, w_gscale, bias, qa, mm)


@float8_linear_op.register_fake
def _(x, weight, bias, a_per_tensor, a_lb, a_ub, w_per_tensor, w_lb, w_ub) -> Tensor:
    return x.new_empty((x.shape[0], weight.shape[0]))


def _linear_setup(ctx, inputs, output) -> None:
    x, weight, bias, *args = inputs
    ctx.save_for_backward(x, weight)
    ctx.args, ctx.bias_dtype, ctx.w_dtype = args, None if bias is None else bias.dtype, weight.dtype


def _linear_backward(ctx, grad_y: Tensor):
    """The op's backward: :func:`_linear_grads` through the ops (traced by torch.compile)."""
    _no_double_backward()
    ops = torch.ops.triton_qat
    return _linear_grads(ctx, grad_y, ops.float8_fake_quantize, ops.float8_fake_quantize_backward)


def _linear_grads(ctx, grad_y: Tensor, fq, bwd):
    """torchao's gradients through ``F.linear(fq(x), fq(w).to(x.dtype), bias)``: x_fq and w_fq
    re-derived from the saved x and w by the forward's quantize (same bits), the GEMMs
    ``F.linear``'s backward runs, then torchao's float8 gradient of each fake quantization
    (``fq`` / ``bwd``: the ops, or their implementations on the eager direct path)."""
    device_type = grad_y.device.type
    if not torch.is_autocast_enabled(device_type):  # (the context costs ~30 Python calls)
        return _linear_grads_in_dtypes(ctx, grad_y, fq, bwd)
    with torch.autocast(device_type, enabled=False):
        return _linear_grads_in_dtypes(ctx, grad_y, fq, bwd)


def _linear_grads_in_dtypes(ctx, grad_y: Tensor, fq, bwd):
    """:func:`_linear_grads` outside autocast (a backward run under autocast would round its
    GEMMs to the autocast dtype)."""
    x, weight = ctx.saved_tensors
    if weight.dtype is not ctx.w_dtype:  # the module was cast since the forward
        weight = saved_weight(weight, ctx.w_dtype)
    a_pt, a_lb, a_ub, w_pt, w_lb, w_ub = ctx.args
    x_fq, sx = fq(x, a_pt, a_lb, a_ub)
    w_fq, sw = fq(weight, w_pt, w_lb, w_ub)
    grad_y = grad_y.to(x.dtype)
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_x = bwd(grad_y.mm(w_fq.to(x.dtype)), x, sx, a_pt, a_lb, a_ub)
    if ctx.needs_input_grad[1]:
        grad_w = bwd(grad_y.t().mm(x_fq).to(weight.dtype), weight, sw, w_pt, w_lb, w_ub)
    if ctx.needs_input_grad[2]:
        grad_b = grad_y.sum(0).to(ctx.bias_dtype)
    return grad_x, grad_w, grad_b, None, None, None, None, None, None


float8_linear_op.register_autograd(_linear_backward, setup_context=_linear_setup)


class _Float8LinearDirect(torch.autograd.Function):
    """The eager direct path (:func:`triton_qat.calls.usable`): the op's implementation, setup
    and gradients without the dispatcher (the same functions, so the same bits)."""

    @staticmethod
    def forward(ctx, *inputs):
        out = _linear_impl(*inputs)
        _linear_setup(ctx, inputs, out)
        return out

    @staticmethod
    def backward(ctx, grad_y):
        if torch.is_grad_enabled():  # (_no_double_backward inline: the eager hot path)
            raise RuntimeError(DOUBLE_BACKWARD_MSG)
        if torch.compiler.is_compiling():  # compiled autograd traces this: the ops, not launches
            return _linear_backward(ctx, grad_y)
        with torch.no_grad():
            return _linear_grads(ctx, grad_y, _fq_impl, _fq_backward_impl)


@torch.library.custom_op("triton_qat::float8_linear_codes", mutates_args=())
def float8_linear_codes_op(
    x: Tensor,
    w_codes: Tensor,
    w_scale: Tensor,
    bias: Tensor | None,
    a_per_tensor: bool,
    a_lb: float | None,
    a_ub: float | None,
    w_dtype: torch.dtype,
) -> Tensor:
    """x [M, K] (bf16 / fp16), w_codes float8_e4m3fn [N, K], w_scale fp32 [N, 1] / [1, 1] of a
    weight of dtype ``w_dtype``, bias [N] or None -> [M, N] in x's dtype: the converted layer's
    fp8 GEMM (no gradient)."""
    M, K, N = x.shape[0], x.shape[1], w_codes.shape[0]
    if M == 0 or N == 0 or K == 0:
        w_fq = float8_dequantize(w_codes, w_scale, w_dtype)
        return linear_on_weight(x, w_fq, bias, _config(a_per_tensor, a_lb, a_ub))
    qa, _, mm = _plans(x, N, K, bias is not None, (a_per_tensor, a_lb, a_ub), None)
    scale = w_scale.to(torch.float32).reshape(-1).expand(N)
    # the GEMM scale the prepared layer's quantize writes: NaN for a row whose values are not
    # finite in the reference (a NaN code; the largest value overflowing w's dtype, then x's)
    top = (w_codes.to(torch.float32).abs().amax(1) * scale).to(w_dtype).to(x.dtype)
    w_gscale = torch.where(top.isnan() | top.isinf(), float("nan"), scale)
    return _fp8_forward(x, w_codes, w_gscale.contiguous(), bias, qa, mm)


@float8_linear_codes_op.register_fake
def _(x, w_codes, w_scale, bias, a_per_tensor, a_lb, a_ub, w_dtype) -> Tensor:
    return x.new_empty((x.shape[0], w_codes.shape[0]))


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
