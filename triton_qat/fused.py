"""The fused QAT linear: its forward and STE backward as the launches of a plan, and the eager path
that runs them with nothing between the module and the launches.

* :func:`forward`, :func:`backward`, :func:`weight_only_forward`, :func:`weight_only_backward`
  run a :class:`~triton_qat.dispatch.LinearPlan` (the launches decided once per key). The
  ``torch.library`` ops (:mod:`triton_qat.ops`) run the same functions, so both paths compute the
  same bits by construction.
* :class:`FusedLinear` is what ``tq.Linear.forward`` calls. In plain eager code on plain tensors
  (:func:`direct`) it validates its inputs once per key (the shapes, dtypes and devices of the
  input, the weight and the bias: a kept plan means inputs of that key passed), takes the kept
  plan and applies one ``torch.autograd.Function`` whose forward and backward are the plan's
  launches. Everywhere else (``torch.compile``, ``torch.jit.trace``, functorch transforms,
  forward-mode AD, the profiler, torch function / dispatch modes, tensor subclasses, or after
  :func:`set_enabled` ``(False)``) it calls the ops, which those systems see, trace and transform.

A ``torch.library`` op call costs host time before anything launches (argument defaults from the
schema, the dispatcher, the autograd wrapper, Dynamo's disable guard, the aliasing check); a
forward made two and a backward one more. ``perf/host_calls.py`` counts the Python function calls
one layer call makes; ``tests/test_host_calls.py`` holds them to a budget.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as _forward_ad
import torch.nn.functional as F
from torch import Tensor

from triton_qat import autotune, dispatch
from triton_qat.checks import check_group, check_linear_inputs, check_qparams, saved_weight
from triton_qat.checks import functorch_level as _functorch_level
from triton_qat.dispatch import DIRECT, Kernels, LinearPlan
from triton_qat.spec import QuantSpec

_ENABLED = [True]
_PLAIN = (torch.Tensor, torch.nn.Parameter)
_F32 = torch.float32


def set_enabled(enabled: bool) -> bool:
    """Switch the direct path on or off (off: every call goes through ``torch.ops.triton_qat``);
    returns the previous setting."""
    prev = _ENABLED[0]
    _ENABLED[0] = bool(enabled)
    return prev


def direct() -> bool:
    """True where a call may skip the ops: eager, and no transform, mode, tracer, forward-mode AD
    or profiler active (the tensors' own types are the caller's to check: plain ``torch.Tensor``
    or ``nn.Parameter``)."""
    if not _ENABLED[0] or torch.compiler.is_compiling():
        return False
    if torch._C._is_torch_function_mode_enabled() or torch._C._len_torch_dispatch_stack():
        return False
    if _functorch_level() is not None or torch._C._get_tracing_state() is not None:
        return False  # functorch transforms; torch.jit.trace records the ops, not their launches
    return _forward_ad._current_level < 0 and not torch.autograd._profiler_enabled()


# ---------------------------------------------------------------------------------------------
# a plan's launches


def float_linear(x: Tensor, w_fq: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear(x, w_fq, bias)`` in x's dtype (w_fq and bias cast as autocast would): the GEMM of
    the weight-only layer, and of its converted ``QuantizedLinear`` (the same call, so the same
    bits)."""
    b = bias.to(x.dtype) if bias is not None else None
    return F.linear(x, w_fq.to(x.dtype), b).contiguous()


