"""Side-by-side benchmark of a QAT linear layer, one process, one long-format CSV.

    python perf/bench.py                 # full sweep on the GPU (bf16)
    python perf/bench.py --quick         # tiny sweep that also runs on CPU (Triton interpreter)

Providers (kernel "qat_linear"): ``F.linear`` (cuBLAS bf16, no quantization), ``torch ref eager``
and ``torch ref compiled`` (the plain-torch fake-quant reference, the ops torchao's QAT runs),
``triton_qat eager`` and ``triton_qat compiled``. Modes: fwd (training forward), bwd, fwd+bwd.
Every row names the ``backend`` that ran (``triton``, ``triton-interpreter``, or ``torch`` for the
plain-torch CPU path, whose provider names then say so: it is never labelled as the kernels).

Kernel micro-benchmarks, each kernel alone against its own ceiling on the same operands, from the
registry of kernel problems the tuner uses (``triton_qat.autotune.problems``): activation and weight
quantize vs a device-to-device copy, the int8 forward GEMM vs ``torch._int_mm``, dgrad and wgrad vs
``torch.mm`` of the same shape (rows ``kernel`` = quantize_x, quantize_w, fwd, dgrad, wgrad, with a
``fraction_of_ceiling`` metric).

Timing: medians with p20/p80 over repetitions after warm-up, CUDA events on the GPU (perf_counter on
CPU), only the measured region inside the events (forward runs untimed before a timed backward), and
inputs rotated over several buffers so caches do not flatter. Results: ``perf/results/<gpu>/bench.csv``
with GPU name, torch/triton versions and the git commit in every row (``--quick`` writes to
``perf/results/quick/``, which git ignores).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
import triton
from torch import nn

import triton_qat as tq
from triton_qat.autotune.cache import slug
from triton_qat.autotune.problems import LinearShape, problems
from triton_qat.kernels.gemm_int8 import MAX_IN_FEATURES
from triton_qat.reference import ReferenceLinear

FIELDS = ["kernel", "provider", "backend", "mode", "metric", "M", "K", "N", "dtype", "value",
          "p20", "p80", "gpu", "torch", "triton", "commit", "utc"]  # fmt: skip
# make gpu-report's report.csv (perf/gpu_report_run.py) and perf/train_step.py's CSV: one format
REPORT_FIELDS = ["phase", "item", "status", "detail", *FIELDS, "config"]
# (quantize_f8 and f8fwd only where the float8 layer's fp8 GEMM runs: 16-bit, fp8 tensor cores)
KERNEL_ROWS = ("quantize_x", "quantize_w", "fwd", "dequantize_x", "dgrad", "wgrad",
               "quantize_f8", "f8fwd", "quantize_mxfp8", "quantize_mxfp4",
               "quantize_nvfp4")  # fmt: skip
_QUANTIZE_KINDS = ("quantize", "dequantize", "quantize_f8", "quantize_mxfp8", "quantize_mxfp4",
                   "quantize_nvfp4")  # GB/s rows (the rest: TFLOP/s)  # fmt: skip
PROVIDERS = [
    "F.linear",
    "torch ref eager",
    "torch ref compiled",
    "triton_qat eager",
    "triton_qat compiled",
    "triton_qat i4g32 compiled",  # int4 per-group weights, to compare with per-channel int8
    "triton_qat i4g128 compiled",
    "triton_qat float8 eager",  # e4m3 W8A8 (Float8Config per row): the fp8 GEMM where it runs
    "triton_qat float8 compiled",
]
MODES = ["fwd", "bwd", "fwd+bwd"]
FLOPS_PER_MODE = {"fwd": 2, "bwd": 4, "fwd+bwd": 6}  # x M*N*K
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    interp = " (Triton interpreter)" if os.environ.get("TRITON_INTERPRET") == "1" else ""
    return f"CPU {platform.processor() or platform.machine()}{interp}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).parent, timeout=10)  # fmt: skip
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# GPU cycles of work queued before each timed kernel call with ``hide_host`` (about 1 ms at
# H100 / H200 clocks): the host queues the call while the GPU is busy, so the events time the
# kernel alone, as triton.testing.do_bench's cache flush does.
BUSY_CYCLES = 2_000_000


class Timer:
    """Times ``timed(state)`` after an untimed ``setup(i)``; returns per-rep milliseconds.

    On CUDA each rep is one synchronized call between two events: the host's time to queue it
    counts (what a caller waiting on one layer sees). ``hide_host=True`` keeps the GPU busy while
    the host queues the call (device time only: kernel rows against their torch ceilings, whose
    launch costs differ by ~100 us of Python)."""

    def __init__(
        self, device: torch.device, warmup: int, reps: int, hide_host: bool = False
    ) -> None:
        self.device, self.warmup, self.reps = device, warmup, reps
        self.hide_host = hide_host

    def __call__(
        self, setup: Callable[[int], object], timed: Callable[[object], object]
    ) -> list[float]:
        cuda = self.device.type == "cuda"
        out = []
        for i in range(self.warmup + self.reps):
            state = setup(i)
            if cuda:
                torch.cuda.synchronize()
                start, end = (
                    torch.cuda.Event(enable_timing=True),
                    torch.cuda.Event(enable_timing=True),
                )
                if self.hide_host:
                    torch.cuda._sleep(BUSY_CYCLES)
                start.record()
                timed(state)
                end.record()
                torch.cuda.synchronize()
                ms = start.elapsed_time(end)
            else:
                t0 = time.perf_counter()
                timed(state)
                ms = 1e3 * (time.perf_counter() - t0)
            if i >= self.warmup:
                out.append(ms)
        return out


def queued_ms(
    setup: Callable[[int], object], timed: Callable[[object], object], reps: int, device
) -> tuple[float, float]:
    """(host, pipelined) milliseconds per call over ``reps`` calls queued back to back, as a
    training loop runs them (each after its untimed-in-spirit ``setup``, which only resets grads
    or runs a forward). ``host``: the host's time to queue a call. ``pipelined``: the device's
    time per call when the host is never what it waits for: a second pass queues the calls
    behind a GPU sleep longer than the host needs to queue them all, between two events (on CPU:
    the host time). host > pipelined: the host sets the pace of a training loop; the synchronized
    single-call time (:class:`Timer`) adds the host's queuing before the first kernel to the
    device's work."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(reps):
        timed(setup(i))
    host = 1e3 * (time.perf_counter() - t0) / reps
    if not cuda:
        return host, host
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    # BUSY_CYCLES is about 1 ms: sleep 1.5x the queuing time measured above, and 1 ms more
    torch.cuda._sleep(int(BUSY_CYCLES * (1.5 * host * reps + 1.0)))
    start.record()
    for i in range(reps):
        timed(setup(i))
    end.record()
    torch.cuda.synchronize()
    return host, start.elapsed_time(end) / reps


