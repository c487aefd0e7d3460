"""Quantize a shared input once: several triton_qat linears that read the same tensor with the
same activation spec (q/k/v of an attention block, gate/up of a SwiGLU MLP) get one quantized
state, computed and kept for backward once.

* Under ``torch.compile`` the activation quantize is its own functional op
  (``triton_qat::quantize``) whose outputs feed each linear's op, so the compiler sees identical
  calls and deduplicates them (common-subexpression elimination); nothing here is traced.
* In eager mode a small cache remembers the last state per input tensor. It is keyed by the
  tensor's identity AND its version counter (``x._version``, bumped by every in-place change), so a
  tensor modified in place is quantized again; entries die with the tensor (weak references), so
  the cache never keeps an input or its state alive. Writes that bypass the version counter
  (through ``x.data``, or a NumPy / DLPack alias) are not seen: call ``set_enabled(False)`` if
  inputs are changed that way between the linears that read them. Inference mode is not cached.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

from triton_qat import calls as _ops  # the ops, skipping the dispatcher in plain eager code
from triton_qat.spec import QuantSpec

# id(x) -> (weakref to x, version, (spec, sum_group, with_sums), state)
_CACHE: dict[int, tuple[weakref.ref, int, tuple, tuple[Tensor, ...]]] = {}
_ENABLED = [True]


def set_enabled(on: bool) -> bool:
    """Turn eager deduplication on or off (tests compare both); returns the previous setting."""
    prev, _ENABLED[0] = _ENABLED[0], bool(on)
    _CACHE.clear()
    return prev


def quantize_activation(
    x: Tensor, spec: QuantSpec, sum_group: int | None = None, with_sums: bool = True
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(codes int8 [M, K], scale fp32 [M, 1], zero point int32 [M, 1], mask bits [M, ceil(K/8)],
    code sums int32 [M, K // sum_group] (default: [M, 1]; [M, 0] without ``with_sums``, for
    weights with no zero points)) of x [..., K] under a family-1
    activation ``spec`` (qparams computed, not given). Linears whose weights need other code sums
    (asymmetric weights in groups) share nothing with the others."""
    x2d = x.detach().reshape(-1, x.shape[-1])  # qparams are constants of the STE: no graph
    if not _cacheable(x):
        return _quantize(x2d, spec, sum_group, with_sums)
    key, what = id(x), (spec, sum_group, with_sums)
    hit = _CACHE.get(key)
    if hit is not None and hit[0]() is x and hit[1] == x._version and hit[2] == what:
        return hit[3]
    state = _quantize(x2d, spec, sum_group, with_sums)
    _CACHE[key] = (weakref.ref(x, lambda _ref, key=key: _CACHE.pop(key, None)), x._version, what,
                   state)  # fmt: skip
    return state


def _cacheable(x: Tensor) -> bool:
    """Eager, enabled, and x has a version counter (inference tensors have none, and state made
    in inference mode must not reach a later training forward)."""
    if torch.compiler.is_compiling() or not _ENABLED[0]:
        return False
    return not (torch.is_inference_mode_enabled() or x.is_inference())


def _quantize(x2d: Tensor, spec: QuantSpec, sum_group: int | None, with_sums: bool
              ) -> tuple[Tensor, ...]:  # fmt: skip
    return tuple(_ops.quantize(x2d, **spec.quantize_args(x2d.shape[1]), pack_mask=True,
                               scale=None, zero_point=None, sum_group=sum_group or 0,
                               with_sums=with_sums))  # fmt: skip
