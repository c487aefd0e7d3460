"""Draw PNGs from perf/bench.py's CSV.

    python perf/plot.py [--csv perf/results/<gpu>/bench.csv] [--out DIR]

Per (K, N) and mode: TFLOP/s vs tokens per provider with p20-p80 error bars and the bf16 roofline
of the GPU (min(peak, arithmetic intensity x memory bandwidth), for the GPUs in ``PEAKS``), and the
speedup of each provider over F.linear. The title names the GPU and versions.

:func:`plot_report` (``perf/gpu_report.py``) draws few files instead: ``layers.png`` (TFLOP/s
with the roofline and the speedup over F.linear, one panel each per (K, N) x mode, in one figure)
and ``kernels.png`` (each kernel's throughput as a fraction of its ceiling op, and what tuning
bought). :func:`plot_train_step` draws ``train_step.png`` from perf/train_step.py's rows: tokens/s
and peak memory of each provider x mode relative to bf16.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Dense peaks from the vendors' datasheets: (bf16 TFLOP/s, int8 TOP/s, memory TB/s).
PEAKS = {
    "H100 80GB HBM3": (989.0, 1979.0, 3.35),  # SXM
    "H100 PCIe": (756.0, 1513.0, 2.0),
    "H200": (989.0, 1979.0, 4.8),
    "A100": (312.0, 624.0, 2.0),
}


def peaks_for(gpu: str):
    for name, peak in PEAKS.items():
        if name in gpu:
            return peak
    return None


def roofline_tflops(M: int, K: int, N: int, mode: str, gpu: str) -> float | None:
    peak = peaks_for(gpu)
    if peak is None:
        return None
    flops = {"fwd": 2, "bwd": 4, "fwd+bwd": 6}[mode] * M * N * K
    bytes_moved = {"fwd": 1, "bwd": 2, "fwd+bwd": 3}[mode] * 2 * (M * K + N * K + M * N)
    # flop/byte x TB/s = TFLOP/s
    return min(peak[0], flops / bytes_moved * peak[2]) if flops else None


def load(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _series(rows, kernel, metric, mode, K, N):
    by_provider = defaultdict(list)
    for r in rows:
        if (r["kernel"], r["metric"], r["mode"], r["K"], r["N"]) == (kernel, metric, mode, K, N):
            p20 = float(r["p20"]) if r["p20"] else float(r["value"])
            p80 = float(r["p80"]) if r["p80"] else float(r["value"])
            by_provider[r["provider"]].append((int(r["M"]), float(r["value"]), p20, p80))
    return {p: sorted(v) for p, v in by_provider.items()}


def _errorbars(ax, series: dict) -> None:
    """One line per provider: median with p20-p80 error bars."""
    for provider, pts in series.items():
        m, v, lo, hi = zip(*pts, strict=True)
        err = [
            [a - b for a, b in zip(v, lo, strict=True)],
            [b - a for a, b in zip(v, hi, strict=True)],
        ]
        ax.errorbar(m, v, yerr=err, marker="o", capsize=3, label=provider)


def plot(rows: list[dict], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    if not rows:
        return []
    gpu, versions = rows[0]["gpu"], f"torch {rows[0]['torch']}, triton {rows[0]['triton']}"
    written = []
    shapes = sorted({(r["K"], r["N"], r["mode"]) for r in rows if r["kernel"] == "qat_linear"})
    for K, N, mode in shapes:
        fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(12, 4.5))
        _errorbars(ax_t, _series(rows, "qat_linear", "tflops", mode, K, N))
        roof = [(int(m), roofline_tflops(int(m), int(K), int(N), mode, gpu))
                for m in sorted({r["M"] for r in rows if r["K"] == K and r["N"] == N}, key=int)]  # fmt: skip
        if roof and all(v is not None for _, v in roof):
            ax_t.plot(*zip(*roof, strict=True), "k--", label="bf16 roofline")
        _errorbars(ax_s, _series(rows, "qat_linear", "speedup_vs_F.linear", mode, K, N))
        ax_s.axhline(1.0, color="gray", lw=0.8)
        for ax, ylabel in ((ax_t, "TFLOP/s (median, p20-p80)"), (ax_s, "speedup vs F.linear (x)")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("tokens M")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        ax_t.legend(fontsize=8)
        fig.suptitle(f"QAT linear {mode}, K={K} -> N={N} on {gpu} ({versions})", fontsize=10)
        fig.tight_layout()
        path = out / f"qat_linear_{mode.replace('+', '_')}_K{K}_N{N}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _qat_panels(rows: list[dict], metric: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(K, N) pairs (numeric order) and modes that have ``metric`` rows of the linear."""
    mine = [r for r in rows if r["kernel"] == "qat_linear" and r["metric"] == metric]
    shapes = sorted({(r["K"], r["N"]) for r in mine}, key=lambda kn: (int(kn[0]), int(kn[1])))
    modes = [m for m in ("fwd", "bwd", "fwd+bwd") if any(r["mode"] == m for r in mine)]
    return shapes, modes


