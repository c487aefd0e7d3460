"""GPU truth in one command: correctness, tuning, benchmark and a report, in one folder.

    make gpu-report                                  # python3 perf/gpu_report.py
    BUDGET_S=420 REPORT_DIR=/out make gpu-report     # total wall clock, where the files go
    python perf/gpu_report.py --dry-run              # CPU rehearsal (Triton interpreter, tiny shapes)

Made for a short GPU window (no network, a few result files, the tail of stdout): one process,
four phases, each with its own time limit, checked between items (the rest of a phase is skipped,
and says so, once it is over), inside a total budget (``BUDGET_S``, default 480 s; a watchdog
writes the summary and exits if an item overruns the budget by more than a grace period):

1. correctness (<= 120 s): device checks, each recorded pass / fail / skipped with its message:
   quantize bit-exact against the plain-torch twins and the reference on the same device tensors
   (fp32/fp16/bf16; per-token asym/sym, int4, per-tensor, per-channel, per-group 32/128), torch.ao
   parity against ``prepare_qat`` + ``torch.ao.nn.qat.dynamic.Linear``, what torch does for
   ``x / c`` and for NaN -> int32 on CUDA against what the kernels assume, a non-finite token
   stays in its row, ``tq.Linear`` outputs and gradients against fp64, every GEMM path a tuned
   config may pick (int8 / dequantized forward, TMA / pointer loads, dgrad, wgrad) against fp64,
   ``torch.library.opcheck``
   of the five ops, ``torch.compile(fullgraph=True)`` against eager. Kernel outputs are poisoned
   (``TRITON_QAT_POISON=1``) for these checks and only for them (timings run unpoisoned).
2. tuning (<= 180 s): the curated candidate lists (``autotune/space.py`` ``CURATED``), compiled in
   parallel, at 8192 tokens, bf16, (K, N) = 4096->4096, 4096->14336, 14336->4096, int8 per
   channel and int4 group 128; each tuned config is checked against the default config's output
   and timed against it ("what tuning bought"); the winners go to
   ``autotune/configs/<gpu>__triton-<version>.json`` and a copy in the report folder.
3. benchmark (<= 120 s): ``perf/bench.py``'s layer and kernel benchmarks with the tuned configs.
4. report: ``report.csv`` (every row, written as produced), ``log.txt``, ``summary.md``, the tuned
   JSON, ``tflops.png``, ``speedup.png``, ``kernels.png``; the summary (targets MET / MISSED /
   not measured, correctness counts) is printed last. Nothing is estimated.

``--dry-run`` (``make test`` runs it through tests/test_gpu_report.py) takes the same path on a CPU
with the Triton interpreter: tiny shapes, one config per kernel, a few seconds per phase; checks
that need CUDA are recorded as "skipped: no CUDA"; its numbers say nothing about GPU speed.
"""

from __future__ import annotations

import time

T_START = time.monotonic()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
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

sys.path.insert(0, str(HERE))  # perf/bench.py and perf/plot.py, also when imported by the tests

try:  # the GPU machine brings its own torch and triton; triton_qat is installed from this checkout
    import torch
    import triton

    import triton_qat  # noqa: F401
except ImportError as _e:
    sys.exit(f"perf/gpu_report.py: {_e}. It runs with the python that has torch and triton (PY=... "
             "make gpu-report) and triton_qat installed from this checkout: "
             "python3 -m pip install --no-deps --no-build-isolation -e . (the same python)")  # fmt: skip

import bench  # noqa: E402

import triton_qat as tq  # noqa: E402
from triton_qat import autotune  # noqa: E402
from triton_qat.autotune import cache as cache_mod  # noqa: E402
from triton_qat.autotune.problems import KERNELS, LinearShape, problems  # noqa: E402
from triton_qat.autotune.tune import cuda_index, default_workers, tune  # noqa: E402
from triton_qat.kernels import _common  # noqa: E402

FIELDS = ["phase", "item", "status", "detail", *bench.FIELDS, "config"]
# max |err| / max |ref| allowed for a GEMM output or gradient against fp64 (tests/conftest.py)
REL_TOL = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
PHASE_LIMITS_S = {"correctness": 120.0, "tuning": 180.0, "benchmark": 120.0}
# the rehearsal runs every correctness check (about 10 s of tiny shapes on a 2-core CPU): its
# limit only guards against a hang, so a slow CI machine does not skip the last checks
DRY_PHASE_LIMITS_S = {"correctness": 60.0, "tuning": 6.0, "benchmark": 10.0}
PHASE_SHARES = {"correctness": 0.25, "tuning": 0.375, "benchmark": 0.25}  # of BUDGET_S
REPORT_RESERVE_S = 30.0  # kept for plots and the summary (at most 1/8 of the budget)
MIN_PHASE_S = 1.0  # a phase with less time than this is skipped
MAX_FILES, MAX_FILE_BYTES = 8, 16 * 2**20
SUMMARY_MAX_CHARS = 9000
TARGETS_TEXT = [
    "forward >= 1.4x F.linear at the headline shapes",
    "fwd+bwd >= 1.1x nn.Linear",
    "fwd+bwd >= 1.3x compiled torch ref",
    "fwd+bwd >= 2.5x eager torch ref",
    "never below 0.9x F.linear forward from 2048 tokens up",
    "int8 GEMM >= 80% of torch._int_mm",
    "quantize >= 75% of copy bandwidth",
    "int4 g128 within 15% of per-channel int8",
]


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
    dtypes: list[torch.dtype] = field(default_factory=lambda: list(DTYPES))

    @classmethod
    def gpu(cls) -> Sizes:
        return cls(tokens=[2048, 8192, 16384], head_tokens=8192,
                   pairs=[(4096, 4096), (4096, 14336), (14336, 4096)], tune_dtype=torch.bfloat16,
                   bench_dtype=torch.bfloat16, quant_shape=(257, 4096),
                   linear_shapes=[(67, 96, 40), (300, 1024, 520)], warmup=10, reps=50)  # fmt: skip

    @classmethod
    def dry(cls) -> Sizes:
        return cls(tokens=[16, 32], head_tokens=32, pairs=[(256, 48)], tune_dtype=torch.bfloat16,
                   bench_dtype=torch.float32, quant_shape=(13, 256),
                   linear_shapes=[(13, 128, 40)], warmup=1, reps=3)  # fmt: skip


class Skipped(Exception):
    """A check that cannot run here (e.g. it needs CUDA): recorded as skipped, never faked."""


# ------------------------------------------------------------------------------------------------
# the run: budget, rows written as produced, log