def forward(plan: LinearPlan, x2d: Tensor, weight: Tensor, bias: Tensor | None,
            w_scale: Tensor | None = None, a_qparams: tuple | None = None) -> tuple:  # fmt: skip
    """(out [M, N] in x's dtype, x's quantized state (codes, scale, zero point, bit mask, code
    sums)) of x2d [M, K]: the activation quantized (with the given per-tensor ``a_qparams``
    (scale, zero point) where the plan says so), then :func:`gemm_from_state`."""
    xq = plan.quantize_x(x2d) if a_qparams is None else plan.quantize_x(x2d, *a_qparams)
    qw = plan.quantize_w(weight, w_scale)  # as gemm_from_state (inlined: the hot path's frames)
    out = plan.gemm(xq.codes, xq.scale, xq.zero_point, qw.codes, qw.scale, qw.code_sum, bias,
                    None if plan.w_symmetric else qw.zero_point,
                    xq.code_sum if plan.x_sums else None)  # fmt: skip
    return out, xq


def gemm_from_state(plan: LinearPlan, x_codes: Tensor, x_scale: Tensor, x_zero_point: Tensor,
                    weight: Tensor, bias: Tensor | None, w_scale: Tensor | None,
                    x_code_sum: Tensor | None = None, kernels: Kernels = DIRECT) -> Tensor:  # fmt: skip
    """out [M, N] = x_fq @ w_fq.T + bias from x's codes: the weight quantized (codes and
    group-major qparams, with the given ``w_scale`` where the plan says so), then the int8 GEMM
    (x's ``x_code_sum`` per weight group serve asymmetric weights' zero points). ``kernels``: the
    kernel objects launched (:func:`~triton_qat.dispatch.traced_kernels` in an op body)."""
    qw = plan.quantize_w(weight, w_scale, kernel=kernels.quantize)
    w_zp = None if plan.w_symmetric else qw.zero_point
    return plan.gemm(x_codes, x_scale, x_zero_point, qw.codes, qw.scale, qw.code_sum, bias, w_zp,
                     x_code_sum, kernels=kernels.int8)  # fmt: skip


def backward(plan: LinearPlan, dy: Tensor, x_codes: Tensor, x_scale: Tensor,
             x_zero_point: Tensor, x_mask: Tensor, weight: Tensor, w_scale: Tensor | None,
             need_x: bool, need_w: bool, need_w_scale: bool = False,
             kernels: Kernels = DIRECT) -> tuple:  # fmt: skip
    """(grad_x [M, K], grad_w [N, K], grad of the learned w_scale) of dy [M, N] (each None where
    not needed): the weight's values and clamp mask re-derived from ``weight`` (bit-identical to
    the forward's), x_fq dequantized from its codes, then the masked GEMMs."""
    grad_x = grad_w = grad_s = None
    if need_x or need_w or need_w_scale:
        # the learned-scale wgrad's epilogue reads a byte mask; the plain wgrad the plan's
        quantize_w = plan.quantize_w_bwd[need_x, "bytes" if need_w_scale else need_w]
        qw = quantize_w(weight, w_scale, kernel=kernels.quantize)
        w_fq = None
        if need_x:
            w_fq = qw.y if qw.y.dtype == dy.dtype else qw.y.to(dy.dtype)
        if need_w or need_w_scale:
            # wgrad first: x_fq [M, K] and w's mask are freed before dgrad allocates grad_x
            # [M, K], so the two M x K buffers never coexist (peak memory of the step)
            x_fq = plan.dequantize_x(x_codes, x_scale, x_zero_point, kernel=kernels.dequantize)
            grad_w, grad_s = _weight_grads(plan, dy, x_fq, qw, weight, w_scale, need_w_scale,
                                           kernels)  # fmt: skip
            del x_fq
        del qw
        if need_x:
            grad_x = plan.dgrad(dy, w_fq, x_mask, kernel=kernels.float_mm,
                                mask_kernel=kernels.zero_masked)  # fmt: skip
    return grad_x, grad_w, grad_s


