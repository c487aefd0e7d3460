"""Autotune cache validation: an entry the kernels cannot launch is dropped when the file is read,
with one warning naming the file, so the launcher falls back to its default instead of raising on
every forward."""

import json
import math
import warnings

import pytest
import torch

import triton_qat as tq
from triton_qat import autotune
from triton_qat.autotune.cache import (
    FORMAT_VERSION,
    ConfigCache,
    file_name,
    make_key,
    valid_entry,
    write_entries,
)

QKEY = "quantize|M32|N64|K64|float32|pack"
FKEY = "fwd|M32|N64|K64|float32|"
QUANT = {"BLOCK_R": 4, "BLOCK_C": 64, "num_warps": 1}
GEMM = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 1, "num_warps": 1, "num_stages": 1,
        "TMA": 0}  # fmt: skip
FWD = {**GEMM, "DEQUANT": 0, "GLUON": 0}  # the forward's configs also choose its path
G1 = {**FWD, "BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32, "num_warps": 4, "num_stages": 3,
      "GLUON": 1}  # a Gluon tile for per-group weights in groups of 32  # fmt: skip
BWD = {**GEMM, "CUBLAS": 0}  # the backward GEMMs' choose torch.mm + the mask pass or not
# a valid entry of another shape that must survive next to the bad one
GOOD_KEY = make_key("fwd", 64, 24, 40, "float32")
GOOD = {"config": FWD, "ms": 0.5, "tried": 3}