class Run:
    def __init__(self, folder: Path, budget_s: float, dry_run: bool, device: torch.device):
        self.folder, self.budget_s, self.dry_run, self.device = folder, budget_s, dry_run, device
        self.limits = DRY_PHASE_LIMITS_S if dry_run else PHASE_LIMITS_S
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
        return time.monotonic() - T_START

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

    def phase_limit(self, name: str) -> float:
        reserve = min(REPORT_RESERVE_S, self.budget_s / 8)
        left = self.budget_s - self.elapsed() - reserve
        return max(0.0, min(self.limits[name], PHASE_SHARES[name] * self.budget_s, left))

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
    on for the correctness checks, off for timings (the fill would be timed with the kernels)."""
    old = _common.POISON
    _common.POISON = flag
    try:
        yield
    finally:
        _common.POISON = old


def run_phase(run: Run, name: str, fn: Callable[[Run, float], bool]) -> None:
    """Run one phase within its limit; a failure is recorded and the run goes on."""
    limit = run.phase_limit(name)
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


# ------------------------------------------------------------------------------------------------
# correctness checks: plain functions of (device, sizes), returning a detail string or raising


def _gen(device, seed: int = 0) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _data(shape, dtype, device, gen, scale=3.0) -> torch.Tensor:
    """Random rows with one wide-range row and one near-constant row (as tests/test_quantize)."""
    x = torch.randn(shape, device=device, generator=gen) * scale
    x[0, : shape[1] // 3] *= 40
    if shape[0] > 2:
        x[2] = x[2] * 1e-3 + 0.5
    return x.to(dtype)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-equal, NaN where NaN."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
    return torch.equal(a, b)


def _assert_same_fields(got, want, what: str) -> None:
    for name, u, v in zip(got._fields, got, want, strict=True):
        if u is None and v is None:
            continue
        if not _same(u, v):
            diff = (u != v).sum().item() if u.shape == v.shape else "shape"
            raise AssertionError(f"{what} {name}: {diff} of {u.numel()} differ "
                                 f"({u.dtype}{tuple(u.shape)} vs {v.dtype}{tuple(v.shape)})")  # fmt: skip


def _rel_err(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> float:
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}")
    if not torch.isfinite(actual).all():
        raise AssertionError(f"{what}: non-finite values (unwritten output?)")
    a, e = actual.double(), expected.double()
    err = ((a - e).abs().max() / e.abs().max().clamp_min(1e-30)).item() if a.numel() else 0.0
    if err > REL_TOL[dtype]:
        raise AssertionError(f"{what}: relative error {err:.3e} > {REL_TOL[dtype]:.1e}")
    return err


QUANT_CASES = {  # name: (bits, granularity, symmetric, group_size)
    "per_token_asym_i8": (8, "per_token", False, None),
    "per_token_sym_i8": (8, "per_token", True, None),
    "per_token_asym_i4": (4, "per_token", False, None),
    "per_tensor_asym_i8": (8, "per_tensor", False, None),
    "per_tensor_sym_i8": (8, "per_tensor", True, None),
    "per_channel_sym_i8": (8, "per_channel", True, None),
    "per_group32_sym_i4": (4, "per_group", True, 32),
    "per_group128_sym_i4": (4, "per_group", True, 128),
}


def check_quantize(case: str, dtype: torch.dtype, device, sizes: Sizes) -> str:
    """torchao family: the kernel's codes, scales, zero points, masks, code sums and values equal
    the plain-torch twin bit for bit on the same tensors, and tq.fake_quantize (values and its
    STE mask) equals the independent reference."""
    from triton_qat.dispatch import quantize_rows
    from triton_qat.kernels.quantize_torch import quantize_rows_torch
    from triton_qat.reference import fake_quantize_with_mask

    bits, gran, sym, group = QUANT_CASES[case]
    cfg = tq.QuantConfig(bits=bits, granularity=gran, symmetric=sym, group_size=group)
    R, C = sizes.quant_shape
    x = _data((R, C), dtype, device, _gen(device), scale=3.0 if gran != "per_channel" else 0.05)
    if gran != "per_tensor":
        g = group or C
        pack = gran == "per_token"
        args = (x, cfg.qmin, cfg.qmax, g, sym)
        got = quantize_rows(*args, pack_mask=pack, with_y=True)
        want = quantize_rows_torch(*args, pack_mask=pack, with_y=True)
        _assert_same_fields(got, want, "kernel vs twin")
    xg = x.clone().requires_grad_()
    y = tq.fake_quantize(xg, cfg)
    y.backward(torch.ones_like(y))
    y_ref, mask_ref = fake_quantize_with_mask(x, cfg)
    if not _same(y.detach(), y_ref):
        raise AssertionError(f"fake_quantize vs reference: {(y != y_ref).sum().item()} differ")
    if not torch.equal(xg.grad != 0, mask_ref):
        raise AssertionError("STE mask vs reference differs")
    return f"{R}x{C} bit-exact (kernel = twin = reference)"


def check_nonfinite_token(bad: float, symmetric: bool, device, sizes: Sizes) -> str:
    """A NaN / inf token changes only its own row, and that row is what the reference says."""
    from triton_qat.dispatch import quantize_rows
    from triton_qat.kernels.quantize_torch import quantize_rows_torch

    C = 24
    x = _data((5, C), torch.float32, device, _gen(device, 1))
    x[3, 7] = bad
    args = (-128, 127, C, symmetric)
    got = quantize_rows(x, *args, pack_mask=True, with_y=True)
    clean = quantize_rows(torch.cat([x[:3], x[4:]]), *args, pack_mask=True, with_y=True)
    keep = [0, 1, 2, 4]
    if not (torch.equal(got.y[keep], clean.y) and torch.equal(got.codes[keep], clean.codes)):
        raise AssertionError("other rows changed")
    want = quantize_rows_torch(x, *args, pack_mask=True, with_y=True)
    if not (_same(got.y, want.y) and torch.isnan(got.y[3]).any()):
        raise AssertionError("the non-finite row differs from the twin (or hides the NaN)")
    if not torch.equal(got.mask, want.mask):
        raise AssertionError("mask differs from the twin")
    lin = tq.Linear(C, 16, device=device)
    xl = torch.randn(6, C, device=device, generator=_gen(device, 2))
    xl[2, 5] = bad
    xl.requires_grad_()
    out = lin(xl)
    rows = [0, 1, 3, 4, 5]
    if not torch.equal(out[rows], lin(xl.detach()[rows])) or torch.isfinite(out[2]).all():
        raise AssertionError("tq.Linear: the bad token leaked into other rows or was hidden")
    out[rows].sum().backward()
    if not torch.isfinite(xl.grad[rows]).all():
        raise AssertionError("tq.Linear: non-finite gradient in clean rows")
    return "row-local in quantize and tq.Linear"


# -NaN by its bits in each dtype (x86's default NaN has its sign bit set)
NEG_NAN_BITS = {torch.float32: (-4194304, torch.int32), torch.float16: (-512, torch.int16),
                torch.bfloat16: (-64, torch.int16)}  # fmt: skip


def check_negative_nan(dtype: torch.dtype, device, sizes: Sizes) -> str:
    """A NaN with its sign bit set among positive values (per token with a bit mask, and in
    groups of 32) makes its row's scale and values NaN, as in the twin: the kernel's 16-bit row
    maxima are widened keeping a NaN's sign, which the GPU's fp16 -> fp32 conversion drops."""
    from triton_qat.dispatch import quantize_rows
    from triton_qat.kernels.quantize_torch import quantize_rows_torch

    x = _data((4, 64), dtype, device, _gen(device, 3)).abs()
    value, int_dtype = NEG_NAN_BITS[dtype]
    x[1, 5] = torch.tensor([value], dtype=int_dtype).view(dtype)[0].to(device)
    for group in (64, 32):
        args = (x, -128, 127, group, False)
        got = quantize_rows(*args, pack_mask=group == 64, with_y=True)
        _assert_same_fields(got, quantize_rows_torch(*args, pack_mask=group == 64, with_y=True),
                            f"group {group}: kernel vs twin")  # fmt: skip
        if not torch.isnan(got.scale[1, 0]):
            raise AssertionError(f"group {group}: the -NaN row got a finite scale")
    return "row scale and values NaN, = twin"


LINEAR_CASES = {  # activation, weight
    "default": (tq.QuantConfig(), tq.QuantConfig(granularity="per_channel", symmetric=True)),
    "sym_act_i4g32": (
        tq.QuantConfig(symmetric=True),
        tq.QuantConfig(bits=4, granularity="per_group", group_size=32, symmetric=True),
    ),
    "per_tensor": (
        tq.QuantConfig(granularity="per_tensor"),
        tq.QuantConfig(granularity="per_tensor", symmetric=True),
    ),
    "i4g128": (
        tq.QuantConfig(),
        tq.QuantConfig(bits=4, granularity="per_group", group_size=128, symmetric=True),
    ),
}


def check_linear_fp64(case: str, dtype, shape, device, sizes: Sizes) -> str:
    """tq.Linear forward and all gradients against F.linear in fp64 over the same fake-quantized
    values with the STE masks (tests/test_linear.py), within REL_TOL."""
    import torch.nn.functional as F

    from triton_qat.reference import fake_quantize_with_mask

    act, wcfg = LINEAR_CASES[case]
    M, K, N = shape
    if wcfg.granularity == "per_group" and K % wcfg.group_size:
        raise Skipped(f"group {wcfg.group_size} does not divide K={K}")
    torch.manual_seed(0)
    lin = tq.Linear(K, N, activation=act, weight=wcfg, device=device, dtype=dtype)
    x = (torch.randn(M, K, device=device, generator=_gen(device, 3)) * 2).to(dtype)
    x.requires_grad_()
    out = lin(x)
    dy = torch.randn(out.shape, device=device, generator=_gen(device, 4)).to(dtype)
    out.backward(dy)
    x_fq, mx = fake_quantize_with_mask(x.detach(), act)
    w_fq, mw = fake_quantize_with_mask(lin.weight.detach(), wcfg)
    xd = x_fq.double().requires_grad_()
    wd = w_fq.double().requires_grad_()
    bd = lin.bias.detach().double().requires_grad_()
    ref = F.linear(xd, wd, bd)
    ref.backward(dy.double())
    if out.dtype != dtype:
        raise AssertionError(f"output dtype {out.dtype} != {dtype}")
    errs = [_rel_err(out, ref, dtype, "out"), _rel_err(x.grad, xd.grad * mx, dtype, "grad_x"),
            _rel_err(lin.weight.grad, wd.grad * mw, dtype, "grad_w"),
            _rel_err(lin.bias.grad, bd.grad, dtype, "grad_bias")]  # fmt: skip
    return f"{M}x{K}->{N} max rel err {max(errs):.2e} (tol {REL_TOL[dtype]:.1e})"


def check_ao_parity(name: str, device, sizes: Sizes) -> str:
    """torch.ao family: tq.Linear(qconfig=...) trains like prepare_qat with
    torch.ao.nn.qat.dynamic.Linear: outputs, gradients, observer state bit-identical per step."""
    import copy

    import torch.ao.nn.qat.dynamic as aoqat
    import torch.ao.quantization as q
    from torch import nn

    qconfigs = {
        "dynamic_default": q.default_dynamic_qat_qconfig,
        "per_channel_weight": q.QConfig(activation=q.default_dynamic_qat_qconfig.activation,
                                        weight=q.default_per_channel_weight_fake_quant),
    }  # fmt: skip
    qconfig = qconfigs[name]
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(40, 24)).to(device)
    ref = copy.deepcopy(base)
    ref[0].qconfig = qconfig
    ref = q.prepare_qat(ref, mapping={nn.Linear: aoqat.Linear})
    ours = copy.deepcopy(base)
    ours[0].qconfig = qconfig
    ours[0] = tq.Linear.from_float(ours[0])
    if set(ours.state_dict()) != set(ref.state_dict()):
        raise AssertionError("state_dict keys differ")
    gen = _gen(device, 5)
    for step in range(3):
        x = torch.randn(13, 40, device=device, generator=gen) * (1 + step)
        y_r, y_o = ref(x), ours(x)
        torch.testing.assert_close(y_o, y_r, rtol=2e-5, atol=1e-5)
        y_r.square().sum().backward()
        y_o.square().sum().backward()
        for (n, p_r), p_o in zip(ref.named_parameters(), ours.parameters(), strict=True):
            torch.testing.assert_close(p_o.grad, p_r.grad, rtol=2e-4, atol=1e-5, msg=n)
        mine = ours.state_dict()
        for k, v in ref.state_dict().items():
            if ("fake_quant" in k or "activation_post_process" in k) and not torch.equal(
                mine[k].reshape(v.shape), v
            ):
                raise AssertionError(f"step {step}: observer state {k} differs")
        for m in (ref, ours):
            m.zero_grad()
    return "3 steps: outputs/grads close, observer state bit-identical"


def check_gemm_paths(dtype, device, sizes: Sizes) -> str:
    """Every GEMM code path a tuned config may pick, each against fp64 products of the same
    fake-quantized values (tests/test_gemm.py): the forward's int8 path (per channel; int4 group
    32) and its dequantized path, and dgrad / wgrad, each with TMA loads and with pointer loads.
    On an sm_90 GPU also the Gluon int8 forward (per channel, ``GLUON``), which must give the
    Triton kernel's bits at the same tile (with and without a bias, both activation kinds)."""
    from triton_qat import autotune
    from triton_qat.autotune.space import CURATED, fit_config
    from triton_qat.dispatch import quantize_rows
    from triton_qat.kernels import gemm_backward
    from triton_qat.kernels.gemm_int8 import int8_linear
    from triton_qat.kernels.gemm_int8_gluon import gluon_device
    from triton_qat.kernels.quantize_torch import unpack_bits

    M, K, N = sizes.linear_shapes[-1]
    if K % 32:
        raise Skipped(f"K={K} is not a multiple of the group 32")
    g = _gen(device, 8)
    x = (torch.randn(M, K, device=device, generator=g) * 2).to(dtype)
    w = (torch.randn(N, K, device=device, generator=g) * 0.1).to(dtype)
    dy = torch.randn(M, N, device=device, generator=g).to(dtype)
    qa = quantize_rows(x, -128, 127, K, False, pack_mask=True, with_y=True)
    dq = autotune.dequantize_config(M, K, device, dtype)
    errs = {}
    for group, bits in ((K, 8), (32, 4)):
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        qw = quantize_rows(w, lo, hi, group, True, pack_mask=False, with_y=True, group_major=True)
        ref = qa.y.double() @ qw.y.double().T
        base = autotune.gemm_config("fwd", M, N, K, device, dtype, group)
        for dequant in (0, 1) if group != K else (0,):
            for tma in (0, 1):
                cfg = fit_config("fwd", {**base, "DEQUANT": dequant, "TMA": tma}, K, group)
                out = int8_linear(qa.codes, qa.scale, qa.zero_point, qw.codes, qw.scale,
                                  qw.code_sum, None, dtype, asymmetric=True, config=cfg,
                                  dequant_config=dq)  # fmt: skip
                what = f"fwd g{group} {'dequant' if dequant else 'int8'} tma{tma}"
                errs[what] = _rel_err(out, ref, dtype, what)
        if group == K and gluon_device(device):
            gcfg = next(c for c in CURATED["fwd"] if c.get("GLUON"))
            bias = torch.randn(N, device=device, generator=g).to(dtype)
            for sym in (False, True):
                qs = quantize_rows(x, -128, 127, K, sym, pack_mask=True, with_y=True)
                args = (qs.codes, qs.scale, qs.zero_point, qw.codes, qw.scale, qw.code_sum)
                for b in (None, bias):
                    got, want = (int8_linear(*args, b, dtype, asymmetric=not sym,
                                             config={**gcfg, "GLUON": glu}) for glu in (1, 0))  # fmt: skip
                    if not _same(got, want):
                        raise AssertionError(f"Gluon forward (sym={sym}, bias={b is not None}) "
                                             "differs from the Triton kernel's bits")  # fmt: skip
            errs["fwd gluon"] = _rel_err(got, qs.y.double() @ qw.y.double().T + bias.double(),
                                         dtype, "fwd gluon")  # fmt: skip
    qw = quantize_rows(w, -128, 127, K, True, pack_mask=False, with_y=True)
    keep_x = unpack_bits(qa.mask, K).double()
    for tma in (0, 1):
        cd = {**autotune.gemm_config("dgrad", M, N, K, device, dtype), "TMA": tma}
        cw = {**autotune.gemm_config("wgrad", M, N, K, device, dtype), "TMA": tma}
        got = gemm_backward.dgrad(dy, qw.y, qa.mask, config=cd)
        errs[f"dgrad tma{tma}"] = _rel_err(got, (dy.double() @ qw.y.double()) * keep_x, dtype,
                                           f"dgrad tma{tma}")  # fmt: skip
        got = gemm_backward.wgrad(dy, qa.y, qw.mask, config=cw)
        ref = (dy.double().T @ qa.y.double()) * qw.mask.double()
        errs[f"wgrad tma{tma}"] = _rel_err(got, ref, dtype, f"wgrad tma{tma}")
    worst = max(errs, key=errs.get)
    return f"{M}x{K}->{N}: {len(errs)} paths, worst {worst} {errs[worst]:.2e} (tol {REL_TOL[dtype]:.1e})"


