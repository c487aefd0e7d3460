"""Float8 forward GEMM: e4m3 x e4m3 -> fp32 on fp8 tensor cores, the scales in the epilogue.

    out[m, n] = (sum_k q_x[m, k] q_w[n, k]) * s_x[m] * s_w[n] + bias[n]

q_x / q_w are the e4m3 codes the float8 quantize writes (:func:`.quantize_float8.launch_float8_codes`)
and s_x / s_w their GEMM scales (per row, a per-tensor scale repeated; NaN for a row whose
reference values are not all finite, so the output is non-finite exactly where the reference's). Every product of two e4m3 values is exact in fp32, so this is
``x_fq @ w_fq.T + bias`` computed from the fake-quantized values before their rounding to the
output dtype, within the dtype's bound of an fp64 product of the rounded ones
(docs/numerics.md "Float8", forward GEMM).

Hopper's fp8 wgmma accumulates with reduced precision (DeepSeek-V3's report: about 14 bits kept
while adding), so ``tl.dot`` with ``max_num_imprecise_acc=BLOCK_K`` promotes each step's partial
sum of ``BLOCK_K`` products into the fp32 accumulator (Triton's default on sm_90 never promotes),
and ``BLOCK_K`` is fixed at :data:`F8_BLOCK_K` = 128 (DeepSeek-V3's interval): the numerics do not
depend on the tuned config. The promotion reads each step's wgmma result, so the step's group
is waited for (wait 0) while the TMA loads of later steps stay in flight (perf/kernel_static.py
reads the waits). A ``GLUON`` config (a tuner candidate on sm_90) runs :mod:`.gemm_float8_gluon`
instead: the same operations with step k's group in flight while step k - 1's partial is
promoted. Operands: x [M, K] and w [N, K], both K-major (what fp8 wgmma needs), through tensor
descriptors (``TMA``) where they fit, else per-thread pointers. Like everything in ``kernels/``,
this imports nothing from ``triton_qat``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._common import cast_to_dt, cdiv, dtype_code, empty, swizzle
from .gemm_float import descriptor, k_major_descriptors_fit
from .gemm_float8_gluon import (
    Float8GluonPlan,
    check_gluon_config,
    float8_gluon_device,
    launch_float8_linear_gluon,
    plan_float8_linear_gluon,
)
from .gemm_int8 import _scale


@triton.jit
def _float8_linear_kernel(
    x_ptr, x_desc, w_ptr, w_desc, sx_ptr, sw_ptr, bias_ptr, out_ptr, M, N, K, stride_xm,
    stride_wn, stride_om, HAS_BIAS: tl.constexpr, TMA: tl.constexpr, DT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """out [M, N] (dtype DT) = (x [M, K] @ w [N, K].T) * sx[M, None] * sw[None, N] + bias[N]."""
    pid_m, pid_n = swizzle(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    o_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    o_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    o_k = tl.arange(0, BLOCK_K)  # [BK]
    # rows / columns past the edge read row 0 (in bounds) and are never stored
    o_mw, o_nw = o_m % M, o_n % N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if TMA:
        m0, n0 = pid_m * BLOCK_M, pid_n * BLOCK_N
        for k0 in range(0, K, BLOCK_K):
            b_a = x_desc.load([m0, k0])  # [BM, BK]
            b_b = w_desc.load([n0, k0]).T  # [BK, BN]
            acc = tl.dot(b_a, b_b, acc, max_num_imprecise_acc=BLOCK_K)
    else:
        p_a = x_ptr + o_mw.to(tl.int64)[:, None] * stride_xm + o_k[None, :]  # [BM, BK]
        p_b = w_ptr + o_nw.to(tl.int64)[None, :] * stride_wn + o_k[:, None]  # [BK, BN]
        for k0 in range(0, K, BLOCK_K):
            b_a = tl.load(p_a, mask=(k0 + o_k)[None, :] < K, other=0.0)
            b_b = tl.load(p_b, mask=(k0 + o_k)[:, None] < K, other=0.0)
            acc = tl.dot(b_a, b_b, acc, max_num_imprecise_acc=BLOCK_K)
            p_a += BLOCK_K
            p_b += BLOCK_K
    b_out = _scale(acc, tl.load(sx_ptr + o_mw), tl.load(sw_ptr + o_nw))
    if HAS_BIAS:
        b_out += tl.load(bias_ptr + o_nw).to(tl.float32)[None, :]
    p_o = out_ptr + (pid_m.to(tl.int64) * BLOCK_M * stride_om + pid_n.to(tl.int64) * BLOCK_N)
    o_tile = tl.arange(0, BLOCK_M)[:, None] * stride_om + tl.arange(0, BLOCK_N)[None, :]
    tl.store(p_o + o_tile, cast_to_dt(b_out, DT), mask=(o_m < M)[:, None] & (o_n < N)[None, :])


class Float8LinearPlan(NamedTuple):
    """What a :func:`launch_float8_linear` launch decides once per key."""

    N: int
    K: int
    out_dtype: torch.dtype
    block_m: int
    block_n: int
    block_k: int
    tma: bool  # try tensor descriptors (per launch: the operands must allow them)
    meta: dict  # constexprs and launch options but TMA
    gluon: Float8GluonPlan | None = None  # GLUON, where the device runs it (module doc)


F8_BLOCK_K = 128  # products per fp32 promotion: part of the numerics (module doc)


def check_float8_config(config: dict) -> None:
    """ValueError unless ``config`` can run the fp8 GEMM: power-of-two tiles of at least 16,
    BLOCK_K = :data:`F8_BLOCK_K`, TMA 0 or 1."""
    for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K"):
        v = config[key]
        if v < 16 or v & (v - 1):
            raise ValueError(f"config: {key}={v} must be a power of two >= 16, got {config}")
    if config["BLOCK_K"] != F8_BLOCK_K:
        raise ValueError(
            f"config: BLOCK_K={config['BLOCK_K']}: the fp8 GEMM promotes its accumulator every "
            f"{F8_BLOCK_K} products (BLOCK_K = {F8_BLOCK_K}), got {config}"
        )
    if config.get("TMA", 0) not in (0, 1):
        raise ValueError(f"config: TMA is 0 or 1, got {config}")
    glu = config.get("GLUON", 0)
    if glu not in (0, 1) or (glu and (why := check_gluon_config(config)) is not None):
        raise ValueError(f"config: GLUON is 0 or 1, and 1 only with a tile the Gluon kernel "
                         f"takes ({why if glu in (0, 1) else 'not 0 or 1'}), got {config}")  # fmt: skip


def plan_float8_linear(
    K: int, N: int, out_dtype: torch.dtype, *, config: dict, has_bias: bool, gluon: bool = False
) -> Float8LinearPlan:
    """The plan of :func:`float8_linear` for a weight [N, K] (checks ``config``: ValueError).
    ``gluon``: the launches run on a device that runs the Gluon kernel
    (:func:`.gemm_float8_gluon.float8_gluon_device`), which a ``GLUON`` config then takes."""
    check_float8_config(config)
    meta = dict(HAS_BIAS=has_bias, DT=dtype_code(out_dtype), BLOCK_M=config["BLOCK_M"],
                BLOCK_N=config["BLOCK_N"], BLOCK_K=config["BLOCK_K"], GROUP_M=config["GROUP_M"],
                num_warps=config["num_warps"], num_stages=config["num_stages"])  # fmt: skip
    glu = None
    if gluon and config.get("GLUON", 0):
        glu = plan_float8_linear_gluon(K, N, out_dtype, config=config, has_bias=has_bias)
    return Float8LinearPlan(N, K, out_dtype, config["BLOCK_M"], config["BLOCK_N"],
                            config["BLOCK_K"], bool(config.get("TMA", 0)), meta, glu)  # fmt: skip


def launch_float8_linear(
    p: Float8LinearPlan,
    x_codes: torch.Tensor,
    x_scale: torch.Tensor,
    w_codes: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    kernel=None,
) -> torch.Tensor:
    """Run plan ``p``: [M, N] in ``p.out_dtype`` (layouts as :func:`float8_linear`). ``kernel``:
    the kernel object to launch (default this module's, by ``JITFunction.run``)."""
    M, K, N = x_codes.shape[0], p.K, p.N
    out = empty((M, N), dtype=p.out_dtype, device=x_codes.device)
    if M == 0 or N == 0:
        return out
    if K == 0:
        return out.copy_(bias.expand(M, N) if bias is not None else torch.zeros_like(out))
    if x_codes.stride(1) != 1:
        x_codes = x_codes.contiguous()
    if w_codes.stride(1) != 1:
        w_codes = w_codes.contiguous()
    sx, sw = x_codes.stride(), w_codes.stride()
    if max(M, N) + max(p.block_m, p.block_n) >= 2**31 or N * p.block_m >= 2**31:
        raise ValueError(f"x_codes: {M} x {N} outputs pass the fp8 GEMM's 32-bit offsets")
    fits = k_major_descriptors_fit(x_codes, sx, w_codes, sw)
    if p.gluon is not None and kernel is None and fits:
        sx_c, sw_c = x_scale.contiguous(), w_scale.contiguous()
        b = None if bias is None else bias.contiguous()
        if launch_float8_linear_gluon(p.gluon, x_codes, sx_c, w_codes, sw_c, b, out) is not None:
            return out  # (None: it could not be built here; the Triton kernel runs, same bits)
    x_desc, w_desc = x_codes, w_codes
    tma = p.tma and fits
    if tma:
        x_desc = descriptor(x_codes, sx, [p.block_m, p.block_k])
        w_desc = descriptor(w_codes, sw, [p.block_n, p.block_k])
    args = (x_codes, x_desc, w_codes, w_desc, x_scale.contiguous(), w_scale.contiguous(),
            out if bias is None else bias.contiguous(), out, M, N, K, sx[0], sw[0], N)  # fmt: skip
    grid = (cdiv(M, p.block_m) * cdiv(N, p.block_n),)
    if kernel is None:
        _float8_linear_kernel.run(*args, grid=grid, warmup=False, TMA=tma, **p.meta)
    else:
        kernel[grid](*args, TMA=tma, **p.meta)
    return out


def float8_linear(
    x_codes: torch.Tensor,
    x_scale: torch.Tensor,
    w_codes: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    *,
    config: dict,
) -> torch.Tensor:
    """``(q_x @ q_w.T) * s_x * s_w + bias`` on fp8 tensor cores (a ``GLUON`` config: the Gluon
    kernel where x's device runs it, :mod:`.gemm_float8_gluon`).

    x_codes float8_e4m3fn [M, K], x_scale fp32 [M]; w_codes float8_e4m3fn [N, K], w_scale fp32
    [N] (the GEMM scales of :func:`.quantize_float8.launch_float8_codes`); bias [N] (any float
    dtype) or None. Returns [M, N] in ``out_dtype``. ``config``: BLOCK_M/N/K, GROUP_M,
    num_warps, num_stages, TMA (:func:`check_float8_config`).
    :func:`plan_float8_linear` then :func:`launch_float8_linear`."""
    plan = plan_float8_linear(x_codes.shape[1], w_codes.shape[0], out_dtype, config=config,
                              has_bias=bias is not None,
                              gluon=float8_gluon_device(x_codes.device))  # fmt: skip
    return launch_float8_linear(plan, x_codes, x_scale, w_codes, w_scale, bias)
