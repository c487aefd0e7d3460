"""The rows of perf/train_step.py read back: the providers and modes it measures, the values of a
metric, and each provider's value relative to bf16's (perf/plot.py draws them, the gpu-report
summary prints the headline). Imports nothing of the measurement, so readers need no torch."""

from __future__ import annotations

import math

PHASE = "train_step"
PROVIDERS = ("bf16", "torchao", "triton_qat")
MODES = ("eager", "compiled")
NOT_MEASURED = "not measured"


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def values(
    rows: list[dict], metric: str, config: str | None = None
) -> dict[tuple[str, str], float]:
    """{(provider, mode): value} of measured ``metric`` rows (bf16's under every config; others'
    under ``config``, default: the first quantized config present)."""
    mine = [r for r in rows if r.get("phase") == PHASE and r.get("metric") == metric
            and r.get("status") == "done" and _num(r.get("value")) is not None]  # fmt: skip
    if config is None:
        configs = [r["config"] for r in mine if r.get("config") not in ("none", None)]
        config = configs[0] if configs else None
    return {(r["provider"], r["mode"]): _num(r["value"]) for r in mine
            if r.get("config") in ("none", config)}  # fmt: skip


def relative_to_bf16(rows: list[dict], metric: str, config: str | None = None) -> dict:
    """{(provider, mode): value / bf16's value in the same mode} where both were measured."""
    got = values(rows, metric, config)
    return {(p, m): v / got[("bf16", m)] for (p, m), v in got.items()
            if got.get(("bf16", m))}  # fmt: skip


def headline(rows: list[dict]) -> str:
    """One line: triton_qat's tokens/s against bf16 and torchao, per mode, or not measured."""
    tps = values(rows, "tokens_per_s")
    parts = []
    for mode in MODES:
        ours = tps.get(("triton_qat", mode))
        if ours is None:
            parts.append(f"{mode}: {NOT_MEASURED}")
            continue
        vs = [f"{ours / tps[(p, mode)]:.2f}x {p}" for p in ("bf16", "torchao")
              if tps.get((p, mode))]  # fmt: skip
        parts.append(f"{mode} {ours:,.0f} tokens/s" + (f" ({', '.join(vs)})" if vs else ""))
    return "training step, triton_qat: " + "; ".join(parts)
