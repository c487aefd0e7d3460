"""Config spaces per kernel and GPU generation, pruned by problem shape.

A config is a plain dict of launch parameters (tile sizes, ``num_warps``, ``num_stages``). The full
spaces (:data:`SPACES`) are built by comprehension at import; :data:`CURATED` holds 12-16 configs per
kernel taken from Triton's own matmul tutorials (the tiles its Hopper/Ampere autotuner lists), the
short lists a GPU window can afford. :func:`candidates` drops tiles larger than the problem and
tiles whose pipelined operand buffers would not fit in shared memory, from either list.
"""

from __future__ import annotations

import itertools

import triton

from triton_qat.kernels._common import weight_narrower as weight_narrower  # the rule
from triton_qat.kernels.gemm_int8 import fwd_mode
from triton_qat.kernels.gemm_int8_gluon import (
    GLUON_GROUP_SIZES,
    check_gluon_config,
    gluon_available,
)

# Shared memory one block may use when the device cannot be asked (bytes): the smallest of the
# GPUs this targets (sm_86 / sm_89: 99 KiB). tune.py passes the device's own limit.
SMEM_FALLBACK = 99 * 1024

_GEMM_FWD = [
    {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "num_warps": w, "num_stages": s,
     "DEQUANT": dq, "TMA": tma, "GLUON": glu}
    for bm, bn, bk, w, s, dq, tma, glu in itertools.product(
        (64, 128, 256), (64, 128, 256), (32, 64, 128, 256), (4, 8), (3, 4, 5), (0, 1), (0, 1),
        (0, 1),
    )
    if (bk >= 64 or dq)  # the int8 path's BLOCK_K >= 64 (32 only where a group fits no larger)
    and not (glu and (dq or tma))  # the Gluon kernel (TMA loads its own): int8 path, TMA key 0
]  # fmt: skip
_GEMM_BWD = [
    {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "num_warps": w, "num_stages": s,
     "TMA": tma}
    for bm, bn, bk, w, s, tma in itertools.product(
        (64, 128, 256), (32, 64, 128), (64, 128, 256), (4, 8), (3, 4), (0, 1)
    )
]  # fmt: skip
_QUANTIZE = [
    {"BLOCK_R": r, "BLOCK_C": c, "num_warps": w}
    for r, c, w in itertools.product((1, 2, 4, 8, 16), (256, 512, 1024, 2048), (2, 4, 8))
]

# the float8 forward (kernels/gemm_float8.py): e4m3 operands, fp32 accumulator promoted every
# BLOCK_K products, which the numerics fix at 128 (kernels/gemm_float8.py's F8_BLOCK_K)
_GEMM_F8 = [
    {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": w, "num_stages": s,
     "TMA": tma, "GLUON": glu}
    for bm, bn, w, s, tma, glu in itertools.product((64, 128, 256), (64, 128, 256), (4, 8),
                                                    (3, 4, 5), (0, 1), (0, 1))
    if not (glu and not tma)  # the Gluon kernel loads by TMA (its TMA key 1)
]  # fmt: skip

SPACES = {"fwd": _GEMM_FWD, "dgrad": _GEMM_BWD, "wgrad": _GEMM_BWD, "quantize": _QUANTIZE,
          "f8fwd": _GEMM_F8}  # fmt: skip


# Untuned defaults (speed not measured), used until a tuned config exists for a shape. Sized so
# every dtype fits the 99 KiB of shared memory the smallest supported GPUs (sm_86/89) give a block:
# compiled for sm_90, fp32 dgrad takes 80 KiB, fp32 wgrad 81 KiB (tests/test_gpu_compile.py).
# "TMA": operand tiles through tensor descriptors (Hopper's TMA). default_config turns it on for
# the plain 16-bit GEMMs (dgrad, wgrad, the dequantized forward) at compute capability 9+, where
# their loops shrink (sm_90a: 134 -> 89 SASS/iter at the forward's tile); for the int8 forward,
# whose loop it does not shorten, it is a tuner candidate.
DEFAULTS = {
    "fwd": {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8,
            "num_stages": 3, "DEQUANT": 0, "TMA": 0, "GLUON": 0},
    "dgrad": {"BLOCK_M": 128, "BLOCK_N": 32, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8,
              "num_stages": 3, "TMA": 0, "CUBLAS": 0},
    "wgrad": {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8,
              "num_stages": 2, "TMA": 0, "CUBLAS": 0},
    # the float8 forward off Hopper (sm_89): 96 KiB of operand buffers, within sm_89's 99 KiB
    "f8fwd": {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8,
              "num_stages": 3, "TMA": 0, "GLUON": 0},
}  # fmt: skip
# The float8 forward on Hopper, chosen from the compiled code (sm_90a, Triton 3.9,
# perf/kernel_static.py; speed not measured): 128x128x128, 8 warps, 4 stages, TMA loads: 143
# registers, no spill, fp8 wgmma (QGMMA E4M3) with one group in flight inside each BLOCK_K step
# (the promotion into the fp32 accumulator waits for the step's group). Triton's fp8 tutorial
# tile, 128x256x128, needs a second 128x256 accumulator for the promotion: 255 registers and
# 212 B spilled.
F8_HOPPER_DEFAULT = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8,
                     "num_stages": 4, "TMA": 1, "GLUON": 0}  # fmt: skip
