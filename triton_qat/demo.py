"""What QAT buys: a small character-level LM, quantized after training (PTQ) and with training (QAT).

    python -m triton_qat.demo [--config tiny|cpu|small|medium] [--steps N] [--qat-steps N]
                              [--weight-bits 3] [--group-size 32] [--act-bits 8] [--compile auto|on|off]

1. Train a float decoder-only transformer on ``triton_qat/data/keeper_logs.txt`` until its eval loss
   is far below the unigram (character frequency) loss.
2. PTQ: ``tq.convert(tq.prepare(copy))`` with no training, at a low-bit config (default: int3
   weights per group of 32, int8 per-token activations): the eval loss jumps. The float8 line:
   the same at e4m3 weights and activations (``tq.Float8Config``), whose loss barely moves.
3. QAT: ``tq.prepare`` the float model with the same config, fine-tune it, ``tq.convert`` it, save
   the converted state dict and reload it. A copy of the float model is fine-tuned for the same
   steps on the same batches, so the gap QAT recovers is not an effect of extra training.
4. Plot (``demo_out/qat_demo.png``) and a table (printed last): eval losses, the fraction of the PTQ
   gap recovered, ``(ptq - qat) / (ptq - float)``, and the time per step.

Which code runs (``tq.backend``): on a GPU the Triton kernels, in bf16, with tokens/s and peak memory.
On a CPU the fine-tuning runs on triton_qat's plain-torch backend (fake quantization bit-identical
to the kernels), and the QAT model made from the float weights runs a few batches (loss, gradients,
then the converted model's loss) through both that backend and the Triton kernels in Triton's
interpreter (a subprocess with TRITON_INTERPRET=1): they agree up to float rounding. The interpreter
is far too slow to train with, so ``TRITON_INTERPRET=1 python -m triton_qat.demo`` restarts itself
without it (``--interpret`` keeps it). CPU times are CPU times: they say nothing of kernel speed.

Several processes: ``torchrun --nproc_per_node 8 -m triton_qat.demo --config medium`` runs the same
script with DistributedDataParallel (NCCL on GPUs, gloo on CPU); each rank trains on its slice of
every batch and rank 0 prints, checks, saves and plots.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import triton_qat as tq

CORPUS = Path(__file__).parent / "data" / "keeper_logs.txt"
# measured with the cpu config on a 2-core machine: a QAT step 42 -> 34 ms, a float step unchanged,
# for 5-10 s of compiling each model
COMPILE_NOTE = (
    "on a CPU, at this size, compiling costs more time than it saves; --compile on to use it"
)


@dataclass(frozen=True)
class ModelConfig:
    d_model: int
    n_layers: int
    n_heads: int
    seq_len: int
    batch: int
    steps: int  # float training
    qat_steps: int  # fine-tuning, QAT and float alike
    lr: float
    qat_lr: float
    eval_windows: int  # held-out windows of seq_len characters


# fmt: off
CONFIGS = {
    # the test suite's budget: seconds, even through the Triton interpreter
    "tiny": ModelConfig(d_model=32, n_layers=1, n_heads=2, seq_len=32, batch=8, steps=40,
                        qat_steps=4, lr=3e-3, qat_lr=1e-3, eval_windows=16),
    # `make demo` on a 2-core CPU: about a minute of training on the plain-torch backend
    "cpu": ModelConfig(d_model=64, n_layers=2, n_heads=4, seq_len=64, batch=32, steps=1500,
                       qat_steps=300, lr=3e-3, qat_lr=1e-3, eval_windows=128),
    # one GPU (the default there), and a larger one
    "small": ModelConfig(d_model=256, n_layers=4, n_heads=4, seq_len=128, batch=32, steps=1500,
                         qat_steps=300, lr=1e-3, qat_lr=3e-4, eval_windows=256),
    "medium": ModelConfig(d_model=512, n_layers=8, n_heads=8, seq_len=256, batch=32, steps=2000,
                          qat_steps=500, lr=6e-4, qat_lr=2e-4, eval_windows=256),
}
# fmt: on


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=-1)
        q, k, v = (t.reshape(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, C))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyGPT(nn.Module):
    """Decoder-only transformer: token + position embeddings, pre-LN blocks, linear LM head."""

    def __init__(self, vocab: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, cfg.d_model)
        self.pos = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg.d_model, cfg.n_heads) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def keep_head_float(mod: nn.Module, fqn: str) -> bool:
    """prepare's filter: every linear but the LM head (usual QAT practice; embeddings stay too)."""
    return fqn != "head"


