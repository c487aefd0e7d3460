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
from triton_qat.autotune.cache import (
    FORMAT_VERSION,
    ConfigCache,
    file_name,
    m_bucket,
    make_key,
    write_entries,
)
from triton_qat.autotune.space import candidates
from triton_qat.checks import MAX_IN_FEATURES


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
    path.write_text('{"version": 2, "entries": {"fwd|M16')  # truncated write
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
        "DEQUANT": 0,
        "TMA": 0,
        "GLUON": 0,
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
    path.write_text(json.dumps({"version": FORMAT_VERSION, "entries": entries}))
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
           "num_stages": 1, "DEQUANT": 0, "TMA": 0, "GLUON": 0}  # fmt: skip
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
        "DEQUANT": 0,
        "TMA": 0,
        "GLUON": 0,
    }
    large = {
        "BLOCK_M": 32,
        "BLOCK_N": 16,
        "BLOCK_K": 64,
        "GROUP_M": 2,
        "num_warps": 1,
        "num_stages": 1,
        "DEQUANT": 0,
        "TMA": 0,
        "GLUON": 0,
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
    assert seen[10] and all(c == small for c in seen[10])  # looked up when a plan is made
    assert seen[100] and all(c == large for c in seen[100])


# ------------------------------------------------------------------------------------------------
# curated candidate lists, parallel compilation, default-vs-tuned results


def test_curated_candidates_are_short_start_with_the_default_and_fit():
    from triton_qat.autotune.space import (
        _GLUON_TILES,
        CURATED,
        DEFAULTS,
        FWD_DEQUANT_DEFAULT,
        FWD_GROUP_INT8_DEFAULT,
        GLUON_GROUP_TILES,
        HOPPER_DEFAULTS,
        fit_config,
        quantize_default,
        smem_bytes,
    )
    from triton_qat.kernels.gemm_int8_gluon import check_gluon_config, gluon_available

    hopper = 227 * 1024
    for kernel in ("fwd", "dgrad", "wgrad"):
        # the old default leads the list, with TMA for the 16-bit GEMMs (cp.async for the int8
        # forward), the same tile the other way next; on Hopper the measured default leads. The
        # backward GEMMs' lists start with torch.mm + the mask pass (CUBLAS), their 16-bit default
        tma = int(kernel != "fwd")
        first, second = {**DEFAULTS[kernel], "TMA": tma}, {**DEFAULTS[kernel], "TMA": 1 - tma}
        cublas = [] if kernel == "fwd" else [{**HOPPER_DEFAULTS[kernel], "CUBLAS": 1}]
        assert CURATED[kernel][: len(cublas) + 2] == [*cublas, first, second]
        assert HOPPER_DEFAULTS[kernel] in CURATED[kernel]
        for K, N in ((4096, 4096), (4096, 14336), (14336, 4096)):
            got = candidates(kernel, (8192, N, K), 9, 2, hopper, curated=True)
            # the forward's Gluon tiles (per channel, Hopper, where this Triton has Gluon's
            # Hopper API) beside the Triton ones
            gluon = [c for c in got if c.get("GLUON")]
            assert len(gluon) == (len(_GLUON_TILES) if kernel == "fwd" and gluon_available() else 0)
            assert all(not c["DEQUANT"] and not c["TMA"] for c in gluon)
            assert all(smem_bytes(kernel, c, 2) <= hopper for c in gluon)
            got = [c for c in got if not c.get("GLUON")]
            assert 10 <= len(got) <= 17
            assert got[0] == (cublas[0] if cublas else HOPPER_DEFAULTS[kernel])
            assert got[1:3] == [first, second] and HOPPER_DEFAULTS[kernel] in got
            assert sum(bool(c.get("CUBLAS")) for c in got) == len(cublas)
            ampere = candidates(kernel, (8192, N, K), 8, 2, 99 * 1024, curated=True)
            ampere_default = {**DEFAULTS[kernel], **({"TMA": 0, "CUBLAS": 1} if cublas else {})}
            assert ampere[0] == ampere_default and not any(c["TMA"] for c in ampere)
            assert not any(c.get("GLUON") for c in ampere)  # the Gluon kernel is sm_90's
            assert all(smem_bytes(kernel, c, 2) <= hopper for c in got)
            assert len({tuple(sorted(c.items())) for c in got}) == len(got)
            fp32 = candidates(kernel, (8192, N, K), 9, 4, hopper, curated=True)
            assert fp32 and not any(c.get("CUBLAS") for c in fp32)  # IEEE dots: no torch.mm
    g128 = candidates("fwd", (8192, 4096, 4096), 9, 2, hopper, 128, curated=True)
    int8 = [c for c in g128 if not c["DEQUANT"] and not c["GLUON"]]  # the Triton kernel's
    # the Gluon kernel's MODE 1 (where this Triton has Gluon's Hopper API): one K step per group
    gluon = [c for c in g128 if c["GLUON"]]
    assert len(gluon) == (len(GLUON_GROUP_TILES) if gluon_available() else 0), gluon
    assert all(c["BLOCK_K"] == 128 and check_gluon_config(c, per_group=True) is None
               for c in gluon)  # fmt: skip
    for group in (8, 96, 256):  # MODE 2; MODE 1 groups other than 32 / 64 / 128: Triton only
        other = candidates("fwd", (8192, 4096, 3072), 9, 2, hopper, group, curated=True)
        assert not any(c["GLUON"] for c in other), group
    assert all(128 % c["BLOCK_K"] == 0 and c["BLOCK_K"] >= 32 for c in int8)
    # per-group weights: both forward paths are timed, the 16-bit default (DEQUANT) first
    assert g128[0] == FWD_DEQUANT_DEFAULT and 6 <= len(g128) - len(int8) < len(int8) <= 16
    assert len(g128) - len(gluon) <= 24 and all(smem_bytes("fwd", c, 2) <= hopper for c in g128)
    assert {**FWD_DEQUANT_DEFAULT, "TMA": 0} in g128  # TMA or not, timed at the default tile
    int8_default = fit_config("fwd", DEFAULTS["fwd"], 4096, 128)
    hopper_int8 = fit_config("fwd", HOPPER_DEFAULTS["fwd"], 4096, 128)
    assert g128[1:5] == [int8_default, {**int8_default, "TMA": 1}, hopper_int8,
                         FWD_GROUP_INT8_DEFAULT]  # fmt: skip
    g128_fp32 = candidates("fwd", (8192, 4096, 4096), 9, 4, hopper, 128, curated=True)
    assert g128_fp32[0] == FWD_GROUP_INT8_DEFAULT  # the int8 path's default at fp32
    assert not any(c["TMA"] for c in g128_fp32 if c["DEQUANT"])  # no TMA for fp32 operands
    per_token = candidates("quantize", (8192, 4096), 9, curated=True)
    assert per_token[0] == quantize_default(8192, 4096) and 8 <= len(per_token) <= 16
    per_group = candidates("quantize", (4096, 128), 9, curated=True)
    assert per_group[0] == quantize_default(4096, 128)
    assert {c["BLOCK_C"] for c in per_group} == {128}
    # the full space is still there and larger
    assert len(candidates("fwd", (8192, 4096, 4096), 9, 2, hopper)) > len(g128)


def test_a_narrower_weights_dequantized_config_fits_every_gpu():
    """A weight narrower than x runs the int8 key's config on the dequantized path
    (``as_dequantized``): from the defaults, every candidate, the shipped tuned configs and an
    oversized tile alike, its operand buffers fit the smallest sm_80+ shared memory (99 KiB)
    at fp32 and fp16, and the rule picks exactly the narrower weight dtypes."""
    from triton_qat.autotune.space import (
        CURATED,
        DEFAULTS,
        HOPPER_DEFAULTS,
        SMEM_FALLBACK,
        as_dequantized,
        smem_bytes,
        weight_narrower,
    )

    shipped = Path(autotune.__file__).parent / "configs"
    stored = [e["config"] for f in shipped.glob("*.json")
              for k, e in json.loads(f.read_text())["entries"].items() if k.startswith("fwd|")]  # fmt: skip
    huge = {"BLOCK_M": 256, "BLOCK_N": 256, "BLOCK_K": 256, "GROUP_M": 8, "num_warps": 8,
            "num_stages": 5, "DEQUANT": 0, "TMA": 1, "GLUON": 1}  # fmt: skip
    configs = [DEFAULTS["fwd"], HOPPER_DEFAULTS["fwd"], *CURATED["fwd"], *stored, huge]
    for cfg in configs:
        for elem_bytes in (4, 2):
            dq = as_dequantized(cfg, elem_bytes)
            assert dq["DEQUANT"] == 1 and dq["GLUON"] == 0 and dq["BLOCK_K"] >= 16, dq
            assert smem_bytes("fwd", dq, elem_bytes) <= 96 * 1024 <= SMEM_FALLBACK, dq
            assert elem_bytes == 2 or dq["TMA"] == 0
    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    narrower = {(w, x) for w in (bf16, fp16, fp32) for x in (bf16, fp16, fp32)
                if weight_narrower(w, x)}  # fmt: skip
    assert narrower == {(bf16, fp16), (bf16, fp32), (fp16, fp32)}
    assert not weight_narrower(None, fp32)


def test_precompile_runs_launches_in_parallel_and_keeps_errors():
    import time

    from triton_qat.autotune.tune import precompile

    def ok():
        time.sleep(0.2)

    def bad():
        raise RuntimeError("out of resources")

    errors, stats = precompile([ok] * 6 + [bad], torch.device("cpu"), workers=6)
    assert errors[:6] == [None] * 6 and isinstance(errors[6], RuntimeError)
    assert stats["launches"] == 7 and stats["workers"] == 6
    assert stats["sum_s"] > 1.1 and stats["wall_s"] < 0.7  # six 0.2 s launches overlap


def test_tune_reports_the_untuned_default(cache_dir):
    from triton_qat.autotune.tune import LinearShape, tune

    res = tune(LinearShape(32, 64, 48, torch.float32), torch.device("cpu"), ("fwd", "quantize_x"),
               store=False)  # fmt: skip
    assert set(res) == {"fwd", "quantize_x"}
    for r in res.values():
        assert r["default_config"] == r["config"] and r["default_ms"] == r["ms"] > 0
        assert r["complete"] and r["tried"] == r["candidates"] == 1
    assert not (cache_dir / file_name("interpreter")).exists()  # store=False wrote nothing
    assert (
        res["fwd"]["by_path"] == {"int8": res["fwd"]["ms"]} and res["quantize_x"]["by_path"] == {}
    )
    g32 = tune(LinearShape(32, 64, 48, torch.bfloat16, 4, 32), torch.device("cpu"), ("fwd",),
               store=False)["fwd"]  # fmt: skip
    assert g32["config"]["DEQUANT"] == 1 and g32["by_path"] == {"dequant": g32["ms"]}


# ------------------------------------------------------------------------------------------------
# CLI: shapes from a model, clear errors instead of tracebacks


def _cli(args, env=None, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "triton_qat.autotune", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def test_cli_unwritable_cache_dir_warns_up_front_and_still_prints_results():
    env = {**os.environ, "TRITON_INTERPRET": "1", "TRITON_QAT_CACHE_DIR": "/sys/x"}
    res = _cli(["--shapes", "32x64x64,16x64x32"], env=env)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert "cannot write the tuning cache" in res.stderr and "/sys/x" in res.stderr
    # said before tuning started (the progress bar follows), and the results are printed anyway
    assert res.stderr.index("cannot write the tuning cache") < res.stderr.index("cfg")
    assert "results NOT saved" in res.stderr
    for shape in ("32x64x64", "16x64x32"):
        assert all(
            f"{shape} i8" in line for line in res.stdout.splitlines() if line.startswith(shape)
        )
    assert "default ms" in res.stdout and res.stdout.count(" wgrad ") == 2


def test_cli_save_failure_after_tuning_prints_results(cache_dir, monkeypatch, capsys):
    from triton_qat.autotune import __main__ as cli

    def full_disk(self, new):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ConfigCache, "store", full_disk)
    assert cli.main(["--shapes", "32x64x48", "--kernels", "fwd,quantize_x", "--dtype", "fp32"]) == 1
    out, err = capsys.readouterr()
    assert "32x64x48 i8" in out and " fwd " in out and "quantize_x" in out
    assert "results NOT saved" in err and "No space left on device" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_without_gpu_or_interpreter_says_what_it_needs():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = _cli(["--shapes", "32x64x64"], env=env)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "CUDA device" in res.stderr and "TRITON_INTERPRET=1" in res.stderr


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--shapes", "32x64x64", "--granularity", "per_group", "--group-size", "0"], "--group-size"),
        (["--shapes", "32x64x64", "--group-size", "-32"], "--group-size"),
        (["--shapes", "32x64x64", "--granularity", "per_group", "--group-size", "48"], "--group-size"),
        (["--shapes", "32x64x64", "--device", "meta"], "--device"),
        (["--shapes", "32x64x64", "--device", "gpu0"], "--device"),
        (["--shapes", "32x64x64", "--kernels", "fwd,nope"], "--kernels"),
        (["--model", "no_such_module_xyz:make"], "--model"),
        (["--shapes", "32x64x64", "--model", "a:b"], "--model"),
        ([], "--shapes"),
        # a group size without per-group weights would be ignored (per-channel tuned instead)
        (["--shapes", "32x64x64", "--group-size", "32", "--bits", "4"], "--granularity per_group"),
        (["--shapes", "32x64x64", "--granularity", "per_channel", "--group-size", "32"],
         "--group-size 32"),
        # the fp8 GEMM, asked for by name where it does not run, would tune nothing and exit 0
        (["--shapes", "32x64x64", "--dtype", "fp32", "--kernels", "f8fwd"], "--dtype fp32"),
        (["--shapes", "32x64x64", "--dtype", "fp32", "--kernels", "fwd,f8fwd"], "--kernels f8fwd"),
    ],
    ids=["group-0", "group-negative", "group-not-dividing", "device-meta", "device-bad",
         "kernels", "model-missing", "shapes-and-model", "nothing", "group-without-per-group",
         "group-with-per-channel", "f8fwd-fp32", "f8fwd-fp32-with-fwd"],
)  # fmt: skip
def test_cli_bad_arguments_end_in_argparse_errors(args, needle, capsys):
    from triton_qat.autotune import __main__ as cli

    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "usage:" in err and "Traceback" not in err
    assert needle in err.strip().splitlines()[-1]  # the error line, not the usage's flag list


