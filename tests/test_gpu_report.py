"""perf/gpu_report.py: the CPU rehearsal (--dry-run) of `make gpu-report` produces the whole report
folder within the limits a GPU window returns (<= 8 files of <= 16 MiB), with the summary printed
last; a budget too small for any phase still exits cleanly with what it had. The phases' own
functions live in perf/gpu_report_<phase>.py, the shared run record in perf/gpu_report_run.py."""

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
import gpu_report_benchmark  # noqa: E402
import gpu_report_correctness  # noqa: E402
import gpu_report_run  # noqa: E402
import gpu_report_summary  # noqa: E402
import gpu_report_tuning  # noqa: E402
import train_step  # noqa: E402

from triton_qat.autotune.cache import file_name, read_entries  # noqa: E402

EXPECTED = {"report.csv", "log.txt", "summary.md", "layers.png", "kernels.png", "train_step.png",
            "compiled-layer.py", file_name("interpreter")}  # fmt: skip
PHASES = ["correctness", "tuning", "benchmark", "train_step"]


def _dry_run(folder: Path, budget: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("BUDGET_S", "REPORT_DIR")}
    env.update(TRITON_INTERPRET="1", REPORT_DIR=str(folder))
    if budget is not None:
        env["BUDGET_S"] = budget
    return subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def _assert_targets_listed(summary: str) -> None:
    table = [line for line in summary.splitlines() if line.startswith("| ")]
    for target in gpu_report_summary.TARGETS_TEXT:
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
    # the GPU check of every GEMM path (int8 / dequantized forward, TMA / pointer loads, dgrad,
    # wgrad, and at 16-bit dtypes torch.mm + the mask pass) ran at each dtype and named each path
    # it judged: fp32 keeps the Triton backward (no torch.mm)
    detail = {r["item"]: r["detail"] for r in checks}
    for dt, paths in (("fp32", 10), ("fp16", 12), ("bf16", 12)):
        assert f": {paths} paths, worst " in detail[f"gemm_paths_vs_fp64[{dt}]"], detail
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
    # medians within their p20 / p80 over the dry run's reps (tests/test_perf.py times one rep)
    timed = [r for r in rows if r["phase"] == "benchmark" and r["metric"] == "ms"]
    assert all(float(r["p20"]) <= float(r["value"]) <= float(r["p80"]) for r in timed), timed
    assert all(r["gpu"] and r["torch"] and r["triton"] for r in rows)
    # the training step: every provider x mode with its five metrics, measured on the CPU (torchao's
    # "not measured" where it is not installed), after the benchmark and before the report
    train = [r for r in rows if r["phase"] == "train_step" and r["item"] != "phase"]
    got = {(r["provider"], r["mode"], r["metric"]): r for r in train}
    for provider in ("bf16", "torchao", "triton_qat"):
        for mode in ("eager", "compiled"):
            for metric in train_step.METRICS:
                r = got[(provider, mode, metric)]
                if metric == "peak_mem_mb":  # torch.cuda.max_memory_allocated: no CUDA here
                    assert r["status"] == "skipped" and r["detail"].startswith("not measured")
                elif provider == "torchao" and r["status"] == "skipped":
                    assert r["detail"].startswith("not measured: torchao is not installed")
                else:
                    assert r["status"] == "done" and float(r["value"]) > 0, r
    assert len(train) == 3 * 2 * len(train_step.METRICS)
    order = [r["phase"] for r in rows if r["item"] == "phase"]
    assert order == PHASES
    # the tuned JSON is a valid cache file (the one to ship in autotune/configs/)
    entries = read_entries(folder / file_name("interpreter"))
    assert "fwd|M32|N48|K256|bfloat16|" in entries and "fwd|M32|N48|K256|bfloat16|g128" in entries
    # the summary is the last thing printed, and it fits the tail a GPU window shows
    summary = (folder / "summary.md").read_text()
    assert res.stdout.rstrip().endswith(summary.rstrip())
    assert len(summary) < 10_000
    assert "## Correctness:" in summary and "0 fail" in summary
    # the training step's headline near the top (before the phases), and its table
    head = next(line for line in summary.splitlines() if line.startswith("training step, "))
    assert summary.index(head) < summary.index("## Phases")
    assert head == train_step.headline(rows) and "x bf16" in head
    assert "| triton_qat | compiled | " in summary and "| bf16 | eager | " in summary
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
    assert f"skipped phases: {', '.join(PHASES)}" in summary
    _assert_targets_listed(summary)
    rows = list(csv.DictReader((folder / "report.csv").open()))
    assert [r["phase"] for r in rows if r["item"] == "phase"] == PHASES
    env = [r for r in rows if r["phase"] == "env"]
    assert env and json.loads(env[0]["detail"])["dry_run"] is True


