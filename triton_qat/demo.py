"""The main job: QAT of a small decoder-only transformer LM, three ways, under torch.compile.

    python -m triton_qat.demo [--config tiny|small|medium] [--steps N] [--device cpu|cuda]

Trains the same model from the same initialization on the same batches (character-level, on the
text shipped in ``triton_qat/data/corpus.txt``) as (1) a float model, (2) QAT through triton_qat,
(3) QAT through the plain-torch reference of the same numerics. Prints a table (final train / eval
loss, eval loss after ``tq.convert`` to int8, time per step, activation memory kept for backward)
and writes a PNG of the loss curves. On a CPU the kernels run in Triton's interpreter
(TRITON_INTERPRET=1, set by ``make demo``), so the default there is a tiny model.

Several GPUs: ``torchrun --nproc_per_node 8 -m triton_qat.demo --config medium`` runs the same script
with DistributedDataParallel (NCCL on GPUs, gloo on CPU); each rank trains on its slice of every
batch and rank 0 prints.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import triton_qat as tq
from triton_qat.reference import prepare_reference

CORPUS = Path(__file__).parent / "data" / "corpus.txt"


@dataclass(frozen=True)
class ModelConfig:
    d_model: int
    n_layers: int
    n_heads: int
    seq_len: int
    batch: int
    steps: int
    lr: float


CONFIGS = {
    "tiny": ModelConfig(d_model=32, n_layers=1, n_heads=2, seq_len=32, batch=8, steps=40, lr=3e-3),
    "small": ModelConfig(
        d_model=256, n_layers=4, n_heads=4, seq_len=128, batch=32, steps=300, lr=1e-3
    ),
    "medium": ModelConfig(
        d_model=512, n_layers=8, n_heads=8, seq_len=256, batch=32, steps=1000, lr=6e-4
    ),
}


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


def load_corpus(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    text = CORPUS.read_text(encoding="utf-8")
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    data = torch.tensor([index[c] for c in text], dtype=torch.long, device=device)
    split = int(0.9 * len(data))
    return data[:split], data[split:], len(vocab)


def batches(data: torch.Tensor, cfg: ModelConfig, steps: int, seed: int):
    """The same sequence of (input, target) batches for every run."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - cfg.seq_len - 1, (cfg.batch,), generator=g)
        idx = torch.stack([data[s : s + cfg.seq_len + 1] for s in starts.tolist()])
        yield idx[:, :-1], idx[:, 1:]


def lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))