def _grid_figure(rows, panels, title, path, roofline_gpu=None) -> Path | None:
    """One figure, one row per (K, N) and one column per (panel, mode): each ``panels`` entry
    (metric, y label, horizontal line or None) drawn vs tokens per provider, p20-p80 bars; the
    bf16 roofline on the ``tflops`` panels when the GPU's peaks are known."""
    shapes = sorted({kn for metric, _, _ in panels for kn in _qat_panels(rows, metric)[0]},
                    key=lambda kn: (int(kn[0]), int(kn[1])))  # fmt: skip
    columns = [(metric, ylabel, hline, mode) for metric, ylabel, hline in panels
               for mode in _qat_panels(rows, metric)[1]]  # fmt: skip
    if not shapes or not columns:
        return None
    fig, axes = plt.subplots(len(shapes), len(columns),
                             figsize=(5.2 * len(columns), 3.6 * len(shapes)), squeeze=False)  # fmt: skip
    for i, (K, N) in enumerate(shapes):
        for j, (metric, ylabel, hline, mode) in enumerate(columns):
            ax = axes[i][j]
            _errorbars(ax, _series(rows, "qat_linear", metric, mode, K, N))
            if roofline_gpu is not None and metric == "tflops":
                ms = sorted({int(r["M"]) for r in rows if (r["K"], r["N"]) == (K, N)})
                roof = [(m, roofline_tflops(m, int(K), int(N), mode, roofline_gpu)) for m in ms]
                if roof and all(v is not None for _, v in roof):
                    ax.plot(*zip(*roof, strict=True), "k--", label="bf16 roofline")
            if hline is not None:
                ax.axhline(hline, color="gray", lw=0.8)
            ax.set_xscale("log", base=2)
            ax.set_title(f"{ylabel.split(' (')[0]}: {mode}, K={K} -> N={N}", fontsize=9)
            ax.set_xlabel("tokens M")
            ax.set_ylabel(ylabel, fontsize=8)
            ax.grid(alpha=0.3)
            if i == 0 and (j == 0 or metric != columns[j - 1][0]):
                ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _kernel_fractions(rows: list[dict]) -> dict[str, dict[str, float]]:
    """{shape label: {kernel: throughput of triton_qat / throughput of its ceiling op}} (GB/s
    for quantize, TFLOP/s for GEMMs: the same work, so the time ratio for GEMMs)."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    units = {}
    for r in rows:
        if r["metric"] in ("gb_per_s", "tflops") and r["kernel"] != "qat_linear":
            units[(r["kernel"], r["M"], r["K"], r["N"], r["provider"] == "triton_qat")] = float(
                r["value"]
            )
    for (kernel, M, K, N, mine), v in units.items():
        other = units.get((kernel, M, K, N, False))
        if mine and other:
            out[f"{M}x{K}->{N}"][kernel] = v / other
    return out


def plot_report(
    rows: list[dict],
    out: Path,
    tuning: list[dict] | None = None,
    gpu: str | None = None,
    dry_run: bool = False,
) -> list[Path]:
    """The report's layer and kernel PNGs (``layers.png``: TFLOP/s and speedup vs F.linear;
    ``kernels.png``) from benchmark rows (perf/bench.py's columns, as read by :func:`load`) and
    the tuning records of the report's tuning phase; files without data are skipped."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    gpu = gpu or (rows[0]["gpu"] if rows else "unknown device")
    versions = f"torch {rows[0]['torch']}, triton {rows[0]['triton']}" if rows else ""
    tag = " [DRY RUN: CPU interpreter, not GPU speed]" if dry_run else ""
    panels = [("tflops", "TFLOP/s (median, p20-p80)", None),
              ("speedup_vs_F.linear", "speedup vs F.linear (x, median, p20-p80)", 1.0)]  # fmt: skip
    title = f"QAT linear: TFLOP/s and speedup vs F.linear on {gpu} ({versions}){tag}"
    path = _grid_figure(rows, panels, title, out / "layers.png", roofline_gpu=gpu)
    if path is not None:
        written.append(path)
    fractions = _kernel_fractions(rows)
    gains = [t for t in (tuning or []) if t.get("gain")]
    if fractions or gains:
        fig, (ax_f, ax_t) = plt.subplots(1, 2, figsize=(13, 4.8))
        order = ["quantize_x", "quantize_w", "fwd", "dequantize_x", "dgrad", "wgrad"]
        seen = {k for by_kernel in fractions.values() for k in by_kernel}
        kernels = [k for k in order if k in seen] + sorted(seen - set(order)) or order
        width = 0.8 / max(1, len(fractions))
        for i, (shape, by_kernel) in enumerate(sorted(fractions.items())):
            xs = [k + i * width for k in range(len(kernels))]
            ax_f.bar(xs, [by_kernel.get(k, 0.0) for k in kernels], width, label=shape)
        ax_f.set_xticks([k + 0.4 - width / 2 for k in range(len(kernels))], kernels)
        for y, what in ((0.8, "int8 GEMM target"), (0.75, "quantize target")):
            ax_f.axhline(y, color="gray", lw=0.8, ls="--")
            ax_f.text(len(kernels) - 0.5, y, what, fontsize=7, va="bottom", ha="right")
        ax_f.set_ylabel("throughput / ceiling op's (copy, _int_mm, mm)")
        ax_f.set_title("each kernel against its ceiling", fontsize=9)
        if fractions:
            ax_f.legend(fontsize=7)
        labels = [f"{t['shape']}\n{t['kernel']}" for t in gains]
        ax_t.bar(range(len(gains)), [t["gain"] for t in gains], color="tab:green")
        ax_t.axhline(1.0, color="gray", lw=0.8)
        ax_t.set_xticks(range(len(gains)), labels, rotation=90, fontsize=6)
        ax_t.set_ylabel("untuned default ms / tuned ms")
        ax_t.set_title("what tuning bought", fontsize=9)
        for ax in (ax_f, ax_t):
            ax.grid(alpha=0.3, axis="y")
        fig.suptitle(f"kernels on {gpu} ({versions}){tag}", fontsize=10)
        fig.tight_layout()
        path = out / "kernels.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def _train_step_rows():
    """perf/train_step_rows.py (beside this file): the readers of perf/train_step.py's rows."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    import train_step_rows

    return train_step_rows


def plot_train_step(rows: list[dict], path: Path, dry_run: bool = False) -> Path | None:
    """perf/train_step.py's rows (dicts as emitted, or as read by :func:`load`) as one PNG: tokens/s
    (left) and peak memory (right) of each provider x mode relative to bf16 in the same mode.
    Only measured values are drawn; a bar that was not measured is left out and labelled so. The
    title names the device and the torch / Triton versions of the rows. Returns None (and writes
    nothing) when no value relative to bf16 was measured."""
    ts = _train_step_rows()
    mine = [r for r in rows if r.get("phase") == ts.PHASE]
    panels = [("tokens_per_s", "tokens/s relative to bf16 (x)", "tokens/s (median step)"),
              ("peak_mem_mb", "peak memory relative to bf16 (x)",
               "peak memory (torch.cuda.max_memory_allocated)")]  # fmt: skip
    rel = {metric: ts.relative_to_bf16(mine, metric) for metric, _, _ in panels}
    if not any(rel.values()):
        return None
    first = mine[0]
    configs = [r["config"] for r in mine if r.get("config") not in ("none", None, "")]
    config = configs[0] if configs else "none"
    providers = [p for p in ts.PROVIDERS if any(r.get("provider") == p for r in mine)]
    modes = [m for m in ts.MODES if any(r.get("mode") == m for r in mine)]
    fig, axes = plt.subplots(1, len(panels), figsize=(12, 4.8))
    width = 0.8 / max(1, len(modes))
    for ax, (metric, ylabel, title) in zip(axes, panels, strict=True):
        got = rel[metric]
        for j, mode in enumerate(modes):
            xs = [i + (j - (len(modes) - 1) / 2) * width for i in range(len(providers))]
            label = mode  # on the mode's first bar only
            for x, provider in zip(xs, providers, strict=True):
                v = got.get((provider, mode))
                if v is None:
                    if got:  # absent, and said so (a panel with nothing says it once)
                        ax.text(x, 0.02, f"{mode}: not measured", rotation=90, ha="center",
                                va="bottom", fontsize=7, color="gray",
                                transform=ax.get_xaxis_transform())  # fmt: skip
                    continue
                ax.bar(x, v, width, color=f"C{j}", label=label)
                ax.text(x, v, f"{v:.2f}x", ha="center", va="bottom", fontsize=7)
                label = None
        if not got:
            why = next((r.get("detail", "") for r in mine if r.get("metric") == metric
                        and r.get("status") != "done"), "")  # fmt: skip
            ax.text(0.5, 0.5, why or "not measured", ha="center", va="center", fontsize=8,
                    color="gray", wrap=True, transform=ax.transAxes)  # fmt: skip
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.set_xlim(-0.5, len(providers) - 0.5)
        ax.set_xticks(range(len(providers)), providers)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=7, loc="upper right")
    measured = [r for r in mine if r.get("status") == "done" and r.get("metric") == "tokens_per_s"]
    dims = (measured or [first])[0].get("detail", "").split(";")[0]
    fig.suptitle(f"training step on {first.get('gpu', 'unknown device')} (torch {first.get('torch')}, "
                 f"triton {first.get('triton')}); {config}; {dims}", fontsize=9)  # fmt: skip
    top = 0.95
    if dry_run:
        fig.text(0.5, 0.89, "DRY RUN on CPU: these numbers mean nothing about GPU speed",
                 ha="center", va="center", fontsize=12, color="red", weight="bold")  # fmt: skip
        top = 0.86
    fig.tight_layout(rect=(0, 0, 1, top))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--csv", default=None, help="bench.csv (default: the newest under perf/results)")
    p.add_argument("--out", default=None, help="folder for PNGs (default: beside the CSV)")
    args = p.parse_args(argv)
    if args.csv:
        path = Path(args.csv)
    else:
        found = sorted((Path(__file__).parent / "results").glob("*/bench.csv"),
                       key=lambda q: q.stat().st_mtime)  # fmt: skip
        if not found:
            p.error("--csv: no perf/results/*/bench.csv yet; run perf/bench.py first")
        path = found[-1]
    if not path.exists():
        p.error(f"--csv: {path} does not exist")
    written = plot(load(path), Path(args.out) if args.out else path.parent)
    for w in written:
        print(f"wrote {w}")
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
