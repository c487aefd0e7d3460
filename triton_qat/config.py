"""QuantConfig: what to quantize, how many bits, at which granularity (docs/numerics.md, family 1)."""

from __future__ import annotations

from dataclasses import dataclass

ACTIVATION_GRANULARITIES = ("per_token", "per_tensor")
WEIGHT_GRANULARITIES = ("per_channel", "per_group", "per_tensor")
GRANULARITIES = ("per_token", "per_channel", "per_group", "per_tensor")


@dataclass(frozen=True)
class QuantConfig:
    """Fake-quantization settings for one tensor.

    Args:
        bits: code width, 2..8; codes span [-2**(bits-1), 2**(bits-1) - 1] (int8: [-128, 127]).
        granularity: "per_token" (one scale per row of the last dim; activations), "per_channel"
            (one per output row of a weight), "per_group" (``group_size`` consecutive elements of a
            row share a scale), or "per_tensor".
        symmetric: zero point fixed at 0 and scale from max(|min|, |max|). Asymmetric per-token /
            per-tensor configs use torchao's activation formula (the range includes 0, the zero
            point is an exact code); asymmetric per-channel / per-group configs torchao's weight
            formula (``IntxFakeQuantizeConfig(..., is_symmetric=False)``: the group's own range,
            a float-domain zero point truncated to int32). docs/numerics.md states both.
        group_size: elements per group along the last dim; required for "per_group" only.
        range_learning: weights only (symmetric, per channel / per group): the scales are
            parameters (``weight_scale``) of the ``tq.Linear``, initialized from the weight, trained
            (torchao's ``range_learning=True``; LSQ-style gradient, docs/numerics.md).

    Defaults: ``QuantConfig()`` is the activation default (int8 per-token asymmetric);
    ``QuantConfig(granularity="per_channel", symmetric=True)`` the weight default.
    :data:`NOT_QUANTIZED` in place of an activation config trains weight-only QAT.
    """

    bits: int = 8
    granularity: str = "per_token"
    symmetric: bool = False
    group_size: int | None = None
    range_learning: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ValueError(f"bits: expected an int in 2..8, got {self.bits!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"granularity: expected one of {GRANULARITIES}, got {self.granularity!r}"
            )
        if not isinstance(self.symmetric, bool):
            raise ValueError(f"symmetric: expected a bool, got {self.symmetric!r}")
        if self.granularity == "per_group":
            g = self.group_size
            if isinstance(g, bool) or not isinstance(g, int) or g < 1:
                raise ValueError(f"group_size: per_group needs a positive int, got {g!r}")
        elif self.group_size is not None:
            raise ValueError(
                f"group_size: only used with granularity='per_group', got {self.group_size!r} "
                f"with granularity={self.granularity!r}"
            )
        if not isinstance(self.range_learning, bool):
            raise ValueError(f"range_learning: expected a bool, got {self.range_learning!r}")
        if self.range_learning and (
            self.granularity not in ("per_channel", "per_group") or not self.symmetric
        ):
            raise ValueError(
                "range_learning: learned scales are for symmetric per_channel / per_group weights, "
                f"got granularity={self.granularity!r}, symmetric={self.symmetric}"
            )

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1))

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1

    def check_role(self, role: str) -> None:
        """ValueError naming ``role`` ("activation" or "weight") if the granularity does not fit."""
        allowed = ACTIVATION_GRANULARITIES if role == "activation" else WEIGHT_GRANULARITIES
        if self.granularity not in allowed:
            raise ValueError(
                f"{role}: granularity must be one of {allowed}, got {self.granularity!r}"
            )

    def group_size_for(self, k: int) -> int:
        """Elements per scale along a row of length ``k`` (per_tensor handled by the caller)."""
        return self.group_size if self.granularity == "per_group" else k


DEFAULT_ACTIVATION = QuantConfig(bits=8, granularity="per_token", symmetric=False)
DEFAULT_WEIGHT = QuantConfig(bits=8, granularity="per_channel", symmetric=True)


