"""Embedding QAT: ``tq.Embedding`` (a drop-in ``nn.Embedding`` whose table is fake-quantized) and
``tq.QuantizedEmbedding`` (what ``tq.convert`` swaps in: int8 / packed int4 codes + fp32 scales).

The table [num_embeddings, embedding_dim] is fake-quantized symmetrically per row
(``granularity="per_channel"``) or per group of ``group_size`` along ``embedding_dim``
(``"per_group"``), with the numerics of ``tq.fake_quantize`` (docs/numerics.md, family 1: the
weight formulas), which are torchao's ``FakeQuantizedEmbedding`` with an
``IntxFakeQuantizeConfig(torch.intN, "per_channel" | group_size=g)``. Backward: straight-through,
zero where a code was clamped. A row of the table is laid out as a row of a tied ``lm_head``
weight [vocab, dim], so a tied pair quantized with the same config has the same codes and scales.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from triton_qat import calls as _ops  # the ops, skipping the dispatcher in plain eager code
from triton_qat.checks import FLOAT_DTYPES, UNPARAMETRIZE, check_not_parametrized, refuse_script
from triton_qat.config import DEFAULT_WEIGHT, QuantConfig
from triton_qat.functional import fake_quantize
from triton_qat.quantized import (
    QuantizedModule,
    check_count,
    check_float_dtype,
    pack_int4,
    unpack_int4,
)
from triton_qat.spec import spec_for

EMBEDDING_GRANULARITIES = ("per_channel", "per_group")


def check_embedding_config(config: object, embedding_dim: int, name: str = "weight") -> None:
    """TypeError / ValueError naming ``name`` unless ``config`` can quantize a table with rows of
    ``embedding_dim`` elements."""
    if not isinstance(config, QuantConfig):
        raise TypeError(f"{name}: expected a triton_qat.QuantConfig, got {type(config).__name__}")
    check_count(embedding_dim, "embedding_dim")
    if config.granularity not in EMBEDDING_GRANULARITIES:
        raise ValueError(
            f"{name}: embedding tables are quantized per row or per group along the row, "
            f"granularity must be one of {EMBEDDING_GRANULARITIES}, got {config.granularity!r}"
        )
    if not config.symmetric:
        raise ValueError(
            f"{name}.symmetric: embedding tables are quantized symmetrically (zero point 0), "
            "pass symmetric=True"
        )
    if getattr(config, "range_learning", False):
        raise ValueError(
            f"{name}.range_learning: embedding tables keep dynamic scales (no learned "
            "weight_scale); pass range_learning=False"
        )
    group = spec_for(config).group_size
    if group is not None and embedding_dim % group:
        raise ValueError(
            f"{name}.group_size: expected a divisor of embedding_dim = {embedding_dim}, "
            f"got {config.group_size}"
        )


class Embedding(nn.Embedding):
    """``nn.Embedding`` whose table is fake-quantized in the forward (QAT).

    Args: those of ``nn.Embedding``, and ``weight``: a symmetric per_channel (one scale per row)
    or per_group :class:`QuantConfig` (default: int8 per channel). The table is quantized in its
    own dtype (fp32 / fp16 / bf16); the lookup returns rows of the fake-quantized table, and the
    gradient reaches the table straight through (zero where a code was clamped).
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        _weight: Tensor | None = None,
        _freeze: bool = False,
        device=None,
        dtype=None,
        *,
        weight: QuantConfig | None = None,
    ) -> None:
        if dtype is not None and dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype: expected float32, float16 or bfloat16, got {dtype}")
        if sparse:
            raise ValueError(
                "sparse: sparse gradients are not supported through the fake-quantized table "
                "(the straight-through mask is dense); use sparse=False"
            )
        config = weight if weight is not None else DEFAULT_WEIGHT
        check_embedding_config(config, embedding_dim)
        super().__init__(
            num_embeddings,
            embedding_dim,
            padding_idx,
            max_norm,
            norm_type,
            scale_grad_by_freq,
            sparse,
            _weight,
            _freeze,
            device=device,
            dtype=dtype,
        )
        self.weight_config = config
        self._fake_quant_on = True

    def forward(self, input: Tensor) -> Tensor:
        w = self.weight
        if self._fake_quant_on:
            w = fake_quantize(w, self.weight_config)
        # as torchao's FakeQuantizedEmbedding: max_norm renormalizes rows of the fake-quantized
        # table (a temporary), not the parameter
        return F.embedding(
            input,
            w,
            self.padding_idx,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.sparse,
        )

    # -- toggles (torch.ao names, as tq.Linear) ------------------------------------------------
    def disable_fake_quant(self) -> Embedding:
        """Make this module an exact ``nn.Embedding`` until :meth:`enable_fake_quant`."""
        self._fake_quant_on = False
        return self

    def enable_fake_quant(self) -> Embedding:
        self._fake_quant_on = True
        return self

    @property
    def fake_quant_enabled(self) -> bool:
        return self._fake_quant_on

    # -- conversion ---------------------------------------------------------------------------
    @classmethod
    def from_float(cls, mod: nn.Embedding, *, weight: QuantConfig | None = None) -> Embedding:
        """Wrap an ``nn.Embedding`` sharing its weight Parameter (tied weights stay tied, an
        optimizer built before keeps training it)."""
        if not isinstance(mod, nn.Embedding):
            raise TypeError(f"mod: expected an nn.Embedding, got {type(mod).__name__}")
        check_not_parametrized(
            mod,
            "nn.Embedding",
            "tq.prepare(model, QATConfig(weight_config=...), filter_fn) moves them onto the new "
            "module, or fold them first (torch.nn.utils.parametrize.remove_parametrizations)",
        )
        new = cls(
            mod.num_embeddings,
            mod.embedding_dim,
            mod.padding_idx,
            mod.max_norm,
            mod.norm_type,
            mod.scale_grad_by_freq,
            mod.sparse,
            device="meta",
            dtype=mod.weight.dtype,
            weight=weight,
        )
        new.weight = mod.weight
        return new

    def to_float(self) -> nn.Embedding:
        """An ``nn.Embedding`` sharing this module's weight Parameter."""
        check_not_parametrized(self, "tq.Embedding", UNPARAMETRIZE, "self", "to_float")
        emb = nn.Embedding(
            self.num_embeddings,
            self.embedding_dim,
            self.padding_idx,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.sparse,
            device="meta",
        )
        emb.weight = self.weight
        return emb

    def __prepare_scriptable__(self):  # torch.jit.script: a clear refusal
        refuse_script(self)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, weight={self.weight_config}, "
            f"fake_quant={self.fake_quant_enabled}"
        )