# The per-group forward's default at 16-bit dtypes: the dequantized path (module doc of
# kernels/gemm_int8.py), a plain 16-bit GEMM. Chosen from the compiled code, speed not measured:
# the int8 path's per-group flush costs 64 / group_size non-MMA instructions per 1024 MACs
# (docs/numerics.md "Forward GEMM"); the curated list holds both paths, so a GPU's tuner decides
# per shape. Hopper: the persistent-matmul tutorial's tile (144 KiB of shared memory); others the
# bf16 dgrad's (96 KiB, within the 99 KiB of sm_86 / sm_89).
FWD_DEQUANT_DEFAULT = {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8,
                       "num_stages": 3, "DEQUANT": 1, "TMA": 1, "GLUON": 0}  # fmt: skip
FWD_DEQUANT_DEFAULT_SM80 = {**FWD_DEQUANT_DEFAULT, "BLOCK_N": 128, "TMA": 0}
# Hopper's defaults at 16-bit dtypes, measured: what the curated lists' tuning picked on an NVIDIA
# H200 (torch 2.11, Triton 3.6; make gpu-report at 2133f21, perf/results/nvidia-h200/). The same
# forward and dgrad tile won at all three headline shapes, the wgrad tile at two; against the
# defaults above they measured 1.44-1.73x (fwd), 1.97-2.09x (dgrad), 1.48-1.58x (wgrad) faster.
# fp32 and sm_80-family GPUs keep DEFAULTS (not measured; sm_80 fp32 wgrad: see below). The dequantized forward keeps its tile:
# 128x128x64 at 4 stages measured 1.04-1.13x faster, but doubles its non-MMA instructions per MAC
# (0.64 vs 0.29 per 1024 MACs of the per-channel forward, tests/test_kernel_static.py).
HOPPER_DEFAULTS = {
    "fwd": {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4,
            "num_stages": 4, "DEQUANT": 0, "TMA": 0, "GLUON": 0},
    "dgrad": {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 256, "GROUP_M": 8, "num_warps": 8,
              "num_stages": 3, "TMA": 1, "CUBLAS": 0},
    "wgrad": {"BLOCK_M": 64, "BLOCK_N": 256, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8,
              "num_stages": 3, "TMA": 1, "CUBLAS": 0},
}  # fmt: skip
# The int8 path's default for per-group weights (fp32 outputs; a candidate at 16-bit): four warps
# on 64x128 keep the per-group flush's fp32 tile beside the int32 one without spilling at fp32
# (128x128 / 8 warps: 255 registers, 44 B spilled) and measure 0.9 non-MMA instructions per 1024
# MACs against 1.1 (sm_90a, Triton 3.9, perf/kernel_static.py).
FWD_GROUP_INT8_DEFAULT = {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8,
                          "num_warps": 4, "num_stages": 3, "DEQUANT": 0, "TMA": 0,
                          "GLUON": 0}  # fmt: skip
# fp32 wgrad on sm_80-family GPUs (an IEEE fp32 FMA dot, no tensor cores): DEFAULTS' 64-row
# reduction tile (the wgrad reduces over the tokens, BLOCK_M) spilled 9460 B at 32 registers
# (ptxas 12.9 and 13.4 alike, sm_80), a 32-row one compiles to 170 registers and no spill at the
# same 36.8 non-MMA instructions per 1024 MACs (perf/kernel_static.py --arch 80 --all, Triton
# 3.9). sm_90 keeps DEFAULTS: there the 64-row tile does not spill and the 32-row one does (8 B).
SM80_FP32_WGRAD_DEFAULT = {**DEFAULTS["wgrad"], "BLOCK_M": 32, "TMA": 0}
# The backward GEMMs' default at 16-bit dtypes on every GPU: torch.mm (cuBLAS) and then the mask
# pass (kernels/ste_mask.py; docs/numerics.md "Which configs clip"). Measured reason: on an NVIDIA
# H200 (torch 2.11, Triton 3.6, perf/results/nvidia-h200/report.csv, 8192 tokens, the three
# headline shapes) the tuned Triton dgrad ran at 59 / 81 / 72% and wgrad at 78 / 85 / 88% of
# torch.mm at the same shape; the mask pass reads one bit (dgrad) or byte (wgrad) per output
# element and writes only the clipped ones. Its own time: not measured yet. The Triton tiles stay
# candidates (CUBLAS 0), so a GPU's tuner decides per shape. fp32 keeps the Triton kernel (IEEE
# dots; torch.mm would follow allow_tf32).
BACKWARD_CUBLAS = {"CUBLAS": 1}


