"""GPU truth in one command: correctness, tuning, benchmark, a training step and a report.

    make gpu-report                                  # python3 perf/gpu_report.py
    BUDGET_S=420 REPORT_DIR=/out make gpu-report     # total wall clock, where the files go
    python perf/gpu_report.py --dry-run              # CPU rehearsal (Triton interpreter, tiny shapes)

Made for a short GPU window (no network, a few result files, the tail of stdout): one process,
four phases and a report, each phase with its own time limit, checked between items (the rest of
a phase is skipped, and says so, once it is over), inside a total budget (``BUDGET_S``, default
480 s; a watchdog writes the summary and exits if an item overruns the budget by more than a
grace period). This file is the runner: arguments, the budget, the phases in order, the
watchdog, the file limit and the summary printed last; each phase lives in its own module:

1. correctness (<= 100 s; perf/gpu_report_correctness.py): device checks, each recorded pass /
   fail / skipped with its message (quantize bit-exact, torch.ao parity, what CUDA torch does
   against what the kernels assume, the layer and every GEMM path against fp64, opcheck,
   torch.compile with and without CUDA graphs), kernel outputs poisoned.
2. tuning (<= 100 s; perf/gpu_report_tuning.py): the curated candidates at 8192 tokens, bf16,
   (K, N) = 4096->4096, 4096->14336, 14336->4096, int8 per channel and int4 group 128; each tuned
   config checked against the default's output and timed against it; the winners go to
   ``autotune/configs/<gpu>__triton-<version>.json`` and a copy in the report folder.
3. benchmark (<= 90 s; perf/gpu_report_benchmark.py): ``perf/bench.py``'s layer and kernel
   benchmarks with the tuned configs, in priority order.
4. train_step (<= 140 s; perf/gpu_report_train_step.py): ``perf/train_step.py``'s training step
   of a Llama-style decoder (Llama-3-8B layer dims, 4 blocks, 4 x 2048 tokens) for bf16 /
   torchao QAT / triton_qat, eager and compiled per block: tokens/s, step time, peak memory,
   compile time and loss; a missing torchao gives "not measured" rows.
5. report (perf/gpu_report_summary.py; at least 30 s kept for it): ``report.csv`` (every row,
   written as produced), ``log.txt``, ``summary.md``, the tuned JSON, ``layers.png`` (TFLOP/s and
   speedup vs F.linear), ``kernels.png``, ``train_step.png``, ``compiled-layer.py``: at most 8
   files of at most 16 MiB. The summary (the training-step headline, targets MET / MISSED / not
   measured, correctness counts) is printed last. Nothing is estimated.

The phase limits above are for the default budget; a smaller ``BUDGET_S`` scales them down
(``PHASE_SHARES``), and a phase never runs into the report's reserve.

``--dry-run`` (``make test`` runs it through tests/test_gpu_report.py) takes the same path on a CPU
with the Triton interpreter: tiny shapes, one config per kernel, a tiny decoder, a few seconds per
phase; checks that need CUDA are recorded as "skipped: no CUDA"; its numbers say nothing about GPU
speed.
"""

from __future__ import annotations

import time

T_START = time.monotonic()  # the budget counts from here (imports included)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent


def prepare_environment(dry_run: bool) -> str:
    """Set what must be set before torch / Triton / triton_qat are imported; returns the private
    tuning-cache folder. Poisoned outputs as in the tests; the interpreter for a dry run; a fresh
    cache folder so the report measures the configs it tunes, not whatever a user cache holds."""
    if dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
    os.environ["TRITON_QAT_POISON"] = "1"
    cache = tempfile.mkdtemp(prefix="triton_qat_report_cache_")
    os.environ["TRITON_QAT_CACHE_DIR"] = cache
    return cache


if __name__ == "__main__":
    _PRIVATE_CACHE = prepare_environment("--dry-run" in sys.argv[1:])

sys.path.insert(0, str(HERE))  # the phase modules, also when imported by the tests

try:  # the GPU machine brings its own torch and triton; triton_qat is installed from this checkout
    import torch
    import triton

    import triton_qat  # noqa: F401