TINY_MODEL = """
from torch import nn


def make_model():
    return nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 64), nn.Linear(64, 48))


model = make_model()
not_a_model = 3
"""


def test_cli_model_factory_tunes_every_distinct_linear(tmp_path, cache_dir):
    (tmp_path / "tiny_models.py").write_text(TINY_MODEL)
    env = {**os.environ, "TRITON_INTERPRET": "1", "TRITON_QAT_CACHE_DIR": str(cache_dir)}
    res = _cli(["--model", "tiny_models:make_model", "--tokens", "32", "--dtype", "fp32",
                "--kernels", "fwd"], env=env, cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "2 distinct linear(s) (K -> N): 64->48, 48->64" in res.stdout
    assert "32x64x48 i8" in res.stdout and "32x48x64 i8" in res.stdout
    entries = json.loads((cache_dir / file_name("interpreter")).read_text())["entries"]
    assert set(entries) == {"fwd|M32|N48|K64|float32|", "fwd|M32|N64|K48|float32|"}


def test_model_shapes_from_factories_and_hugging_face(tmp_path, monkeypatch):
    import types

    from triton_qat.autotune.__main__ import model_shapes

    (tmp_path / "tiny_models.py").write_text(TINY_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    want = [(8, 64, 48), (8, 48, 64)]
    assert model_shapes("tiny_models:make_model", 8) == want
    assert model_shapes("tiny_models:model", 8) == want  # an instance works too
    for bad, needle in [("tiny_models:nope", "no attribute"), ("tiny_models:not_a_model", "neither"),
                        ("no_such_module_xyz:f", "cannot import")]:  # fmt: skip
        with pytest.raises(ValueError, match=needle):
            model_shapes(bad, 8)
    # a Hugging Face name: a clear error without transformers, the config's linears with it
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ValueError, match="'transformers' package, which is not installed"):
        model_shapes("org/some-model", 8)
    built = {}

    class AutoConfig:
        @staticmethod
        def from_pretrained(name):
            return {"name": name}

    class AutoModelForCausalLM:
        @staticmethod
        def from_config(config):
            built["device"] = torch.empty(()).device  # the meta device: no weights allocated
            return nn.Sequential(nn.Linear(32, 96), nn.Linear(32, 96), nn.Linear(96, 32))

    fake = types.SimpleNamespace(AutoConfig=AutoConfig, AutoModelForCausalLM=AutoModelForCausalLM)
    monkeypatch.setitem(sys.modules, "transformers", fake)
    assert model_shapes("org/some-model", 16) == [(16, 32, 96), (16, 96, 32)]
    assert built["device"].type == "meta"


def test_quantize_default_threads_and_the_with_y_fit():
    """64 elements per thread for codes / mask / sums and for fake-quantized values through the
    per-row NaN path (the backward's weight); where the values are computed per element (given
    qparams, asymmetric weights, ranges without 0), a thread holds at most 32 (those variants
    spill at 64: kernel_static --all), for defaults and tuned entries alike, with the tile
    unchanged."""
    from triton_qat.autotune.space import fit_quantize, quantize_default

    def per_thread(c):
        return c["BLOCK_R"] * c["BLOCK_C"] // (32 * c["num_warps"])

    for rows, group in ((8192, 4096), (4096, 128), (4096, 32), (4096, 14336)):
        cfg = quantize_default(rows, group)
        assert per_thread(cfg) == 64, (rows, group, cfg)
        assert fit_quantize(cfg, with_y=True, y_per_row=True) == cfg
        fitted = fit_quantize(cfg, with_y=True)
        assert {**fitted, "num_warps": cfg["num_warps"]} == cfg
        assert per_thread(fitted) == 32
        assert fit_quantize(cfg, with_y=False) == cfg
    tuned = {"BLOCK_R": 64, "BLOCK_C": 1024, "num_warps": 4}  # 512 per thread
    assert fit_quantize(tuned, with_y=True)["num_warps"] == 16  # capped: 128 per thread
    assert per_thread(fit_quantize({**tuned, "BLOCK_R": 16}, True, y_per_row=True)) == 64
    assert per_thread(fit_quantize({**tuned, "BLOCK_R": 16}, with_y=True)) == 32
    dev = torch.device("cpu")
    for per_row in (False, True):
        assert autotune.quantize_config(64, 256, dev, torch.float32, False, True, per_row) == (
            fit_quantize(
                autotune.quantize_config(64, 256, dev, torch.float32, False), True, per_row
            )
        )


def test_torch_mm_is_timed_first_at_every_16_bit_backward_shape():
    """torch.mm + the mask pass (the 16-bit default) leads the backward's candidates at any shape:
    its tiles are never used, so the tile and shared-memory filters do not drop it."""
    for kernel in ("dgrad", "wgrad"):
        for shape in ((32, 4096, 4096), (8192, 4096, 64), (8192, 64, 4096), (64, 128, 128)):
            for cap, smem in ((9, 227 * 1024), (8, 99 * 1024)):
                got = candidates(kernel, shape, cap, 2, smem, curated=True)
                assert got[0].get("CUBLAS") == 1, (kernel, shape, cap)
                assert sum(bool(c.get("CUBLAS")) for c in got) == 1
                assert not any(c.get("CUBLAS") for c in candidates(kernel, shape, cap, 4, smem))


def test_hopper_defaults_are_the_measured_ones_for_16_bit_dtypes_only():
    from triton_qat.autotune.space import DEFAULTS, HOPPER_DEFAULTS, default_config

    shape = (8192, 4096, 4096)
    for kernel in ("fwd", "dgrad", "wgrad"):
        # the backward GEMMs at 16-bit dtypes: torch.mm + the mask pass on every GPU
        cublas = {} if kernel == "fwd" else {"CUBLAS": 1}
        assert default_config(kernel, shape, False, 0, 2, 9) == {
            **HOPPER_DEFAULTS[kernel],
            **cublas,
        }
        for elem_bytes, cap in ((4, 9), (2, 8), (4, 8)):  # fp32, sm_80 family: not measured
            want = {**DEFAULTS[kernel], "TMA": 0, **(cublas if elem_bytes == 2 else {})}
            if (kernel, elem_bytes, cap) == ("wgrad", 4, 8):  # DEFAULTS' tile spills there
                want = {**want, "BLOCK_M": 32}
            assert not default_config(kernel, shape, True, 0, elem_bytes, cap).get("CUBLAS")
            assert default_config(kernel, shape, False, 0, elem_bytes, cap) == want
            # the tuner times the default first, even where its curated list lacks the tile
            got = candidates(kernel, shape, cap, elem_bytes, 99 * 1024, curated=True)
            assert got[0] == want


EDGE_MODELS = """
from torch import nn


def mixed():
    inner = nn.Sequential(nn.Linear(70000, 8), nn.Linear(64, 48))
    return nn.Sequential(nn.Linear(64, 48), nn.Linear(70000, 8), inner)


def too_wide():
    return nn.ModuleDict({"up": nn.Linear(65537, 8), "down": nn.Linear(65540, 4)})


def broken():
    raise RuntimeError("no weights here")
"""


@pytest.fixture
def edge_models(tmp_path, monkeypatch):
    (tmp_path / "autotune_edge_models.py").write_text(EDGE_MODELS)
    (tmp_path / "autotune_edge_bad_import.py").write_text("raise RuntimeError('boom on import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.fixture
def tuned(monkeypatch):
    """The shapes the CLI tunes; one no layer runs fails the test at once (its dry run would
    take minutes and gigabytes)."""
    from triton_qat.autotune import __main__ as cli

    real, seen = cli.tune, []

    def spy(s, *args, **kwargs):
        seen.append(s)
        if s.K > MAX_IN_FEATURES:
            pytest.fail(f"tuned {s.label}, a shape no triton_qat layer runs")
        return real(s, *args, **kwargs)

    monkeypatch.setattr(cli, "tune", spy)
    return seen


@pytest.mark.parametrize(
    "model,needles",
    [
        ("torch.nn:Linear", ["TypeError", "in_features", "no arguments"]),
        ("autotune_edge_models:broken", ["calling broken() failed", "RuntimeError: no weights"]),
        ("autotune_edge_bad_import:f", ["cannot import", "RuntimeError: boom on import"]),
        ("autotune_edge_models:too_wide", ["no linear layer", "65537->8 (up)", "65540->4 (down)",
                                           f"at most {MAX_IN_FEATURES}"]),
    ],
    ids=["needs-arguments", "factory-raises", "import-raises", "every-layer-too-wide"],
)  # fmt: skip
def test_cli_model_that_cannot_be_built_or_run_is_an_argparse_error(
    model, needles, edge_models, tuned, capsys
):
    """Every failure to build the model, and a model no kernel runs any linear of, ends in a
    clean argparse error naming --model and the cause (was a traceback for a factory needing
    arguments, and a tuned-and-cached K past the kernels' limit)."""
    from triton_qat.autotune import __main__ as cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["--model", model, "--tokens", "8", "--kernels", "fwd"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and f"--model {model}:" in err and "Traceback" not in err
    for needle in needles:
        assert needle in err, needle


@pytest.mark.parametrize(
    "shapes,needle",
    [
        (f"8x{MAX_IN_FEATURES + 1}x16", f"in_features: at most {MAX_IN_FEATURES}"),
        ("8x64x16,4x100000x8", "in_features: at most"),
    ],
    ids=["K-past-the-limit", "one-of-two"],
)
def test_cli_shapes_no_layer_runs_are_argparse_errors(shapes, needle, cache_dir, tuned, capsys):
    """A K past triton_qat.checks.MAX_IN_FEATURES is rejected up front, naming the shape and the
    limit, instead of being tuned and cached for layers that can never exist."""
    from triton_qat.autotune import __main__ as cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["--shapes", shapes, "--kernels", "fwd"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    bad = shapes.split(",")[-1]
    assert f"--shapes: no triton_qat layer runs {bad}" in err and needle in err
    assert not list(cache_dir.iterdir())  # nothing tuned, nothing written
    assert cli.unrunnable(MAX_IN_FEATURES, 0) is None  # the limit itself is fine


def test_cli_model_skips_linears_no_kernel_runs(edge_models, cache_dir, tuned, capsys):
    """--model tunes the linears a triton_qat layer runs and names the others, with the reason."""
    from triton_qat.autotune import __main__ as cli

    argv = ["--model", "autotune_edge_models:mixed", "--tokens", "8", "--kernels", "fwd",
            "--dtype", "fp32"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "1 distinct linear(s) (K -> N): 64->48\n" in out
    assert f"skipped 70000->8 (1, 2.0): in_features: at most {MAX_IN_FEATURES}" in out
    entries = json.loads((cache_dir / file_name("interpreter")).read_text())["entries"]
    assert len(entries) == 1 and all("|K64|" in key for key in entries)
    assert [s.label for s in tuned] == ["8x64x48 i8"]