class QuantizedEmbedding(QuantizedModule):
    """Int8 (bits <= 4: packed int4) embedding table after QAT (no gradients).

    Buffers: ``weight_codes`` int8 [num_embeddings, embedding_dim] (uint8
    [num_embeddings, ceil(embedding_dim / 2)] when ``weight_config.bits <= 4``, two codes a byte
    as :func:`triton_qat.quantized.pack_int4`), ``weight_scale`` fp32 [num_embeddings, G] (G = 1
    per channel, embedding_dim / group_size per group): the names and layout of a
    :class:`~triton_qat.QuantizedLinear`'s, so a tied ``lm_head`` shares them.

    The lookup of int64 / int32 ids [...] (any shape, empty too) gathers the rows' codes and
    scales and dequantizes them: output [..., embedding_dim], ``output_dtype(code * scale)``,
    exactly the rows of the fake-quantized table the prepared :class:`Embedding` returns in its
    table's dtype. ``output_dtype`` is that dtype: the table's at conversion, then it follows
    dtype casts of the module as the prepared table's dtype does (``.to(torch.bfloat16)``,
    ``.half()``, ...: the output dtype changes, codes and scales stay as they are; device moves
    move them), and it travels in the state dict (``_extra_state``, see
    :class:`~triton_qat.quantized.QuantizedModule`). Autocast leaves the lookup alone, as it
    leaves ``nn.Embedding``'s.
    """

    dtype_attr = "output_dtype"

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        *,
        weight: QuantConfig = DEFAULT_WEIGHT,
        output_dtype: torch.dtype = torch.float32,
        device=None,
    ) -> None:
        super().__init__()
        check_count(num_embeddings, "num_embeddings", minimum=0)
        check_embedding_config(weight, embedding_dim)
        check_float_dtype(output_dtype, "output_dtype")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx, self.max_norm, self.norm_type = padding_idx, max_norm, norm_type
        self.weight_config, self.output_dtype = weight, output_dtype
        self.packed = weight.bits <= 4
        n_groups = embedding_dim // weight.group_size_for(embedding_dim)
        code_cols = (embedding_dim + 1) // 2 if self.packed else embedding_dim
        code_dtype = torch.uint8 if self.packed else torch.int8
        self.register_buffer(
            "weight_codes", torch.zeros(num_embeddings, code_cols, dtype=code_dtype, device=device)
        )
        self.register_buffer("weight_scale", torch.ones(num_embeddings, n_groups, device=device))

    @classmethod
    @torch.no_grad()
    def from_qat(cls, emb: Embedding) -> QuantizedEmbedding:
        """Freeze a trained :class:`Embedding` into codes and scales (its exact numerics)."""
        if not isinstance(emb, Embedding):
            raise TypeError(f"emb: expected a triton_qat.Embedding, got {type(emb).__name__}")
        w = emb.weight.detach()
        cfg = emb.weight_config
        out = _ops.quantize(
            w, **spec_for(cfg).quantize_args(w.shape[1]), pack_mask=False, scale=None,
            zero_point=None,
        )  # fmt: skip
        codes, scale = out[0], out[1]
        new = cls(
            emb.num_embeddings,
            emb.embedding_dim,
            emb.padding_idx,
            emb.max_norm,
            emb.norm_type,
            weight=cfg,
            output_dtype=w.dtype,
            device=w.device,
        )
        new.weight_codes.copy_(pack_int4(codes) if new.packed else codes)
        new.weight_scale.copy_(scale)
        return new

    def dequantize(self, rows: Tensor | None = None) -> Tensor:
        """The fake-quantized table (``rows``: a 1-D index tensor selecting rows) in
        ``output_dtype``."""
        codes, scale = self.weight_codes, self.weight_scale
        if rows is not None:
            codes, scale = codes.index_select(0, rows), scale.index_select(0, rows)
        if self.packed:
            codes = unpack_int4(codes, self.embedding_dim)
        R, G = scale.shape
        # dt(code) * fp32 scale is an fp32 product (codes are exact in every dt), rounded to dt
        y = codes.reshape(R, G, self.embedding_dim // G).to(torch.float32) * scale.reshape(R, G, 1)
        return y.reshape(R, self.embedding_dim).to(self.output_dtype)

    def forward(self, input: Tensor) -> Tensor:
        if not isinstance(input, Tensor) or input.dtype not in (torch.int64, torch.int32):
            raise TypeError(
                "input: expected an int64 / int32 index tensor, got "
                f"{getattr(input, 'dtype', type(input).__name__)}"
            )
        self._check_float_dtype()
        idx = input.reshape(-1)
        rows = self.dequantize(idx)
        if self.max_norm is not None:
            # as F.embedding on the fake-quantized table: rows renormalized independently
            rows = F.embedding(
                torch.arange(rows.shape[0], device=rows.device),
                rows,
                max_norm=self.max_norm,
                norm_type=self.norm_type,
            )
        return rows.reshape(*input.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        if self.padding_idx is not None:
            s += f", padding_idx={self.padding_idx}"
        if self.max_norm is not None:
            s += f", max_norm={self.max_norm}"
        return f"{s}, weight={self.weight_config}, output_dtype={self.output_dtype}"


def check_prepare_embedding_config(config: object) -> None:
    """TypeError / ValueError unless ``config`` is a QuantConfig an embedding table can use."""
    if not isinstance(config, QuantConfig):
        raise TypeError(
            f"embedding: expected a triton_qat.QuantConfig, got {type(config).__name__}"
        )
    if config.granularity not in EMBEDDING_GRANULARITIES:
        check_embedding_config(config, 1, "embedding")


def prepare_embeddings(
    model: nn.Module,
    config: QuantConfig,
    filter_fn: Callable[[nn.Module, str], bool] | None,
    swap_all: Callable,
) -> nn.Module:
    """``tq.prepare(..., embedding=config)``: every ``nn.Embedding`` ``filter_fn`` accepts becomes
    an :class:`Embedding` sharing its weight; tables the config cannot quantize (a group size
    not dividing ``embedding_dim``, sparse gradients) stay and are named in a warning."""
    check_prepare_embedding_config(config)
    skipped = []

    def select(mod: nn.Module, fqn: str) -> bool:
        return type(mod) is nn.Embedding and (filter_fn is None or filter_fn(mod, fqn))

    def make(mod: nn.Embedding, fqn: str) -> Embedding | None:
        group = spec_for(config).group_size
        if group is not None and mod.embedding_dim % group:
            skipped.append(f"{fqn or '<root>'} (embedding_dim={mod.embedding_dim})")
            return None
        if mod.sparse:
            skipped.append(f"{fqn or '<root>'} (sparse=True)")
            return None
        return Embedding.from_float(mod, weight=config)

    model = swap_all(model, select, make)
    if skipped:
        warnings.warn(
            f"triton_qat.prepare: left as nn.Embedding, embedding={config} cannot quantize: "
            f"{', '.join(skipped)}",
            stacklevel=3,
        )
    return model