def act_config(bits: int) -> tq.QuantConfig:
    """Per-token asymmetric activations (ValueError from QuantConfig on bits outside 2..8)."""
    return tq.QuantConfig(bits=bits, granularity="per_token")


def weight_config(bits: int, group_size: int) -> tq.QuantConfig:
    """Symmetric weights per group of ``group_size`` (0: per output channel); ValueError from
    QuantConfig on bits outside 2..8 or a negative group size."""
    if group_size:
        return tq.QuantConfig(
            bits=bits, granularity="per_group", group_size=group_size, symmetric=True
        )
    return tq.QuantConfig(bits=bits, granularity="per_channel", symmetric=True)


def quant_configs(weight_bits: int, group_size: int, act_bits: int):
    """(activation, weight) QuantConfigs: per-token asymmetric activations, symmetric weights per
    group of ``group_size`` (0: per output channel)."""
    return act_config(act_bits), weight_config(weight_bits, group_size)


def quantized_in_features(cfg: ModelConfig) -> list[int]:
    """The distinct ``in_features`` of the linears :func:`keep_head_float` selects in a
    :class:`TinyGPT` of ``cfg`` (built on the meta device: no memory, no weights)."""
    with torch.device("meta"):
        model = TinyGPT(1, cfg)
    return sorted(
        {
            mod.in_features
            for fqn, mod in model.named_modules()
            if isinstance(mod, nn.Linear) and keep_head_float(mod, fqn)
        }
    )


def prepare_quantized(model: nn.Module, act: object, weight: object) -> nn.Module:
    """``tq.prepare`` every linear but the head; RuntimeError if it quantized none (prepare leaves
    the linears whose shapes the configs cannot quantize as ``nn.Linear``, with a warning): the
    demo would then compare the float model with itself."""
    prepared = tq.prepare(model, activation=act, weight=weight, filter_fn=keep_head_float)
    if not any(isinstance(mod, tq.Linear) for mod in prepared.modules()):
        raise RuntimeError(
            f"triton_qat demo: tq.prepare quantized no linear layer with weight config {weight} "
            "(see its warning: a group size must divide the layers' in_features)"
        )
    return prepared


def describe(act: tq.QuantConfig, w: tq.QuantConfig) -> str:
    wg = f"per group of {w.group_size}" if w.granularity == "per_group" else w.granularity
    return f"int{w.bits} weights ({wg}) + int{act.bits} per-token activations"


# ------------------------------------------------------------------------------------------ data
def load_corpus(path: Path, device: torch.device):
    """Characters as ids; the first 90% trains, the last 10% is held out."""
    text = path.read_text(encoding="utf-8")
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    data = torch.tensor([index[c] for c in text], dtype=torch.long)
    split = int(0.9 * len(data))
    return data[:split].to(device), data[split:].to(device), vocab


def batches(data: torch.Tensor, cfg: ModelConfig, steps: int, seed: int):
    """The same sequence of (input, target) batches for every run that uses the same seed."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - cfg.seq_len - 1, (cfg.batch,), generator=g)
        idx = torch.stack([data[s : s + cfg.seq_len + 1] for s in starts.tolist()])
        yield idx[:, :-1], idx[:, 1:]


def eval_windows(data: torch.Tensor, cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``cfg.eval_windows`` evenly spaced held-out windows: the same eval set for every model."""
    T = cfg.seq_len
    n = max(1, min(cfg.eval_windows, len(data) - T - 1))
    starts = torch.linspace(0, len(data) - T - 1, n).long().tolist()
    x = torch.stack([data[s : s + T] for s in starts])
    y = torch.stack([data[s + 1 : s + T + 1] for s in starts])
    return x, y


def unigram_loss(train: torch.Tensor, held_out: torch.Tensor, vocab: int) -> float:
    """Cross-entropy of the held-out text under the training text's character frequencies."""
    counts = Counter(train.tolist())
    p = torch.tensor([counts.get(i, 0) + 1 for i in range(vocab)], dtype=torch.float64)
    return -(p / p.sum()).log()[held_out.cpu()].mean().item()


def lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))


@torch.no_grad()
def eval_loss(model: nn.Module, ev: tuple[torch.Tensor, torch.Tensor], chunk: int = 128) -> float:
    """Mean cross-entropy (nats per character) on the held-out windows, in eval mode."""
    was_training = model.training
    model.eval()
    x, y = ev
    total = sum(
        lm_loss(model, x[i : i + chunk], y[i : i + chunk]).item() * len(x[i : i + chunk])
        for i in range(0, len(x), chunk)
    )
    model.train(was_training)
    return total / len(x)


# -------------------------------------------------------------------------------------- training
def lr_at(step: int, steps: int, lr: float, warmup: int, floor: float) -> float:
    """Linear warmup, then cosine decay to ``floor * lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def setup_distributed(device_type: str) -> tuple[int, int, int]:
    """(rank, world size, local rank); initializes the process group when run under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return dist.get_rank(), world, local_rank


def train(name, model, data, ev, cfg, args, *, steps, lr, warmup, floor, seed, evals=15) -> dict:
    """The usual loop: AdamW, torch.compile, forward, backward, step. Eval loss ``evals`` times."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    # tq.Linear is a set of torch.library ops with fake implementations: fullgraph compiles
    step_model = torch.compile(model, fullgraph=True) if args.compile else model
    if args.world > 1:  # compile first, then DDP: its all-reduce hooks run outside the graph
        ids = [args.local_rank] if args.device == "cuda" else None
        step_model = nn.parallel.DistributedDataParallel(step_model, device_ids=ids)
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    every = max(1, steps // evals)
    curve = [(0, eval_loss(model, ev))]
    losses, times = [], []
    bar = tqdm(
        batches(data, cfg, steps, seed),
        total=steps,
        desc=f"{name:>14}",
        unit="step",
        dynamic_ncols=True,
        mininterval=1.0,
        disable=args.rank != 0 or args.quiet,
    )
    for step, (x, y) in enumerate(bar):
        if args.world > 1:  # every rank draws the same batch and trains on its slice
            x, y = x.chunk(args.world)[args.rank], y.chunk(args.world)[args.rank]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup, floor)
        t0 = time.perf_counter()
        loss = lm_loss(step_model, x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
        if (step + 1) % every == 0 or step + 1 == steps:
            curve.append((step + 1, eval_loss(model, ev)))
            bar.set_postfix(loss=f"{losses[-1]:.3f}", eval=f"{curve[-1][1]:.3f}")
    warm = times[min(5, len(times) - 1) :]  # the first steps include compilation
    sec = statistics.median(warm)
    return {
        "losses": losses,
        "curve": curve,
        "eval": curve[-1][1],
        "ms_per_step": 1e3 * sec,
        "tokens_per_s": cfg.batch * cfg.seq_len / sec,
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }


# ---------------------------------------------------------------------------------- kernel check
def check_payload(
    model: nn.Module,
    cfg: ModelConfig,
    quant: tuple[int, int, int],
    data,
    n_batches: int,
    seed: int,
    rows: int = 4,
) -> dict:
    """What :func:`qat_check` needs: the float weights, the model and quantization configs, and
    ``n_batches`` batches of ``rows`` windows."""
    first = list(batches(data, cfg, n_batches, seed))
    return {
        "state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "vocab": model.head.out_features,
        "cfg": asdict(cfg),
        "quant": tuple(quant),
        "x": torch.stack([x[:rows].cpu() for x, _ in first]),
        "y": torch.stack([y[:rows].cpu() for _, y in first]),
    }


def qat_check(payload: dict) -> dict:
    """The QAT training step without the optimizer: ``tq.prepare`` the float weights, then the
    loss and gradients on each batch, and the converted model's loss on all of them. Run on each
    CPU backend by :func:`kernel_check`."""
    cfg = ModelConfig(**payload["cfg"])
    act, w = quant_configs(*payload["quant"])
    model = TinyGPT(payload["vocab"], cfg)
    model.load_state_dict(payload["state"])
    model = prepare_quantized(model, act, w)
    out = {"backend": tq.backend("cpu"), "loss": [], "grad": []}
    for x, y in zip(payload["x"], payload["y"], strict=True):
        loss = lm_loss(model, x, y)
        loss.backward()
        out["loss"].append(loss.item())
        out["grad"].append({n: p.grad for n, p in model.named_parameters()})
        model.zero_grad(set_to_none=True)
    converted = tq.convert(model.eval())
    out["converted"] = eval_loss(
        converted, (payload["x"].flatten(0, 1), payload["y"].flatten(0, 1))
    )
    return out


def kernel_check(payload: dict, out: Path) -> dict:
    """:func:`qat_check` here and on the other CPU backend, in a subprocess: the Triton kernels in
    Triton's interpreter when this process runs plain torch, and the reverse."""
    other = "0" if tq.backend("cpu") == "triton-interpreter" else "1"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        torch.save(payload, Path(tmp) / "payload.pt")
        env = {**os.environ, "TRITON_INTERPRET": other, "WORLD_SIZE": "1"}
        for var in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(var, None)
        res = subprocess.run(
            [sys.executable, "-m", "triton_qat.demo", "--check-worker", tmp],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if res.returncode != 0:
            raise RuntimeError(f"kernel check subprocess failed:\n{res.stderr[-3000:]}")
        theirs = torch.load(Path(tmp) / "result.pt")
    mine = qat_check(payload)
    by = {r["backend"]: r for r in (mine, theirs)}
    torch_, kern = by["torch"], by["triton-interpreter"]
    # relative loss difference; gradient error: relative L2 norm over all parameters
    loss_diff = max(
        abs(a - b) / abs(b)
        for a, b in zip(
            kern["loss"] + [kern["converted"]], torch_["loss"] + [torch_["converted"]], strict=True
        )
    )
    flat = lambda grads: torch.cat([g.flatten() for g in grads.values()])  # noqa: E731
    grad_err = max(
        ((flat(gk) - flat(gt)).norm() / flat(gt).norm()).item()
        for gk, gt in zip(kern["grad"], torch_["grad"], strict=True)
    )
    return {
        "interpreter": kern["loss"] + [kern["converted"]],
        "torch": torch_["loss"] + [torch_["converted"]],
        "max_rel_loss_diff": loss_diff,
        "max_rel_grad_err": grad_err,
        # GEMMs that round differently (int32 vs fp32 sums) put the odd activation on the other
        # side of a rounding boundary; a wrong quantization moves the loss by 1e-2 or more
        "ok": loss_diff <= 1e-3 and grad_err <= 5e-2,
        "seconds": time.perf_counter() - t0,
    }


def check_worker(folder: str) -> None:
    payload = torch.load(Path(folder) / "payload.pt")
    torch.save(qat_check(payload), Path(folder) / "result.pt")


# ------------------------------------------------------------------------------------------- main
def parse(argv):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--config",
        choices=list(CONFIGS),
        default=None,
        help="model and budget (default: cpu on a CPU, small on CUDA)",
    )
    p.add_argument("--steps", type=int, default=None, help="float training steps")
    p.add_argument(
        "--qat-steps",
        type=int,
        default=None,
        help="fine-tuning steps (QAT, and the float baseline)",
    )
    p.add_argument("--weight-bits", type=int, default=3)
    p.add_argument("--group-size", type=int, default=32, help="weights per scale; 0: per channel")
    p.add_argument("--act-bits", type=int, default=8)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16"],
        default="auto",
        help="model dtype (auto: bfloat16 on CUDA, float32 on CPU)",
    )
    p.add_argument(
        "--compile",
        choices=["auto", "on", "off"],
        default="auto",
        help="torch.compile the model (auto: on CUDA only)",
    )
    p.add_argument(
        "--check-batches",
        type=int,
        default=3,
        help="CPU: batches the QAT model runs through both CPU backends (0: skip)",
    )
    p.add_argument("--corpus", type=Path, default=CORPUS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="plot and saved model")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--interpret",
        action="store_true",
        help="keep TRITON_INTERPRET=1 (train through Triton's interpreter: slow)",
    )
    p.add_argument("--check-worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.check_worker:
        check_args(p, args)
    return p, args


def config_name(args: argparse.Namespace) -> str:
    """--config, or the default for the device: small on CUDA, cpu on a CPU."""
    return args.config or ("small" if args.device == "cuda" else "cpu")


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every flag argparse cannot check by type or choices, before any data or model: each bad
    value is a ``p.error`` (exit code 2) naming the flag. Resolves ``args.device`` (None: cuda when
    available, else cpu)."""
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("argument --device: cuda, but torch.cuda.is_available() is False")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    name = config_name(args)
    cfg = CONFIGS[name]
    for flag, value in (("--steps", args.steps), ("--qat-steps", args.qat_steps)):
        if value is not None and value < 1:
            p.error(f"argument {flag}: expected a positive int, got {value}")
    if args.check_batches < 0:
        p.error(
            f"argument --check-batches: expected an int >= 0 (0: skip), got {args.check_batches}"
        )
    # the library's own checks (QuantConfig.__post_init__): bits in 2..8, a positive group size
    try:
        act_config(args.act_bits)
    except ValueError as e:
        p.error(f"argument --act-bits: {e}")
    try:
        weight_config(args.weight_bits, args.group_size)
    except ValueError as e:
        flag = "--group-size" if str(e).startswith("group_size") else "--weight-bits"
        p.error(f"argument {flag}: {e}" + (" (0: per channel)" if flag == "--group-size" else ""))
    in_features = quantized_in_features(cfg)
    if args.group_size and any(k % args.group_size for k in in_features):
        common = math.gcd(*in_features)
        divisors = [d for d in range(1, common + 1) if common % d == 0]
        p.error(
            f"argument --group-size: {args.group_size} does not divide the in_features of every "
            f"quantized linear layer of the {name} config ({', '.join(map(str, in_features))}): "
            f"use 0 (per channel) or one of {', '.join(map(str, divisors))}"
        )
    for seed in (args.seed, args.seed + 1):  # the float and the fine-tuning batches
        try:
            torch.Generator().manual_seed(seed)
        except (RuntimeError, ValueError, OverflowError) as e:
            p.error(f"argument --seed: {args.seed} is not a torch seed ({e})")
    check_corpus(p, args.corpus, cfg, name)
    existing = next(d for d in (args.out, *args.out.absolute().parents) if d.exists())
    if not existing.is_dir():
        p.error(f"argument --out: {existing} exists and is not a directory")


def check_corpus(p: argparse.ArgumentParser, path: Path, cfg: ModelConfig, name: str) -> None:
    """``p.error`` naming --corpus unless ``path`` is UTF-8 text long enough for the windows of
    :func:`batches` (training: the first 90%) and :func:`eval_windows` (held out: the last 10%)."""
    try:
        n = len(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        p.error(f"argument --corpus: cannot read {path} as UTF-8 text ({e})")
    split = int(0.9 * n)
    T = cfg.seq_len
    if split < T + 2 or n - split < T + 1:
        p.error(
            f"argument --corpus: {path} has {n} characters; the {name} config (seq_len {T}) needs "
            f"at least {T + 2} in its first 90% (training) and {T + 1} in its last 10% (held out)"
        )


def main(argv: list[str] | None = None) -> dict:
    p, args = parse(argv)
    if args.check_worker:
        check_worker(args.check_worker)
        return {}
    args.rank, args.world, args.local_rank = setup_distributed(args.device)
    cuda = args.device == "cuda"
    args.compile = args.compile == "on" or (args.compile == "auto" and cuda)
    name = config_name(args)
    cfg = CONFIGS[name]
    steps = args.steps or cfg.steps
    qat_steps = args.qat_steps or cfg.qat_steps
    if cfg.batch % args.world:
        p.error(f"batch {cfg.batch} of --config does not split over {args.world} processes")
    device = torch.device(args.device, args.local_rank) if cuda else torch.device("cpu")
    dtype = (
        getattr(torch, args.dtype)
        if args.dtype != "auto"
        else (torch.bfloat16 if cuda else torch.float32)
    )
    backend = tq.backend(device)
    act, weight = quant_configs(args.weight_bits, args.group_size, args.act_bits)
    quant = describe(act, weight)
    say = print if args.rank == 0 else (lambda *a, **k: None)
    train_data, held_out, vocab = load_corpus(args.corpus, device)
    ev = eval_windows(held_out, cfg)
    unigram = unigram_loss(train_data, ev[1], len(vocab))
    where = {
        "triton": f"the Triton kernels on {torch.cuda.get_device_name(device) if cuda else ''}",
        "torch": "triton_qat's plain-torch backend on the CPU (fake quantization bit-identical "
        "to the kernels; the Triton interpreter checks it below)",
        "triton-interpreter": "the Triton kernels in Triton's interpreter (CPU, exact, slow)",
    }[backend]
    torch.manual_seed(args.seed)
    model = TinyGPT(len(vocab), cfg).to(device=device, dtype=dtype)
    say(
        f"triton_qat demo: what QAT buys at {quant}\n"
        f"  model: {name} config, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
        f"parameters, character-level on {args.corpus.name} ({len(vocab)} characters), "
        f"{dtype}, {args.world} process(es), torch {torch.__version__}\n"
        f"  backend: {backend} = {where}\n"
        f"  torch.compile: {'on' if args.compile else 'off (' + COMPILE_NOTE + ')'}"
    )
    if not cuda:
        say("  CPU times below are CPU times of this backend: they say nothing about kernel speed")

    # 1. A float model, trained as usual.
    pre = train(
        "float",
        model,
        train_data,
        ev,
        cfg,
        args,
        steps=steps,
        lr=cfg.lr,
        warmup=max(1, min(50, steps // 10)),
        floor=0.1,
        seed=args.seed,
    )
    float_eval = pre["eval"]

    # 2. PTQ: quantize the trained float model as it is (prepare + convert, no training).
    ptq_model = tq.convert(prepare_quantized(copy.deepcopy(model), act, weight).eval())
    ptq_eval = eval_loss(ptq_model, ev)
    say(
        f"float eval loss {float_eval:.4f} (unigram {unigram:.4f}); "
        f"PTQ at {quant}: {ptq_eval:.4f} (+{ptq_eval - float_eval:.4f})"
    )
    # 2b. The float8 line: e4m3 weights and activations (torchao's float8 QAT numerics; on a
    #     Hopper GPU in bf16 the converted layers run the fp8 tensor-core GEMM), PTQ alone
    f8 = tq.Float8Config(hp_value_lb=1e-12)
    f8_model = tq.convert(prepare_quantized(copy.deepcopy(model), f8, tq.Float8Config()).eval())
    f8_eval = eval_loss(f8_model, ev)
    del f8_model
    say(f"PTQ at float8 e4m3 W8A8 (per-row scales): {f8_eval:.4f} (+{f8_eval - float_eval:.4f})")

    # 3. QAT: prepare swaps every nn.Linear but the head for tq.Linear (fake-quantized forward at
    #    exactly the int8 arithmetic convert will run, straight-through backward), parameters shared
    #    with the float model they came from; then train as usual (train() compiles the model).
    ft = dict(
        steps=qat_steps,
        lr=cfg.qat_lr,
        warmup=max(1, min(20, qat_steps // 10)),
        floor=0.0,
        seed=args.seed + 1,
    )
    qat_model = prepare_quantized(copy.deepcopy(model), act, weight)
    qat = train("QAT fine-tune", qat_model, train_data, ev, cfg, args, **ft)
    #    convert: tq.Linear -> tq.QuantizedLinear (int8 codes, two int4 / int3 codes per byte)
    qat_model = tq.convert(qat_model.eval())
    qat_eval = eval_loss(qat_model, ev)

    # 4. The fair baseline: the float model trained for the same steps on the same batches.
    float_ft = train("float fine-tune", copy.deepcopy(model), train_data, ev, cfg, args, **ft)

    result = {
        "config": quant,
        "model": name,
        "backend": backend,
        "device": device.type,
        "dtype": str(dtype).replace("torch.", ""),
        "unigram": unigram,
        "float": float_eval,
        "float_finetuned": float_ft["eval"],
        "ptq": ptq_eval,
        "float8_ptq": f8_eval,
        "qat_converted": qat_eval,
        "recovered": recovered(ptq_eval, qat_eval, float_eval),
        "recovered_vs_float_finetuned": recovered(ptq_eval, qat_eval, float_ft["eval"]),
        "steps": steps,
        "qat_steps": qat_steps,
        "ms_per_step": {"float": float_ft["ms_per_step"], "qat": qat["ms_per_step"]},
        "tokens_per_s": {"float": float_ft["tokens_per_s"], "qat": qat["tokens_per_s"]},
        "peak_mib": {"float": float_ft["peak_mib"], "qat": qat["peak_mib"]},
        "curves": {
            "float": pre["curve"],
            "float_finetuned": float_ft["curve"],
            "qat": qat["curve"],
        },
    }
    if args.rank == 0:
        # 5. Save the converted model and load it back the way a user would: the same prepare +
        #    convert on a new model gives the QuantizedLinear modules, then load_state_dict.
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "qat_converted.pt"
        torch.save(qat_model.state_dict(), path)
        loaded = TinyGPT(len(vocab), cfg).to(device=device, dtype=dtype)
        loaded = tq.convert(prepare_quantized(loaded, act, weight).eval())
        loaded.load_state_dict(torch.load(path))
        result["reloaded"] = eval_loss(loaded, ev)
        result["saved"] = str(path)
        size = tq.weight_nbytes(qat_model)
        say(
            f"saved {path} ({path.stat().st_size / 1024:.0f} KiB); reloaded eval loss "
            f"{result['reloaded']:.4f} ({'identical' if result['reloaded'] == qat_eval else 'DIFFERS'}); "
            f"linear weights {size['stored'] / 1024:.1f} KiB (bf16 nn.Linear: "
            f"{size['bf16'] / 1024:.1f} KiB; LM head in float)"
        )

        # 6. CPU: the QAT model through the Triton kernels (interpreter) and through plain torch.
        if not cuda and args.check_batches > 0:
            bits = (args.weight_bits, args.group_size, args.act_bits)
            payload = check_payload(model, cfg, bits, train_data, args.check_batches, args.seed + 1)
            check = kernel_check(payload, args.out)
            result["kernel_check"] = check
            say(
                f"kernel check, QAT model from the float weights on {args.check_batches} batches "
                f"of 4 x {cfg.seq_len} characters (training losses, then the converted model's): "
                f"Triton kernels (interpreter) {fmt(check['interpreter'])}, plain-torch backend "
                f"{fmt(check['torch'])}: losses within {check['max_rel_loss_diff']:.1e}, gradients "
                f"within {check['max_rel_grad_err']:.1e} (relative L2); "
                + (
                    "the same numerics: fake quantization is bit-identical, the GEMMs round "
                    "differently (int32 vs fp32 sums), so an activation on a rounding boundary can "
                    "take the neighbouring code"
                    if check["ok"]
                    else "MISMATCH"
                )
                + f" [{check['seconds']:.0f} s]"
            )
        result["plot"] = str(plot(result, args.out, device, name))
        print_table(result)
    if args.world > 1:
        dist.destroy_process_group()
    return result


def recovered(ptq: float, qat: float, ref: float) -> float:
    """Fraction of the PTQ gap that QAT closes: (ptq - qat) / (ptq - ref)."""
    return (ptq - qat) / (ptq - ref) if ptq != ref else float("nan")


def fmt(xs: list[float]) -> str:
    return "[" + ", ".join(f"{x:.6f}" for x in xs) + "]"


def print_table(r: dict) -> None:
    rows = [
        ("unigram baseline (character frequencies)", r["unigram"], ""),
        (f"float model ({r['steps']} steps)", r["float"], ""),
        (f"float, fine-tuned {r['qat_steps']} more steps", r["float_finetuned"], ""),
        ("PTQ: convert(prepare(float)), no training", r["ptq"], f"{r['ptq'] - r['float']:+.4f}"),
        (
            f"QAT: {r['qat_steps']} steps, convert",
            r["qat_converted"],
            f"{r['qat_converted'] - r['float']:+.4f}",
        ),
        (
            "float8 e4m3 W8A8, PTQ (convert, no training)",
            r["float8_ptq"],
            f"{r['float8_ptq'] - r['float']:+.4f}",
        ),
    ]
    ms, tps = r["ms_per_step"], r["tokens_per_s"]
    if r["device"] == "cuda":
        what = f"GPU, Triton kernels, {r['dtype']}"
        speed = (
            f"float {ms['float']:.1f} ms, QAT {ms['qat']:.1f} ms ({ms['qat'] / ms['float']:.2f}x); "
            f"tokens/s float {tps['float']:,.0f}, QAT {tps['qat']:,.0f}"
        )
    else:
        what = f"CPU time, {r['backend']} backend: not kernel speed"
        speed = f"float {ms['float']:.1f} ms, QAT {ms['qat']:.1f} ms"
    lines = [f"{'':44} {'eval loss':>9}  vs float"]
    lines += [f"{a:<44} {b:>9.4f}  {c}" for a, b, c in rows]
    lines += [
        f"{'PTQ gap recovered by QAT':<44} {100 * r['recovered']:>8.1f}%  "
        f"(ptq - qat) / (ptq - float); vs the fine-tuned float: "
        f"{100 * r['recovered_vs_float_finetuned']:.1f}%",
        f"{'steps':<44} {r['steps']} float + {r['qat_steps']} fine-tuning (QAT and float each)",
        f"{'config':<44} {r['config']}, LM head in float",
        f"{'backend':<44} {r['backend']} ({r['device']}, {r['dtype']})",
    ]
    if r["peak_mib"]["qat"] is not None:
        pk = r["peak_mib"]
        lines.append(
            f"{'peak memory (torch.cuda.max_memory_allocated)':<44} "
            f"float {pk['float']:.0f} MiB, QAT {pk['qat']:.0f} MiB"
        )
    lines.append(f"{'time per step (' + what + ')':<44} {speed}")
    print("\n" + "\n".join(lines), flush=True)


def plot(r: dict, out: Path, device: torch.device, name: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    out.mkdir(parents=True, exist_ok=True)
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1, 1.4]})
    s, e = zip(*r["curves"]["float"], strict=True)
    a0.plot(s, e, "o-", color="tab:blue", ms=3, label="float training, eval loss")
    a0.axhline(r["unigram"], color="gray", ls=":", label=f"unigram {r['unigram']:.3f}")
    a0.set_yscale("log")
    a0.set_yticks([t for t in (0.1, 0.2, 0.3, 0.5, 1, 2, 3, 5) if min(e) / 1.2 < t < max(e) * 1.2])
    a0.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    a0.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    a0.set_xlabel("step")
    a0.set_ylabel("eval loss (nats / character)")
    a0.set_title(f"1. float training ({name} config)")
    a0.legend()
    for key, color, label in (
        ("float_finetuned", "tab:blue", "float fine-tune"),
        ("qat", "tab:orange", "QAT fine-tune (prepared model, eval mode)"),
    ):
        s, e = zip(*r["curves"][key], strict=True)
        a1.plot(s, e, "o-", color=color, ms=3, label=label)
    a1.axhline(r["float"], color="tab:blue", ls="--", lw=1, label=f"float {r['float']:.4f}")
    a1.axhline(r["ptq"], color="tab:red", ls="--", lw=1, label=f"PTQ {r['ptq']:.4f}")
    a1.axhline(
        r["qat_converted"],
        color="tab:green",
        ls="-.",
        lw=1.5,
        label=f"QAT converted {r['qat_converted']:.4f}",
    )
    seen = [e for key in ("float_finetuned", "qat") for _, e in r["curves"][key]] + [r["ptq"]]
    lo, hi = min(r["float"], *seen), max(seen)
    pad = 0.15 * max(hi - lo, 1e-3)
    a1.set_ylim(lo - pad, hi + pad)
    a1.set_xlabel("fine-tuning step")
    a1.set_title(f"2. PTQ vs QAT: {100 * r['recovered']:.0f}% of the PTQ gap recovered")
    a1.legend(fontsize=8)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else "CPU (times are not kernel speed)"
    )
    fig.suptitle(f"triton_qat demo: {r['config']}; backend {r['backend']} on {where}")
    fig.tight_layout()
    path = out / "qat_demo.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot: {path}")
    return path


def _cli() -> None:
    # TRITON_INTERPRET is read when triton_qat is imported; training through the interpreter is far
    # too slow, so restart without it (the kernel check still runs the interpreter)
    interp = os.environ.get("TRITON_INTERPRET") == "1" and not torch.cuda.is_available()
    if interp and not {"--interpret", "--check-worker"} & set(sys.argv):
        print(
            "TRITON_INTERPRET=1: restarting with the plain-torch backend for training (the kernel "
            "check runs the interpreter; --interpret to train through it)",
            flush=True,
        )
        env = {**os.environ, "TRITON_INTERPRET": "0"}
        os.execve(sys.executable, [sys.executable, "-m", "triton_qat.demo", *sys.argv[1:]], env)
    main()


if __name__ == "__main__":
    _cli()
