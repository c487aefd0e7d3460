"""Persistent cache of tuned launch configs: one JSON file per GPU name and Triton version.

Lookup order for a (kernel, shape) key: the user's cache file (``$TRITON_QAT_CACHE_DIR``, default
``~/.cache/triton_qat``), then the file shipped in ``triton_qat/autotune/configs/``; a strict key
match first, then the nearest tuned M bucket of the same kernel/N/K/dtype; else the caller's
default. Writes are atomic (temp file + ``os.replace`` under an exclusive lock, merging entries
written meanwhile), so two processes tuning at once never leave a broken file. A file that cannot
be read or parsed is ignored with a warning naming it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
import threading
import warnings
from datetime import datetime, timezone
from pathlib import Path

import triton

from triton_qat.kernels.gemm_int8 import fwd_mode
from triton_qat.kernels.gemm_int8_gluon import GLUON_GROUP_SIZES, check_gluon_config

# 2: GEMM configs carry DEQUANT (the forward) and TMA; 3: the backward GEMMs' carry CUBLAS and the
# forward's GLUON. A version-2 file is read without its dgrad / wgrad entries (tuned without
# torch.mm among the candidates), and a forward config without GLUON (version 2, or version 3
# before GLUON) reads as GLUON 0, the Triton kernel it ran; the next store rewrites the file as
# version 3. An older file is ignored with a warning.
FORMAT_VERSION = 3
# Bumped whenever any cache's entries change (reload, store) or :func:`invalidate` is called: what
# was decided from the configs (the op layer's launch plans) is decided again after a change.
GENERATION = [0]
SHIPPED_DIR = Path(__file__).parent / "configs"

_GEMM_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages")
# The launch parameters each kernel takes. A cache entry's config must hold exactly these keys
# (unknown or missing ones: the entry is dropped), and the keys of this dict are the kernel names a
# cache key may start with. A new parameter goes here; its value check goes in _config_ok.
CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "quantize": ("BLOCK_R", "BLOCK_C", "num_warps"),
    "fwd": _GEMM_KEYS + ("DEQUANT", "TMA", "GLUON"),
    "dgrad": _GEMM_KEYS + ("TMA", "CUBLAS"),
    "wgrad": _GEMM_KEYS + ("TMA", "CUBLAS"),
    "f8fwd": _GEMM_KEYS + ("TMA", "GLUON"),  # the float8 forward (kernels/gemm_float8.py)
}
DTYPES = ("float32", "float16", "bfloat16", "any")  # the dtype field of a key ("any": unknown)
# Elements of one block tensor Triton accepts (tl.TRITON_MAX_TENSOR_NUMEL; 2**20 in 3.6-3.9).
_MAX_NUMEL = getattr(triton.language, "TRITON_MAX_TENSOR_NUMEL", 1 << 20)
_KEY_RE = re.compile(r"([a-z][a-z0-9]*)\|M([0-9]+)\|N([0-9]+)\|K([0-9]+)\|([a-z0-9]+)\|([^|]*)")


def _version_of(path: Path) -> tuple[int, ...]:
    """(3, 10, 0) from '<gpu>__triton-3.10.0.json' (so 3.10 sorts after 3.9)."""
    text = path.stem.rpartition("__triton-")[2]
    return tuple(int(p) if p.isdigit() else 0 for p in re.split(r"[.+-]", text))


def cache_dir() -> Path:
    env = os.environ.get("TRITON_QAT_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "triton_qat"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def file_name(device_name: str) -> str:
    return f"{slug(device_name)}__triton-{triton.__version__}.json"


def m_bucket(m: int) -> int:
    """Tokens bucketed to the next power of two (>= 16): a new batch size reuses a tuned config."""
    return max(16, 1 << max(0, (max(1, m) - 1).bit_length()))


def make_key(kernel: str, m: int, n: int, k: int, dtype: str, extra: str = "") -> str:
    return f"{kernel}|M{m_bucket(m)}|N{n}|K{k}|{dtype}|{extra}"


def _split_key(key: str) -> tuple[str, int, str]:
    kernel, m, rest = key.split("|", 2)
    if not m.startswith("M"):
        raise ValueError(f"bad key {key!r}")
    return kernel, int(m[1:]), rest


def read_entries(path: Path) -> dict[str, dict]:
    """The valid entries of one cache file (see :func:`valid_entry`). An unreadable file gives {},
    a file with some bad entries its good ones: either way with one warning naming the file."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"top level is a {type(data).__name__}, not an object")
        entries = data["entries"]
        version = data.get("version")
        if not isinstance(entries, dict) or version not in (FORMAT_VERSION, 2):
            raise ValueError("unexpected layout or version")
        if version == 2:  # still valid but for the backward GEMMs' (tuned without torch.mm)
            entries = {k: v for k, v in entries.items()
                       if not (isinstance(k, str) and k.split("|")[0] in ("dgrad", "wgrad"))}  # fmt: skip
        entries = {k: _with_gluon_flag(k, v) for k, v in entries.items()}
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        warnings.warn(f"triton_qat: ignoring unreadable autotune cache {path}: {e}", stacklevel=3)
        return {}
    good = {k: v for k, v in entries.items() if valid_entry(k, v)}
    if len(good) != len(entries):
        bad = sorted(set(entries) - set(good))
        warnings.warn(f"triton_qat: ignoring {len(bad)} malformed entries of autotune cache "
                      f"{path}, e.g. {bad[0]!r}", stacklevel=3)  # fmt: skip
    return good