def _weight_grads(plan, dy, x_in, qw, weight, w_scale, need_w_scale, kernels):
    """(grad_w, grad of the learned w_scale or None) from one masked wgrad GEMM of ``x_in``
    (x_fq, or x for weight-only), whose epilogue also reduces the scale gradient. The GEMM runs
    in dy's dtype: the plan's, except a weight-only layer's under autocast (its F.linear returns
    the autocast dtype)."""
    if not need_w_scale:
        wgrad = plan.wgrad
        if dy.dtype != plan.dtype:
            wgrad = dispatch.wgrad_launch(dy.shape[0], plan.N, plan.K, dy.dtype, dy.device,
                                          plan.w_mask_bits)  # fmt: skip
        grad_w = wgrad(dy.t(), x_in, qw.mask, kernel=kernels.float_mm,
                       mask_kernel=kernels.zero_masked)  # fmt: skip
        return grad_w, None
    # qw.scale: the given scale as the quantize kernel used it, [N, G] fp32
    grad_w, grad_s = dispatch.wgrad(dy, x_in, qw.mask, weight, qw.scale, plan.w_qmin, plan.w_qmax,
                                    kernels)  # fmt: skip
    return grad_w, grad_s.sum_to_size(w_scale.shape)


def weight_only_forward(plan: LinearPlan, x: Tensor, weight: Tensor, bias: Tensor | None,
                        w_scale: Tensor | None = None, kernels: Kernels = DIRECT) -> Tensor:  # fmt: skip
    """``F.linear(x, fake_quantize(weight), bias)`` [..., N] in x's dtype (weight-only QAT)."""
    return float_linear(x, plan.quantize_w(weight, w_scale, kernel=kernels.quantize).y, bias)


def weight_only_backward(plan: LinearPlan, dy: Tensor, x2d: Tensor, weight: Tensor,
                         w_scale: Tensor | None, need_x: bool, need_w: bool,
                         need_w_scale: bool = False, kernels: Kernels = DIRECT) -> tuple:  # fmt: skip
    """(grad_x [M, K], grad_w, grad of w_scale) of the weight-only linear: dy @ w_fq, and the
    masked wgrad GEMM of x itself."""
    grad_x = grad_w = grad_s = None
    if need_x or need_w or need_w_scale:
        # the learned-scale wgrad's epilogue reads a byte mask; the plain wgrad the plan's
        quantize_w = plan.quantize_w_bwd[need_x, "bytes" if need_w_scale else need_w]
        qw = quantize_w(weight, w_scale, kernel=kernels.quantize)
        if need_x:  # the forward's F.linear casts w_fq to x's dtype, then autocast to dy's
            grad_x = torch.mm(dy, qw.y.to(x2d.dtype).to(dy.dtype))
        if need_w or need_w_scale:
            grad_w, grad_s = _weight_grads(plan, dy, x2d.to(dy.dtype), qw, weight, w_scale,
                                           need_w_scale, kernels)  # fmt: skip
    return grad_x, grad_w, grad_s


def bias_grad(dy: Tensor) -> Tensor:
    """grad_bias [N] of dy [M, N]: summed over tokens in fp32, in dy's dtype."""
    return dy.sum(0, dtype=torch.float32).to(dy.dtype)


DOUBLE_BACKWARD_MSG = (
    "triton_qat: the fused QAT linear's STE backward is not differentiable again "
    "(create_graph=True / double backward is not supported). For a gradient penalty, run that "
    "layer with fake_quant disabled, or use triton_qat.reference.qat_linear_ref."
)


# ---------------------------------------------------------------------------------------------
# the eager path


