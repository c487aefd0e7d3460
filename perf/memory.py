"""Memory kept for backward at model scale: one Llama-style block (and a small stack of them).

    python perf/memory.py                      # CPU: saved-for-backward bytes, 1024 / 4096 tokens
    python perf/memory.py --tokens 128,256,1024 --layers 1   # one block: the ratio per token count
    python perf/memory.py --tokens 256 --layers 1 --compiled  # every model under torch.compile

For each set of linears (bf16 ``nn.Linear``; the plain-torch QAT reference, the ops torchao's QAT
composes; triton_qat 8da8w and 8da4w g32) it counts every tensor autograd keeps over one forward
(``torch.autograd.graph.saved_tensors_hooks``), each storage once, parameters excluded, and reports
the ratio to bf16 ``nn.Linear``. On a GPU it also records ``torch.cuda.max_memory_allocated`` of a
training step (on a CPU: the peak of the CPU allocator's allocations over the step, from the
profiler's memory events). Rows go to a long CSV (``perf/results/<device>/memory.csv``).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import triton_qat as tq
from triton_qat.autotune.cache import slug
from triton_qat.reference import prepare_reference

W4G32 = tq.QuantConfig(bits=4, granularity="per_group", group_size=32, symmetric=True)
VARIANTS = ("nn.Linear bf16", "torch ref 8da8w", "triton_qat 8da8w", "triton_qat 8da4w g32")


class LlamaBlock(nn.Module):
    """RMSNorm -> q/k/v (one shared input) -> causal attention -> o; RMSNorm -> SwiGLU gate/up
    (one shared input) -> down. Seven linears, as in Llama."""

    def __init__(self, d: int = 256, ffn: int = 672, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.RMSNorm(d), nn.RMSNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.gate, self.up = nn.Linear(d, ffn, bias=False), nn.Linear(d, ffn, bias=False)
        self.down = nn.Linear(ffn, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        h = self.norm1(x)
        q, k, v = (
            p(h).view(B, T, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v)
        )
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(B, T, d))
        h = self.norm2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


def make_model(variant: str, layers: int, device, dtype=torch.bfloat16) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(*(LlamaBlock() for _ in range(layers))).to(device=device, dtype=dtype)
    if variant == "torch ref 8da8w":
        return prepare_reference(model)
    if variant == "triton_qat 8da8w":
        return tq.prepare(model)
    if variant == "triton_qat 8da4w g32":
        return tq.prepare(model, weight=W4G32)
    return model


def saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of every tensor autograd keeps over one forward, each storage once, parameters out."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(seen.values())


def step_peak_bytes(model: nn.Module, x: torch.Tensor) -> float | None:
    """Peak memory of one forward + backward above what was allocated before: CUDA's allocator
    statistics on a GPU; on a CPU the profiler's allocation events (every allocation and free of
    the CPU allocator, in order), the same quantity without the CUDA caching allocator's
    rounding."""
    if x.device.type != "cuda":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            model(x).float().square().mean().backward()
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        live = peak = 0
        for e in sorted(events, key=lambda e: e.start_ns()):
            live += e.nbytes()
            peak = max(peak, live)
        return float(peak)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(x.device)
    base = torch.cuda.memory_allocated(x.device)
    model(x).float().square().mean().backward()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(x.device) - base


def measure(tokens: list[int], layers: list[int], device: torch.device,
            compiled: bool = False) -> list[dict]:  # fmt: skip
    """One row per (layers, tokens, variant); ``compiled``: every model (the bf16 baseline too)
    under ``torch.compile``, where a shared input's quantize is one op the compiler keeps once."""
    rows = []
    for n_layers in layers:
        for T in tokens:
            base = None
            for variant in VARIANTS:
                model = make_model(variant, n_layers, device)
                if compiled:
                    torch._dynamo.reset()
                    model = torch.compile(model)
                x = torch.randn(1, T, 256, device=device, dtype=torch.bfloat16, requires_grad=True)
                kept = saved_bytes(model, x)
                base = kept if base is None else base
                row = dict(variant=variant, mode="compiled" if compiled else "eager",
                           layers=n_layers, tokens=T, saved_mib=kept / 2**20,
                           vs_nn_linear=kept / base, backend=tq.backend(device), device=str(device))  # fmt: skip
                peak = step_peak_bytes(model, x)
                row["step_peak_mib"] = "" if peak is None else peak / 2**20
                rows.append(row)
    return rows


def positive_ints(text: str) -> list[int]:
    """Comma-separated positive ints (argparse type: ArgumentTypeError)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items or not all(t.isdecimal() and int(t) > 0 for t in items):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive ints, got {text!r}")
    return [int(t) for t in items]


def parse_device(text: str) -> torch.device:
    """cpu, cuda or cuda:N (argparse type: ArgumentTypeError); whether CUDA is there is checked
    in :func:`main`."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return device


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--tokens", type=positive_ints, default="1024,4096",
                   help="comma-separated token counts")  # fmt: skip
    p.add_argument("--layers", type=positive_ints, default="1,4",
                   help="comma-separated block counts")  # fmt: skip
    p.add_argument("--device", type=parse_device,
                   default="cuda" if torch.cuda.is_available() else "cpu")  # fmt: skip
    p.add_argument("--compiled", action="store_true", help="torch.compile every model")
    p.add_argument(
        "--out", default=None, help="CSV path (default perf/results/<device>/memory.csv)"
    )
    args = p.parse_args(argv)
    device = args.device
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            p.error(f"--device {device}: no CUDA device is available here (use --device cpu)")
        if device.index is not None and device.index >= count:
            p.error(f"--device {device}: only {count} CUDA device(s) here")
    rows = measure(args.tokens, args.layers, device, args.compiled)
    name = slug(torch.cuda.get_device_name(device)) if device.type == "cuda" else "cpu"
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / name / "memory.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(
        f"{'layers':>6} {'tokens':>6} {'variant':<22} {'saved MiB':>10} {'vs nn.Linear':>12} {'step peak MiB':>14}"
    )
    for r in rows:
        peak = f"{r['step_peak_mib']:.1f}" if r["step_peak_mib"] != "" else "not measured"
        print(f"{r['layers']:>6} {r['tokens']:>6} {r['variant']:<22} {r['saved_mib']:>10.2f} "
              f"{r['vs_nn_linear']:>11.3f}x {peak:>14}")  # fmt: skip
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