def check_division(device, sizes: Sizes) -> str:
    """What CUDA torch computes for ``x / c`` with a Python-float c (the scale's division by
    qmax - qmin), against the kernels' assumption: a multiply by the fp32 reciprocal on CUDA
    (kernels/quantize.py ``DIV_BY_RECIP=x.is_cuda``), a true division on the CPU."""
    if device.type != "cuda":
        raise Skipped("no CUDA")
    import inspect

    from triton_qat.kernels import quantize as kq

    assumed = "DIV_BY_RECIP=x.is_cuda" in inspect.getsource(kq.quantize_rows)
    x32 = torch.randn(1 << 20, device=device, generator=_gen(device, 6)) * 100
    recip_total = true_total = 0
    for dt in DTYPES:
        x = x32.to(dt)
        for c in (255.0, 127.5, 15.0, 7.5):
            got = x / c
            r = torch.ones((), device=device) / torch.full((), c, device=device)  # IEEE 1/c
            by_recip = (x.float() * r).to(dt)
            true_div = (x.float() / torch.full_like(x.float(), c)).to(dt)
            recip_total += int((got != by_recip).sum())
            true_total += int((got != true_div).sum())
    torch_does = (
        "reciprocal" if recip_total == 0 else ("true division" if true_total == 0 else "neither")
    )
    detail = (f"CUDA torch x / c: {torch_does} (differs from reciprocal-multiply in {recip_total}, "
              f"from true division in {true_total} of {3 * 4 << 20}); kernel assumes "
              f"{'reciprocal on CUDA' if assumed else 'unknown (launcher changed)'}")  # fmt: skip
    if not assumed:
        raise AssertionError(detail)
    if torch_does != "reciprocal":
        raise AssertionError(detail)
    if true_total == 0:
        detail += " (not discriminating: both agree on these values)"
    return detail


