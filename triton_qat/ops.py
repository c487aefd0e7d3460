"""torch.library custom ops in the ``triton_qat`` namespace, their fake (meta) kernels and autograd.

Ops (``torch.library.triton_op``: on CUDA, ``torch.compile`` decomposes each into its Triton
kernels and launches them from its own generated code, with the launch configs decided while
tracing; elsewhere each runs an opaque twin, ``triton_qat::<name>_opaque``, that compile calls as
it is: see :func:`_run`):

* ``triton_qat::quantize``        codes / qparams / clamp mask / code sums of a 2-D tensor.
* ``triton_qat::fake_quantize``   fake-quantized values + mask; autograd = straight-through estimator.
* ``triton_qat::int8_linear``     the int8 GEMM with dequantizing epilogue (inference).
* ``triton_qat::qat_linear``      fused QAT linear forward; returns the output and the int8 state
                                  kept for backward; autograd registered with ``register_autograd``.
* ``triton_qat::qat_linear_backward``  grad_x / grad_w / grad_bias (/ grad of learned weight
                                  scales) from that state.
* ``triton_qat::weight_only_linear``  weight-only QAT linear: ``x @ fake_quantize(weight).T + bias``
                                  (a float GEMM; STE autograd keeps x and the weight parameter).
* ``triton_qat::weight_only_linear_backward``  its gradients.

Every op checks its arguments (shapes, dtypes, devices, qparam shapes) before launching, in the
real and the fake implementation alike, with an error naming the argument
(:mod:`triton_qat.op_checks`). Call them with keyword
arguments built by :class:`triton_qat.spec.QuantSpec` (``spec.quantize_args(...)``,
``spec.linear_args(...)``). Data flows one way: module -> these ops -> :mod:`triton_qat.dispatch`
-> launchers in ``triton_qat.kernels`` -> kernels. Numerics: docs/numerics.md.
"""

import torch
from torch import Tensor

from triton_qat import dispatch, fused
from triton_qat.checks import FLOAT_DTYPES, saved_weights
from triton_qat.op_checks import (
    check_backward,
    check_codes_linear,
    check_qat_linear,
    check_quantize,
    check_weight_only,
    check_weight_only_backward,
)
from triton_qat.spec import QuantSpec

float_linear = fused.float_linear  # converted weight-only layers run the same GEMM call

_EMPTY = (0,)


def _quantize(x2d, qmin, qmax, group_size, symmetric, per_tensor, scale, zero_point, **kw):
    if scale is None and per_tensor:
        return dispatch.quantize_per_tensor(x2d, qmin, qmax, symmetric, **kw)
    return dispatch.quantize_rows(
        x2d, qmin, qmax, group_size, symmetric, scale=scale, zero_point=zero_point, **kw
    )


def _run(name: str, impl, on: Tensor, *args):
    """An op's body: ``impl(*args)`` launching kernels ``torch.compile`` can take over (the
    ``wrap_triton``-ped kernels: launched as they are in an eager call, traced into the graph when
    the op is decomposed), where ``on``'s device has them (:func:`dispatch.compilable`); else the
    opaque op ``triton_qat::<name>_opaque`` of the same schema, whose implementation compile
    cannot trace (the interpreter's kernels, the plain-torch twins) and calls as it is."""
    if dispatch.compilable(on):
        return impl(*args, kernels=dispatch.traced_kernels())
    return getattr(torch.ops.triton_qat, f"{name}_opaque")(*args)