except ImportError as _e:
    sys.exit(f"perf/gpu_report.py: {_e}. It runs with the python that has torch and triton (PY=... "
             "make gpu-report) and triton_qat installed from this checkout: "
             "python3 -m pip install --no-deps --no-build-isolation -e . (the same python)")  # fmt: skip


import bench  # noqa: E402
from gpu_report_benchmark import phase_benchmark  # noqa: E402
from gpu_report_correctness import phase_correctness  # noqa: E402
from gpu_report_run import PHASES, Run, Sizes  # noqa: E402
from gpu_report_summary import phase_report, report_files, summary_text  # noqa: E402
from gpu_report_train_step import phase_train_step  # noqa: E402
from gpu_report_tuning import phase_tuning  # noqa: E402

import triton_qat as tq  # noqa: E402
from triton_qat.autotune import cache as cache_mod  # noqa: E402
from triton_qat.autotune.tune import default_workers  # noqa: E402
from triton_qat.kernels import _common  # noqa: E402

# Each phase's limit at the default budget (480 s on one H100 / H200): correctness took 65 s and
# tuning 44 s on the H200 (2026-11-28), the benchmark 78-81 s before it gained queued timings;
# the training step compiles each of its compiled items from scratch (a block per provider).
PHASE_LIMITS_S = {"correctness": 100.0, "tuning": 100.0, "benchmark": 90.0, "train_step": 140.0}
# the rehearsal runs every correctness check (tiny shapes; with a 2-core CPU's cores shared four
# ways, 60 s ran out before the last 11, the float8 checks took 42 s of it) and every
# training-step item (26 s there): those limits only guard against a hang, so a slow or busy CI
# machine does not skip the last ones (tests/test_gpu_report.py wants nothing skipped for time)
DRY_PHASE_LIMITS_S = {"correctness": 180.0, "tuning": 6.0, "benchmark": 5.0, "train_step": 120.0}
DEFAULT_BUDGET_S = 480.0
# of BUDGET_S: a smaller budget scales every phase down alike (the limits at the default budget)
PHASE_SHARES = {name: limit / DEFAULT_BUDGET_S for name, limit in PHASE_LIMITS_S.items()}
REPORT_RESERVE_S = 30.0  # kept for plots and the summary (at most 1/8 of the budget)
MIN_PHASE_S = 1.0  # a phase with less time than this is skipped
MAX_FILES, MAX_FILE_BYTES = 8, 16 * 2**20  # what a GPU window returns
SUMMARY_MAX_CHARS = 9000
PHASE_FUNCTIONS: dict[str, Callable[[Run, float, Sizes], bool]] = {
    "correctness": phase_correctness,
    "tuning": phase_tuning,
    "benchmark": phase_benchmark,
    "train_step": phase_train_step,
}
assert tuple(PHASE_FUNCTIONS) == PHASES == tuple(PHASE_LIMITS_S) == tuple(DRY_PHASE_LIMITS_S)
assert sum(PHASE_LIMITS_S.values()) + REPORT_RESERVE_S <= DEFAULT_BUDGET_S


def dry_budget() -> float:
    """The rehearsal's default budget: each phase's share of it holds the phase's whole limit."""
    return max(DRY_PHASE_LIMITS_S[n] / PHASE_SHARES[n] for n in PHASES)


def phase_limit(run: Run, name: str) -> float:
    """Seconds phase ``name`` may take: its limit, its share of the budget and what is left
    before the report's reserve, whichever is least."""
    limits = DRY_PHASE_LIMITS_S if run.dry_run else PHASE_LIMITS_S
    reserve = min(REPORT_RESERVE_S, run.budget_s / 8)
    left = run.budget_s - run.elapsed() - reserve
    return max(0.0, min(limits[name], PHASE_SHARES[name] * run.budget_s, left))


