"""What every phase of ``make gpu-report`` shares: the run's record and its shapes.

:class:`Run` holds the report folder, the budget, the rows (each written to ``report.csv`` as it
is produced, in the columns ``FIELDS``), the log (``log.txt``, and stdout) and what the tuning
phase leaves for the summary; :class:`Sizes` the shapes of every phase (the GPU's, or tiny ones
for the dry run); ``PHASES`` the phases in the order the runner (perf/gpu_report.py) runs them;
``REPORT_FILES`` the names of the files the report folder may hold; :func:`poisoned` turns
poisoned kernel outputs on for the correctness checks and off for timings. Nothing here runs a
phase or imports one.
"""

from __future__ import annotations

import time

T_START = time.monotonic()  # a run's clock, unless it is given its own start

import contextlib  # noqa: E402
import csv  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import pkgutil  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # perf/bench.py, perf/plot.py, perf/train_step.py

import bench  # noqa: E402
import torch  # noqa: E402
import train_step  # noqa: E402
import triton  # noqa: E402

from triton_qat import autotune  # noqa: E402
from triton_qat.kernels import _common  # noqa: E402

FIELDS = bench.REPORT_FIELDS  # report.csv's columns (perf/train_step.py writes the same)
# max |err| / max |ref| allowed for a GEMM output or gradient against fp64 (tests/conftest.py)
REL_TOL = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
PHASES = ("correctness", "tuning", "benchmark", "train_step")  # in the order they run
COMPILED_CODE = "compiled-layer.py"  # one compiled layer's generated code, kept in the report
# the report folder: at most 8 files (the 8th is the tuned JSON, named after the GPU)
REPORT_FILES = ("report.csv", "log.txt", "summary.md", "layers.png", "kernels.png",
                "train_step.png", COMPILED_CODE)  # fmt: skip


def rel(text: str) -> str:
    return text.replace("torch.", "")


@dataclass
class Sizes:
    """Shapes of every phase: the GPU's, or tiny ones for the dry run."""

    tokens: list[int]  # benchmark token counts; head_tokens is the headline
    head_tokens: int
    pairs: list[tuple[int, int]]  # (K, N), the first is the headline pair
    tune_dtype: torch.dtype
    bench_dtype: torch.dtype
    quant_shape: tuple[int, int]
    linear_shapes: list[tuple[int, int, int]]  # (M, K, N) of the fp64 checks
    warmup: int
    reps: int
    train: train_step.Settings  # the training step's model, batch and step counts
    dtypes: list[torch.dtype] = field(default_factory=lambda: list(DTYPES))

    @classmethod
    def gpu(cls) -> Sizes:
        return cls(tokens=[2048, 8192, 16384], head_tokens=8192,
                   pairs=[(4096, 4096), (4096, 14336), (14336, 4096)], tune_dtype=torch.bfloat16,
                   bench_dtype=torch.bfloat16, quant_shape=(257, 4096),
                   linear_shapes=[(67, 96, 40), (300, 1024, 520)], warmup=10, reps=50,
                   train=train_step.Settings.gpu())  # fmt: skip

    @classmethod
    def dry(cls) -> Sizes:
        return cls(tokens=[16, 32], head_tokens=32, pairs=[(256, 48)], tune_dtype=torch.bfloat16,
                   bench_dtype=torch.float32, quant_shape=(13, 256),
                   linear_shapes=[(13, 128, 40)], warmup=1, reps=3,
                   train=train_step.Settings.dry())  # fmt: skip


class Skipped(Exception):
    """A check that cannot run here (e.g. it needs CUDA): recorded as skipped, never faked."""


# ------------------------------------------------------------------------------------------------
# the run: rows written as produced, log


class Run:
    """One report: its folder, budget, rows, log and what the phases leave for the summary."""

    def __init__(self, folder: Path, budget_s: float, dry_run: bool, device: torch.device,
                 t_start: float | None = None):  # fmt: skip
        """``t_start``: time.monotonic() when the process started (the budget counts from it)."""
        self.folder, self.budget_s, self.dry_run, self.device = folder, budget_s, dry_run, device
        self.t_start = T_START if t_start is None else t_start
        self.lock = threading.RLock()
        self.rows: list[dict] = []
        self.phases: dict[str, dict] = {}
        self.tuning: list[dict] = []  # one per tuned (shape, kernel)
        self.compile_stats: list[dict] = []
        self.tuned_json: Path | None = None
        self.tuned_entries: dict[str, dict] = {}
        self.shipped_json: Path | None = None
        self.finished = False
        folder.mkdir(parents=True, exist_ok=True)
        self.gpu = bench.device_label(device)
        self.cache_name = autotune.device_name(device)
        self.meta = dict(gpu=self.gpu, torch=torch.__version__, triton=triton.__version__,
                         commit=bench.git_commit(),
                         utc=datetime.now(timezone.utc).isoformat(timespec="seconds"))  # fmt: skip
        self.csv_path = folder / "report.csv"
        self.log_path = folder / "log.txt"
        self.summary_path = folder / "summary.md"
        self._csv_fh = open(self.csv_path, "w", newline="")  # noqa: SIM115 - open for the run
        self._csv = csv.DictWriter(self._csv_fh, fieldnames=FIELDS, extrasaction="ignore")
        self._csv.writeheader()
        self._csv_fh.flush()
        self._log_fh = open(self.log_path, "w")  # noqa: SIM115 - open for the run

    def elapsed(self) -> float:
        return time.monotonic() - self.t_start

    def say(self, msg: str) -> None:
        with self.lock:
            line = f"[{self.elapsed():6.1f}s] {msg}"
            print(line, flush=True)
            self._log_fh.write(line + "\n")
            self._log_fh.flush()

    def row(self, **kw) -> dict:
        r = {**self.meta, **kw}
        with self.lock:
            self.rows.append(r)
            self._csv.writerow({k: _fmt(v) for k, v in r.items()})
            self._csv_fh.flush()
        return r

    def close(self) -> None:
        with self.lock:
            for fh in (self._csv_fh, self._log_fh):
                with contextlib.suppress(OSError, ValueError):
                    fh.close()


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}" if math.isfinite(v) else str(v)
    if isinstance(v, torch.dtype):
        return rel(str(v))
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return v


@contextlib.contextmanager
def poisoned(flag: bool):
    """Kernel outputs start as NaN / a sentinel (``TRITON_QAT_POISON``) inside this block or not:
    on for the correctness checks, off for timings (the fill would be timed with the kernels).

    The launchers allocate with ``empty``, bound by name when their module was imported
    (kernels/_common.py: ``torch.empty`` itself unless ``TRITON_QAT_POISON=1`` then), so the
    switch rebinds it in every kernel module holding it; ``_common.POISON`` alone allocates
    nothing differently."""
    package = _common.__name__.rpartition(".")[0]  # triton_qat.kernels
    for info in pkgutil.iter_modules(sys.modules[package].__path__):  # every launcher, loaded
        importlib.import_module(f"{package}.{info.name}")
    allocators = (torch.empty, _common._poisoned_empty)
    holders = [m for name, m in list(sys.modules.items()) if name.startswith(package + ".")
               and m is not None and getattr(m, "empty", None) in allocators]  # fmt: skip
    old = _common.POISON, [(m, m.empty) for m in holders]
    _common.POISON = flag
    for m in holders:
        m.empty = _common._poisoned_empty if flag else torch.empty
    try:
        yield
    finally:
        _common.POISON = old[0]
        for m, empty in old[1]:
            m.empty = empty
