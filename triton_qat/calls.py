"""How the library calls its ops: straight to their implementations in plain eager mode, through
``torch.ops.triton_qat`` everywhere else.

A ``torch.library.custom_op`` call costs host time before anything launches: argument defaults
filled from the schema, the dispatcher, the generated autograd wrapper, Dynamo's disable guard
and the output aliasing check; a forward makes two op calls, a backward one more. On an H200
machine (torch 2.11) the module's forward went from 810 to 245 us of host time when its calls
skipped the dispatcher (``perf/profile_host.py``; perf/RESULTS.md). Every function here has its op's signature and
semantics. When :func:`usable` holds it runs the op's implementation (``triton_qat.ops.*_impl``),
with autograd from a ``torch.autograd.Function`` built from the op's own ``setup_context`` and
backward, so both paths compute the same bits. Otherwise it calls the op.

:func:`usable` holds in plain eager code on plain tensors. It does not hold under
``torch.compile`` or export (Dynamo sees the ops), ``torch.jit.trace`` (it records the ops),
functorch transforms (their vmap rules are the ops'), forward-mode AD, the torch profiler (its
traces name the ops), torch function / dispatch modes (FakeTensorMode, FlopCounterMode, ...) or
tensor subclasses (DTensor, FakeTensor), or after ``set_enabled(False)``.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as _forward_ad
from torch import Tensor

from triton_qat import ops

_ENABLED = [True]
_PLAIN = (torch.Tensor, torch.nn.Parameter)
_op = torch.ops.triton_qat

try:
    from torch._C._functorch import peek_interpreter_stack as _functorch_level
except ImportError:  # pragma: no cover - a torch build without functorch's C module

    def _functorch_level():
        return None


def set_enabled(enabled: bool) -> bool:
    """Switch the direct path on or off (off: every call goes through ``torch.ops.triton_qat``);
    returns the previous setting."""
    prev = _ENABLED[0]
    _ENABLED[0] = bool(enabled)
    return prev


def usable(*tensors: Tensor | None) -> bool:
    """True where a call may skip the dispatcher: eager, no transform or mode active, and every
    given tensor a plain ``torch.Tensor`` (or ``nn.Parameter``)."""
    if not _ENABLED[0] or torch.compiler.is_compiling():
        return False
    if torch._C._is_torch_function_mode_enabled() or torch._C._len_torch_dispatch_stack():
        return False
    if _functorch_level() is not None or torch._C._get_tracing_state() is not None:
        return False  # functorch transforms; torch.jit.trace records the ops, not their launches
    if _forward_ad._current_level >= 0 or torch.autograd._profiler_enabled():
        return False  # forward-mode AD as the ops do it; profiles name the ops
    return all(t is None or type(t) in _PLAIN for t in tensors)


# ---------------------------------------------------------------------------------------------
# ops without autograd: their outputs never require grad, as the ops' are


def quantize(x, qmin, qmax, group_size, symmetric, per_tensor, pack_mask, scale, zero_point,
             asym_weight=False, sum_group=0, with_sums=True):  # fmt: skip
    """``torch.ops.triton_qat.quantize``."""
    args = (x, qmin, qmax, group_size, symmetric, per_tensor, pack_mask, scale, zero_point,
            asym_weight, sum_group, with_sums)  # fmt: skip
    if not usable(x, scale, zero_point):
        return _op.quantize(*args)
    with torch.no_grad():
        return ops.quantize_impl(*args)


def int8_linear(x_codes, x_scale, x_zero_point, w_codes, w_scale, w_code_sum, bias, out_dtype,
                w_zero_point=None, x_code_sum=None, w_dtype=None, w_code_offset=0):  # fmt: skip
    """``torch.ops.triton_qat.int8_linear``."""
    args = (x_codes, x_scale, x_zero_point, w_codes, w_scale, w_code_sum, bias, out_dtype,
            w_zero_point, x_code_sum, w_dtype, w_code_offset)  # fmt: skip
    if not usable(x_codes, x_scale, x_zero_point, w_codes, w_scale, w_code_sum, bias,
                  w_zero_point, x_code_sum):  # fmt: skip
        return _op.int8_linear(*args)
    with torch.no_grad():
        return ops.int8_linear_impl(*args)


# ---------------------------------------------------------------------------------------------
# ops with autograd: the op's setup_context and backward around its implementation


def _function(name: str, impl, setup_context, backward, backward_call, n_outputs: int = 1):
    """A ``torch.autograd.Function`` running ``impl`` with the op's autograd: ``setup_context``
    (ctx, inputs, output) and ``backward`` (ctx, *grads, backward=...), whose backward op is
    called through ``backward_call``. Outputs after the first are not differentiable."""

    def forward(ctx, *inputs):
        output = impl(*inputs)
        setup_context(ctx, inputs, output)
        if n_outputs > 1:
            ctx.mark_non_differentiable(*output[1:])
        return output

    def backward_fn(ctx, *grads):
        return backward(ctx, *grads, backward=backward_call)

    return type(name, (torch.autograd.Function,), {
        "forward": staticmethod(forward), "backward": staticmethod(backward_fn),
    })  # fmt: skip


def _fake_quantize_backward(ctx, grad_y, grad_mask, backward=None):
    return ops._fake_quantize_backward(ctx, grad_y, grad_mask)


def qat_linear_backward(grad_out, x_codes, x_scale, x_zero_point, x_mask, weight, w_qmin, w_qmax,
                        w_group_size, w_per_tensor, w_scale, need_x, need_w, need_bias,
                        w_symmetric=True, need_w_scale=False):  # fmt: skip
    """``torch.ops.triton_qat.qat_linear_backward``."""
    args = (grad_out, x_codes, x_scale, x_zero_point, x_mask, weight, w_qmin, w_qmax,
            w_group_size, w_per_tensor, w_scale, need_x, need_w, need_bias, w_symmetric,
            need_w_scale)  # fmt: skip
    if not usable(grad_out, x_codes, x_scale, x_zero_point, x_mask, weight, w_scale):
        return _op.qat_linear_backward(*args)
    return ops.qat_linear_backward_impl(*args)


def weight_only_linear_backward(grad_out, x, weight, w_qmin, w_qmax, w_group_size, w_symmetric,
                                w_per_tensor, need_x, need_w, need_bias, w_scale=None,
                                need_w_scale=False):  # fmt: skip
    """``torch.ops.triton_qat.weight_only_linear_backward``."""
    args = (grad_out, x, weight, w_qmin, w_qmax, w_group_size, w_symmetric, w_per_tensor, need_x,
            need_w, need_bias, w_scale, need_w_scale)  # fmt: skip
    if not usable(grad_out, x, weight, w_scale):
        return _op.weight_only_linear_backward(*args)
    return ops.weight_only_linear_backward_impl(*args)


_FakeQuantize = _function("FakeQuantize", ops.fake_quantize_impl, ops._fake_quantize_setup,
                          _fake_quantize_backward, None, n_outputs=2)  # fmt: skip
_QATLinear = _function("QATLinear", ops.qat_linear_impl, ops._qat_linear_setup,
                       ops._qat_linear_backward, qat_linear_backward)  # fmt: skip
_WeightOnlyLinear = _function("WeightOnlyLinear", ops.weight_only_linear_impl,
                              ops._weight_only_setup, ops._weight_only_backward,
                              weight_only_linear_backward)  # fmt: skip


def fake_quantize(x, qmin, qmax, group_size, symmetric, per_tensor, scale, zero_point,
                  asym_weight=False):  # fmt: skip
    """``torch.ops.triton_qat.fake_quantize``."""
    args = (x, qmin, qmax, group_size, symmetric, per_tensor, scale, zero_point, asym_weight)
    if not usable(x, scale, zero_point):
        return _op.fake_quantize(*args)
    return _FakeQuantize.apply(*args)


def qat_linear(x, x_codes, x_scale, x_zero_point, x_mask, weight, bias, a_asymmetric, w_qmin,
               w_qmax, w_group_size, w_per_tensor, w_scale, w_symmetric=True,
               x_code_sum=None):  # fmt: skip
    """``torch.ops.triton_qat.qat_linear``."""
    args = (x, x_codes, x_scale, x_zero_point, x_mask, weight, bias, a_asymmetric, w_qmin, w_qmax,
            w_group_size, w_per_tensor, w_scale, w_symmetric, x_code_sum)  # fmt: skip
    if not usable(x, x_codes, x_scale, x_zero_point, x_mask, weight, bias, w_scale, x_code_sum):
        return _op.qat_linear(*args)
    return _QATLinear.apply(*args)


def weight_only_linear(x, weight, bias, w_qmin, w_qmax, w_group_size, w_symmetric, w_per_tensor,
                       w_scale=None):  # fmt: skip
    """``torch.ops.triton_qat.weight_only_linear``."""
    args = (x, weight, bias, w_qmin, w_qmax, w_group_size, w_symmetric, w_per_tensor, w_scale)
    if not usable(x, weight, bias, w_scale):
        return _op.weight_only_linear(*args)
    return _WeightOnlyLinear.apply(*args)