def check_nan_cast(device, sizes: Sizes) -> str:
    """torch's NaN -> int32 cast on CUDA (the zero point of a row whose min is -inf) against
    ``NAN_ZERO_POINT['cuda']`` in kernels/quantize.py, and the kernel's zero point of such a row."""
    if device.type != "cuda":
        raise Skipped("no CUDA")
    from triton_qat.dispatch import quantize_rows
    from triton_qat.kernels.quantize import NAN_ZERO_POINT

    torch_cast = torch.tensor([float("nan")], device=device).to(torch.int32).item()
    assumed = NAN_ZERO_POINT["cuda"]
    x = torch.tensor([[-float("inf"), 1.0, -3.0, 0.5]], device=device)
    kernel_zp = quantize_rows(x, -128, 127, 4, False, pack_mask=True, with_y=True).zero_point.item()
    detail = f"torch CUDA NaN->int32 = {torch_cast}; NAN_ZERO_POINT['cuda'] = {assumed}; kernel zp of a -inf row = {kernel_zp}"
    if not torch_cast == assumed == kernel_zp:
        raise AssertionError(detail)
    return detail


def check_poison(device, sizes: Sizes) -> str:
    """Kernel outputs are poisoned in this phase, so an element a kernel forgets to write cannot
    pass a comparison (TRITON_QAT_POISON=1 set before triton_qat was imported, as in the tests)."""
    t = _common.new_empty((4, 4), torch.float32, device)
    if not (_common.POISON and torch.isnan(t).all()):
        raise AssertionError(f"outputs not poisoned (POISON={_common.POISON})")
    return "outputs start as NaN / 0x5A"


OPS = ("quantize", "fake_quantize", "int8_linear", "qat_linear", "qat_linear_backward")
GRAD_OPS = {"fake_quantize", "qat_linear"}  # opcheck'd with float inputs requiring grad