def run_phase(run: Run, name: str, fn: Callable[[Run, float], bool]) -> None:
    """Run one phase within its limit; a failure is recorded and the run goes on."""
    limit = phase_limit(run, name)
    if limit < MIN_PHASE_S:
        status = (
            f"skipped: budget exhausted ({run.elapsed():.0f} s of BUDGET_S={run.budget_s:.0f} used)"
        )
        run.phases[name] = {"status": status, "seconds": 0.0}
        run.say(f"== {name}: {status}")
        run.row(phase=name, item="phase", status="skipped", detail=status)
        return
    run.say(f"== {name} (limit {limit:.0f} s)")
    t0 = time.monotonic()
    try:
        stopped = fn(run, t0 + limit)
        status = "stopped at its time limit (rest skipped)" if stopped else "done"
    except Exception as e:  # noqa: BLE001 - one phase failing must not end the run
        status = f"failed: {type(e).__name__}: {str(e)[:300]}"
        run.say(f"{name} failed:\n{traceback.format_exc(limit=8)}")
    secs = time.monotonic() - t0
    run.phases[name] = {"status": status, "seconds": secs}
    run.say(f"== {name}: {status} ({secs:.1f} s)")
    run.row(phase=name, item="phase", status="done" if status == "done" else "partial",
            detail=status, metric="seconds", value=secs)  # fmt: skip


def check_file_limit(run: Run) -> None:
    """Say (log and stdout) if the folder holds more files than a GPU window returns, or a file
    over its size limit; nothing is deleted."""
    files = sorted(p for p in run.folder.iterdir() if p.is_file())
    if len(files) > MAX_FILES:
        run.say(f"the report folder holds {len(files)} files (at most {MAX_FILES} come back): "
                f"{[p.name for p in files]}")  # fmt: skip
    big = [f.name for f in files if f.stat().st_size > MAX_FILE_BYTES]
    if big:
        run.say(f"files over {MAX_FILE_BYTES >> 20} MiB: {big}")


