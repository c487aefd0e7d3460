"""Model-level API: ``prepare`` (nn.Linear -> tq.Linear, nn.Embedding -> tq.Embedding) and
``convert`` (tq.Linear -> QuantizedLinear, or QuantizedFloat8Linear for float8 / float8-int4
layers, or QuantizedMXLinear for MX / NVFP4 layers; tq.Embedding -> QuantizedEmbedding)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils.parametrize import is_parametrized, type_before_parametrizations

from triton_qat import ao, torchao_compat
from triton_qat.checks import MAX_IN_FEATURES, check_filter_fn, check_module
from triton_qat.config import (
    DEFAULT_ACTIVATION,
    DEFAULT_WEIGHT,
    FLOAT8_FAMILY,
    Float8Config,
    Float8Int4WeightConfig,
    MXConfig,
    NVFP4Config,
    QuantConfig,
)
from triton_qat.embedding import (
    Embedding,
    QuantizedEmbedding,
    check_prepare_embedding_config,
    prepare_embeddings,
)
from triton_qat.linear import Linear
from triton_qat.quantized import QuantizedFloat8Linear, QuantizedLinear, QuantizedLinearModule
from triton_qat.quantized_mx import QuantizedMXLinear
from triton_qat.spec import spec_for
from triton_qat.swap import SwapPlan, find_modules, module_path, swap_selected

FilterFn = Callable[[nn.Module, str], bool]
# what prepare's weight= takes (anything else in its place after a torchao QATConfig: filter_fn)
_CONFIGS = (QuantConfig, Float8Config, Float8Int4WeightConfig, MXConfig, NVFP4Config)


# the torch.ao qconfig of a module that an explicit ``qconfig = None`` keeps in float
_KEEP_FLOAT = object()


def _effective_qconfigs(model: nn.Module, root_qconfig=None) -> dict[str, object]:
    """Each module's torch.ao qconfig after propagation from its parents, as ``prepare_qat``'s
    ``propagate_qconfig_`` does: a module's own ``qconfig`` attribute, when it has one, wins over
    its parent's, so an explicit ``qconfig = None`` inside a parent's torch.ao qconfig keeps the
    module and its children (but those with a qconfig of their own) in float: ``_KEEP_FLOAT``.
    Outside any torch.ao qconfig, None attributes are as absent ones: None. ``root_qconfig``:
    the root's qconfig in place of its attribute (``prepare(qconfig=...)``)."""
    result: dict[str, object] = {}

    def walk(mod: nn.Module, prefix: str, inherited) -> None:
        own = getattr(mod, "qconfig", inherited)
        if not prefix and root_qconfig is not None:
            own = root_qconfig
        cfg = _KEEP_FLOAT if own is None and inherited is not None else own
        result[prefix] = cfg
        for name, child in mod._modules.items():
            if child is not None:
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
            are passed explicitly: then every linear ``filter_fn`` accepts gets them, and
            ``qconfig`` attributes are not read (select modules with ``filter_fn``).
        filter_fn: ``filter_fn(module, fqn) -> bool``; modules it rejects are left alone.
        qconfig: a torch.ao ``QConfig``: the same as setting ``model.qconfig = qconfig`` first
            (torch.ao numerics, propagated to the children as ``prepare_qat`` does: a module's
            own ``qconfig`` attribute wins, and ``qconfig = None`` keeps it and its children in
            float, unless they have a qconfig of their own). Not with ``activation`` /
            ``weight``. Without any torch.ao qconfig in scope, ``qconfig = None`` attributes
            (e.g. left by ``propagate_qconfig_``) are as absent ones.
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
    ``prepare`` then. Parametrized linears (``torch.nn.utils.parametrizations.weight_norm`` /
    ``spectral_norm``, LoRA-style ``register_parametrization``) are prepared too: their
    parametrizations move to the new module, which fake-quantizes the parametrized weight, and
    gradients reach the original parameters. Hooks of every kind (forward, backward, state-dict)
    and the training flag carry over, and handles taken before ``prepare`` still remove them; an
    ``nn.TransformerEncoderLayer`` holding a prepared linear no longer takes its fused fast path
    (which reads the weight directly). See :mod:`triton_qat.swap` for the whole contract. All or
    nothing: an error names the module and leaves the model as it was. Linears whose shape the
    configs cannot quantize (a group size not dividing ``in_features``, no features, more
    ``in_features`` than the int8 GEMM sums) stay ``nn.Linear`` and are named in a warning.
    """
    check_module(model)
    check_filter_fn(filter_fn)
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
            if filter_fn is None and weight is not None and not isinstance(weight, _CONFIGS):
                filter_fn, weight = weight, None  # (check_filter_fn names a non-callable one)
        if activation is not None or weight is not None:
            raise ValueError(
                "config: a torchao QATConfig is not combined with activation= / weight="
            )
        check_filter_fn(filter_fn)  # (given positionally: in weight's place)
        return torchao_compat.prepare_qat_config(model, config, filter_fn)
    explicit = activation is not None or weight is not None
    if embedding is not None:
        check_prepare_embedding_config(embedding)
    if qconfig is not None:
        if explicit:
            raise ValueError("qconfig: pass a torch.ao qconfig or activation=/weight=, not both")
        if not ao.is_ao_qconfig(qconfig):
            raise TypeError(f"qconfig: expected a torch.ao QConfig, got {type(qconfig).__name__}")
    # explicit configs: torchao numerics for every linear filter_fn accepts, qconfigs unread
    qconfigs = {} if explicit else _effective_qconfigs(model, qconfig)
    skipped = []

    def select(mod: nn.Module, fqn: str) -> bool:
        if type_before_parametrizations(mod) is not nn.Linear or qconfigs.get(fqn) is _KEEP_FLOAT:
            return False
        return filter_fn is None or filter_fn(mod, fqn)

    def make(mod: nn.Linear, fqn: str) -> Linear | None:
        ao_qconfig = qconfigs.get(fqn)
        why_not = _unquantizable(mod, None if ao_qconfig is not None else weight)
        if why_not is not None:
            skipped.append(f"{module_path(fqn)} ({why_not})")
            return None
        if ao_qconfig is not None:
            return Linear.from_float(mod, qconfig=ao_qconfig)
        return Linear.from_float(mod, activation=activation, weight=weight)

    plan = SwapPlan()  # linears and embeddings built first, then swapped together
    plan.add(model, select, make)
    if embedding is not None:
        prepare_embeddings(model, embedding, filter_fn, plan.add)
        _warn_parametrized_embeddings_left(model, filter_fn, plan)
    # what the warnings name is found before anything is swapped (filter_fn is asked then, so an
    # error it raises leaves the model as it was), and said once the swap is done
    advice = _linear_subclasses_left(
        model, lambda mod, fqn: qconfigs.get(fqn) is not _KEEP_FLOAT and (
            filter_fn is None or filter_fn(mod, fqn))
    )  # fmt: skip
    if explicit:  # (the layers this prepare swaps in have these very configs)
        advice += _prepared_with_other_configs(model, activation, weight, filter_fn)
    prepared = plan.commit(model)
    for message in advice:
        warnings.warn(message, stacklevel=2)
    if qconfig is not None and prepared is model:  # (a swapped root has it from from_float)
        model.qconfig = qconfig
    if skipped:
        warnings.warn(
            f"triton_qat.prepare: left as nn.Linear, shapes tq.Linear cannot quantize: "
            f"{', '.join(skipped)}",
            stacklevel=2,
        )
    return prepared


def _prepared_with_other_configs(
    model: nn.Module, activation: object, weight: object, filter_fn: FilterFn | None
) -> list[str]:
    """The warning (a list of at most one) naming the layers ``filter_fn`` accepts that are
    ``tq.Linear`` already, with configs other than the explicit ones: prepare swaps
    ``nn.Linear`` only, so they keep what they have."""
    want = (
        DEFAULT_ACTIVATION if activation is None else activation,
        DEFAULT_WEIGHT if weight is None else weight,
    )

    def other(mod: nn.Module, fqn: str) -> bool:  # (filter_fn asked of those layers only)
        if not isinstance(mod, Linear):
            return False
        if not mod.uses_ao_numerics and (mod.activation_config, mod.weight_config) == want:
            return False
        return filter_fn is None or filter_fn(mod, fqn)

    names = [module_path(fqn) for fqn, _ in find_modules(model, other)]
    if not names:
        return []
    return [
        "triton_qat.prepare: already triton_qat.Linear with other configs, left as they are "
        f"(prepare swaps nn.Linear only): {', '.join(names)}"
    ]


def _torchao_qat_module(kind: type) -> bool:
    """A torchao QAT module class (``FakeQuantizedLinear``, ``FakeQuantizedEmbedding``, their
    subclasses such as the legacy ``Int8DynActInt4WeightQATLinear``), told by its class
    hierarchy's module paths, without importing torchao."""
    return any(
        c.__module__.startswith("torchao.") and "FakeQuantized" in c.__name__ for c in kind.__mro__
    )


