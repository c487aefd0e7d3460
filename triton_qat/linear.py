"""``triton_qat.Linear``: a drop-in ``nn.Linear`` whose forward is the fused fake-quantized matmul."""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from triton_qat import ao
from triton_qat.checks import (
    FLOAT_DTYPES,
    UNPARAMETRIZE,
    check_in_features,
    check_linear_inputs,
    check_not_parametrized,
    refuse_script,
)
from triton_qat.config import (
    DEFAULT_ACTIVATION,
    DEFAULT_WEIGHT,
    FLOAT8_FAMILY,
    NOT_QUANTIZED,
    Float8Config,
    MXConfig,
    NVFP4Config,
    QuantConfig,
)
from triton_qat.functional import ao_fake_quantize, check_configs, fused_linear
from triton_qat.mx import MXLinear, check_mx_dtype
from triton_qat.spec import ao_spec, spec_for
from triton_qat.swap import current_value


class _Float8Linear:
    """A float8 layer's forward, called as the fused int linears are:
    ``f(x, weight, bias, w_scale=None)`` (``w_scale`` unused: float8 scales are dynamic)."""

    __slots__ = ("activation", "weight_config")

    def __init__(self, activation: object, weight_config: Float8Config) -> None:
        self.activation, self.weight_config = activation, weight_config

    def __call__(self, x: Tensor, weight: Tensor, bias: Tensor | None, w_scale=None) -> Tensor:
        from triton_qat.float8 import float8_linear

        check_linear_inputs(x, weight, bias)
        return float8_linear(x, weight, bias, self.activation, self.weight_config)


def _is_dtensor(t: Tensor) -> bool:
    """Whether ``t`` is a DTensor (FSDP2's parameters), without importing torch.distributed's
    tensor package where nothing uses it."""
    dtensor = sys.modules.get("torch.distributed.tensor")
    return dtensor is not None and isinstance(t, dtensor.DTensor)