def for_stdout(summary: str) -> str:
    """The summary as printed: whole when it fits the tail a GPU window shows, else its start and
    its end (targets, files, folder) with the middle cut; summary.md keeps all of it."""
    if len(summary) <= SUMMARY_MAX_CHARS:
        return summary
    cut = "\n...(cut here to fit the output tail; summary.md has all of it)...\n"
    return summary[: SUMMARY_MAX_CHARS // 3] + cut + summary[-SUMMARY_MAX_CHARS // 2 :]


def finish(run: Run, sizes: Sizes, summary: str) -> None:
    """Log the summary, close the files, print the summary as the last thing on stdout."""
    with run.lock:
        if run.finished:
            return
        run.finished = True
        run._log_fh.write(summary + "\n")
        run.close()
        print("\n" + for_stdout(summary), flush=True)


def start_watchdog(run: Run, sizes: Sizes, grace_s: float) -> threading.Timer:
    """If an item overruns the budget by ``grace_s``, write the summary from what was recorded
    and exit (exit status 3): the data written so far stays."""

    def fire():
        if run.finished:
            return
        try:
            run.say(
                f"budget exceeded by {grace_s:.0f} s: writing the summary with what was measured and exiting"
            )
            for name in PHASES:
                run.phases.setdefault(
                    name, {"status": "not reached (budget watchdog)", "seconds": 0.0}
                )
            text = summary_text(run, sizes, report_files(run))
            run.summary_path.write_text(text + "\n")
            finish(run, sizes, text)
        finally:
            os._exit(3)

    t = threading.Timer(max(1.0, run.budget_s + grace_s - run.elapsed()), fire)
    t.daemon = True
    t.start()
    return t


def environment(run: Run) -> None:
    info = {"device": run.gpu, "backend": tq.backend(run.device), "torch": torch.__version__,
            "triton": triton.__version__, "python": sys.version.split()[0],
            "cache_name": run.cache_name, "budget_s": run.budget_s, "dry_run": run.dry_run}  # fmt: skip
    if run.device.type == "cuda":
        props = torch.cuda.get_device_properties(run.device)
        info.update(capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                    memory_gib=round(props.total_memory / 2**30, 1),
                    smem_optin=getattr(props, "shared_memory_per_block_optin", None),
                    cuda=torch.version.cuda)  # fmt: skip
    info["cpu_threads"] = default_workers()
    run.row(phase="env", item="environment", status="done", detail=json.dumps(info))
    run.say("environment: " + ", ".join(f"{k}={v}" for k, v in info.items()))


def default_folder(device: torch.device, dry_run: bool) -> Path:
    if dry_run:  # git ignores perf/results/quick/
        return HERE / "results" / "quick" / "gpu-report"
    return HERE / "results" / cache_mod.slug(bench.device_label(device))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--dry-run", action="store_true",
                   help="CPU rehearsal: Triton interpreter, tiny shapes, one config per kernel")  # fmt: skip
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help=f"seconds in all (default $BUDGET_S, or {DEFAULT_BUDGET_S:.0f}; "
        f"{dry_budget():.0f} with --dry-run)",
    )
    p.add_argument(
        "--out", default=None, help="report folder (default $REPORT_DIR or perf/results/<gpu>/)"
    )
    args = p.parse_args(argv)
    env_budget = os.environ.get("BUDGET_S", "").strip()
    if args.budget is not None:
        budget, source = args.budget, "--budget"
    elif env_budget:
        source = "BUDGET_S"
        try:
            budget = float(env_budget)
        except ValueError:
            p.error(f"BUDGET_S: expected a finite number of seconds > 0, got {env_budget!r}")
    else:
        budget, source = (dry_budget() if args.dry_run else DEFAULT_BUDGET_S), "budget"
    if not (budget > 0 and math.isfinite(budget)):
        p.error(f"{source}: expected a finite number of seconds > 0, got {budget}")
    if args.dry_run and os.environ.get("TRITON_INTERPRET") != "1":
        p.error("--dry-run: TRITON_INTERPRET=1 must be set before Triton is imported "
                "(run it as a script: python perf/gpu_report.py --dry-run)")  # fmt: skip
    if not args.dry_run and not torch.cuda.is_available():
        p.error(
            "no CUDA device: this report measures a GPU; on a CPU run --dry-run (the rehearsal)"
        )
    if not args.dry_run and _common.INTERPRET:
        p.error("TRITON_INTERPRET=1 is set: unset it on the GPU (or pass --dry-run)")
    device = torch.device("cpu" if args.dry_run else "cuda")
    sizes = Sizes.dry() if args.dry_run else Sizes.gpu()
    out = args.out or os.environ.get("REPORT_DIR", "").strip() or None
    folder = Path(out) if out else default_folder(device, args.dry_run)
    run = Run(folder, budget, args.dry_run, device, t_start=T_START)
    with contextlib.suppress(OSError):  # a stale tuned file of an earlier run would be merged
        (folder / cache_mod.file_name(run.cache_name)).unlink()
    _route_warnings(run)
    start_watchdog(run, sizes, grace_s=20.0 if args.dry_run else 45.0)
    run.say(f"gpu_report: {run.gpu}, budget {budget:.0f} s, folder {folder.resolve()}"
            + (" (DRY RUN: interpreter, tiny shapes)" if args.dry_run else ""))  # fmt: skip
    environment(run)
    for name, phase in PHASE_FUNCTIONS.items():
        run_phase(run, name, lambda r, dl, phase=phase: phase(r, dl, sizes))
    try:
        summary = phase_report(run, sizes)
    except Exception as e:  # noqa: BLE001 - still print what we have
        run.say(f"report failed: {type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}")
        summary = summary_text(run, sizes, report_files(run))
    check_file_limit(run)
    finish(run, sizes, summary)
    return 0


def _route_warnings(run: Run) -> None:
    """Python warnings go to the log once each, not repeated into the stdout tail."""
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = f"{category.__name__}: {message}"
        if text not in seen:
            seen.add(text)
            with run.lock:
                if not run.finished:
                    run._log_fh.write(f"[warning] {text} ({filename}:{lineno})\n")
                    run._log_fh.flush()

    warnings.showwarning = show


if __name__ == "__main__":
    sys.exit(main())
