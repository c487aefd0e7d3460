"""The one module-swapping core of ``prepare`` / ``convert`` (triton_qat.model) and
``prepare(model, QATConfig)`` / ``from_torchao`` / ``to_torchao`` (triton_qat.torchao_compat).

What a user's module already relies on is part of the contract, as in torch.ao's
``prepare_qat`` / ``convert`` and torchao's ``quantize_``:

* All or nothing: every replacement is built before the first one is swapped in; an error
  building one names the module's path (``fqn``: ...) and leaves the model as it was.
* A module reachable under several names is replaced once, by the same new module everywhere.
* Parametrizations (``torch.nn.utils.parametrize``: ``parametrizations.weight_norm``,
  ``spectral_norm``, LoRA-style ``register_parametrization``): the module is built from a
  stand-in whose parametrized tensors hold their current value (evaluated in eval mode, no
  power-iteration step, and outside autocast), and the parametrizations themselves (the same ``ParametrizationList``
  objects, so their original parameters are shared) move to the replacement, which therefore
  fake-quantizes the parametrized weight recomputed every forward, gradients reaching the
  originals. Where a swap freezes weights (``convert``), the value is frozen instead. The
  deprecated hook-based ``torch.nn.utils.weight_norm`` / ``spectral_norm`` (a plain tensor
  recomputed by a forward pre-hook) are rejected, naming the module and the replacement API.
* Hooks of every kind (forward pre-hooks and forward hooks with their ``with_kwargs`` /
  ``always_call`` flags, full backward (pre-)hooks, state-dict and load-state-dict
  (pre-/post-)hooks) carry over in order, and handles taken before the swap still remove them:
  the replacement takes the very hook dicts the handles refer to, the detached old module keeps
  copies. Not carried: torch.ao's ``_observer_forward_hook``, hooks marked prepare-only
  (:func:`is_prepare_only_hook`), and bound methods of the old module itself (its class's own
  machinery). A load-state-dict pre-hook registered with its module is rebound to the new one.
  State-dict hooks see the new module's keys (after ``convert``: ``weight_codes``, ...).
* The training flag.
* Fused fast paths that read a linear's ``weight`` directly instead of calling it:
  ``nn.TransformerEncoderLayer`` gets a no-op forward pre-hook (:func:`skip_fused_fast_path`; its
  fast path is skipped while any of its submodules has forward hooks) and ``nn.TransformerEncoder``
  ``use_nested_tensor = False``, wherever they hold a swapped-in module. Both survive
  ``deepcopy``, pickling and ``load_state_dict``. (``nn.MultiheadAttention``'s ``out_proj`` is
  never called either; it is not swapped.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.ao.quantization.quantize import _observer_forward_hook
from torch.nn.modules.module import _WrappedHook
from torch.nn.utils import parametrize
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

Select = Callable[[nn.Module, str], bool]
Make = Callable[[nn.Module, str], "nn.Module | None"]

# every hook dict of an nn.Module, with the companion dicts keyed by the same handle ids
_HOOK_DICTS = (
    ("_forward_pre_hooks", ("_forward_pre_hooks_with_kwargs",)),
    ("_forward_hooks", ("_forward_hooks_with_kwargs", "_forward_hooks_always_called")),
    ("_backward_pre_hooks", ()),
    ("_backward_hooks", ()),
    ("_state_dict_pre_hooks", ()),
    ("_state_dict_hooks", ()),
    ("_load_state_dict_pre_hooks", ()),
    ("_load_state_dict_post_hooks", ()),
)
_HOOK_NORMS = {WeightNorm: "weight_norm", SpectralNorm: "spectral_norm"}


def module_path(fqn: str) -> str:
    """How errors and warnings name a module: its fqn, ``<root>`` for the model itself."""
    return fqn or "<root>"


def is_prepare_only_hook(hook: object) -> bool:
    """Whether a hook belongs to the prepared module only (``triton_qat_prepare_only = True``:
    re-added by whoever needs it, never carried to a replacement)."""
    return getattr(hook, "triton_qat_prepare_only", False) is True


def skip_fused_fast_path(module: nn.Module, args: tuple) -> None:
    """Forward pre-hook that does nothing: ``nn.TransformerEncoderLayer`` takes its fused fast
    path (``torch._transformer_encoder_layer_fwd``, reading ``linear1.weight`` /
    ``linear2.weight`` directly instead of calling the swapped modules) only while no submodule
    has forward hooks. Registered by the swaps on layers holding a swapped-in module."""
    return None


# ---------------------------------------------------------------------------------------------
# finding the modules


def find_modules(model: nn.Module, select: Select) -> list[tuple[str, nn.Module]]:
    """``(fqn, module)`` for every module ``select(module, fqn)`` accepts, walking from the root
    (``select`` is asked once per module; an accepted module is listed under each of its names,
    and its children are not visited, as in torchao's ``quantize_``). The internals of
    parametrizations (``module.parametrizations``) are not visited."""
    found: list[tuple[str, nn.Module]] = []
    accepted: dict[int, bool] = {}

    def visit(mod: nn.Module, fqn: str) -> None:
        if id(mod) not in accepted:
            accepted[id(mod)] = bool(select(mod, fqn))
        if accepted[id(mod)]:
            found.append((fqn, mod))
            return
        for name, child in mod._modules.items():
            if child is None or (name == "parametrizations" and parametrize.is_parametrized(mod)):
                continue
            visit(child, f"{fqn}.{name}" if fqn else name)

    visit(model, "")
    return found


# ---------------------------------------------------------------------------------------------
# building a replacement


def _check_no_hook_computed_tensors(mod: nn.Module, fqn: str) -> None:
    """ValueError naming the module when its weight / bias is a plain tensor attribute (the
    deprecated hook-based ``torch.nn.utils.weight_norm`` / ``spectral_norm`` recompute it in a
    forward pre-hook): a replacement could neither share it nor recompute it."""
    where = module_path(fqn)
    for hook in mod._forward_pre_hooks.values():
        kind = _HOOK_NORMS.get(type(hook))
        if kind is not None:
            raise ValueError(
                f"{where}: its {hook.name!r} is recomputed before every forward by the deprecated "
                f"torch.nn.utils.{kind} (a forward pre-hook setting a plain tensor), which the "
                "swapped-in module cannot carry; use torch.nn.utils.parametrizations."
                f"{kind} instead (its parametrization moves to the swapped-in module, which "
                f"fake-quantizes the normalized weight), after torch.nn.utils.remove_{kind}"
                "(module), or exclude the module with filter_fn"
            )
    for name in ("weight", "bias"):
        value = mod.__dict__.get(name)
        if isinstance(value, Tensor):
            raise ValueError(
                f"{where}: its {name!r} is a plain tensor attribute, not a registered Parameter, "
                "buffer or parametrization, so a swapped-in module cannot share it; register it "
                "as an nn.Parameter (or a torch.nn.utils.parametrize parametrization), or "
                "exclude the module with filter_fn"
            )


def _held_tensor(plist: nn.Module) -> Tensor:
    """The (first) original tensor a ``ParametrizationList`` holds."""
    return plist.original if plist.is_tensor else plist.original0


def current_value(plist: nn.Module) -> Tensor:
    """A parametrization's value as its module computes it in eval mode (spectral_norm: no
    power-iteration step), without gradient and outside autocast (in the originals' dtypes);
    every training flag is left as it was."""
    device_type = _held_tensor(plist).device.type
    autocast_off = (
        torch.autocast(device_type, enabled=False)
        if torch.amp.is_autocast_available(device_type)
        else contextlib.nullcontext()
    )
    modes = [(m, m.training) for m in plist.modules()]
    plist.eval()
    try:
        with torch.no_grad(), autocast_off:
            return plist()
    finally:
        for m, training in modes:
            m.training = training


def _unparametrized(mod: nn.Module) -> nn.Module:
    """A stand-in for a parametrized module that builders read as an unparametrized one: an
    instance of its class before parametrization sharing its attributes, submodules (but
    ``parametrizations``), parameters and buffers, each parametrized tensor a new Parameter (or
    buffer) holding its current value. The module itself is not changed."""
    cls = parametrize.type_before_parametrizations(mod)
    view = cls.__new__(cls)
    view.__dict__.update(mod.__dict__)
    view._parameters = dict(mod._parameters)
    view._buffers = dict(mod._buffers)
    view._modules = {k: v for k, v in mod._modules.items() if k != "parametrizations"}
    for name, plist in mod.parametrizations.items():
        value = current_value(plist)
        held = _held_tensor(plist)
        if isinstance(held, nn.Parameter):
            view._parameters[name] = nn.Parameter(value, requires_grad=held.requires_grad)
        else:
            view._buffers[name] = value
    return view


def _move_parametrizations(old: nn.Module, new: nn.Module, fqn: str) -> None:
    """Give ``new`` the very parametrizations of ``old`` (their original parameters shared)."""
    for name, plist in old.parametrizations.items():
        if not isinstance(getattr(new, name, None), Tensor):
            raise ValueError(
                f"{module_path(fqn)}: its parametrization of {name!r} cannot move to the "
                f"{type(new).__name__} replacing it, which has no tensor {name!r}; fold it first "
                f"with torch.nn.utils.parametrize.remove_parametrizations(module, {name!r})"
            )
        # registering a placeholder makes ``new`` parametrized (its class, the property)
        parametrize.register_parametrization(new, name, nn.Identity(), unsafe=True)
        new.parametrizations[name] = plist


def _located(err: Exception, fqn: str) -> Exception:
    """``err`` with its message prefixed by the module's path (same type) unless it names it."""
    prefix = f"{module_path(fqn)}: "
    if str(err).startswith(prefix):
        return err
    try:
        located = type(err)(prefix + str(err))
    except Exception:  # an exception type not built from a message: a note instead
        located = None
    if type(located) is not type(err):
        err.add_note(f"raised while building the replacement of {module_path(fqn)}")
        return err
    return located


def _build(mod: nn.Module, fqn: str, make: Make, carry_parametrizations: bool):
    """``make``'s replacement of ``mod`` (None: left alone), with ``mod``'s parametrizations
    moved over (``carry_parametrizations``) and its training flag; errors name ``fqn``."""
    try:
        _check_no_hook_computed_tensors(mod, fqn)
        parametrized = parametrize.is_parametrized(mod)
        new = make(_unparametrized(mod) if parametrized else mod, fqn)
        if new is None:
            return None
        new.train(mod.training)  # before the moved parametrizations: they keep their own flags
        if parametrized and carry_parametrizations:
            _move_parametrizations(mod, new, fqn)
        return new
    except Exception as err:
        located = _located(err, fqn)
        if located is err:
            raise
        raise located from err


# ---------------------------------------------------------------------------------------------
# swapping in


def _carried(hook: object, old: nn.Module) -> bool:
    """Whether a hook of ``old`` carries over to its replacement."""
    if hook is _observer_forward_hook or is_prepare_only_hook(hook):
        return False
    inner = hook.hook if isinstance(hook, _WrappedHook) else hook
    return getattr(inner, "__self__", None) is not old  # not the old class's own machinery


def _rebound(hook: object, old: nn.Module, new: nn.Module) -> object:
    """A load-state-dict pre-hook registered with ``old`` as its module, bound to ``new``."""
    if isinstance(hook, _WrappedHook) and hook.with_module and hook.module() is old:
        return _WrappedHook(hook.hook, new)
    return hook


def _hand_over_hooks(old: nn.Module, new: nn.Module) -> None:
    """Give ``new`` the very hook dicts of ``old`` (so handles taken on ``old`` remove hooks
    from ``new``), holding ``new``'s own hooks first and then ``old``'s carried ones; ``old``
    keeps copies of its dicts, as they were."""
    for main, companions in _HOOK_DICTS:
        kept = {hid for hid, hook in getattr(old, main).items() if _carried(hook, old)}
        for name in (main, *companions):
            handed = getattr(old, name)
            setattr(old, name, type(handed)(handed))
            carried = [(hid, _rebound(h, old, new)) for hid, h in handed.items() if hid in kept]
            handed.clear()
            handed.update(getattr(new, name))
            handed.update(carried)
            setattr(new, name, handed)
    if old._backward_hooks:
        new._is_full_backward_hook = old._is_full_backward_hook


def _swap(model: nn.Module, fqn: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``fqn``; returns the model (``new`` itself for the root)."""
    if fqn == "":
        return new
    parent_name, _, child = fqn.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
    return model


def _keep_fused_fast_paths_off(model: nn.Module, swapped_in: list[nn.Module]) -> None:
    """Switch off, where they hold a swapped-in module, the fused fast paths that would read its
    ``weight`` instead of calling it (see the module docstring)."""
    ids = {id(m) for m in swapped_in}
    for mod in model.modules():
        if not isinstance(mod, (nn.TransformerEncoderLayer, nn.TransformerEncoder)):
            continue
        if not any(id(m) in ids for m in mod.modules()):
            continue
        if isinstance(mod, nn.TransformerEncoder):
            mod.use_nested_tensor = False
        elif skip_fused_fast_path not in mod._forward_pre_hooks.values():
            mod.register_forward_pre_hook(skip_fused_fast_path)


class SwapPlan:
    """Replacements built first, swapped in together by :meth:`commit` (all or nothing).

    ``carry_parametrizations``: move parametrizations to the replacements (trainable swaps);
    False where the replacement freezes the parametrized value (``convert``)."""

    def __init__(self, *, carry_parametrizations: bool = True) -> None:
        self.carry_parametrizations = carry_parametrizations
        self._old: dict[int, nn.Module] = {}
        self._new: dict[int, nn.Module | None] = {}
        self._names: list[tuple[str, int]] = []

    def add(self, model: nn.Module, select: Select, make: Make) -> nn.Module:
        """Build the replacement ``make(module, fqn)`` (None: left alone) of every module
        ``select`` accepts (:func:`find_modules`); returns ``model`` unchanged (the signature of
        the swap function ``prepare_embeddings`` takes)."""
        self.add_matches(find_modules(model, select), make)
        return model

    def add_matches(self, matches: list[tuple[str, nn.Module]], make: Make) -> None:
        """Build the replacements of ``(fqn, module)`` pairs (a module listed under several
        names is built once)."""
        for fqn, mod in matches:
            if id(mod) not in self._new:
                self._old[id(mod)] = mod
                self._new[id(mod)] = _build(mod, fqn, make, self.carry_parametrizations)
            self._names.append((fqn, id(mod)))

    def replaces(self, mod: nn.Module) -> bool:
        """Whether ``mod`` was handed to a builder (which may have left it alone)."""
        return id(mod) in self._new

    def commit(self, model: nn.Module) -> nn.Module:
        """Swap every built replacement in, with the old modules' hooks; returns the model (or
        the new module when the root itself was replaced)."""
        swapped_in = []
        for key, new in self._new.items():
            if new is not None:
                _hand_over_hooks(self._old[key], new)
                swapped_in.append(new)
        for fqn, key in self._names:
            if self._new[key] is not None:
                model = _swap(model, fqn, self._new[key])
        _keep_fused_fast_paths_off(model, swapped_in)
        return model


def swap_modules(
    model: nn.Module,
    matches: list[tuple[str, nn.Module]],
    make: Make,
    *,
    carry_parametrizations: bool = True,
) -> nn.Module:
    """Replace each ``(fqn, module)`` of ``matches`` by ``make(module, fqn)`` (None: left alone),
    all or nothing (:class:`SwapPlan`); returns the model, or the new root."""
    plan = SwapPlan(carry_parametrizations=carry_parametrizations)
    plan.add_matches(matches, make)
    return plan.commit(model)


def swap_selected(
    model: nn.Module, select: Select, make: Make, *, carry_parametrizations: bool = True
) -> nn.Module:
    """:func:`swap_modules` of the modules ``select`` accepts (:func:`find_modules`)."""
    return swap_modules(
        model, find_modules(model, select), make, carry_parametrizations=carry_parametrizations
    )
