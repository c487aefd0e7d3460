"""Launch configurations for triton_qat's kernels (installed as ``triton_qat.autotune``).

Every launcher asks here for its tile sizes with the actual shape at run time (the ops are opaque
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

from .cache import ConfigCache, make_key
from .space import DEFAULTS, quantize_default

__all__ = ["quantize_config", "gemm_config", "device_name", "get_cache", "record_lookups"]

# Interpreter configs: 64-wide tiles keep the CPU suite ~3x faster than 32 while odd test shapes
# still span several tiles per dimension.
_INTERPRET_GEMM = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 4, "num_warps": 1,
                   "num_stages": 1}  # fmt: skip
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


def get_cache(device: torch.device) -> ConfigCache:
    return _cache_for(device_name(device))


def _dtype_name(dtype: torch.dtype | None) -> str:
    return str(dtype).replace("torch.", "") if dtype is not None else "any"


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
    if INTERPRET and cfg is None:
        cfg = default
    cfg = dict(cfg if cfg is not None else default)
    for log in _RECORDERS:
        log.append((key, cfg))
    return cfg


def quantize_config(
    rows: int, group_size: int, device: torch.device, dtype=None, pack_mask: bool = True
) -> dict:
    """Tile for the quantize kernel: ``BLOCK_R`` rows x ``BLOCK_C`` columns of one group per step
    (activations pack the mask in bits, weights store bytes: tuned separately)."""
    extra = "pack" if pack_mask else "bytes"
    key = make_key("quantize", rows, group_size, group_size, _dtype_name(dtype), extra)
    if INTERPRET:
        block_c = max(16, min(1 << max(0, (group_size - 1).bit_length()), 64))
        default = {"BLOCK_R": 64, "BLOCK_C": block_c, "num_warps": 1}
    else:
        default = quantize_default(rows, group_size)
    return _lookup(key, device, default)


def gemm_config(
    kernel: str, M: int, N: int, K: int, device: torch.device, dtype=None, group_size: int = 0
) -> dict:
    """Tile for a GEMM kernel of a linear with M tokens, K inputs, N outputs. ``kernel`` is
    "fwd" (out [M, N]), "dgrad" (out [M, K]) or "wgrad" (out [N, K]); BLOCK_M / BLOCK_N / BLOCK_K
    always tile M / N / K."""
    extra = f"g{group_size}" if kernel == "fwd" and group_size not in (0, K) else ""
    key = make_key(kernel, M, N, K, _dtype_name(dtype), extra)
    return _lookup(key, device, _INTERPRET_GEMM if INTERPRET else DEFAULTS[kernel])
