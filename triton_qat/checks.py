"""Argument checks of the public API (ops, functional API, modules): each raises a TypeError or
ValueError naming the argument, before anything is launched. Kernels and launchers trust their
callers; these are the callers' checks."""

from __future__ import annotations

import inspect

import torch
import torch.autograd.forward_ad as _forward_ad
from torch import Tensor
from torch.nn.utils.parametrize import is_parametrized

from triton_qat.kernels.gemm_int8 import MAX_IN_FEATURES as MAX_IN_FEATURES  # the kernel's

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# what takes a parametrized triton_qat layer back to float, parametrizations and all
UNPARAMETRIZE = (
    "tq.to_torchao(model) carries the parametrizations over; or fold them first "
    "(torch.nn.utils.parametrize.remove_parametrizations)"
)


def check_not_parametrized(
    mod: object, kind: str, instead: str, name: str = "mod", method: str = "from_float"
) -> None:
    """ValueError naming ``name`` for a parametrized module (``weight_norm``, ``spectral_norm``,
    ``register_parametrization``), whose weight is computed, so no module can share it (what
    ``method`` does); ``instead`` says what does take it."""
    if is_parametrized(mod):
        raise ValueError(
            f"{name}: a parametrized {kind} (weight_norm / spectral_norm / "
            f"register_parametrization): {method} shares plain parameters only; {instead}"
        )


def check_tensor(t: object, name: str, dtypes: tuple, what: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name}: expected {what}, got {t.dtype}")


def check_float_input(x: object, name: str) -> None:
    """TypeError naming the argument unless x is an fp32/fp16/bf16 tensor."""
    check_tensor(x, name, FLOAT_DTYPES, "float32, float16 or bfloat16")


def check_dims(t: Tensor, name: str, dims: int, layout: str) -> None:
    if t.dim() != dims:
        raise ValueError(f"{name}: expected {dims} dims {layout}, got shape {tuple(t.shape)}")


def check_shape(t: Tensor, name: str, *shapes: tuple) -> None:
    """ValueError unless ``t`` has one of ``shapes``."""
    if tuple(t.shape) not in shapes:
        want = " or ".join(str(s) for s in shapes)
        raise ValueError(f"{name}: expected shape {want}, got {tuple(t.shape)}")


def check_device(t: Tensor, name: str, device: torch.device, whose: str) -> None:
    if t.device != device:
        raise ValueError(f"{name}: expected device {device} ({whose}), got {t.device}")


def check_range(qmin: int, qmax: int, name: str = "quant range") -> None:
    """The code range must fit the int8 storage (ranges up to 255 are stored shifted)."""
    ok = qmin < qmax and qmax - qmin <= 255 and -128 <= qmin and qmax <= 255
    if not ok or (qmax > 127 and qmin < 0):  # ranges past 127 are stored shifted by -128
        raise ValueError(
            f"{name}: expected qmin < qmax within [-128, 127] or [0, 255], got [{qmin}, {qmax}]"
        )


def check_group(group_size: int, row_len: int, name: str = "group_size") -> None:
    """A positive int (or a symbolic one: torch.compile with dynamic shapes) dividing row_len."""
    is_int = isinstance(group_size, (int, torch.SymInt)) and not isinstance(group_size, bool)
    if not is_int or group_size < 1:
        raise ValueError(f"{name}: expected a positive int, got {group_size!r}")
    if row_len % group_size:
        raise ValueError(f"{name}: expected a divisor of {row_len}, got {group_size}")


def check_in_features(k: int) -> None:
    if k > MAX_IN_FEATURES:
        raise ValueError(
            f"in_features: at most {MAX_IN_FEATURES} (the int8 GEMM's int32 accumulator), got {k}"
        )


def check_input(x: object, in_features: int, device: torch.device, name: str = "input") -> None:
    """A float tensor [..., in_features] on ``device``."""
    check_float_input(x, name)
    if x.dim() < 1:
        raise ValueError(f"{name}: expected at least 1 dimension, got a 0-dim tensor")
    if x.shape[-1] != in_features:
        raise ValueError(
            f"{name}: expected last dim == in_features = {in_features}, got shape {tuple(x.shape)}"
        )
    check_device(x, name, device, "the weight's")