def _linear_subclasses_left(model: nn.Module, accepts: FilterFn) -> list[str]:
    """The warnings naming the modules :func:`prepare` (its exact-type selection, as torch.ao's
    mappings) leaves though they are ``nn.Linear`` subclasses ``accepts`` takes: torchao's QAT
    modules (``tq.from_torchao`` takes those it supports), torch.ao's (prepare takes float
    models), and other subclasses, whose forward may not be ``F.linear``. Not named:
    MultiheadAttention's ``out_proj`` (the attention reads its weight directly) and triton_qat's
    own classes."""
    groups: dict[str, list[str]] = {"torchao": [], "torch.ao": [], "other": []}
    for fqn, mod in find_modules(model, lambda mod, fqn: _linear_subclass(mod)):
        if accepts(mod, fqn):
            kind = type_before_parametrizations(mod)
            group = ("torchao" if _torchao_qat_module(kind)
                     else "torch.ao" if kind.__module__.startswith("torch.ao.") else "other")  # fmt: skip
            groups[group].append(f"{module_path(fqn)} ({kind.__module__}.{kind.__qualname__})")
    advice = {
        "torchao": "torchao QAT modules: tq.from_torchao(model) swaps FakeQuantizedLinear / "
        "FakeQuantizedEmbedding / MX / NVFP4 ones for triton_qat modules computing the same "
        "(other torchao QAT classes are not supported)",
        "torch.ao": "torch.ao QAT modules: tq.prepare takes the float model (with its qconfig, "
        "or qconfig=) in place of torch.ao's prepare_qat",
        "other": "subclasses of nn.Linear (prepare swaps exact nn.Linear modules, as torch.ao "
        "does: a subclass's forward may differ); tq.prepare(model, QATConfig(...)) swaps "
        "subclasses as torchao's quantize_ does, or swap one yourself with tq.Linear.from_float",
    }
    return [
        f"triton_qat.prepare: left as they are, {advice[group]}: {', '.join(names)}"
        for group, names in groups.items()
        if names
    ]


