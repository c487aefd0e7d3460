"""Time every candidate config of each kernel of a QAT linear and keep the fastest.

On a GPU candidates come from :mod:`.space` and are timed with ``triton.testing.do_bench``
(median). Under Triton's interpreter there is one candidate per kernel (timed with a wall clock),
so the whole path, cache writes included, can be exercised on a CPU.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton

from triton_qat.kernels._common import INTERPRET
from triton_qat.kernels.gemm_backward import dgrad, wgrad
from triton_qat.kernels.gemm_int8 import int8_linear
from triton_qat.kernels.quantize import quantize_rows

from . import gemm_config, get_cache, quantize_config
from .cache import make_key
from .space import SMEM_FALLBACK, candidates

KERNELS = ("quantize_x", "quantize_w", "fwd", "dgrad", "wgrad")


@dataclass(frozen=True)
class LinearShape:
    """A QAT linear to tune for: M tokens, K -> N features, weight groups of ``group_size``."""

    M: int
    K: int
    N: int
    dtype: torch.dtype = torch.bfloat16
    w_bits: int = 8
    group_size: int = 0  # 0: per channel

    @property
    def group(self) -> int:
        return self.group_size or self.K


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


def _problems(s: LinearShape, device: torch.device) -> dict[str, tuple[tuple, Callable]]:
    """Per kernel: (search shape, fn(config) -> launch) with realistic operands."""
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(s.M, s.K, device=device, generator=gen).to(s.dtype)
    w = (torch.randn(s.N, s.K, device=device, generator=gen) * 0.02).to(s.dtype)
    dy = torch.randn(s.M, s.N, device=device, generator=gen).to(s.dtype)
    wq = -(1 << (s.w_bits - 1)), (1 << (s.w_bits - 1)) - 1
    qa = quantize_rows(x, -128, 127, s.K, False, pack_mask=True)
    qw = quantize_rows(w, wq[0], wq[1], s.group, True, pack_mask=False)
    return {
        "quantize_x": ((s.M, s.K), lambda c: quantize_rows(x, -128, 127, s.K, False,
                                                          pack_mask=True, config=c)),
        "quantize_w": ((s.N, s.group), lambda c: quantize_rows(w, wq[0], wq[1], s.group, True,
                                                              pack_mask=False, config=c)),
        "fwd": ((s.M, s.N, s.K), lambda c: int8_linear(qa.codes, qa.scale, qa.zero_point,
                                                       qw.codes, qw.scale, qw.code_sum, None,
                                                       s.dtype, config=c)),
        "dgrad": ((s.M, s.N, s.K), lambda c: dgrad(dy, qw.codes, qw.scale, qa.mask, config=c)),
        "wgrad": ((s.M, s.N, s.K), lambda c: wgrad(dy, qa.codes, qa.scale, qa.zero_point,
                                                   qw.mask, True, config=c)),
    }  # fmt: skip


def _key_and_default(kernel: str, s: LinearShape, device: torch.device) -> tuple[str, dict]:
    dt = str(s.dtype).replace("torch.", "")
    if kernel == "quantize_x":
        return (make_key("quantize", s.M, s.K, s.K, dt, "pack"),
                quantize_config(s.M, s.K, device, s.dtype, pack_mask=True))  # fmt: skip
    if kernel == "quantize_w":
        return (make_key("quantize", s.N, s.group, s.group, dt, "bytes"),
                quantize_config(s.N, s.group, device, s.dtype, pack_mask=False))  # fmt: skip
    extra = f"g{s.group}" if kernel == "fwd" and s.group != s.K else ""
    return (make_key(kernel, s.M, s.N, s.K, dt, extra),
            gemm_config(kernel, s.M, s.N, s.K, device, s.dtype, s.group))  # fmt: skip


def tune(s: LinearShape, device: torch.device, kernels=KERNELS, progress=None) -> dict[str, dict]:
    """Tune ``kernels`` for one linear; store the winners in the cache and return
    ``{kernel: {"key", "config", "ms", "tried"}}``. ``progress(n)`` is called per timed config."""
    if device.type != "cuda" and not INTERPRET:
        raise RuntimeError("tuning needs a CUDA device, or TRITON_INTERPRET=1 for a CPU dry run")
    problems = _problems(s, device)
    results, entries = {}, {}
    for kernel in kernels:
        search_shape, launch = problems[kernel]
        key, current = _key_and_default(kernel, s, device)
        space = [current] if INTERPRET else _space(kernel, search_shape, s.dtype, device)
        best, best_ms, tried, first_error = None, float("inf"), 0, None
        for cfg in space:
            try:
                ms = time_ms(lambda cfg=cfg, launch=launch: launch(cfg), device)
                tried += 1
            except Exception as e:  # noqa: BLE001 - a config that does not compile or fit
                ms, first_error = float("inf"), first_error or e
            if progress is not None:
                progress(1)
            if ms < best_ms:
                best, best_ms = cfg, ms
        if best is None:
            warnings.warn(f"triton_qat.autotune: no config of {kernel} ran at {key}; "
                          f"first error: {first_error!r}", stacklevel=2)  # fmt: skip
            continue
        results[kernel] = {"key": key, "config": best, "ms": best_ms, "tried": tried}
        entries[key] = {"config": best, "ms": round(best_ms, 5), "tried": tried}
    get_cache(device).store(entries)
    return results


def _space(kernel: str, search_shape: tuple, dtype: torch.dtype, device: torch.device) -> list:
    """Candidates for ``kernel`` on this GPU: its compute capability and shared-memory limit."""
    props = torch.cuda.get_device_properties(device)
    limit = getattr(props, "shared_memory_per_block_optin", None) or SMEM_FALLBACK
    elem = torch.tensor([], dtype=dtype).element_size()
    return candidates(kernel.split("_")[0], search_shape, props.major, elem, limit)


def n_candidates(s: LinearShape, device: torch.device, kernels=KERNELS) -> int:
    if INTERPRET or device.type != "cuda":
        return len(kernels)
    shapes = {"quantize_x": (s.M, s.K), "quantize_w": (s.N, s.group)}
    return sum(len(_space(k, shapes.get(k, (s.M, s.N, s.K)), s.dtype, device)) for k in kernels)