def _record_op_calls(device) -> dict[str, tuple]:
    """The first call of each triton_qat op made by the public API (tq.Linear forward/backward,
    tq.fake_quantize, tq.convert + QuantizedLinear), as (args, kwargs): opcheck then runs with
    the arguments the library really passes, whatever the ops' signatures are today."""
    from torch.utils._python_dispatch import TorchDispatchMode

    calls: dict[str, tuple] = {}

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            ns = getattr(func, "namespace", "")
            name = func.__name__.split(".")[0]
            public = ns == "triton_qat" and not name.endswith("_opaque")  # not the CPU twins
            if public and name not in calls:
                keep = lambda a: a.detach().clone() if isinstance(a, torch.Tensor) else a  # noqa: E731
                calls[name] = (torch.utils._pytree.tree_map(keep, args),
                               torch.utils._pytree.tree_map(keep, kwargs))  # fmt: skip
            return func(*args, **kwargs)

    gen = _gen(device, 7)
    lin = tq.Linear(40, 24, device=device)
    x = torch.randn(2, 7, 40, device=device, generator=gen, requires_grad=True)
    with Recorder():
        lin(x).sum().backward()
        xf = torch.randn(13, 40, device=device, generator=gen, requires_grad=True)
        tq.fake_quantize(xf, tq.QuantConfig()).sum().backward()
        lin.eval()
        tq.convert(lin)(x.detach())
    return calls


def check_opcheck(op_name: str, calls: dict, device, sizes: Sizes) -> str:
    """torch.library.opcheck (schema, fake tensor, autograd registration, AOT dispatch) of one op,
    with the arguments the public API passed it."""
    if op_name not in calls:
        raise AssertionError(
            f"the public API never called triton_qat::{op_name} (recorded: {sorted(calls)})"
        )
    args, kwargs = calls[op_name]
    if op_name in GRAD_OPS:
        args = tuple(a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point()
                     else a for a in args)  # fmt: skip
    op = getattr(torch.ops.triton_qat, op_name)
    torch.library.opcheck(op, args, kwargs)
    return "opcheck passed"


def check_compile(dtype, device, sizes: Sizes, mode: str | None = None) -> str:
    """torch.compile(fullgraph=True) of a 2-layer tq.Linear MLP: forward bit-equal to eager,
    gradients close, one graph, no graph breaks (tests/test_ops.py). ``mode="reduce-overhead"``:
    the same under CUDA graphs, which must not be skipped on a GPU (no host sync, no CPU tensor
    in the ops)."""
    from torch import nn
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = nn.Sequential(tq.Linear(32, 64, device=device, dtype=dtype), nn.ReLU(),
                          tq.Linear(64, 16, device=device, dtype=dtype))  # fmt: skip
    compiled = torch.compile(model, fullgraph=True, mode=mode)

    def step(m, x):
        out = m(x)
        out.square().mean().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        return out.detach().clone(), grads  # a CUDA graph's output is overwritten by its next run

    gen = _gen(device, 8)
    # CUDA graphs: call 1 warms up, call 2 records and replays, calls 3+ copy new inputs into
    # the graph's buffers and replay (the path a benchmark times)
    for _ in range(2 if mode is None else 4):
        x = torch.randn(5, 9, 32, device=device, generator=gen).to(dtype).requires_grad_()
        e_out, e_grads = step(model, x)
        c_out, c_grads = step(compiled, x)
        torch.testing.assert_close(c_out, e_out, rtol=0, atol=0)
        for g, e in zip(c_grads, e_grads, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-5 if dtype == torch.float32 else 1e-2,
                                       atol=1e-6)  # fmt: skip
    graphs = counters["stats"]["unique_graphs"]
    if graphs != 1 or counters["graph_break"]:
        raise AssertionError(
            f"unique_graphs={graphs}, graph breaks {dict(counters['graph_break'])}"
        )
    if mode is None:
        return "fullgraph forward equal, grads close, 1 graph"
    skips = counters["inductor"]["cudagraph_skips"]  # a count; TORCH_LOGS=perf_hints says why
    if device.type == "cuda" and skips:
        raise AssertionError(f"CUDA graphs skipped {skips} time(s) (TORCH_LOGS=perf_hints: why)")
    ran = "CUDA graphs" if device.type == "cuda" else "no CUDA graphs on a CPU"
    return f"{mode}: forward equal, grads close, 1 graph, {ran}"


COMPILED_CODE = "compiled-layer.py"  # one compiled layer's generated code, kept in the report


