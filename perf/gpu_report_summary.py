"""``make gpu-report``'s report: targets, the summary and the report's files.

:func:`targets` evaluates every target from the measured rows (MET / MISSED / "not measured";
nothing is estimated); :func:`summary_text` writes the summary (phases, the training-step
headline and table, correctness counts, what tuning bought, targets, memory, host vs device);
:func:`phase_report` adds the speedup rows, draws ``layers.png``, ``kernels.png`` and
``train_step.png`` (perf/plot.py) and writes ``summary.md``; :func:`report_files` lists the
files the folder holds (``REPORT_FILES`` and the tuned JSON).
"""

from __future__ import annotations

import traceback
from pathlib import Path

import bench
import torch
import train_step
import triton
from gpu_report_benchmark import bench_rows
from gpu_report_run import PHASES, REPORT_FILES, Run, Sizes
from gpu_report_train_step import ratio as train_ratio
from gpu_report_train_step import summary_lines as train_summary_lines
from gpu_report_train_step import train_rows

TARGETS_TEXT = [
    "forward >= 1.4x F.linear at the headline shapes",
    "fwd+bwd >= 1.1x nn.Linear",
    "fwd+bwd >= 1.3x compiled torch ref",
    "fwd+bwd >= 2.5x eager torch ref",
    "never below 0.9x F.linear forward from 2048 tokens up",
    # the kernels at their ceilings (issue 28)
    "int8 GEMM >= 1.4x torch._int_mm",
    "quantize >= 85% of copy bandwidth",
    "int4 g128 within 10% of per-channel int8",
    # the training step (issue 29): tokens/s and peak memory of the whole step
    "triton_qat compiled >= 1.05x bf16 compiled tokens/s",
    "triton_qat compiled >= 1.2x torchao QAT compiled tokens/s",
    "triton_qat eager >= 1.0x bf16 eager tokens/s",
    "training-step peak memory <= bf16's",
    "dgrad >= 97% of torch.mm",
    "wgrad >= 97% of torch.mm",
    # float8 (issue 30): e4m3 W8A8 on fp8 tensor cores
    "float8 forward >= 1.6x F.linear",
    "float8 fwd+bwd compiled >= 1.1x nn.Linear",
]


def _value(rows, kernel, provider, metric, mode, M, K, N):
    for r in rows:
        if (r.get("kernel"), r.get("provider"), r.get("metric"), r.get("mode"), r.get("M"),
                r.get("K"), r.get("N")) == (kernel, provider, metric, mode, M, K, N):  # fmt: skip
            return r["value"]
    return None


def _kernel_value(rows, kernel, provider, metric, M, K, N):
    """A kernel benchmark row's value, matched without ``mode`` (perf/bench.py's bench_kernels
    gives every kernel row of a shape the last kernel's mode)."""
    for r in rows:
        if (r.get("kernel"), r.get("provider"), r.get("metric"), r.get("M"), r.get("K"),
                r.get("N")) == (kernel, provider, metric, M, K, N):  # fmt: skip
            return r["value"]
    return None


def _ratio(num, den):
    return num / den if num is not None and den else None


