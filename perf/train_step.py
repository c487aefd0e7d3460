"""Training throughput of a Llama-style decoder: bf16 vs torchao's QAT vs triton_qat, eager and
compiled, on identical data and seed.

    python perf/train_step.py                 # CUDA: Llama-3-8B layer dims, 4 layers, 4 x 2048 tokens
    python perf/train_step.py --dry-run       # CPU: a tiny model (numbers say nothing about GPU speed)
    python perf/train_step.py --weights int8,int4g128,float8 --layers 8 --steps 20

The model: token embedding, ``layers`` blocks (RMSNorm, attention with RoPE and grouped-query
heads through ``F.scaled_dot_product_attention(enable_gqa=True)``, RMSNorm, SwiGLU MLP), a final
RMSNorm and the output projection; cross-entropy on next tokens. bf16 parameters, fused AdamW.
The seven linears of every block are what the providers change; the embedding and the output
projection stay bf16 ``nn.Linear`` / ``nn.Embedding`` in every provider:

* ``bf16``: plain ``nn.Linear``.
* ``torchao``: torchao's own QAT, ``quantize_(model, QATConfig(activation_config=int8 per token
  asymmetric, weight_config=int8 per channel symmetric, step="prepare"), filter_fn)``.
* ``triton_qat``: ``tq.prepare(model, <the same QATConfig>, filter_fn)`` (torchao's numerics;
  without torchao, ``tq.prepare`` with the equivalent ``tq.QuantConfig`` pair, said in the row).

Each in two modes: ``eager``, and ``compiled`` per block (``block.compile(fullgraph=True)`` for
each block, as torchtitan does: the blocks are alike, so one block's graph is compiled and reused,
and compile time does not grow with depth; embedding, output projection and loss run eagerly).
Where this torch's Dynamo cannot trace torchao's QAT whole (torch 2.11 skips a torch.ao check
that torchao 0.18 calls), torchao's blocks compile with graph breaks, and its rows say so.

Timing: ``warmup`` steps (compile, the kernels' first launches, the optimizer's state), then
``steps`` steps queued back to back with no synchronization inside or between them; an event
recorded after each step gives each step's device time (perf_counter on a CPU, where steps run
synchronously). Reported per (provider, mode, weights): tokens/s (tokens per step / median step
time), step time (median, p20, p80), peak memory over the measured steps
(``torch.cuda.max_memory_allocated``; "not measured" on a CPU), the first step's wall time
(``compile_s``: compile and first launches, synchronized) and the loss of the last measured step
(its forward, after ``warmup + steps - 1`` updates on the same batches from the same seed): bf16's
differs by what quantization changes, triton_qat's equals torchao's within the GEMMs' rounding.
A missing torchao gives "not measured" rows, never a failed run.

Rows: long-format CSV (``phase=train_step``, ``metric`` in tokens_per_s / step_ms / peak_mem_mb /
compile_s / loss), written as produced to ``perf/results/<gpu>/train_step.csv``
(``--dry-run``: ``perf/results/quick/``), and a bar chart beside it (``train_step.png``).
``make gpu-report`` runs the same measurement as one of its phases (perf/gpu_report_train_step.py).
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

if __name__ == "__main__" and "--dry-run" in sys.argv[1:]:
    # the real kernels in Triton's interpreter (set before triton_qat is imported); a CPU run
    # with TRITON_INTERPRET=0 uses triton_qat's plain-torch backend instead
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # perf/bench.py, perf/plot.py, perf/train_step_rows.py

import bench  # noqa: E402
from train_step_rows import (  # noqa: E402, F401 (re-exported: readers use train_step.*)
    MODES,
    NOT_MEASURED,
    PHASE,
    PROVIDERS,
    headline,
    relative_to_bf16,
    values,
)

import triton_qat as tq  # noqa: E402
from triton_qat.autotune.cache import slug  # noqa: E402

METRICS = ("tokens_per_s", "step_ms", "peak_mem_mb", "compile_s", "loss")
FIELDS = bench.REPORT_FIELDS  # the columns of make gpu-report's report.csv: one CSV format


# ------------------------------------------------------------------------------------------------
# what runs


@dataclass(frozen=True)
class Dims:
    """The decoder's shape and one step's batch."""

    d_model: int
    heads: int
    kv_heads: int
    ffn: int
    layers: int
    vocab: int
    batch: int
    seq: int

    @property
    def tokens(self) -> int:
        return self.batch * self.seq

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    @classmethod
    def llama3_8b(cls, layers: int = 4) -> Dims:
        """Llama-3-8B's layer dimensions, ``layers`` blocks, 4 x 2048 tokens; vocab 32768 (the
        output projection stays bf16 in every provider: a smaller vocab keeps its fixed cost
        from hiding the blocks')."""
        return cls(d_model=4096, heads=32, kv_heads=8, ffn=14336, layers=layers, vocab=32768,
                   batch=4, seq=2048)  # fmt: skip

    @classmethod
    def tiny(cls, layers: int = 2) -> Dims:
        """A CPU-sized model with the same structure (grouped-query heads, SwiGLU)."""
        return cls(d_model=64, heads=4, kv_heads=2, ffn=128, layers=layers, vocab=128, batch=2,
                   seq=16)  # fmt: skip

    def describe(self) -> str:
        return (f"{self.layers} layers, d_model {self.d_model}, {self.heads} heads / "
                f"{self.kv_heads} KV heads, ffn {self.ffn}, vocab {self.vocab}, "
                f"{self.batch}x{self.seq} tokens")  # fmt: skip

    def check(self) -> None:
        """Errors name the field."""
        for name in ("d_model", "heads", "kv_heads", "ffn", "layers", "vocab", "batch", "seq"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.d_model % self.heads or self.head_dim % 2:
            raise ValueError(f"heads: d_model {self.d_model} / heads {self.heads} must be an "
                             "even integer (RoPE rotates pairs)")  # fmt: skip
        if self.heads % self.kv_heads:
            raise ValueError(f"kv_heads: {self.kv_heads} must divide heads {self.heads}")


@dataclass(frozen=True)
class Settings:
    """Everything one measurement needs besides the device."""

    dims: Dims
    dtype: torch.dtype = torch.bfloat16
    warmup: int = 3
    steps: int = 10
    lr: float = 1e-3
    seed: int = 0
    providers: tuple[str, ...] = PROVIDERS
    modes: tuple[str, ...] = MODES
    weights: tuple[str, ...] = ("int8",)  # int8 per channel; int4g<group>: int4 per group

    @classmethod
    def gpu(cls, layers: int = 4) -> Settings:
        return cls(dims=Dims.llama3_8b(layers), warmup=3, steps=10)

    @classmethod
    def dry(cls) -> Settings:
        return cls(dims=Dims.tiny(), warmup=1, steps=2)

    def check(self) -> None:
        self.dims.check()
        if self.warmup < 1:  # the first step compiles: it is never timed
            raise ValueError(f"warmup: expected >= 1 step, got {self.warmup}")
        if self.steps < 1:
            raise ValueError(f"steps: expected >= 1, got {self.steps}")
        for name, given, allowed in (("providers", self.providers, PROVIDERS),
                                     ("modes", self.modes, MODES)):  # fmt: skip
            bad = [g for g in given if g not in allowed]
            if not given or bad:
                raise ValueError(f"{name}: expected a subset of {list(allowed)}, got {list(given)}")
        for w in self.weights:
            group = weight_group(w)
            if group and self.dims.d_model % group or group and self.dims.ffn % group:
                raise ValueError(f"weights: group {group} of {w!r} must divide d_model "
                                 f"{self.dims.d_model} and ffn {self.dims.ffn}")  # fmt: skip


def weight_group(weights: str) -> int:
    """0 for ``int8`` (per channel) and ``float8`` (e4m3 per row), the group size for
    ``int4g<group>``; else a ValueError."""
    if weights in ("int8", "float8"):
        return 0
    if weights.startswith("int4g") and weights[5:].isdigit() and int(weights[5:]) > 0:
        return int(weights[5:])
    raise ValueError(f"weights: expected 'int8', 'float8' or 'int4g<group>' (e.g. int4g128), "
                     f"got {weights!r}")  # fmt: skip


def config_label(provider: str, weights: str) -> str:
    """The quantization a row measured: none for bf16, else 8da8w / 8da4w-g<group> / fp8-row
    (e4m3 activations and weights, per-row scales)."""
    if provider == "bf16":
        return "none"
    if weights == "float8":
        return "fp8-row"
    group = weight_group(weights)
    return f"8da4w-g{group}" if group else "8da8w"


def items(settings: Settings) -> list[tuple[str, str, str]]:
    """(provider, mode, weights) in priority order, so a phase cut by its time limit has the
    headline comparisons: bf16 and triton_qat eager, then compiled, then torchao's, then the other
    weight configs' (bf16 runs once: it has no weight config)."""
    order = [("bf16", "eager"), ("triton_qat", "eager"), ("bf16", "compiled"),
             ("triton_qat", "compiled"), ("torchao", "eager"), ("torchao", "compiled")]  # fmt: skip
    out = []
    for i, weights in enumerate(settings.weights):
        for provider, mode in order:
            if provider in settings.providers and mode in settings.modes:
                if provider == "bf16" and i:
                    continue
                out.append((provider, mode, weights))
    return out


# ------------------------------------------------------------------------------------------------
# the model


def rope_tables(seq: int, head_dim: int, device, theta: float = 500000.0) -> tuple:
    """(cos, sin), fp32 [seq, head_dim]: Llama 3's rotary frequencies in the rotate-half layout."""
    inv = 1.0 / theta ** (
        torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim
    )
    angles = torch.outer(torch.arange(seq, device=device, dtype=torch.float32), inv)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate [B, heads, T, head_dim] by position, in fp32, back to x's dtype."""
    xf = x.float()
    half = xf.shape[-1] // 2
    rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    """q / k / v / o projections, RoPE on q and k, causal grouped-query attention (SDPA)."""

    def __init__(self, dims: Dims, **factory) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = dims.heads, dims.kv_heads, dims.head_dim
        kv = dims.kv_heads * dims.head_dim
        self.wq = nn.Linear(dims.d_model, dims.d_model, bias=False, **factory)
        self.wk = nn.Linear(dims.d_model, kv, bias=False, **factory)
        self.wv = nn.Linear(dims.d_model, kv, bias=False, **factory)
        self.wo = nn.Linear(dims.d_model, dims.d_model, bias=False, **factory)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.wo(a.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dims: Dims, **factory) -> None:
        super().__init__()
        self.w1 = nn.Linear(dims.d_model, dims.ffn, bias=False, **factory)
        self.w3 = nn.Linear(dims.d_model, dims.ffn, bias=False, **factory)
        self.w2 = nn.Linear(dims.ffn, dims.d_model, bias=False, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """x + attention(norm(x)), then + feed_forward(norm(x)): seven linears."""

    def __init__(self, dims: Dims, **factory) -> None:
        super().__init__()
        self.attention_norm = nn.RMSNorm(dims.d_model, eps=1e-5, **factory)
        self.attention = Attention(dims, **factory)
        self.ffn_norm = nn.RMSNorm(dims.d_model, eps=1e-5, **factory)
        self.feed_forward = FeedForward(dims, **factory)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin)
        return x + self.feed_forward(self.ffn_norm(x))


class Decoder(nn.Module):
    """Embedding, blocks, final norm, output projection; ``loss(tokens, targets)``."""

    def __init__(self, dims: Dims, **factory) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(dims.vocab, dims.d_model, **factory)
        self.layers = nn.ModuleList(Block(dims, **factory) for _ in range(dims.layers))
        self.norm = nn.RMSNorm(dims.d_model, eps=1e-5, **factory)
        self.output = nn.Linear(dims.d_model, dims.vocab, bias=False, **factory)
        cos, sin = rope_tables(dims.seq, dims.head_dim, factory.get("device"))
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.tok_embeddings(tokens)
        for block in self.layers:
            h = block(h, self.cos, self.sin)
        return self.output(self.norm(h))

    def loss(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self(tokens)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def in_blocks(module: nn.Module, fqn: str) -> bool:
    """The linears the providers change: those of the blocks (not the output projection)."""
    return isinstance(module, nn.Linear) and fqn.startswith("layers.")


# ------------------------------------------------------------------------------------------------
# providers


class NotMeasured(Exception):
    """A provider that cannot run here (torchao not installed): its rows say "not measured"."""


def torchao_qat_config(weights: str):
    """torchao's QATConfig (prepare step): int8 per-token asymmetric dynamic activations and
    int8 per-channel (``int8``) or int4 per-group (``int4g<group>``) symmetric weights."""
    try:
        from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig
    except ImportError as e:
        raise NotMeasured(f"torchao is not installed ({e})") from e
    if weights == "float8":  # torchao's float8 QAT: e4m3 activations and weights, per row
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig
        from torchao.quantization.granularity import PerRow

        base = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
        return QATConfig(base, step="prepare")
    group = weight_group(weights)
    act = IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)
    if group:
        weight = IntxFakeQuantizeConfig(torch.int4, group_size=group)
    else:
        weight = IntxFakeQuantizeConfig(torch.int8, "per_channel")
    return QATConfig(activation_config=act, weight_config=weight, step="prepare")


def triton_qat_configs(weights: str) -> tuple[object, object]:
    """The same numerics as :func:`torchao_qat_config` in triton_qat's own terms (the defaults:
    int8 per-token asymmetric activations; symmetric weights; float8: e4m3 per row, as
    torchao's Float8DynamicActivationFloat8WeightConfig maps)."""
    if weights == "float8":
        return tq.Float8Config("per_row"), tq.Float8Config("per_row")
    group = weight_group(weights)
    if group:
        weight = tq.QuantConfig(bits=4, granularity="per_group", group_size=group, symmetric=True)
    else:
        weight = tq.QuantConfig(granularity="per_channel", symmetric=True)
    return tq.QuantConfig(), weight


def apply_provider(model: Decoder, provider: str, weights: str) -> str:
    """Change the blocks' linears in place; returns how (the row's detail)."""
    if provider == "bf16":
        return "nn.Linear"
    if provider == "torchao":
        config = torchao_qat_config(weights)  # NotMeasured without torchao, before any import
        from torchao.quantization import quantize_

        quantize_(model, config, filter_fn=in_blocks)
        return "torchao quantize_(model, QATConfig(..., step='prepare'))"
    try:
        config = torchao_qat_config(weights)
    except NotMeasured:
        act, weight = triton_qat_configs(weights)
        tq.prepare(model, activation=act, weight=weight, filter_fn=in_blocks)
        return "tq.prepare(model, activation=, weight=) (torchao not installed)"
    tq.prepare(model, config, in_blocks)
    return "tq.prepare(model, QATConfig) (the torchao config)"


def compile_blocks(model: Decoder, fullgraph: bool = True) -> None:
    """torch.compile each block (fullgraph), in place; the rest of the model stays eager."""
    for block in model.layers:
        block.compile(fullgraph=fullgraph)


def batches(dims: Dims, n: int, device, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` (tokens, next tokens) batches, the same on every device (a seeded CPU generator).
    Learnable, so the loss falls within a few steps and the providers' losses say something:
    each sequence starts at a random token and follows one fixed random permutation of the
    vocabulary (next token = perm[token])."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(dims.vocab, generator=gen)
    out = []
    for _ in range(n):
        seqs = torch.empty(dims.batch, dims.seq + 1, dtype=torch.long)
        seqs[:, 0] = torch.randint(0, dims.vocab, (dims.batch,), generator=gen)
        for t in range(dims.seq):
            seqs[:, t + 1] = perm[seqs[:, t]]
        out.append((seqs[:, :-1].to(device), seqs[:, 1:].to(device)))
    return out


def build(provider: str, mode: str, weights: str, settings: Settings, device,
          fullgraph: bool = True) -> tuple:  # fmt: skip
    """(model, optimizer, how): the same initial weights for every provider (seeded), fused
    AdamW over every parameter (built after the provider's swap)."""
    torch.manual_seed(settings.seed)
    model = Decoder(settings.dims, device=device, dtype=settings.dtype)
    how = apply_provider(model, provider, weights)
    if mode == "compiled":
        compile_blocks(model, fullgraph)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, fused=True)
    return model, opt, how


# ------------------------------------------------------------------------------------------------
# timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def queued_step_ms(step: Callable[[int], None], first: int, n: int, device) -> list[float]:
    """Milliseconds of each of ``n`` steps queued back to back (no synchronization inside or
    between them): CUDA events recorded between steps, read after the last; on a CPU, where the
    steps run synchronously, perf_counter between steps."""
    if device.type != "cuda":
        out = []
        for i in range(first, first + n):
            t0 = time.perf_counter()
            step(i)
            out.append(1e3 * (time.perf_counter() - t0))
        return out
    events = [torch.cuda.Event(enable_timing=True) for _ in range(n + 1)]
    events[0].record()
    for j, i in enumerate(range(first, first + n)):
        step(i)
        events[j + 1].record()
    torch.cuda.synchronize(device)
    return [a.elapsed_time(b) for a, b in zip(events, events[1:], strict=False)]


@dataclass
class Measured:
    """One (provider, mode, weights) item's numbers; None: not measured."""

    step_ms: list[float]
    compile_s: float
    warmup_s: float
    peak_mem_mb: float | None
    loss: float
    losses: list[float]
    how: str


def measure(provider: str, mode: str, weights: str, settings: Settings, device) -> Measured:
    """Build, warm up (the first step's wall time is ``compile_s``), then time ``steps`` queued
    steps; the loss is the last measured step's, read after the timing. The caller releases
    what the item left (:func:`release`) once this returns."""
    torch._dynamo.reset()  # each item compiles from scratch: its compile time is its own
    data = batches(settings.dims, 4, device, settings.seed)
    losses: list[torch.Tensor] = []
    why = None
    try:
        model, opt, how = build(provider, mode, weights, settings, device)
        step, t0 = _first_step(model, opt, data, losses, device)
    except torch._dynamo.exc.Unsupported as e:
        # torchao's own QAT under a torch whose Dynamo cannot trace it whole (torch 2.11 skips
        # torch.ao's _per_token_quant_qparam_dim_check): measured as its users would run it,
        # with graph breaks, and said so; triton_qat's must hold fullgraph=True
        if provider != "torchao" or mode != "compiled":
            raise
        why = str(e).splitlines()[0]
    if why is not None:  # the failed attempt's model freed (its traceback's cycles too) first
        model = opt = None
        losses.clear()
        release(device)
        model, opt, how = build(provider, mode, weights, settings, device, fullgraph=False)
        step, t0 = _first_step(model, opt, data, losses, device)
        how += f"; fullgraph=True failed ({why}): compiled with graph breaks"
    synchronize(device)
    compile_s = time.perf_counter() - t0
    for i in range(1, settings.warmup):
        step(i)
    synchronize(device)
    warmup_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    ms = queued_step_ms(step, settings.warmup, settings.steps, device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    loss_values = [v.item() for v in losses]
    return Measured(step_ms=ms, compile_s=compile_s, warmup_s=warmup_s, peak_mem_mb=peak,
                    loss=loss_values[-1], losses=loss_values, how=how)  # fmt: skip


def _first_step(model, opt, data: list, losses: list, device) -> tuple[Callable, float]:
    """(the training step of ``model`` on ``data``, appending each loss to ``losses``; the
    perf_counter time before its first call), after that first call (compile, first launches)."""

    def step(i: int) -> None:
        tokens, targets = data[i % len(data)]
        loss = model.loss(tokens, targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    synchronize(device)
    t0 = time.perf_counter()
    step(0)
    return step, t0


def release(device: torch.device) -> None:
    """Free what the last item left (its model, optimizer state, compiled graphs)."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------
# rows


def _base(provider: str, mode: str, weights: str, settings: Settings, device) -> dict:
    d = settings.dims
    backend = tq.backend(device) if provider == "triton_qat" else "torch"
    return dict(phase=PHASE, item=f"{provider} {mode} {config_label(provider, weights)}",
                kernel="llama_decoder", provider=provider, backend=backend, mode=mode,
                M=d.tokens, K=d.d_model, N=d.ffn, dtype=str(settings.dtype).replace("torch.", ""),
                config=config_label(provider, weights))  # fmt: skip


def measured_rows(m: Measured, base: dict, settings: Settings) -> list[dict]:
    """The five metrics of one measured item."""
    med, p20, p80 = bench.quantiles(m.step_ms)
    tokens = settings.dims.tokens
    detail = (f"{settings.dims.describe()}; {m.how}; median of {len(m.step_ms)} queued steps "
              f"after {settings.warmup} warm-up")  # fmt: skip
    rows = [
        dict(metric="tokens_per_s", value=tokens / med * 1e3, p20=tokens / p80 * 1e3,
             p80=tokens / p20 * 1e3, detail=detail),
        dict(metric="step_ms", value=med, p20=p20, p80=p80, detail=detail),
        dict(metric="compile_s", value=m.compile_s,
             detail=f"first step's wall time (compile, first kernel launches, optimizer state); "
                    f"all {settings.warmup} warm-up steps {m.warmup_s:.2f} s"),
        dict(metric="loss", value=m.loss,
             detail=f"last measured step's loss after {settings.warmup + settings.steps - 1} "
                    f"updates; every step: " + ", ".join(f"{v:.4f}" for v in m.losses)),
    ]  # fmt: skip
    if m.peak_mem_mb is None:
        rows.insert(2, dict(metric="peak_mem_mb", status="skipped",
                            detail=f"{NOT_MEASURED}: no CUDA (torch.cuda.max_memory_allocated)"))  # fmt: skip
    else:
        rows.insert(2, dict(metric="peak_mem_mb", value=m.peak_mem_mb,
                            detail="torch.cuda.max_memory_allocated over the measured steps (MiB)"))  # fmt: skip
    return [{**base, "status": "done", **r} for r in rows]


def not_measured_rows(base: dict, why: str, status: str = "skipped") -> list[dict]:
    """One row per metric with no value: ``why`` says what stopped it."""
    return [{**base, "status": status, "metric": metric, "detail": why} for metric in METRICS]


def run_items(
    settings: Settings,
    device: torch.device,
    emit: Callable[[dict], None],
    deadline: float | None = None,
    say: Callable[[str], None] = print,
) -> bool:
    """Measure every item in priority order, emitting its rows as it finishes; an item that
    fails (out of memory, a compile error) is emitted as failed and the next runs. Items
    starting after ``deadline`` (time.monotonic) are emitted as skipped, and so are items the
    time left cannot hold (less than the slowest item so far took). Returns whether any item
    was skipped for time."""
    settings.check()
    stopped, slowest = False, 0.0
    for provider, mode, weights in items(settings):
        base = _base(provider, mode, weights, settings, device)
        label = base["item"]
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and (left <= 0 or left < slowest):
            stopped = True
            why = f"{NOT_MEASURED}: skipped, phase time limit ({max(left, 0):.0f} s left, " \
                  f"the slowest item took {slowest:.0f} s)"  # fmt: skip
            for r in not_measured_rows(base, why):
                emit(r)
            say(f"train_step {label}: {why}")
            continue
        t0 = time.monotonic()
        try:
            m = measure(provider, mode, weights, settings, device)
        except NotMeasured as e:
            for r in not_measured_rows(base, f"{NOT_MEASURED}: {e}"):
                emit(r)
            say(f"train_step {label}: {NOT_MEASURED} ({e})")
            continue
        except Exception as e:  # noqa: BLE001 - recorded, the next item runs
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            for r in not_measured_rows(base, f"failed: {type(e).__name__}: {first}", "fail"):
                emit(r)
            say(f"train_step {label}: FAILED {type(e).__name__}: {first}")
            release(device)
            continue
        # the item's model, optimizer state and graphs are gone once measure returns
        release(device)
        secs = time.monotonic() - t0
        slowest = max(slowest, secs)
        for r in measured_rows(m, base, settings):
            emit(r)
        med = bench.quantiles(m.step_ms)[0]
        peak = f"{m.peak_mem_mb:.0f} MiB" if m.peak_mem_mb is not None else NOT_MEASURED
        say(f"train_step {label}: {settings.dims.tokens / med * 1e3:,.0f} tokens/s, step "
            f"{med:.2f} ms, peak {peak}, first step {m.compile_s:.1f} s, loss {m.loss:.4f} "
            f"({secs:.1f} s)")  # fmt: skip
    return stopped


# ------------------------------------------------------------------------------------------------
# reading rows back: ratios to bf16, the headline


# ------------------------------------------------------------------------------------------------
# standalone


def _write_csv(path: Path, meta: dict) -> tuple[Callable[[dict], None], Callable[[], None]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "w", newline="")  # noqa: SIM115 - closed by the returned close
    writer = csv.DictWriter(fh, fieldnames=FIELDS, extrasaction="ignore")
    writer.writeheader()

    def emit(row: dict) -> None:
        out = {**meta, **row}
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in out.items()})
        fh.flush()

    return emit, fh.close


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Settings, torch.device]:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--dry-run", action="store_true",
                   help="CPU, a tiny model (Triton interpreter if TRITON_INTERPRET=1)")  # fmt: skip
    p.add_argument("--providers", default=",".join(PROVIDERS))
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--weights", default="int8",
                   help="int8, float8 and / or int4g<group>, comma-separated")  # fmt: skip
    p.add_argument("--layers", type=int, default=None, help="blocks (default 4; dry run 2)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--seq", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 3; dry 1)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 10; dry 2)")
    p.add_argument("--out", default=None, help="CSV (default perf/results/<gpu>/train_step.csv)")
    args = p.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        p.error("no CUDA device: this measures a GPU; on a CPU pass --dry-run")
    base = Settings.dry() if args.dry_run else Settings.gpu()
    dims = base.dims
    for name in ("layers", "batch", "seq"):
        if getattr(args, name) is not None:
            dims = replace(dims, **{name: getattr(args, name)})
    settings = replace(
        base,
        dims=dims,
        providers=tuple(s for s in args.providers.split(",") if s),
        modes=tuple(s for s in args.modes.split(",") if s),
        weights=tuple(s for s in args.weights.split(",") if s),
        warmup=base.warmup if args.warmup is None else args.warmup,
        steps=base.steps if args.steps is None else args.steps,
    )
    try:
        settings.check()
    except ValueError as e:
        name = str(e).split(":")[0]
        p.error(f"--{name.replace('_', '-')}: {str(e).split(': ', 1)[-1]}")
    return args, settings, torch.device("cpu" if args.dry_run else "cuda")


def main(argv: list[str] | None = None) -> Path:
    args, settings, device = parse_args(argv)
    gpu = bench.device_label(device)
    folder = "quick" if args.dry_run else slug(gpu)
    out = Path(args.out) if args.out else HERE / "results" / folder / "train_step.csv"
    meta = dict(gpu=gpu, torch=torch.__version__, triton=_triton_version(),
                commit=bench.git_commit(),
                utc=datetime.now(timezone.utc).isoformat(timespec="seconds"))  # fmt: skip
    emit, close = _write_csv(out, meta)
    rows: list[dict] = []

    def keep(row: dict) -> None:
        rows.append({**meta, **row})
        emit(row)

    print(f"train_step on {gpu}: {settings.dims.describe()}, {settings.dtype}"
          + (" (DRY RUN: numbers say nothing about GPU speed)" if args.dry_run else ""))  # fmt: skip
    try:
        run_items(settings, device, keep)
    finally:
        close()
    import plot

    png = plot.plot_train_step(rows, out.with_suffix(".png"), dry_run=args.dry_run)
    print(headline(rows))
    print(f"wrote {out}" + (f" and {png}" if png else ""))
    return out


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError:  # pragma: no cover - triton_qat needs it
        return "none"


if __name__ == "__main__":
    main(sys.argv[1:])