# Curated GEMM lists: output tile rows x cols, reduction tile, warps, stages. Drawn from Triton's
# matmul tutorials (python/tutorials/03-matrix-multiplication.py: its CUDA autotune list, fp16 and
# fp8 entries; 09-persistent-matmul.py: 128x256x64 w8 s3 on Hopper), kept per kernel where they
# compile for sm_90a without register spills and within 227 KiB of shared memory (checked with
# perf/kernel_static.py's compile path at 8192x4096x4096 bf16, Triton 3.9): the int8 forward's
# dequantizing epilogue spills at 128x256 / 256x128 / 64x256 tiles (only the tutorial's Hopper
# tile is kept, as a reference), and with int4 groups (MODE 1) at 4 warps on 128x128 tiles, so
# the forward list leans on 8 warps; the bf16 backward GEMMs stream two 16-bit operands, so
# 128-wide reductions at 4 stages do not fit.
_TILES = {
    "fwd": [
        (128, 256, 64, 8, 3),  # the persistent tutorial's Hopper tile (spills here: a reference)
        (128, 128, 128, 8, 4),
        (128, 128, 64, 8, 3),
        (128, 128, 64, 8, 4),
        (128, 128, 128, 4, 4),
        (128, 128, 64, 4, 4),
        (256, 64, 128, 8, 3),
        (64, 256, 64, 8, 3),
        (256, 64, 128, 4, 4),
        (128, 64, 128, 4, 4),
        (128, 64, 64, 4, 4),
        (64, 128, 64, 4, 4),
        (64, 64, 64, 4, 3),
    ],
    "dgrad": [
        (128, 256, 64, 8, 3),
        (256, 128, 64, 8, 3),
        (128, 256, 32, 8, 4),
        (256, 128, 32, 8, 4),
        (64, 256, 32, 4, 4),
        (128, 128, 32, 4, 4),
        (128, 128, 64, 4, 4),
        (128, 128, 64, 8, 3),
        (128, 128, 64, 8, 4),
        (128, 64, 64, 4, 4),
        (64, 128, 64, 4, 4),
        (128, 32, 64, 4, 4),
        (64, 64, 64, 4, 3),
    ],
    "wgrad": [
        (256, 128, 64, 8, 3),
        (256, 64, 64, 8, 3),
        (64, 256, 32, 4, 4),
        (128, 128, 32, 4, 4),
        (128, 128, 64, 4, 4),
        (128, 128, 64, 8, 3),
        (128, 128, 64, 8, 4),
        (128, 64, 64, 4, 4),
        (64, 128, 64, 4, 4),
        (128, 32, 64, 4, 4),
        (64, 64, 64, 4, 3),
    ],
}


def _gemm_tiles(kernel: str, rows: int, cols: int, red: int, warps: int, stages: int) -> dict:
    """A tile as ``kernel``'s parameters: fwd's output is [M, N] reduced over K; dgrad's
    is [M, K] reduced over N (BLOCK_N); wgrad's is [N, K] reduced over M (BLOCK_M). The 16-bit
    GEMMs load through TMA (candidates() turns it off below compute capability 9)."""
    bm, bn, bk = {"fwd": (rows, cols, red), "dgrad": (rows, red, cols),
                  "wgrad": (red, rows, cols)}[kernel]  # fmt: skip
    cfg = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "num_warps": warps,
           "num_stages": stages, "TMA": 1}  # fmt: skip
    return {**cfg, "GLUON": 0} if kernel == "fwd" else {**cfg, "CUBLAS": 0}


# Quantize: (BLOCK_R, BLOCK_C, num_warps). Wide rows (per token, per channel) stream 256-4096
# columns per step; per-group weights want BLOCK_C == the group (128, 32) and more rows per program.
# candidates(curated=True) keeps BLOCK_C >= min(group, 256), so each group size sees its own list.
_QUANTIZE_CURATED = [
    (1, 4096, 2), (1, 8192, 4), (1, 16384, 8),  # a whole row in one tile: x read once
    (1, 4096, 4), (1, 8192, 8), (1, 16384, 16),
    (1, 1024, 4), (1, 2048, 4), (1, 2048, 8), (1, 4096, 8), (2, 1024, 4), (2, 2048, 8),
    (4, 512, 4), (4, 1024, 4), (4, 1024, 8), (8, 512, 4), (8, 512, 8), (16, 256, 4),
    (8, 128, 2), (16, 128, 4), (32, 128, 4), (32, 128, 8), (64, 128, 8), (128, 128, 8),
    (32, 32, 2), (64, 32, 4), (128, 32, 4),
]  # fmt: skip


