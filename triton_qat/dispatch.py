"""Which implementation runs (`backend`), and the one place that turns a launch's key into a launch.

Three backends, by the tensor's device:

* ``"triton"``: CUDA tensors run the Triton kernels.
* ``"triton-interpreter"``: CPU tensors run the same kernels in Triton's interpreter when
  ``TRITON_INTERPRET=1`` is set before import (slow; what the test suite exercises).
* ``"torch"``: any other tensor (CPU without the interpreter) runs the plain-torch twins in
  ``kernels/*_torch.py``, which the tests hold bit-identical to the kernels.

Decide once, launch many times: a ``*_launch`` function takes a launch's key (the rows' bucket,
the other sizes, dtypes, device, flags), asks :mod:`triton_qat.autotune` for its config, makes the
launcher's plan (``kernels.*.plan_*``) and returns a callable that only allocates and launches
(``kernels.*.launch_*``, or the plain-torch twin), kept per key until the configs change
(:data:`triton_qat.autotune.GENERATION`). :func:`linear_plan` bundles the launches of one
fused linear. The per-call functions below (:func:`quantize_rows`, :func:`int8_linear`, ...) are
the same launches for callers that hold no plan (the ``torch.library`` ops). Kernels never look
configs up themselves.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch

from triton_qat import autotune
from triton_qat.kernels._common import INTERPRET
from triton_qat.kernels.dequantize import _dequantize_kernel, launch_dequantize, plan_dequantize
from triton_qat.kernels.dequantize_torch import dequantize_rows_torch
from triton_qat.kernels.gemm_backward import launch_backward, plan_dgrad, plan_wgrad
from triton_qat.kernels.gemm_backward import wgrad as _wgrad
from triton_qat.kernels.gemm_backward_torch import dgrad_torch, wgrad_torch
from triton_qat.kernels.gemm_float import _float_mm_kernel
from triton_qat.kernels.gemm_int8 import (
    _int8_linear_kernel,
    fwd_mode,
    launch_int8_linear,
    plan_int8_linear,
)
from triton_qat.kernels.gemm_int8_gluon import hopper_gluon_device
from triton_qat.kernels.gemm_int8_torch import int8_linear_torch
from triton_qat.kernels.quantize import (
    Quantized,
    _quantize_rows_kernel,
    launch_quantize,
    nan_per_row,
    plan_quantize,
)
from triton_qat.kernels.quantize import code_offset as code_offset  # ops: a weight's code shift
from triton_qat.kernels.quantize_torch import per_tensor_qparams, quantize_rows_torch
from triton_qat.kernels.ste_mask import _zero_masked_kernel

BACKENDS = ("triton", "triton-interpreter", "torch")


def backend(device: torch.device | str | None = None) -> str:
    """The implementation that runs on ``device`` (default: CUDA if available, else CPU):
    ``"triton"``, ``"triton-interpreter"`` or ``"torch"`` (see the module docstring)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    kind = torch.device(device).type
    if kind == "cuda":
        return "triton-interpreter" if INTERPRET else "triton"
    return "triton-interpreter" if INTERPRET and kind == "cpu" else "torch"


def use_kernels(t: torch.Tensor) -> bool:
    return backend(t.device) != "torch"


def compilable(t: torch.Tensor) -> bool:
    """Whether ``torch.compile`` may launch the kernels of an op on ``t`` from its own generated
    code (``torch.library.triton_op``): CUDA tensors on NVIDIA's compiled Triton (the kernels'
    GPU-only forms are PTX), not the interpreter, not the plain-torch twins."""
    return t.is_cuda and not INTERPRET and torch.version.hip is None


class Kernels(NamedTuple):
    """The kernel objects a launch callable runs (``kernel=`` / ``kernels=`` of the launches):
    :data:`DIRECT` (None: each launcher's own kernel, launched by ``JITFunction.run``) in eager
    code, :func:`traced_kernels` in an op body ``torch.compile`` decomposes."""

    quantize: object = None
    int8: tuple | None = None  # (int8 GEMM, dequantize, float GEMM): the forward's three
    dequantize: object = None
    float_mm: object = None
    zero_masked: object = None  # the backward GEMMs' mask pass after torch.mm (CUBLAS configs)


