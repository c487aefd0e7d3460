"""torch.ao numerics (docs/numerics.md, family 2): validate a ``QConfig`` and run its observers as
branch-free tensor ops, so a ``Linear`` given a torch.ao qconfig trains exactly like
``prepare_qat(model, mapping={nn.Linear: torch.ao.nn.qat.dynamic.Linear})`` and still compiles with
``fullgraph=True`` (torch.ao's own FakeQuantize branches on tensor values in Python).

The torch.ao ``FakeQuantize`` modules are kept as submodules under torch.ao's names
(``activation_post_process``, ``weight_fake_quant``) so state dicts line up with torch.ao's and
``model.apply(torch.ao.quantization.disable_observer)`` keeps working; their ``forward`` is never
called: :func:`observe` reproduces ``FakeQuantize.forward``'s state update instead.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

_MEMORYLESS_MSG = (
    "Dynamic QAT requires a memoryless observer."
    + "This means a MovingAverage observer with averaging constant equal to 1"
)  # the seed's message, verbatim


_SYMMETRIC = (torch.per_tensor_symmetric, torch.per_channel_symmetric)


def _ao():
    import torch.ao.quantization as q  # noqa: PLC0415 - imported lazily: it prints a notice

    return q


def is_ao_qconfig(qconfig) -> bool:
    return qconfig is not None and hasattr(qconfig, "activation") and hasattr(qconfig, "weight")


def make_fake_quants(qconfig, out_features: int, device=None) -> tuple[nn.Module, nn.Module]:
    """Instantiate and validate ``(activation_post_process, weight_fake_quant)`` for a QConfig.

    They are built on the CPU, where their initial state has values (a meta-device model included:
    torch.ao's ``prepare_qat`` builds them on the default device too), then moved to ``device``.
    Raises the seed's ValueError for a non-memoryless activation observer and NotImplementedError
    naming any observer/fake-quant this module cannot run exactly.
    """
    q = _ao()
    if not q.qconfig._activation_is_memoryless(qconfig):
        raise ValueError(_MEMORYLESS_MSG)
    with torch.device("cpu"):
        act, wfq = qconfig.activation(), qconfig.weight()
        _check_supported(act, "activation", q, allowed_qschemes=(torch.per_tensor_affine,))
        weight_qschemes = (torch.per_tensor_symmetric, torch.per_channel_symmetric)
        _check_supported(wfq, "weight", q, allowed_qschemes=weight_qschemes)
        _check_weight(wfq, out_features)
        act, wfq = _track_flags(act), _track_flags(wfq)
    if device is not None:
        act.to(device)
        wfq.to(device)
    return act, wfq


def _check_weight(wfq: nn.Module, out_features: int) -> None:
    """NotImplementedError unless the weight fake-quant is qint8, per tensor or per channel along
    dim 0; a per-channel state is sized for ``out_features`` channels here (torch.ao sizes it on
    the first observation), so that shapes are static."""
    if wfq.dtype != torch.qint8:
        raise NotImplementedError(f"qconfig.weight: dtype {wfq.dtype} (only torch.qint8 weights)")
    if wfq.qscheme != torch.per_channel_symmetric:
        return
    if wfq.ch_axis != 0:
        raise NotImplementedError(f"qconfig.weight: ch_axis={wfq.ch_axis} (only 0)")
    obs = wfq.activation_post_process
    obs.min_val = torch.full((out_features,), float("inf"))
    obs.max_val = torch.full((out_features,), float("-inf"))
    wfq.scale = torch.ones(out_features)
    wfq.zero_point = torch.zeros(out_features, dtype=torch.int32)


def _track_flags(fq: nn.Module) -> nn.Module:
    """Give a torch.ao FakeQuantize a Python mirror of its ``fake_quant_enabled`` buffer, so the
    forward can branch on it without reading a (GPU) tensor and torch.compile can guard on it; keep
    a CPU copy of its initial state for ``reset_parameters``. ``fq`` must be on the CPU."""
    fq.__class__ = _tracked_class()
    fq.fake_quant_on = bool(fq.fake_quant_enabled[0])
    fq._initial_state = {k: v.clone() for k, v in fq.state_dict().items()}
    return fq


def _flag(buffer: Tensor, loaded: Tensor | None, current: bool) -> bool:
    """The value of a [1] flag buffer after loading a state dict into it: its own, else (a meta
    buffer, which loading leaves without values) the loaded tensor's, else ``current``."""
    for t in (buffer, loaded):
        if t is not None and not t.is_meta and t.numel() == 1:
            return bool(t.reshape(()))
    return current


@functools.cache
def _tracked_class() -> type:
    q = _ao()

    class TrackedFakeQuantize(q.FakeQuantize):
        """torch.ao FakeQuantize whose fake-quant switch is mirrored in ``fake_quant_on``; every
        way torch.ao toggles it (``disable_fake_quant``, ``model.apply(...)``, loading a state
        dict) goes through the two methods below."""

        # training-only: not compiled by TorchScript (jit.trace of a module compiles torch.ao's
        # exported methods, which call this; TorchScript cannot compile super())
        @torch.jit.unused
        def enable_fake_quant(self, enabled: bool = True) -> None:
            super().enable_fake_quant(enabled)
            self.fake_quant_on = bool(enabled)

        # (real annotations: ``from __future__ import annotations`` leaves strings, which
        # TorchScript cannot resolve in a class made in a function)
        enable_fake_quant.__annotations__ = {"enabled": bool, "return": None}

        def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
            super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
            loaded = state_dict.get(prefix + "fake_quant_enabled")
            self.fake_quant_on = _flag(self.fake_quant_enabled, loaded, self.fake_quant_on)

        def reset_parameters(self) -> None:
            """Back to the state it was built with (nothing observed, both switches on): what a
            model built on the meta device needs after ``to_empty``, whose buffers hold whatever
            memory they got. A no-op on the meta device (no values to reset)."""
            if not self.fake_quant_enabled.is_meta:
                self.load_state_dict(self._initial_state)

    # picklable by reference as triton_qat.ao.TrackedFakeQuantize (see the module __getattr__)
    TrackedFakeQuantize.__module__ = __name__
    TrackedFakeQuantize.__qualname__ = "TrackedFakeQuantize"
    return TrackedFakeQuantize


def __getattr__(name: str):
    if name == "TrackedFakeQuantize":  # created lazily: importing torch.ao prints a notice
        return _tracked_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def fake_quant_on(fq: nn.Module) -> bool:
    """The Python mirror of ``fq.fake_quant_enabled`` (see :func:`_track_flags`)."""
    return fq.fake_quant_on


def dynamic_qparams(x: Tensor, qmin: int, qmax: int) -> tuple[Tensor, Tensor]:
    """Per-tensor affine qparams of x as a fresh memoryless torch.ao observer computes them
    (fp32, eps = 2**-23): what torch.ao's dynamic quantized Linear uses at inference."""
    x32 = x.detach().to(torch.float32)
    mn, mx = torch.aminmax(x32)
    eps = torch.tensor([torch.finfo(torch.float32).eps], device=x.device)
    zero = torch.zeros_like(mn)
    min_neg, max_pos = torch.min(mn, zero), torch.max(mx, zero)
    scale = torch.max((max_pos - min_neg) / float(qmax - qmin), eps)
    zp = torch.clamp(qmin - torch.round(min_neg / scale).to(torch.int), qmin, qmax)
    return scale.reshape(1), zp.to(torch.int32).reshape(1)


def _check_supported(fq, role: str, q, allowed_qschemes) -> None:
    obs = getattr(fq, "activation_post_process", None)
    ok_obs = (
        q.observer.MovingAverageMinMaxObserver,
        q.observer.MovingAveragePerChannelMinMaxObserver,
    )
    if type(fq) is not q.FakeQuantize:
        raise NotImplementedError(
            f"qconfig.{role}: {type(fq).__name__} is not supported (torch.ao FakeQuantize only)"
        )
    if type(obs) not in ok_obs:
        raise NotImplementedError(
            f"qconfig.{role}: observer {type(obs).__name__} is not supported "
            "(MovingAverageMinMaxObserver / MovingAveragePerChannelMinMaxObserver only)"
        )
    if fq.qscheme not in allowed_qschemes:
        raise NotImplementedError(f"qconfig.{role}: qscheme {fq.qscheme} is not supported")


def _moving_average(old_min: Tensor, old_max: Tensor, cur_min: Tensor, cur_max: Tensor,
                    c: float) -> tuple[Tensor, Tensor]:  # fmt: skip
    """MovingAverage(PerChannel)MinMaxObserver's update with averaging constant ``c``; the first
    observation is taken as is."""
    if old_min.numel() == 0:  # a per-channel state loaded from an untrained torch.ao module
        return cur_min, cur_max
    first = (old_min == float("inf")) & (old_max == float("-inf"))
    new_min = torch.where(first, cur_min, old_min + c * (cur_min - old_min))
    new_max = torch.where(first, cur_max, old_max + c * (cur_max - old_max))
    return new_min, new_max


def _calculate_qparams(min_val: Tensor, max_val: Tensor, qmin: int, qmax: int, symmetric: bool,
                       eps: Tensor) -> tuple[Tensor, Tensor]:  # fmt: skip
    """UniformQuantizationObserverBase._calculate_qparams for the supported qschemes, branch-free."""
    zero = torch.zeros_like(min_val)
    min_neg = torch.min(min_val, zero)
    max_pos = torch.max(max_val, zero)
    if symmetric:
        scale = torch.max(-min_neg, max_pos) / (float(qmax - qmin) / 2)
        scale = torch.max(scale, eps)
        zp = torch.zeros(scale.shape, dtype=torch.int32, device=scale.device)
    else:
        scale = (max_pos - min_neg) / float(qmax - qmin)
        scale = torch.max(scale, eps)
        zp = qmin - torch.round(min_neg / scale).to(torch.int)
        zp = torch.clamp(zp, qmin, qmax).to(torch.int32)
    # torch.ao returns scale 1 / zero point 0 while nothing has been observed
    valid = ~((min_val == float("inf")) & (max_val == float("-inf")))
    scale = torch.where(valid, scale, torch.ones_like(scale))
    zp = torch.where(valid, zp, torch.zeros_like(zp))
    return scale, zp


def _observer_update(old_min: Tensor, old_max: Tensor, cur_min: Tensor, cur_max: Tensor,
                     eps: Tensor, c: float, qmin: int, qmax: int,
                     symmetric: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """(new min, new max, scale, zero point): the observer's update, then its qparams."""
    new_min, new_max = _moving_average(old_min, old_max, cur_min, cur_max, c)
    scale, zp = _calculate_qparams(new_min, new_max, qmin, qmax, symmetric, eps)
    return new_min, new_max, scale, zp


@torch.library.custom_op("triton_qat::ao_observer_update", mutates_args=())
def _observer_update_op(old_min: Tensor, old_max: Tensor, cur_min: Tensor, cur_max: Tensor,
                        eps: Tensor, c: float, qmin: int, qmax: int,
                        symmetric: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """:func:`_observer_update` as one opaque op: what a compiled graph calls for 16-bit
    observers, whose every step torch rounds to the dtype and Inductor, fusing them, would not
    (hostile trial 6: one bf16 ulp in a scale)."""
    out = _observer_update(old_min, old_max, cur_min, cur_max, eps, c, qmin, qmax, symmetric)
    return tuple(t.clone() for t in out)  # (an op's outputs never alias its inputs)


@_observer_update_op.register_fake
def _(old_min, old_max, cur_min, cur_max, eps, c, qmin, qmax, symmetric):
    out = _observer_update(old_min, old_max, cur_min, cur_max, eps, c, qmin, qmax, symmetric)
    return tuple(torch.empty_like(t) for t in out)


def observe(fq: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """FakeQuantize.forward's state update on ``x`` (gated by ``fq.observer_enabled``), returning
    the (scale, zero_point) it would fake-quantize with. Mutates fq's buffers like torch.ao."""
    obs = fq.activation_post_process
    if x.numel() == 0:  # torch.ao's observers return early on empty input
        return fq.scale, fq.zero_point
    x32 = x.detach().to(obs.min_val.dtype)
    if fq.qscheme == torch.per_channel_symmetric:
        cur_min, cur_max = torch.aminmax(x32.reshape(x32.shape[0], -1), dim=1)
    else:
        cur_min, cur_max = torch.aminmax(x32)
    args = (obs.min_val, obs.max_val, cur_min, cur_max, obs.eps, float(obs.averaging_constant),
            obs.quant_min, obs.quant_max, obs.qscheme in _SYMMETRIC)  # fmt: skip
    if torch.compiler.is_compiling() and x32.dtype != torch.float32:  # see _observer_update_op
        new_min, new_max, scale, zp = _observer_update_op(*args)
    else:
        new_min, new_max, scale, zp = _observer_update(*args)
    on = fq.observer_enabled[0] == 1
    if obs.min_val.shape == new_min.shape:
        obs.min_val.copy_(torch.where(on, new_min, obs.min_val))
        obs.max_val.copy_(torch.where(on, new_max, obs.max_val))
    else:  # first observation after loading an empty per-channel state: torch.ao resizes
        obs.min_val = torch.where(on, new_min, torch.full_like(new_min, float("inf")))
        obs.max_val = torch.where(on, new_max, torch.full_like(new_max, float("-inf")))
    scale = torch.where(on, scale, fq.scale)
    zp = torch.where(on, zp, fq.zero_point)
    if fq.scale.shape != scale.shape:  # e.g. an untrained per-channel state loaded: [1] -> [N]
        fq.scale.resize_(scale.shape)
        fq.zero_point.resize_(zp.shape)
    fq.scale.copy_(scale)
    fq.zero_point.copy_(zp)
    return scale, zp