# The Gluon forward (kernels/gemm_int8_gluon.py: TMA ring, async int32 wgmma with one group in
# flight; per-channel symmetric weights on sm_90, GLUON 1), a tuner candidate, not a default
# (speed not measured): the tiles that compile for sm_90a without a spill under both Triton 3.6
# and 3.9 at 8192x4096x4096, every output dtype (perf/kernel_static.py's compile path; 128x256
# and 64x256 spill 16-20 B under 3.9, as the Triton kernel's epilogue does at those tiles).
# Their TMA key is 0: where a launch cannot take the Gluon kernel (torch.compile's traced
# launches, asymmetric weights, GPUs other than sm_90) the Triton kernel runs with cp.async.
_GLUON_TILES = [
    (128, 128, 64, 4, 4),  # the Triton default's tile (perf/RESULTS.md compares them there)
    (128, 128, 128, 4, 4),
    (128, 128, 128, 4, 3),
    (128, 128, 64, 8, 4),
    (256, 128, 64, 8, 3),
    (256, 128, 128, 8, 3),
    (64, 128, 128, 4, 4),
]
# ... and per-group symmetric weights (MODE 1, groups of 32 / 64 / 128: two int32 partial sums
# beside the fp32 accumulator, at most 64 accumulator elements a thread, and one K step per
# group, BLOCK_K = the group, which fit_config sets): the tiles that compile for sm_90a with
# wait 1 and no spill at int4 g128 / g32, bf16 and fp32, under Triton 3.6 and 3.9 (236-247
# registers; two K steps per group spilled 60-96 B at 128x128x64)
GLUON_GROUP_TILES = [
    (128, 128, 128, 8, 4),
    (128, 128, 128, 8, 3),
    (64, 256, 128, 8, 3),
    (64, 128, 128, 4, 4),
    (128, 64, 128, 4, 4),
]

# The forward's dequantized path (per-group weights) is a plain 16-bit GEMM: the bf16 tiles of
# the same tutorials (the dgrad list's, in the forward's M x N x K terms).
_DEQUANT_TILES = [
    (128, 128, 64, 8, 3),
    (128, 256, 128, 8, 2),
    (128, 128, 64, 8, 4),
    (128, 256, 32, 8, 4),
    (128, 128, 32, 4, 4),
    (64, 64, 64, 4, 3),
]


def _curated_gemm(kernel: str) -> list[dict]:
    configs = [dict(DEFAULTS[kernel])] + [_gemm_tiles(kernel, *t) for t in _TILES[kernel]]
    if kernel != "fwd":  # torch.mm first (the 16-bit default), the old default with TMA, then
        # without, then Hopper's measured tile
        configs = [
            {**HOPPER_DEFAULTS[kernel], **BACKWARD_CUBLAS},
            {**configs[0], "TMA": 1},
            configs[0],
            dict(HOPPER_DEFAULTS[kernel]),
        ] + configs[1:]
    else:
        # the defaults of both paths early (a tuning deadline cuts the list's tail), each with
        # and without TMA, then the dequantized path's tiles (per-group weights only), then the
        # int8 tutorial tiles (cp.async: with TMA the int8 loop measured no shorter on sm_90a)
        # the Gluon tiles after the defaults (per channel; candidates() drops them elsewhere)
        configs = (
            [configs[0], {**configs[0], "TMA": 1}, dict(HOPPER_DEFAULTS["fwd"])]
            + [dict(FWD_GROUP_INT8_DEFAULT)]
            + [
                {**_gemm_tiles(kernel, *t), "DEQUANT": 0, "TMA": 0, "GLUON": 1}
                for t in _GLUON_TILES + GLUON_GROUP_TILES
            ]
            + [dict(FWD_DEQUANT_DEFAULT), {**FWD_DEQUANT_DEFAULT, "TMA": 0}]
            + [{**_gemm_tiles(kernel, *t), "DEQUANT": 1} for t in _DEQUANT_TILES]
            + [{**c, "DEQUANT": 0, "TMA": 0} for c in configs[1:]]
        )
    return list({tuple(sorted(c.items())): c for c in configs}.values())  # deduplicated, in order