def _linear_subclass(mod: nn.Module) -> bool:
    kind = type_before_parametrizations(mod)
    own = kind.__module__.startswith("triton_qat.")  # tq.Linear, reference.ReferenceLinear
    return (
        issubclass(kind, nn.Linear)
        and kind is not nn.Linear
        and not own
        and not issubclass(kind, nn.modules.linear.NonDynamicallyQuantizableLinear)
    )


def _warn_parametrized_embeddings_left(
    model: nn.Module, filter_fn: FilterFn | None, plan: SwapPlan
) -> None:
    """Name the parametrized ``nn.Embedding`` modules ``filter_fn`` accepts that
    ``prepare_embeddings`` left alone (it selects the exact type ``nn.Embedding``)."""

    def left(mod: nn.Module, fqn: str) -> bool:
        if type_before_parametrizations(mod) is not nn.Embedding or not is_parametrized(mod):
            return False
        return not plan.replaces(mod) and (filter_fn is None or filter_fn(mod, fqn))

    names = [module_path(fqn) for fqn, _ in find_modules(model, left)]
    if names:
        warnings.warn(
            "triton_qat.prepare: left as nn.Embedding, parametrized (prepare(embedding=...) swaps "
            f"plain nn.Embedding only): {', '.join(names)}; fold the parametrization first "
            "(torch.nn.utils.parametrize.remove_parametrizations), or prepare them with a torchao "
            "QATConfig (tq.prepare(model, QATConfig(weight_config=...), filter_fn)), which "
            "carries it",
            stacklevel=3,
        )