def check_compiled_launches(device, sizes: Sizes, code_path: Path) -> str:
    """torch.compile(fullgraph=True) of one bf16 tq.Linear forward+backward (default configs):
    on a GPU Inductor's generated code launches triton_qat's kernels itself (the ops are
    ``triton_op``s, decomposed while tracing) and calls no triton_qat op; elsewhere it calls the
    opaque ``*_opaque`` ops. The generated code is written to ``code_path`` (issue 27)."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    (_, K, N) = sizes.linear_shapes[-1]
    layer = tq.Linear(K, N, device=device, dtype=dtype)
    compiled = torch.compile(layer, fullgraph=True)
    x = torch.randn(64, K, device=device, dtype=dtype, requires_grad=True)

    def step():
        compiled(x).float().square().sum().backward()

    _, codes = run_and_get_code(step)
    code = "\n\n# ---- next graph ----\n\n".join(codes)
    code_path.write_text(code)
    calls_ops = "torch.ops.triton_qat" in code
    names = ("_quantize_rows_kernel", "_int8_linear_kernel", "_float_mm_kernel",
             "_dequantize_kernel")  # fmt: skip
    launched = [n for n in names if n in code]
    if device.type == "cuda":
        if calls_ops or len(launched) < len(names):
            raise AssertionError(f"generated code calls triton_qat ops: {calls_ops}; launches "
                                 f"{launched} of {list(names)} (see {code_path.name})")  # fmt: skip
        return f"{len(codes)} graphs launch {', '.join(launched)}; no triton_qat op called"
    if not calls_ops:
        raise AssertionError(f"CPU: the opaque ops are missing (see {code_path.name})")
    return f"{len(codes)} graphs call the opaque ops (CPU); code in {code_path.name}"


def _group_fits(wcfg, K: int) -> bool:
    return wcfg.granularity != "per_group" or K % wcfg.group_size == 0


def correctness_checks(device, sizes: Sizes, folder: Path) -> tuple[list, list]:
    """(parallel, serial) lists of (name, fn). Kernel checks may run in threads on a GPU (their
    first launches compile in parallel); opcheck and torch.compile run one at a time after them.
    Within each list the first check of every kind comes first, so a phase stopped by its time
    limit has still tried each kind once."""
    d = lambda t: rel(str(t)).replace("float", "fp").replace("bfp", "bf")  # noqa: E731
    groups = [
        [("poisoned_outputs", lambda: check_poison(device, sizes))],
        [("nan_to_int32_cast_cuda", lambda: check_nan_cast(device, sizes))],
        [("division_by_python_scalar_cuda", lambda: check_division(device, sizes))],
        [(f"quantize_bitexact[{case},{d(dt)}]", lambda c=case, t=dt: check_quantize(c, t, device, sizes))
         for case in QUANT_CASES for dt in sizes.dtypes],
        [(f"nonfinite_token_row[{b},{'sym' if s else 'asym'}]",
          lambda b=b, s=s: check_nonfinite_token(float(b), s, device, sizes))
         for b in ("nan", "inf", "-inf") for s in (False, True)],
        [(f"negative_nan_row[{d(dt)}]", lambda t=dt: check_negative_nan(t, device, sizes))
         for dt in sizes.dtypes],
        [(f"linear_vs_fp64[{case},{d(dt)},{M}x{K}->{N}]",
          lambda c=case, t=dt, sh=(M, K, N): check_linear_fp64(c, t, sh, device, sizes))
         for (M, K, N) in sizes.linear_shapes for case in LINEAR_CASES for dt in sizes.dtypes
         if _group_fits(LINEAR_CASES[case][1], K)],
        [(f"torch_ao_parity[{n}]", lambda n=n: check_ao_parity(n, device, sizes))
         for n in ("dynamic_default", "per_channel_weight")],
        [(f"gemm_paths_vs_fp64[{d(dt)}]", lambda t=dt: check_gemm_paths(t, device, sizes))
         for dt in sizes.dtypes],
    ]  # fmt: skip
    calls: dict = {}

    def opcheck(name):
        if not calls:
            calls.update(_record_op_calls(device))
        return check_opcheck(name, calls, device, sizes)

    serial_groups = [
        [(f"opcheck[{op}]", lambda op=op: opcheck(op)) for op in OPS],
        [(f"compile_fullgraph[{d(dt)}]", lambda t=dt: check_compile(t, device, sizes))
         for dt in ([torch.float32, torch.bfloat16] if device.type == "cuda" else [torch.float32])],
        [("compile_cudagraphs[bf16]",
          lambda: check_compile(torch.bfloat16, device, sizes, mode="reduce-overhead"))],
        [("compiled_code_launches_kernels",
          lambda: check_compiled_launches(device, sizes, folder / COMPILED_CODE))],
    ]  # fmt: skip
    return _breadth_first(groups), _breadth_first(serial_groups)


def _breadth_first(groups: list[list]) -> list:
    out = []
    for i in range(max(len(g) for g in groups)):
        out += [g[i] for g in groups if i < len(g)]
    return out


def run_check(run: Run, name: str, fn: Callable[[], str], deadline: float) -> None:
    if time.monotonic() > deadline:
        run.row(
            phase="correctness", item=name, status="skipped", detail="skipped: phase time limit"
        )
        return
    t0 = time.monotonic()
    try:
        detail, status = fn(), "pass"
    except Skipped as e:
        detail, status = f"skipped: {e}", "skipped"
    except Exception as e:  # noqa: BLE001 - recorded, never aborts the run
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        detail, status = f"{type(e).__name__}: {first[:400]}", "fail"
    secs = time.monotonic() - t0
    run.row(phase="correctness", item=name, status=status, detail=detail, metric="seconds",
            value=secs, backend=tq.backend(run.device))  # fmt: skip
    run.say(f"{status.upper():<7} {name} ({secs:.1f} s): {detail}")


def phase_correctness(run: Run, deadline: float, sizes: Sizes, workers: int | None = None) -> bool:
    """Every check, recorded as it finishes. On a GPU the kernel checks run ``workers`` at a time
    (default: one per core) so their first launches compile in parallel; the interpreter is not
    thread-safe, so elsewhere the default is one at a time."""
    parallel, serial = correctness_checks(run.device, sizes, run.folder)
    if workers is None:
        workers = default_workers() if run.device.type == "cuda" else 1
    with poisoned(True):
        if workers > 1:
            index = cuda_index(run.device)  # set_device needs an index; threads start on 0
            # the first checks (poison, NaN cast: one quantize launch) run on this thread, so
            # Triton's driver and launcher helpers are set up before the pool starts
            for name, fn in parallel[:2]:
                run_check(run, name, fn, deadline)

            def task(item):
                if index is not None:
                    torch.cuda.set_device(index)
                run_check(run, item[0], item[1], deadline)

            with ThreadPoolExecutor(workers, thread_name_prefix="gpu_report-check") as pool:
                list(pool.map(task, parallel[2:]))
        else:
            for name, fn in parallel:
                run_check(run, name, fn, deadline)
        for name, fn in serial:
            run_check(run, name, fn, deadline)
    return any(r.get("phase") == "correctness" and r.get("detail") == "skipped: phase time limit"
               for r in run.rows)  # fmt: skip


# ------------------------------------------------------------------------------------------------
# tuning


def tuning_plan(sizes: Sizes) -> list[tuple[LinearShape, tuple[str, ...]]]:
    """Headline shape first (all kernels, then its int4 g128 forward and weight quantize, and its
    int4 g32 forward: both per-group forwards time the int8 and the dequantized path), then the
    other (K, N) pairs; per-group shares dgrad / wgrad / quantize_x keys with per channel."""
    M, dt = sizes.head_tokens, sizes.tune_dtype
    plan = []
    for i, (K, N) in enumerate(sizes.pairs):
        plan.append((LinearShape(M, K, N, dt), KERNELS))
        if K % 128 == 0:
            plan.append((LinearShape(M, K, N, dt, 4, 128), ("fwd", "quantize_w")))
        if i == 0 and K % 32 == 0:
            plan.append((LinearShape(M, K, N, dt, 4, 32), ("fwd",)))
    return plan


def _flatten(out) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, tuple | list):
        return [t for o in out for t in _flatten(o)]
    return []


def outputs_agree(a, b, dtype) -> str | None:
    """None if the outputs of two configs of one kernel agree (integers exactly; floats NaN where
    NaN and within REL_TOL of the larger magnitude: GEMMs may sum in another order), else what
    differs."""
    ta, tb = _flatten(a), _flatten(b)
    if len(ta) != len(tb):
        return f"{len(ta)} outputs vs {len(tb)}"
    tol = REL_TOL.get(dtype, REL_TOL[torch.bfloat16])
    for i, (u, v) in enumerate(zip(ta, tb, strict=True)):
        if u.shape != v.shape or u.dtype != v.dtype:
            return f"output {i}: {u.dtype}{tuple(u.shape)} vs {v.dtype}{tuple(v.shape)}"
        if not u.is_floating_point():
            if not torch.equal(u, v):
                return f"output {i}: {(u != v).sum().item()} of {u.numel()} integers differ"
            continue
        if not torch.equal(u.isnan(), v.isnan()):
            return f"output {i}: NaN positions differ"
        if u.numel() == 0:
            continue
        ud, vd = u.nan_to_num().double(), v.nan_to_num().double()
        err = ((ud - vd).abs().max() / vd.abs().max().clamp_min(1e-30)).item()
        if err > tol:
            return f"output {i}: relative difference {err:.2e} > {tol:.1e}"
    return None


def phase_tuning(run: Run, deadline: float, sizes: Sizes) -> bool:
    """Tune each planned shape, check each tuned config against the default config's output,
    record default vs tuned times, and write the JSON after every shape."""
    name = run.cache_name
    run.tuned_json = run.folder / cache_mod.file_name(name)
    if not run.dry_run:
        run.shipped_json = cache_mod.SHIPPED_DIR / cache_mod.file_name(name)
    done_keys: set[str] = set()
    stopped = False
    with poisoned(False):
        for s, kernels in tuning_plan(sizes):
            if time.monotonic() > deadline:
                stopped = True
                run.row(phase="tuning", item=s.label, status="skipped",
                        detail="skipped: phase time limit", M=s.M, K=s.K, N=s.N)  # fmt: skip
                run.say(f"tuning {s.label}: skipped (phase time limit)")
                continue
            stats: dict = {}
            t0 = time.monotonic()
            try:
                results = tune(s, run.device, kernels, store=False, curated=True,
                               deadline=deadline, skip_keys=done_keys, stats=stats)  # fmt: skip
            except Exception as e:  # noqa: BLE001 - e.g. out of memory: the next shape runs
                msg = f"{type(e).__name__}: {str(e).strip()[:300]}"
                run.row(phase="tuning", item=s.label, status="fail", detail=msg, M=s.M, K=s.K,
                        N=s.N)  # fmt: skip
                run.say(f"tuning {s.label}: FAILED {msg}")
                if run.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            secs = time.monotonic() - t0
            if stats.get("launches"):
                stats["shape"] = s.label
                run.compile_stats.append(stats)
                par = stats["sum_s"] / stats["wall_s"] if stats["wall_s"] > 0 else float("nan")
                run.row(phase="tuning", item=f"{s.label} compile", status="done", metric="compile_wall_s",
                        value=stats["wall_s"], detail=f"{stats['launches']} first launches on "
                        f"{stats['workers']} threads; sum of launch times {stats['sum_s']:.1f} s "
                        f"({par:.1f}x parallel)", M=s.M, K=s.K, N=s.N)  # fmt: skip
            registry = problems(s, run.device) if results else {}
            entries = {}
            for kernel, r in results.items():
                done_keys.add(r["key"])
                agree = None
                if r["config"] != r["default_config"] and r["default_ms"] is None:
                    run.row(phase="tuning", item=f"tuned_agrees_with_default[{s.label},{kernel}]",
                            status="skipped", detail="skipped: the default config did not run",
                            kernel=kernel, M=s.M, K=s.K, N=s.N, config=r["config"])  # fmt: skip
                elif r["config"] != r["default_config"]:
                    prob = registry[kernel]
                    try:
                        agree = outputs_agree(prob.launch(r["config"]),
                                              prob.launch(r["default_config"]), s.dtype)  # fmt: skip
                    except Exception as e:  # noqa: BLE001
                        agree = f"{type(e).__name__}: {e}"
                    status = "pass" if agree is None else "fail"
                    run.row(phase="tuning", item=f"tuned_agrees_with_default[{s.label},{kernel}]",
                            status=status, detail=agree or "outputs agree", kernel=kernel,
                            M=s.M, K=s.K, N=s.N, config=r["config"])  # fmt: skip
                    if agree is not None:  # never ship a config that computes something else
                        run.say(f"FAIL tuned {kernel} at {s.label} disagrees with the default: "
                                f"{agree}; keeping the default")  # fmt: skip
                        r = {**r, "config": r["default_config"], "ms": r["default_ms"]}
                gain = r["default_ms"] / r["ms"] if r["default_ms"] and r["ms"] > 0 else None
                rec = dict(shape=s.label, kernel=kernel, default_ms=r["default_ms"], ms=r["ms"],
                           gain=gain, tried=r["tried"], candidates=r["candidates"],
                           failed=r["failed"], complete=r["complete"], config=r["config"],
                           by_path=r.get("by_path", {}))  # fmt: skip
                run.tuning.append(rec)
                common = dict(phase="tuning", item=f"{s.label} {kernel}", kernel=kernel, M=s.M,
                              K=s.K, N=s.N, dtype=s.dtype, backend=tq.backend(run.device))  # fmt: skip
                status = "done" if r["complete"] else "partial"
                detail = (f"{r['tried']} of {r['candidates']} configs timed, {r['failed']} failed"
                          + ("" if r["complete"] else ", stopped at the phase limit"))  # fmt: skip
                if r["default_ms"] is not None:
                    run.row(**common, status=status, provider="untuned default", metric="ms",
                            value=r["default_ms"], config=r["default_config"], detail=detail)  # fmt: skip
                run.row(**common, status=status, provider="tuned", metric="ms", value=r["ms"],
                        config=r["config"], detail=detail)  # fmt: skip
                if gain is not None:
                    run.row(**common, status=status, provider="tuned", metric="tuning_gain",
                            value=gain, detail="untuned default ms / tuned ms")  # fmt: skip
                for path, ms in r.get("by_path", {}).items():  # the per-group forward's decision
                    run.row(**common, status=status, provider=f"{path} path (fastest)", metric="ms",
                            value=ms, detail="the forward path's fastest timed config")  # fmt: skip
                entries[r["key"]] = {"config": r["config"], "ms": round(r["ms"], 5),
                                     "tried": r["tried"]}  # fmt: skip
                d = f"{r['default_ms']:.4f}" if r["default_ms"] is not None else "failed"
                run.say(f"tuned {s.label:<22} {kernel:<10} default {d} ms -> {r['ms']:.4f} ms "
                        f"({gain:.2f}x)  {r['config']}" if gain else
                        f"tuned {s.label:<22} {kernel:<10} {r['ms']:.4f} ms  {r['config']}")  # fmt: skip
            if entries:
                try:
                    write_tuned(run, entries)
                except (OSError, ValueError) as e:
                    run.row(phase="tuning", item=f"{s.label} write", status="fail",
                            detail=f"{type(e).__name__}: {e}")  # fmt: skip
                    run.say(f"tuning {s.label}: could not write the tuned configs: {e}")
            run.say(f"tuning {s.label}: {len(results)} kernel(s) in {secs:.1f} s")
            if any(not r["complete"] for r in results.values()):
                stopped = True
    return stopped


def write_json(path: Path, device_name: str, entries: dict) -> None:
    """``entries`` as a cache file (autotune/cache.py's format), written atomically with no lock
    file beside it (the report folder holds at most 8 files), and read back through the cache's
    own validation: every entry must survive it."""
    payload = {
        "version": cache_mod.FORMAT_VERSION,
        "gpu": device_name,
        "triton": triton.__version__,
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "entries": dict(sorted(entries.items())),
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)
    kept = cache_mod.read_entries(path)
    if set(kept) != set(entries):
        raise ValueError(f"{path}: the cache rejects {sorted(set(entries) - set(kept))}")


def write_tuned(run: Run, entries: dict) -> None:
    """The tuned entries (all so far) into the report folder's JSON, the shipped configs folder
    (GPU runs) and this process's private cache (so the benchmark phase runs the tuned configs)."""
    run.tuned_entries.update(entries)
    write_json(run.tuned_json, run.cache_name, run.tuned_entries)
    if run.shipped_json is not None:
        try:
            write_json(run.shipped_json, run.cache_name, run.tuned_entries)
        except OSError as e:
            run.say(
                f"could not write {run.shipped_json}: {e} (the report folder's copy is complete)"
            )
            run.shipped_json = None
    autotune.get_cache(run.device).store(entries)


# ------------------------------------------------------------------------------------------------
# benchmark

FULL_PROVIDERS = ["F.linear", "triton_qat eager", "torch ref eager", "triton_qat compiled",
                  "torch ref compiled", "triton_qat i4g128 compiled",
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


# ------------------------------------------------------------------------------------------------
# report: targets, summary, plots


def _bench_rows(run: Run) -> list[dict]:
    """The measured benchmark rows (perf/bench.py's), without the phase's own bookkeeping row."""
    return [r for r in run.rows if r.get("phase") == "benchmark" and r.get("status") == "done"
            and r.get("item") != "phase" and r.get("kernel")]  # fmt: skip


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
    rows = _bench_rows(run)
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
        add(TARGETS_TEXT[5], shape, v, lambda v: v >= 0.8, "fwd kernel TOP/s / torch._int_mm TOP/s",
            "{:.0%}")  # fmt: skip
    for K, N in sizes.pairs:
        shape = f"{M0}x{K}->{N}"
        v = _ratio(_kernel_value(rows, "quantize_x", "triton_qat", "gb_per_s", M0, K, N),
                   _kernel_value(rows, "quantize_x", "copy", "gb_per_s", M0, K, N))  # fmt: skip
        add(TARGETS_TEXT[6], shape, v, lambda v: v >= 0.75,
            "activation quantize GB/s / device copy GB/s", "{:.0%}")  # fmt: skip
    for K, N in sizes.pairs:
        shape = f"{M0}x{K}->{N}"
        v = _ratio(ms("triton_qat i4g128 compiled", "fwd", M0, K, N),
                   ms("triton_qat compiled", "fwd", M0, K, N))  # fmt: skip
        add(TARGETS_TEXT[7], shape, v, lambda v: v <= 1.15,
            "i4g128 compiled ms / int8 per-channel compiled ms, fwd (<= 1.15)")  # fmt: skip
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
    lines.append("## Phases")
    skipped = []
    for name in PHASE_LIMITS_S:
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
        v = _value(_bench_rows(run), "qat_linear", p, "peak_mem_mb", "fwd+bwd", M0, K0, N0)
        v_saved = _value(
            _bench_rows(run), "qat_linear", p, "saved_act_bytes_per_elem", "fwd", M0, K0, N0
        )
        if v is not None or v_saved is not None:
            peak = f"{v:.0f} MiB" if v is not None else "not measured"
            kept = f"{v_saved:.2f}" if v_saved is not None else "not measured"
            mem.append(f"{p}: peak {peak}, {kept} bytes kept per activation element")
    lines.append("")
    lines.append(f"## Memory of a training step (fwd+bwd, {M0}x{K0}->{N0})")
    lines += [f"- {m}" for m in mem] or ["not measured"]
    lines.append("")
    lines += host_vs_device_lines(_bench_rows(run), M0, K0, N0)
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


def for_stdout(summary: str) -> str:
    """The summary as printed: whole when it fits the tail a GPU window shows, else its start and
    its end (targets, files, folder) with the middle cut; summary.md keeps all of it."""
    if len(summary) <= SUMMARY_MAX_CHARS:
        return summary
    cut = "\n...(cut here to fit the output tail; summary.md has all of it)...\n"
    return summary[: SUMMARY_MAX_CHARS // 3] + cut + summary[-SUMMARY_MAX_CHARS // 2 :]


def report_files(run: Run) -> list[Path]:
    names = ["report.csv", "log.txt", "summary.md", "tflops.png", "speedup.png", "kernels.png",
             COMPILED_CODE]  # fmt: skip
    files = [run.folder / n for n in names]
    if run.tuned_json is not None:
        files.append(run.tuned_json)
    return [f for f in files if f.exists()]


def phase_report(run: Run, sizes: Sizes) -> str:
    """Speedup rows, plots, summary.md; returns the summary text (printed last by main)."""
    try:
        bench_rows = _bench_rows(run)
        for r in bench.add_speedups([dict(r) for r in bench_rows])[len(bench_rows) :]:
            run.row(**{**r, "phase": "benchmark", "item": "speedup", "status": "done"})
    except Exception as e:  # noqa: BLE001 - the rows measured stay; the summary still comes
        run.say(f"speedup rows failed: {type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}")
    try:
        import plot

        rows = [r for r in plot.load(run.csv_path) if r["phase"] == "benchmark"
                and r["status"] == "done" and r["item"] != "phase" and r["kernel"]]  # fmt: skip
        written = plot.plot_report(rows, run.folder, tuning=run.tuning, gpu=run.gpu,
                                   dry_run=run.dry_run)  # fmt: skip
        run.say(f"plots: {', '.join(p.name for p in written) or 'none (no benchmark rows)'}")
    except Exception as e:  # noqa: BLE001 - a plot failure must not lose the summary
        run.say(f"plots failed: {type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}")
    run.summary_path.write_text(summary_text(run, sizes) + "\n")
    files = report_files(run)
    big = [f.name for f in files if f.stat().st_size > MAX_FILE_BYTES]
    if big:
        run.say(f"files over 16 MiB: {big}")
    text = summary_text(run, sizes, files)
    run.summary_path.write_text(text + "\n")
    return text


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
            for name in PHASE_LIMITS_S:
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
        help="seconds in all (default $BUDGET_S, or 480; 240 with --dry-run)",
    )
    p.add_argument(
        "--out", default=None, help="report folder (default $REPORT_DIR or perf/results/<gpu>/)"
    )
    args = p.parse_args(argv)
    env_budget = os.environ.get("BUDGET_S", "").strip()
    budget = args.budget if args.budget is not None else float(env_budget) if env_budget else 480.0
    if args.dry_run and args.budget is None and not env_budget:
        budget = 4 * DRY_PHASE_LIMITS_S["correctness"]  # its share (1/4) is then the full limit
    if not budget > 0:
        p.error(f"budget: expected seconds > 0, got {budget}")
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
    run = Run(folder, budget, args.dry_run, device)
    with contextlib.suppress(OSError):  # a stale tuned file of an earlier run would be merged
        (folder / cache_mod.file_name(run.cache_name)).unlink()
    _route_warnings(run)
    start_watchdog(run, sizes, grace_s=20.0 if args.dry_run else 45.0)
    run.say(f"gpu_report: {run.gpu}, budget {budget:.0f} s, folder {folder.resolve()}"
            + (" (DRY RUN: interpreter, tiny shapes)" if args.dry_run else ""))  # fmt: skip
    environment(run)
    run_phase(run, "correctness", lambda r, dl: phase_correctness(r, dl, sizes))
    run_phase(run, "tuning", lambda r, dl: phase_tuning(r, dl, sizes))
    run_phase(run, "benchmark", lambda r, dl: phase_benchmark(r, dl, sizes))
    try:
        summary = phase_report(run, sizes)
    except Exception as e:  # noqa: BLE001 - still print what we have
        run.say(f"report failed: {type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}")
        summary = summary_text(run, sizes, report_files(run))
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