# the float8 forward's short list: Hopper's default, then the fp8 tiles of Triton's matmul
# tutorial (03's CUDA list) at BLOCK_K 128, each with and without TMA
_F8_TILES = [(128, 128, 128, 8, 3), (128, 256, 128, 8, 3), (256, 128, 128, 8, 3),
             (256, 64, 128, 4, 4), (64, 256, 128, 4, 4), (128, 64, 128, 4, 4),
             (64, 128, 128, 4, 4)]  # fmt: skip


def _curated_f8() -> list[dict]:
    """Hopper's default, its Gluon form (one partial sum in flight while the other is promoted:
    sm_90a, 206 registers, no spill, wait 1), sm_89's default, then the tutorial tiles with TMA,
    without, and (8 warps) in Gluon."""
    configs = [dict(F8_HOPPER_DEFAULT), {**F8_HOPPER_DEFAULT, "GLUON": 1}, dict(DEFAULTS["f8fwd"])]
    for bm, bn, bk, w, s in _F8_TILES:
        for tma, glu in ((1, 0), (0, 0), (1, 1)):
            if glu and (w != 8 or bm * bn > 128 * 128):  # the Gluon kernel's two partial sums
                continue  # beside the accumulator: larger tiles per warp spill
            configs.append({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8,
                            "num_warps": w, "num_stages": s, "TMA": tma, "GLUON": glu})  # fmt: skip
    return list({tuple(sorted(c.items())): c for c in configs}.values())  # deduplicated


# The short candidate lists of a GPU window (``candidates(..., curated=True)``; the tuner's default).
# Each GEMM list starts with the untuned default, so "what tuning bought" is measured against it.
CURATED = {
    "fwd": _curated_gemm("fwd"),
    "dgrad": _curated_gemm("dgrad"),
    "wgrad": _curated_gemm("wgrad"),
    "f8fwd": _curated_f8(),
    "quantize": [{"BLOCK_R": r, "BLOCK_C": c, "num_warps": w} for r, c, w in _QUANTIZE_CURATED],
}


# Interpreter configs (the CPU suite): 64-wide tiles keep it ~3x faster than 32 while odd test
# shapes still span several tiles per dimension.
_INTERPRET_GEMM = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 4, "num_warps": 1,
                   "num_stages": 1, "TMA": 1}  # fmt: skip


def default_config(
    kernel: str,
    shape: tuple[int, ...],
    interpret: bool,
    group_size: int = 0,
    elem_bytes: int = 2,
    capability: int = 9,
) -> dict:
    """The untuned config of ``kernel`` ("quantize", "fwd", "dgrad", "wgrad") at ``shape``
    ((rows, group_size) for quantize, (M, N, K) for GEMMs); one small config under the interpreter.
    The forward's depends on the weight's ``group_size`` (0: per channel) and the output's
    ``elem_bytes``: per-group weights at 16-bit dtypes take the dequantized path
    (:data:`FWD_DEQUANT_DEFAULT` on GPUs of compute ``capability`` 9 and up, else
    :data:`FWD_DEQUANT_DEFAULT_SM80`; under the interpreter the small tile with ``DEQUANT``), at
    fp32 the int8 path's :data:`FWD_GROUP_INT8_DEFAULT`."""
    if kernel == "quantize":
        rows, group = shape
        if interpret:
            block_c = max(16, min(1 << max(0, (group - 1).bit_length()), 64))
            return {"BLOCK_R": 64, "BLOCK_C": block_c, "num_warps": 1}
        return quantize_default(rows, group)
    if kernel == "f8fwd":
        if interpret:
            return {**_INTERPRET_GEMM, "BLOCK_K": 128}
        return dict(F8_HOPPER_DEFAULT if capability >= 9 else DEFAULTS["f8fwd"])
    if kernel == "fwd":
        per_group = group_size not in (0, shape[2])
        dequant = per_group and elem_bytes == 2
        if interpret:
            return {**_INTERPRET_GEMM, "DEQUANT": int(dequant), "GLUON": 0}
        if per_group and not dequant:  # cp.async: with TMA the int8 loop is no shorter on sm_90a
            return dict(FWD_GROUP_INT8_DEFAULT)
        if not dequant:
            hopper = capability >= 9 and elem_bytes == 2
            return dict(HOPPER_DEFAULTS["fwd"] if hopper else DEFAULTS["fwd"])
        return dict(FWD_DEQUANT_DEFAULT if capability >= 9 else FWD_DEQUANT_DEFAULT_SM80)
    if interpret:  # the Triton kernel: the suite runs it (and torch.mm by explicit configs)
        return {**_INTERPRET_GEMM, "CUBLAS": 0}
    if elem_bytes == 2:  # torch.mm + the mask pass (BACKWARD_CUBLAS); tiles kept for the record
        tiles = HOPPER_DEFAULTS[kernel] if capability >= 9 else {**DEFAULTS[kernel], "TMA": 0}
        return {**tiles, **BACKWARD_CUBLAS}
    # fp32 dots take no tensor cores, and their descriptor loop compiles to scalar loads that spill
    if kernel == "wgrad" and capability < 9:
        return dict(SM80_FP32_WGRAD_DEFAULT)
    return {**DEFAULTS[kernel], "TMA": 0}


