"""Which implementation runs (`backend`), and the one place that calls the launchers.

Three backends, by the tensor's device:

* ``"triton"``: CUDA tensors run the Triton kernels.
* ``"triton-interpreter"``: CPU tensors run the same kernels in Triton's interpreter when
  ``TRITON_INTERPRET=1`` is set before import (slow; what the test suite exercises).
* ``"torch"``: any other tensor (CPU without the interpreter) runs the plain-torch twins in
  ``kernels/*_torch.py``, which the tests hold bit-identical to the kernels.

The functions below take the ops' arguments, ask :mod:`triton_qat.autotune` for the launch config
of the actual shape, and call the launcher (kernels never look configs up themselves).
"""

from __future__ import annotations

import functools

import torch

from triton_qat import autotune
from triton_qat.kernels._common import INTERPRET
from triton_qat.kernels.dequantize import dequantize_rows as _dequantize_rows
from triton_qat.kernels.dequantize_torch import dequantize_rows_torch
from triton_qat.kernels.gemm_backward import dgrad as _dgrad
from triton_qat.kernels.gemm_backward import wgrad as _wgrad
from triton_qat.kernels.gemm_backward_torch import dgrad_torch, wgrad_torch
from triton_qat.kernels.gemm_int8 import fwd_mode
from triton_qat.kernels.gemm_int8 import int8_linear as _int8_linear
from triton_qat.kernels.gemm_int8_torch import int8_linear_torch
from triton_qat.kernels.quantize import Quantized, nan_per_row
from triton_qat.kernels.quantize import code_offset as code_offset  # ops: a weight's code shift
from triton_qat.kernels.quantize import quantize_rows as _quantize_rows
from triton_qat.kernels.quantize_torch import per_tensor_qparams, quantize_rows_torch

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


def _on_tensor_device(fn):
    """Launch on the first argument's GPU: Triton launches on the current CUDA device, which
    need not be the tensor's (a module moved to cuda:1 in a process whose current device is 0)."""

    @functools.wraps(fn)
    def launch(t: torch.Tensor, *args, **kwargs):
        if (
            t.is_cuda
            and t.device.index is not None
            and t.device.index != torch.cuda.current_device()
        ):
            with torch.cuda.device(t.device):
                return fn(t, *args, **kwargs)
        return fn(t, *args, **kwargs)

    return launch


def use_kernels(t: torch.Tensor) -> bool:
    return backend(t.device) != "torch"


@_on_tensor_device
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
    with_y: bool = False,
    write_codes: bool = True,
    group_major: bool = False,
    asym_weight: bool = False,
    sum_group: int | None = None,
    write_mask: bool = True,
    write_sums: bool = True,
    write_zero_point: bool = True,
) -> Quantized:
    """Quantize x [R, C] per (row, group) on this device's backend (see
    :func:`triton_qat.kernels.quantize.quantize_rows` for arguments and layouts; ``write_codes``
    and ``group_major`` are layout hints the plain-torch twin may ignore; without ``write_mask``
    / ``write_sums`` / ``write_zero_point`` the mask / code sums / computed zero points come back
    empty, [0] / [R, 0] / [R, 0], on every backend)."""
    kw = dict(pack_mask=pack_mask, scale=scale, zero_point=zero_point, with_y=with_y,
              asym_weight=asym_weight, sum_group=sum_group)  # fmt: skip
    if not use_kernels(x):
        q = quantize_rows_torch(x, qmin, qmax, group_size, symmetric, **kw)
        return q._replace(
            mask=q.mask if write_mask else q.mask.new_empty((0,)),
            code_sum=q.code_sum if write_sums else q.code_sum.new_empty((x.shape[0], 0)),
            zero_point=q.zero_point
            if write_zero_point or scale is not None
            else q.zero_point.new_empty((x.shape[0], 0)),
        )
    y_per_row = nan_per_row(qmin, qmax, scale is not None, asym_weight and not symmetric)
    config = autotune.quantize_config(
        x.shape[0], group_size, x.device, x.dtype, pack_mask, with_y, y_per_row
    )
    return _quantize_rows(x, qmin, qmax, group_size, symmetric, config=config,
                          write_codes=write_codes, group_major=group_major, write_mask=write_mask,
                          write_sums=write_sums, write_zero_point=write_zero_point, **kw)  # fmt: skip


def quantize_per_tensor(
    x: torch.Tensor, qmin: int, qmax: int, symmetric: bool, *, pack_mask: bool, **kw
) -> Quantized:
    """Per-tensor quantization: family-1 qparams of the whole tensor (in x's dtype), then rows."""
    scale, zero_point = per_tensor_qparams(x, qmin, qmax, symmetric)
    return quantize_rows(
        x,
        qmin,
        qmax,
        max(x.shape[1], 1),
        symmetric,
        pack_mask=pack_mask,
        scale=scale,
        zero_point=zero_point,
        **kw,
    )


