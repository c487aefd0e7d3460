"""perf/: the quick benchmark runs on CPU and writes a long-format CSV; the plots are drawn from it."""

import csv
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "perf"))  # the scripts and the modules they import from each other


def test_bench_quick_and_plot(tmp_path):
    """The whole sweep (every provider, mode and kernel row) at a smaller shape than --quick's
    40x64->40: M == N still (weight-sized state cannot pass for activations), K = 64 still (i4g32
    runs, g128 does not divide it; the per-element bound on saved bytes below holds from there),
    and one rep: the interpreter's time goes with the launches and the rows (the float8 kernels
    launch a program per row), and what is checked here is the CSV, not the timings (the
    quantiles over several reps are checked on the gpu-report dry run's benchmark rows). Both
    scripts run in this process (their main(argv)), as perf/gpu_report.py runs bench.py's."""
    import bench
    import plot

    out = tmp_path / "bench.csv"
    bench.main(["--quick", "--reps", "1", "--tokens", "8", "--features", "64x8", "--out", str(out)])
    rows = list(csv.DictReader(out.open()))
    providers = {r["provider"] for r in rows if r["kernel"] == "qat_linear"}
    assert providers == {
        "F.linear",
        "torch ref eager",
        "torch ref compiled",
        "triton_qat eager",
        "triton_qat compiled",
        "triton_qat i4g32 compiled",
        "triton_qat float8 eager",
        "triton_qat float8 compiled",
    }  # g128 does not divide K=64
    assert {r["mode"] for r in rows if r["kernel"] == "qat_linear"} == {"fwd", "bwd", "fwd+bwd"}
    queued = {(r["provider"], r["mode"], r["metric"]) for r in rows
              if r["metric"] in ("host_ms", "pipelined_ms") and float(r["value"]) > 0}  # fmt: skip
    for mode in ("fwd", "fwd+bwd"):  # queued back to back, as a training loop runs them
        assert {("triton_qat eager", mode, "host_ms"), ("F.linear", mode, "pipelined_ms")} <= queued
    for r in rows:
        assert r["gpu"] and r["torch"] and r["triton"] and r["commit"]
        if r["metric"] == "ms":
            assert float(r["p20"]) <= float(r["value"]) <= float(r["p80"])
    saved = {
        r["provider"]: float(r["value"]) for r in rows if r["metric"] == "saved_act_bytes_per_elem"
    }
    assert saved["triton_qat eager"] <= 1.25 < saved["torch ref eager"]
    kernels = {
        "quantize_x",
        "quantize_w",
        "fwd",
        "dequantize_x",
        "dgrad",
        "wgrad",
        "quantize_mxfp8",
        "quantize_mxfp4",
        "quantize_nvfp4",
    }  # (fp32: no fp8 GEMM rows)
    assert {r["kernel"] for r in rows} == {"qat_linear"} | kernels
    fractions = {r["kernel"] for r in rows if r["metric"] == "fraction_of_ceiling"}
    assert fractions == kernels  # each kernel timed against its ceiling on the same operands
    ceilings = {r["provider"] for r in rows if r["kernel"] in kernels}
    assert ceilings == {"triton_qat", "copy", "torch._int_mm", "torch.mm"}
    # the backend that ran is named; this CPU run uses the interpreter, i.e. the real kernels
    qat = [r for r in rows if r["provider"].startswith("triton_qat")]
    assert {r["backend"] for r in qat} == {"triton-interpreter"}
    assert {r["backend"] for r in rows if r["provider"] == "F.linear"} == {"torch"}
    plot.main(["--csv", str(out)])
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) == 3 and all(p.stat().st_size > 10_000 for p in pngs)


