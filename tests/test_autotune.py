"""Autotune: cache robustness (corrupt file, concurrent writers), the CLI, and per-shape configs
under torch.compile."""

import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import triton_qat as tq
from triton_qat import autotune
from triton_qat.autotune.cache import ConfigCache, file_name, m_bucket, make_key, write_entries
from triton_qat.autotune.space import candidates


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_QAT_CACHE_DIR", str(tmp_path))
    autotune._cache_for.cache_clear()
    yield tmp_path
    autotune._cache_for.cache_clear()


def test_m_bucket_and_keys():
    assert [m_bucket(m) for m in (1, 16, 17, 100, 128, 129, 8192)] == [
        16,
        16,
        32,
        128,
        128,
        256,
        8192,
    ]
    assert make_key("fwd", 3000, 4096, 1024, "bfloat16") == "fwd|M4096|N4096|K1024|bfloat16|"


def test_candidates_are_pruned_by_shape_and_shared_memory():
    big = candidates("fwd", (8192, 4096, 4096), 9)
    small = candidates("fwd", (16, 48, 64), 9)
    assert len(small) < len(big)
    assert all(c["BLOCK_M"] <= 64 and c["BLOCK_K"] <= 64 for c in small)
    assert all(
        c["num_stages"] * (c["BLOCK_M"] + c["BLOCK_N"]) * c["BLOCK_K"] <= 227 * 1024 for c in big
    )


def test_lookup_strict_then_nearest_bucket(cache_dir):
    cache = ConfigCache("interpreter")
    cache.store({make_key("fwd", 64, 40, 96, "float32"): {"config": {"BLOCK_M": 16}, "ms": 1.0},
                 make_key("fwd", 4096, 40, 96, "float32"): {"config": {"BLOCK_M": 64}, "ms": 1.0}})  # fmt: skip
    assert cache.lookup(make_key("fwd", 50, 40, 96, "float32")) == {"BLOCK_M": 16}
    assert cache.lookup(make_key("fwd", 100, 40, 96, "float32")) == {"BLOCK_M": 16}
    assert cache.lookup(make_key("fwd", 3000, 40, 96, "float32")) == {"BLOCK_M": 64}
    assert cache.lookup(make_key("fwd", 64, 41, 96, "float32")) is None


def test_corrupt_cache_file_is_ignored_with_a_warning(cache_dir):
    path = cache_dir / file_name("interpreter")
    path.write_text('{"version": 1, "entries": {"fwd|M16')  # truncated write
    with pytest.warns(UserWarning, match=str(path.name)):
        lin = tq.Linear(40, 24)
        out = lin(torch.randn(3, 40))
    assert out.shape == (3, 24) and torch.isfinite(out).all()


def test_malformed_entries_are_skipped_with_a_warning(cache_dir):
    good = {
        "BLOCK_M": 16,
        "BLOCK_N": 32,
        "BLOCK_K": 32,
        "GROUP_M": 1,
        "num_warps": 1,
        "num_stages": 1,
    }
    entries = {
        make_key("fwd", 64, 24, 40, "float32"): {"config": good},
        "garbage": {"config": good},
        "fwd|M0|N24|K40|float32|": {"config": good},
        make_key("fwd", 128, 24, 40, "float32"): {"config": {**good, "BLOCK_K": 16}},  # int8 K < 32
        make_key("dgrad", 64, 24, 40, "float32"): {"config": [1, 2]},
        make_key("quantize", 64, 40, 40, "float32", "pack"): {
            "config": {"BLOCK_R": 4, "BLOCK_C": 12, "num_warps": 1}  # not a power of two
        },
    }
    path = cache_dir / file_name("interpreter")
    path.write_text(json.dumps({"version": 1, "entries": entries}))
    with pytest.warns(UserWarning, match="5 malformed entries"):
        cache = ConfigCache("interpreter")
    assert list(cache.entries) == [make_key("fwd", 64, 24, 40, "float32")]
    assert cache.lookup(make_key("fwd", 100, 24, 40, "float32")) == good  # nearest bucket
    assert cache.lookup(make_key("dgrad", 64, 24, 40, "float32")) is None


def test_newest_shipped_version_wins():
    from triton_qat.autotune.cache import _version_of

    names = [Path(f"h100__triton-{v}.json") for v in ("3.9.0", "3.10.0", "3.6.0")]
    assert max(names, key=_version_of).name == "h100__triton-3.10.0.json"


def _writer(path: str, worker: int, n: int) -> None:
    cfg = {"BLOCK_M": 16 * worker, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 1, "num_warps": 1,
           "num_stages": 1}  # fmt: skip
    for i in range(n):
        key = f"fwd|M16|N{worker}|K{i}|float32|"
        write_entries(Path(path), "interpreter", {key: {"config": cfg}})


def test_two_concurrent_writers_never_break_the_file(tmp_path):
    path = tmp_path / "cache.json"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), w, 25)) for w in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    entries = json.loads(path.read_text())["entries"]
    assert len(entries) == 50  # locked read-merge-replace: no writer lost another's entries
    assert not list(tmp_path.glob("*.tmp"))


def test_cli_dry_run_writes_the_cache(cache_dir):
    env = {**os.environ, "TRITON_INTERPRET": "1", "TRITON_QAT_CACHE_DIR": str(cache_dir)}
    cmd = [sys.executable, "-m", "triton_qat.autotune", "--shapes", "32x64x48,20x64x16",
           "--granularity", "per_group", "--group-size", "32", "--dtype", "fp32"]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "wgrad" in res.stdout and "wrote" in res.stdout
    entries = json.loads((cache_dir / file_name("interpreter")).read_text())["entries"]
    assert (
        "fwd|M32|N48|K64|float32|g32" in entries and len(entries) == 9
    )  # both shapes share the quantize_x key (M bucket 32, K 64)


def test_cli_rejects_bad_shapes():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, "-m", "triton_qat.autotune", "--shapes", "8192x4096"],
                         env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 2 and "--shapes" in res.stderr


def test_compiled_model_uses_per_shape_configs(cache_dir):
    """Inductor must not freeze one config for every shape: the ops look configs up per call."""
    small = {
        "BLOCK_M": 16,
        "BLOCK_N": 32,
        "BLOCK_K": 32,
        "GROUP_M": 1,
        "num_warps": 1,
        "num_stages": 1,
    }
    large = {
        "BLOCK_M": 32,
        "BLOCK_N": 16,
        "BLOCK_K": 64,
        "GROUP_M": 2,
        "num_warps": 1,
        "num_stages": 1,
    }
    k_small, k_large = (make_key("fwd", m, 24, 64, "float32") for m in (16, 128))
    autotune.get_cache(torch.device("cpu")).store({k_small: {"config": small},
                                                   k_large: {"config": large}})  # fmt: skip
    torch._dynamo.reset()
    model = torch.compile(nn.Sequential(tq.Linear(64, 24)), fullgraph=True)
    seen = {}
    for m in (10, 100):
        with autotune.record_lookups() as log:
            out = model(torch.randn(m, 64))
        assert out.shape == (m, 24)
        seen[m] = [cfg for key, cfg in log if key.startswith("fwd|")]
    assert seen[10] == [small] and seen[100] == [large]