class Linear(nn.Linear):
    """Linear layer with dynamic fake quantization of its input and weight (QAT).

    Two numerics families (docs/numerics.md):

    * ``qconfig`` = a torch.ao ``QConfig`` (e.g. ``default_dynamic_qat_qconfig``): trains exactly like
      ``torch.ao.nn.qat.dynamic.Linear`` after ``prepare_qat``, observer state included (kept in
      torch.ao-named submodules ``activation_post_process`` and ``weight_fake_quant``).
    * otherwise torchao numerics with ``activation`` (default int8 per-token asymmetric) and
      ``weight`` (default int8 per-channel symmetric) :class:`QuantConfig`\\ s. Weights may be
      asymmetric per channel / per group (``symmetric=False``, torchao's weight formula; the int8
      GEMM applies their zero points). ``activation=NOT_QUANTIZED`` trains weight-only QAT
      (torchao's ``activation_config=None``): a float GEMM on the fake-quantized weight.

    Shapes: input [..., in_features] in fp32 / fp16 / bf16 (any strides), output [..., out_features]
    in the input's dtype. The backward keeps int8 codes, per-token qparams and a 1-bit clamp mask of
    the input (about 1.1 bytes per element), not the input itself.
    """

    # the fused linear of the configs in _fused_for: made with the layer, so that a forward
    # changes no attribute (a compiled forward would guard on the new one and compile twice,
    # and activation checkpointing under fullgraph=True refuses the side effect); a forward
    # after the configs were replaced makes the new one
    _fused = None
    _fused_for = (None, None)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        qconfig=None,
        device=None,
        dtype=None,
        *,
        activation: QuantConfig | Float8Config | None = None,
        weight: QuantConfig | Float8Config | None = None,
    ) -> None:
        """``activation`` / ``weight``: :class:`QuantConfig` (None: the default), or both
        :class:`Float8Config` (e4m3, torchao's float8 QAT), or a :class:`Float8Config`
        activation with a :class:`Float8Int4WeightConfig` weight (torchao's
        ``Float8DynamicActivationInt4WeightConfig``), or both :class:`MXConfig` / both
        :class:`NVFP4Config` (torchao's MX / NVFP4 QAT, a GEMM on the dequantized fp32 / bf16
        values); ``activation=NOT_QUANTIZED``: weight-only QAT."""
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        check_in_features(in_features)
        if dtype is not None and dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype: expected float32, float16 or bfloat16, got {dtype}")
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._fake_quant_on = True
        self.qconfig = qconfig
        if qconfig is not None:
            if activation is not None or weight is not None:
                raise ValueError(
                    "qconfig: pass a torch.ao qconfig or activation=/weight=, not both"
                )
            if not ao.is_ao_qconfig(qconfig):
                raise TypeError(
                    f"qconfig: expected a torch.ao QConfig, got {type(qconfig).__name__}"
                )
            act_fq, w_fq = ao.make_fake_quants(qconfig, out_features, self.weight.device)
            self.activation_post_process = act_fq
            self.weight_fake_quant = w_fq
            self.activation_config = self.weight_config = None
            self._fused = _ao_fused(act_fq, w_fq)  # qparams given per call, ranges fixed
        else:
            self.activation_config = activation if activation is not None else DEFAULT_ACTIVATION
            self.weight_config = weight if weight is not None else DEFAULT_WEIGHT
            check_configs(self.activation_config, self.weight_config, in_features)
            if isinstance(self.weight_config, (MXConfig, NVFP4Config)):
                check_mx_dtype(self.weight.dtype, "dtype")
            if self.weight_config.range_learning:  # torchao's range learning: trained scales
                self.weight_scale = nn.Parameter(self._initial_weight_scale())
                # (a bound method: the class's own machinery, which swaps do not carry)
                self.register_load_state_dict_post_hook(self._ranges_from_a_loaded_weight)
            self._new_fused()

    @property
    def uses_ao_numerics(self) -> bool:
        return self.qconfig is not None

    def forward(self, input: Tensor) -> Tensor:
        if self._fake_quant_on and self.qconfig is None:  # torchao numerics: the hot path
            fused, wcfg = self._fused, self.weight_config
            if fused is None or self._fused_for != (self.activation_config, wcfg):
                fused = self._new_fused()
            w_scale = None
            if wcfg.range_learning:  # learned scales, fp32 as the kernels read them
                w_scale = self.weight_scale
                w_scale = w_scale if w_scale.dtype == torch.float32 else w_scale.float()
            out = fused(input, self.weight, self.bias, w_scale)
        else:  # the weight read once: a parametrized one is computed per read
            weight, bias = self.weight, self.bias
            check_linear_inputs(input, weight, bias)
            out = self._forward_ao(input, weight, bias) if self.qconfig is not None else (
                _plain_linear(input, weight, bias))  # fmt: skip
        dev = out.device.type
        if (dev == "cuda" or dev == "cpu") and torch.is_autocast_enabled(dev):
            return _autocast_output(out)
        return out

    def _new_fused(self):
        """The fused linear of the current configs (kept until they are replaced), checked
        against the layer (configs may be replaced after construction)."""
        check_configs(self.activation_config, self.weight_config, self.in_features)
        act = self.activation_config
        if isinstance(self.weight_config, FLOAT8_FAMILY):  # fp8 GEMM or the dequantized path
            self._fused = _Float8Linear(act, self.weight_config)
        elif isinstance(self.weight_config, (MXConfig, NVFP4Config)):  # dequantized (Blackwell: no)
            self._fused = MXLinear(act, self.weight_config)
        else:
            a_spec = None if act is NOT_QUANTIZED else spec_for(act)
            self._fused = fused_linear(a_spec, spec_for(self.weight_config))
        self._fused_for = (act, self.weight_config)
        return self._fused

    def _forward_ao(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """torch.ao family: observers run whenever their observer_enabled flag is set, and each
        FakeQuantize's fake_quant_enabled flag switches its own half, as in torch.ao."""
        a_fq, w_fq = self.activation_post_process, self.weight_fake_quant
        a_scale, a_zp = ao.observe(a_fq, input)
        w_scale, _ = ao.observe(w_fq, weight)
        a_on, w_on = ao.fake_quant_on(a_fq), ao.fake_quant_on(w_fq)
        a_range, w_range = (a_fq.quant_min, a_fq.quant_max), (w_fq.quant_min, w_fq.quant_max)
        if a_on and w_on:
            fused = self._fused
            if fused is None:  # a layer pickled before it had one
                fused = self._fused = _ao_fused(a_fq, w_fq)
            N = weight.shape[0]
            w_scale = w_scale.to(torch.float32).reshape(-1, 1).expand(N, 1)
            a_qparams = (
                a_scale.to(torch.float32).reshape(1, 1),
                a_zp.to(torch.int32).reshape(1, 1),
            )
            return fused(input, weight, bias, w_scale, a_qparams)
        if a_on:
            input = ao_fake_quantize(input, a_range, a_scale, a_zp)
        if w_on:
            weight = ao_fake_quantize(weight, w_range, w_scale.reshape(-1, 1), None)
        return _plain_linear(input, weight, bias)

    # -- range learning -----------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """``nn.Linear``'s initialization, then the learned scales from the new weight: a model
        built on the meta device and materialized with ``to_empty`` + ``reset_parameters`` gets
        real scales, not what the empty memory held."""
        super().reset_parameters()
        cfg = getattr(self, "weight_config", None)  # unset while nn.Linear.__init__ runs this
        if cfg is not None and cfg.range_learning and hasattr(self, "weight_scale"):
            self.initialize_ranges()
        for name in ("activation_post_process", "weight_fake_quant"):  # torch.ao observers
            fq = self._modules.get(name)  # not there yet while nn.Linear.__init__ runs this
            if fq is not None:
                fq.reset_parameters()

    @torch.no_grad()
    def _initial_weight_scale(self) -> Tensor:
        """The weight's dynamic symmetric scales [N, G] (fp32), clamped at 1e-9 as torchao does
        when it turns them into parameters. A DTensor weight (FSDP2) whose rows are sharded as
        the scales' are (or replicated): each rank's scales from its own rows."""
        if parametrize.is_parametrized(self, "weight"):  # (spectral_norm: no power iteration)
            w = current_value(self.parametrizations.weight)
        else:
            w = self.weight.detach()
        if _is_dtensor(w):
            from torch.distributed.tensor import DTensor

            scale = getattr(self, "weight_scale", None)
            if not (isinstance(scale, DTensor) and scale.device_mesh == w.device_mesh
                    and scale.placements == w.placements
                    and all(p.is_replicate() or p.is_shard(0) for p in w.placements)):  # fmt: skip
                raise ValueError(
                    "initialize_ranges: the weight is a DTensor whose rows are not sharded as "
                    "weight_scale's; initialize the ranges before sharding the model"
                )
            local = self._scales_of(w.to_local())
            return DTensor.from_local(local, scale.device_mesh, scale.placements,
                                      shape=scale.shape, stride=scale.stride())  # fmt: skip
        return self._scales_of(w)

    def _scales_of(self, w: Tensor) -> Tensor:
        """The dynamic symmetric scales [N, G] (fp32, clamped at 1e-9) of a plain weight w."""
        spec = spec_for(self.weight_config)
        scale = torch.ops.triton_qat.quantize(
            w, **spec.quantize_args(w.shape[1]), pack_mask=False, scale=None, zero_point=None
        )[1]
        return scale.clamp(min=1e-9)

    @torch.no_grad()
    def initialize_ranges(self) -> Linear:
        """Set the learned weight scales (``QuantConfig(range_learning=True)``) to the current
        weight's dynamic scales, as torchao's ``initialize_fake_quantizers`` does; done at
        construction, by ``from_float`` and by ``load_state_dict`` of a state dict with a weight
        and no ``weight_scale`` (a float checkpoint), again after changing the weight if wanted."""
        if self.weight_config is None or not self.weight_config.range_learning:
            raise ValueError("range_learning: this layer's weight config does not learn ranges")
        scale = self._initial_weight_scale()
        if self.weight_scale.device != scale.device:  # a meta layer given a real weight (assign)
            self.weight_scale = nn.Parameter(scale, self.weight_scale.requires_grad)
        else:
            self.weight_scale.copy_(scale)
        return self

    def _weight_keys(self) -> tuple[str, ...]:
        """Where a state dict holds this layer's weight: ``weight``, or its parametrization's
        originals (``original``; ``original0``, ``original1`` ... for weight_norm's g and v)."""
        if not parametrize.is_parametrized(self, "weight"):
            return ("weight",)
        plist = self.parametrizations.weight
        names = (
            ("original",) if plist.is_tensor else [f"original{i}" for i in range(plist.ntensors)]
        )
        return tuple(f"parametrizations.weight.{name}" for name in names)

    def _ranges_from_a_loaded_weight(self, module: Linear, incompatible_keys) -> None:
        """Load-state-dict post hook of a range-learning layer: the learned scales from the
        weight just loaded, where :meth:`_load_from_state_dict` marked them."""
        if self.__dict__.pop("_ranges_from_loaded_weight", False):
            self.initialize_ranges()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:  # fmt: skip
        """``nn.Module``'s; a state dict that has the weight (a parametrized weight's
        ``original`` too) but no ``weight_scale`` (a float checkpoint) marks the learned scales
        for :meth:`_ranges_from_a_loaded_weight`, which sets them from the loaded weight once
        the load is done (a parametrization's own state loads after this module's), instead of
        leaving the scales of the weight before (or the uninitialized memory of ``to_empty``).
        ``load_state_dict`` still lists ``weight_scale`` among the missing keys."""
        errors = len(error_msgs)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)  # fmt: skip
        has_weight = any(prefix + k in state_dict for k in self._weight_keys())
        if has_weight and prefix + "weight_scale" not in state_dict and len(error_msgs) == errors:
            self._ranges_from_loaded_weight = True

    # -- toggles (torch.ao names) -------------------------------------------------------------
    def disable_fake_quant(self) -> Linear:
        """Make this module an exact ``nn.Linear`` until :meth:`enable_fake_quant`."""
        return self._set_fake_quant(False)

    def enable_fake_quant(self) -> Linear:
        return self._set_fake_quant(True)

    def _set_fake_quant(self, on: bool) -> Linear:
        self._fake_quant_on = on
        for fq in self._ao_fake_quants():
            fq.enable_fake_quant(on)
        return self

    @property
    def fake_quant_enabled(self) -> bool:
        """Whether the forward fake-quantizes (torch.ao family: both halves switched on)."""
        if self.uses_ao_numerics:
            return all(ao.fake_quant_on(fq) for fq in self._ao_fake_quants())
        return self._fake_quant_on

    def disable_observer(self) -> Linear:
        """Freeze torch.ao observers (qparams stay as stored). Family 1 has no observer state."""
        for fq in self._ao_fake_quants():
            fq.disable_observer()
        return self

    def enable_observer(self) -> Linear:
        for fq in self._ao_fake_quants():
            fq.enable_observer()
        return self

    def _ao_fake_quants(self) -> list[nn.Module]:
        if not self.uses_ao_numerics:
            return []
        return [self.activation_post_process, self.weight_fake_quant]

    # -- conversion ---------------------------------------------------------------------------
    @classmethod
    def from_float(
        cls,
        mod: nn.Linear,
        *,
        qconfig=None,
        activation: QuantConfig | None = None,
        weight: QuantConfig | None = None,
    ) -> Linear:
        """Wrap an ``nn.Linear`` sharing its parameters (an optimizer built before keeps working).

        torch.ao numerics with ``qconfig`` (a torch.ao ``QConfig``), else with ``mod.qconfig`` when
        it is set and no configs are given; torchao numerics with ``activation`` / ``weight``."""
        if not isinstance(mod, nn.Linear):
            raise TypeError(f"mod: expected an nn.Linear, got {type(mod).__name__}")
        check_not_parametrized(
            mod, "nn.Linear", "tq.prepare(mod) moves the parametrizations onto the new module"
        )
        if qconfig is not None and (activation is not None or weight is not None):
            raise ValueError("qconfig: pass a torch.ao qconfig or activation=/weight=, not both")
        if qconfig is None:
            qconfig = getattr(mod, "qconfig", None)
        if activation is not None or weight is not None:
            qconfig = None
        new = cls(
            mod.in_features,
            mod.out_features,
            mod.bias is not None,
            qconfig=qconfig,
            device=mod.weight.device,
            dtype=mod.weight.dtype,
            activation=activation,
            weight=weight,
        )
        new.weight = mod.weight
        new.bias = mod.bias
        if new.weight_config is not None and new.weight_config.range_learning:
            new.initialize_ranges()  # from the weight it now shares
        return new

    def to_float(self) -> nn.Linear:
        """An ``nn.Linear`` sharing this module's parameters."""
        check_not_parametrized(self, "tq.Linear", UNPARAMETRIZE, "self", "to_float")
        lin = nn.Linear(self.in_features, self.out_features, self.bias is not None, device="meta")
        lin.weight = self.weight
        lin.bias = self.bias
        return lin

    def __prepare_scriptable__(self):  # torch.jit.script: a clear refusal
        refuse_script(self)

    def extra_repr(self) -> str:
        base = super().extra_repr()
        if self.uses_ao_numerics:
            return f"{base}, numerics=torch.ao, fake_quant={self.fake_quant_enabled}"
        return (
            f"{base}, activation={self.activation_config}, weight={self.weight_config}, "
            f"fake_quant={self.fake_quant_enabled}"
        )


def _ao_fused(a_fq: nn.Module, w_fq: nn.Module):
    """The fused linear of torch.ao numerics with these fake quants' code ranges."""
    return fused_linear(ao_spec(a_fq.quant_min, a_fq.quant_max),
                        ao_spec(w_fq.quant_min, w_fq.quant_max, symmetric=True))  # fmt: skip


def _autocast_output(out: Tensor) -> Tensor:
    """Under autocast, return what nn.Linear would: the autocast dtype. (The fused op itself
    computes in the input's dtype, from a weight fake-quantized in its own dtype, as torchao
    does before autocast casts the fake-quantized values for F.linear.)"""
    dev = out.device.type
    if dev in ("cuda", "cpu") and torch.is_autocast_enabled(dev):
        dtype = torch.get_autocast_dtype(dev)
        if out.dtype != dtype:
            return out.to(dtype)
    return out


def _plain_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """F.linear in x's dtype (parameters cast like autocast would)."""
    bias = bias.to(x.dtype) if bias is not None else None
    return F.linear(x, weight.to(x.dtype), bias)