def targets(run: Run, sizes: Sizes) -> list[dict]:
    """Every target with its measured value (None: not measured) and status."""
    rows = bench_rows(run)
    ms = lambda p, mode, M, K, N: _value(rows, "qat_linear", p, "ms", mode, M, K, N)  # noqa: E731
    M0 = sizes.head_tokens
    out = []

    def add(target, shape, value, ok, how, fmt=None):
        status = "not measured" if value is None else ("MET" if ok(value) else "MISSED")
        if value is None:
            shown = "not measured"
        elif fmt is not None:
            shown = fmt.format(value)
        else:  # a ratio: 2 decimals, or 2 significant digits when tiny (CPU dry runs)
            shown = f"{value:.2f}x" if value >= 0.01 else f"{value:.2g}x"
        out.append(dict(target=target, shape=shape, value=value, shown=shown, status=status,
                        how=how))  # fmt: skip

    # the four speed-ratio targets: (baseline provider, ours, mode, bound, how it is computed)
    ratios = [
        ("F.linear", "triton_qat eager", "fwd", 1.4, "F.linear ms / triton_qat eager ms, fwd"),
        ("F.linear", "triton_qat eager", "fwd+bwd", 1.1,
         "nn.Linear ms / triton_qat eager ms, fwd+bwd"),
        ("torch ref compiled", "triton_qat compiled", "fwd+bwd", 1.3,
         "torch ref compiled ms / triton_qat compiled ms, fwd+bwd"),
        ("torch ref eager", "triton_qat eager", "fwd+bwd", 2.5,
         "torch ref eager ms / triton_qat eager ms, fwd+bwd"),
    ]  # fmt: skip
    for text, (base, ours, mode, bound, how) in zip(TARGETS_TEXT, ratios, strict=False):
        for K, N in sizes.pairs:
            add(text, f"{M0}x{K}->{N}",
                _ratio(ms(base, mode, M0, K, N), ms(ours, mode, M0, K, N)),
                lambda v, b=bound: v >= b, how)  # fmt: skip
    floor_min, floor_at = None, ""
    floor_tokens = [m for m in sizes.tokens if m >= 2048] or (
        [] if not run.dry_run else sizes.tokens
    )
    for K, N in sizes.pairs:
        for m in floor_tokens:
            v = _ratio(ms("F.linear", "fwd", m, K, N), ms("triton_qat eager", "fwd", m, K, N))
            if v is not None and (floor_min is None or v < floor_min):
                floor_min, floor_at = v, f"min at {m}x{K}->{N}"
    add(TARGETS_TEXT[4], floor_at or f"tokens {floor_tokens}", floor_min, lambda v: v >= 0.9,
        "min over measured shapes of F.linear ms / triton_qat eager ms, fwd")  # fmt: skip
    for K, N in sizes.pairs:
        shape = f"{M0}x{K}->{N}"
        v = _ratio(_kernel_value(rows, "fwd", "triton_qat", "tflops", M0, K, N),
                   _kernel_value(rows, "fwd", "torch._int_mm", "tflops", M0, K, N))  # fmt: skip
        add(TARGETS_TEXT[5], shape, v, lambda v: v >= 1.4, "fwd kernel TOP/s / torch._int_mm TOP/s",
            "{:.0%}")  # fmt: skip
    for K, N in sizes.pairs:
        shape = f"{M0}x{K}->{N}"
        v = _ratio(_kernel_value(rows, "quantize_x", "triton_qat", "gb_per_s", M0, K, N),
                   _kernel_value(rows, "quantize_x", "copy", "gb_per_s", M0, K, N))  # fmt: skip
        add(TARGETS_TEXT[6], shape, v, lambda v: v >= 0.85,
            "activation quantize GB/s / device copy GB/s", "{:.0%}")  # fmt: skip
    for K, N in sizes.pairs:
        shape = f"{M0}x{K}->{N}"
        v = _ratio(ms("triton_qat i4g128 compiled", "fwd", M0, K, N),
                   ms("triton_qat compiled", "fwd", M0, K, N))  # fmt: skip
        add(TARGETS_TEXT[7], shape, v, lambda v: v <= 1.10,
            "i4g128 compiled ms / int8 per-channel compiled ms, fwd (<= 1.10)")  # fmt: skip
    train, dims = train_rows(run), sizes.train.dims
    step = f"train step, {dims.tokens} tokens, {dims.layers} layers"
    for text, ours, base, bound in (
        (TARGETS_TEXT[8], ("triton_qat", "compiled"), ("bf16", "compiled"), 1.05),
        (TARGETS_TEXT[9], ("triton_qat", "compiled"), ("torchao", "compiled"), 1.2),
        (TARGETS_TEXT[10], ("triton_qat", "eager"), ("bf16", "eager"), 1.0),
    ):
        add(text, step, train_ratio(train, "tokens_per_s", ours, base), lambda v, b=bound: v >= b,
            f"{' '.join(ours)} tokens/s / {' '.join(base)} tokens/s (median steps)")  # fmt: skip
    for mode in train_step.MODES:
        add(TARGETS_TEXT[11], f"{step}, {mode}",
            train_ratio(train, "peak_mem_mb", ("triton_qat", mode), ("bf16", mode)),
            lambda v: v <= 1.0, f"triton_qat {mode} peak MiB / bf16 {mode} peak MiB (<= 1.00)")  # fmt: skip
    for text, kernel in ((TARGETS_TEXT[12], "dgrad"), (TARGETS_TEXT[13], "wgrad")):
        for K, N in sizes.pairs:
            v = _kernel_value(rows, kernel, "triton_qat", "fraction_of_ceiling", M0, K, N)
            add(text, f"{M0}x{K}->{N}", v, lambda v: v >= 0.97,
                f"torch.mm ms / {kernel} ms (the default config: torch.mm + the mask pass at "
                "16-bit dtypes), device time", "{:.0%}")  # fmt: skip
    for text, ours, mode, bound in ((TARGETS_TEXT[14], "triton_qat float8 eager", "fwd", 1.6),
                                    (TARGETS_TEXT[15], "triton_qat float8 compiled", "fwd+bwd",
                                     1.1)):  # fmt: skip
        K, N = sizes.pairs[0]
        add(text, f"{M0}x{K}->{N}", _ratio(ms("F.linear", mode, M0, K, N), ms(ours, mode, M0, K, N)),
            lambda v, b=bound: v >= b, f"F.linear ms / {ours} ms, {mode}")  # fmt: skip
    return out


