"""``make gpu-report``'s training-step phase: perf/train_step.py's measurement, within the phase.

A Llama-style decoder's training step (``Sizes.train``: Llama-3-8B layer dimensions, 4 blocks,
4 x 2048 tokens on a GPU; a tiny model for the dry run) for bf16 / torchao QAT / triton_qat,
each eager and compiled per block, in :func:`train_step.items`' priority order, timed unpoisoned.
Rows go to report.csv as each item finishes (``phase=train_step``; ``metric`` tokens_per_s,
step_ms, peak_mem_mb, compile_s, loss); an item the phase's deadline cannot hold, and torchao's
items when torchao is missing, are "not measured" rows, never a failed run. :func:`summary_lines`
and :func:`ratio` read the rows back for the summary and its targets; the report draws
``train_step.png`` from them (perf/plot.py ``plot_train_step``).
"""

from __future__ import annotations

import torch
import train_step
from gpu_report_run import Run, Sizes, poisoned, rel


def phase_train_step(run: Run, deadline: float, sizes: Sizes) -> bool:
    """Every item that fits before ``deadline``; returns whether any was skipped for time."""
    s = sizes.train
    run.say(f"train_step: {s.dims.describe()}, {rel(str(s.dtype))}, {s.warmup} warm-up + "
            f"{s.steps} timed steps per item, compiled per block")  # fmt: skip
    if run.device.type == "cuda":
        torch.cuda.empty_cache()  # what the benchmark phase's caching allocator still holds
    with poisoned(False):  # timings run unpoisoned (the fill would be timed with the kernels)
        return train_step.run_items(s, run.device, lambda r: run.row(**r), deadline, run.say)


def train_rows(run: Run) -> list[dict]:
    """The phase's rows (measured, skipped or failed), without its bookkeeping row."""
    return [r for r in run.rows if r.get("phase") == train_step.PHASE and r.get("item") != "phase"]


def ratio(rows: list[dict], metric: str, ours: tuple[str, str], base: tuple[str, str]):
    """``metric`` of (provider, mode) ``ours`` over ``base``'s; None unless both were measured."""
    got = train_step.values(rows, metric)
    num, den = got.get(ours), got.get(base)
    return num / den if num is not None and den else None


def summary_lines(rows: list[dict], settings: train_step.Settings) -> list[str]:
    """A table of every provider x mode: tokens/s, step ms, peak MiB, compile s, loss."""
    measured = [r for r in rows if r.get("status") == "done" and r.get("config") != "none"]
    config = measured[0]["config"] if measured else train_step.config_label("triton_qat", "int8")
    out = [f"## Training step ({settings.dims.describe()}; {config}; median of "
           f"{settings.steps} queued steps)",
           "| provider | mode | tokens/s | step ms | peak MiB | compile s | loss |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    cols = [("tokens_per_s", "{:,.0f}"), ("step_ms", "{:.2f}"), ("peak_mem_mb", "{:.0f}"),
            ("compile_s", "{:.1f}"), ("loss", "{:.4f}")]  # fmt: skip
    got = {metric: train_step.values(rows, metric) for metric, _ in cols}
    for provider in train_step.PROVIDERS:
        for mode in train_step.MODES:
            if not any(r.get("provider") == provider and r.get("mode") == mode for r in rows):
                continue
            cells = [fmt.format(got[m][(provider, mode)]) if (provider, mode) in got[m]
                     else train_step.NOT_MEASURED for m, fmt in cols]  # fmt: skip
            out.append(f"| {provider} | {mode} | {' | '.join(cells)} |")
    why = sorted({r["detail"] for r in rows if r.get("status") != "done" and r.get("detail")})
    out += [f"- {w}" for w in why[:4]]  # "not measured: why" / "failed: why"
    return out if len(out) > 3 else out[:1] + [train_step.NOT_MEASURED]