DIRECT = Kernels()


def traced_kernels() -> Kernels:
    """Every kernel wrapped by ``torch.library.wrap_triton`` (the kernel itself where wrapping is
    off, as in an op's eager call), for the launches of a ``triton_op`` body. The forward's is
    the Triton kernel even for a ``GLUON`` config: ``wrap_triton`` cannot trace a Gluon kernel
    (its analysis compiles a plain Triton source), and the outputs are the same bits."""
    wrap = torch.library.wrap_triton
    dq, mm = wrap(_dequantize_kernel), wrap(_float_mm_kernel)
    return Kernels(wrap(_quantize_rows_kernel), (wrap(_int8_linear_kernel), dq, mm), dq, mm,
                   wrap(_zero_masked_kernel))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# launches kept per key


_LAUNCHES: dict[tuple, object] = {}
_SEEN = [-1]  # the configs' generation the kept launches were made from
_MAX_KEPT = 4096  # a bound, not an expectation: training sees a handful of keys


def _kept(key: tuple, make: Callable[[], object]) -> object:
    """``make()`` once per key while the configs stay as they are (a launch made while they
    changed, by a tuner in another thread, is used once and not kept)."""
    generation = autotune.GENERATION[0]
    if _SEEN[0] != generation:
        _LAUNCHES.clear()
        _SEEN[0] = generation
    hit = _LAUNCHES.get(key)
    if hit is None:
        hit = make()
        if autotune.GENERATION[0] == generation:
            if len(_LAUNCHES) >= _MAX_KEPT:
                _LAUNCHES.clear()
            _LAUNCHES[key] = hit
    return hit


def rows_key(rows: int) -> int:
    """The row count a launch's configs depend on: itself below 16, else its power-of-two bucket
    (the tuned-config cache's and the defaults' granularity). A symbolic count (``torch.compile``
    with dynamic shapes) is taken at its example value without a guard: a config only tiles, so
    it is correct for every count the graph sees."""
    if not isinstance(rows, int):
        rows = _example_value(rows)
    return rows if rows < 16 else 1 << (rows - 1).bit_length()


def _example_value(n: torch.SymInt) -> int:
    """A symbolic size's example value (no guard); 8192 where it has none (unbacked)."""
    hint = getattr(n.node, "hint", None)
    return hint if isinstance(hint, int) else 8192


def _on_device(fn: Callable, device: torch.device) -> Callable:
    """``fn`` launching on ``device``: Triton launches on the current CUDA device, which need not
    be the tensors' (a module moved to cuda:1 in a process whose current device is 0)."""
    if device.type != "cuda" or device.index is None:
        return fn

    def launch(*args, **kwargs):
        if torch.cuda.current_device() == device.index:
            return fn(*args, **kwargs)
        with torch.cuda.device(device):
            return fn(*args, **kwargs)

    return launch