def check_linear_inputs(
    x: object, weight: object, bias: object, x_name: str = "input", w_name: str = "weight"
) -> None:
    """Everything the fused linear needs of input [..., K], weight [N, K] and bias [N] / None."""
    check_float_input(weight, w_name)
    check_dims(weight, w_name, 2, "[out_features, in_features]")
    check_input(x, weight.shape[1], weight.device, x_name)
    check_in_features(weight.shape[1])
    if bias is not None:
        check_float_input(bias, "bias")
        check_shape(bias, "bias", (weight.shape[0],))
        check_device(bias, "bias", weight.device, "the weight's")


def check_qparams(
    scale: Tensor | None,
    zero_point: Tensor | None,
    rows: int,
    groups: int,
    device: torch.device,
    prefix: str = "",
) -> None:
    """Given qparams: fp32 ``scale`` and int32 ``zero_point`` broadcastable to [rows, groups]."""
    if scale is None:
        if zero_point is not None:
            raise ValueError(f"{prefix}zero_point: given without {prefix}scale")
        return
    for t, name, dtype in (
        (scale, "scale", torch.float32),
        (zero_point, "zero_point", torch.int32),
    ):
        if t is None:
            continue
        check_tensor(t, prefix + name, (dtype,), str(dtype).replace("torch.", ""))
        check_device(t, prefix + name, device, "the input's")
        shape = tuple(t.shape)
        ok = len(shape) <= 2 and all(
            s in (1, full) for s, full in zip(shape[::-1], (groups, rows), strict=False)
        )
        if not ok:
            raise ValueError(
                f"{prefix}{name}: expected a shape broadcastable to [{rows}, {groups}], got {shape}"
            )


try:  # functorch's transform stack (torch builds without its C module: torch's own errors)
    from torch._C._functorch import TransformType
    from torch._C._functorch import get_interpreter_stack as _interpreter_stack
    from torch._C._functorch import get_unwrapped as _unwrapped
    from torch._C._functorch import is_functorch_wrapped_tensor as _is_wrapped
    from torch._C._functorch import peek_interpreter_stack as functorch_level

    _GRAD_TRANSFORMS = (TransformType.Grad, TransformType.Jvp)
except ImportError:  # pragma: no cover

    def _interpreter_stack():
        return None

    def functorch_level():  # the innermost functorch transform, None outside any
        return None

    def _is_wrapped(t):
        return False

    _unwrapped, _GRAD_TRANSFORMS = None, ()

_FUNC_GRAD_MSG = (
    "{what}: torch.func.grad / jvp / jacrev / jacfwd transforms are not supported (the ops' "
    "autograd is registered with torch.library.register_autograd, which functorch cannot "
    "transform); use torch.autograd.grad, or triton_qat.reference for a plain-torch version. "
    "torch.func.vmap is supported."
)
_FORWARD_AD_MSG = (
    "{what}: forward-mode AD (torch.autograd.forward_ad dual tensors) is not supported: the "
    "straight-through estimator is defined for reverse mode (backward / torch.autograd.grad) "
    "only; use triton_qat.reference for a plain-torch version."
)


_COMPILED_FORWARD_AD_MSG = (
    "{what}: torch.compile inside a torch.autograd.forward_ad.dual_level is not supported: "
    "the trace cannot see whether this input carries a tangent, and a compiled graph may drop "
    "it (Inductor drops every op's); call the compiled function outside the dual_level, or "
    "run eagerly (where dual inputs raise this library's error, plain ones work)."
)