def fit_config(kernel: str, cfg: dict, K: int, group_size: int) -> dict:
    """``cfg`` made runnable for the forward's mode at this K / weight group size (the kernel's
    ``check_fwd_config`` states the rules); other kernels' configs are returned unchanged."""
    if kernel == "f8fwd":
        return {**cfg, "TMA": cfg.get("TMA", 0), "GLUON": cfg.get("GLUON", 0)}
    if kernel != "fwd":
        return {**cfg, "TMA": cfg.get("TMA", 0), "CUBLAS": cfg.get("CUBLAS", 0)}
    mode = fwd_mode(K, group_size)
    cfg = {**cfg, "DEQUANT": cfg.get("DEQUANT", 0) if mode else 0}  # per-channel: int8 only
    cfg["GLUON"] = cfg.get("GLUON", 0) if mode < 2 else 0  # the Gluon kernel: MODE 0 / 1
    # MODE 2 (int8 path, fp32 operand tiles dequantized per element) loads by pointer
    cfg["TMA"] = cfg.get("TMA", 0) if cfg["DEQUANT"] or mode != 2 else 0
    if cfg["DEQUANT"]:  # a plain 16-bit GEMM: any tile fits
        return cfg
    if mode == 1 and cfg["GLUON"]:  # the Gluon kernel: one K step per group of 32 / 64 / 128
        if group_size in GLUON_GROUP_SIZES:
            return {**cfg, "BLOCK_K": group_size}
        cfg["GLUON"] = 0
    if mode == 1:  # BLOCK_K must divide the group: its largest power-of-two factor at most
        return {**cfg, "BLOCK_K": min(cfg["BLOCK_K"], group_size & -group_size)}
    if mode == 2:  # fp32 operand tiles: BLOCK_K 128 x 3 stages needs 256 KiB of shared memory
        return {**cfg, "BLOCK_K": min(cfg["BLOCK_K"], 32), "num_stages": min(cfg["num_stages"], 2)}
    return cfg