def correctness_counts(run: Run) -> dict:
    checks = [r for r in run.rows if r.get("status") in ("pass", "fail", "skipped") and r.get("item") != "phase"
              and (r.get("phase") == "correctness" or str(r.get("item", "")).startswith("tuned_agrees"))]  # fmt: skip
    by = {s: [r["item"] for r in checks if r["status"] == s] for s in ("pass", "fail", "skipped")}
    return by


def _names(names: list[str], limit: int = 30) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown + (
        f", ... and {len(names) - limit} more (report.csv)" if len(names) > limit else ""
    )


def summary_text(run: Run, sizes: Sizes, files: list[Path] | None = None) -> str:
    lines = []
    kind = (
        "DRY RUN on CPU (Triton interpreter): numbers say nothing about GPU speed"
        if run.dry_run
        else "GPU"
    )
    lines.append(f"# triton_qat GPU report: {run.gpu}")
    lines.append(f"{kind}; torch {torch.__version__}, triton {triton.__version__}, commit "
                 f"{run.meta['commit']}, {run.meta['utc']}")  # fmt: skip
    lines.append(f"budget BUDGET_S={run.budget_s:.0f} s, used {run.elapsed():.0f} s")
    lines.append("")
    lines.append(train_step.headline(train_rows(run)))
    lines.append("")
    lines.append("## Phases")
    skipped = []
    for name in PHASES:
        ph = run.phases.get(name)
        ran = ph is not None and not ph["status"].startswith(("skipped", "not reached"))
        state = (
            f"{ph['status']} ({ph['seconds']:.0f} s)"
            if ran
            else ph["status"]
            if ph
            else "not reached"
        )
        lines.append(f"- {name}: {state}")
        if not ran:
            skipped.append(name)
    lines.append(f"- skipped phases: {', '.join(skipped) if skipped else 'none'}")
    lines.append("")
    lines += train_summary_lines(train_rows(run), sizes.train)
    lines.append("")
    by = correctness_counts(run)
    lines.append(f"## Correctness: {len(by['pass'])} pass, {len(by['fail'])} fail, "
                 f"{len(by['skipped'])} skipped")  # fmt: skip
    lines.append(f"- failing: {_names(by['fail'])}")
    skipped_checks = [
        r
        for r in run.rows
        if r.get("status") == "skipped"
        and r.get("phase") == "correctness"
        and r.get("item") != "phase"
    ]
    reasons: dict[str, int] = {}
    for r in skipped_checks:
        reasons[r["detail"]] = reasons.get(r["detail"], 0) + 1
    if reasons:
        lines.append("- skipped: " + "; ".join(f"{n} x {d}" for d, n in reasons.items()))
    lines.append("")
    lines.append("## Tuning: what tuning bought (untuned default -> tuned, median ms)")
    if run.tuning:
        lines.append("| shape | kernel | default ms | tuned ms | gain | timed |")
        lines.append("| --- | --- | ---: | ---: | ---: | ---: |")
        for t in run.tuning:
            d = f"{t['default_ms']:.4f}" if t["default_ms"] is not None else "failed"
            g = f"{t['gain']:.2f}x" if t["gain"] else "-"
            lines.append(f"| {t['shape']} | {t['kernel']} | {d} | {t['ms']:.4f} | {g} | "
                         f"{t['tried']}/{t['candidates']}{'' if t['complete'] else ' (cut)'} |")  # fmt: skip
        # the forward's paths: per group int8 tensor cores vs dequantized 16-bit, per channel
        # the Triton int8 kernel vs the Gluon one
        names = {"int8": "int8", "dequant": "dequantized", "gluon": "Gluon int8"}
        for t in run.tuning:
            bp = t.get("by_path") or {}
            if len(bp) >= 2:
                won = min(bp, key=bp.get)
                each = ", ".join(f"{names.get(p, p)} {ms:.4f} ms" for p, ms in bp.items())
                lines.append(f"- forward paths at {t['shape']}: {each} (each at its fastest "
                             f"config): {names.get(won, won)} wins by "
                             f"{sorted(bp.values())[1] / bp[won]:.2f}x")  # fmt: skip
        for c in run.compile_stats:
            par = c["sum_s"] / c["wall_s"] if c["wall_s"] > 0 else float("nan")
            lines.append(f"- compile {c['shape']}: {c['launches']} first launches on {c['workers']} "
                         f"threads in {c['wall_s']:.1f} s ({par:.1f}x parallel)")  # fmt: skip
        if run.tuned_json is not None:
            where = f" and {run.shipped_json}" if run.shipped_json else ""
            lines.append(f"- tuned configs: {run.tuned_json.name} (in this folder{where}); "
                         f"ship it as autotune/configs/{run.tuned_json.name}")  # fmt: skip
    else:
        lines.append("not measured")
    lines.append("")
    lines.append("## Targets")
    lines.append("| target | shape | measured | status | measured as |")
    lines.append("| --- | --- | ---: | --- | --- |")
    for t in targets(run, sizes):
        lines.append(
            f"| {t['target']} | {t['shape']} | {t['shown']} | {t['status']} | {t['how']} |"
        )
    mem = []
    M0, (K0, N0) = sizes.head_tokens, sizes.pairs[0]
    for p in (
        "F.linear",
        "triton_qat eager",
        "torch ref eager",
        "triton_qat compiled",
        "torch ref compiled",
    ):
        v = _value(bench_rows(run), "qat_linear", p, "peak_mem_mb", "fwd+bwd", M0, K0, N0)
        v_saved = _value(
            bench_rows(run), "qat_linear", p, "saved_act_bytes_per_elem", "fwd", M0, K0, N0
        )
        if v is not None or v_saved is not None:
            peak = f"{v:.0f} MiB" if v is not None else "not measured"
            kept = f"{v_saved:.2f}" if v_saved is not None else "not measured"
            mem.append(f"{p}: peak {peak}, {kept} bytes kept per activation element")
    lines.append("")
    lines.append(f"## Memory of a training step (fwd+bwd, {M0}x{K0}->{N0})")
    lines += [f"- {m}" for m in mem] or ["not measured"]
    lines.append("")
    lines += host_vs_device_lines(bench_rows(run), M0, K0, N0)
    if files is not None:
        lines.append("")
        lines.append("## Files")
        lines.append(
            ", ".join(f"{f.name} ({f.stat().st_size / 1024:.0f} KiB)" for f in files if f.exists())
        )
    lines.append("")
    lines.append(f"report folder: {run.folder.resolve()}")
    return "\n".join(lines)