class _QATLinear(torch.autograd.Function):
    """x [M, K] -> [M, N]: the plan's forward; its backward keeps x's int8 state, not x. (The
    caller shapes x and the output: an output that is a view made in here could not be changed
    in place, e.g. by a following ReLU(inplace=True).)"""

    @staticmethod
    def forward(ctx, x2d, weight, bias, w_scale, plan_and_qparams):
        plan, a_qparams = plan_and_qparams  # one argument: each costs apply() host time
        out, xq = forward(plan, x2d, weight, bias, w_scale, a_qparams)
        ctx.save_for_backward(xq.codes, xq.scale, xq.zero_point, xq.mask, weight, w_scale)
        ctx.plan = plan
        return out

    @staticmethod
    def backward(ctx, dy):
        if torch.is_grad_enabled():  # backward(create_graph=True): never a detached gradient
            raise RuntimeError(DOUBLE_BACKWARD_MSG)
        plan, (need_x, need_w, need_b, need_s) = ctx.plan, ctx.needs_input_grad[:4]
        *x_state, weight, w_scale = ctx.saved_tensors
        if weight.dtype is not plan.w_dtype:  # the module was cast since the forward
            weight = saved_weight(weight, plan.w_dtype)
        if w_scale is not None and w_scale.dtype is not _F32:  # (learned scales: fp32)
            w_scale = saved_weight(w_scale, _F32, "weight_scale")
        if torch.compiler.is_compiling():  # compiled autograd traces this: the op, not launches
            grads = torch.ops.triton_qat.qat_linear_backward(
                dy, *x_state, weight, **plan.w_args, w_scale=w_scale,
                need_x=need_x, need_w=need_w, need_bias=need_b, need_w_scale=need_s,
            )  # fmt: skip
            return (*_needed(grads, (need_x, need_w, need_b, need_s)), None)
        grad_x, grad_w, grad_s = backward(plan, dy, *x_state, weight, w_scale, need_x, need_w,
                                          need_s)  # fmt: skip
        grad_b = bias_grad(dy) if need_b else None
        return grad_x, grad_w, grad_b, grad_s, None


def _needed(grads: tuple, needs: tuple) -> tuple:
    """A backward op's gradients, None where not needed (the op returns empty ones there)."""
    return tuple(g if need else None for g, need in zip(grads, needs, strict=True))


class _WeightOnlyLinear(torch.autograd.Function):
    """x [M, K] -> [M, N] on the fake-quantized weight; its backward keeps x. (Shaped by the
    caller, as :class:`_QATLinear`.)"""

    @staticmethod
    def forward(ctx, x2d, weight, bias, w_scale, plan):
        ctx.save_for_backward(x2d, weight, w_scale)
        ctx.plan = plan
        return weight_only_forward(plan, x2d, weight, bias, w_scale)

    @staticmethod
    def backward(ctx, dy):
        if torch.is_grad_enabled():
            raise RuntimeError(DOUBLE_BACKWARD_MSG)
        x2d, weight, w_scale = ctx.saved_tensors
        plan, (need_x, need_w, need_b, need_s) = ctx.plan, ctx.needs_input_grad[:4]
        if weight.dtype is not plan.w_dtype:  # the module was cast since the forward
            weight = saved_weight(weight, plan.w_dtype)
        if w_scale is not None and w_scale.dtype is not _F32:  # (learned scales: fp32)
            w_scale = saved_weight(w_scale, _F32, "weight_scale")
        if torch.compiler.is_compiling():  # compiled autograd traces this: the op, not launches
            grads = torch.ops.triton_qat.weight_only_linear_backward(
                dy, x2d, weight, **plan.w_args, need_x=need_x, need_w=need_w, need_bias=need_b,
                w_scale=w_scale, need_w_scale=need_s,
            )  # fmt: skip
            return (*_needed(grads, (need_x, need_w, need_b, need_s)), None)
        grad_x, grad_w, grad_s = weight_only_backward(plan, dy, x2d, weight, w_scale, need_x,
                                                      need_w, need_s)  # fmt: skip
        grad_b = bias_grad(dy) if need_b else None
        return grad_x, grad_w, grad_b, grad_s, None


