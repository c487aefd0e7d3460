"""Time every candidate config of each kernel of a QAT linear and keep the fastest.

The operands come from the problem registry (:mod:`.problems`, shared with ``perf/bench.py``).
On a GPU candidates come from :mod:`.space` and are timed with ``triton.testing.do_bench``
(median). Under Triton's interpreter there is one candidate per kernel (timed with a wall clock),
so the whole path, cache writes included, can be exercised on a CPU.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable

import torch
import triton

from triton_qat.kernels._common import INTERPRET

from . import get_cache
from .problems import KERNELS, LinearShape, problems
from .space import SMEM_FALLBACK, candidates

__all__ = ["KERNELS", "LinearShape", "n_candidates", "time_ms", "tune"]


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


def tune(s: LinearShape, device: torch.device, kernels=KERNELS, progress=None) -> dict[str, dict]:
    """Tune ``kernels`` for one linear; store the winners in the cache and return
    ``{kernel: {"key", "config", "ms", "tried"}}``. ``progress(n)`` is called per timed config."""
    if device.type != "cuda" and not INTERPRET:
        raise RuntimeError("tuning needs a CUDA device, or TRITON_INTERPRET=1 for a CPU dry run")
    registry = problems(s, device)
    results, entries = {}, {}
    for name in kernels:
        prob = registry[name]
        space = [prob.config] if INTERPRET else _space(prob, s.dtype, device)
        best, best_ms, tried, first_error = None, float("inf"), 0, None
        for cfg in space:
            try:
                ms = time_ms(lambda cfg=cfg, launch=prob.launch: launch(cfg), device)
                tried += 1
            except Exception as e:  # noqa: BLE001 - a config that does not compile or fit
                ms, first_error = float("inf"), first_error or e
            if progress is not None:
                progress(1)
            if ms < best_ms:
                best, best_ms = cfg, ms
        if best is None:
            warnings.warn(f"triton_qat.autotune: no config of {name} ran at {prob.key}; "
                          f"first error: {first_error!r}", stacklevel=2)  # fmt: skip
            continue
        results[name] = {"key": prob.key, "config": best, "ms": best_ms, "tried": tried}
        entries[prob.key] = {"config": best, "ms": round(best_ms, 5), "tried": tried}
    get_cache(device).store(entries)
    return results


def _space(prob, dtype: torch.dtype, device: torch.device) -> list:
    """Candidates for ``prob`` on this GPU: its compute capability and shared-memory limit."""
    props = torch.cuda.get_device_properties(device)
    limit = getattr(props, "shared_memory_per_block_optin", None) or SMEM_FALLBACK
    elem = torch.tensor([], dtype=dtype).element_size()
    return candidates(prob.kernel, prob.search_shape, props.major, elem, limit, prob.group_size)


def n_candidates(s: LinearShape, device: torch.device, kernels=KERNELS) -> int:
    if INTERPRET or device.type != "cuda":
        return len(kernels)
    registry = problems(s, device)
    return sum(len(_space(registry[k], s.dtype, device)) for k in kernels)
