"""Time every candidate config of each kernel of a QAT linear and keep the fastest.

On a GPU candidates come from :mod:`.space` and are timed with ``triton.testing.do_bench``
(median). Under Triton's interpreter there is one candidate per kernel (timed with a wall clock),
so the whole path, cache writes included, can be exercised on a CPU.
"""

from __future__ import annotations

import statistics
import time
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
from .space import candidates

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
        return float(triton.testing.do_bench(fn, warmup=10, rep=40, quantiles=[0.5])[0])
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
        return make_key("quantize", s.M, s.K, s.K, dt), quantize_config(s.M, s.K, device, s.dtype)
    if kernel == "quantize_w":
        return (make_key("quantize", s.N, s.group, s.group, dt),
                quantize_config(s.N, s.group, device, s.dtype))  # fmt: skip
    extra = f"g{s.group}" if kernel == "fwd" and s.group != s.K else ""
    return (make_key(kernel, s.M, s.N, s.K, dt, extra),
            gemm_config(kernel, s.M, s.N, s.K, device, s.dtype, s.group))  # fmt: skip


def tune(s: LinearShape, device: torch.device, kernels=KERNELS, progress=None) -> dict[str, dict]:
    """Tune ``kernels`` for one linear; store the winners in the cache and return
    ``{kernel: {"key", "config", "ms", "tried"}}``. ``progress(n)`` is called per timed config."""
    if device.type != "cuda" and not INTERPRET:
        raise RuntimeError("tuning needs a CUDA device, or TRITON_INTERPRET=1 for a CPU dry run")
    problems = _problems(s, device)
    capability = torch.cuda.get_device_capability(device)[0] if device.type == "cuda" else 0
    elem = torch.tensor([], dtype=s.dtype).element_size()
    results, entries = {}, {}
    for kernel in kernels:
        search_shape, launch = problems[kernel]
        key, current = _key_and_default(kernel, s, device)
        space = ([current] if INTERPRET
                 else candidates(kernel.split("_")[0], search_shape, capability, elem))  # fmt: skip
        best, best_ms, tried = None, float("inf"), 0
        for cfg in space:
            try:
                ms = time_ms(lambda cfg=cfg, launch=launch: launch(cfg), device)
                tried += 1
            except Exception:  # noqa: BLE001 - a config that does not compile/fit is skipped
                ms = float("inf")
            if progress is not None:
                progress(1)
            if ms < best_ms:
                best, best_ms = cfg, ms
        if best is None:
            continue
        results[kernel] = {"key": key, "config": best, "ms": best_ms, "tried": tried}
        entries[key] = {"config": best, "ms": round(best_ms, 5), "tried": tried}
    get_cache(device).store(entries)
    return results


def n_candidates(s: LinearShape, device: torch.device, kernels=KERNELS) -> int:
    if INTERPRET or device.type != "cuda":
        return len(kernels)
    cap = torch.cuda.get_device_capability(device)[0]
    elem = torch.tensor([], dtype=s.dtype).element_size()
    shapes = {"quantize_x": (s.M, s.K), "quantize_w": (s.N, s.group)}
    return sum(len(candidates(k.split("_")[0], shapes.get(k, (s.M, s.N, s.K)), cap, elem))
               for k in kernels)  # fmt: skip