@pytest.mark.parametrize(
    "env_budget,args,needle",
    [("abc", [], "BUDGET_S"), ("inf", [], "BUDGET_S"), ("-5", [], "BUDGET_S"),
     ("abc", ["--budget", "inf"], "--budget")],
    ids=["env-not-a-number", "env-inf", "env-negative", "arg-inf"],
)  # fmt: skip
def test_bad_budget_is_an_argparse_error_naming_its_source(
    env_budget, args, needle, tmp_path, monkeypatch, capsys
):
    """The documented ``BUDGET_S`` knob is checked as ``--budget`` is (which wins over it):
    seconds > 0 and finite, else exit 2 with the knob named, never a traceback."""
    monkeypatch.setenv("BUDGET_S", env_budget)
    with pytest.raises(SystemExit) as exc:
        gpu_report.main([*args, "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "Traceback" not in err
    assert needle in err.strip().splitlines()[-1]  # the error line, not the usage's flag list


def test_phase_limits_fit_the_default_budget():
    """The four phases' limits and the report's reserve fit the default 480 s; a smaller budget
    scales each phase down; the rehearsal's default budget holds each dry limit whole."""
    limits = gpu_report.PHASE_LIMITS_S
    assert list(limits) == PHASES
    assert sum(limits.values()) + gpu_report.REPORT_RESERVE_S <= 480
    assert limits["train_step"] >= 120  # the training step's compiled items need the most
    for budget in (480.0, 240.0):
        run = type("R", (), {"budget_s": budget, "dry_run": False, "elapsed": lambda self: 0.0})()
        got = {name: gpu_report.phase_limit(run, name) for name in PHASES}
        assert got == pytest.approx({n: v * budget / 480 for n, v in limits.items()})
    dry = type("R", (), {"budget_s": gpu_report.dry_budget(), "dry_run": True,
                         "elapsed": lambda self: 0.0})()  # fmt: skip
    assert {n: gpu_report.phase_limit(dry, n) for n in PHASES} == gpu_report.DRY_PHASE_LIMITS_S


def test_poisoned_switches_what_the_launchers_allocate():
    """The launchers bind their allocator when imported, so poisoned() rebinds it in each: on
    for the correctness checks, off for every timing (a NaN fill per output would be timed)."""
    from triton_qat.kernels import _common, gemm_int8, quantize

    outside = quantize.empty
    with gpu_report_run.poisoned(True):
        assert quantize.empty is gemm_int8.empty is _common.empty is _common._poisoned_empty
        assert torch.isnan(_common.new_empty((3, 4), torch.float32, "cpu")).all()
    with gpu_report_run.poisoned(False):
        assert quantize.empty is gemm_int8.empty is _common.empty is torch.empty
        assert not _common.POISON
    assert quantize.empty is outside


def _run(tmp_path):
    return gpu_report_run.Run(tmp_path, 480.0, True, torch.device("cpu"))


def _bench(run, provider, mode, M, K, N, ms):
    run.row(phase="benchmark", status="done", kernel="qat_linear", provider=provider, mode=mode,
            metric="ms", value=ms, M=M, K=K, N=N)  # fmt: skip


def test_targets_are_met_missed_or_not_measured(tmp_path):
    sizes = gpu_report_run.Sizes.gpu()
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
    got = {(t["target"], t["shape"]): t for t in gpu_report_summary.targets(run, sizes)}
    head = "8192x4096->4096"
    assert got[(gpu_report_summary.TARGETS_TEXT[0], head)]["status"] == "MET"
    assert got[(gpu_report_summary.TARGETS_TEXT[0], head)]["shown"] == "2.00x"
    assert got[(gpu_report_summary.TARGETS_TEXT[1], head)]["status"] == "MISSED"
    assert got[(gpu_report_summary.TARGETS_TEXT[2], head)]["status"] == "not measured"
    assert got[(gpu_report_summary.TARGETS_TEXT[0], "8192x4096->14336")]["status"] == "not measured"
    floor = [t for t in got.values() if t["target"] == gpu_report_summary.TARGETS_TEXT[4]]
    assert floor[0]["status"] == "MISSED" and "2048x4096->4096" in floor[0]["shape"]
    quant = got[(gpu_report_summary.TARGETS_TEXT[6], head)]
    assert quant["status"] == "MISSED" and quant["shown"] == "75%"  # 1500 / 2000 GB/s < 85%
    for kernel, value in (("dgrad", 0.98), ("wgrad", 0.9)):
        run.row(phase="benchmark", status="done", kernel=kernel, provider="triton_qat",
                mode="bwd", metric="fraction_of_ceiling", value=value, M=M, K=K, N=N)  # fmt: skip
    got = {(t["target"], t["shape"]): t for t in gpu_report_summary.targets(run, sizes)}
    assert got[(gpu_report_summary.TARGETS_TEXT[12], head)]["status"] == "MET"
    assert got[(gpu_report_summary.TARGETS_TEXT[13], head)]["status"] == "MISSED"
    assert got[(gpu_report_summary.TARGETS_TEXT[13], head)]["shown"] == "90%"
    run.close()


def test_training_step_targets(tmp_path):
    sizes = gpu_report_run.Sizes.gpu()
    run = _run(tmp_path)
    for provider, mode, metric, value in (
        ("bf16", "compiled", "tokens_per_s", 100.0),
        ("triton_qat", "compiled", "tokens_per_s", 110.0),  # 1.10x bf16: met
        ("bf16", "eager", "tokens_per_s", 100.0),
        ("triton_qat", "eager", "tokens_per_s", 90.0),  # 0.90x: missed
        ("bf16", "compiled", "peak_mem_mb", 1000.0),
        ("triton_qat", "compiled", "peak_mem_mb", 900.0),  # 0.90x: met
    ):
        run.row(phase="train_step", status="done", provider=provider, mode=mode, metric=metric,
                value=value, config="none" if provider == "bf16" else "8da8w")  # fmt: skip
    run.row(phase="train_step", status="skipped", provider="torchao", mode="compiled",
            metric="tokens_per_s", config="8da8w", detail="not measured: torchao is not installed")  # fmt: skip
    text = gpu_report_summary.TARGETS_TEXT
    got = {}
    for t in gpu_report_summary.targets(run, sizes):
        got.setdefault(t["target"], []).append(t)
    assert [t["status"] for t in got[text[8]]] == ["MET"] and got[text[8]][0]["shown"] == "1.10x"
    assert [t["status"] for t in got[text[9]]] == ["not measured"]  # torchao: no value
    assert [t["status"] for t in got[text[10]]] == ["MISSED"]
    assert [t["status"] for t in got[text[11]]] == ["not measured", "MET"]  # eager, compiled
    assert got[text[8]][0]["shape"] == "train step, 8192 tokens, 4 layers"
    run.close()


def test_outputs_agree_compares_integers_exactly_and_floats_within_tolerance():
    a = (torch.tensor([1, 2, 3], dtype=torch.int8), torch.tensor([1.0, float("nan")]))
    assert gpu_report_tuning.outputs_agree(a, a, torch.bfloat16) is None
    b = (torch.tensor([1, 2, 4], dtype=torch.int8), a[1])
    assert "integers differ" in gpu_report_tuning.outputs_agree(a, b, torch.bfloat16)
    c = (a[0], torch.tensor([1.001, float("nan")]))
    assert gpu_report_tuning.outputs_agree(a, c, torch.bfloat16) is None  # 1e-3 < 1.6e-2
    assert "relative difference" in gpu_report_tuning.outputs_agree(a, c, torch.float32)
    d = (a[0], torch.tensor([1.0, 2.0]))
    assert "NaN positions" in gpu_report_tuning.outputs_agree(a, d, torch.float32)


def test_plans_put_the_headline_first():
    sizes = gpu_report_run.Sizes.gpu()
    plan = gpu_report_tuning.tuning_plan(sizes)
    assert [(s.M, s.K, s.N, s.group_size) for s, _ in plan[:3]] == [
        (8192, 4096, 4096, 0),
        (8192, 4096, 4096, 128),
        (8192, 4096, 4096, 32),  # per-group forwards: the int8 and the dequantized path timed
    ]
    assert plan[1][1] == ("fwd", "quantize_w") and plan[2][1] == ("fwd",) and len(plan) == 7
    items = gpu_report_benchmark.bench_plan(sizes)
    assert items[0] == ("kernels", None, 8192, 4096, 4096)
    headline = {p for kind, p, M, K, N in items[1 : 1 + len(gpu_report_benchmark.FULL_PROVIDERS)]}
    assert headline == set(gpu_report_benchmark.FULL_PROVIDERS)
    assert len(items) == len(set(items))


def test_cuda_only_checks_skip_on_cpu_and_opcheck_sees_every_op():
    cpu, sizes = torch.device("cpu"), gpu_report_run.Sizes.dry()
    checks = gpu_report_correctness
    for check in (checks.check_division, checks.check_nan_cast):
        with pytest.raises(gpu_report_run.Skipped, match="no CUDA"):
            check(cpu, sizes)
    calls = checks._record_op_calls(cpu)
    assert set(calls) == set(checks.OPS)  # the public API exercises all five ops


WATCHDOG = """
import sys, time, torch
from pathlib import Path
sys.path.insert(0, sys.argv[2])
import gpu_report as g
from gpu_report_run import Run, Sizes
run = Run(Path(sys.argv[1]), 0.5, True, torch.device("cpu"))
run.row(phase="correctness", item="first_check", status="pass", detail="ok")
g.start_watchdog(run, Sizes.dry(), grace_s=0.5)
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
    assert f"skipped phases: {', '.join(PHASES)}" in summary
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert [r["item"] for r in rows] == ["first_check"]  # what was written before stays