BAD = {
    "BLOCK_R=3": (QKEY, {"config": {**QUANT, "BLOCK_R": 3}}),
    "BLOCK_R=0": (QKEY, {"config": {**QUANT, "BLOCK_R": 0}}),
    "BLOCK_C=12": (QKEY, {"config": {**QUANT, "BLOCK_C": 12}}),
    "BLOCK_C=4": (QKEY, {"config": {**QUANT, "BLOCK_C": 4}}),  # < 8: no whole mask byte
    "BLOCK_C=64.0": (QKEY, {"config": {**QUANT, "BLOCK_C": 64.0}}),
    "num_warps=3": (QKEY, {"config": {**QUANT, "num_warps": 3}}),
    "num_warps=64": (FKEY, {"config": {**FWD, "num_warps": 64}}),
    "num_stages=0": (FKEY, {"config": {**FWD, "num_stages": 0}}),
    "num_stages=9": (FKEY, {"config": {**FWD, "num_stages": 9}}),
    "GROUP_M=0": (FKEY, {"config": {**FWD, "GROUP_M": 0}}),
    "BLOCK_N=8": (FKEY, {"config": {**FWD, "BLOCK_N": 8}}),  # tl.dot needs >= 16
    "BLOCK_M=48": (FKEY, {"config": {**FWD, "BLOCK_M": 48}}),
    "fwd BLOCK_K=16": (FKEY, {"config": {**FWD, "BLOCK_K": 16}}),
    "tile too big": (FKEY, {"config": {**FWD, "BLOCK_M": 1 << 20, "BLOCK_K": 64}}),
    "unknown key": (QKEY, {"config": {**QUANT, "BLOCK_X": 16}}),
    "missing key": (FKEY, {"config": {k: v for k, v in FWD.items() if k != "num_stages"}}),
    "quantize keys on gemm": (FKEY, {"config": QUANT}),
    "bool value": (QKEY, {"config": {**QUANT, "num_warps": True}}),
    "config not a dict": (FKEY, {"config": [16, 32]}),
    "entry not a dict": (FKEY, [FWD]),
    "no config": (FKEY, {"ms": 1.0}),
    "negative M in key": ("fwd|M-32|N64|K64|float32|", {"config": FWD}),
    "M not an int": ("fwd|Mx|N64|K64|float32|", {"config": FWD}),
    "N missing its prefix": ("fwd|M32|64|K64|float32|", {"config": FWD}),
    "M zero": ("fwd|M0|N64|K64|float32|", {"config": FWD}),
    "K negative": ("fwd|M32|N64|K-64|float32|", {"config": FWD}),
    "unknown dtype": ("fwd|M32|N64|K64|float64|", {"config": FWD}),
    "too few fields": ("fwd|M32|N64|K64|float32", {"config": FWD}),
    "unknown kernel": ("conv|M32|N64|K64|float32|", {"config": FWD}),
    "ms NaN": (FKEY, {"config": FWD, "ms": math.nan}),
    "ms inf": (FKEY, {"config": FWD, "ms": math.inf}),
    "ms negative": (FKEY, {"config": FWD, "ms": -1.0}),
    "ms string": (FKEY, {"config": FWD, "ms": "1.0"}),
    "tried negative": (FKEY, {"config": FWD, "tried": -1}),
    "tried float": (FKEY, {"config": FWD, "tried": 2.5}),
    "tried bool": (FKEY, {"config": FWD, "tried": True}),
    "fwd without DEQUANT": (FKEY, {"config": GEMM}),
    "DEQUANT=2": (FKEY, {"config": {**FWD, "DEQUANT": 2}}),
    "dgrad with DEQUANT": ("dgrad|M16|N16|K16|bfloat16|", {"config": FWD}),
    "dgrad without TMA": (
        "dgrad|M16|N16|K32|bfloat16|",
        {"config": {k: v for k, v in BWD.items() if k != "TMA"}},
    ),
    "dgrad without CUBLAS": ("dgrad|M16|N32|K32|bfloat16|", {"config": GEMM}),
    "CUBLAS=2": ("wgrad|M16|N32|K16|bfloat16|", {"config": {**BWD, "CUBLAS": 2}}),
    "CUBLAS at fp32": ("dgrad|M16|N32|K48|float32|", {"config": {**BWD, "CUBLAS": 1}}),
    "fwd with CUBLAS": ("fwd|M16|N48|K64|float32|", {"config": {**FWD, "CUBLAS": 1}}),
    "DEQUANT on a per-channel forward": (
        FKEY.replace("float32", "bfloat16"),
        {"config": {**FWD, "DEQUANT": 1}},
    ),
    "TMA=2": ("wgrad|M16|N16|K16|bfloat16|", {"config": {**BWD, "TMA": 2}}),
    "GLUON=2": (FKEY, {"config": {**FWD, "GLUON": 2}}),
    # GLUON per group (MODE 1): groups of 32 / 64 / 128 with BLOCK_K = the group, at most 64
    # accumulator elements a thread
    "GLUON per group, two K steps a group": ("fwd|M32|N64|K256|bfloat16|g64", {"config": G1}),
    "GLUON per group of 96": ("fwd|M32|N64|K192|bfloat16|g96", {"config": G1}),
    "GLUON per group of 8 (MODE 2)": ("fwd|M32|N64|K64|bfloat16|g8", {"config": G1}),
    "GLUON per group, 128 elements a thread": (
        "fwd|M32|N64|K128|bfloat16|g32",
        {"config": {**G1, "BLOCK_M": 128}},
    ),
    "GLUON with DEQUANT": (
        "fwd|M32|N64|K256|bfloat16|g32",
        {"config": {**FWD, "GLUON": 1, "DEQUANT": 1}},
    ),
    "dgrad with GLUON": ("dgrad|M16|N16|K64|bfloat16|", {"config": {**BWD, "GLUON": 0}}),
    # GLUON with a tile the Gluon kernel cannot take (every launch would raise)
    "GLUON on one warp": (FKEY, {"config": {**FWD, "GLUON": 1}}),
    "float8 GLUON on one warp": (
        "f8fwd|M32|N64|K128|bfloat16|",
        {"config": {**GEMM, "BLOCK_K": 128, "TMA": 1, "GLUON": 1}},
    ),
    "float8 BLOCK_K 64": (
        "f8fwd|M32|N80|K128|bfloat16|",
        {"config": {**GEMM, "BLOCK_K": 64, "TMA": 1, "GLUON": 0}},
    ),
}


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_QAT_CACHE_DIR", str(tmp_path))  # restored by monkeypatch
    autotune._cache_for.cache_clear()
    yield tmp_path
    autotune._cache_for.cache_clear()