@_on_tensor_device
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
    config: dict | None = None,
) -> torch.Tensor:
    """``x_fq @ w_fq.T + bias`` from int8 codes (see :func:`triton_qat.kernels.gemm_int8.int8_linear`;
    ``w_dtype``: the weight's dtype, in which a dequantized per-group forward forms w_fq;
    ``w_code_offset``: the shift of the weight's stored codes; ``config``: the GEMM's config when
    the caller has looked it up (:func:`forward_config`), else looked up here)."""
    if not use_kernels(x_codes):
        return int8_linear_torch(x_codes, x_scale, x_zero_point, w_codes, w_scale, bias, out_dtype,
                                 w_zero_point)  # fmt: skip
    M, K = x_codes.shape
    if config is None:
        config = forward_config(x_codes, w_codes.shape[0], K // w_scale.shape[1] if K else 1,
                                out_dtype)  # fmt: skip
    dq_config = autotune.dequantize_config(M, K, x_codes.device, out_dtype)
    return _int8_linear(
        x_codes,
        x_scale,
        x_zero_point,
        w_codes,
        w_scale,
        w_code_sum,
        bias,
        out_dtype,
        asymmetric=asymmetric,
        config=config,
        w_zero_point=w_zero_point,
        x_code_sum=x_code_sum,
        w_dtype=w_dtype,
        dequant_config=dq_config,
        w_code_offset=w_code_offset,
    )


def forward_config(
    x_codes: torch.Tensor, N: int, w_group: int, out_dtype: torch.dtype
) -> dict | None:
    """The config :func:`int8_linear` runs x_codes [M, K] against N outputs with, the weight
    scaled in groups of ``w_group`` (K: per channel / tensor); None where the plain-torch twin
    runs."""
    if not use_kernels(x_codes):
        return None
    M, K = x_codes.shape
    return autotune.gemm_config("fwd", M, N, K, x_codes.device, out_dtype, w_group if K else 1)


def takes_code_sums(config: dict | None) -> bool:
    """Whether the forward GEMM of ``config`` (:func:`forward_config`) applies zero points through
    the weight's code sums: the int8 GEMM does; the dequantized path (``DEQUANT``) and the
    plain-torch twin (None) dequantize both operands and need none."""
    return config is not None and not config.get("DEQUANT", 0)


def activation_sum_group(K: int, w_group: int) -> int | None:
    """The ``sum_group`` an activation quantize should write code sums for, so that the forward
    GEMM can apply the zero points of asymmetric weights in groups of ``w_group`` (None: the
    default per-row sums serve, or the GEMM needs none)."""
    mode = fwd_mode(K, w_group) if K else 0
    return w_group if mode == 1 else None


@_on_tensor_device
def dgrad(grad_y: torch.Tensor, w_fq: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
    """grad_x = (grad_y @ w_fq) * mask_x (see :func:`triton_qat.kernels.gemm_backward.dgrad`)."""
    if not use_kernels(grad_y):
        return dgrad_torch(grad_y, w_fq, x_mask)
    (M, N), K = grad_y.shape, w_fq.shape[1]
    config = autotune.gemm_config("dgrad", M, N, K, grad_y.device, grad_y.dtype)
    return _dgrad(grad_y, w_fq, x_mask, config=config)


@_on_tensor_device
def wgrad(
    grad_y: torch.Tensor,
    x_fq: torch.Tensor,
    w_mask: torch.Tensor,
    weight: torch.Tensor | None = None,
    w_scale: torch.Tensor | None = None,
    qmin: int = -128,
    qmax: int = 127,
):
    """grad_w = (grad_y^T @ x_fq) * mask_w (see :func:`triton_qat.kernels.gemm_backward.wgrad`);
    with ``weight`` and its learned scales ``w_scale``, (grad_w, grad_scale)."""
    kw = dict(weight=weight, w_scale=w_scale, qmin=qmin, qmax=qmax) if weight is not None else {}
    if not use_kernels(grad_y):
        return wgrad_torch(grad_y, x_fq, w_mask, **kw)
    (M, N), K = grad_y.shape, x_fq.shape[1]
    config = autotune.gemm_config("wgrad", M, N, K, grad_y.device, grad_y.dtype)
    return _wgrad(grad_y, x_fq, w_mask, config=config, **kw)


@_on_tensor_device
def dequantize_rows(
    codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """x_fq [R, C] in ``dtype`` from int8 codes and per-row qparams (the forward's values)."""
    if not use_kernels(codes):
        return dequantize_rows_torch(codes, scale, zero_point, dtype)
    R, C = codes.shape
    config = autotune.dequantize_config(R, C, codes.device, dtype)
    return _dequantize_rows(codes, scale, zero_point, dtype, config=config)
