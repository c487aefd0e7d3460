"""Argument checks of the ``triton_qat::*`` ops (shapes, dtypes, devices, qparams), run by the
real and the fake implementation alike, so a bad call fails with the argument's name before
anything launches, eagerly or under torch.compile."""

import math

import torch

from triton_qat.checks import (
    check_device,
    check_dims,
    check_float_input,
    check_group,
    check_in_features,
    check_linear_inputs,
    check_qparams,
    check_range,
    check_shape,
    check_tensor,
)

_I8, _I32, _F32, _U8 = (torch.int8,), (torch.int32,), (torch.float32,), (torch.uint8,)


def check_asym_weight(asym_weight, symmetric, per_tensor, scale, prefix=""):
    """torchao's asymmetric weight formula computes its own per-row / per-group qparams."""
    if not asym_weight:
        return
    name = f"{prefix}asym_weight"
    if symmetric:
        raise ValueError(f"{name}: is an asymmetric formula; pass symmetric=False")
    if per_tensor or scale is not None:
        raise ValueError(f"{name}: computes per-row / per-group qparams; pass "
                         f"{prefix}per_tensor=False and {prefix}scale=None")  # fmt: skip


def check_quantize(x, qmin, qmax, group_size, symmetric, per_tensor, scale, zero_point,
                    pack_mask=False, asym_weight=False, sum_group=0, with_sums=True):  # fmt: skip
    check_float_input(x, "x")
    check_dims(x, "x", 2, "[rows, cols]")
    R, C = x.shape
    check_range(qmin, qmax, "qmin/qmax")
    check_group(group_size, C)
    if pack_mask and group_size != max(C, 1):
        raise ValueError(f"pack_mask: bit-packed masks need one group per row (group_size={C})")
    if per_tensor and scale is not None:
        raise ValueError("per_tensor: computes its own qparams; pass scale=None")
    check_asym_weight(asym_weight, symmetric, per_tensor, scale)
    if sum_group:
        if not with_sums:
            raise ValueError(f"sum_group: {sum_group} asks for code sums, but with_sums=False")
        check_group(sum_group, group_size, "sum_group")
    check_qparams(scale, zero_point, R, max(C, 1) // group_size, x.device)


def check_w_zero_point(w_zero_point, x_code_sum, M, N, G, device, whose):
    """Asymmetric weights: int32 zero points [N, G]; x's code sums per weight group [M, G]."""
    if w_zero_point is None:
        if x_code_sum is not None:
            raise ValueError("x_code_sum: only used with w_zero_point (asymmetric weights)")
        return
    check_tensor(w_zero_point, "w_zero_point", _I32, "int32")
    check_shape(w_zero_point, "w_zero_point", (N, G))
    check_device(w_zero_point, "w_zero_point", device, whose)
    if x_code_sum is not None:
        check_tensor(x_code_sum, "x_code_sum", _I32, "int32")
        check_shape(x_code_sum, "x_code_sum", (M, G))
        check_device(x_code_sum, "x_code_sum", device, whose)


def check_codes_linear(x_codes, x_scale, x_zero_point, w_codes, w_scale, w_code_sum, bias,
                        w_zero_point=None, x_code_sum=None):  # fmt: skip
    check_tensor(x_codes, "x_codes", _I8, "int8")
    check_dims(x_codes, "x_codes", 2, "[M, K]")
    check_tensor(w_codes, "w_codes", _I8, "int8")
    check_dims(w_codes, "w_codes", 2, "[N, K]")
    (M, K), N = x_codes.shape, w_codes.shape[0]
    check_shape(w_codes, "w_codes", (N, K))
    check_in_features(K)
    dev = x_codes.device
    check_tensor(x_scale, "x_scale", _F32, "float32")
    check_shape(x_scale, "x_scale", (M,), (M, 1))
    check_tensor(x_zero_point, "x_zero_point", _I32, "int32")
    check_shape(x_zero_point, "x_zero_point", (M,), (M, 1))
    check_tensor(w_scale, "w_scale", _F32, "float32")
    check_dims(w_scale, "w_scale", 2, "[N, G]")
    G = w_scale.shape[1]
    if w_scale.shape[0] != N or G < 1 or K % G:
        raise ValueError(
            f"w_scale: expected [{N}, G] with G dividing K={K}, got {tuple(w_scale.shape)}"
        )
    check_tensor(w_code_sum, "w_code_sum", _I32, "int32")
    check_shape(w_code_sum, "w_code_sum", (N, G))
    named = [("x_scale", x_scale), ("x_zero_point", x_zero_point), ("w_codes", w_codes),
             ("w_scale", w_scale), ("w_code_sum", w_code_sum)]  # fmt: skip
    if bias is not None:
        check_float_input(bias, "bias")
        check_shape(bias, "bias", (N,))
        named.append(("bias", bias))
    for name, t in named:
        check_device(t, name, dev, "x_codes'")
    check_w_zero_point(w_zero_point, x_code_sum, M, N, G, dev, "x_codes'")


def check_x_state(x_codes, x_scale, x_zero_point, x_mask, M, K, device):
    check_tensor(x_codes, "x_codes", _I8, "int8")
    check_shape(x_codes, "x_codes", (M, K))
    check_tensor(x_scale, "x_scale", _F32, "float32")
    check_shape(x_scale, "x_scale", (M,), (M, 1))
    check_tensor(x_zero_point, "x_zero_point", _I32, "int32")
    check_shape(x_zero_point, "x_zero_point", (M,), (M, 1))
    check_tensor(x_mask, "x_mask", _U8, "uint8")
    check_shape(x_mask, "x_mask", (M, (K + 7) // 8))
    for name, t in (("x_codes", x_codes), ("x_scale", x_scale), ("x_zero_point", x_zero_point),
                    ("x_mask", x_mask)):  # fmt: skip
        check_device(t, name, device, "the weight's")


def check_weight_args(weight, w_qmin, w_qmax, w_group_size, w_per_tensor, w_scale,
                       w_symmetric=True):  # fmt: skip
    N, K = weight.shape
    check_range(w_qmin, w_qmax, "w_qmin/w_qmax")
    check_group(w_group_size, K, "w_group_size")
    if w_per_tensor and w_scale is not None:
        raise ValueError("w_per_tensor: computes its own qparams; pass w_scale=None")
    if not w_symmetric and (w_per_tensor or w_scale is not None):
        raise ValueError("w_symmetric: asymmetric weights are per channel / per group with "
                         "computed qparams; pass w_per_tensor=False and w_scale=None")  # fmt: skip
    check_qparams(w_scale, None, N, max(K, 1) // w_group_size, weight.device, "w_")


def check_qat_linear(
    x, x_codes, x_scale, x_zero_point, x_mask, weight, bias, w_qmin, w_qmax, w_group_size,
    w_per_tensor, w_scale, w_symmetric=True, x_code_sum=None,
):  # fmt: skip
    check_linear_inputs(x, weight, bias, x_name="x")
    N, K = weight.shape
    M = math.prod(x.shape[:-1])
    check_x_state(x_codes, x_scale, x_zero_point, x_mask, M, K, x.device)
    check_weight_args(weight, w_qmin, w_qmax, w_group_size, w_per_tensor, w_scale, w_symmetric)
    if x_code_sum is not None and w_symmetric:
        raise ValueError("x_code_sum: only used with asymmetric weights (w_symmetric=False)")
    if not w_symmetric:  # the zero points are computed here: check the code sums' shape
        zp_shape = (N, max(K, 1) // w_group_size)
        check_w_zero_point(x.new_empty(zp_shape, dtype=torch.int32), x_code_sum, M, N,
                            zp_shape[1], x.device, "the weight's")  # fmt: skip


def check_scale_grad(need_w_scale, w_scale, w_symmetric, w_per_tensor):
    """The gradient of a learned weight scale: symmetric, given per row / group."""
    if need_w_scale and (w_scale is None or not w_symmetric or w_per_tensor):
        raise ValueError("need_w_scale: learned scales are given (w_scale), symmetric, per "
                         "channel / per group")  # fmt: skip


def check_backward(grad_out, x_codes, x_scale, x_zero_point, x_mask, weight, w_qmin, w_qmax,
                    w_group_size, w_per_tensor, w_scale, w_symmetric=True,
                    need_w_scale=False):  # fmt: skip
    check_float_input(grad_out, "grad_out")
    check_float_input(weight, "weight")
    check_dims(weight, "weight", 2, "[N, K]")
    check_tensor(x_codes, "x_codes", _I8, "int8")
    check_dims(x_codes, "x_codes", 2, "[M, K]")
    (M, K), N = x_codes.shape, weight.shape[0]
    check_shape(weight, "weight", (N, K))
    if grad_out.dim() < 1 or grad_out.shape[-1] != N or grad_out.numel() != M * N:
        raise ValueError(
            f"grad_out: expected [..., {N}] with {M} rows, got {tuple(grad_out.shape)}"
        )
    check_device(grad_out, "grad_out", weight.device, "the weight's")
    check_x_state(x_codes, x_scale, x_zero_point, x_mask, M, K, weight.device)
    check_weight_args(weight, w_qmin, w_qmax, w_group_size, w_per_tensor, w_scale, w_symmetric)
    check_scale_grad(need_w_scale, w_scale, w_symmetric, w_per_tensor)


def check_weight_only(x, weight, bias, w_qmin, w_qmax, w_group_size, w_symmetric, w_per_tensor,
                       w_scale):  # fmt: skip
    check_linear_inputs(x, weight, bias, x_name="x")
    check_weight_args(weight, w_qmin, w_qmax, w_group_size, w_per_tensor, w_scale, w_symmetric)


def check_weight_only_backward(grad_out, x, weight, w_qmin, w_qmax, w_group_size, w_symmetric,
                                w_per_tensor, w_scale=None, need_w_scale=False):  # fmt: skip
    check_float_input(grad_out, "grad_out")
    check_linear_inputs(x, weight, None, x_name="x")
    N = weight.shape[0]
    if tuple(grad_out.shape) != (*x.shape[:-1], N):
        raise ValueError(
            f"grad_out: expected shape {(*x.shape[:-1], N)}, got {tuple(grad_out.shape)}"
        )
    check_device(grad_out, "grad_out", weight.device, "the weight's")
    check_weight_args(weight, w_qmin, w_qmax, w_group_size, w_per_tensor, w_scale, w_symmetric)
    check_scale_grad(need_w_scale, w_scale, w_symmetric, w_per_tensor)