def _unquantizable(mod: nn.Linear, weight: object | None) -> str | None:
    """Why a tq.Linear with the weight config ``weight`` cannot take ``mod``'s shape (None: it
    can)."""
    if mod.in_features < 1 or mod.out_features < 1:
        return f"in_features={mod.in_features}, out_features={mod.out_features}: empty"
    if mod.in_features > MAX_IN_FEATURES:
        return f"in_features={mod.in_features}: more than the int8 GEMM's {MAX_IN_FEATURES}"
    if isinstance(weight, (MXConfig, NVFP4Config)):
        if mod.in_features % weight.block_size:
            return (
                f"in_features={mod.in_features}: block_size={weight.block_size} does not divide it"
            )
        return None
    if isinstance(weight, Float8Config):  # per row / per tensor: any in_features
        group = None
    elif isinstance(weight, Float8Int4WeightConfig):
        group = weight.group_size
    elif isinstance(weight, QuantConfig):
        group = spec_for(weight).group_size
    else:  # None (the default), or not a config: tq.Linear's own check names it
        group = None
    if group is not None and mod.in_features % group:
        return f"in_features={mod.in_features}: group_size={group} does not divide it"
    return None


def _same_codes(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether the buffers both hold (by name) agree in layout and value."""
    for name in a.keys() & b.keys():
        x, y = a[name], b[name]
        if (x.shape, x.dtype, x.device) != (y.shape, y.dtype, y.device):
            return False
        if x.is_floating_point():  # by bits: NaN codes and scales compare equal to themselves
            bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
            x, y = x.view(bits[x.element_size()]), y.view(bits[y.element_size()])
        if not x.is_meta and not torch.equal(x, y):
            return False
    return True


def convert(model: nn.Module) -> nn.Module:
    """Swap every :class:`triton_qat.Linear` for a :class:`QuantizedLinear` (int8 inference; a
    float8 layer, :class:`Float8Config` or :class:`Float8Int4WeightConfig` weight: a
    :class:`QuantizedFloat8Linear`, e4m3 or packed int4 codes; an MX / NVFP4 layer: a
    :class:`QuantizedMXLinear`, its element codes and block scales) and every
    :class:`triton_qat.Embedding` for a :class:`QuantizedEmbedding`, in place; returns the model
    (or the new module when ``model`` itself is one of them). Each converted layer computes
    what the prepared one computes in eval mode (torchao numerics: bit for bit;
    docs/numerics.md "Converting").

    Hooks (with their handles) and the training flag carry over, as in :func:`prepare`; a
    parametrized layer's weight is frozen as its parametrization computes it in eval mode. All
    or nothing: an error names the module and leaves the model as it was. Modules
    that share a weight Parameter (tied weights, an embedding tied to ``lm_head`` too) share their
    codes and scales (linears: code sums and a shared bias too) after conversion; if they quantize
    it differently (different configs or layouts), they cannot, and a warning names them."""
    check_module(model)
    # id(weight) -> (the weight, first module's fqn, {buffer name: the shared buffer}); the
    # weight is held so that its id is not reused (a parametrized weight is a fresh tensor)
    tied: dict[int, tuple[torch.Tensor, str, dict[str, torch.Tensor]]] = {}
    biases: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(bias) -> (it, converted)
    untied, disabled = [], []

    def make(mod: nn.Module, fqn: str) -> nn.Module:
        if not mod.fake_quant_enabled:  # (torch.ao family: either half switched off)
            disabled.append(module_path(fqn))
        if isinstance(mod, Embedding):
            new = QuantizedEmbedding.from_qat(mod)
        else:
            new = _quantized_linear_class(mod.weight_config).from_qat(mod)
            if mod.bias is not None:
                new.bias = biases.setdefault(id(mod.bias), (mod.bias, new.bias))[1]
        # the quantized weight: codes, scales (linears: code sums, zero points), by name
        own = {k: b for k, b in new._buffers.items() if k.startswith("weight_") and b is not None}
        _, first_fqn, shared = tied.setdefault(id(mod.weight), (mod.weight, fqn, own))
        if shared is not own:
            if _same_codes(shared, own):
                for name in own:
                    setattr(new, name, shared.setdefault(name, own[name]))
            else:
                untied.append(f"{module_path(fqn)} (tied to {module_path(first_fqn)})")
        return new

    def select(mod: nn.Module, fqn: str) -> bool:
        return isinstance(mod, (Linear, Embedding))

    # a parametrized layer's weight is frozen as it is now: its parametrizations do not carry
    model = swap_selected(model, select, make, carry_parametrizations=False)
    torchao = find_modules(
        model, lambda mod, fqn: _torchao_qat_module(type_before_parametrizations(mod))
    )
    if torchao:
        warnings.warn(
            "triton_qat.convert: left torchao QAT modules as they are (convert takes triton_qat "
            f"modules): {', '.join(module_path(fqn) for fqn, _ in torchao)}; call "
            "tq.from_torchao(model) before tq.convert, or convert with torchao's "
            'quantize_(model, QATConfig(..., step="convert"))',
            stacklevel=2,
        )
    if untied:
        warnings.warn(
            "triton_qat.convert: tied weights quantized differently (different configs or "
            f"layouts), so their quantized buffers are not shared: {', '.join(untied)}",
            stacklevel=2,
        )
    if disabled:
        warnings.warn(
            "triton_qat.convert: quantized, though their fake quantization was disabled (they "
            "computed in float until now, so their outputs change, as torch.ao's and torchao's "
            f"convert do): {', '.join(disabled)}",
            stacklevel=2,
        )
    return model


def _quantized_linear_class(weight_config: object) -> type[nn.Module]:
    """The converted module class of a tq.Linear with this weight config (None: torch.ao)."""
    if isinstance(weight_config, (MXConfig, NVFP4Config)):
        return QuantizedMXLinear
    if isinstance(weight_config, FLOAT8_FAMILY):
        return QuantizedFloat8Linear
    return QuantizedLinear


def weight_nbytes(model: nn.Module) -> dict[str, int]:
    """Weight bytes of a model's linear layers: ``{"stored": ..., "bf16": ...}`` where ``bf16`` is
    what the same layers take as plain bf16 ``nn.Linear`` weights and biases. A tensor shared
    by several layers (tied weights; after ``convert`` their shared codes and scales) counts
    once, on both sides."""
    check_module(model)
    seen: set[int] = set()

    def new(t: torch.Tensor | None) -> bool:
        fresh = t is not None and id(t) not in seen
        if fresh:
            seen.add(id(t))
        return fresh

    stored = bf16 = 0
    for mod in model.modules():
        if isinstance(mod, QuantizedLinearModule):
            weight = id(mod.weight_codes) not in seen  # before the buffers are marked seen
            bias = mod.bias is not None and id(mod.bias) not in seen
            bf16 += 2 * mod.out_features * (mod.in_features * weight + bias)
            stored += sum(b.numel() * b.element_size() for b in mod.buffers(recurse=False)
                          if new(b))  # fmt: skip
        elif isinstance(mod, nn.Linear):
            for t in (mod.weight, mod.bias):
                if new(t):
                    stored += t.numel() * t.element_size()
                    bf16 += 2 * t.numel()
    return {"stored": stored, "bf16": bf16}
