"""Time candidate configs of each kernel of a QAT linear and keep the fastest.

The operands come from the problem registry (:mod:`.problems`, shared with ``perf/bench.py``).
On a GPU candidates come from :mod:`.space` (the curated tutorial lists by default, the full
spaces with ``curated=False``); every candidate is first launched once from a thread pool, so
Triton compiles them in parallel on the CPU cores (the compilers release the GIL for part of the
work, ptxas runs as a subprocess), then each is timed alone with ``triton.testing.do_bench``
(median). The untuned default (the config a launch looks up before tuning) is timed first, so
every result says what tuning bought. Under Triton's interpreter there is one candidate per
kernel (timed with a wall clock), so the whole path, cache writes included, runs on a CPU.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
import triton

from triton_qat.kernels._common import INTERPRET

from . import _major, get_cache
from .problems import KERNELS, LinearShape, Problem, problems
from .space import SMEM_FALLBACK, candidates

__all__ = [
    "KERNELS",
    "LinearShape",
    "entries_of",
    "n_candidates",
    "precompile",
    "time_ms",
    "tune",
]


def time_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Median milliseconds of ``fn``."""
    if device.type == "cuda":
        return float(triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median"))
    fn()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def default_workers() -> int:
    """Threads for parallel compilation: the CPU cores this process may use, at most 16."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        cores = os.cpu_count() or 1
    return max(1, min(16, cores))


def cuda_index(device: torch.device) -> int | None:
    """The CUDA device index ``device`` means (the current device for a bare "cuda"), or None
    for other devices."""
    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


def precompile(
    launches: list[Callable[[], object]], device: torch.device, workers: int | None = None
) -> tuple[list[BaseException | None], dict]:
    """Launch each of ``launches`` once, ``workers`` at a time, and wait for the device: a first
    launch compiles (Triton keeps the binary), so timing afterwards measures launches only.
    Returns the error of each launch (None: it ran) and ``{"workers", "launches", "wall_s",
    "sum_s"}``; ``sum_s / wall_s`` is how much the pool parallelized. Under the interpreter (not
    thread-safe, nothing to compile) pass ``workers=1``; None means one per core on a GPU and 1
    elsewhere."""
    if workers is None:
        workers = default_workers() if device.type == "cuda" else 1
    local = threading.local()
    # a new thread starts on device 0; set_device needs an index ("cuda" alone has none)
    index = cuda_index(device)

    def one(fn: Callable[[], object]) -> tuple[BaseException | None, float]:
        if index is not None and not getattr(local, "ready", False):
            torch.cuda.set_device(index)
            local.ready = True
        t0 = time.perf_counter()
        try:
            fn()
            if device.type == "cuda":
                torch.cuda.current_stream(device).synchronize()
            err = None
        except Exception as e:  # noqa: BLE001 - a config that does not compile or fit
            err = e
        return err, time.perf_counter() - t0

    t0 = time.perf_counter()
    if workers == 1:
        done = [one(fn) for fn in launches]
    else:
        with ThreadPoolExecutor(workers, thread_name_prefix="triton_qat-compile") as pool:
            done = list(pool.map(one, launches))
    wall = time.perf_counter() - t0
    stats = {"workers": workers, "launches": len(launches), "wall_s": wall,
             "sum_s": sum(s for _, s in done)}  # fmt: skip
    return [e for e, _ in done], stats


def _space(prob: Problem, dtype: torch.dtype, device: torch.device, curated: bool) -> list[dict]:
    """Candidates for ``prob`` on this GPU: its compute capability and shared-memory limit."""
    props = torch.cuda.get_device_properties(device)
    limit = getattr(props, "shared_memory_per_block_optin", None) or SMEM_FALLBACK
    elem = torch.tensor([], dtype=dtype).element_size()
    return candidates(prob.kernel, prob.search_shape, _major(device), elem, limit, prob.group_size,
                      curated=curated)  # fmt: skip


def _ordered_space(prob: Problem, dtype, device, curated: bool) -> list[dict]:
    """The untuned default first (the baseline every result is compared with), then the rest."""
    space = [] if INTERPRET or device.type != "cuda" else _space(prob, dtype, device, curated)
    return [dict(prob.config)] + [c for c in space if c != prob.config]


def tune(
    s: LinearShape,
    device: torch.device,
    kernels=KERNELS,
    progress: Callable[[int], object] | None = None,
    *,
    curated: bool = True,
    store: bool = True,
    deadline: float | None = None,
    workers: int | None = None,
    skip_keys=(),
    stats: dict | None = None,
) -> dict[str, dict]:
    """Tune ``kernels`` for one linear and return ``{kernel: result}``, each result holding
    ``key``, ``config`` and ``ms`` (the fastest), ``default_config`` and ``default_ms`` (the
    config a launch used before tuning; ``default_ms`` None if it failed), ``tried`` (configs
    timed), ``failed`` (configs that did not compile or launch), ``candidates``, ``complete``
    (False when ``deadline``, a ``time.monotonic()`` value, stopped the search early) and
    ``by_path`` (the forward: the fastest ms of each path timed, "int8" / "dequant"; else {}).

    ``curated``: the short tutorial lists, else the full spaces. ``store``: write the winners to
    the cache (:func:`entries_of` gives what would be written). Kernels whose cache key is in
    ``skip_keys`` are not tuned (two linears can share a kernel problem). ``progress(n)`` is called
    per candidate. ``stats``, if given, receives the parallel compilation's numbers
    (:func:`precompile`)."""
    if device.type != "cuda" and not INTERPRET:
        raise RuntimeError("tuning needs a CUDA device, or TRITON_INTERPRET=1 for a CPU dry run")
    registry = problems(s, device)
    # a kernel the linear does not run here (the fp8 GEMM without fp8 tensor cores) is skipped
    todo = [k for k in kernels if k in registry and registry[k].key not in skip_keys]
    spaces = {k: _ordered_space(registry[k], s.dtype, device, curated) for k in todo}
    # compile every candidate in parallel first; the timing loop below then only launches
    flat = [(k, i) for k in todo for i in range(len(spaces[k]))]
    launches = [lambda p=registry[k], c=spaces[k][i]: p.launch(c) for k, i in flat]
    if device.type == "cuda":
        errors, compile_stats = precompile(launches, device, workers)
    else:  # the interpreter compiles nothing (and is not thread-safe)
        errors, compile_stats = [None] * len(launches), {"workers": 0, "launches": 0}
    failed_at = {ki for ki, e in zip(flat, errors, strict=True) if e is not None}
    first_error = {}
    for ki, e in zip(flat, errors, strict=True):
        if e is not None:
            first_error.setdefault(ki[0], e)
    if stats is not None:
        stats.update(compile_stats)
    results = {}
    for name in todo:
        prob = registry[name]
        best, best_ms, tried, default_ms, complete = None, float("inf"), 0, None, True
        by_path: dict[str, float] = {}  # the forward's paths, each at its fastest config
        for i, cfg in enumerate(spaces[name]):
            if i and deadline is not None and time.monotonic() > deadline:
                complete = False
                if progress is not None:
                    progress(len(spaces[name]) - i)
                break
            ms = float("inf")
            if (name, i) not in failed_at:
                try:
                    ms = time_ms(lambda cfg=cfg, launch=prob.launch: launch(cfg), device)
                    tried += 1
                except Exception as e:  # noqa: BLE001 - a config that fails when timed
                    first_error.setdefault(name, e)
                    failed_at.add((name, i))
            if i == 0 and ms < float("inf"):
                default_ms = ms
            if progress is not None:
                progress(1)
            if ms < best_ms:
                best, best_ms = cfg, ms
            if "DEQUANT" in cfg and ms < float("inf"):
                path = "dequant" if cfg["DEQUANT"] else "gluon" if cfg.get("GLUON") else "int8"
                by_path[path] = min(by_path.get(path, ms), ms)
        if best is None:
            warnings.warn(f"triton_qat.autotune: no config of {name} ran at {prob.key}; "
                          f"first error: {first_error.get(name)!r}", stacklevel=2)  # fmt: skip
            continue
        results[name] = {
            "key": prob.key,
            "config": best,
            "ms": best_ms,
            "tried": tried,
            "failed": sum(1 for k, _ in failed_at if k == name),
            "candidates": len(spaces[name]),
            "default_config": spaces[name][0],
            "default_ms": default_ms,
            "complete": complete,
            "by_path": by_path,
        }
    if store and results:
        get_cache(device).store(entries_of(results))
    return results


def entries_of(results: dict[str, dict]) -> dict[str, dict]:
    """Cache entries (:mod:`.cache` format) of :func:`tune`'s results."""
    return {r["key"]: {"config": r["config"], "ms": round(r["ms"], 5), "tried": r["tried"]}
            for r in results.values()}  # fmt: skip


def n_candidates(
    s: LinearShape, device: torch.device, kernels=KERNELS, curated: bool = True
) -> int:
    if INTERPRET or device.type != "cuda":
        registry = problems(s, device)
        return sum(1 for k in kernels if k in registry)
    registry = problems(s, device)
    return sum(len(_ordered_space(registry[k], s.dtype, device, curated)) for k in kernels
               if k in registry)  # fmt: skip