def quantize_launch(
    rows: int,
    cols: int,
    dtype: torch.dtype,
    device: torch.device,
    qmin: int,
    qmax: int,
    group_size: int,
    symmetric: bool,
    *,
    pack_mask: bool,
    has_qparams: bool = False,
    with_y: bool = False,
    write_codes: bool = True,
    group_major: bool = False,
    asym_weight: bool = False,
    sum_group: int | None = None,
    write_mask: bool = True,
    write_sums: bool = True,
    write_zero_point: bool = True,
    per_tensor: bool = False,
) -> Callable[..., Quantized]:
    """``f(x, scale=None, zero_point=None) -> Quantized``: x [about ``rows``, ``cols``] quantized
    per (row, group) on ``device``'s backend (arguments and layouts as
    :func:`triton_qat.kernels.quantize.quantize_rows`; ``has_qparams``: ``f`` is given them;
    ``write_codes`` and ``group_major`` are layout hints the plain-torch twin may ignore; without
    ``write_mask`` / ``write_sums`` / ``write_zero_point`` the mask / code sums / computed zero
    points come back empty, [0] / [R, 0] / [R, 0], on every backend). ``per_tensor``: ``f(x)``
    computes family-1 qparams of the whole tensor first (in x's dtype; ``group_size`` is then the
    row)."""
    if per_tensor:
        key = ("per_tensor", rows_key(rows), cols, dtype, device, qmin, qmax, symmetric,
               pack_mask, with_y, write_codes, sum_group, write_mask, write_sums)  # fmt: skip
        return _kept(key, lambda: functools.partial(_per_tensor, quantize_launch(
            rows, cols, dtype, device, qmin, qmax, max(cols, 1), symmetric, pack_mask=pack_mask,
            has_qparams=True, with_y=with_y, write_codes=write_codes, sum_group=sum_group,
            write_mask=write_mask, write_sums=write_sums), qmin, qmax, symmetric))  # fmt: skip
    flags = (pack_mask, has_qparams, with_y, write_codes, group_major, asym_weight, sum_group,
             write_mask, write_sums, write_zero_point)  # fmt: skip
    key = ("quantize", rows_key(rows), cols, dtype, device, qmin, qmax, group_size, symmetric,
           *flags)  # fmt: skip
    return _kept(key, lambda: _make_quantize(*key[1:]))


def _make_quantize(rows, cols, dtype, device, qmin, qmax, group_size, symmetric, pack_mask,
                   has_qparams, with_y, write_codes, group_major, asym_weight, sum_group,
                   write_mask, write_sums, write_zero_point):  # fmt: skip
    if backend(device) == "torch":
        return functools.partial(
            _quantize_torch, qmin=qmin, qmax=qmax, group_size=group_size, symmetric=symmetric,
            pack_mask=pack_mask, with_y=with_y, asym_weight=asym_weight, sum_group=sum_group,
            write_mask=write_mask, write_sums=write_sums, write_zero_point=write_zero_point,
        )  # fmt: skip
    y_per_row = nan_per_row(qmin, qmax, has_qparams, asym_weight and not symmetric)
    config = autotune.quantize_config(rows, group_size, device, dtype, pack_mask, with_y, y_per_row)
    plan = plan_quantize(
        cols, dtype, device, qmin, qmax, group_size, symmetric, pack_mask=pack_mask,
        config=config, has_qparams=has_qparams, with_y=with_y, write_codes=write_codes,
        group_major=group_major, asym_weight=asym_weight, sum_group=sum_group,
        write_mask=write_mask, write_sums=write_sums, write_zero_point=write_zero_point,
    )  # fmt: skip
    return _on_device(functools.partial(launch_quantize, plan), device)


def _per_tensor(quantize: Callable, qmin: int, qmax: int, symmetric: bool, x: torch.Tensor,
                scale=None, zero_point=None, kernel=None) -> Quantized:  # fmt: skip
    """``quantize`` (given qparams) with the family-1 qparams of the whole of x."""
    scale, zero_point = per_tensor_qparams(x, qmin, qmax, symmetric)
    return quantize(x, scale, zero_point, kernel=kernel)


def _quantize_torch(x, scale=None, zero_point=None, kernel=None, *, qmin, qmax, group_size,
                    symmetric, pack_mask, with_y, asym_weight, sum_group, write_mask, write_sums,
                    write_zero_point) -> Quantized:  # fmt: skip
    """The plain-torch twin with the kernel's output conventions (empty where not written)."""
    q = quantize_rows_torch(x, qmin, qmax, group_size, symmetric, pack_mask=pack_mask,
                            scale=scale, zero_point=zero_point, with_y=with_y,
                            asym_weight=asym_weight, sum_group=sum_group)  # fmt: skip
    R = x.shape[0]
    return q._replace(
        mask=q.mask if write_mask else q.mask.new_empty((0,)),
        code_sum=q.code_sum if write_sums else q.code_sum.new_empty((R, 0)),
        zero_point=q.zero_point
        if write_zero_point or scale is not None
        else q.zero_point.new_empty((R, 0)),
    )