def host_vs_device_lines(rows: list[dict], M: int, K: int, N: int) -> list[str]:
    """Per provider and mode at one shape: the synchronized single call (the targets' time), the
    device time per call when calls are queued back to back (what a training loop sees), and the
    host's queuing time per call (host >= device: the host sets the pace)."""
    out = [f"## Host vs device per call ({M}x{K}->{N}, ms)",
           "| provider | mode | single | queued: device | queued: host |",
           "| --- | --- | ---: | ---: | ---: |"]  # fmt: skip
    for p in (
        "F.linear",
        "triton_qat eager",
        "triton_qat compiled",
        "triton_qat compiled cudagraphs",
    ):
        for mode in ("fwd", "fwd+bwd"):
            got = [_value(rows, "qat_linear", p, m, mode, M, K, N)
                   for m in ("ms", "pipelined_ms", "host_ms")]  # fmt: skip
            if any(v is not None for v in got):
                cells = " | ".join(f"{v:.3f}" if v is not None else "not measured" for v in got)
                out.append(f"| {p} | {mode} | {cells} |")
    return out if len(out) > 3 else out[:1] + ["not measured"]


def report_files(run: Run) -> list[Path]:
    """The report's files that exist: ``REPORT_FILES`` and the tuned JSON."""
    files = [run.folder / n for n in REPORT_FILES]
    if run.tuned_json is not None:
        files.append(run.tuned_json)
    return [f for f in files if f.exists()]


