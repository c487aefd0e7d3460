"""``make gpu-report``'s benchmark phase: perf/bench.py's layer and kernel benchmarks.

With the tuned configs, in priority order (:func:`bench_plan`): the headline shape's kernels
(each against its ceiling op) and every provider of the layer, then the other token counts and
(K, N) pairs; each item's rows go to report.csv as it finishes. :func:`bench_rows` reads the
measured rows back for the summary and the plots.
"""

from __future__ import annotations

import time

import bench
import torch
from gpu_report_run import Run, Sizes, poisoned

from triton_qat import autotune

FULL_PROVIDERS = ["F.linear", "triton_qat eager", "torch ref eager", "triton_qat compiled",
                  "torch ref compiled", "triton_qat i4g128 compiled",
                  "triton_qat float8 eager", "triton_qat float8 compiled",
                  "triton_qat compiled cudagraphs"]  # fmt: skip
CORE_PROVIDERS = ["F.linear", "triton_qat eager", "triton_qat compiled"]
MODES = ["fwd", "fwd+bwd"]


def bench_plan(sizes: Sizes) -> list[tuple]:
    """Items in priority order: the headline shape (kernels, every provider), the other token
    counts at the headline pair (F.linear and triton_qat), the other pairs at the headline token
    count, then the rest."""
    M0, (K0, N0) = sizes.head_tokens, sizes.pairs[0]
    others = [m for m in sizes.tokens if m != M0]
    rest = [p for p in FULL_PROVIDERS if p not in CORE_PROVIDERS]
    items: list[tuple] = [("kernels", None, M0, K0, N0)]
    items += [("linear", p, M0, K0, N0) for p in FULL_PROVIDERS]
    items += [("linear", p, m, K0, N0) for m in others for p in CORE_PROVIDERS]
    for K, N in sizes.pairs[1:]:
        items.append(("kernels", None, M0, K, N))
        items += [("linear", p, M0, K, N) for p in FULL_PROVIDERS]
    items += [("linear", p, m, K0, N0) for m in others for p in rest]
    items += [("linear", p, m, K, N) for K, N in sizes.pairs[1:] for m in others
              for p in FULL_PROVIDERS]  # fmt: skip
    return [it for it in items if not (it[1] and " i4g" in it[1] and it[3] % 128)]


def phase_benchmark(run: Run, deadline: float, sizes: Sizes) -> bool:
    timer = bench.Timer(run.device, sizes.warmup, sizes.reps)
    dtype = sizes.bench_dtype
    autotune.get_cache(run.device).reload()  # shipped + private cache: the tuned configs
    stopped = False
    with poisoned(False):
        for kind, provider, M, K, N in bench_plan(sizes):
            label = f"{kind} {provider or ''} {M}x{K}->{N}".replace("  ", " ")
            if time.monotonic() > deadline:
                stopped = True
                run.row(phase="benchmark", item=label, status="skipped",
                        detail="skipped: phase time limit", provider=provider or "", M=M, K=K,
                        N=N)  # fmt: skip
                continue
            t0 = time.monotonic()
            try:
                if kind == "kernels":
                    rows = bench.bench_kernels(M, K, N, run.device, dtype, timer, 3)
                else:
                    rows = bench.bench_linear(provider, M, K, N, run.device, dtype, MODES, timer, 3)
            except Exception as e:  # noqa: BLE001 - recorded, the next item runs
                msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
                run.row(phase="benchmark", item=label, status="fail", detail=msg,
                        provider=provider or "", M=M, K=K, N=N)  # fmt: skip
                run.say(f"benchmark {label}: FAILED {msg}")
                if run.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            for r in rows:
                run.row(phase="benchmark", item=label, status="done", dtype=dtype, **r)
            run.say(f"benchmark {label}: {_bench_brief(rows)} ({time.monotonic() - t0:.1f} s)")
    return stopped


def _bench_brief(rows: list[dict]) -> str:
    parts = []
    for r in rows:
        if r["metric"] == "ms" and r["kernel"] == "qat_linear":
            parts.append(f"{r['mode']} {r['value']:.3f} ms")
        elif r["metric"] == "fraction_of_ceiling":
            parts.append(f"{r['kernel']} {r['value']:.0%} of ceiling")
        elif r["metric"] == "peak_mem_mb" and r["mode"] == "fwd+bwd":
            parts.append(f"peak {r['value']:.0f} MiB")
    return ", ".join(parts) or "no rows"


def bench_rows(run: Run) -> list[dict]:
    """The measured benchmark rows (perf/bench.py's), without the phase's own bookkeeping row."""
    return [r for r in run.rows if r.get("phase") == "benchmark" and r.get("status") == "done"
            and r.get("item") != "phase" and r.get("kernel")]  # fmt: skip