def forward_config(rows: int, N: int, K: int, w_group: int, dtype, device,
                   w_dtype=None) -> dict | None:  # fmt: skip
    """The config the forward GEMM of ``rows`` x K -> N runs with, the weight scaled in groups of
    ``w_group`` (K: per channel / tensor); None where the plain-torch twin runs. A weight of a
    ``w_dtype`` narrower than ``dtype`` takes the dequantized path (``autotune.weight_narrower``)."""
    if backend(device) == "torch":
        return None
    config = autotune.gemm_config("fwd", rows_key(rows), N, K, device, dtype, w_group if K else 1)
    if autotune.weight_narrower(w_dtype, dtype):
        return autotune.as_dequantized(config, dtype.itemsize)
    return config


def takes_code_sums(config: dict | None) -> bool:
    """Whether the forward GEMM of ``config`` (:func:`forward_config`) applies zero points through
    the weight's code sums: the int8 GEMM does; the dequantized path (``DEQUANT``) and the
    plain-torch twin (None) dequantize both operands and need none."""
    return config is not None and not config.get("DEQUANT", 0)


def int8_linear_launch(
    rows: int,
    K: int,
    N: int,
    n_groups: int,
    out_dtype: torch.dtype,
    device: torch.device,
    *,
    asymmetric: bool = True,
    has_bias: bool,
    w_asym: bool = False,
    w_dtype: torch.dtype | None = None,
    w_code_offset: int = 0,
    config: dict | None = None,
) -> Callable[..., torch.Tensor]:
    """``f(x_codes, x_scale, x_zero_point, w_codes, w_scale, w_code_sum, bias, w_zero_point=None,
    x_code_sum=None) -> out [M, N]``: ``x_fq @ w_fq.T + bias`` from int8 codes (see
    :func:`triton_qat.kernels.gemm_int8.int8_linear`; the weight's scales in ``n_groups`` groups,
    its zero points given where ``w_asym``; ``w_dtype``: the dtype a dequantized per-group
    forward forms w_fq in; ``w_code_offset``: the shift of the weight's stored codes; ``config``:
    the GEMM's config where the caller looked it up (:func:`forward_config`), else looked up)."""
    frozen = tuple(sorted(config.items())) if config is not None else None
    key = ("int8_linear", rows_key(rows), K, N, n_groups, out_dtype, device, asymmetric,
           has_bias, w_asym, w_dtype, w_code_offset, frozen)  # fmt: skip
    return _kept(key, lambda: _make_int8_linear(*key[1:-1], config))


def _make_int8_linear(rows, K, N, n_groups, out_dtype, device, asymmetric, has_bias, w_asym,
                      w_dtype, w_code_offset, config):  # fmt: skip
    if backend(device) == "torch":
        return functools.partial(_int8_linear_torch, out_dtype=out_dtype, w_dtype=w_dtype)
    w_group = K // n_groups if n_groups else 1
    if config is None:
        config = forward_config(rows, N, K, w_group, out_dtype, device, w_dtype)
    dq_config = autotune.dequantize_config(rows, K, device, out_dtype)
    # a GLUON config runs the Gluon kernel only on an sm_90 GPU with compiled Triton (never under
    # the interpreter: Gluon has none), and in eager launches: traced ones (kernels= under
    # torch.compile) take the Triton kernel, which wrap_triton can trace (kernels/gemm_int8.py)
    plan = plan_int8_linear(K, N, n_groups, out_dtype, config=config, asymmetric=asymmetric,
                            has_bias=has_bias, w_asym=w_asym, w_dtype=w_dtype,
                            dequant_config=dq_config, w_code_offset=w_code_offset,
                            gluon=hopper_gluon_device(device))  # fmt: skip
    return _on_device(functools.partial(launch_int8_linear, plan), device)


def _int8_linear_torch(x_codes, x_scale, x_zero_point, w_codes, w_scale, w_code_sum, bias,
                       w_zero_point=None, x_code_sum=None, kernels=None, *, out_dtype, w_dtype):  # fmt: skip
    return int8_linear_torch(x_codes, x_scale, x_zero_point, w_codes, w_scale, bias, out_dtype,
                             w_zero_point, w_dtype)  # fmt: skip


