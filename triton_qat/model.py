"""Model-level API: ``prepare`` (nn.Linear -> tq.Linear, nn.Embedding -> tq.Embedding) and
``convert`` (tq.Linear -> QuantizedLinear, tq.Embedding -> QuantizedEmbedding)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.ao.quantization.quantize import _observer_forward_hook

from triton_qat import ao, torchao_compat
from triton_qat.config import QuantConfig
from triton_qat.embedding import (
    Embedding,
    QuantizedEmbedding,
    check_prepare_embedding_config,
    prepare_embeddings,
)
from triton_qat.linear import Linear
from triton_qat.quantized import QuantizedLinear
from triton_qat.spec import spec_for

FilterFn = Callable[[nn.Module, str], bool]


def _swap(model: nn.Module, fqn: str, new: nn.Module) -> nn.Module:
    if fqn == "":
        return new
    parent_name, _, child = fqn.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
    return model


def _carry_module_state(old: nn.Module, new: nn.Module) -> nn.Module:
    """Give ``new`` what torch.ao's ``swap_module`` carries over from the module it replaces: the
    forward pre-hooks and forward hooks, in order, with their ``with_kwargs`` / ``always_call``
    flags (torch.ao's own observer hook excepted), and the training flag."""
    for hid, hook in old._forward_pre_hooks.items():
        if torchao_compat.is_prepare_only_hook(hook):  # re-added by whoever needs it
            continue
        new.register_forward_pre_hook(hook, with_kwargs=hid in old._forward_pre_hooks_with_kwargs)
    for hid, hook in old._forward_hooks.items():
        if hook is _observer_forward_hook:
            continue
        new.register_forward_hook(
            hook,
            with_kwargs=hid in old._forward_hooks_with_kwargs,
            always_call=hid in old._forward_hooks_always_called,
        )
    new.train(old.training)
    return new


def _swap_all(model: nn.Module, select: Callable[[nn.Module, str], bool], make) -> nn.Module:
    """Replace every module ``select`` accepts by ``make(module, fqn)`` (None: left alone). A module
    reachable under several names is replaced once, by the same new module everywhere."""
    done: dict[int, nn.Module | None] = {}  # the listing keeps the old modules (and ids) alive
    for fqn, mod in list(model.named_modules(remove_duplicate=False)):
        if id(mod) not in done:
            if not select(mod, fqn):
                continue
            new = make(mod, fqn)
            done[id(mod)] = None if new is None else _carry_module_state(mod, new)
        if done[id(mod)] is not None:
            model = _swap(model, fqn, done[id(mod)])
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
    *,
    qconfig=None,
    embedding: QuantConfig | None = None,
    config=None,
) -> nn.Module:
    """Swap every ``nn.Linear`` of ``model`` for a :class:`triton_qat.Linear` (with ``embedding=``,
    every ``nn.Embedding`` for a :class:`triton_qat.Embedding`), in place.

    Args:
        model: any module (a bare ``nn.Linear`` too; then the new module is returned). Works on
            the meta device.
        activation, weight: :class:`QuantConfig` for torchao numerics (defaults: int8 per-token
            asymmetric / int8 per-channel symmetric). A module with a torch.ao ``qconfig`` (its own
            or a parent's, as in ``prepare_qat``) uses torch.ao numerics instead, unless configs
            are passed explicitly.
        filter_fn: ``filter_fn(module, fqn) -> bool``; modules it rejects are left alone.
        qconfig: a torch.ao ``QConfig``: the same as setting ``model.qconfig = qconfig`` first
            (torch.ao numerics, propagated to the children as ``prepare_qat`` does). Not with
            ``activation`` / ``weight``.
        embedding: a symmetric per_channel / per_group :class:`QuantConfig`: also swap every
            ``nn.Embedding`` (that ``filter_fn`` accepts) for a :class:`triton_qat.Embedding`.
            None (default): embeddings are left alone.
        config: a torchao ``QATConfig`` (also accepted as the second positional argument, with
            ``filter_fn`` third, as in torchao's ``quantize_(model, config, filter_fn)``): the
            modules torchao's ``quantize_`` would prepare (``nn.Linear`` by default, embeddings
            when ``filter_fn`` selects them) become triton_qat modules computing what torchao's
            would (:func:`triton_qat.torchao_compat.prepare_qat_config`).

    Parameters are shared, not copied: an optimizer made before ``prepare`` trains the same
    tensors (tied weights stay tied), except the new ``weight_scale`` parameters of learned
    ranges (``range_learning=True``): build the optimizer, DDP and ``fully_shard`` after
    ``prepare`` then. Forward (pre-)hooks and the training flag carry over to the
    new modules, as in torch.ao's ``prepare_qat``. Linears whose shape the configs cannot quantize
    (a group size not dividing ``in_features``) stay ``nn.Linear`` and are named in a warning.
    """
    if config is not None or torchao_compat.is_torchao_config(activation):
        if config is not None and activation is not None:
            raise ValueError(
                "config: pass a torchao QATConfig as config= or positionally, not both"
            )
        if qconfig is not None or embedding is not None:
            raise ValueError(
                "config: a torchao QATConfig is not combined with qconfig= / embedding="
            )
        if config is None:  # prepare(model, qat_config, filter_fn)
            config, activation = activation, None
            if filter_fn is None and callable(weight):
                filter_fn, weight = weight, None
        if activation is not None or weight is not None:
            raise ValueError(
                "config: a torchao QATConfig is not combined with activation= / weight="
            )
        return torchao_compat.prepare_qat_config(model, config, filter_fn)
    explicit = activation is not None or weight is not None
    if embedding is not None:
        check_prepare_embedding_config(embedding)
    if qconfig is not None:
        if explicit:
            raise ValueError("qconfig: pass a torch.ao qconfig or activation=/weight=, not both")
        if not ao.is_ao_qconfig(qconfig):
            raise TypeError(f"qconfig: expected a torch.ao QConfig, got {type(qconfig).__name__}")
        model.qconfig = qconfig
    qconfigs = _effective_qconfigs(model)
    skipped = []

    def select(mod: nn.Module, fqn: str) -> bool:
        return type(mod) is nn.Linear and (filter_fn is None or filter_fn(mod, fqn))

    def make(mod: nn.Linear, fqn: str) -> Linear | None:
        qconfig = None if explicit else qconfigs.get(fqn)
        if qconfig is not None:
            mod.qconfig = qconfig
            return Linear.from_float(mod)
        w_group = spec_for(weight).group_size if weight is not None else None
        if w_group is not None:
            if mod.in_features % w_group != 0:
                skipped.append(f"{fqn or '<root>'} (in_features={mod.in_features})")
                return None
        if getattr(mod, "qconfig", None) is not None:
            mod.qconfig = None
        return Linear.from_float(mod, activation=activation, weight=weight)

    model = _swap_all(model, select, make)
    if embedding is not None:
        model = prepare_embeddings(model, embedding, filter_fn, _swap_all)
    if skipped:
        warnings.warn(
            f"triton_qat.prepare: left as nn.Linear, group_size={weight.group_size} does not divide "
            f"in_features: {', '.join(skipped)}",
            stacklevel=2,
        )
    return model