def _with_gluon_flag(key: object, entry: object) -> object:
    """A forward entry written before the GLUON flag, with ``GLUON: 0`` (the Triton kernel it
    ran); any other entry as it is."""
    if (isinstance(key, str) and key.startswith("fwd|") and isinstance(entry, dict)
            and isinstance(entry.get("config"), dict) and "GLUON" not in entry["config"]):  # fmt: skip
        return {**entry, "config": {**entry["config"], "GLUON": 0}}
    return entry


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_pow2(v: int) -> bool:
    return v >= 1 and not v & (v - 1)


def _key_ok(key: object) -> bool:
    """``kernel|M<int>|N<int>|K<int>|dtype|extra`` with a known kernel and dtype, and M >= 1 (the
    nearest-bucket search takes its log)."""
    match = _KEY_RE.fullmatch(key) if isinstance(key, str) else None
    if match is None:
        return False
    kernel, m, _, _, dtype, _ = match.groups()
    return kernel in CONFIG_KEYS and dtype in DTYPES and int(m) >= 1


def _config_ok(kernel: str, cfg: object) -> bool:
    """Exactly the kernel's launch parameters, each a value it can be launched with."""
    if not isinstance(cfg, dict) or set(cfg) != set(CONFIG_KEYS[kernel]):
        return False
    if not all(_is_int(v) for v in cfg.values()):
        return False
    if not all(_is_pow2(v) for name, v in cfg.items() if name.startswith("BLOCK_")):
        return False  # tl.arange needs a power-of-two range
    if not (_is_pow2(cfg["num_warps"]) and cfg["num_warps"] <= 32):
        return False
    if kernel == "quantize":  # whole mask bytes per row: BLOCK_C a multiple of 8
        return cfg["BLOCK_C"] >= 8 and cfg["BLOCK_R"] * cfg["BLOCK_C"] <= _MAX_NUMEL
    bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
    if min(bm, bn, bk) < 16 or max(bm * bn, bm * bk, bn * bk) > _MAX_NUMEL:  # tl.dot: >= 16
        return False
    if cfg["TMA"] not in (0, 1) or cfg.get("CUBLAS", 0) not in (0, 1):
        return False
    if kernel == "f8fwd" and (bk != 128 or cfg["GLUON"] not in (0, 1)):
        return False  # the fp8 GEMM promotes its accumulator every 128 products (numerics)
    if kernel in ("fwd", "f8fwd") and cfg["GLUON"] == 1 and check_gluon_config(cfg) is not None:
        return False  # a tile the Gluon kernel cannot take (warps, rows per warpgroup, stages)
    if kernel == "fwd" and (cfg["DEQUANT"] not in (0, 1) or not cfg["DEQUANT"] and bk < 32):
        return False  # the int8 path: BLOCK_K >= 32 (int8 dot operands); flags are 0/1
    if kernel == "fwd" and (cfg["GLUON"] not in (0, 1) or cfg["GLUON"] and cfg["DEQUANT"]):
        return False  # the Gluon kernel is the int8 path's (per channel), never the dequantized
    return cfg["GROUP_M"] >= 1 and 1 <= cfg["num_stages"] <= 8


