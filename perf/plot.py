"""Draw PNGs from perf/bench.py's CSV.

    python perf/plot.py [--csv perf/results/<gpu>/bench.csv] [--out DIR]

Per (K, N) and mode: TFLOP/s vs tokens per provider with p20-p80 error bars and the bf16 roofline
of the GPU (min(peak, arithmetic intensity x memory bandwidth), for the GPUs in ``PEAKS``), and the
speedup of each provider over F.linear. The title names the GPU and versions.
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