def check_no_grad_transform(what: str, *tensors: Tensor | None) -> None:
    """RuntimeError naming ``what`` inside a torch.func gradient transform (grad, jvp, jacrev,
    jacfwd, at any level: ``grad(vmap(f))`` too), or under forward-mode AD where one of
    ``tensors`` carries a tangent (under vmap too): the ops' autograd has no jvp, so torch would
    raise an error of its own or silently drop (or mis-derive) the tangent. Other calls (vmap,
    plain tensors in a ``dual_level``, and, since Dynamo handles functorch itself, compiled
    code) pass, except compiled code inside a ``dual_level``: a trace cannot see tangents, so it
    raises there (Dynamo without fullgraph then runs the call eagerly, which checks it)."""
    if _forward_ad._current_level < 0 and functorch_level() is None:
        return  # plain code: the common case first, in the fewest calls
    if torch.compiler.is_compiling():  # Dynamo handles functorch; forward AD it may drop
        if _forward_ad._current_level >= 0:  # (tangents are not visible while tracing)
            raise RuntimeError(_COMPILED_FORWARD_AD_MSG.format(what=what))
        return
    stack = _interpreter_stack()
    if stack and any(level.key() in _GRAD_TRANSFORMS for level in stack):
        raise RuntimeError(_FUNC_GRAD_MSG.format(what=what))
    if _forward_ad._current_level >= 0:
        for t in tensors:
            while t is not None and _is_wrapped(t):  # vmap's batched tensor: the dual inside
                t = _unwrapped(t)
            if t is not None and _forward_ad.unpack_dual(t).tangent is not None:
                raise RuntimeError(_FORWARD_AD_MSG.format(what=what))


def refuse_script(module: object) -> None:
    """RuntimeError for ``torch.jit.script`` of a triton_qat module (its ``__prepare_scriptable__``,
    which TorchScript calls on every submodule first), instead of TorchScript's compiler errors
    about the Python it cannot compile."""
    raise RuntimeError(
        f"torch.jit.script: triton_qat.{type(module).__name__} cannot be scripted (its forward "
        "chooses kernels and torch.library ops in Python); use torch.compile, torch.export or "
        "torch.jit.trace, which support it"
    )


def saved_weight(weight: Tensor, dtype: torch.dtype, name: str = "weight") -> Tensor:
    """The tensor a backward re-derives fake-quantized values from (the weight, by default), as
    its forward read it (in ``dtype``).

    The backward keeps the parameter, not its values (nothing weight-sized is kept), and a module
    cast between a forward and its backward (``.to(dtype)``, ``.float()``) changes the
    parameter's dtype in place. Cast back where that is exact (the forward's 16-bit weight now
    fp32 / fp64, or fp32 now fp64); else a RuntimeError naming ``name``: the values the forward
    quantized are gone, and re-deriving from others would give a silently different gradient."""
    if weight.dtype is dtype:
        return weight
    if weight.dtype.itemsize > dtype.itemsize and weight.dtype in (torch.float32, torch.float64):
        return weight.to(dtype)  # bf16 / fp16 -> fp32 -> back: exact
    raise RuntimeError(
        f"{name}: its dtype changed from {dtype} to {weight.dtype} between a forward and its "
        "backward (a module cast such as .to(dtype) in between); the backward re-derives the "
        "fake-quantized values from the tensor itself (it keeps no copy), and the forward's "
        "values cannot be recovered from the cast ones: run the backward before casting"
    )


def saved_weights(weight: Tensor, dtype: torch.dtype, w_scale: Tensor | None) -> tuple:
    """(weight, learned w_scale or None) as a forward read them (:func:`saved_weight`; learned
    scales are fp32). The op backwards' check; the direct path's backwards inline it."""
    weight = saved_weight(weight, dtype)
    if w_scale is not None:
        w_scale = saved_weight(w_scale, torch.float32, "weight_scale")
    return weight, w_scale


def check_module(model: object, name: str = "model") -> None:
    """TypeError naming ``name`` unless ``model`` is an ``nn.Module`` (a list, a dict of modules
    or a checkpoint path failed deep inside the module walk)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{name}: expected a torch.nn.Module, got {type(model).__name__}")


def check_filter_fn(filter_fn: object) -> None:
    """TypeError unless ``filter_fn`` is None or a callable taking (module, fqn)."""
    if filter_fn is None:
        return
    if not callable(filter_fn):
        raise TypeError(
            "filter_fn: expected a callable filter_fn(module, fqn) -> bool, got "
            f"{type(filter_fn).__name__}"
        )
    try:
        signature = inspect.signature(filter_fn)
    except (TypeError, ValueError):  # a builtin without a signature: called as it is
        return
    try:
        signature.bind(None, "")
    except TypeError as err:
        raise TypeError(
            f"filter_fn: expected a callable filter_fn(module, fqn) -> bool, got one with the "
            f"signature {signature} ({err})"
        ) from None