def dgrad_launch(rows: int, N: int, K: int, dtype, device) -> Callable[..., torch.Tensor]:
    """``f(grad_y [M, N], w_fq [N, K], x_mask bits) -> grad_x [M, K]`` (see
    :func:`triton_qat.kernels.gemm_backward.dgrad`)."""
    key = ("dgrad", rows_key(rows), N, K, dtype, device)
    return _kept(key, lambda: _make_backward_gemm("dgrad", *key[1:]))


def wgrad_launch(
    rows: int, N: int, K: int, dtype, device, mask_bits: bool = False
) -> Callable[..., torch.Tensor]:
    """``f(grad_y.t() [N, M], x_fq [M, K], w_mask) -> grad_w [N, K]``, w_mask bytes [N, K] or
    (``mask_bits``) bits [N, ceil(K/8)] (see :func:`triton_qat.kernels.gemm_backward.wgrad`;
    without a scale gradient; grad_y comes transposed, as the GEMM reads it)."""
    key = ("wgrad", rows_key(rows), N, K, dtype, device, mask_bits)
    return _kept(key, lambda: _make_backward_gemm("wgrad", *key[1:]))


def _make_backward_gemm(kernel, rows, N, K, dtype, device, mask_bits=True):
    if backend(device) == "torch":
        if kernel == "dgrad":
            return _dgrad_torch
        return functools.partial(_wgrad_torch, mask_bits=mask_bits)
    config = autotune.gemm_config(kernel, rows, N, K, device, dtype)
    plan = plan_dgrad(dtype, config) if kernel == "dgrad" else plan_wgrad(dtype, config, mask_bits)
    # f(a, b, mask): launch_backward's own order (dgrad: grad_y, w_fq; wgrad: grad_y.t(), x_fq)
    return _on_device(functools.partial(launch_backward, plan), device)


def _dgrad_torch(grad_y, w_fq, x_mask, kernel=None, mask_kernel=None):
    return dgrad_torch(grad_y, w_fq, x_mask)


def _wgrad_torch(grad_y_t, x_fq, w_mask, kernel=None, mask_kernel=None, *, mask_bits):
    return wgrad_torch(grad_y_t.t(), x_fq, w_mask, mask_bits=mask_bits)


def dequantize_launch(
    rows: int, cols: int, n_groups: int, dtype, device, has_zp: bool = True
) -> Callable[..., torch.Tensor]:
    """``f(codes [R, cols], scale, zero_point) -> x_fq [R, cols]`` in ``dtype`` (per-row or
    per-group qparams; the forward's values)."""
    key = ("dequantize", rows_key(rows), cols, n_groups, dtype, device, has_zp)
    return _kept(key, lambda: _make_dequantize(*key[1:]))


def _make_dequantize(rows, cols, n_groups, dtype, device, has_zp):
    if backend(device) == "torch":
        return functools.partial(_dequantize_torch, dtype=dtype)
    config = autotune.dequantize_config(rows, cols, device, dtype)
    plan = plan_dequantize(cols, n_groups, dtype, config=config, has_zp=has_zp)
    return _on_device(functools.partial(launch_dequantize, plan), device)


def _dequantize_torch(codes, scale, zero_point, kernel=None, *, dtype):
    return dequantize_rows_torch(codes, scale, zero_point, dtype)


def activation_sum_group(K: int, w_group: int) -> int | None:
    """The ``sum_group`` an activation quantize should write code sums for, so that the forward
    GEMM can apply the zero points of asymmetric weights in groups of ``w_group`` (None: the
    default per-row sums serve, or the GEMM needs none)."""
    mode = fwd_mode(K, w_group) if K else 0
    return w_group if mode == 1 else None


# ---------------------------------------------------------------------------------------------
# per-call launches, for callers that hold no plan (the torch.library ops)