def _opaque(fn, impl):
    """``triton_qat::<fn's name>_opaque``: an opaque custom op with ``fn``'s schema running
    ``impl`` (see :func:`_run`); its fake implementation is registered on what this returns."""
    schema = torch.library.infer_schema(fn, mutates_args=())
    return torch.library.custom_op(f"triton_qat::{fn.__name__}_opaque", impl, mutates_args=(),
                                   schema=schema)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# quantize


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
    asym_weight: bool = False,
    sum_group: int = 0,
    with_sums: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Quantize x [R, C]: (codes int8 [R, C], scale fp32 [R, G], zero_point int32 [R, G],
    mask uint8 [R, ceil(C/8)] bits if pack_mask else [R, C], code_sum int32 [R, G]).

    ``asym_weight`` (with ``symmetric=False``): torchao's asymmetric weight qparams instead of the
    family-1 asymmetric ones (docs/numerics.md). ``sum_group`` (a divisor of ``group_size``; 0:
    ``group_size``): code_sum holds the sums over each ``sum_group`` columns, [R, C // sum_group]
    (an activation's sums per weight group, for the zero points of asymmetric weights).
    ``with_sums=False``: no code sums (code_sum is [R, 0]), for a GEMM that applies no weight
    zero points; ``sum_group`` must then be 0."""
    return _run("quantize", quantize_impl, x, x, qmin, qmax, group_size, symmetric, per_tensor,
                pack_mask, scale, zero_point, asym_weight, sum_group, with_sums)  # fmt: skip


def quantize_impl(x, qmin, qmax, group_size, symmetric, per_tensor, pack_mask, scale, zero_point,
                  asym_weight=False, sum_group=0, with_sums=True, kernels=dispatch.DIRECT):  # fmt: skip
    """``triton_qat::quantize``'s implementation (:mod:`triton_qat.calls` calls it directly)."""
    check_quantize(x, qmin, qmax, group_size, symmetric, per_tensor, scale, zero_point,
                    pack_mask, asym_weight, sum_group, with_sums)  # fmt: skip
    q = _quantize(x, qmin, qmax, group_size, symmetric, per_tensor, scale, zero_point,
                  pack_mask=pack_mask, asym_weight=asym_weight, sum_group=sum_group or None,
                  write_sums=with_sums, kernels=kernels)  # fmt: skip
    return q.codes, q.scale, q.zero_point, q.mask, q.code_sum


_quantize_opaque = _opaque(quantize, quantize_impl)
quantize = torch.library.triton_op("triton_qat::quantize", quantize, mutates_args=())


@_quantize_opaque.register_fake
def _(x, qmin, qmax, group_size, symmetric, per_tensor, pack_mask, scale, zero_point,
      asym_weight=False, sum_group=0, with_sums=True):  # fmt: skip
    check_quantize(x, qmin, qmax, group_size, symmetric, per_tensor, scale, zero_point,
                    pack_mask, asym_weight, sum_group, with_sums)  # fmt: skip
    R, C = x.shape
    G = C // group_size if C else 0  # as the real op: no columns, no groups
    S = (C // sum_group if sum_group else G) if with_sums else 0
    mask_cols = (C + 7) // 8 if pack_mask else C
    return (
        x.new_empty((R, C), dtype=torch.int8),
        x.new_empty((R, G), dtype=torch.float32),
        x.new_empty((R, G), dtype=torch.int32),
        x.new_empty((R, mask_cols), dtype=torch.uint8),
        x.new_empty((R, S), dtype=torch.int32),
    )


# ---------------------------------------------------------------------------------------------
# fake_quantize (differentiable, STE)


def fake_quantize(
    x: Tensor,
    qmin: int,
    qmax: int,
    group_size: int,
    symmetric: bool,
    per_tensor: bool,
    scale: Tensor | None,
    zero_point: Tensor | None,
    asym_weight: bool = False,
) -> tuple[Tensor, Tensor]:
    """Fake-quantize x [R, C]: (y [R, C] in x.dtype, keep-mask uint8 [R, C]). ``asym_weight``: as
    in ``triton_qat::quantize``."""
    return _run("fake_quantize", fake_quantize_impl, x, x, qmin, qmax, group_size, symmetric,
                per_tensor, scale, zero_point, asym_weight)  # fmt: skip


def fake_quantize_impl(x, qmin, qmax, group_size, symmetric, per_tensor, scale, zero_point,
                       asym_weight=False, kernels=dispatch.DIRECT):  # fmt: skip
    """``triton_qat::fake_quantize``'s implementation (its forward, without autograd)."""
    check_quantize(x, qmin, qmax, group_size, symmetric, per_tensor, scale, zero_point,
                    asym_weight=asym_weight)  # fmt: skip
    q = _quantize(x, qmin, qmax, group_size, symmetric, per_tensor, scale, zero_point,
                  pack_mask=False, with_y=True, asym_weight=asym_weight,
                  kernels=kernels)  # fmt: skip
    return q.y, q.mask


_fake_quantize_opaque = _opaque(fake_quantize, fake_quantize_impl)
fake_quantize = torch.library.triton_op("triton_qat::fake_quantize", fake_quantize, mutates_args=())


@_fake_quantize_opaque.register_fake
def _(x, qmin, qmax, group_size, symmetric, per_tensor, scale, zero_point, asym_weight=False):
    check_quantize(x, qmin, qmax, group_size, symmetric, per_tensor, scale, zero_point,
                    asym_weight=asym_weight)  # fmt: skip
    return x.new_empty(x.shape), x.new_empty(x.shape, dtype=torch.uint8)  # contiguous, as real


def _fake_quantize_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1])


def _fake_quantize_backward(ctx, grad_y, _grad_mask):
    # plain torch ops: a second-order graph through the STE is correct (the mask is a constant)
    (mask,) = ctx.saved_tensors
    grad_x = torch.where(
        mask.to(torch.bool), grad_y, torch.zeros((), dtype=grad_y.dtype, device=grad_y.device)
    )
    return grad_x, None, None, None, None, None, None, None, None


fake_quantize.register_autograd(_fake_quantize_backward, setup_context=_fake_quantize_setup)


# ---------------------------------------------------------------------------------------------
# int8_linear (inference GEMM)


def int8_linear(
    x_codes: Tensor,
    x_scale: Tensor,
    x_zero_point: Tensor,
    w_codes: Tensor,
    w_scale: Tensor,
    w_code_sum: Tensor,
    bias: Tensor | None,
    out_dtype: torch.dtype,
    w_zero_point: Tensor | None = None,
    x_code_sum: Tensor | None = None,
    w_dtype: torch.dtype | None = None,
    w_code_offset: int = 0,
) -> Tensor:
    """x_fq @ w_fq.T + bias from codes: x [M, K] int8 with [M, 1] qparams, w [N, K] int8 with
    [N, G] scales and code sums. Returns [M, N] in out_dtype. Asymmetric weights: their int32 zero
    points [N, G], and optionally x's code sums per weight group [M, G] (``triton_qat::quantize``
    with ``sum_group``; else they are summed here from the codes). ``w_dtype``: the dtype the
    weight was quantized in (its fake-quantized values are formed there, default out_dtype);
    ``w_code_offset``: the shift its codes and zero points are stored with (-128 for ranges past
    127)."""
    return _run("int8_linear", int8_linear_impl, x_codes, x_codes, x_scale, x_zero_point,
                w_codes, w_scale, w_code_sum, bias, out_dtype, w_zero_point, x_code_sum, w_dtype,
                w_code_offset)  # fmt: skip


def int8_linear_impl(x_codes, x_scale, x_zero_point, w_codes, w_scale, w_code_sum, bias,
                     out_dtype, w_zero_point=None, x_code_sum=None, w_dtype=None,
                     w_code_offset=0, kernels=dispatch.DIRECT):  # fmt: skip
    """``triton_qat::int8_linear``'s implementation."""
    check_codes_linear(x_codes, x_scale, x_zero_point, w_codes, w_scale, w_code_sum, bias,
                        w_zero_point, x_code_sum)  # fmt: skip
    if out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"out_dtype: expected float32, float16 or bfloat16, got {out_dtype}")
    if w_dtype is not None and w_dtype not in FLOAT_DTYPES:
        raise TypeError(f"w_dtype: expected float32, float16 or bfloat16, got {w_dtype}")
    if w_code_offset not in (0, -128):
        raise ValueError(f"w_code_offset: expected 0 or -128, got {w_code_offset}")
    return dispatch.int8_linear(x_codes, x_scale, x_zero_point, w_codes, w_scale, w_code_sum,
                                bias, out_dtype, w_zero_point=w_zero_point,
                                x_code_sum=x_code_sum, w_dtype=w_dtype,
                                w_code_offset=w_code_offset, kernels=kernels)  # fmt: skip