def _same_codes(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether the buffers both hold (by name) agree in layout and value."""
    for name in a.keys() & b.keys():
        x, y = a[name], b[name]
        if (x.shape, x.dtype, x.device) != (y.shape, y.dtype, y.device):
            return False
        if not x.is_meta and not torch.equal(x, y):
            return False
    return True


def convert(model: nn.Module) -> nn.Module:
    """Swap every :class:`triton_qat.Linear` for a :class:`QuantizedLinear` (int8 inference) and
    every :class:`triton_qat.Embedding` for a :class:`QuantizedEmbedding`, in place; returns the
    model (or the new module when ``model`` itself is one of them).

    Forward (pre-)hooks and the training flag carry over, as in torch.ao's ``convert``. Modules
    that share a weight Parameter (tied weights, an embedding tied to ``lm_head`` too) share their
    codes and scales (linears: code sums and a shared bias too) after conversion; if they quantize
    it differently (different configs or layouts), they cannot, and a warning names them."""
    # id(weight Parameter) -> (first module's fqn, {buffer name: the shared buffer})
    tied: dict[int, tuple[str, dict[str, torch.Tensor]]] = {}
    biases: dict[int, torch.Tensor] = {}  # id(bias Parameter) -> the first converted bias
    untied = []

    def make(mod: nn.Module, fqn: str) -> nn.Module:
        if isinstance(mod, Embedding):
            new = QuantizedEmbedding.from_qat(mod)
        else:
            new = QuantizedLinear.from_qat(mod)
            if mod.bias is not None:
                new.bias = biases.setdefault(id(mod.bias), new.bias)
        # the quantized weight: codes, scales (linears: code sums, zero points), by name
        own = {k: b for k, b in new._buffers.items() if k.startswith("weight_") and b is not None}
        first_fqn, shared = tied.setdefault(id(mod.weight), (fqn, own))
        if shared is not own:
            if _same_codes(shared, own):
                for name in own:
                    setattr(new, name, shared.setdefault(name, own[name]))
            else:
                untied.append(f"{fqn or '<root>'} (tied to {first_fqn or '<root>'})")
        return new

    model = _swap_all(model, lambda mod, fqn: isinstance(mod, (Linear, Embedding)), make)
    if untied:
        warnings.warn(
            "triton_qat.convert: tied weights quantized differently (different configs or "
            f"layouts), so their quantized buffers are not shared: {', '.join(untied)}",
            stacklevel=2,
        )
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