def as_dequantized(cfg: dict, elem_bytes: int) -> dict:
    """The forward config ``cfg`` on the dequantized path (``DEQUANT``: x_fq and w_fq in the input
    dtype, a plain float GEMM), for a weight narrower than x (:func:`weight_narrower`; the int8
    path's tuned tile, untimed on this path): tiles at most 128 x 128, BLOCK_K at most 128 bytes
    of a row, at most 3 stages, so the operand buffers take at most 96 KiB (:func:`smem_bytes`),
    within every sm_80+ GPU's 99 KiB; fp32 operands by pointer (the backward's fp32 GEMMs'
    choice: no TMA)."""
    return {**cfg, "DEQUANT": 1, "GLUON": 0, "BLOCK_M": min(cfg["BLOCK_M"], 128),
            "BLOCK_N": min(cfg["BLOCK_N"], 128),
            "BLOCK_K": max(16, min(cfg["BLOCK_K"], 128 // elem_bytes)),
            "num_stages": min(cfg["num_stages"], 3),
            "TMA": cfg.get("TMA", 0) if elem_bytes == 2 else 0}  # fmt: skip


def _dedupe(configs: list[dict]) -> list[dict]:
    """``configs`` without repeats, first occurrence kept (order matters: the tuner times in it)."""
    seen, out = set(), []
    for c in configs:
        key = tuple(sorted(c.items()))
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def _pow2_at_least(n: int, lo: int) -> int:
    return max(lo, triton.next_power_of_2(max(1, n)))


def smem_bytes(kernel: str, cfg: dict, elem_bytes: int) -> int:
    """Pipelined operand buffers of one block, in bytes: the forward streams int8 codes (or, with
    ``DEQUANT``, x_fq and w_fq in the input dtype), the backward GEMMs two operands in the input
    dtype (grad_y with the dequantized w_fq or x_fq)."""
    bm, bn, bk, s = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"], cfg["num_stages"]
    if kernel == "f8fwd":  # A [BM, BK] and B [BK, BN], e4m3
        return s * (bm * bk + bk * bn)
    if kernel == "fwd":  # A [BM, BK] and B [BK, BN]: int8, or the input dtype
        return s * (bm * bk + bk * bn) * (elem_bytes if cfg.get("DEQUANT") else 1)
    if kernel == "dgrad":  # dy [BM, BN] and w_fq [BN, BK]
        return s * (bm * bn + bn * bk) * elem_bytes
    return s * (bn * bm + bm * bk) * elem_bytes  # wgrad: dy^T [BN, BM], x_fq [BM, BK]


def candidates(
    kernel: str,
    shape: tuple[int, ...],
    capability: int,
    elem_bytes: int = 2,
    smem_limit: int = SMEM_FALLBACK,
    group_size: int = 0,
    curated: bool = False,
) -> list[dict]:
    """The configs worth timing for ``kernel`` at ``shape`` on a GPU of compute ``capability``
    (major version) with ``smem_limit`` bytes of shared memory per block. GEMMs take shape
    (M, N, K) of the linear; quantize takes (rows, group_size). Forward candidates are fitted to
    the weight's ``group_size`` (0: per channel) and deduplicated, so each one is a distinct
    launch. The shared-memory estimate counts the pipelined operand tiles only; configs that still
    do not fit fail to launch and are skipped by the tuner. ``curated``: prune :data:`CURATED`
    (the short tutorial lists) instead of the full :data:`SPACES`."""
    if kernel == "quantize":
        rows, group = shape
        max_c = _pow2_at_least(group, 16)
        max_r = _pow2_at_least(rows, 1)
        if curated:  # the untuned default first, then the list's entries sized for this group
            kept = [c for c in CURATED["quantize"] if min(max_c, 256) <= c["BLOCK_C"] <= max_c
                    and c["BLOCK_R"] <= max_r]  # fmt: skip
            return _dedupe([quantize_default(rows, group), *kept])
        return [c for c in _QUANTIZE if c["BLOCK_C"] <= max_c and c["BLOCK_R"] <= max_r
                and c["BLOCK_R"] * c["BLOCK_C"] <= 16384] or [quantize_default(rows, group)]  # fmt: skip
    M, N, K = shape
    limit = smem_limit
    if kernel == "f8fwd":  # fp8 tensor cores: sm_89 and up; TMA on Hopper only
        default = default_config(kernel, shape, False, 0, elem_bytes, capability)
        mm, nn, kk = (_pow2_at_least(v, 16) for v in (M, N, K))
        pool = [default, *(CURATED if curated else SPACES)[kernel]]
        gluon = capability == 9 and gluon_available()  # the Gluon kernel is sm_90's
        kept = [{**c, "TMA": c["TMA"] if capability >= 9 else 0} for c in pool
                if c["BLOCK_M"] <= max(mm, 64) and c["BLOCK_N"] <= max(nn, 64)
                and c["BLOCK_K"] <= max(kk, 64) and smem_bytes(kernel, c, 1) <= limit
                and (gluon or not c["GLUON"])]  # fmt: skip
        return _dedupe(kept) or [default]
    # every GEMM kernel tiles the linear's M, N and K with BLOCK_M, BLOCK_N and BLOCK_K
    mm, nn, kk = (_pow2_at_least(v, 16) for v in (M, N, K))
    max_stages = 5 if capability >= 9 else 4  # Hopper's larger shared memory fits deeper pipelines
    default = default_config(kernel, shape, False, group_size, elem_bytes, capability)
    # the default is a candidate even where the list lacks it (sm_80's fp32 wgrad tile)
    pool = [*(CURATED if curated else SPACES)[kernel], default]
    kept = [
        c for c in pool if not c.get("CUBLAS")
        and c["BLOCK_M"] <= max(mm, 64) and c["BLOCK_N"] <= max(nn, 32) and c["BLOCK_K"] <= max(kk, 64)
        and smem_bytes(kernel, c, elem_bytes) <= limit and c["num_stages"] <= max_stages
    ]  # fmt: skip
    if kernel != "fwd" and elem_bytes == 2:  # torch.mm + the mask pass: one candidate at any
        # shape (its tiles are never used, so no tile or shared-memory filter applies)
        kept = [
            default if default.get("CUBLAS") else next(c for c in pool if c.get("CUBLAS"))
        ] + kept
    first = fit_config(kernel, default, K, group_size or K)
    if kernel == "fwd" and fwd_mode(K, group_size or K) == 0:  # DEQUANT is for per-group weights
        kept = [c for c in kept if not c.get("DEQUANT")]
    # GLUON: MODE 0 / 1 on Hopper, where this Triton has Gluon's Hopper API (the kernel is
    # sm_90's; a launch elsewhere would time the Triton kernel again), with a tile it takes in
    # that mode (per group: the tiles whose two partial sums fit beside the accumulator)
    if kernel == "fwd":
        mode = fwd_mode(K, group_size or K)
        if (mode == 2 or mode == 1 and group_size not in GLUON_GROUP_SIZES or capability != 9
                or not gluon_available()):  # fmt: skip
            kept = [c for c in kept if not c.get("GLUON")]
        else:  # each mode's own curated tiles (the full space: any tile the kernel takes;
            # per group BLOCK_K is the group's, fit_config sets it)
            own = {t if mode == 0 else (*t[:2], 0, *t[3:])
                   for t in (_GLUON_TILES if mode == 0 else GLUON_GROUP_TILES)}  # fmt: skip

            def curated_tile(c: dict) -> bool:
                bk = c["BLOCK_K"] if mode == 0 else 0
                return (c["BLOCK_M"], c["BLOCK_N"], bk, c["num_warps"], c["num_stages"]) in own

            kept = [c for c in kept if not c.get("GLUON")
                    or check_gluon_config(c, per_group=mode == 1) is None
                    and (not curated or curated_tile(c))]  # fmt: skip
    # TMA is Hopper's, and for 16-bit or int8 operands: the fp32 plain GEMM's (no tensor cores)
    # compiles to scalar loads that spill
    fp32_plain = elem_bytes != 2 and (kernel != "fwd" or group_size not in (0, K))
    kept = [{**c, "TMA": 0} if capability < 9 or (fp32_plain and (kernel != "fwd" or c.get("DEQUANT")))
            else c for c in kept]  # fmt: skip
    kept = _dedupe([fit_config(kernel, c, K, group_size or K) for c in kept])
    # this problem's untuned default leads when it is a candidate (per-group 16-bit: DEQUANT)
    return sorted(kept, key=lambda c: c != first) or [first]


def quantize_default(rows: int, group_size: int) -> dict:
    """A group up to 16384 elements fits one tile (x read once, ONE_SWEEP), about 4096 elements
    per program, 64 per thread (eight 16-byte bf16 loads): the per-row work (reductions across
    warps, qparams, two IEEE divisions) is spread over twice as many elements as at 32
    (:func:`fit_quantize` halves that where fake-quantized values computed per element are
    written too: those variants spill at 64). A power-of-two group narrower than the row runs as rows of groups
    (kernels/quantize.py), up to 256 of them per tile; other groups narrower than 32 columns
    keep 8 elements per thread (their 16-bit loads spill at 32). perf/kernel_static.py measures
    these."""
    block_c = max(16, min(triton.next_power_of_2(group_size), 16384))
    pow2 = group_size & (group_size - 1) == 0
    block_r = max(
        1, min(256 if pow2 else 64, 4096 // block_c, triton.next_power_of_2(max(rows, 1)))
    )
    per_thread = QUANTIZE_PER_THREAD if block_c >= 32 or pow2 else 8
    warps = max(1, min(16, block_r * block_c // (32 * per_thread)))
    return {"BLOCK_R": block_r, "BLOCK_C": block_c, "num_warps": warps}


# Elements a thread of the quantize kernel holds: 64 for codes / mask / sums, and where it also
# writes the fake-quantized values through the per-row NaN path (family-1 qparams the kernel
# computes for a range holding 0, qmin < 0 <= qmax: the backward's weight, 168 registers per
# channel, no spill); at most 32 where the values are computed per element (given qparams,
# torchao's asymmetric weights, ranges without 0: those use 255 registers and spill at 64;
# perf/kernel_static.py --all).
QUANTIZE_PER_THREAD, QUANTIZE_PER_THREAD_WITH_Y, QUANTIZE_PER_THREAD_Y_PER_ELEMENT = 64, 64, 32


def fit_quantize(config: dict, with_y: bool, y_per_row: bool = False) -> dict:
    """``config`` as the quantize kernel should run it: with ``with_y`` (the fake-quantized values
    written too), more warps until a thread holds at most QUANTIZE_PER_THREAD_WITH_Y elements
    where ``y_per_row`` (see above), else QUANTIZE_PER_THREAD_Y_PER_ELEMENT; the tile is
    unchanged, at most 16 warps. A tuned config is fitted the same way."""
    if not with_y:
        return config
    cap = QUANTIZE_PER_THREAD_WITH_Y if y_per_row else QUANTIZE_PER_THREAD_Y_PER_ELEMENT
    warps = config["num_warps"]
    tile = config["BLOCK_R"] * config["BLOCK_C"]
    while warps < 16 and tile > 32 * warps * cap:
        warps *= 2
    return {**config, "num_warps": warps}