_int8_linear_opaque = _opaque(int8_linear, int8_linear_impl)
int8_linear = torch.library.triton_op("triton_qat::int8_linear", int8_linear, mutates_args=())


@_int8_linear_opaque.register_fake
def _(x_codes, x_scale, x_zero_point, w_codes, w_scale, w_code_sum, bias, out_dtype,
      w_zero_point=None, x_code_sum=None, w_dtype=None, w_code_offset=0):  # fmt: skip
    check_codes_linear(x_codes, x_scale, x_zero_point, w_codes, w_scale, w_code_sum, bias,
                        w_zero_point, x_code_sum)  # fmt: skip
    return x_codes.new_empty((x_codes.shape[0], w_codes.shape[0]), dtype=out_dtype)


# ---------------------------------------------------------------------------------------------
# qat_linear (forward from the activation's quantized state) + qat_linear_backward


def qat_linear(
    x: Tensor,
    x_codes: Tensor,
    x_scale: Tensor,
    x_zero_point: Tensor,
    x_mask: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    a_asymmetric: bool,
    w_qmin: int,
    w_qmax: int,
    w_group_size: int,
    w_per_tensor: bool,
    w_scale: Tensor | None,
    w_symmetric: bool = True,
    x_code_sum: Tensor | None = None,
) -> Tensor:
    """Fake-quantized linear forward from the activation's quantized state.

    x [..., K] (float; read for its shape and dtype only: it is the input autograd differentiates),
    ``x_codes, x_scale, x_zero_point, x_mask`` = the first four outputs of ``triton_qat::quantize``
    of ``x.reshape(-1, K)`` with a bit-packed mask (one op that several linears reading the same
    input share), weight [N, K] (float, any float dtype: quantized in its own dtype, symmetric, per
    channel / per group of ``w_group_size`` / per tensor, or with the given ``w_scale``), bias [N]
    or None. ``w_symmetric=False``: asymmetric weights per channel / per group (torchao's weight
    formula), whose zero points the GEMM applies with x's code sums per weight group
    (``x_code_sum`` [M, K // w_group_size]: ``triton_qat::quantize`` with ``sum_group``; summed
    from the codes when None). Returns [..., N] in x's dtype. The backward keeps the activation
    state and the weight parameter itself: nothing weight-sized is stored (the weight's values and
    mask are re-derived).
    """
    return _run("qat_linear", qat_linear_impl, x, x, x_codes, x_scale, x_zero_point, x_mask,
                weight, bias, a_asymmetric, w_qmin, w_qmax, w_group_size, w_per_tensor, w_scale,
                w_symmetric, x_code_sum)  # fmt: skip


