"""How the library's modules call the ops other than the fused linear (quantize, int8_linear,
fake_quantize): straight to their implementations in plain eager mode, through
``torch.ops.triton_qat`` everywhere else (the fused linear has its own engine,
:mod:`triton_qat.fused`).

A ``torch.library.custom_op`` call costs host time before anything launches (argument defaults
from the schema, the dispatcher, the generated autograd wrapper, Dynamo's disable guard, the output
aliasing check). Every function here has its op's signature and semantics. When :func:`usable`
holds it runs the op's implementation (``triton_qat.ops.*_impl``), with autograd from a
``torch.autograd.Function`` around the op's own ``setup_context`` and backward, so both paths
compute the same bits. Otherwise it calls the op.

:func:`usable` holds in plain eager code on plain tensors (:func:`triton_qat.fused.direct`: not
under ``torch.compile`` or export, ``torch.jit.trace``, functorch transforms, forward-mode AD, the
torch profiler, torch function / dispatch modes or tensor subclasses, nor after
``set_enabled(False)``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from triton_qat import fused, ops

_PLAIN = (torch.Tensor, torch.nn.Parameter)
_op = torch.ops.triton_qat
set_enabled = fused.set_enabled  # one switch for every direct path


def usable(*tensors: Tensor | None) -> bool:
    """True where a call may skip the dispatcher: eager, no transform or mode active
    (:func:`triton_qat.fused.direct`), and every given tensor a plain ``torch.Tensor`` (or
    ``nn.Parameter``)."""
    for t in tensors:
        if t is not None and type(t) not in _PLAIN:
            return False
    return fused.direct()


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
# fake_quantize (autograd: the op's setup_context and backward around its implementation)


class _FakeQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, *inputs):
        y, mask = ops.fake_quantize_impl(*inputs)
        ops._fake_quantize_setup(ctx, inputs, (y, mask))
        ctx.mark_non_differentiable(mask)
        return y, mask

    @staticmethod
    def backward(ctx, grad_y, grad_mask):
        return ops._fake_quantize_backward(ctx, grad_y, grad_mask)


def fake_quantize(x, qmin, qmax, group_size, symmetric, per_tensor, scale, zero_point,
                  asym_weight=False):  # fmt: skip
    """``torch.ops.triton_qat.fake_quantize``."""
    args = (x, qmin, qmax, group_size, symmetric, per_tensor, scale, zero_point, asym_weight)
    if not usable(x, scale, zero_point):
        return _op.fake_quantize(*args)
    return _FakeQuantize.apply(*args)