def _write(path, entries) -> None:
    path.write_text(json.dumps({"version": FORMAT_VERSION, "entries": entries}))


def _load(path) -> tuple[ConfigCache, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache = ConfigCache("interpreter")
    return cache, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


@pytest.mark.parametrize("key,entry", list(BAD.values()), ids=list(BAD))
def test_unlaunchable_entry_is_dropped_with_a_warning(cache_dir, key, entry):
    path = cache_dir / file_name("interpreter")
    _write(path, {key: entry, GOOD_KEY: GOOD})
    cache, msgs = _load(path)
    assert len(msgs) == 1 and str(path) in msgs[0], msgs  # once, naming the file
    assert key not in cache.entries
    if key.split("|")[1][1:].lstrip("-").isdigit():  # a key lookup can parse
        assert cache.lookup(key) is None  # the launcher falls back to its default
    assert list(cache.entries) == [GOOD_KEY] and cache.lookup(GOOD_KEY) == FWD


@pytest.mark.parametrize(
    "key,cfg",
    [
        (QKEY, {"BLOCK_R": 1, "BLOCK_C": 8, "num_warps": 32}),
        ("quantize|M16|N32|K32|any|bytes", {"BLOCK_R": 16, "BLOCK_C": 2048, "num_warps": 8}),
        (FKEY, {**FWD, "num_stages": 8, "GROUP_M": 8}),
        ("dgrad|M16|N16|K16|bfloat16|", {**BWD, "BLOCK_K": 16}),  # BLOCK_K >= 32: fwd only
        ("wgrad|M4096|N64|K64|float16|", {**BWD, "BLOCK_M": 256}),
        ("dgrad|M8192|N64|K64|bfloat16|", {**BWD, "CUBLAS": 1}),
        ("fwd|M32|N64|K64|float32|g32", FWD),
        ("fwd|M32|N64|K64|bfloat16|g32", {**FWD, "DEQUANT": 1, "BLOCK_K": 16}),  # a 16-bit GEMM
        ("fwd|M32|N64|K64|bfloat16|g32", {**FWD, "DEQUANT": 1, "TMA": 1}),
        ("wgrad|M4096|N64|K64|bfloat16|", {**BWD, "TMA": 1}),
        ("fwd|M32|N64|K64|float32|", {**FWD, "TMA": 1}),  # the int8 path loads codes by TMA too
        (
            "fwd|M8192|N64|K64|bfloat16|",
            {**FWD, "GLUON": 1, "BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 4, "num_stages": 4},
        ),  # the Gluon kernel
        ("fwd|M8192|N64|K128|bfloat16|g32", G1),  # its per-group form (MODE 1)
        ("fwd|M8192|N64|K256|float32|g128", {**G1, "BLOCK_K": 128}),
        ("f8fwd|M8192|N64|K128|bfloat16|", {**GEMM, "BLOCK_K": 128, "TMA": 1, "GLUON": 0}),
    ],
)
def test_launchable_entries_are_kept(cache_dir, key, cfg):
    assert valid_entry(key, {"config": cfg, "ms": 0, "tried": 0})
    path = cache_dir / file_name("interpreter")
    _write(path, {key: {"config": cfg, "ms": 0.25, "tried": 0}})
    cache, msgs = _load(path)
    assert msgs == [] and cache.lookup(key) == cfg


def test_version_2_file_keeps_all_but_its_backward_entries(cache_dir):
    """A format-2 file (before the backward GEMMs' CUBLAS) still serves its forward and quantize
    entries; its dgrad / wgrad ones, tuned without torch.mm, are dropped without a warning."""
    path = cache_dir / file_name("interpreter")
    pre_gluon = {k: v for k, v in FWD.items() if k != "GLUON"}  # what version 2 wrote
    old = {FKEY: {"config": pre_gluon}, QKEY: {"config": QUANT},
           "dgrad|M16|N32|K32|bfloat16|": {"config": GEMM}}  # fmt: skip
    path.write_text(json.dumps({"version": 2, "entries": old}))
    cache, msgs = _load(path)
    assert msgs == [] and set(cache.entries) == {FKEY, QKEY}
    assert cache.lookup(FKEY) == {**pre_gluon, "GLUON": 0}  # the Triton kernel it ran
    write_entries(path, "interpreter", {})
    assert json.loads(path.read_text())["version"] == FORMAT_VERSION


@pytest.mark.parametrize(
    "text",
    ["[]", '"entries"', "null", '{"version": 3, "entries": []}', '{"version": 1, "entries": {}}',
     '{"entries": {}}'],
)  # fmt: skip
def test_file_of_the_wrong_shape_is_ignored_with_one_warning(cache_dir, text):
    path = cache_dir / file_name("interpreter")
    path.write_text(text)
    cache, msgs = _load(path)
    assert len(msgs) == 1 and str(path) in msgs[0], msgs
    assert cache.entries == {} and cache.lookup(FKEY) is None


def test_mixed_file_keeps_the_good_entries_and_warns_once(cache_dir):
    path = cache_dir / file_name("interpreter")
    bad = {key.replace("N64", f"N{i}") if key in (QKEY, FKEY) else key: entry
           for i, (key, entry) in enumerate(BAD.values(), 1)}  # fmt: skip
    assert len(bad) == len(BAD)
    good = {make_key("fwd", 16 << i, 24, 40, "float32"): GOOD for i in range(3)}
    _write(path, {**bad, **good})
    cache, msgs = _load(path)
    assert len(msgs) == 1 and str(path) in msgs[0], msgs
    assert sorted(cache.entries) == sorted(good)
    # a writer merging into the file keeps only the good entries too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_entries(path, "interpreter", {QKEY: {"config": QUANT}})
    assert set(json.loads(path.read_text())["entries"]) == {*good, QKEY}


def test_forward_survives_a_bad_cache_file(cache_dir):
    """The reported crash: a BLOCK_R=3 entry made every forward raise "arange's range must be a
    power of 2". Now it warns, and the launcher runs its default config."""
    path = cache_dir / file_name("interpreter")
    bad = {
        QKEY: {"config": {"BLOCK_R": 3, "BLOCK_C": 64, "num_warps": 1}},
        FKEY.replace("N64", "N32"): {"config": {**FWD, "BLOCK_M": 24}},
        "quantize|M32|N64|K64|float32|bytes": {"config": {**QUANT, "BLOCK_C": 12}},
    }
    _write(path, bad)
    lin = tq.Linear(64, 32)
    x = torch.randn(32, 64)
    with pytest.warns(UserWarning, match=str(path.name)):
        out = lin(x)
    assert out.shape == (32, 32) and torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(lin.weight.grad).all()


def test_config_answers_follow_the_cache_when_it_stores_or_reloads(cache_dir):
    """A launch's config is computed once per cache state: storing a tuned entry, or reloading
    the files, gives the new answer on the next call; a copy is returned each time."""
    dev = torch.device("cpu")  # the interpreter's cache
    first = autotune.gemm_config("wgrad", 16, 16, 16, dev, torch.bfloat16)
    first["BLOCK_M"] = -1  # the caller's copy
    again = autotune.gemm_config("wgrad", 16, 16, 16, dev, torch.bfloat16)
    assert again["BLOCK_M"] != -1
    tuned = {**BWD, "BLOCK_M": 32, "BLOCK_N": 16}
    autotune.get_cache(dev).store({"wgrad|M16|N16|K16|bfloat16|": {"config": tuned, "ms": 1.0}})
    assert autotune.gemm_config("wgrad", 16, 16, 16, dev, torch.bfloat16) == {**tuned, "TMA": 0}
    _write(cache_dir / file_name("interpreter"), {})
    autotune.get_cache(dev).reload()
    assert autotune.gemm_config("wgrad", 16, 16, 16, dev, torch.bfloat16) == again
    with autotune.record_lookups() as log:
        autotune.gemm_config("wgrad", 16, 16, 16, dev, torch.bfloat16)
    assert log == [("wgrad|M16|N16|K16|bfloat16|", again)]  # answers from the memo are recorded
