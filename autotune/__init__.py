"""Launch configurations for triton_qat's kernels (installed as ``triton_qat.autotune``).

This is the single place kernels get their tile sizes from. Under Triton's interpreter (the CPU
test suite) every kernel uses one small config so the suite stays fast. On the GPU the configs
below are untuned defaults (not measured); per-GPU tuning and a persistent cache are the subject of
the speed issue.
"""

from __future__ import annotations

import torch
import triton
from triton_qat.kernels._common import INTERPRET

__all__ = ["quantize_config", "gemm_config"]


def quantize_config(rows: int, group_size: int, device: torch.device) -> dict:
    """Tile for the quantize kernel: ``BLOCK_R`` rows x ``BLOCK_C`` columns of one group per step."""
    block_c = max(16, min(triton.next_power_of_2(group_size), 64 if INTERPRET else 1024))
    if INTERPRET:
        return {"BLOCK_R": 64, "BLOCK_C": block_c, "num_warps": 1}
    block_r = max(1, min(16, 4096 // block_c))
    return {"BLOCK_R": block_r, "BLOCK_C": block_c, "num_warps": 4}


def gemm_config(kernel: str, M: int, N: int, K: int, device: torch.device) -> dict:
    """Tile for a GEMM kernel (``kernel`` in {"fwd", "dgrad", "wgrad"}) at problem size M x N x K
    (the output is M x N; K is the reduction)."""
    if INTERPRET:
        return {
            "BLOCK_M": 64,
            "BLOCK_N": 64,
            "BLOCK_K": 64,
            "GROUP_M": 4,
            "num_warps": 1,
            "num_stages": 1,
        }
    if kernel == "fwd":
        return {
            "BLOCK_M": 128,
            "BLOCK_N": 128,
            "BLOCK_K": 128,
            "GROUP_M": 8,
            "num_warps": 8,
            "num_stages": 3,
        }
    return {
        "BLOCK_M": 128,
        "BLOCK_N": 128,
        "BLOCK_K": 64,
        "GROUP_M": 8,
        "num_warps": 8,
        "num_stages": 3,
    }
