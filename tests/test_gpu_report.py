"""perf/gpu_report.py: the CPU rehearsal (--dry-run) of `make gpu-report` produces the whole report
folder within the limits a GPU window returns (<= 8 files of <= 16 MiB), with the summary printed
last; a budget too small for any phase still exits cleanly with what it had."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "perf" / "gpu_report.py"
sys.path.insert(0, str(ROOT / "perf"))

import gpu_report  # noqa: E402

from triton_qat.autotune.cache import file_name, read_entries  # noqa: E402

EXPECTED = {"report.csv", "log.txt", "summary.md", "layers.png", "kernels.png",
            "compiled-layer.py", file_name("interpreter")}  # fmt: skip


def _dry_run(folder: Path, budget: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("BUDGET_S", "REPORT_DIR")}
    env.update(TRITON_INTERPRET="1", REPORT_DIR=str(folder))
    if budget is not None:
        env["BUDGET_S"] = budget
    return subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def _assert_targets_listed(summary: str) -> None:
    table = [line for line in summary.splitlines() if line.startswith("| ")]
    for target in gpu_report.TARGETS_TEXT:
        rows = [line for line in table if line.startswith(f"| {target} |")]
        assert rows, f"target missing from the summary: {target}"
        for line in rows:
            measured, status = (c.strip() for c in line.split("|")[3:5])
            assert status in ("MET", "MISSED", "not measured"), line
            assert (measured == "not measured") == (status == "not measured"), line


def _assert_within_limits(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir())
    assert all(p.is_file() for p in files), files
    assert len(files) <= 8, [p.name for p in files]
    assert all(0 < p.stat().st_size <= 16 * 2**20 for p in files), [
        (p.name, p.stat().st_size) for p in files
    ]
    return files


def test_dry_run_writes_the_whole_report(tmp_path):
    folder = tmp_path / "report"
    res = _dry_run(folder)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    files = _assert_within_limits(folder)
    assert {p.name for p in files} == EXPECTED
    rows = list(csv.DictReader((folder / "report.csv").open()))
    checks = [r for r in rows if r["phase"] == "correctness" and r["item"] != "phase"]
    assert {r["status"] for r in checks} <= {"pass", "fail", "skipped"}
    assert any(r["status"] == "pass" for r in checks)
    assert not [r["item"] for r in checks if r["status"] == "fail"]
    # the rehearsal runs every check: only what needs CUDA is skipped, nothing for lack of time
    assert {r["detail"] for r in checks if r["status"] == "skipped"} == {"skipped: no CUDA"}
    # compile with CUDA graphs (reduce-overhead) is checked beside the plain compile
    assert {"compile_fullgraph[fp32]", "compile_cudagraphs[bf16]"} <= {
        r["item"] for r in checks if r["status"] == "pass"}  # fmt: skip
    # what needs CUDA is recorded as skipped, never faked
    cuda_only = {r["item"]: r for r in checks if r["item"].endswith("_cuda")}
    assert len(cuda_only) == 2 and all(
        r["detail"] == "skipped: no CUDA" for r in cuda_only.values()
    )
    tuned = [r for r in rows if r["phase"] == "tuning" and r["metric"] == "ms"]
    assert {r["provider"] for r in tuned} == {"untuned default", "tuned", "int8 path (fastest)",
                                              "dequant path (fastest)"}  # fmt: skip
    # the forward's path rows: per channel int8 only; int4 g128 at bf16 its default, dequantized
    paths = {(r["item"], r["provider"]) for r in tuned if "path" in r["provider"]}
    assert ("32x256x48 i8 fwd", "int8 path (fastest)") in paths
    assert ("32x256x48 i4g128 fwd", "dequant path (fastest)") in paths
    assert any(r["phase"] == "benchmark" and r["status"] == "done" and r["metric"] == "ms"
               for r in rows)  # fmt: skip
    assert all(r["gpu"] and r["torch"] and r["triton"] for r in rows)
    # the tuned JSON is a valid cache file (the one to ship in autotune/configs/)
    entries = read_entries(folder / file_name("interpreter"))
    assert "fwd|M32|N48|K256|bfloat16|" in entries and "fwd|M32|N48|K256|bfloat16|g128" in entries
    # the summary is the last thing printed, and it fits the tail a GPU window shows
    summary = (folder / "summary.md").read_text()
    assert res.stdout.rstrip().endswith(summary.rstrip())
    assert len(summary) < 10_000
    assert "## Correctness:" in summary and "0 fail" in summary
    # host vs device per call: the single call beside the queued device and host times
    assert "## Host vs device per call" in summary
    assert any(line.startswith("| triton_qat eager | fwd+bwd | ") and "not measured" not in line
               for line in summary.splitlines())  # fmt: skip
    _assert_targets_listed(summary)
    assert str(folder.resolve()) in summary.splitlines()[-1]


def test_too_small_budget_exits_cleanly_with_what_it_had(tmp_path):
    folder = tmp_path / "report"
    res = _dry_run(folder, budget="1")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    files = _assert_within_limits(folder)
    assert {"report.csv", "log.txt", "summary.md"} <= {p.name for p in files}
    summary = (folder / "summary.md").read_text()
    assert res.stdout.rstrip().endswith(summary.rstrip())
    assert "skipped phases: correctness, tuning, benchmark" in summary
    _assert_targets_listed(summary)
    rows = list(csv.DictReader((folder / "report.csv").open()))
    assert [r["phase"] for r in rows if r["item"] == "phase"] == [
        "correctness",
        "tuning",
        "benchmark",
    ]
    env = [r for r in rows if r["phase"] == "env"]
    assert env and json.loads(env[0]["detail"])["dry_run"] is True


def _run(tmp_path):
    return gpu_report.Run(tmp_path, 480.0, True, torch.device("cpu"))


def _bench(run, provider, mode, M, K, N, ms):
    run.row(phase="benchmark", status="done", kernel="qat_linear", provider=provider, mode=mode,
            metric="ms", value=ms, M=M, K=K, N=N)  # fmt: skip


def test_targets_are_met_missed_or_not_measured(tmp_path):
    sizes = gpu_report.Sizes.gpu()
    run = _run(tmp_path)
    M, K, N = 8192, 4096, 4096
    _bench(run, "F.linear", "fwd", M, K, N, 1.0)
    _bench(run, "triton_qat eager", "fwd", M, K, N, 0.5)  # 2.0x: met
    _bench(run, "F.linear", "fwd+bwd", M, K, N, 3.0)
    _bench(run, "triton_qat eager", "fwd+bwd", M, K, N, 3.0)  # 1.0x: missed
    _bench(run, "F.linear", "fwd", 2048, K, N, 1.0)
    _bench(run, "triton_qat eager", "fwd", 2048, K, N, 1.25)  # 0.8x at 2048 tokens: missed floor
    for provider, metric, value in (
        ("triton_qat", "gb_per_s", 1500.0),
        ("copy", "gb_per_s", 2000.0),
    ):
        run.row(phase="benchmark", status="done", kernel="quantize_x", provider=provider,
                mode="bwd", metric=metric, value=value, M=M, K=K, N=N)  # fmt: skip
    got = {(t["target"], t["shape"]): t for t in gpu_report.targets(run, sizes)}
    head = "8192x4096->4096"
    assert got[(gpu_report.TARGETS_TEXT[0], head)]["status"] == "MET"
    assert got[(gpu_report.TARGETS_TEXT[0], head)]["shown"] == "2.00x"
    assert got[(gpu_report.TARGETS_TEXT[1], head)]["status"] == "MISSED"
    assert got[(gpu_report.TARGETS_TEXT[2], head)]["status"] == "not measured"
    assert got[(gpu_report.TARGETS_TEXT[0], "8192x4096->14336")]["status"] == "not measured"
    floor = [t for t in got.values() if t["target"] == gpu_report.TARGETS_TEXT[4]]
    assert floor[0]["status"] == "MISSED" and "2048x4096->4096" in floor[0]["shape"]
    quant = got[(gpu_report.TARGETS_TEXT[6], head)]
    assert quant["status"] == "MET" and quant["shown"] == "75%"  # 1500 / 2000 GB/s
    run.close()


def test_outputs_agree_compares_integers_exactly_and_floats_within_tolerance():
    a = (torch.tensor([1, 2, 3], dtype=torch.int8), torch.tensor([1.0, float("nan")]))
    assert gpu_report.outputs_agree(a, a, torch.bfloat16) is None
    b = (torch.tensor([1, 2, 4], dtype=torch.int8), a[1])
    assert "integers differ" in gpu_report.outputs_agree(a, b, torch.bfloat16)
    c = (a[0], torch.tensor([1.001, float("nan")]))
    assert gpu_report.outputs_agree(a, c, torch.bfloat16) is None  # 1e-3 < 1.6e-2
    assert "relative difference" in gpu_report.outputs_agree(a, c, torch.float32)
    d = (a[0], torch.tensor([1.0, 2.0]))
    assert "NaN positions" in gpu_report.outputs_agree(a, d, torch.float32)


def test_plans_put_the_headline_first():
    sizes = gpu_report.Sizes.gpu()
    plan = gpu_report.tuning_plan(sizes)
    assert [(s.M, s.K, s.N, s.group_size) for s, _ in plan[:3]] == [
        (8192, 4096, 4096, 0),
        (8192, 4096, 4096, 128),
        (8192, 4096, 4096, 32),  # per-group forwards: the int8 and the dequantized path timed
    ]
    assert plan[1][1] == ("fwd", "quantize_w") and plan[2][1] == ("fwd",) and len(plan) == 7
    items = gpu_report.bench_plan(sizes)
    assert items[0] == ("kernels", None, 8192, 4096, 4096)
    headline = {p for kind, p, M, K, N in items[1 : 1 + len(gpu_report.FULL_PROVIDERS)]}
    assert headline == set(gpu_report.FULL_PROVIDERS)
    assert len(items) == len(set(items))


def test_cuda_only_checks_skip_on_cpu_and_opcheck_sees_every_op():
    cpu, sizes = torch.device("cpu"), gpu_report.Sizes.dry()
    for check in (gpu_report.check_division, gpu_report.check_nan_cast):
        with pytest.raises(gpu_report.Skipped, match="no CUDA"):
            check(cpu, sizes)
    calls = gpu_report._record_op_calls(cpu)
    assert set(calls) == set(gpu_report.OPS)  # the public API exercises all five ops


WATCHDOG = """
import sys, time, torch
from pathlib import Path
sys.path.insert(0, sys.argv[2])
import gpu_report as g
run = g.Run(Path(sys.argv[1]), 0.5, True, torch.device("cpu"))
run.row(phase="correctness", item="first_check", status="pass", detail="ok")
g.start_watchdog(run, g.Sizes.dry(), grace_s=0.5)
time.sleep(60)  # an item that overruns the budget
print("SLEEP-ENDED")
"""


def test_watchdog_writes_the_summary_when_an_item_overruns_the_budget(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, "-c", WATCHDOG, str(tmp_path), str(ROOT / "perf")],
                         env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 3, res.stderr[-2000:]
    assert "SLEEP-ENDED" not in res.stdout and "budget exceeded" in res.stdout
    summary = (tmp_path / "summary.md").read_text()
    assert res.stdout.rstrip().endswith(summary.rstrip())
    assert "1 pass, 0 fail" in summary and "not reached (budget watchdog)" in summary
    assert "skipped phases: correctness, tuning, benchmark" in summary
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert [r["item"] for r in rows] == ["first_check"]  # what was written before stays


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gemm_paths_check_runs_every_path(dtype):
    """The GPU check of every GEMM path (int8 / dequantized forward, TMA / pointer loads, dgrad,
    wgrad) runs here at the dry-run shape, and names each path it judged."""
    detail = gpu_report.check_gemm_paths(dtype, torch.device("cpu"), gpu_report.Sizes.dry())
    assert "10 paths" in detail and "worst" in detail
