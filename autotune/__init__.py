"""Launch configurations for triton_qat's kernels (installed as ``triton_qat.autotune``).

The op layer (``triton_qat.dispatch``) asks here for each launch's config with the actual shape at
run time and hands it to the launcher in ``triton_qat.kernels`` (the kernels never ask: they are
leaves). This package imports ``kernels`` (to time them) and nothing else of triton_qat. The ops are opaque
``torch.library`` custom ops, so this also holds under ``torch.compile``: a compiled model picks
per-shape configs). Under Triton's interpreter one small config per kernel is used so the CPU test
suite stays fast. On a GPU the answer comes from the tuned-config cache (:mod:`.cache`), else an
untuned default. ``python -m triton_qat.autotune --shapes MxKxN,...`` tunes and fills the cache.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from triton_qat.kernels._common import INTERPRET

from .cache import GENERATION, ConfigCache, make_key
from .space import as_dequantized, default_config, fit_config, fit_quantize, weight_narrower

__all__ = [
    "quantize_config",
    "gemm_config",
    "as_dequantized",
    "weight_narrower",
    "quantize_key",
    "gemm_key",
    "device_name",
    "get_cache",
    "record_lookups",
    "GENERATION",
    "invalidate",
]

_RECORDERS: list[list] = []


def device_name(device: torch.device) -> str:
    """The name a cache file is keyed by: the GPU's name, or "interpreter" on CPU."""
    return _device_name(device.type, device.index)


@functools.cache
def _device_name(kind: str, index: int | None) -> str:
    if kind == "cuda":
        return torch.cuda.get_device_name(index)
    return "interpreter"


@functools.cache
def _cache_for(name: str) -> ConfigCache:
    return ConfigCache(name)


def _major(device: torch.device) -> int:
    """The generation whose defaults a GPU gets: 9 for Hopper-class NVIDIA GPUs (compute
    capability 9+ with Hopper's 227 KiB of shared memory per block: TMA, the 144 KiB tiles), else
    8 (sm_80-family tiles within 99 KiB, no TMA: also ROCm GPUs and small-shared-memory parts);
    9 off-GPU (the interpreter ignores it)."""
    return _generation(device.type, device.index)


@functools.cache
def _generation(kind: str, index: int | None) -> int:
    if kind != "cuda":
        return 9
    props = torch.cuda.get_device_properties(index)
    smem = getattr(props, "shared_memory_per_block_optin", 0)
    hopper = props.major >= 9 and torch.version.hip is None and smem >= 200 * 1024
    return 9 if hopper else 8


def get_cache(device: torch.device) -> ConfigCache:
    return _cache_for(device_name(device))


def _dtype_name(dtype: torch.dtype | None) -> str:
    return str(dtype).replace("torch.", "") if dtype is not None else "any"


def invalidate() -> None:
    """Make every plan decided from the configs stale (bumps :data:`GENERATION`): for code that
    changes how configs are answered other than through the cache (tests patching a lookup)."""
    GENERATION[0] += 1


@contextlib.contextmanager
def record_lookups():
    """Collect ``(key, config)`` of every config lookup in this block (for tests and debugging)."""
    log: list = []
    _RECORDERS.append(log)
    try:
        yield log
    finally:
        _RECORDERS.remove(log)


def _lookup(key: str, device: torch.device, default: dict) -> dict:
    cfg = get_cache(device).lookup(key) if (device.type == "cuda" or INTERPRET) else None
    return dict(cfg if cfg is not None else default)


def _fitted(args: tuple, device: torch.device, compute) -> dict:
    """The config for ``args`` (the public function's arguments): ``compute()`` gives (key,
    config) once per cache state (a launch asks every call; the cache's ``fitted`` memo is
    cleared when it reloads or stores), then a copy per call. Every answer is recorded."""
    cache = get_cache(device) if (device.type == "cuda" or INTERPRET) else None
    memo = cache.fitted if cache is not None else {}  # one snapshot: a store swaps the dict
    hit = memo.get(args)
    if hit is None:
        hit = memo[args] = compute()
    key, cfg = hit
    for log in _RECORDERS:
        log.append((key, dict(cfg)))
    return dict(cfg)


def quantize_key(rows: int, group_size: int, dtype: torch.dtype | None, pack_mask: bool) -> str:
    """Cache key of a quantize launch (activations pack the mask in bits, weights store bytes)."""
    extra = "pack" if pack_mask else "bytes"
    return make_key("quantize", rows, group_size, group_size, _dtype_name(dtype), extra)


def gemm_key(
    kernel: str, M: int, N: int, K: int, dtype: torch.dtype | None, group_size: int
) -> str:
    """Cache key of a GEMM launch of a linear with M tokens, K inputs, N outputs; the forward is
    keyed by the weight's group size too (``group_size == K``: per channel)."""
    extra = f"g{group_size}" if kernel == "fwd" and group_size not in (0, K) else ""
    return make_key(kernel, M, N, K, _dtype_name(dtype), extra)


def quantize_config(
    rows: int,
    group_size: int,
    device: torch.device,
    dtype=None,
    pack_mask: bool = True,
    with_y: bool = False,
    y_per_row: bool = False,
) -> dict:
    """Tile for the quantize kernel: ``BLOCK_R`` rows x ``BLOCK_C`` columns of one group per step;
    ``with_y``: the call writes the fake-quantized values too, through the per-row NaN path with
    ``y_per_row`` (fitted by ``fit_quantize``)."""

    def compute() -> tuple[str, dict]:
        key = quantize_key(rows, group_size, dtype, pack_mask)
        default = default_config("quantize", (rows, group_size), INTERPRET)
        return key, fit_quantize(_lookup(key, device, default), with_y, y_per_row)

    memo = ("quantize", rows, group_size, dtype, pack_mask, with_y, y_per_row)
    return _fitted(memo, device, compute)


def gemm_config(
    kernel: str, M: int, N: int, K: int, device: torch.device, dtype=None, group_size: int = 0
) -> dict:
    """Tile for a GEMM kernel of a linear with M tokens, K inputs, N outputs. ``kernel`` is
    "fwd" (out [M, N]), "dgrad" (out [M, K]) or "wgrad" (out [N, K]); BLOCK_M / BLOCK_N / BLOCK_K
    always tile M / N / K. The forward's config is fitted to its mode (the weight's group size),
    here and in every tuning candidate, so a stored config is exactly what runs."""

    def compute() -> tuple[str, dict]:
        group = group_size or K
        key = gemm_key(kernel, M, N, K, dtype, group)
        elem_bytes = dtype.itemsize if dtype is not None else 2
        default = default_config(kernel, (M, N, K), INTERPRET, group, elem_bytes, _major(device))
        return key, fit_config(kernel, _lookup(key, device, default), K, group)

    return _fitted((kernel, M, N, K, dtype, group_size), device, compute)


def dequantize_config(rows: int, cols: int, device: torch.device, dtype=None) -> dict:
    """Tile of the backward's row dequantize (x_fq from codes): a bandwidth-bound elementwise
    pass, 16-byte int8 loads per thread at BLOCK_C=2048 / 4 warps; not tuned (no cache entry)."""
    del rows, device, dtype
    if INTERPRET:
        return {"BLOCK_R": 64, "BLOCK_C": max(16, min(64, 1 << max(0, (cols - 1).bit_length()))),
                "num_warps": 1}  # fmt: skip
    return {"BLOCK_R": 1, "BLOCK_C": 2048, "num_warps": 4}
