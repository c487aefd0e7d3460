"""torch.library custom ops in the ``triton_qat`` namespace, their fake (meta) kernels and autograd.

Ops (all opaque to torch.compile, each with a ``register_fake`` so it traces without running):

* ``triton_qat::quantize``        codes / qparams / clamp mask / code sums of a 2-D tensor.
* ``triton_qat::fake_quantize``   fake-quantized values + mask; autograd = straight-through estimator.
* ``triton_qat::int8_linear``     the int8 GEMM with dequantizing epilogue (inference).
* ``triton_qat::qat_linear``      fused QAT linear forward; returns the output and the int8 state
                                  kept for backward; autograd registered with ``register_autograd``.
* ``triton_qat::qat_linear_backward``  grad_x / grad_w / grad_bias from that state.

Data flows one way: module -> these ops -> launchers in ``triton_qat.kernels`` -> kernels.
"""

import math

import torch
from torch import Tensor

from triton_qat.kernels.gemm_backward import dgrad, wgrad
from triton_qat.kernels.gemm_int8 import int8_linear as _int8_linear
from triton_qat.kernels.quantize import eps_for, qparams_ref, quantize_rows

_EMPTY = (0,)


def _per_tensor_qparams(x: Tensor, qmin: int, qmax: int, symmetric: bool):
    """Family-1 per-tensor qparams (in x's dtype), [1, 1] fp32 scale and int32 zero point."""
    if x.numel() == 0:
        one = torch.ones((1, 1), dtype=torch.float32, device=x.device)
        return one, torch.zeros((1, 1), dtype=torch.int32, device=x.device)
    s, zp = qparams_ref(x.amin(), x.amax(), qmin, qmax, symmetric, eps_for(x.dtype))
    return s.reshape(1, 1), zp.reshape(1, 1)


def _quantize(x2d, qmin, qmax, group_size, symmetric, per_tensor, scale, zero_point, **kw):
    if scale is None and per_tensor:
        scale, zero_point = _per_tensor_qparams(x2d, qmin, qmax, symmetric)
    return quantize_rows(
        x2d, qmin, qmax, group_size, symmetric, scale=scale, zero_point=zero_point, **kw
    )


# ---------------------------------------------------------------------------------------------
# quantize


@torch.library.custom_op("triton_qat::quantize", mutates_args=())
def quantize(
    x: Tensor,
    qmin: int,
    qmax: int,
    group_size: int,
    symmetric: bool,
    per_tensor: bool,
    pack_mask: bool,
    scale: Tensor | None,
    zero_point: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Quantize x [R, C]: (codes int8 [R, C], scale fp32 [R, G], zero_point int32 [R, G],
    mask uint8 [R, ceil(C/8)] bits if pack_mask else [R, C], code_sum int32 [R, G])."""
    q = _quantize(
        x, qmin, qmax, group_size, symmetric, per_tensor, scale, zero_point, pack_mask=pack_mask
    )
    return q.codes, q.scale, q.zero_point, q.mask, q.code_sum


@quantize.register_fake
def _(x, qmin, qmax, group_size, symmetric, per_tensor, pack_mask, scale, zero_point):
    R, C = x.shape
    G = C // group_size
    mask_cols = (C + 7) // 8 if pack_mask else C
    return (
        x.new_empty((R, C), dtype=torch.int8),
        x.new_empty((R, G), dtype=torch.float32),
        x.new_empty((R, G), dtype=torch.int32),
        x.new_empty((R, mask_cols), dtype=torch.uint8),
        x.new_empty((R, G), dtype=torch.int32),
    )


# ---------------------------------------------------------------------------------------------
# fake_quantize (differentiable, STE)


@torch.library.custom_op("triton_qat::fake_quantize", mutates_args=())
def fake_quantize(
    x: Tensor,
    qmin: int,
    qmax: int,
    group_size: int,
    symmetric: bool,
    per_tensor: bool,
    scale: Tensor | None,
    zero_point: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Fake-quantize x [R, C]: (y [R, C] in x.dtype, keep-mask uint8 [R, C])."""
    q = _quantize(
        x,
        qmin,
        qmax,
        group_size,
        symmetric,
        per_tensor,
        scale,
        zero_point,
        pack_mask=False,
        with_y=True,
    )
    return q.y, q.mask


@fake_quantize.register_fake
def _(x, qmin, qmax, group_size, symmetric, per_tensor, scale, zero_point):
    return x.new_empty(x.shape), x.new_empty(x.shape, dtype=torch.uint8)  # contiguous, as real


def _fake_quantize_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1])