def quantize_rows(
    x: torch.Tensor,
    qmin: int,
    qmax: int,
    group_size: int,
    symmetric: bool,
    *,
    pack_mask: bool,
    scale: torch.Tensor | None = None,
    zero_point: torch.Tensor | None = None,
    kernels: Kernels = DIRECT,
    **flags,
) -> Quantized:
    """Quantize x [R, C] per (row, group) on this device's backend: :func:`quantize_launch`'s
    launch for x's key, run on x (``flags``: its keyword arguments)."""
    R, C = x.shape
    f = quantize_launch(R, C, x.dtype, x.device, qmin, qmax, group_size, symmetric,
                        pack_mask=pack_mask, has_qparams=scale is not None, **flags)  # fmt: skip
    return f(x, scale, zero_point, kernel=kernels.quantize)


def quantize_per_tensor(
    x: torch.Tensor, qmin: int, qmax: int, symmetric: bool, *, pack_mask: bool,
    kernels: Kernels = DIRECT, **flags,
) -> Quantized:  # fmt: skip
    """Per-tensor quantization: family-1 qparams of the whole tensor (in x's dtype), then rows."""
    R, C = x.shape
    f = quantize_launch(R, C, x.dtype, x.device, qmin, qmax, max(C, 1), symmetric,
                        pack_mask=pack_mask, per_tensor=True, **flags)  # fmt: skip
    return f(x, kernel=kernels.quantize)


def int8_linear(
    x_codes: torch.Tensor,
    x_scale: torch.Tensor,
    x_zero_point: torch.Tensor,
    w_codes: torch.Tensor,
    w_scale: torch.Tensor,
    w_code_sum: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    asymmetric: bool = True,
    w_zero_point: torch.Tensor | None = None,
    x_code_sum: torch.Tensor | None = None,
    w_dtype: torch.dtype | None = None,
    w_code_offset: int = 0,
    kernels: Kernels = DIRECT,
) -> torch.Tensor:
    """``x_fq @ w_fq.T + bias`` from int8 codes: :func:`int8_linear_launch`'s launch for this
    key (see :func:`triton_qat.kernels.gemm_int8.int8_linear`)."""
    (M, K), N = x_codes.shape, w_codes.shape[0]
    f = int8_linear_launch(M, K, N, w_scale.shape[1] if K else 0, out_dtype, x_codes.device,
                           asymmetric=asymmetric, has_bias=bias is not None,
                           w_asym=w_zero_point is not None, w_dtype=w_dtype,
                           w_code_offset=w_code_offset)  # fmt: skip
    return f(x_codes, x_scale, x_zero_point, w_codes, w_scale, w_code_sum, bias, w_zero_point,
             x_code_sum, kernels=kernels.int8)  # fmt: skip