def test_profile_host_dry_run(tmp_path):
    """perf/profile_host.py's whole path on the CPU: the split table for every provider and mode,
    the host-time ladder, and both profilers' tables (run in this process: its main(argv))."""
    import profile_host

    assert profile_host.main(["--dry-run", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "profile.txt").read_text()
    for provider in ("F.linear", "triton_qat eager", "triton_qat compiled"):
        for mode in ("fwd", "fwd+bwd"):
            assert f"| {provider} | {mode} |" in text
    for step in (
        "bare Triton launch",
        "torch.ops.triton_qat.quantize",
        "tq.Linear forward, grad",
        "backward: ops.qat_linear_backward_impl",
        "tq.Linear forward + backward",
    ):
        assert f"| {step}" in text
    assert "cProfile, triton_qat eager fwd+bwd" in text and "Self CPU time total" in text


def test_profile_host_dry_run_without_triton_interpret_set(tmp_path):
    """As the README says, ``--dry-run`` runs on a CPU as a script without TRITON_INTERPRET in
    the environment (it picks Triton's interpreter itself: a CPU has no Triton driver), and at the
    shapes --shapes names (the ladder's header is at its K and N; the ladder alone: fast)."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, str(ROOT / "perf" / "profile_host.py"), "--dry-run",
                          "--ladder-only", "--shapes", "16x64x8", "--out", str(tmp_path)],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    text = (tmp_path / "profile.txt").read_text()
    assert "backend triton-interpreter" in text.splitlines()[0]
    assert "64x64->8 torch.float32" in text and "| bare Triton launch" in text


def test_profile_host_skips_the_providers_a_shape_cannot_take():
    """--shapes is honoured: a group of 128 does not divide K = 64, so that provider is left out
    (as bench.py leaves it out) instead of failing the run."""
    import profile_host

    assert "triton_qat i4g128 compiled" in profile_host.providers_for(128)
    assert profile_host.providers_for(64) == [
        p for p in profile_host.PROVIDERS if p != "triton_qat i4g128 compiled"
    ]


_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@pytest.mark.parametrize(
    "script,args,needle",
    [
        ("bench", ["--tokens", "abc"], "--tokens"),
        ("bench", ["--tokens", "0"], "--tokens"),
        ("bench", ["--features", "64"], "--features"),
        ("bench", ["--features", "0x8"], "--features"),
        ("bench", ["--features", "70000x64"], "--features 70000x64"),
        ("bench", ["--reps", "0"], "--reps"),
        ("bench", ["--reps", "-1"], "--reps"),
        ("memory", ["--tokens", "x"], "--tokens"),
        ("memory", ["--layers", "0"], "--layers"),
        ("memory", ["--device", "gpu"], "--device"),
        pytest.param("memory", ["--device", "cuda"], "--device cuda", marks=_CUDA),
        ("profile_host", ["--shapes", "abc"], "--shapes"),
        ("profile_host", ["--shapes", "8x70000x8", "--ladder-only"], "--shapes"),
    ],
    ids=["bench-tokens-abc", "bench-tokens-0", "bench-features-64", "bench-features-0",
         "bench-features-k-too-large", "bench-reps-0", "bench-reps-negative", "memory-tokens",
         "memory-layers-0", "memory-device-bad", "memory-device-cuda-absent",
         "profile-host-shapes-abc", "profile-host-shapes-k-too-large"],
)  # fmt: skip
def test_cli_bad_arguments_end_in_argparse_errors(script, args, needle, tmp_path, capsys):
    """Malformed or impossible arguments of the perf scripts are argparse errors (exit 2, the
    flag named on the error line), never a traceback or a sweep that ignores them."""
    import importlib

    main = importlib.import_module(script).main
    out = ["--out", str(tmp_path / ("x" if script == "profile_host" else "x.csv"))]
    base = ["--quick", "--providers", "F.linear,triton_qat eager", "--modes", "fwd"]
    base = base if script == "bench" else []
    with pytest.raises(SystemExit) as exc:
        main([*base, *args, *out])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "Traceback" not in err
    assert needle in err.strip().splitlines()[-1]  # the error line, not the usage's flag list


def _fake_cuda_timing(monkeypatch, elapsed_ms: float):
    """bench, with torch.cuda's synchronize / Event / _sleep recording what a timer does (in
    order) into the returned list; every event pair measures ``elapsed_ms``."""
    import bench
    import torch

    calls = []

    class Event:
        def __init__(self, enable_timing=False):
            pass

        def record(self):
            calls.append("record")

        def elapsed_time(self, other):
            return elapsed_ms

    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: calls.append("sync"))
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "_sleep", lambda cycles: calls.append(("sleep", cycles)))
    return bench, calls


def test_kernel_timer_hides_the_host_behind_queued_gpu_work(monkeypatch):
    """hide_host: the GPU gets work (a sleep) before the start event, so the events bracket the
    kernel alone and not the launcher's Python; without it, nothing is queued first."""
    import torch

    bench, calls = _fake_cuda_timing(monkeypatch, 1.0)
    for hide, first in ((True, ["sync", ("sleep", bench.BUSY_CYCLES), "record", "run"]),
                        (False, ["sync", "record", "run"])):  # fmt: skip
        calls.clear()
        timer = bench.Timer(torch.device("cuda"), 0, 1, hide_host=hide)
        assert timer(lambda i: None, lambda s: calls.append("run")) == [1.0]
        assert calls[: len(first)] == first


def test_queued_device_time_is_measured_behind_a_gpu_sleep(monkeypatch):
    """queued_ms: a first pass times the host's queuing; the second pass queues the same calls
    behind a GPU sleep longer than that, between two events, so the device time cannot include
    the host's (the rule host > pipelined, host-bound, can then fire)."""
    import torch

    bench, calls = _fake_cuda_timing(monkeypatch, 6.0)
    host, pipelined = bench.queued_ms(lambda i: None, lambda s: calls.append("run"), 3,
                                      torch.device("cuda"))  # fmt: skip
    assert pipelined == 2.0 and host > 0
    sleep = next(c for c in calls if isinstance(c, tuple))
    assert sleep[1] >= bench.BUSY_CYCLES  # at least ~1 ms, and 1.5x the measured queuing
    assert calls == ["sync", "run", "run", "run", "sync", sleep, "record", "run", "run", "run",
                     "record", "sync"]  # fmt: skip