class FusedLinear:
    """The fused QAT linear of one (activation, weight) spec pair, as a module calls it per
    forward: ``f(x, weight, bias, w_scale=None, a_qparams=None)`` (:meth:`__call__`).

    ``a_spec`` (None: weight-only) / ``w_spec``: the :class:`~triton_qat.spec.QuantSpec` of the
    input and the weight; ``via_ops``: the function computing the same through the
    ``torch.library`` ops (same arguments), called where :func:`direct` does not hold. Plans are
    kept per key (the shapes, dtypes and devices of every tensor argument) until the configs
    change, and a key's inputs are validated when its plan is made."""

    __slots__ = ("a_spec", "w_spec", "via_ops", "plans", "generation")

    def __init__(self, a_spec: QuantSpec | None, w_spec: QuantSpec, via_ops) -> None:
        self.a_spec, self.w_spec, self.via_ops = a_spec, w_spec, via_ops
        self.plans: dict[tuple, LinearPlan] = {}
        self.generation = -1

    def __call__(self, x: Tensor, weight: Tensor, bias: Tensor | None,
                 w_scale: Tensor | None = None, a_qparams: tuple | None = None) -> Tensor:  # fmt: skip
        """x [..., K] (fp32 / fp16 / bf16) -> [..., N] in x's dtype. ``w_scale``: the weight's
        given scales ([N, G] fp32: learned; torch.ao's as [N, 1]); ``a_qparams``: the input's given
        per-tensor (scale [1, 1] fp32, zero point [1, 1] int32) (torch.ao)."""
        a_scale = a_qparams[0] if a_qparams is not None else None
        plain = type(x) in _PLAIN and type(weight) in _PLAIN and (
            bias is None or type(bias) in _PLAIN) and (
            w_scale is None or type(w_scale) in _PLAIN) and (
            a_scale is None or type(a_scale) in _PLAIN)  # fmt: skip
        if not plain or not direct():
            return self.via_ops(x, weight, bias, w_scale, a_qparams)
        try:
            key = (x.shape, x.dtype, x.device, weight.shape, weight.dtype, weight.device,
                   None if bias is None else (bias.shape, bias.dtype, bias.device),
                   None if w_scale is None else (w_scale.shape, w_scale.dtype, w_scale.device),
                   a_scale is None)  # fmt: skip
        except AttributeError:  # not a tensor: the checks say which argument
            key = None
        if self.generation != autotune.GENERATION[0]:  # the configs changed: decide again
            self.plans, self.generation = {}, autotune.GENERATION[0]
        plan = self.plans.get(key)
        if plan is None:
            plan = self._plan(key, x, weight, bias, w_scale, a_scale)
        x2d = x.reshape(-1, plan.K)  # the output is the GEMM's own, viewed out here
        if plan.gemm is None:
            out = _WeightOnlyLinear.apply(x2d, weight, bias, w_scale, plan)
        else:
            out = _QATLinear.apply(x2d, weight, bias, w_scale, (plan, a_qparams))
        return out.view(x.shape[:-1] + (plan.N,))

    def __reduce__(self):  # pickles and deep-copies without its plans (they hold launchers)
        return FusedLinear, (self.a_spec, self.w_spec, self.via_ops)

    def _plan(self, key, x, weight, bias, w_scale, a_scale) -> LinearPlan:
        """Validate the inputs of a new key, then make and keep its plan."""
        check_linear_inputs(x, weight, bias)
        N, K = weight.shape
        w_spec = self.w_spec
        if w_spec.group_size is not None:  # the weight may have changed since the config was set
            check_group(w_spec.group_size, K, "weight.group_size")
        if w_scale is not None:
            check_qparams(w_scale, None, N, max(K, 1) // self.w_spec.group_for(K), x.device, "w_")
        plan = dispatch.linear_plan(
            x.numel() // max(K, 1), K, N, x.dtype, weight.dtype, x.device, self.a_spec,
            self.w_spec, has_bias=bias is not None, x_qparams_given=a_scale is not None,
            w_scale_given=w_scale is not None,
        )  # fmt: skip
        if len(self.plans) >= 64:  # a bound for inputs whose shapes keep changing
            self.plans.clear()
        self.plans[key] = plan
        return plan
