"""One registry of kernel problems: the operands of each kernel of a QAT linear at a shape.

The tuner (:mod:`.tune`) times ``Problem.launch(config)`` over candidate configs; ``perf/bench.py``
times the same launch at the looked-up config against ``Problem.ceiling`` (the torch op that does
the same work with no quantization: a copy, ``torch._int_mm``, ``torch.mm``). Building operands
in one place keeps the two measuring the same thing.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

import torch

from triton_qat.kernels._common import INTERPRET
from triton_qat.kernels.dequantize import dequantize_rows
from triton_qat.kernels.gemm_backward import dgrad, wgrad
from triton_qat.kernels.gemm_float8 import float8_linear
from triton_qat.kernels.gemm_float8_gluon import float8_linear_gluon
from triton_qat.kernels.gemm_int8 import int8_linear
from triton_qat.kernels.gemm_int8_gluon import hopper_gluon_device, int8_linear_gluon
from triton_qat.kernels.quantize import quantize_rows
from triton_qat.kernels.quantize_float8 import (
    e4m3_cvt_device,
    launch_float8_codes,
    plan_float8_quantize,
)
from triton_qat.kernels.quantize_mx import mx_quantize, nvfp4_quantize

from . import dequantize_config, gemm_config, gemm_key, quantize_config, quantize_key

# the tuned ones; "f8fwd" (the float8 forward's fp8 GEMM) only where fp8 tensor cores run it
KERNELS = ("quantize_x", "quantize_w", "fwd", "dgrad", "wgrad", "f8fwd")
# benchmarked against their ceiling, one fixed config (the MX / NVFP4 ones at fp32 / bf16)
UNTUNED = ("dequantize_x", "quantize_f8", "quantize_mxfp8", "quantize_mxfp4", "quantize_nvfp4")


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    """``MxKxN[,MxKxN...]`` of positive ints (an argparse ``type``: the autotune CLI's and
    perf/profile_host.py's ``--shapes``)."""
    shapes = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        parts = item.lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise argparse.ArgumentTypeError(
                f"--shapes: expected MxKxN with positive ints (e.g. 8192x4096x4096), got {item!r}"
            )
        shapes.append(tuple(int(p) for p in parts))
    if not shapes:
        raise argparse.ArgumentTypeError("--shapes: expected at least one MxKxN")
    return shapes


def _f8_gemm(*args, config: dict) -> torch.Tensor:
    """The float8 GEMM at ``config``; a GLUON config on a Gluon device runs the Gluon kernel
    itself, whose failure raises (float8_linear would time the Triton kernel as GLUON)."""
    if config.get("GLUON") and hopper_gluon_device(args[0].device):
        return float8_linear_gluon(*args, config=config)
    return float8_linear(*args, config=config)


def fp8_problems_run(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether the float8 problems exist: 16-bit layers (the layer's fp8 path) on a GPU with fp8
    tensor cores (compute capability 8.9+), or the interpreter."""
    if dtype not in (torch.bfloat16, torch.float16):
        return False
    if device.type != "cuda":
        return INTERPRET
    return torch.version.hip is None and torch.cuda.get_device_capability(device) >= (8, 9)


@dataclass(frozen=True)
class LinearShape:
    """A QAT linear: M tokens, K -> N features, ``w_bits`` weights in groups of ``group_size``
    along K (0: per channel), int8 per-token asymmetric activations, in ``dtype``."""

    M: int
    K: int
    N: int
    dtype: torch.dtype = torch.bfloat16
    w_bits: int = 8
    group_size: int = 0

    @property
    def group(self) -> int:
        return self.group_size or self.K

    @property
    def label(self) -> str:
        w = f"i{self.w_bits}" + (f"g{self.group_size}" if self.group_size else "")
        return f"{self.M}x{self.K}x{self.N} {w}"


@dataclass(frozen=True)
class Problem:
    """One kernel launch of a linear: what the tuner searches and the benchmark times."""

    name: str  # one of KERNELS
    kernel: str  # the config space: "quantize", "fwd", "dgrad" or "wgrad"
    key: str  # its cache key
    search_shape: tuple[int, ...]  # what autotune.space.candidates prunes by
    group_size: int  # the weight's group size along K (fwd fitting); K when per channel
    launch: Callable[[dict], object]  # runs the kernel with a config
    config: dict  # the config a real launch uses now (cache, else default)
    ceiling: Callable[[], object]  # the same work by an unquantized torch op
    ceiling_name: str
    work: float  # FLOPs (GEMMs) or bytes moved (quantize), for TFLOP/s or GB/s
    ceiling_work: float  # the same for the ceiling op


def problems(s: LinearShape, device: torch.device) -> dict[str, Problem]:
    """The five kernel problems of ``s`` with seeded operands on ``device``."""
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(s.M, s.K, device=device, generator=gen).to(s.dtype)
    w = (torch.randn(s.N, s.K, device=device, generator=gen) * 0.02).to(s.dtype)
    dy = torch.randn(s.M, s.N, device=device, generator=gen).to(s.dtype)
    wq = -(1 << (s.w_bits - 1)), (1 << (s.w_bits - 1)) - 1
    cfg_x = quantize_config(s.M, s.K, device, s.dtype, pack_mask=True)
    # what the forward's quantizes write (triton_qat/ops.py): the activation no code sums (the
    # symmetric default weights), the weight no mask, and code sums only for the int8 GEMM
    w_sums = not gemm_config("fwd", s.M, s.N, s.K, device, s.dtype, s.group).get("DEQUANT", 0)
    cfg_w = quantize_config(s.N, s.group, device, s.dtype, pack_mask=False)
    qa = quantize_rows(x, -128, 127, s.K, False, pack_mask=True, config=cfg_x)
    qw = quantize_rows(w, wq[0], wq[1], s.group, True, pack_mask=False, config=cfg_w, with_y=True)
    cfg_dq = dequantize_config(s.M, s.K, device, s.dtype)
    x_fq = dequantize_rows(qa.codes, qa.scale, qa.zero_point, s.dtype, config=cfg_dq)
    w_t = qw.codes.t()  # [K, N] column-major: the layout torch._int_mm wants
    # the backward's weight mask as the op layer writes it: bits per channel (16-bit), else bytes
    w_bits_mask = s.group == s.K and s.dtype != torch.float32
    cfg_mask = quantize_config(s.N, s.group, device, s.dtype, pack_mask=w_bits_mask)
    w_mask = quantize_rows(w, wq[0], wq[1], s.group, True, pack_mask=w_bits_mask,
                           config=cfg_mask, write_codes=False).mask  # fmt: skip
    gemm = 2.0 * s.M * s.N * s.K
    esize = x.element_size()
    mnk = (s.M, s.N, s.K)

    def fwd(c):
        if c.get("GLUON") and hopper_gluon_device(device):  # the Gluon kernel itself: a failure
            # raises (int8_linear would run the Triton kernel instead, and time it as GLUON)
            return int8_linear_gluon(qa.codes, qa.scale, qa.zero_point, qw.codes, qw.scale,
                                     qw.code_sum, None, s.dtype, asymmetric=True, config=c)  # fmt: skip
        return int8_linear(qa.codes, qa.scale, qa.zero_point, qw.codes, qw.scale, qw.code_sum,
                           None, s.dtype, asymmetric=True, config=c, w_dtype=w.dtype,
                           dequant_config=cfg_dq)  # fmt: skip

    out = {
        "dequantize_x": Problem(
            "dequantize_x", "dequantize", "", (s.M, s.K), s.group,
            lambda c: dequantize_rows(qa.codes, qa.scale, qa.zero_point, s.dtype, config=c),
            cfg_dq, lambda: x.clone(), "copy",
            s.M * s.K * (1 + esize) + s.M * 8, 2 * s.M * s.K * esize,
        ),
        "quantize_x": Problem(
            "quantize_x", "quantize", quantize_key(s.M, s.K, s.dtype, True), (s.M, s.K), s.group,
            lambda c: quantize_rows(x, -128, 127, s.K, False, pack_mask=True, config=c,
                                    write_sums=False),
            cfg_x, lambda: x.clone(), "copy",
            s.M * s.K * (esize + 1 + 1 / 8) + s.M * 8, 2 * s.M * s.K * esize,
        ),
        "quantize_w": Problem(
            "quantize_w", "quantize", quantize_key(s.N, s.group, s.dtype, False),
            (s.N, s.group), s.group,
            lambda c: quantize_rows(w, wq[0], wq[1], s.group, True, pack_mask=False, config=c,
                                    group_major=True, write_mask=False, write_sums=w_sums,
                                    write_zero_point=False),
            cfg_w, lambda: w.clone(), "copy",
            s.N * s.K * (esize + 1) + s.N * (s.K // s.group) * (4 + 4 * w_sums),
            2 * s.N * s.K * esize,
        ),
        "fwd": Problem(
            "fwd", "fwd", gemm_key("fwd", *mnk, s.dtype, s.group), mnk, s.group, fwd,
            gemm_config("fwd", *mnk, device, s.dtype, s.group),
            lambda: torch._int_mm(qa.codes, w_t), "torch._int_mm", gemm, gemm,
        ),
        "dgrad": Problem(
            "dgrad", "dgrad", gemm_key("dgrad", *mnk, s.dtype, s.group), mnk, s.group,
            lambda c: dgrad(dy, qw.y, qa.mask, config=c),
            gemm_config("dgrad", *mnk, device, s.dtype),
            lambda: torch.mm(dy, w), "torch.mm", gemm, gemm,
        ),
        "wgrad": Problem(
            "wgrad", "wgrad", gemm_key("wgrad", *mnk, s.dtype, s.group), mnk, s.group,
            lambda c: wgrad(dy, x_fq, w_mask, config=c, mask_bits=w_bits_mask),
            gemm_config("wgrad", *mnk, device, s.dtype),
            lambda: torch.mm(dy.t(), x), "torch.mm", gemm, gemm,
        ),
    }  # fmt: skip
    if fp8_problems_run(s.dtype, device):
        out.update(_float8_problems(s, device, x, w))
    if s.dtype != torch.float16 and (device.type == "cuda" or INTERPRET) and s.K % 32 == 0:
        out.update(_mx_problems(s, x))
    return out


def _mx_problems(s: LinearShape, x) -> dict[str, Problem]:
    """The MX / NVFP4 activation fake quantizations (kernels/quantize_mx.py) against a copy of x:
    the dequantized path's whole cost beside its GEMM (tensor-core MX / FP4 needs Blackwell)."""
    esize = x.element_size()
    moved, copy = 2 * s.M * s.K * esize, 2 * s.M * s.K * esize  # x read, x_fq written
    kinds = {"quantize_mxfp8": lambda: mx_quantize(x, "float8_e4m3fn", 32, "rceil"),
             "quantize_mxfp4": lambda: mx_quantize(x, "float4_e2m1fn_x2", 32, "rceil"),
             "quantize_nvfp4": lambda: nvfp4_quantize(x, True)}  # fmt: skip
    return {
        name: Problem(
            name,
            name,
            "",
            (s.M, s.K),
            s.K,
            lambda c, fn=fn: fn(),
            {},
            lambda: x.clone(),
            "copy",
            moved,
            copy,
        )  # fmt: skip
        for name, fn in kinds.items()
    }


def _float8_problems(s: LinearShape, device: torch.device, x, w) -> dict[str, Problem]:
    """The float8 layer's forward launches: x's e4m3 codes (per row, against a copy of x) and the
    fp8 GEMM (against ``F.linear``'s ``torch.mm`` in the layer's dtype: the issue's ceiling is
    the 16-bit GEMM it replaces)."""
    cvt = e4m3_cvt_device(device)
    plan_x = plan_float8_quantize(s.K, s.dtype, False, 1e-12, None, device.type == "cuda",
                                  INTERPRET, e4m3_cvt=cvt)  # fmt: skip
    plan_w = plan_float8_quantize(s.K, s.dtype, False, None, None, device.type == "cuda",
                                  INTERPRET, e4m3_cvt=cvt)  # fmt: skip
    xc, xs = launch_float8_codes(plan_x, x)
    wc, ws = launch_float8_codes(plan_w, w)
    mnk, gemm, esize = (s.M, s.N, s.K), 2.0 * s.M * s.N * s.K, x.element_size()
    return {
        "quantize_f8": Problem(
            "quantize_f8", "quantize_f8", "", (s.M, s.K), s.K,
            lambda c: launch_float8_codes(plan_x, x), {"BLOCK_K": plan_x.block_k},
            lambda: x.clone(), "copy", s.M * s.K * (esize + 1) + s.M * 8, 2 * s.M * s.K * esize,
        ),
        "f8fwd": Problem(
            "f8fwd", "f8fwd", gemm_key("f8fwd", *mnk, s.dtype, s.K), mnk, s.K,
            lambda c: _f8_gemm(xc, xs, wc, ws, None, s.dtype, config=c),
            gemm_config("f8fwd", *mnk, device, s.dtype),
            lambda: torch.mm(x, w.t()), "torch.mm", gemm, gemm,
        ),
    }  # fmt: skip