def qat_linear_impl(x, x_codes, x_scale, x_zero_point, x_mask, weight, bias, a_asymmetric,
                    w_qmin, w_qmax, w_group_size, w_per_tensor, w_scale, w_symmetric=True,
                    x_code_sum=None, kernels=dispatch.DIRECT):  # fmt: skip
    """``triton_qat::qat_linear``'s implementation (its forward, without autograd)."""
    check_qat_linear(x, x_codes, x_scale, x_zero_point, x_mask, weight, bias, w_qmin, w_qmax,
                      w_group_size, w_per_tensor, w_scale, w_symmetric, x_code_sum)  # fmt: skip
    plan = _plan(x, weight, w_qmin, w_qmax, w_group_size, w_per_tensor, w_scale, w_symmetric,
                 bias is not None, a_asymmetric)  # fmt: skip
    out = fused.gemm_from_state(plan, x_codes, x_scale, x_zero_point, weight, bias, w_scale,
                                x_code_sum, kernels)  # fmt: skip
    # x [M, K] gets the GEMM's own output: a view made in here could not be changed in place
    return out if x.dim() == 2 else out.view(*x.shape[:-1], weight.shape[0])


def _plan(x, weight, w_qmin, w_qmax, w_group_size, w_per_tensor, w_scale, w_symmetric, has_bias,
          a_asymmetric=True, weight_only=False, rows=None) -> dispatch.LinearPlan:  # fmt: skip
    """The fused linear's plan for an op's arguments: x [..., K] (its dtype and token count;
    ``rows``: the token count where x is not the input, e.g. the backward's grad [M, N])."""
    N, K = weight.shape
    w_spec = QuantSpec(qmin=w_qmin, qmax=w_qmax, symmetric=w_symmetric, per_tensor=w_per_tensor,
                       group_size=None if w_group_size == max(K, 1) else w_group_size,
                       asym_weight=not w_symmetric)  # fmt: skip
    a_spec = None if weight_only else QuantSpec(qmin=-128, qmax=127, symmetric=not a_asymmetric)
    M = x.numel() // max(K, 1) if rows is None else rows
    return dispatch.linear_plan(M, K, N, x.dtype if x.is_floating_point() else weight.dtype,
                                weight.dtype, weight.device, a_spec, w_spec, has_bias=has_bias,
                                w_scale_given=w_scale is not None)  # fmt: skip