class _NotQuantized:
    """The type of :data:`NOT_QUANTIZED` (one instance)."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NOT_QUANTIZED"

    def __reduce__(self):  # pickles (and deep-copies) to the one instance
        return "NOT_QUANTIZED"


NOT_QUANTIZED = _NotQuantized()
"""``activation=NOT_QUANTIZED``: the input is not quantized (weight-only QAT, torchao's
``activation_config=None``). ``None`` keeps meaning "the default config" in ``tq.Linear``,
``from_float`` and ``prepare``, so that optional arguments pass through unchanged."""


FLOAT8_GRANULARITIES = ("per_row", "per_tensor")
FLOAT8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max


@dataclass(frozen=True)
class Float8Config:
    """Float8 (e4m3) fake-quantization settings for one tensor: torchao's
    ``Float8FakeQuantizeConfig`` (docs/numerics.md, "Float8").

    Args:
        granularity: "per_row" (one scale per row of the last dim: per token for activations,
            per output channel for a weight; torchao's ``PerRow()``) or "per_tensor"
            (``PerTensor()``).
        hp_value_lb / hp_value_ub: bounds the row's (tensor's) max |x| is clamped to before the
            scale ``amax / 448`` is taken (torchao's ``hp_value_lb`` / ``hp_value_ub``; None: no
            bound). A lower bound keeps an all-zero row finite (without one its scale is 0 and
            torchao's values are NaN).
        dtype: ``torch.float8_e4m3fn`` (the only float8 format supported).

    There are no bits, zero points or groups: ``Float8Config(bits=8)`` is a TypeError naming
    ``bits``, as are ``symmetric=`` and ``group_size=``.
    """

    granularity: str = "per_row"
    hp_value_lb: float | None = None
    hp_value_ub: float | None = None
    dtype: object = None  # torch.float8_e4m3fn (set in __post_init__; torch not imported here)

    def __post_init__(self) -> None:
        import torch

        if self.dtype is None:
            object.__setattr__(self, "dtype", torch.float8_e4m3fn)
        if self.dtype != torch.float8_e4m3fn:
            raise ValueError(
                f"dtype: only torch.float8_e4m3fn (e4m3) is supported, got {self.dtype!r}"
            )
        if self.granularity not in FLOAT8_GRANULARITIES:
            raise ValueError(
                f"granularity: float8 scales are {FLOAT8_GRANULARITIES} (torchao's PerRow() / "
                f"PerTensor(); no per_group / per_token / per_channel names), "
                f"got {self.granularity!r}"
            )
        for name in ("hp_value_lb", "hp_value_ub"):
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v < 0:
                raise ValueError(f"{name}: expected None or a float >= 0, got {v!r}")
            object.__setattr__(self, name, float(v))
        lb, ub = self.hp_value_lb, self.hp_value_ub
        if lb is not None and ub is not None and lb > ub:
            raise ValueError(f"hp_value_lb: {lb} is above hp_value_ub={ub}")

    @property
    def per_tensor(self) -> bool:
        return self.granularity == "per_tensor"

    @property
    def range_learning(self) -> bool:
        """Float8 scales are dynamic (torchao has no learned float8 scales)."""
        return False

    def check_role(self, role: str) -> None:
        """Both granularities fit both roles (torchao's PerRow / PerTensor)."""


@dataclass(frozen=True)
class Float8Int4WeightConfig:
    """int4 per-group weights for float8 activations: torchao's
    ``Int4WeightFakeQuantizeConfig(group_size, activation_dtype=torch.float8_e4m3fn)``, the weight
    half of ``Float8DynamicActivationInt4WeightConfig`` (docs/numerics.md "Float8 activations,
    int4 weights"). The weight is fake-quantized to e4m3 per row (``hp_value_lb=1e-12``), then to
    symmetric int4 codes [-8, 7] per group of ``group_size`` with scale
    ``max(amax / 8, 1e-6)``, in the weight's dtype. A weight config only; the activation is a
    :class:`Float8Config` (torchao's: per row).

    Args:
        group_size: columns per int4 group (torchao's default and its base config's: 128); must
            divide the layer's in_features.
    """

    group_size: int = 128

    def __post_init__(self) -> None:
        g = self.group_size
        if isinstance(g, bool) or not isinstance(g, int) or g < 1:
            raise ValueError(f"group_size: expected an int >= 1, got {g!r}")

    @property
    def range_learning(self) -> bool:
        """Its scales are dynamic."""
        return False

    def check_role(self, role: str) -> None:
        if role != "weight":
            raise ValueError(
                f"{role}: Float8Int4WeightConfig is a weight config (torchao's "
                "Int4WeightFakeQuantizeConfig); the activation takes a Float8Config"
            )


# the configs whose layers run triton_qat.float8 (a float8 weight, or int4 weights for float8
# activations)
FLOAT8_FAMILY = (Float8Config, Float8Int4WeightConfig)


MX_SCALING_MODES = ("floor", "rceil", "ceil", "even")
MX_ELEM_NAMES = ("float8_e4m3fn", "float8_e5m2", "float4_e2m1fn_x2")
NVFP4_BLOCK_SIZE = 16


def _mode_name(mode: object) -> object:
    """torchao's ``ScaleCalculationMode.RCEIL`` -> ``"rceil"`` (its ``.value``); strings as they
    are (lower-cased)."""
    value = getattr(mode, "value", mode)
    return value.lower() if isinstance(value, str) else mode


@dataclass(frozen=True)
class MXConfig:
    """OCP Microscaling (MX) fake-quantization settings for one tensor: torchao 0.18's
    ``MXFakeQuantizeConfig`` (docs/numerics.md, "MX and NVFP4").

    Every ``block_size`` consecutive elements of a row (the last dim) share one power-of-two
    (e8m0) scale; each element is rounded to ``dtype``.

    Args:
        dtype: the element format: ``torch.float8_e4m3fn`` (MXFP8), ``torch.float8_e5m2``, or
            ``torch.float4_e2m1fn_x2`` (MXFP4, values 0, 0.5, 1, 1.5, 2, 3, 4, 6; torchao's
            default).
        block_size: elements per scale along the last dim (default 32, the OCP standard); the
            last dim must be a multiple of it (torchao pads nothing).
        scaling_mode: how a block's scale is taken from its max |x|: ``"rceil"`` (default),
            ``"floor"``, ``"ceil"`` or ``"even"`` (torchao's ``ScaleCalculationMode``; its enum
            members are accepted and stored as these names).

    torchao's ``kernel_preference`` has no counterpart: triton_qat always runs the GEMM on the
    dequantized values (torchao's ``KernelPreference.EMULATED``); the MX tensor-core GEMM needs
    Blackwell.
    """

    dtype: object = None  # torch.float4_e2m1fn_x2 (set in __post_init__; torch not imported here)
    block_size: int = 32
    scaling_mode: str = "rceil"

    def __post_init__(self) -> None:
        import torch

        if self.dtype is None:
            object.__setattr__(self, "dtype", torch.float4_e2m1fn_x2)
        allowed = tuple(getattr(torch, n) for n in MX_ELEM_NAMES)
        if not isinstance(self.dtype, torch.dtype) or self.dtype not in allowed:
            raise ValueError(
                f"dtype: MX elements are torch.float8_e4m3fn, torch.float8_e5m2 or "
                f"torch.float4_e2m1fn_x2 (torchao's fp6 formats are not supported), "
                f"got {self.dtype!r}"
            )
        b = self.block_size
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"block_size: expected a positive int, got {b!r}")
        mode = _mode_name(self.scaling_mode)
        if mode not in MX_SCALING_MODES:
            raise ValueError(
                f"scaling_mode: expected one of {MX_SCALING_MODES} (or torchao's "
                f"ScaleCalculationMode), got {self.scaling_mode!r}"
            )
        object.__setattr__(self, "scaling_mode", mode)

    @property
    def elem(self) -> str:
        """The element format's name: ``"float8_e4m3fn"``, ``"float8_e5m2"`` or
        ``"float4_e2m1fn_x2"`` (what the ops take)."""
        return str(self.dtype).removeprefix("torch.")

    @property
    def range_learning(self) -> bool:
        """MX scales are dynamic (torchao has no learned MX scales)."""
        return False

    def check_role(self, role: str) -> None:
        """MX configs fit both roles (activations and weights)."""


@dataclass(frozen=True)
class NVFP4Config:
    """NVIDIA NVFP4 fake-quantization settings for one tensor: torchao 0.18's
    ``NVFP4FakeQuantizeConfig`` (docs/numerics.md, "MX and NVFP4").

    Every 16 consecutive elements of a row (the last dim, which must be a multiple of 16) share
    an e4m3 scale; elements are rounded to e2m1 (0, 0.5, 1, 1.5, 2, 3, 4, 6).

    Args:
        use_per_tensor_scale: also scale by the fp32 per-tensor ``amax / (448 * 6)``, computed
            from the whole tensor on every call (torchao's two-level scaling; default True, as
            torchao's).

    torchao's ``use_swizzled_scales`` / ``use_triton_kernel`` choose a scale layout and a kernel,
    not numerics, and have no counterpart here.
    """

    use_per_tensor_scale: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.use_per_tensor_scale, bool):
            raise ValueError(
                f"use_per_tensor_scale: expected a bool, got {self.use_per_tensor_scale!r}"
            )

    @property
    def block_size(self) -> int:
        """16 (fixed by the format)."""
        return NVFP4_BLOCK_SIZE

    @property
    def range_learning(self) -> bool:
        """NVFP4 scales are dynamic."""
        return False

    def check_role(self, role: str) -> None:
        """NVFP4 configs fit both roles (activations and weights)."""