def _fake_quantize_backward(ctx, grad_y, _grad_mask):
    (mask,) = ctx.saved_tensors
    grad_x = torch.where(
        mask.to(torch.bool), grad_y, torch.zeros((), dtype=grad_y.dtype, device=grad_y.device)
    )
    return grad_x, None, None, None, None, None, None, None


fake_quantize.register_autograd(_fake_quantize_backward, setup_context=_fake_quantize_setup)


# ---------------------------------------------------------------------------------------------
# int8_linear (inference GEMM)


@torch.library.custom_op("triton_qat::int8_linear", mutates_args=())
def int8_linear(
    x_codes: Tensor,
    x_scale: Tensor,
    x_zero_point: Tensor,
    w_codes: Tensor,
    w_scale: Tensor,
    w_code_sum: Tensor,
    bias: Tensor | None,
    out_dtype: torch.dtype,
) -> Tensor:
    """x_fq @ w_fq.T + bias from codes: x [M, K] int8 with [M, 1] qparams, w [N, K] int8 with
    [N, G] scales and code sums. Returns [M, N] in out_dtype."""
    return _int8_linear(
        x_codes, x_scale, x_zero_point, w_codes, w_scale, w_code_sum, bias, out_dtype
    )


@int8_linear.register_fake
def _(x_codes, x_scale, x_zero_point, w_codes, w_scale, w_code_sum, bias, out_dtype):
    return x_codes.new_empty((x_codes.shape[0], w_codes.shape[0]), dtype=out_dtype)


# ---------------------------------------------------------------------------------------------
# qat_linear (fused forward) + qat_linear_backward