def quantiles(ms: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(ms, n=10, method="inclusive") if len(ms) > 1 else [ms[0]] * 9
    return statistics.median(ms), q[1], q[7]  # median, p20, p80


def make_layer(provider: str, K: int, N: int, device, dtype) -> nn.Module:
    torch.manual_seed(0)
    if provider.startswith("F.linear"):
        layer = nn.Linear(K, N, device=device, dtype=dtype)
    elif provider.startswith("torch ref"):
        layer = ReferenceLinear(K, N, device=device, dtype=dtype)
    elif " float8" in provider:
        act, weight = tq.Float8Config(hp_value_lb=1e-12), tq.Float8Config()
        layer = tq.Linear(K, N, device=device, dtype=dtype, activation=act, weight=weight)
    elif " i4g" in provider:
        group = int(provider.split(" i4g")[1].split()[0])
        weight = tq.QuantConfig(bits=4, granularity="per_group", group_size=group, symmetric=True)
        layer = tq.Linear(K, N, device=device, dtype=dtype, weight=weight)
    else:
        layer = tq.Linear(K, N, device=device, dtype=dtype)
    if "compiled" not in provider:
        return layer
    # a fresh Dynamo state per (provider, shape): every tq.Linear shares one forward, and a sweep
    # would otherwise exhaust the recompile limit and silently fall back to eager
    torch._dynamo.reset()
    # "cudagraphs": replayed CUDA graphs, no host work per kernel (inputs copied into the graph's)
    mode = "reduce-overhead" if provider.endswith("cudagraphs") else None
    return torch.compile(layer, fullgraph=True, mode=mode)


def saved_bytes(layer: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for backward over one forward of ``layer`` (parameters excluded)."""
    params = {p.data_ptr() for p in layer.parameters()}
    total = 0

    def pack(t):
        nonlocal total
        if t.data_ptr() not in params:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    return total


def saved_act_bytes_per_elem(layer: nn.Module, x: torch.Tensor, extra_tokens: int = 64) -> float:
    """Bytes kept per activation element: the growth of :func:`saved_bytes` with 64 more tokens
    (weight-sized state does not grow with M, whatever the shapes)."""
    M, K = x.shape
    more = torch.randn(M + extra_tokens, K, device=x.device, dtype=x.dtype, requires_grad=True)
    return (saved_bytes(layer, more) - saved_bytes(layer, x)) / (extra_tokens * K)


def provider_backend(provider: str, device: torch.device) -> tuple[str, str]:
    """(label, backend) of a provider: triton_qat's backend on this device, and a label that
    says so when that is the plain-torch path rather than the kernels."""
    if not provider.startswith("triton_qat"):
        return provider, "torch"
    backend = tq.backend(device)
    return (f"{provider} [torch backend]" if backend == "torch" else provider), backend


def bench_linear(provider, M, K, N, device, dtype, modes, timer, n_rot) -> list[dict]:
    """One provider at one shape (every timed forward quantizes its input)."""
    label, backend = provider_backend(provider, device)
    layer = make_layer(provider, K, N, device, dtype)
    xs = [torch.randn(M, K, device=device, dtype=dtype, requires_grad=True) for _ in range(n_rot)]
    dys = [torch.randn(M, N, device=device, dtype=dtype) for _ in range(n_rot)]
    params = list(layer.parameters())
    rows = []

    def fresh(i):
        for p in params:
            p.grad = None
        x = xs[i % n_rot]
        x.grad = None
        return x, dys[i % n_rot]

    def fwd_then(i):
        x, dy = fresh(i)
        return layer(x), dy

    timed = {
        "fwd": (fresh, lambda s: layer(s[0])),
        "bwd": (fwd_then, lambda s: s[0].backward(s[1])),
        "fwd+bwd": (fresh, lambda s: layer(s[0]).backward(s[1])),
    }
    for mode in modes:  # compile (and recompile) every graph before any timing starts
        setup, fn = timed[mode]
        fn(setup(0))
    for mode in modes:
        setup, fn = timed[mode]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        ms = timer(setup, fn)
        if mode != "bwd":  # bwd's setup runs a forward: nothing to queue back to back
            host, pipelined = queued_ms(setup, fn, timer.reps, device)
            rows.append(dict(metric="host_ms", value=host, mode=mode))
            rows.append(dict(metric="pipelined_ms", value=pipelined, mode=mode))
        med, p20, p80 = quantiles(ms)
        flops = FLOPS_PER_MODE[mode] * M * N * K
        rows.append(dict(metric="ms", value=med, p20=p20, p80=p80, mode=mode))
        rows.append(dict(metric="tflops", value=flops / med / 1e9, p20=flops / p80 / 1e9,
                         p80=flops / p20 / 1e9, mode=mode))  # fmt: skip
        if device.type == "cuda":
            peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
            rows.append(dict(metric="peak_mem_mb", value=peak, mode=mode))
    rows.append(dict(metric="saved_bytes", value=saved_bytes(layer, xs[0]), mode="fwd"))
    per_elem = saved_act_bytes_per_elem(layer, xs[0])
    rows.append(dict(metric="saved_act_bytes_per_elem", value=per_elem, mode="fwd"))
    for r in rows:
        r.update(kernel="qat_linear", provider=label, backend=backend, M=M, K=K, N=N)
    return rows


def bench_kernels(M, K, N, device, dtype, timer, n_rot) -> list[dict]:
    """Each kernel of the linear alone (at its looked-up config) against its ceiling: the torch op
    doing the same work unquantized (copy, ``torch._int_mm``, ``torch.mm``), both in device time
    (the host queues each call while the GPU is busy)."""
    del n_rot  # the registry's operands are fixed; each kernel is timed on the same ones
    backend = tq.backend(device)
    if backend == "torch":
        print("  kernel rows skipped: no kernels run here (plain-torch backend)")
        return []
    registry = problems(LinearShape(M, K, N, dtype), device)
    timer = Timer(timer.device, timer.warmup, timer.reps, hide_host=True)  # device time only
    rows = []
    for name in (k for k in KERNEL_ROWS if k in registry):
        prob = registry[name]
        unit = "gb_per_s" if prob.kernel in _QUANTIZE_KINDS else "tflops"
        medians = {}
        for provider, fn in (("triton_qat", lambda p=prob: p.launch(p.config)),
                             (prob.ceiling_name, prob.ceiling)):  # fmt: skip
            try:
                ms = timer(lambda i: None, lambda _s, fn=fn: fn())
            except RuntimeError as e:  # e.g. shapes torch._int_mm does not take on this device
                print(f"  {name} {provider}: skipped ({str(e).splitlines()[0][:80]})")
                continue
            med, p20, p80 = quantiles(ms)
            medians[provider] = med
            work = prob.work if provider == "triton_qat" else prob.ceiling_work
            be = backend if provider == "triton_qat" else "torch"
            rows.append(dict(metric="ms", value=med, p20=p20, p80=p80, provider=provider,
                             backend=be))  # fmt: skip
            rows.append(dict(metric=unit, value=work / med / 1e9, p20=work / p80 / 1e9,
                             p80=work / p20 / 1e9, provider=provider, backend=be))  # fmt: skip
        if len(medians) == 2:
            ratio = medians[prob.ceiling_name] / medians["triton_qat"]
            rows.append(dict(metric="fraction_of_ceiling", value=ratio, provider="triton_qat",
                             backend=backend))  # fmt: skip
        for r in rows:
            if "kernel" not in r:  # this kernel's rows (earlier kernels' rows are labelled)
                r.update(kernel=name, mode="bwd" if name in ("dgrad", "wgrad", "dequantize_x")
                         else "fwd", M=M, K=K, N=N)  # fmt: skip
    return rows


def add_speedups(rows: list[dict]) -> list[dict]:
    base = {(r["mode"], r["M"], r["K"], r["N"]): r["value"] for r in rows
            if r["kernel"] == "qat_linear" and r["provider"] == "F.linear" and r["metric"] == "ms"}  # fmt: skip
    extra = []
    for r in rows:
        key = (r["mode"], r["M"], r["K"], r["N"])
        if r["kernel"] == "qat_linear" and r["metric"] == "ms" and key in base:
            extra.append({**r, "metric": "speedup_vs_F.linear", "value": base[key] / r["value"],
                          "p20": base[key] / r["p80"], "p80": base[key] / r["p20"]})  # fmt: skip
    return rows + extra


def parse_pairs(text: str) -> list[tuple[int, int]]:
    """``KxN[,KxN...]`` (or ``K->N``) of positive ints (argparse type: ArgumentTypeError)."""
    pairs = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        k, _, n = item.partition("->") if "->" in item else item.lower().partition("x")
        if not (k.strip().isdecimal() and n.strip().isdecimal() and int(k) > 0 and int(n) > 0):
            raise argparse.ArgumentTypeError(
                f"expected KxN pairs of positive ints (e.g. 4096x4096), got {item!r}"
            )
        pairs.append((int(k), int(n)))
    if not pairs:
        raise argparse.ArgumentTypeError("expected at least one KxN pair")
    return pairs


def positive_ints(text: str) -> list[int]:
    """Comma-separated positive ints (argparse type: ArgumentTypeError)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items or not all(t.isdecimal() and int(t) > 0 for t in items):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive ints, got {text!r}")
    return [int(t) for t in items]


def positive_int(text: str) -> int:
    """One positive int (argparse type: ArgumentTypeError)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {value}")
    return value


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="tiny sweep (CPU-friendly)")
    p.add_argument("--tokens", type=positive_ints, default=None, help="comma-separated M values")
    p.add_argument("--features", type=parse_pairs, default=None,
                   help="comma-separated KxN pairs, e.g. 4096x4096")  # fmt: skip
    p.add_argument("--dtype", choices=list(DTYPES), default=None)
    p.add_argument("--providers", default=",".join(PROVIDERS))
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--reps", type=positive_int, default=None)
    p.add_argument("--out", default=None, help="CSV path (default perf/results/<gpu>/bench.csv)")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.quick:
        tokens, pairs, reps, warmup = [40], [(64, 40)], 3, 1  # M == N on purpose
    else:
        tokens = [512, 1024, 2048, 4096, 8192, 16384]
        pairs, reps, warmup = [(4096, 4096), (4096, 14336), (14336, 4096)], 50, 10
    tokens = args.tokens or tokens
    pairs = args.features or pairs
    reps = args.reps or reps
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    providers = [s for s in args.providers.split(",") if s]
    modes = [s for s in args.modes.split(",") if s]
    for name, given, allowed in (("--providers", providers, PROVIDERS), ("--modes", modes, MODES)):
        if not given or any(g not in allowed for g in given):
            p.error(f"{name}: expected a subset of {allowed}, got {given}")
    # every triton_qat layer, and the kernel rows where kernels run, take K <= MAX_IN_FEATURES
    if any(s.startswith("triton_qat") for s in providers) or tq.backend(device) != "torch":
        for K, N in pairs:
            if K > MAX_IN_FEATURES:
                p.error(f"--features {K}x{N}: in_features K at most {MAX_IN_FEATURES} (the int8 "
                        f"GEMM's int32 accumulator) for triton_qat, got {K}")  # fmt: skip
    gpu = device_label(device)
    folder = "quick" if args.quick else slug(gpu)  # quick runs are rehearsals: git ignores them
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / folder / "bench.csv"
    timer = Timer(device, warmup, reps)
    n_rot = 3  # rotated input buffers
    rows = []
    for K, N in pairs:
        for M in tokens:
            print(f"M={M} K={K} N={N} {dtype} on {gpu}")
            for provider in providers:
                if " i4g" in provider and K % int(provider.split(" i4g")[1].split()[0]):
                    continue  # the group size does not divide K
                rows += bench_linear(provider, M, K, N, device, dtype, modes, timer, n_rot)
            rows += bench_kernels(M, K, N, device, dtype, timer, n_rot)
    rows = add_speedups(rows)
    meta = dict(dtype=str(dtype).replace("torch.", ""), gpu=gpu, torch=torch.__version__,
                triton=triton.__version__, commit=git_commit(),
                utc=datetime.now(timezone.utc).isoformat(timespec="seconds"))  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({**{"p20": "", "p80": ""}, **r, **meta})
    print_summary(rows)
    print(f"wrote {len(rows)} rows to {out}")
    return out


def print_summary(rows: list[dict]) -> None:
    """Speedups vs F.linear, then each kernel's fraction of its ceiling (last: what a reader of
    a long log sees)."""
    width = max([len(r["provider"]) for r in rows] + [8])
    speedups = [r for r in rows if r["metric"] == "speedup_vs_F.linear"]
    print(f"\n{'M':>6} {'K':>6} {'N':>6} {'mode':<8} {'provider':<{width}} {'vs F.linear':>12}")
    for r in speedups:
        print(f"{r['M']:>6} {r['K']:>6} {r['N']:>6} {r['mode']:<8} {r['provider']:<{width}} "
              f"{r['value']:>11.3f}x")  # fmt: skip
    fractions = [r for r in rows if r["metric"] == "fraction_of_ceiling"]
    if fractions:
        print(f"\n{'M':>6} {'K':>6} {'N':>6} {'kernel':<11} {'of its ceiling':>15}")
        for r in fractions:
            print(f"{r['M']:>6} {r['K']:>6} {r['N']:>6} {r['kernel']:<11} {r['value']:>14.1%}")


if __name__ == "__main__":
    main(sys.argv[1:])