def dgrad(grad_y: torch.Tensor, w_fq: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
    """grad_x = (grad_y @ w_fq) * mask_x (see :func:`triton_qat.kernels.gemm_backward.dgrad`)."""
    (M, N), K = grad_y.shape, w_fq.shape[1]
    return dgrad_launch(M, N, K, grad_y.dtype, grad_y.device)(grad_y, w_fq, x_mask)


def wgrad(
    grad_y: torch.Tensor,
    x_fq: torch.Tensor,
    w_mask: torch.Tensor,
    weight: torch.Tensor | None = None,
    w_scale: torch.Tensor | None = None,
    qmin: int = -128,
    qmax: int = 127,
    kernels: Kernels = DIRECT,
):
    """grad_w = (grad_y^T @ x_fq) * mask_w (see :func:`triton_qat.kernels.gemm_backward.wgrad`);
    with ``weight`` and its learned scales ``w_scale``, (grad_w, grad_scale)."""
    (M, N), K = grad_y.shape, x_fq.shape[1]
    if weight is None:
        f = wgrad_launch(M, N, K, grad_y.dtype, grad_y.device)
        return f(grad_y.t(), x_fq, w_mask, kernel=kernels.float_mm,
                 mask_kernel=kernels.zero_masked)  # fmt: skip
    kw = dict(weight=weight, w_scale=w_scale, qmin=qmin, qmax=qmax)
    if not use_kernels(grad_y):
        return wgrad_torch(grad_y, x_fq, w_mask, **kw)
    config = autotune.gemm_config("wgrad", rows_key(M), N, K, grad_y.device, grad_y.dtype)
    return _on_device(_wgrad, grad_y.device)(grad_y, x_fq, w_mask, config=config,
                                             kernel=kernels.float_mm, **kw)  # fmt: skip


def dequantize_rows(
    codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, dtype: torch.dtype,
    kernels: Kernels = DIRECT,
) -> torch.Tensor:  # fmt: skip
    """x_fq [R, C] in ``dtype`` from int8 codes and per-row qparams (the forward's values)."""
    R, C = codes.shape
    n_groups = scale.shape[1] if scale.dim() == 2 else 1
    f = dequantize_launch(R, C, n_groups, dtype, codes.device, zero_point is not None)
    return f(codes, scale, zero_point, kernel=kernels.dequantize)


# ---------------------------------------------------------------------------------------------
# a fused linear's launches, decided once per key


class LinearPlan(NamedTuple):
    """The launches of one fused QAT linear (triton_qat::qat_linear and its backward) for a key:
    x [M, K] in ``dtype`` (M in the plan's row bucket), a weight [N, K] in ``w_dtype``, on
    ``device``. Made by :func:`linear_plan`; each field a launch callable (see the ``*_launch``
    functions) or a decided flag."""

    N: int
    K: int
    dtype: torch.dtype
    device_type: str
    quantize_x: Callable | None  # the activation's quantize (None: weight-only)
    x_qparams: str  # "computed" per row or over the tensor ("per_tensor"), or "given"
    x_sums: bool  # x's code sums are written and fed to the GEMM (asymmetric weights)
    asymmetric: bool  # the GEMM's ASYM flag: x's zero points are applied
    quantize_w: Callable  # the forward's weight quantize (codes, group-major qparams)
    w_qparams: str  # the weight's: "computed" per row / group or "per_tensor", or "given"
    gemm: Callable  # the forward GEMM (int8 codes), or None for weight-only
    w_symmetric: bool
    w_qmin: int
    w_qmax: int
    w_group: int  # the weight's scale group along K (K: per channel / tensor)
    quantize_w_bwd: dict  # (values, mask) -> the backward's weight re-derivation (mask "bytes":
    # a byte mask for the learned-scale wgrad; True: bits where w_mask_bits, else bytes)
    w_mask_bits: bool  # the weight's backward mask is bits (per channel / per tensor)
    dgrad: Callable
    dequantize_x: Callable | None  # x_fq from its codes (None: weight-only keeps x)
    wgrad: Callable
    w_args: dict  # the weight's op arguments (spec.linear_args), for the backward op that
    # compiled autograd traces in place of the launches
    w_dtype: torch.dtype  # the weight's (the backward re-derives w_fq from it: checks.saved_weight)


def linear_plan(
    rows: int,
    K: int,
    N: int,
    dtype: torch.dtype,
    w_dtype: torch.dtype,
    device: torch.device,
    a_spec,
    w_spec,
    *,
    has_bias: bool,
    x_qparams_given: bool = False,
    w_scale_given: bool = False,
) -> LinearPlan:
    """The :class:`LinearPlan` of a fused QAT linear for this key: ``a_spec`` (None: weight-only)
    / ``w_spec`` the :class:`~triton_qat.spec.QuantSpec` of the activation and the weight;
    ``x_qparams_given``: the activation's per-tensor qparams are given (torch.ao observers);
    ``w_scale_given``: the weight's scales are given (learned, or torch.ao's)."""
    key = ("linear", rows_key(rows), K, N, dtype, w_dtype, device, a_spec, w_spec, has_bias,
           x_qparams_given, w_scale_given)  # fmt: skip
    return _kept(key, lambda: _make_linear_plan(*key[1:]))


def _make_linear_plan(rows, K, N, dtype, w_dtype, device, a_spec, w_spec, has_bias,
                      x_qparams_given, w_scale_given):  # fmt: skip
    w_group = K if w_spec.per_tensor else w_spec.group_for(K)
    G = max(K, 1) // w_group
    w_sym = w_spec.symmetric
    w_rows = (N, K, w_dtype, device, w_spec.qmin, w_spec.qmax, w_group, w_sym)
    w_qparams = "given" if w_scale_given else "per_tensor" if w_spec.per_tensor else "computed"
    bwd = {}
    w_kind = dict(has_qparams=w_scale_given, per_tensor=w_qparams == "per_tensor")
    # the weight's mask as bits where the quantize kernel packs them (one group per row): the
    # backward keeps N K / 8 bytes instead of N K, and the mask pass reads as much. Not at fp32:
    # sm_80's fp32 wgrad tile spills 4 B with a bit mask (perf/kernel_static.py --arch 80)
    w_mask_bits = w_group == K and dtype != torch.float32
    for values, mask in ((True, True), (True, False), (False, True), (True, "bytes"),
                         (False, "bytes")):  # fmt: skip
        bwd[values, mask] = quantize_launch(
            *w_rows, pack_mask=w_mask_bits and mask is True, with_y=values, write_codes=False,
            asym_weight=not w_sym, write_mask=bool(mask), write_zero_point=False, **w_kind,
        )  # fmt: skip
    wgrad = wgrad_launch(rows, N, K, dtype, device, w_mask_bits)
    dgrad = dgrad_launch(rows, N, K, dtype, device)
    common = dict(N=N, K=K, dtype=dtype, device_type=device.type, w_qparams=w_qparams,
                  w_symmetric=w_sym,
                  w_qmin=w_spec.qmin, w_qmax=w_spec.qmax, w_group=w_group, quantize_w_bwd=bwd,
                  w_mask_bits=w_mask_bits,
                  dgrad=dgrad, wgrad=wgrad, w_args=w_spec.linear_args("w", K),
                  w_dtype=w_dtype)  # fmt: skip
    if a_spec is None:  # weight-only: a float GEMM on the fake-quantized weight
        quantize_w = quantize_launch(
            *w_rows, pack_mask=False, with_y=True, write_codes=False, asym_weight=not w_sym,
            write_mask=False, **w_kind,
        )  # fmt: skip
        return LinearPlan(quantize_x=None, x_qparams="", x_sums=False, asymmetric=False,
                          quantize_w=quantize_w, gemm=None, dequantize_x=None, **common)  # fmt: skip
    config = forward_config(rows, N, K, w_group, dtype, device, w_dtype)
    quantize_w = quantize_launch(
        *w_rows, pack_mask=False, group_major=True, asym_weight=not w_sym, write_mask=False,
        write_sums=takes_code_sums(config), write_zero_point=not w_sym, **w_kind,
    )  # fmt: skip
    # x's code sums serve only the zero points of asymmetric weights (per weight group)
    sum_group = activation_sum_group(K, w_group) if not w_sym else None
    x_qparams = "given" if x_qparams_given else "per_tensor" if a_spec.per_tensor else "computed"
    quantize_x = quantize_launch(
        rows, K, dtype, device, a_spec.qmin, a_spec.qmax, a_spec.group_for(K), a_spec.symmetric,
        pack_mask=True, has_qparams=x_qparams_given, per_tensor=x_qparams == "per_tensor",
        sum_group=sum_group, write_sums=not w_sym,
    )  # fmt: skip
    gemm = int8_linear_launch(
        rows, K, N, G if K else 0, dtype, device, asymmetric=not a_spec.symmetric or
        x_qparams_given, has_bias=has_bias, w_asym=not w_sym, w_dtype=w_dtype,
        w_code_offset=code_offset(w_spec.qmin, w_spec.qmax), config=config,
    )  # fmt: skip
    return LinearPlan(
        quantize_x=quantize_x, x_qparams=x_qparams,
        x_sums=not w_sym and (sum_group is not None or w_group == K),
        asymmetric=not a_spec.symmetric or x_qparams_given, quantize_w=quantize_w, gemm=gemm,
        dequantize_x=dequantize_launch(rows, K, 1, dtype, device), **common,
    )  # fmt: skip
