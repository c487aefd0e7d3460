"""Model-level API: ``prepare`` (nn.Linear -> tq.Linear) and ``convert`` (tq.Linear -> QuantizedLinear)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

from torch import nn

from triton_qat.config import QuantConfig
from triton_qat.linear import Linear
from triton_qat.quantized import QuantizedLinear

FilterFn = Callable[[nn.Module, str], bool]


def _swap(model: nn.Module, fqn: str, new: nn.Module) -> nn.Module:
    if fqn == "":
        return new
    parent_name, _, child = fqn.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
    return model


def _effective_qconfigs(model: nn.Module) -> dict[str, object]:
    """Each module's torch.ao qconfig after propagation from its parents (as prepare_qat does)."""
    result: dict[str, object] = {}

    def walk(mod: nn.Module, prefix: str, inherited) -> None:
        own = getattr(mod, "qconfig", None)
        cfg = own if own is not None else inherited
        result[prefix] = cfg
        for name, child in mod.named_children():
            walk(child, f"{prefix}.{name}" if prefix else name, cfg)

    walk(model, "", None)
    return result


def prepare(
    model: nn.Module,
    activation: QuantConfig | None = None,
    weight: QuantConfig | None = None,
    filter_fn: FilterFn | None = None,
) -> nn.Module:
    """Swap every ``nn.Linear`` of ``model`` for a :class:`triton_qat.Linear`, in place.

    Args:
        model: any module (a bare ``nn.Linear`` too; then the new module is returned). Works on
            the meta device.
        activation, weight: :class:`QuantConfig` for torchao numerics (defaults: int8 per-token
            asymmetric / int8 per-channel symmetric). A module with a torch.ao ``qconfig`` (its own
            or a parent's, as in ``prepare_qat``) uses torch.ao numerics instead, unless configs
            are passed explicitly.
        filter_fn: ``filter_fn(module, fqn) -> bool``; modules it rejects are left alone.

    Parameters are shared, not copied: an optimizer made before ``prepare`` trains the same
    tensors. Linears whose shape the configs cannot quantize (a group size not dividing
    ``in_features``) stay ``nn.Linear`` and are named in a warning.
    """
    qconfigs = _effective_qconfigs(model)
    explicit = activation is not None or weight is not None
    skipped = []
    for fqn, mod in list(model.named_modules()):
        if type(mod) is not nn.Linear or (filter_fn is not None and not filter_fn(mod, fqn)):
            continue
        qconfig = None if explicit else qconfigs.get(fqn)
        if qconfig is not None:
            mod.qconfig = qconfig
            new = Linear.from_float(mod)
        else:
            if weight is not None and weight.granularity == "per_group":
                if mod.in_features % weight.group_size != 0:
                    skipped.append(f"{fqn or '<root>'} (in_features={mod.in_features})")
                    continue
            if getattr(mod, "qconfig", None) is not None:
                mod.qconfig = None
            new = Linear.from_float(mod, activation=activation, weight=weight)
        model = _swap(model, fqn, new)
    if skipped:
        warnings.warn(
            f"triton_qat.prepare: left as nn.Linear, group_size={weight.group_size} does not divide "
            f"in_features: {', '.join(skipped)}",
            stacklevel=2,
        )
    return model


def convert(model: nn.Module) -> nn.Module:
    """Swap every :class:`triton_qat.Linear` for a :class:`QuantizedLinear` (int8 inference), in
    place; returns the model (or the new module when ``model`` itself is a tq.Linear)."""
    for fqn, mod in list(model.named_modules()):
        if isinstance(mod, Linear):
            model = _swap(model, fqn, QuantizedLinear.from_qat(mod))
    return model


def weight_nbytes(model: nn.Module) -> dict[str, int]:
    """Weight bytes of a model's linear layers: ``{"stored": ..., "bf16": ...}`` where ``bf16`` is
    what the same layers take as plain bf16 ``nn.Linear`` weights and biases."""
    stored = bf16 = 0
    for mod in model.modules():
        if isinstance(mod, QuantizedLinear):
            stored += mod.weight_nbytes()
            bf16 += 2 * mod.out_features * (mod.in_features + (mod.bias is not None))
        elif isinstance(mod, nn.Linear):
            n = mod.weight.numel() + (mod.bias.numel() if mod.bias is not None else 0)
            stored += n * mod.weight.element_size()
            bf16 += 2 * n
    return {"stored": stored, "bf16": bf16}