_qat_linear_opaque = _opaque(qat_linear, qat_linear_impl)
qat_linear = torch.library.triton_op("triton_qat::qat_linear", qat_linear, mutates_args=())


@_qat_linear_opaque.register_fake
def _(
    x, x_codes, x_scale, x_zero_point, x_mask, weight, bias, a_asymmetric, w_qmin, w_qmax,
    w_group_size, w_per_tensor, w_scale, w_symmetric=True, x_code_sum=None,
):  # fmt: skip
    check_qat_linear(x, x_codes, x_scale, x_zero_point, x_mask, weight, bias, w_qmin, w_qmax,
                      w_group_size, w_per_tensor, w_scale, w_symmetric, x_code_sum)  # fmt: skip
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def qat_linear_backward(
    grad_out: Tensor,
    x_codes: Tensor,
    x_scale: Tensor,
    x_zero_point: Tensor,
    x_mask: Tensor,
    weight: Tensor,
    w_qmin: int,
    w_qmax: int,
    w_group_size: int,
    w_per_tensor: bool,
    w_scale: Tensor | None,
    need_x: bool,
    need_w: bool,
    need_bias: bool,
    w_symmetric: bool = True,
    need_w_scale: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """STE gradients of :func:`qat_linear`: (grad_x [M, K], grad_w [N, K], grad_bias [N]) in
    grad_out's dtype, and with ``need_w_scale`` the gradient of the given (learned, symmetric)
    ``w_scale`` in fp32, its shape (range learning, docs/numerics.md); a gradient that is not
    needed comes back empty ([0]). The weight's fake-quantized values and clamp mask are
    re-derived from ``weight`` (bit-identical to the forward's: same kernel, same input), and x_fq
    is dequantized from the codes, each into a transient buffer that lives only for this call."""
    return _run("qat_linear_backward", qat_linear_backward_impl, grad_out, grad_out, x_codes,
                x_scale, x_zero_point, x_mask, weight, w_qmin, w_qmax, w_group_size,
                w_per_tensor, w_scale, need_x, need_w, need_bias, w_symmetric, need_w_scale)  # fmt: skip


def qat_linear_backward_impl(grad_out, x_codes, x_scale, x_zero_point, x_mask, weight, w_qmin,
                             w_qmax, w_group_size, w_per_tensor, w_scale, need_x, need_w,
                             need_bias, w_symmetric=True, need_w_scale=False,
                             kernels=dispatch.DIRECT):  # fmt: skip
    """``triton_qat::qat_linear_backward``'s implementation."""
    check_backward(grad_out, x_codes, x_scale, x_zero_point, x_mask, weight, w_qmin, w_qmax,
                    w_group_size, w_per_tensor, w_scale, w_symmetric, need_w_scale)  # fmt: skip
    N = weight.shape[0]
    dy = grad_out.reshape(-1, N)
    plan = _plan(dy, weight, w_qmin, w_qmax, w_group_size, w_per_tensor, w_scale, w_symmetric,
                 False, rows=dy.shape[0])  # fmt: skip
    grad_x, grad_w, grad_s = fused.backward(plan, dy, x_codes, x_scale, x_zero_point, x_mask,
                                            weight, w_scale, need_x, need_w, need_w_scale,
                                            kernels)  # fmt: skip
    grad_b = fused.bias_grad(dy) if need_bias else None
    return _or_empty(dy, grad_x, grad_w, grad_b, grad_s)


def _or_empty(like: Tensor, *grads: Tensor | None) -> tuple[Tensor, ...]:
    """``grads`` with each one not computed as its own empty [0] tensor (an op's outputs may not
    alias one another), allocated only for those."""
    return tuple(g if g is not None else like.new_empty(_EMPTY) for g in grads)


_qat_linear_backward_opaque = _opaque(qat_linear_backward, qat_linear_backward_impl)
qat_linear_backward = torch.library.triton_op(
    "triton_qat::qat_linear_backward", qat_linear_backward, mutates_args=()
)


@_qat_linear_backward_opaque.register_fake
def _(
    grad_out, x_codes, x_scale, x_zero_point, x_mask, weight, w_qmin, w_qmax, w_group_size,
    w_per_tensor, w_scale, need_x, need_w, need_bias, w_symmetric=True, need_w_scale=False,
):  # fmt: skip
    check_backward(grad_out, x_codes, x_scale, x_zero_point, x_mask, weight, w_qmin, w_qmax,
                    w_group_size, w_per_tensor, w_scale, w_symmetric, need_w_scale)  # fmt: skip
    new = grad_out.new_empty
    return (
        new(tuple(x_codes.shape)) if need_x else new(_EMPTY),
        new(tuple(weight.shape)) if need_w else new(_EMPTY),
        new((weight.shape[0],)) if need_bias else new(_EMPTY),
        w_scale.new_empty(tuple(w_scale.shape)) if need_w_scale else new(_EMPTY),
    )


_SAVED_ARGS = ("w_qmin", "w_qmax", "w_group_size", "w_per_tensor")


def _qat_linear_setup(ctx, inputs, output):
    x, x_codes, x_scale, x_zp, x_mask, weight, bias, _asym = inputs[:8]
    w_args, w_scale = inputs[8:12], inputs[12]
    ctx.save_for_backward(x_codes, x_scale, x_zp, x_mask, weight, w_scale)
    ctx.w_dtype = weight.dtype
    ctx.w_args = dict(zip(_SAVED_ARGS, w_args, strict=True))
    ctx.w_symmetric = inputs[13] if len(inputs) > 13 else True
    ctx.x_shape = x.shape
    ctx.has_bias = bias is not None


def _qat_linear_backward(ctx, grad_out, backward=None):
    """The registered autograd's backward; :mod:`triton_qat.calls` passes its own ``backward``
    (same signature as ``qat_linear_backward``), which skips the dispatcher."""
    if torch.is_grad_enabled():  # backward(create_graph=True): never return a detached gradient
        raise RuntimeError(fused.DOUBLE_BACKWARD_MSG)
    x_codes, x_scale, x_zp, x_mask, weight, w_scale = ctx.saved_tensors
    weight, w_scale = saved_weights(weight, ctx.w_dtype, w_scale)  # (a module cast since)
    need_x, need_w, need_b, need_s = (ctx.needs_input_grad[i] for i in (0, 5, 6, 12))
    grad_x, grad_w, grad_b, grad_s = (backward or qat_linear_backward)(
        grad_out, x_codes, x_scale, x_zp, x_mask, weight, **ctx.w_args, w_scale=w_scale,
        need_x=need_x, need_w=need_w, need_bias=need_b and ctx.has_bias,
        w_symmetric=ctx.w_symmetric, need_w_scale=need_s,
    )  # fmt: skip
    return (
        grad_x.reshape(ctx.x_shape) if need_x else None,
        None,
        None,
        None,
        None,
        grad_w if need_w else None,  # autograd casts it to the weight's dtype
        grad_b if need_b and ctx.has_bias else None,
        *([None] * 5),
        grad_s if need_s else None,
        None,
        None,
    )


qat_linear.register_autograd(_qat_linear_backward, setup_context=_qat_linear_setup)


# ---------------------------------------------------------------------------------------------
# weight_only_linear (weight-only QAT: float GEMM on the fake-quantized weight) + its backward


def weight_only_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    w_qmin: int,
    w_qmax: int,
    w_group_size: int,
    w_symmetric: bool,
    w_per_tensor: bool,
    w_scale: Tensor | None = None,
) -> Tensor:
    """Weight-only QAT linear: ``F.linear(x, fake_quantize(weight), bias)``, x [..., K] unquantized
    (fp32 / fp16 / bf16), weight [N, K] fake-quantized in its own dtype (symmetric per channel /
    group / tensor, or asymmetric per channel / group; or with the given, e.g. learned, symmetric
    ``w_scale`` [N, G]), the GEMM in x's dtype. Returns [..., N]. The backward keeps x and the
    weight parameter (nothing weight-sized: w_fq and the mask are re-derived from the weight)."""
    return _run("weight_only_linear", weight_only_linear_impl, x, x, weight, bias, w_qmin,
                w_qmax, w_group_size, w_symmetric, w_per_tensor, w_scale)  # fmt: skip