def phase_report(run: Run, sizes: Sizes) -> str:
    """Speedup rows, plots, summary.md; returns the summary text (printed last by the runner)."""
    try:
        measured = bench_rows(run)
        for r in bench.add_speedups([dict(r) for r in measured])[len(measured) :]:
            run.row(**{**r, "phase": "benchmark", "item": "speedup", "status": "done"})
    except Exception as e:  # noqa: BLE001 - the rows measured stay; the summary still comes
        run.say(f"speedup rows failed: {type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}")
    draw_plots(run)
    run.summary_path.write_text(summary_text(run, sizes) + "\n")
    text = summary_text(run, sizes, report_files(run))
    run.summary_path.write_text(text + "\n")
    return text


def draw_plots(run: Run) -> None:
    """layers.png and kernels.png from the benchmark rows and the tuning records, train_step.png
    from the training-step rows; a plot that fails is logged and the report goes on."""
    try:
        import plot  # matplotlib: imported here, so a machine without it still gets a summary
    except Exception as e:  # noqa: BLE001
        run.say(f"plots failed: {type(e).__name__}: {e}")
        return
    try:
        rows = [r for r in plot.load(run.csv_path) if r["phase"] == "benchmark"
                and r["status"] == "done" and r["item"] != "phase" and r["kernel"]]  # fmt: skip
        written = plot.plot_report(rows, run.folder, tuning=run.tuning, gpu=run.gpu,
                                   dry_run=run.dry_run)  # fmt: skip
        run.say(f"plots: {', '.join(p.name for p in written) or 'none (no benchmark rows)'}")
    except Exception as e:  # noqa: BLE001 - a plot failure must not lose the summary
        run.say(f"plots failed: {type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}")
    try:
        png = plot.plot_train_step(train_rows(run), run.folder / "train_step.png",
                                   dry_run=run.dry_run)  # fmt: skip
        run.say(f"train-step chart: {png.name if png else 'none (nothing measured)'}")
    except Exception as e:  # noqa: BLE001 - a plot failure must not lose the summary
        run.say(f"train-step chart failed: {type(e).__name__}: {e}\n"
                f"{traceback.format_exc(limit=5)}")  # fmt: skip