@torch.no_grad()
def eval_loss(model: nn.Module, data: torch.Tensor, cfg: ModelConfig) -> float:
    was_training = model.training
    model.eval()
    # the held-out text is short (10% of a ~5 KB corpus): slide windows with a stride of T/8 so
    # large --config sequence lengths still evaluate on many windows
    T = cfg.seq_len
    stride = max(1, T // 8)
    starts = range(0, max(1, len(data) - T - 1), stride)
    x = torch.stack([data[s : s + T] for s in starts])
    y = torch.stack([data[s + 1 : s + T + 1] for s in starts])
    loss = lm_loss(model, x, y).item()
    model.train(was_training)
    return loss


def saved_activation_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes autograd keeps for backward over one eager forward (all layers, not only linears)."""
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lm_loss(model, x, y)
    return total


def not_head(mod: nn.Module, fqn: str) -> bool:
    """Keep the LM head in full precision (common QAT practice)."""
    return fqn != "head"


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


def train(name, model, train_data, eval_data, cfg, args, steps, dtype):
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    step_fn = torch.compile(model, fullgraph=True) if not args.no_compile else model
    if args.world > 1:  # compile first, then DDP: its all-reduce hooks run outside the graph
        ids = [args.local_rank] if args.device == "cuda" else None
        step_fn = nn.parallel.DistributedDataParallel(step_fn, device_ids=ids)
    losses, times = [], []
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    bar = tqdm(
        batches(train_data, cfg, steps, args.seed),
        total=steps,
        desc=f"{name:>16}",
        unit="step",
        dynamic_ncols=True,
        mininterval=1.0,
        disable=args.rank != 0,
    )
    for x, y in bar:
        if args.world > 1:  # every rank draws the same batch and trains on its slice
            x, y = x.chunk(args.world)[args.rank], y.chunk(args.world)[args.rank]
        sync()
        t0 = time.perf_counter()
        loss = lm_loss(step_fn, x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    warm = times[min(3, len(times) - 1) :]  # the first steps include compilation
    x, y = next(batches(train_data, cfg, 1, args.seed + 1))
    if args.world > 1:  # what one rank keeps
        x, y = x.chunk(args.world)[args.rank], y.chunk(args.world)[args.rank]
    return {
        "losses": losses,
        "train": statistics.fmean(losses[-max(1, steps // 10) :]),
        "eval": eval_loss(model, eval_data, cfg),
        "ms_per_step": 1e3 * statistics.median(warm),
        "saved_mb": saved_activation_bytes(model, x, y) / 2**20,
        "dtype": dtype,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--config",
        choices=list(CONFIGS),
        default=None,
        help="model size (default: tiny on CPU, small on CUDA)",
    )
    p.add_argument("--steps", type=int, default=None, help="training steps per run")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="demo_out", help="folder for the loss-curve PNG")
    p.add_argument("--no-compile", action="store_true", help="run eagerly (debugging)")
    args = p.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.rank, args.world, args.local_rank = setup_distributed(args.device)
    backend = tq.backend(args.device)
    if backend == "torch":
        print(
            "note: TRITON_INTERPRET is not 1, so this CPU run uses triton_qat's plain-torch "
            "backend (bit-identical fake quantization), not the Triton kernels (make demo sets it)"
        )
    cfg = CONFIGS[args.config or ("small" if args.device == "cuda" else "tiny")]
    steps = args.steps if args.steps is not None else cfg.steps
    if steps < 1:
        p.error("--steps: expected a positive int")
    if cfg.batch % args.world:
        p.error(f"batch {cfg.batch} of --config does not split over {args.world} processes")
    device = (
        torch.device(args.device, args.local_rank) if args.device == "cuda" else torch.device("cpu")
    )
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    train_data, eval_data, vocab = load_corpus(device)
    torch.manual_seed(args.seed)
    base = TinyGPT(vocab, cfg).to(device=device, dtype=dtype)
    say = print if args.rank == 0 else (lambda *a, **k: None)
    say(
        f"triton_qat demo: {sum(p.numel() for p in base.parameters()) / 1e6:.2f}M parameters, "
        f"config={args.config or ('small' if device.type == 'cuda' else 'tiny')} {cfg}, "
        f"{steps} steps, {device.type} {dtype} x{args.world} process(es), torch {torch.__version__}"
        f", triton_qat backend: {backend}"
    )
    if backend != "triton":
        say("ms/step below times the CPU, not GPU kernels: it says nothing about GPU speed")

    runs = {
        "float": copy.deepcopy(base),
        "QAT triton_qat": tq.prepare(copy.deepcopy(base), filter_fn=not_head),
        "QAT torch ref": prepare_reference(copy.deepcopy(base), filter_fn=not_head),
    }
    results = {}
    for name, model in runs.items():
        results[name] = train(name, model, train_data, eval_data, cfg, args, steps, dtype)
    # int8 inference: convert the QAT model; the float model gets post-training quantization
    converted = tq.convert(runs["QAT triton_qat"])
    results["QAT triton_qat"]["int8_eval"] = eval_loss(converted, eval_data, cfg)
    ptq = tq.convert(tq.prepare(copy.deepcopy(runs["float"]), filter_fn=not_head))
    results["float"]["int8_eval"] = eval_loss(ptq, eval_data, cfg)
    if args.rank == 0:
        print_table(results)
        size = tq.weight_nbytes(converted)
        print(f"linear-layer weights after convert: {size['stored'] / 1024:.1f} KiB "
              f"(as bf16 nn.Linear: {size['bf16'] / 1024:.1f} KiB; LM head kept in float)")  # fmt: skip
        plot(results, Path(args.out), device, cfg)
    if args.world > 1:
        dist.destroy_process_group()
    return results


def print_table(results: dict) -> None:
    head = f"{'run':<16} {'train loss':>10} {'eval loss':>10} {'int8 eval':>10} {'ms/step':>9} {'saved MB':>9}"
    print("\n" + head + "\n" + "-" * len(head))
    for name, r in results.items():
        int8 = f"{r['int8_eval']:.4f}" if "int8_eval" in r else "-"
        print(
            f"{name:<16} {r['train']:>10.4f} {r['eval']:>10.4f} {int8:>10} "
            f"{r['ms_per_step']:>9.1f} {r['saved_mb']:>9.2f}"
        )
    print(
        "int8 eval: eval loss after tq.convert (float row: post-training quantization of the "
        "float model). saved MB: what autograd keeps for backward in one step."
    )


def plot(results: dict, out: Path, device: torch.device, cfg: ModelConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in results.items():
        ax.plot(range(1, len(r["losses"]) + 1), r["losses"], label=f"{name} (eval {r['eval']:.4f})")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (cross-entropy, nats)")
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({tq.backend(device)})"
    ax.set_title(f"triton_qat demo: d={cfg.d_model}, layers={cfg.n_layers} on {where}")
    ax.set_ylim(top=min(ax.get_ylim()[1], math.log(100)))
    ax.legend()
    fig.tight_layout()
    path = out / "loss_curves.png"
    fig.savefig(path, dpi=120)
    print(f"loss curves: {path}")


if __name__ == "__main__":
    main()
