"""The one translation from a user's quantization config to what the ops take.

A :class:`QuantSpec` is a small frozen record: the code range, symmetry, where the scales live
(per row, per group along a row, per tensor) and which dim the rows run along. It is built in one
place for each kind of config: :func:`spec_for` for a :class:`~triton_qat.config.QuantConfig`
(torchao numerics, family 1) and :func:`ao_spec` for a torch.ao fake-quantize module (family 2).
Everything below the module layer (functional API, ops, reference, conversion) reads specs, so a
new granularity is a change here plus the kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from triton_qat.config import QuantConfig


@dataclass(frozen=True)
class QuantSpec:
    """Quantization arguments of one tensor, as the ops take them.

    Attributes:
        qmin, qmax: code range (int8: -128, 127; torch.ao quint8: 0, 255).
        symmetric: zero point 0, scale from max(|min|, |max|).
        per_tensor: one (scale, zero point) for the whole tensor.
        group_size: elements per scale along a row; ``None``: the whole row.
        channel_rows: rows run along dim 0 (per channel: dim 0 is the channel, the rest
            flattened) instead of the last dim (per token / per group / per tensor).
        given_qparams: the qparams are given by the caller (torch.ao observers), not computed.
        asym_weight: asymmetric qparams by torchao's weight formula (per channel / per group
            configs with ``symmetric=False``) instead of the activation formula.
    """

    qmin: int
    qmax: int
    symmetric: bool
    per_tensor: bool = False
    group_size: int | None = None
    channel_rows: bool = False
    given_qparams: bool = False
    asym_weight: bool = False

    def group_for(self, row_len: int) -> int:
        """Elements per scale along a row of ``row_len`` elements (>= 1)."""
        return self.group_size if self.group_size is not None else max(row_len, 1)

    def quantize_args(self, row_len: int) -> dict:
        """Keyword arguments of ``triton_qat::quantize`` / ``fake_quantize`` for rows of
        ``row_len`` elements."""
        return dict(
            qmin=self.qmin,
            qmax=self.qmax,
            group_size=self.group_for(row_len),
            symmetric=self.symmetric,
            per_tensor=self.per_tensor,
            asym_weight=self.asym_weight,
        )

    def linear_args(self, role: str, in_features: int) -> dict:
        """Keyword arguments of ``triton_qat::qat_linear`` for the activation (``role="a"``) or
        the weight (``role="w"``; also all the weight arguments of
        ``triton_qat::weight_only_linear``) of a linear with ``in_features`` inputs."""
        if role == "a":
            return dict(
                a_qmin=self.qmin,
                a_qmax=self.qmax,
                a_symmetric=self.symmetric,
                a_per_tensor=self.per_tensor,
            )
        return dict(
            w_qmin=self.qmin,
            w_qmax=self.qmax,
            w_group_size=self.group_for(in_features),
            w_per_tensor=self.per_tensor,
            w_symmetric=self.symmetric,
        )


def spec_for(config: QuantConfig) -> QuantSpec:
    """The spec of a :class:`QuantConfig` (family-1 numerics): the only place that reads
    ``config.granularity``."""
    g = config.granularity
    return QuantSpec(
        qmin=config.qmin,
        qmax=config.qmax,
        symmetric=config.symmetric,
        per_tensor=g == "per_tensor",
        group_size=config.group_size if g == "per_group" else None,
        channel_rows=g == "per_channel",
        asym_weight=not config.symmetric and g in ("per_channel", "per_group"),
    )


def ao_spec(quant_min: int, quant_max: int, symmetric: bool = False) -> QuantSpec:
    """The spec of a torch.ao fake-quantize (family 2): qparams come from its observer, one per
    tensor or one per row (per channel of a 2-D weight)."""
    return QuantSpec(
        qmin=quant_min,
        qmax=quant_max,
        symmetric=symmetric,
        given_qparams=True,
    )


def rows_2d(x: Tensor, spec: QuantSpec) -> Tensor:
    """The 2-D view of ``x`` whose rows carry the scales of ``spec``: [dim 0, rest] for
    per-channel rows, else [rest, last dim]; a 0-dim tensor is one element, [1, 1].

    Both sizes are spelled out (no ``-1``), so zero-size tensors have a 2-D view too: (4, 0) is
    4 rows of 0 elements, (0, 4) per channel 0 rows of 4."""
    if x.dim() == 0:
        return x.reshape(1, 1)
    shape = x.shape
    if spec.channel_rows:
        return x.reshape(shape[0], math.prod(shape[1:]))
    return x.reshape(math.prod(shape[:-1]), shape[-1])
