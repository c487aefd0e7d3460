"""torchao interop: take a torchao QAT config or a torchao-prepared model, train on triton_qat.

Three entry points (torchao is optional: it is imported only when one of them is called):

* ``tq.prepare(model, QATConfig(...), filter_fn=...)``: one line in place of torchao's
  ``quantize_(model, QATConfig(..., step="prepare"), filter_fn)``. The same modules are prepared
  (``nn.Linear`` by default, ``nn.Embedding`` when ``filter_fn`` selects them), with the
  fake-quantization numerics torchao's ``FakeQuantizedLinear`` / ``FakeQuantizedEmbedding`` would
  use (:func:`prepare_qat_config`).
* ``tq.from_torchao(model)``: swap the ``FakeQuantizedLinear`` / ``FakeQuantizedEmbedding`` of a
  model torchao prepared for triton_qat's, sharing their parameters.
* ``tq.to_torchao(model)``: swap them back, so that torchao's own ``quantize_(model,
  QATConfig(base_config, step="convert"))`` runs on the trained model.

:func:`to_quant_config` is the one translation of a torchao fake-quantize config into a
:class:`~triton_qat.QuantConfig`; a config it cannot express exactly raises
``NotImplementedError`` naming the field.

What "the same numerics" means: fake-quantized activations, weights and embedding rows are
bit-identical to torchao's (docs/numerics.md, family 1 is torchao's ``IntxFakeQuantizer``);
embedding lookups are therefore bit-identical; linear outputs differ from torchao's
``F.linear`` of the same fake-quantized operands only by the float rounding of the matmul
(triton_qat's int8 GEMM sums exactly), weight-only linears' not at all (the same ``F.linear`` on
the same fake-quantized weight), and gradients by float rounding. Learned weight ranges
(torchao's ``range_learning=True``) live in ``tq.Linear.weight_scale`` (torchao:
``weight_fake_quantizer.scale``); :func:`from_torchao` / :func:`to_torchao` hand the parameter
itself across, so state-dict names differ there (``weight_scale`` vs
``weight_fake_quantizer.scale``): load a checkpoint into the kind of module it was saved from.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import SimpleNamespace

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrize import is_parametrized, type_before_parametrizations

from triton_qat.checks import check_module
from triton_qat.config import (
    NOT_QUANTIZED,
    Float8Config,
    Float8Int4WeightConfig,
    MXConfig,
    NVFP4Config,
    QuantConfig,
)
from triton_qat.embedding import Embedding
from triton_qat.linear import Linear
from triton_qat.swap import find_modules, module_path, swap_modules, swap_selected

FilterFn = Callable[[nn.Module, str], bool]
_INSTALL = "pip install 'triton_qat[torchao]' (torchao 0.18)"


def is_torchao_config(obj: object) -> bool:
    """Whether ``obj`` is a torchao object (checked by its module name: torchao is not imported)."""
    return type(obj).__module__.partition(".")[0] == "torchao"


@functools.cache
def _torchao() -> SimpleNamespace:
    """The torchao names this module uses, imported on first use."""
    try:
        import torchao.prototype.mx_formats.config as mx_config
        import torchao.prototype.qat as prototype_qat
        import torchao.quantization.granularity as granularity
        import torchao.quantization.qat as qat
        import torchao.quantization.qat.api as qat_api
        import torchao.quantization.qat.fake_quantize_config as fq_config
        import torchao.quantization.quant_api as quant_api
        import torchao.quantization.quant_primitives as primitives
        from torchao.quantization.quantize_.common.kernel_preference import KernelPreference
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"triton_qat's torchao interop needs torchao: {_INSTALL}") from e
    return SimpleNamespace(
        PerAxis=granularity.PerAxis,
        PerGroup=granularity.PerGroup,
        PerToken=granularity.PerToken,
        PerRow=granularity.PerRow,
        PerTensor=granularity.PerTensor,
        Float8FakeQuantizeConfig=qat.Float8FakeQuantizeConfig,
        Int4WeightFakeQuantizeConfig=fq_config.Int4WeightFakeQuantizeConfig,
        FakeQuantizedEmbedding=qat.FakeQuantizedEmbedding,
        FakeQuantizedLinear=qat.FakeQuantizedLinear,
        IntxFakeQuantizeConfig=qat.IntxFakeQuantizeConfig,
        QATConfig=qat.QATConfig,
        IntXQuantizationAwareTrainingConfig=qat_api.IntXQuantizationAwareTrainingConfig,
        infer_fake_quantize_configs=fq_config._infer_fake_quantize_configs,
        is_linear=quant_api._is_linear,
        DTYPE_TO_BIT_WIDTH=primitives._DTYPE_TO_BIT_WIDTH,
        DTYPE_TO_QVALUE_BOUNDS=primitives._DTYPE_TO_QVALUE_BOUNDS,
        ZeroPointDomain=primitives.ZeroPointDomain,
        MXFakeQuantizeConfig=prototype_qat.MXFakeQuantizeConfig,
        MXFakeQuantizedLinear=prototype_qat.MXFakeQuantizedLinear,
        NVFP4FakeQuantizeConfig=prototype_qat.NVFP4FakeQuantizeConfig,
        NVFP4FakeQuantizedLinear=prototype_qat.NVFP4FakeQuantizedLinear,
        ScaleCalculationMode=mx_config.ScaleCalculationMode,
        KernelPreference=KernelPreference,
    )


# ---------------------------------------------------------------------------------------------
# the mapping


def to_quant_config(config: object, role: str, name: str | None = None) -> QuantConfig | object:
    """The :class:`QuantConfig` whose numerics equal torchao's ``IntxFakeQuantizer(config)``.

    Args:
        config: a torchao fake-quantize config (``IntxFakeQuantizeConfig``), or None (no fake
            quantization of that tensor: for a linear's activation, :data:`~triton_qat.NOT_QUANTIZED`,
            weight-only QAT).
        role: ``"activation"`` (a linear's input) or ``"weight"`` (a linear's weight or an
            embedding table).
        name: how errors name the config (default ``"<role>_config"``).

    This is the one place torchao's fake-quantize schemes become triton_qat's (and
    :func:`to_torchao_config` the way back). Mapped: asymmetric per-token activations; symmetric
    or asymmetric (``is_symmetric=False``) per-channel / per-group weights; weight-only linears
    (``activation_config=None`` -> ``NOT_QUANTIZED``); learned symmetric weight scales
    (``range_learning=True``, ``is_dynamic=False`` -> ``QuantConfig(range_learning=True)``).
    Raises ``NotImplementedError`` naming the field for what triton_qat does not emulate: no
    weight config, other config classes (float8, MX, NVFP4, ``Int4WeightFakeQuantizeConfig``),
    unsigned or 1-bit dtypes, static qparams without range learning, range learning of
    activations or of asymmetric weights (torchao learns float zero points), a custom ``eps``,
    scales other than fp32 (``None``, torchao's "the input's dtype", is accepted and checked to be
    fp32 when the module runs), non-int32 or float-domain zero points, symmetric activations
    (torchao 0.18 has none), and activations other than per token.
    """
    ao = _torchao()
    name = name or f"{role}_config"
    if role not in ("activation", "weight"):
        raise ValueError(f"role: expected 'activation' or 'weight', got {role!r}")
    if config is None:
        if role == "activation":  # weight-only QAT (torchao's FakeQuantizedLinear, no act. fq)
            return NOT_QUANTIZED
        raise NotImplementedError(
            f"{name}=None: triton_qat fake-quantizes the weight of every module it prepares"
        )
    if isinstance(config, ao.Float8FakeQuantizeConfig):
        return _to_float8_config(config, name)
    if isinstance(config, ao.Int4WeightFakeQuantizeConfig):
        return _to_float8_int4_config(config, role, name)
    if isinstance(config, ao.MXFakeQuantizeConfig):
        return _to_mx_config(config, name)
    if isinstance(config, ao.NVFP4FakeQuantizeConfig):
        return NVFP4Config(use_per_tensor_scale=bool(config.use_per_tensor_scale))
    if not isinstance(config, ao.IntxFakeQuantizeConfig):
        raise NotImplementedError(
            f"{name}: {type(config).__name__} is not supported; triton_qat reproduces torchao's "
            "integer fake quantization, IntxFakeQuantizeConfig, Float8FakeQuantizeConfig, "
            "MXFakeQuantizeConfig and NVFP4FakeQuantizeConfig"
        )
    bits = ao.DTYPE_TO_BIT_WIDTH.get(config.dtype)
    bounds = ao.DTYPE_TO_QVALUE_BOUNDS.get(config.dtype)
    if bits is None or not 2 <= bits <= 8 or bounds != (-(1 << (bits - 1)), (1 << (bits - 1)) - 1):
        raise NotImplementedError(
            f"{name}.dtype={config.dtype}: triton_qat supports signed codes of 2 to 8 bits "
            "(torch.int2 ... torch.int8)"
        )
    if config.range_learning:
        if role == "activation":
            raise NotImplementedError(
                f"{name}.range_learning=True: triton_qat learns weight ranges only (activations' "
                "qparams are computed from every input)"
            )
        if not config.is_symmetric:
            raise NotImplementedError(
                f"{name}.range_learning=True with mapping_type={config.mapping_type}: torchao "
                "learns asymmetric zero points as float parameters; triton_qat learns the scales "
                "of symmetric weights (zero point 0) only"
            )
        if config.is_dynamic:
            raise NotImplementedError(
                f"{name}.is_dynamic=True with range_learning=True: torchao's learned ranges are "
                "static (is_dynamic=False)"
            )
    elif not config.is_dynamic:
        raise NotImplementedError(
            f"{name}.is_dynamic=False: triton_qat computes qparams from every tensor (dynamic), "
            "or learns the weight scales (range_learning=True)"
        )
    if config.eps is not None:
        raise NotImplementedError(
            f"{name}.eps={config.eps}: triton_qat uses torchao's default eps (None: the smallest "
            "normal number of the tensor's dtype)"
        )
    if config.scale_precision not in (torch.float32, None):
        raise NotImplementedError(
            f"{name}.scale_precision={config.scale_precision}: triton_qat keeps fp32 scales "
            "(torch.float32; None, the tensor's dtype, is the same for fp32 tensors)"
        )
    if config.zero_point_precision != torch.int32:
        raise NotImplementedError(
            f"{name}.zero_point_precision={config.zero_point_precision}: triton_qat keeps int32 "
            "zero points (torch.int32)"
        )
    if config.zero_point_domain != ao.ZeroPointDomain.INT:
        raise NotImplementedError(
            f"{name}.zero_point_domain={config.zero_point_domain}: triton_qat adds the zero point "
            "to the integer code (ZeroPointDomain.INT)"
        )
    g = config.granularity
    if role == "activation":
        if not isinstance(g, ao.PerToken):
            raise NotImplementedError(
                f"{name}.granularity={g}: activations are fake-quantized per token (PerToken())"
            )
        if config.is_symmetric:
            raise NotImplementedError(
                f"{name}.mapping_type={config.mapping_type}: torchao 0.18 fake-quantizes "
                "activations asymmetrically only (its symmetric per-token path raises), so there "
                "are no torchao numerics to reproduce; use MappingType.ASYMMETRIC, or "
                "tq.QuantConfig(symmetric=True) directly"
            )
        return QuantConfig(bits=bits, granularity="per_token", symmetric=False)
    sym, learn = bool(config.is_symmetric), bool(config.range_learning)
    if isinstance(g, ao.PerAxis) and g.axis == 0:
        return QuantConfig(
            bits=bits, granularity="per_channel", symmetric=sym, range_learning=learn
        )
    if isinstance(g, ao.PerGroup):
        return QuantConfig(bits=bits, granularity="per_group", symmetric=sym,
                           group_size=g.group_size, range_learning=learn)  # fmt: skip
    raise NotImplementedError(
        f"{name}.granularity={g}: weights are fake-quantized per channel (PerAxis(0)) or per "
        "group (PerGroup(group_size))"
    )


def _to_float8_int4_config(config: object, role: str, name: str) -> Float8Int4WeightConfig:
    """torchao's ``Int4WeightFakeQuantizeConfig`` (fp8 activations) -> :class:`Float8Int4WeightConfig`;
    its bf16-activation form (``Int4WeightOnlyConfig``'s QAT) is not emulated."""
    if role != "weight":
        raise NotImplementedError(f"{name}: Int4WeightFakeQuantizeConfig is a weight config")
    if config.activation_dtype != torch.float8_e4m3fn:
        raise NotImplementedError(
            f"{name}.activation_dtype={config.activation_dtype}: triton_qat emulates "
            "Int4WeightFakeQuantizeConfig for float8 activations only "
            "(Float8DynamicActivationInt4WeightConfig)"
        )
    return Float8Int4WeightConfig(config.group_size)


def _to_float8_config(config: object, name: str) -> Float8Config:
    """torchao's ``Float8FakeQuantizeConfig`` -> :class:`Float8Config` (e4m3, PerRow(dim=-1) or
    PerTensor(), the bounds)."""
    ao = _torchao()
    if config.dtype != torch.float8_e4m3fn:
        raise NotImplementedError(f"{name}.dtype={config.dtype}: triton_qat's float8 is e4m3")
    g = config.granularity
    if isinstance(g, ao.PerTensor):
        granularity = "per_tensor"
    elif isinstance(g, ao.PerRow) and g.dim in (-1, None):
        granularity = "per_row"
    else:
        raise NotImplementedError(
            f"{name}.granularity={g}: triton_qat's float8 scales are PerRow() (the last dim) "
            "or PerTensor()"
        )
    return Float8Config(granularity, config.hp_value_lb, config.hp_value_ub)


def _to_mx_config(config: object, name: str) -> MXConfig:
    """torchao's ``MXFakeQuantizeConfig`` -> :class:`MXConfig` (its dtype, block size and scaling
    mode). ``kernel_preference`` picks torchao's GEMM, not the fake-quantized values:
    ``EMULATED`` is what triton_qat computes, ``AUTO`` (the Blackwell MX GEMM) is run emulated."""
    ao = _torchao()
    if config.kernel_preference not in (ao.KernelPreference.EMULATED, ao.KernelPreference.AUTO):
        raise NotImplementedError(
            f"{name}.kernel_preference={config.kernel_preference}: torchao's MX QAT takes "
            "EMULATED (what triton_qat computes) or AUTO"
        )
    try:
        return MXConfig(config.dtype, config.block_size, config.scaling_mode)
    except ValueError as e:
        raise NotImplementedError(f"{name}.{e}") from e


def to_torchao_config(config: QuantConfig | object, role: str) -> object | None:
    """The torchao ``IntxFakeQuantizeConfig`` with ``config``'s numerics (the inverse of
    :func:`to_quant_config`): ``NOT_QUANTIZED`` activations -> None (weight-only), learned ranges
    -> ``range_learning=True, is_dynamic=False``; NotImplementedError for what torchao's fake
    quantizer lacks (per-tensor, symmetric activations)."""
    ao = _torchao()
    if config is NOT_QUANTIZED and role == "activation":
        return None
    if isinstance(config, Float8Int4WeightConfig):
        return ao.Int4WeightFakeQuantizeConfig(config.group_size, torch.float8_e4m3fn)
    if isinstance(config, Float8Config):
        gran = ao.PerTensor() if config.per_tensor else ao.PerRow()
        return ao.Float8FakeQuantizeConfig(
            config.dtype, gran, hp_value_lb=config.hp_value_lb, hp_value_ub=config.hp_value_ub
        )
    if isinstance(config, MXConfig):  # EMULATED: the GEMM triton_qat runs (and runs anywhere)
        mode = ao.ScaleCalculationMode(config.scaling_mode)
        return ao.MXFakeQuantizeConfig(config.dtype, config.block_size, mode,
                                       ao.KernelPreference.EMULATED)  # fmt: skip
    if isinstance(config, NVFP4Config):  # scale layouts as torchao's QATConfig picks them
        return ao.NVFP4FakeQuantizeConfig(
            config.use_per_tensor_scale, use_swizzled_scales=role == "weight"
        )
    if not isinstance(config, QuantConfig):
        raise NotImplementedError(f"{role}={config!r}: no torchao IntxFakeQuantizeConfig for it")
    dtype = getattr(torch, f"int{config.bits}")
    if role == "activation":
        if config.granularity != "per_token" or config.symmetric:
            raise NotImplementedError(
                f"activation={config}: torchao's IntxFakeQuantizer has asymmetric per-token "
                "activations only"
            )
        return ao.IntxFakeQuantizeConfig(dtype, "per_token", is_symmetric=False)
    kw = dict(is_symmetric=config.symmetric)
    if config.range_learning:
        kw.update(is_dynamic=False, range_learning=True)
    if config.granularity == "per_channel":
        return ao.IntxFakeQuantizeConfig(dtype, "per_channel", **kw)
    if config.granularity == "per_group":
        return ao.IntxFakeQuantizeConfig(dtype, group_size=config.group_size, **kw)
    raise NotImplementedError(
        f"weight={config}: torchao's IntxFakeQuantizer has per-channel and per-group weights only"
    )


def fake_quantize_configs(config: object) -> tuple[object | None, object | None]:
    """(activation_config, weight_config) of a torchao ``QATConfig`` (prepare step): its own, or
    the ones torchao infers from its ``base_config``."""
    ao = _torchao()
    if isinstance(config, ao.IntXQuantizationAwareTrainingConfig):  # torchao's deprecated name
        return config.activation_config, config.weight_config
    if not isinstance(config, ao.QATConfig):
        raise TypeError(
            f"config: expected a torchao QATConfig, got {type(config).__name__}; wrap a base "
            "config as QATConfig(base_config), fake-quantize configs as "
            "QATConfig(activation_config=..., weight_config=...)"
        )
    if config.step != "prepare":
        raise ValueError(
            f"config.step={config.step!r}: tq.prepare takes the prepare step; to convert, use "
            "tq.convert(model) (triton_qat's int8 modules), or tq.to_torchao(model) and then "
            "torchao's quantize_(model, QATConfig(base_config, step='convert'))"
        )
    base = config.base_config
    if base is None:
        return config.activation_config, config.weight_config
    kind = type(base).__name__
    if kind == "Int8DynamicActivationInt4WeightConfig":
        raise NotImplementedError(
            "config.base_config=Int8DynamicActivationInt4WeightConfig: torchao 0.18 has no QAT "
            "numerics for it (its QATConfig prepare step rejects it; it quantizes weights "
            "asymmetrically); for int8 dynamic activations and symmetric int4 weights use "
            "QATConfig(Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, "
            "weight_granularity=PerGroup(32)))"
        )
    try:
        return ao.infer_fake_quantize_configs(base)
    except (ValueError, AssertionError) as e:
        raise NotImplementedError(
            f"config.base_config={kind}: torchao infers no fake-quantize configs for it ({e})"
        ) from e


# ---------------------------------------------------------------------------------------------
# building modules


class _Fp32Only:
    """Forward pre-hook of a module whose torchao config has ``scale_precision=None`` (torchao
    then keeps scales in the tensor's dtype, which equals triton_qat's fp32 scales for fp32
    tensors only): NotImplementedError for another dtype instead of other numerics. Not carried
    over by ``tq.convert`` / ``tq.to_torchao``."""

    triton_qat_prepare_only = True

    def __init__(self, where: str, check_input: bool, check_weight: bool) -> None:
        self.where, self.check_input, self.check_weight = where, check_input, check_weight

    def __call__(self, module: nn.Module, args: tuple) -> None:
        if not module.fake_quant_enabled:  # a plain F.linear / F.embedding: no scales
            return
        x = args[0] if args else None
        bad = None
        if self.check_input and isinstance(x, Tensor) and x.dtype != torch.float32:
            bad = f"its input is {x.dtype}"
        elif self.check_weight and module.weight.dtype != torch.float32:
            bad = f"its weight is {module.weight.dtype}"
        if bad is not None:
            raise NotImplementedError(_fp32_message(self.where, bad))


def _fp32_message(where: str, bad: str) -> str:
    return (
        f"{where}: scale_precision=None (torchao keeps the scale in the tensor's dtype, e.g. from "
        f"a base config's weight_scale_dtype=None) equals triton_qat's fp32 scales only for fp32 "
        f"tensors, and {bad}; use fp32, or QATConfig(activation_config=..., weight_config=...) "
        "with IntxFakeQuantizeConfig(..., scale_precision=torch.float32)"
    )


def _torchao_module(mod: nn.Module, act_cfg, w_cfg, where: str) -> nn.Module:
    """The triton_qat module computing what torchao's fake-quantized version of ``mod`` (an
    ``nn.Linear`` / ``nn.Embedding``, or torchao's own module) computes with these configs,
    sharing ``mod``'s parameters; ``where`` names it in errors."""
    if isinstance(mod, nn.modules.linear.NonDynamicallyQuantizableLinear):
        raise ValueError(
            f"{where}: a NonDynamicallyQuantizableLinear (nn.MultiheadAttention's out_proj) is "
            "never called: MultiheadAttention reads its weight directly, so no fake "
            "quantization would apply (and a converted one would break the attention); leave it "
            "out of filter_fn, as torchao's default filter does"
        )
    if isinstance(mod, nn.Linear):
        w = to_quant_config(w_cfg, "weight")  # first: names an unsupported weight scheme
        a = to_quant_config(act_cfg, "activation")
        new = Linear.from_float(mod, activation=a, weight=w)  # learned scales: from the weight
    elif isinstance(mod, nn.Embedding):
        if act_cfg is not None:  # torchao's own error
            raise ValueError("Activation fake quantization is not supported for embedding")
        w = to_quant_config(w_cfg, "weight")
        if not isinstance(w, QuantConfig):
            raise NotImplementedError(
                f"{where}: weight_config={type(w_cfg).__name__}: triton_qat's embeddings are "
                "fake-quantized with integer configs (IntxFakeQuantizeConfig) only"
            )
        if not w.symmetric or w.range_learning:
            field = (
                "range_learning=True" if w.range_learning else f"mapping_type={w_cfg.mapping_type}"
            )
            raise NotImplementedError(
                f"{where}: weight_config.{field}: triton_qat's embeddings are fake-quantized "
                "symmetrically with dynamic scales (tq.Embedding)"
            )
        new = Embedding.from_float(mod, weight=w)
    else:  # torchao's own error
        raise ValueError(f"Module of type '{type(mod)}' does not have QAT support")
    # (float8 configs have no scale_precision: their scales are fp32)
    check_input = act_cfg is not None and getattr(act_cfg, "scale_precision", 1) is None
    check_weight = getattr(w_cfg, "scale_precision", 1) is None
    if check_weight and mod.weight.dtype != torch.float32:
        raise NotImplementedError(_fp32_message(where, f"its weight is {mod.weight.dtype}"))
    if check_input or check_weight:
        new.register_forward_pre_hook(_Fp32Only(where, check_input, check_weight))
    new.torchao_configs = (act_cfg, w_cfg)  # what to_torchao rebuilds torchao's module with
    return new


# ---------------------------------------------------------------------------------------------
# entry points


def prepare_qat_config(model: nn.Module, config: object, filter_fn: FilterFn | None) -> nn.Module:
    """``tq.prepare(model, QATConfig(...), filter_fn)``: what torchao's ``quantize_(model,
    config, filter_fn)`` prepares, as triton_qat modules sharing the parameters, in place
    (returns the model, or the new module when ``model`` itself is prepared).

    Modules: those ``filter_fn(module, fqn)`` accepts, walking from the root as ``quantize_``
    does (an accepted module's children are not visited); default: torchao's own filter (every
    ``nn.Linear`` but ``NonDynamicallyQuantizableLinear``), skipping modules already
    triton_qat's. Linears get :class:`triton_qat.Linear`, embeddings :class:`triton_qat.Embedding`
    (torchao's configs mapped by :func:`to_quant_config`); other modules, or an activation config
    on an embedding, raise torchao's ValueError (prefixed by the module's path). Nothing is
    swapped when anything raises. Unlike ``quantize_``, hooks, parametrizations (the
    parametrized weight is fake-quantized; torchao's ``quantize_`` cannot prepare a parametrized
    linear) and the training flag carry over (:mod:`triton_qat.swap`, as in ``tq.prepare``); a
    ``filter_fn`` selecting ``nn.MultiheadAttention``'s ``out_proj`` raises ValueError (it is
    never called, so it would not be fake-quantized).
    """
    ao = _torchao()
    act_cfg, w_cfg = fake_quantize_configs(config)
    if filter_fn is None:

        def filter_fn(mod: nn.Module, fqn: str) -> bool:
            if isinstance(mod, Linear):
                return False
            if is_parametrized(mod, "weight"):  # is_linear would evaluate it (spectral_norm:
                return isinstance(mod, nn.Linear) and not isinstance(  # a power-iteration step)
                    mod, nn.modules.linear.NonDynamicallyQuantizableLinear
                )
            return ao.is_linear(mod)

    return swap_selected(
        model, filter_fn, lambda mod, fqn: _torchao_module(mod, act_cfg, w_cfg, module_path(fqn))
    )


def _quantizer_state(fq: nn.Module | None) -> tuple[object | None, bool]:
    """(config, enabled) of a torchao fake quantizer (None: (None, True))."""
    if fq is None:
        return None, True
    return fq.config, bool(fq.enabled)


def from_torchao(model: nn.Module) -> nn.Module:
    """Swap, in place, the ``FakeQuantizedLinear`` / ``FakeQuantizedEmbedding`` modules of a
    model torchao prepared (``quantize_(model, QATConfig(..., step="prepare"))``) for
    :class:`triton_qat.Linear` / :class:`triton_qat.Embedding` sharing their parameters (an
    optimizer built before keeps training them; tied weights stay tied), with the numerics of
    their fake quantizers' configs (:func:`to_quant_config`) and their ``enabled`` flags. Returns
    the model (or the new module when ``model`` itself is one). torchao's ``MXFakeQuantizedLinear``
    / ``NVFP4FakeQuantizedLinear`` become :class:`triton_qat.Linear` with :class:`MXConfig` /
    :class:`NVFP4Config` configs. Other torchao QAT modules (legacy quantizer subclasses) raise
    NotImplementedError; nothing is swapped when anything raises. :func:`to_torchao` swaps back. A range-learning weight fake quantizer's
    ``scale`` parameter becomes the ``tq.Linear``'s ``weight_scale`` (the same parameter; before
    ``initialize_fake_quantizers`` the scales are initialized from the weight, as that call
    would). Hooks and parametrizations carry over (:mod:`triton_qat.swap`)."""
    check_module(model)
    ao = _torchao()
    mx_kinds = (ao.MXFakeQuantizedLinear, ao.NVFP4FakeQuantizedLinear)
    kinds = (ao.FakeQuantizedLinear, ao.FakeQuantizedEmbedding, *mx_kinds)

    def select(mod: nn.Module, fqn: str) -> bool:
        kind = type_before_parametrizations(mod)
        if kind in kinds:
            return True
        if issubclass(kind, kinds) or "FakeQuantized" in kind.__name__:
            raise NotImplementedError(
                f"{module_path(fqn)}: {kind.__name__} is not supported (from_torchao swaps "
                "FakeQuantizedLinear, FakeQuantizedEmbedding, MXFakeQuantizedLinear and "
                "NVFP4FakeQuantizedLinear, what QATConfig prepares)"
            )
        return False

    def make(mod: nn.Module, fqn: str) -> nn.Module | None:
        where = module_path(fqn)
        if isinstance(mod, mx_kinds):  # configs, no fake quantizers (nothing to disable)
            return _torchao_module(mod, mod.activation_config, mod.weight_config, where)
        w_cfg, w_on = _quantizer_state(mod.weight_fake_quantizer)
        if isinstance(mod, ao.FakeQuantizedEmbedding):
            if w_cfg is None:
                return None  # fake-quantizes nothing: left as it is
            act_cfg, on = None, w_on
        else:
            act_cfg, a_on = _quantizer_state(mod.activation_fake_quantizer)
            if act_cfg is None and w_cfg is None:
                return None  # fake-quantizes nothing: left as it is
            if act_cfg is not None and w_cfg is not None and a_on != w_on:
                raise NotImplementedError(
                    f"{where}: activation_fake_quantizer.enabled={a_on} but "
                    f"weight_fake_quantizer.enabled={w_on}: triton_qat switches both halves "
                    "together"
                )
            on = a_on and w_on
        new = _torchao_module(mod, act_cfg, w_cfg, where)
        if isinstance(new, Linear) and new.weight_config.range_learning:
            _take_learned_scale(new, mod.weight_fake_quantizer, where)
        if not on:
            new.disable_fake_quant()
        return new

    return swap_modules(model, find_modules(model, select), make)


def _take_learned_scale(new: Linear, fq: nn.Module, where: str) -> None:
    """Give ``new`` (range learning) the scale torchao's range-learning fake quantizer ``fq``
    learned: its ``scale`` parameter itself (an optimizer built before keeps training it), or
    its values when it is a plain tensor. Before ``initialize_fake_quantizers`` (no scale yet)
    ``new`` keeps the scales it was initialized with, from the weight, as that call would set."""
    scale = fq.scale
    if scale is None:
        return
    mine = new.weight_scale
    if scale.shape != mine.shape or scale.dtype != mine.dtype or scale.device != mine.device:
        raise NotImplementedError(
            f"{where}: weight_fake_quantizer.scale is {tuple(scale.shape)} {scale.dtype} on "
            f"{scale.device}; triton_qat's learned scales are {tuple(mine.shape)} {mine.dtype} on "
            f"{mine.device}"
        )
    if isinstance(scale, nn.Parameter):
        new.weight_scale = scale
    else:
        with torch.no_grad():
            mine.copy_(scale)


def _give_learned_scale(fq: nn.Module, mod: Linear) -> None:
    """Make torchao's range-learning fake quantizer ``fq`` hold ``mod``'s learned scales (the
    parameter itself) as ``initialize_fake_quantizers`` would have left it: symmetric, so the
    zero points are int32 zeros, and initialized."""
    scale = mod.weight_scale
    fq.scale = scale
    fq.zero_point = torch.zeros(
        scale.shape, dtype=fq.config.zero_point_precision, device=scale.device
    )
    fq._initialized = True


def _maps_to(config: object, role: str, current: object) -> bool:
    """Whether torchao's ``config`` maps to the triton_qat config ``current``."""
    try:
        return to_quant_config(config, role) == current
    except NotImplementedError:
        return False


def _configs_for(mod: Linear | Embedding, is_linear: bool) -> tuple[object | None, object]:
    """The torchao configs a triton_qat module was made from (when they still describe it),
    else torchao configs with its numerics."""
    stored = getattr(mod, "torchao_configs", None)
    if stored is not None:
        act_cfg, w_cfg = stored
        same_act = not is_linear or _maps_to(act_cfg, "activation", mod.activation_config)
        if same_act and _maps_to(w_cfg, "weight", mod.weight_config):
            return act_cfg, w_cfg
    act_cfg = to_torchao_config(mod.activation_config, "activation") if is_linear else None
    return act_cfg, to_torchao_config(mod.weight_config, "weight")


def to_torchao(model: nn.Module) -> nn.Module:
    """Swap, in place, every :class:`triton_qat.Linear` / :class:`triton_qat.Embedding` (torchao
    numerics) for torchao's ``FakeQuantizedLinear`` / ``FakeQuantizedEmbedding``, sharing the
    parameters, with the configs it was prepared from (``tq.prepare(model, QATConfig(...))`` or
    :func:`from_torchao`) or else the torchao configs of its :class:`QuantConfig`\\ s; fake
    quantization stays off where it was disabled. torchao's own ``quantize_(model,
    QATConfig(base_config, step="convert"))`` then converts the model. Returns the model (or the
    new module when ``model`` itself is one). A torch.ao-numerics ``tq.Linear`` (``qconfig``) or
    a config torchao has no counterpart for (per-tensor, symmetric activations) raises
    NotImplementedError; nothing is swapped when anything raises. Hooks and parametrizations
    carry over (:mod:`triton_qat.swap`), in both directions; torchao's convert step cannot
    convert a parametrized module: fold it first (``torch.nn.utils.parametrize.
    remove_parametrizations(module, "weight")``)."""
    check_module(model)
    ao = _torchao()

    def make(mod: nn.Module, fqn: str) -> nn.Module:
        where = module_path(fqn)
        if isinstance(mod, Embedding):
            if mod.weight_config.range_learning:
                raise NotImplementedError(
                    f"{where}: weight.range_learning=True: tq.Embedding has no learned scales "
                    "to give torchao's range-learning fake quantizer"
                )
            _, w_cfg = _configs_for(mod, False)
            new = ao.FakeQuantizedEmbedding.from_embedding(mod.to_float(), w_cfg)
            new.weight = mod.weight  # torchao shares it but on the meta device: always
            quantizers = [new.weight_fake_quantizer]
        else:
            if mod.uses_ao_numerics:
                raise NotImplementedError(
                    f"{where}: a tq.Linear with torch.ao numerics (qconfig) has no torchao "
                    "counterpart"
                )
            act_cfg, w_cfg = _configs_for(mod, True)
            if isinstance(mod.weight_config, (MXConfig, NVFP4Config)):
                return _to_torchao_mx(mod, act_cfg, w_cfg, where)
            new = ao.FakeQuantizedLinear.from_linear(mod.to_float(), act_cfg, w_cfg)
            new.weight, new.bias = mod.weight, mod.bias  # (torchao's: not on the meta device)
            quantizers = [new.activation_fake_quantizer, new.weight_fake_quantizer]
            if mod.weight_config.range_learning:
                _give_learned_scale(new.weight_fake_quantizer, mod)
        for fq in quantizers:
            if fq is not None:  # weight-only: no activation fake quantizer
                fq.enabled = mod.fake_quant_enabled
        return new

    return swap_selected(model, lambda mod, fqn: isinstance(mod, (Linear, Embedding)), make)


def _to_torchao_mx(mod: Linear, act_cfg: object, w_cfg: object, where: str) -> nn.Module:
    """torchao's ``MXFakeQuantizedLinear`` / ``NVFP4FakeQuantizedLinear`` sharing ``mod``'s
    parameters; NotImplementedError when ``mod``'s fake quantization is off (torchao's MX /
    NVFP4 modules always fake-quantize)."""
    ao = _torchao()
    if not mod.fake_quant_enabled:
        raise NotImplementedError(
            f"{where}: fake quantization is disabled, and torchao's MX / NVFP4 QAT linears "
            "cannot disable it; enable_fake_quant() first"
        )
    mx = isinstance(mod.weight_config, MXConfig)
    kind = ao.MXFakeQuantizedLinear if mx else ao.NVFP4FakeQuantizedLinear
    new = kind.from_linear(mod.to_float(), act_cfg, w_cfg)
    new.weight, new.bias = mod.weight, mod.bias
    return new