def weight_only_linear_impl(x, weight, bias, w_qmin, w_qmax, w_group_size, w_symmetric,
                            w_per_tensor, w_scale=None, kernels=dispatch.DIRECT):  # fmt: skip
    """``triton_qat::weight_only_linear``'s implementation (its forward, without autograd)."""
    check_weight_only(x, weight, bias, w_qmin, w_qmax, w_group_size, w_symmetric, w_per_tensor,
                       w_scale)  # fmt: skip
    plan = _plan(x, weight, w_qmin, w_qmax, w_group_size, w_per_tensor, w_scale, w_symmetric,
                 bias is not None, weight_only=True)  # fmt: skip
    return fused.weight_only_forward(plan, x, weight, bias, w_scale, kernels)


_weight_only_linear_opaque = _opaque(weight_only_linear, weight_only_linear_impl)
weight_only_linear = torch.library.triton_op(
    "triton_qat::weight_only_linear", weight_only_linear, mutates_args=()
)


@_weight_only_linear_opaque.register_fake
def _(x, weight, bias, w_qmin, w_qmax, w_group_size, w_symmetric, w_per_tensor, w_scale=None):
    check_weight_only(x, weight, bias, w_qmin, w_qmax, w_group_size, w_symmetric, w_per_tensor,
                       w_scale)  # fmt: skip
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def weight_only_linear_backward(
    grad_out: Tensor,
    x: Tensor,
    weight: Tensor,
    w_qmin: int,
    w_qmax: int,
    w_group_size: int,
    w_symmetric: bool,
    w_per_tensor: bool,
    need_x: bool,
    need_w: bool,
    need_bias: bool,
    w_scale: Tensor | None = None,
    need_w_scale: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """STE gradients of :func:`weight_only_linear`, in grad_out's dtype: grad_x = dy @ w_fq
    (a float GEMM), grad_w = (dy^T @ x) * mask_w (the masked GEMM of the fused backward),
    grad_bias = dy summed over tokens, and with ``need_w_scale`` the gradient of the learned
    ``w_scale`` (fp32, reduced in that GEMM's epilogue); a gradient not needed comes back empty
    ([0])."""
    return _run("weight_only_linear_backward", weight_only_linear_backward_impl, grad_out,
                grad_out, x, weight, w_qmin, w_qmax, w_group_size, w_symmetric, w_per_tensor,
                need_x, need_w, need_bias, w_scale, need_w_scale)  # fmt: skip


def weight_only_linear_backward_impl(grad_out, x, weight, w_qmin, w_qmax, w_group_size,
                                     w_symmetric, w_per_tensor, need_x, need_w, need_bias,
                                     w_scale=None, need_w_scale=False,
                                     kernels=dispatch.DIRECT):  # fmt: skip
    """``triton_qat::weight_only_linear_backward``'s implementation."""
    check_weight_only_backward(grad_out, x, weight, w_qmin, w_qmax, w_group_size, w_symmetric,
                                w_per_tensor, w_scale, need_w_scale)  # fmt: skip
    N, K = weight.shape
    dy = grad_out.reshape(-1, N)
    plan = _plan(x, weight, w_qmin, w_qmax, w_group_size, w_per_tensor, w_scale, w_symmetric,
                 False, weight_only=True)  # fmt: skip
    grad_x, grad_w, grad_s = fused.weight_only_backward(
        plan, dy, x.reshape(-1, K), weight, w_scale, need_x, need_w, need_w_scale, kernels
    )
    grad_x = grad_x.reshape(x.shape) if grad_x is not None else None
    grad_b = fused.bias_grad(dy) if need_bias else None
    return _or_empty(dy, grad_x, grad_w, grad_b, grad_s)


_weight_only_linear_backward_opaque = _opaque(
    weight_only_linear_backward, weight_only_linear_backward_impl
)
weight_only_linear_backward = torch.library.triton_op(
    "triton_qat::weight_only_linear_backward", weight_only_linear_backward, mutates_args=()
)


@_weight_only_linear_backward_opaque.register_fake
def _(grad_out, x, weight, w_qmin, w_qmax, w_group_size, w_symmetric, w_per_tensor, need_x,
      need_w, need_bias, w_scale=None, need_w_scale=False):  # fmt: skip
    check_weight_only_backward(grad_out, x, weight, w_qmin, w_qmax, w_group_size, w_symmetric,
                                w_per_tensor, w_scale, need_w_scale)  # fmt: skip
    new = grad_out.new_empty
    return (
        new(tuple(x.shape)) if need_x else new(_EMPTY),
        new(tuple(weight.shape)) if need_w else new(_EMPTY),
        new((weight.shape[0],)) if need_bias else new(_EMPTY),
        w_scale.new_empty(tuple(w_scale.shape)) if need_w_scale else new(_EMPTY),
    )


def _weight_only_setup(ctx, inputs, output):
    x, weight, bias, *w_args = inputs[:8]
    w_scale = inputs[8] if len(inputs) > 8 else None
    ctx.save_for_backward(x, weight, w_scale)
    ctx.w_dtype = weight.dtype
    ctx.w_args = w_args
    ctx.has_bias = bias is not None


def _weight_only_backward(ctx, grad_out, backward=None):
    """As :func:`_qat_linear_backward`, for ``weight_only_linear``."""
    if torch.is_grad_enabled():
        raise RuntimeError(fused.DOUBLE_BACKWARD_MSG)
    x, weight, w_scale = ctx.saved_tensors
    weight, w_scale = saved_weights(weight, ctx.w_dtype, w_scale)  # (a module cast since)
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    need_s = len(ctx.needs_input_grad) > 8 and ctx.needs_input_grad[8]
    need_b = need_b and ctx.has_bias
    grad_x, grad_w, grad_b, grad_s = (backward or weight_only_linear_backward)(
        grad_out, x, weight, *ctx.w_args, need_x, need_w, need_b, w_scale, need_s
    )
    return (
        grad_x if need_x else None,
        grad_w if need_w else None,  # autograd casts it to the weight's dtype
        grad_b if need_b else None,
        *([None] * 5),
        grad_s if need_s else None,
    )


weight_only_linear.register_autograd(_weight_only_backward, setup_context=_weight_only_setup)


# ---------------------------------------------------------------------------------------------
# torch.func.vmap: one op call per batch element (exact for every config: a per-tensor scale is
# per sample under vmap, as a Python loop over samples would compute it)


def _vmap_loop(op, n_out: int):
    def rule(info, in_dims, *args):
        size = info.batch_size
        per_sample = []
        for b in range(size):
            sample = [
                a.select(d, b) if d is not None else a for a, d in zip(args, in_dims, strict=True)
            ]
            per_sample.append(op(*sample))
        if n_out == 1:
            return torch.stack(per_sample), 0
        outs = tuple(torch.stack([s[i] for s in per_sample]) for i in range(n_out))
        return outs, (0,) * n_out

    return rule


quantize.register_vmap(_vmap_loop(quantize, 5))
fake_quantize.register_vmap(_vmap_loop(fake_quantize, 2))
qat_linear.register_vmap(_vmap_loop(qat_linear, 1))
weight_only_linear.register_vmap(_vmap_loop(weight_only_linear, 1))