def valid_entry(key: object, entry: object) -> bool:
    """A well-formed key (:func:`make_key`'s layout, known kernel and dtype) and an entry whose
    config the kernel can launch: exactly its :data:`CONFIG_KEYS`, every BLOCK_* a power of two
    (quantize BLOCK_C >= 8, GEMM tiles >= 16, fwd BLOCK_K >= 32 unless DEQUANT, flags DEQUANT /
    TMA / CUBLAS / GLUON 0 or 1, CUBLAS 0 at float32, GLUON only in MODE 0 / 1 and without
    DEQUANT, no block over Triton's tensor size limit), num_warps a power of two <= 32,
    1 <= num_stages <= 8, GROUP_M >= 1; optional "ms" a finite number >= 0 and "tried" an int
    >= 0."""
    if not _key_ok(key) or not isinstance(entry, dict) or "config" not in entry:
        return False
    ms = entry.get("ms", 0)  # an int needs no isfinite (which overflows on a huge one)
    if not (_is_int(ms) or isinstance(ms, float) and math.isfinite(ms)) or ms < 0:
        return False
    if "tried" in entry and not (_is_int(entry["tried"]) and entry["tried"] >= 0):
        return False
    kernel, cfg = key.split("|", 1)[0], entry["config"]
    if not _config_ok(kernel, cfg):
        return False
    if cfg.get("CUBLAS") and key.split("|")[4] == "float32":
        return False  # torch.mm is the 16-bit backward's (fp32 keeps the IEEE Triton dot)
    # DEQUANT is the per-group forward's: a per-channel key ("fwd|...|", no g<size>) cannot run
    # it; GLUON runs MODE 0 / 1: a per-group key's only where the group makes MODE 1 (a multiple
    # of 32 dividing K) with a BLOCK_K dividing the group and a tile that fits its partial sums
    if kernel != "fwd":
        return True
    extra = key.rsplit("|", 1)[1]
    if not extra.startswith("g"):
        return not cfg["DEQUANT"]
    if not cfg["GLUON"]:
        return True
    if not extra[1:].isdigit():
        return False
    group, k = int(extra[1:]), int(key.split("|")[3][1:])
    return (0 < group < k and k % group == 0 and fwd_mode(k, group) == 1
            and group in GLUON_GROUP_SIZES and group == cfg["BLOCK_K"]
            and check_gluon_config(cfg, per_group=True) is None)  # fmt: skip


@contextlib.contextmanager
def _locked(path: Path):
    """Exclusive advisory lock on ``path`` + '.lock' (no-op where fcntl is missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_suffix(path.suffix + ".lock")
    with open(lock_path, "a+") as fh:
        try:
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - non-POSIX
            pass
        yield


def write_entries(path: Path, device_name: str, new: dict[str, dict]) -> None:
    """Merge ``new`` into the file at ``path`` atomically."""
    with _locked(path):
        entries = read_entries(path)
        entries.update(new)
        payload = {
            "version": FORMAT_VERSION,
            "gpu": device_name,
            "triton": triton.__version__,
            "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "entries": dict(sorted(entries.items())),
        }
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(payload, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


class ConfigCache:
    """In-memory view of the shipped + user cache files for one device name."""

    def __init__(self, device_name: str) -> None:
        self.device_name = device_name
        self.user_path = cache_dir() / file_name(device_name)
        self._lock = threading.Lock()
        self.entries: dict[str, dict] = {}
        self.reload()

    def reload(self) -> None:
        shipped = read_entries(SHIPPED_DIR / file_name(self.device_name))
        if not shipped:  # the newest shipped file for another Triton version beats nothing
            matches = sorted(SHIPPED_DIR.glob(f"{slug(self.device_name)}__triton-*.json"),
                             key=_version_of)  # fmt: skip
            shipped = read_entries(matches[-1]) if matches else {}
        with self._lock:
            self.entries = {**shipped, **read_entries(self.user_path)}
            self._memo: dict[str, dict | None] = {}
            # (caller's arguments) -> (key, fitted config): autotune's per-launch answers
            self.fitted: dict[tuple, tuple[str, dict]] = {}
            GENERATION[0] += 1

    def lookup(self, key: str) -> dict | None:
        """Strict match, else the nearest tuned M bucket with the same kernel/N/K/dtype/extra.
        Reads one snapshot of the entries: :meth:`store` replaces the dict, never mutates it."""
        memo = self._memo  # launches ask per call: remember answers, misses included
        if key in memo:
            return memo[key]
        found = self._search(self.entries, key)
        memo[key] = found
        return found

    @staticmethod
    def _search(entries: dict[str, dict], key: str) -> dict | None:
        hit = entries.get(key)
        if hit is not None:
            return hit["config"]
        kernel, m, rest = _split_key(key)
        best, best_dist = None, math.inf
        for other, entry in entries.items():
            o_kernel, o_m, o_rest = _split_key(other)
            if o_kernel == kernel and o_rest == rest:
                dist = abs(math.log2(o_m) - math.log2(m))
                if dist < best_dist:
                    best, best_dist = entry["config"], dist
        return best

    def store(self, new: dict[str, dict]) -> None:
        write_entries(self.user_path, self.device_name, new)
        with self._lock:
            self.entries = {**self.entries, **new}
            self._memo = {}
            self.fitted = {}
            GENERATION[0] += 1