@torch.library.custom_op("triton_qat::qat_linear", mutates_args=())
def qat_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    a_qmin: int,
    a_qmax: int,
    a_symmetric: bool,
    a_per_tensor: bool,
    a_scale: Tensor | None,
    a_zero_point: Tensor | None,
    w_qmin: int,
    w_qmax: int,
    w_group_size: int,
    w_per_tensor: bool,
    w_scale: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Fused fake-quantized linear forward.

    x [..., K] and weight [N, K] (same float dtype), bias [N] or None. Activations are quantized
    per token (or per tensor, or with the given ``a_scale``/``a_zero_point``), the weight per
    channel / per group of ``w_group_size`` / per tensor (or with the given ``w_scale``), all
    symmetric for the weight. Returns ``(out [..., N], x_codes [M, K] int8, x_scale [M, 1],
    x_zero_point [M, 1], x_mask [M, ceil(K/8)] bits, w_codes [N, K] int8, w_scale [N, G],
    w_mask [N, K] uint8)``; everything after ``out`` is the state the backward needs (x itself
    is not kept).
    """
    K = x.shape[-1]
    N = weight.shape[0]
    x2d = x.reshape(-1, K)
    qa = _quantize(
        x2d, a_qmin, a_qmax, K, a_symmetric, a_per_tensor, a_scale, a_zero_point, pack_mask=True
    )
    qw = _quantize(
        weight, w_qmin, w_qmax, w_group_size, True, w_per_tensor, w_scale, None, pack_mask=False
    )
    asym = not a_symmetric or a_zero_point is not None
    out = _int8_linear(
        qa.codes,
        qa.scale,
        qa.zero_point,
        qw.codes,
        qw.scale,
        qw.code_sum,
        bias,
        x.dtype,
        asymmetric=asym,
    )
    return (
        out.reshape(*x.shape[:-1], N),
        qa.codes,
        qa.scale,
        qa.zero_point,
        qa.mask,
        qw.codes,
        qw.scale,
        qw.mask,
    )


@qat_linear.register_fake
def _(
    x,
    weight,
    bias,
    a_qmin,
    a_qmax,
    a_symmetric,
    a_per_tensor,
    a_scale,
    a_zero_point,
    w_qmin,
    w_qmax,
    w_group_size,
    w_per_tensor,
    w_scale,
):
    K = x.shape[-1]
    N = weight.shape[0]
    M = math.prod(x.shape[:-1])
    G = K // w_group_size
    return (
        x.new_empty((*x.shape[:-1], N)),
        x.new_empty((M, K), dtype=torch.int8),
        x.new_empty((M, 1), dtype=torch.float32),
        x.new_empty((M, 1), dtype=torch.int32),
        x.new_empty((M, (K + 7) // 8), dtype=torch.uint8),
        x.new_empty((N, K), dtype=torch.int8),
        x.new_empty((N, G), dtype=torch.float32),
        x.new_empty((N, K), dtype=torch.uint8),
    )


@torch.library.custom_op("triton_qat::qat_linear_backward", mutates_args=())
def qat_linear_backward(
    grad_out: Tensor,
    x_codes: Tensor,
    x_scale: Tensor,
    x_zero_point: Tensor,
    x_mask: Tensor,
    w_codes: Tensor,
    w_scale: Tensor,
    w_mask: Tensor,
    need_x: bool,
    need_w: bool,
    need_bias: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """STE gradients from the state :func:`qat_linear` returned: (grad_x [M, K], grad_w [N, K],
    grad_bias [N]) in grad_out's dtype; a gradient that is not needed comes back empty ([0])."""
    N = w_codes.shape[0]
    dy = grad_out.reshape(-1, N)
    grad_x = dgrad(dy, w_codes, w_scale, x_mask) if need_x else dy.new_empty(_EMPTY)
    grad_w, grad_b = dy.new_empty(_EMPTY), dy.new_empty(_EMPTY)  # distinct: outputs may not alias
    if need_w:
        grad_w, db = wgrad(dy, x_codes, x_scale, x_zero_point, w_mask, need_bias)
        grad_b = db if db is not None else grad_b
    elif need_bias:
        grad_b = dy.sum(0, dtype=torch.float32).to(dy.dtype)
    return grad_x, grad_w, grad_b


@qat_linear_backward.register_fake
def _(
    grad_out,
    x_codes,
    x_scale,
    x_zero_point,
    x_mask,
    w_codes,
    w_scale,
    w_mask,
    need_x,
    need_w,
    need_bias,
):
    new = grad_out.new_empty
    return (
        new(tuple(x_codes.shape)) if need_x else new(_EMPTY),
        new(tuple(w_codes.shape)) if need_w else new(_EMPTY),
        new((w_codes.shape[0],)) if need_bias else new(_EMPTY),
    )


def _qat_linear_setup(ctx, inputs, output):
    x, weight, bias = inputs[:3]
    ctx.save_for_backward(*output[1:])
    ctx.x_shape = x.shape
    ctx.has_bias = bias is not None


def _qat_linear_backward(ctx, grad_out, *_unused):
    x_codes, x_scale, x_zp, x_mask, w_codes, w_scale, w_mask = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    with torch.no_grad():  # the STE gradients are not differentiated again (no double backward)
        grad_x, grad_w, grad_b = qat_linear_backward(
            grad_out,
            x_codes,
            x_scale,
            x_zp,
            x_mask,
            w_codes,
            w_scale,
            w_mask,
            need_x,
            need_w,
            need_b and ctx.has_bias,
        )
    grad_x = grad_x.reshape(ctx.x_shape) if need_x else None
    return (
        grad_x,
        grad_w if need_w else None,
        grad_b if need_b and ctx.has_bias else None,
        *([None] * 11),
    )


qat_linear.register_autograd(_qat_linear_backward, setup_context=_qat_linear_setup)
