"""Forward GEMM: int8 x int8 -> int32 on tensor cores with a dequantizing epilogue.

    out[m, n] = s_x[m] * sum_g s_w[n, g] * (sum_{k in g} q_x[m, k] q_w[n, k]
                                            - zp_x[m] * colsum_w[n, g]
                                            - zp_w[n, g] * sum_{k in g} (q_x[m, k] - zp_x[m]))
                + bias[n]

which equals ``x_fq @ w_fq.T + bias`` up to float rounding (the integer part is exact;
docs/numerics.md "How the kernels reproduce it"). The weight zero-point term (asymmetric weights
only, ``W_ASYM``) is added in fp32 from x's code sums per weight group: zp_w is not bounded by the
code range, so it stays out of the int32 accumulator. Three modes, fixed by K and the weight's
group size (:func:`fwd_mode`); the config must fit the mode (:func:`check_fwd_config`, which the
tuner in ``triton_qat.autotune`` honours when it builds candidates, so what it stores is what
runs):

* ``MODE 0`` per-channel / per-tensor weights: one int32 accumulator, all scaling in the epilogue.
* ``MODE 1`` per-group weights with ``group_size % BLOCK_K == 0``: an int32 accumulator per group,
  flushed into fp32 with that group's scales (the scale varies along K, so not in the epilogue).
* ``MODE 2`` per-group weights with other group sizes: codes are dequantized per element into an
  fp32 dot (IEEE precision), ``(q_w - zp_w) * s_w``. Correct for any divisor of K, slower.

A per-group config may instead set ``DEQUANT`` (the tuner times both): both operands are
dequantized once into transient buffers in the output dtype (:mod:`.dequantize`: bit for bit the
fake-quantized values) and a plain GEMM with a bias epilogue (:mod:`.gemm_float`) computes
``x_fq @ w_fq.T + bias``, exactly the reference's GEMM. Its hot loop is a plain matmul's (wgmma
on 16-bit operands), with no per-group flush, at the 16-bit tensor-core rate instead of int8's.
Why it exists: the int8 path flushes an int32 tile into fp32 after every group (an I2F and an
FFMA per accumulator element per group: 64 / group_size non-MMA instructions per 1024 MACs, which
no tile size amortizes; docs/numerics.md "Forward GEMM").

``TMA`` (MODE 0 / 1, and the dequantized path's GEMM): the operand tiles come through tensor
descriptors (Hopper's TMA) where the operands allow it (K-contiguous, 16-byte aligned rows);
otherwise, and in MODE 2, through per-thread pointers (cp.async).

``GLUON`` (MODE 0 / 1 with symmetric weights, a tuner candidate): the same product and epilogue
by :mod:`.gemm_int8_gluon`, a Gluon kernel whose int32 wgmma keeps one group in flight (Triton's
pipeliner waits for every int32 one; in MODE 1 the flush of one group's partial sum overlaps the
next group's MMAs). It runs only where it can: compiled Triton with Gluon's
Hopper API on an sm_90 GPU (the caller says so: :func:`plan_int8_linear`'s ``gluon``), operands
that fit tensor descriptors, and an eager launch (``kernels`` None: ``torch.compile`` cannot
trace a Gluon kernel, so its launches take this kernel). Elsewhere the config runs this kernel
with its other keys; the outputs are the same bits either way.

Layouts: q_x int8 [M, K] (row stride given), s_x fp32 [M], zp_x int32 [M]; q_w int8 [N, K]
(row stride given), s_w fp32 [N, G] and colsum_w int32 [N, G] with the same (any) strides: stored
group-major ([G, N] memory, as the forward's weight quantize writes them) a group's scales for a
tile are one vector load; bias [N]; out [M, N] contiguous.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._common import cast_to_dt, cdiv, dtype_code, empty, swizzle
from .dequantize import launch_dequantize, plan_dequantize
from .gemm_float import (
    descriptor,
    k_major_descriptors_fit,
    launch_float_mm,
    plan_float_mm,
    tiles_of,
)
from .gemm_int8_gluon import (
    GLUON_GROUP_SIZES,
    GluonPlan,
    check_gluon_config,
    gluon_failed,
    gluon_operands_fit,
    hopper_gluon_device,
    launch_int8_linear_gluon,
    plan_int8_linear_gluon,
)


@triton.jit
def _scale(acc, s_row, s_col):
    """acc * s_row[:, None] * s_col[None, :], multiplying by the smaller scale first: acc is an
    integer, so this overflows only where the exact product does (left to right, 1e36 inputs
    gave inf where the reference is 7e35), and never underflows for the int8 scales (>= the
    smallest normal). The float8 GEMM's scales can be subnormal (an fp32 row of tiny values):
    there a product may lose low bits, within its fp64 bound (kernels/gemm_float8.py)."""
    row_first = s_row[:, None] < s_col[None, :]  # False for a NaN scale: it is then used first
    lo = tl.where(row_first, s_row[:, None], s_col[None, :])  # (tl.minimum would drop a NaN)
    hi = tl.where(row_first, s_col[None, :], s_row[:, None])
    return (acc * lo) * hi


@triton.jit
def _int8_linear_kernel(
    xq_ptr,
    x_desc,
    w_desc,
    sx_ptr,
    zpx_ptr,
    wq_ptr,
    sw_ptr,
    wsum_ptr,
    wzp_ptr,
    xsum_ptr,
    bias_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_xsm,
    stride_wn,
    stride_sn,
    stride_sg,
    stride_om,
    GROUP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ASYM: tl.constexpr,
    W_ASYM: tl.constexpr,
    MODE: tl.constexpr,
    TMA: tl.constexpr,
    DT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_m, pid_n = swizzle(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    # 32-bit row / column indices (M, N < 2**31), and for the vectors indexed by them ([M] / [N]
    # qparams, [N, G] scales, the bias); 64-bit only where a row offset reaches the operands'
    # M * K / N * K elements (pointer tiles held as 64-bit values cost registers the epilogue of
    # a 128x128 tile over 4 warps does not have)
    o_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    o_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    o_k = tl.arange(0, BLOCK_K)  # [BK]
    m_m = o_m < M
    m_n = o_n < N
    # rows / columns past the edge read row 0 (in bounds) and are never stored, so the K loop
    # masks only along K, as a plain matmul does
    o_mw, o_nw = o_m % M, o_n % N
    b_sx = tl.load(sx_ptr + o_mw)  # [BM]
    b_zp = tl.load(zpx_ptr + o_mw)  # [BM]
    p_a = xq_ptr + o_mw.to(tl.int64)[:, None] * stride_xm + o_k[None, :]  # [BM, BK]
    p_b = wq_ptr + o_nw.to(tl.int64)[None, :] * stride_wn + o_k[:, None]  # [BK, BN]
    # TMA: tiles through tensor descriptors of x [M, K] and w [N, K] (zero outside the tensors)
    m0, n0 = pid_m * BLOCK_M, pid_n * BLOCK_N
    if MODE == 0:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):
            if TMA:
                b_a, b_b = x_desc.load([m0, k0]), w_desc.load([n0, k0]).T
            else:
                b_a = tl.load(p_a, mask=(k0 + o_k)[None, :] < K, other=0)
                b_b = tl.load(p_b, mask=(k0 + o_k)[:, None] < K, other=0)
                p_a += BLOCK_K
                p_b += BLOCK_K
            acc += tl.dot(b_a, b_b, out_dtype=tl.int32)  # [BM, BN]
        if ASYM:
            acc -= b_zp[:, None] * tl.load(wsum_ptr + o_nw * stride_sn)[None, :]
        b_sw = tl.load(sw_ptr + o_nw * stride_sn)
        b_out = _scale(acc.to(tl.float32), b_sx, b_sw)
        if W_ASYM:  # - s_x zp_w s_w * sum_k (q_x - zp_x): a rank-1 fp32 term (zp_w is unbounded)
            b_rx = tl.load(xsum_ptr + o_mw * stride_xsm) - K * b_zp  # [BM], |.| <= 255 K
            b_zs = tl.load(wzp_ptr + o_nw * stride_sn).to(tl.float32) * b_sw  # [BN]
            b_out -= (b_rx.to(tl.float32) * b_sx)[:, None] * b_zs[None, :]
    elif MODE == 1:
        # one flat loop over groups (GROUP is a multiple of BLOCK_K, K of GROUP: no masks); per
        # group an int32 tile flushed into fp32 with the group's scales ([BN] vector loads). The
        # zero-point term: for fp32 outputs subtracted exactly in int32 per group (a rank-1 fp32
        # correction cancels for skewed, post-ReLU activations: 3.6e-6 relative, over fp32's
        # bound); for bf16 / fp16 outputs, whose rounding is 1e4x coarser, a rank-1 [BN] vector
        # sum_g s_w * colsum_g applied once after the loop (64 fewer instructions per group).
        EXACT_ZP: tl.constexpr = ASYM and DT == 0
        acc_f = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        b_corr = tl.zeros([BLOCK_N], dtype=tl.float32)
        p_s = sw_ptr + o_nw * stride_sn  # [BN]
        p_ws = wsum_ptr + o_nw * stride_sn  # [BN]
        for g in range(0, K // GROUP):
            acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
            for j in tl.static_range(GROUP // BLOCK_K):
                if TMA:
                    k0 = g * GROUP + j * BLOCK_K
                    acc += tl.dot(
                        x_desc.load([m0, k0]), w_desc.load([n0, k0]).T, out_dtype=tl.int32
                    )
                else:
                    acc += tl.dot(tl.load(p_a), tl.load(p_b), out_dtype=tl.int32)
                    p_a += BLOCK_K
                    p_b += BLOCK_K
            b_sw = tl.load(p_s + g * stride_sg)
            if EXACT_ZP:
                acc -= b_zp[:, None] * tl.load(p_ws + g * stride_sg)[None, :]
            elif ASYM:
                b_corr += tl.load(p_ws + g * stride_sg).to(tl.float32) * b_sw
            acc_f += acc.to(tl.float32) * b_sw[None, :]
        if ASYM and not EXACT_ZP:
            acc_f -= b_zp.to(tl.float32)[:, None] * b_corr[None, :]
        if W_ASYM:
            # - sum_g s_w[n, g] zp_w[n, g] * sum_{k in g} (q_x - zp_x), in fp32, after the K loop
            # (no int32 tile live beside it: the loop above is the symmetric one, register for
            # register)
            for g in range(0, K // GROUP):
                b_rx = tl.load(xsum_ptr + o_mw * stride_xsm + g) - GROUP * b_zp  # [BM]
                o_wg = o_nw * stride_sn + g * stride_sg
                b_zs = tl.load(wzp_ptr + o_wg).to(tl.float32) * tl.load(sw_ptr + o_wg)  # [BN]
                acc_f -= b_rx.to(tl.float32)[:, None] * b_zs[None, :]
        b_out = acc_f * b_sx[:, None]
    else:
        acc_f = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            m_k = (k0 + o_k) < K
            b_a = tl.load(p_a, mask=m_k[None, :], other=0).to(tl.int32)
            b_a = tl.where(m_k[None, :], b_a - b_zp[:, None], 0).to(tl.float32)  # [BM, BK]
            b_b = tl.load(p_b, mask=m_k[:, None], other=0)
            o_sg = o_nw[None, :] * stride_sn + ((k0 + o_k) // GROUP)[:, None] * stride_sg
            if W_ASYM:  # (q_w - zp_w), exact in int32
                b_b = b_b.to(tl.int32) - tl.load(wzp_ptr + o_sg, mask=m_k[:, None], other=0)
            b_b = b_b.to(tl.float32) * tl.load(sw_ptr + o_sg, mask=m_k[:, None], other=0.0)
            acc_f += tl.dot(b_a, b_b, input_precision="ieee")
            p_a += BLOCK_K
            p_b += BLOCK_K
        b_out = acc_f * b_sx[:, None]
    # a token whose scale is inf/NaN has a non-finite x_fq row, so the reference row is all NaN
    m_finite = (b_sx == b_sx) & (tl.abs(b_sx) < float("inf"))  # [BM]
    b_out = tl.where(m_finite[:, None], b_out, float("nan"))
    if HAS_BIAS:
        b_out += tl.load(bias_ptr + o_nw).to(tl.float32)[None, :]
    # the tile's corner as one 64-bit offset, the elements as 32-bit offsets from it (two
    # registers per element less than 64-bit pointers: the epilogue no longer spills)
    p_o = out_ptr + (pid_m.to(tl.int64) * BLOCK_M * stride_om + pid_n.to(tl.int64) * BLOCK_N)
    o_tile = tl.arange(0, BLOCK_M)[:, None] * stride_om + tl.arange(0, BLOCK_N)[None, :]
    tl.store(p_o + o_tile, cast_to_dt(b_out, DT), mask=m_m[:, None] & m_n[None, :])


# The int8 GEMM accumulates sum_k (q_x - zp) * q_w in int32: |.| <= 255 * 128 * K must fit.
MAX_IN_FEATURES = 65536


def _extent(t: torch.Tensor) -> int:
    """1 + the largest element offset of ``t`` (its strides, not its numel: a view's reach)."""
    return 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True))


def check_offsets(M: int, N: int, block_m: int, w_scale: torch.Tensor, x_code_sum) -> None:
    """ValueError where the kernel's 32-bit offsets would overflow: the last tile's rows
    (cdiv(M, BLOCK_M) * BLOCK_M), an output tile's rows apart (N * BLOCK_M), and the reach of the
    weight's [N, G] scales and x's [M, G] code sums (the operands' own rows use 64-bit offsets).
    Past 16 million output features or 2**31 scales: not supported."""
    sums = _extent(x_code_sum) if x_code_sum is not None else 0
    rows = cdiv(M, block_m) * block_m
    if max(N * block_m, _extent(w_scale), sums, rows) >= 2**31:
        raise ValueError(
            f"w_codes: {N} outputs x {w_scale.shape[1]} groups ({M} tokens) pass the forward "
            "kernel's 32-bit offsets (N * BLOCK_M, N * G and M * G must stay below 2**31)"
        )


def fwd_mode(K: int, group_size: int) -> int:
    """MODE for a weight quantized in groups of ``group_size`` along K (see the module doc)."""
    if group_size == K:
        return 0
    return 1 if group_size % 32 == 0 else 2  # int8 tensor-core tiles need BLOCK_K >= 32


def check_fwd_config(config: dict, K: int, group_size: int) -> None:
    """ValueError unless ``config`` can run the forward at this K / group size: MODE 1 needs
    BLOCK_K >= 32 dividing the group; MODE 2 (fp32 operand tiles) BLOCK_K <= 32, <= 2 stages;
    ``DEQUANT`` (0 or 1; the per-group default at 16-bit dtypes, and per channel for a weight
    narrower than the output: ``autotune.weight_narrower``) with any BLOCK_K >= 16 (a plain GEMM);
    ``TMA`` (tensor-descriptor operand loads, where the operands allow) 0 or 1, 0 in MODE 2;
    ``GLUON`` 0 or 1, 1 only in MODE 0 / 1 (not DEQUANT) with a tile the Gluon kernel takes
    (MODE 1: groups of 32 / 64 / 128 with BLOCK_K = the group)."""
    mode, bk, dq = fwd_mode(K, group_size), config["BLOCK_K"], config.get("DEQUANT", 0)
    glu = config.get("GLUON", 0)
    if glu not in (0, 1) or (glu and (mode == 2 or dq)):
        raise ValueError(
            f"config: GLUON is 0 or 1, and 1 only on the int8 path's MODE 0 / 1, got {config}"
        )
    if glu and (why := check_gluon_config(config, per_group=mode == 1)) is not None:
        raise ValueError(f"config: GLUON: {why}, got {config}")
    if glu and mode == 1 and (group_size not in GLUON_GROUP_SIZES or bk != group_size):
        raise ValueError(f"config: GLUON per group needs groups of {GLUON_GROUP_SIZES} and "
                         f"BLOCK_K = group_size={group_size}, got {config}")  # fmt: skip
    if dq not in (0, 1):
        raise ValueError(f"config: DEQUANT is 0 or 1, got {config}")
    if config.get("TMA", 0) not in (0, 1) or (config.get("TMA", 0) and mode == 2 and not dq):
        raise ValueError(
            f"config: TMA is 0 or 1, and 0 for MODE 2 (fp32 operand tiles), got {config}"
        )
    if dq:
        if bk < 16:
            raise ValueError(f"config: BLOCK_K={bk} < 16 cannot feed tensor cores")
        return
    if mode == 0 and bk < 32:
        raise ValueError(f"config: BLOCK_K={bk} < 32 cannot feed int8 tensor cores")
    if mode == 1 and (bk < 32 or group_size % bk):
        raise ValueError(f"config: BLOCK_K={bk} must be >= 32 and divide group_size={group_size}")
    if mode == 2 and (bk > 32 or config["num_stages"] > 2):
        raise ValueError(f"config: MODE 2 runs with BLOCK_K <= 32 and <= 2 stages, got {config}")


class Int8LinearPlan(NamedTuple):
    """What an :func:`int8_linear` launch decides once per key (:func:`plan_int8_linear`)."""

    N: int
    K: int
    out_dtype: torch.dtype
    n_groups: int
    mode: int
    w_asym: bool
    block_m: int
    block_n: int
    tma: bool  # try tensor descriptors (per launch: the operands must allow them)
    dequant: tuple | None  # DEQUANT: (x's DequantizePlan, w's DequantizePlan, FloatMMPlan)
    meta: dict  # constexprs and launch options but TMA
    gluon: GluonPlan | None = None  # GLUON, where the device runs it (per launch: the operands)


def plan_int8_linear(
    K: int,
    N: int,
    n_groups: int,
    out_dtype: torch.dtype,
    *,
    config: dict,
    asymmetric: bool,
    has_bias: bool,
    w_asym: bool = False,
    w_dtype: torch.dtype | None = None,
    dequant_config: dict | None = None,
    w_code_offset: int = 0,
    gluon: bool = False,
) -> Int8LinearPlan:
    """The plan of :func:`int8_linear` for a weight [N, K] scaled in ``n_groups`` groups per row
    (arguments as there; ``w_asym``: the launch gets the weight's zero points). Checks the config
    against the mode (ValueError), so a plan that exists can run. ``gluon``: the launches run
    on a device that runs Gluon kernels (:func:`.gemm_int8_gluon.hopper_gluon_device`), which a
    ``GLUON`` config then takes for symmetric weights (module doc)."""
    group_size = K // n_groups if K else 0
    mode = fwd_mode(K, group_size) if K else 0
    dequant = None
    if K:
        check_fwd_config(config, K, group_size)
        if config.get("DEQUANT", 0):
            if dequant_config is None:
                raise ValueError("int8_linear: a DEQUANT config needs dequant_config")
            x_plan = plan_dequantize(K, 1, out_dtype, config=dequant_config)
            w_plan = plan_dequantize(K, n_groups, w_dtype or out_dtype, config=dequant_config,
                                     has_zp=w_asym, asym_weight=w_asym,
                                     code_offset=w_code_offset, out_dtype=out_dtype)  # fmt: skip
            mm_plan = plan_float_mm(out_dtype, tiles=tiles_of(config, "BLOCK_M", "BLOCK_N",
                                    "BLOCK_K"), bias=has_bias, tma=bool(config.get("TMA", 0)))  # fmt: skip
            dequant = (x_plan, w_plan, mm_plan)
    meta = dict(
        GROUP=group_size,
        HAS_BIAS=has_bias,
        ASYM=asymmetric,
        W_ASYM=w_asym,
        MODE=mode,
        DT=dtype_code(out_dtype),
        BLOCK_M=config["BLOCK_M"],
        BLOCK_N=config["BLOCK_N"],
        BLOCK_K=config["BLOCK_K"],
        GROUP_M=config["GROUP_M"],
        num_warps=config["num_warps"],
        num_stages=config["num_stages"],
    )
    tma = bool(config.get("TMA", 0)) and mode != 2
    glu = None
    if (
        gluon
        and config.get("GLUON", 0)
        and K
        and mode < 2
        and not w_asym
        and not gluon_failed(mode)
    ):
        glu = plan_int8_linear_gluon(K, N, out_dtype, config=config, asymmetric=asymmetric,
                                     has_bias=has_bias, group_size=group_size if mode else 0)  # fmt: skip
    return Int8LinearPlan(N, K, out_dtype, n_groups, mode, w_asym, config["BLOCK_M"],
                          config["BLOCK_N"], tma, dequant, meta, glu)  # fmt: skip


def launch_int8_linear(
    p: Int8LinearPlan,
    x_codes: torch.Tensor,
    x_scale: torch.Tensor,
    x_zero_point: torch.Tensor,
    w_codes: torch.Tensor,
    w_scale: torch.Tensor,
    w_code_sum: torch.Tensor,
    bias: torch.Tensor | None,
    w_zero_point: torch.Tensor | None = None,
    x_code_sum: torch.Tensor | None = None,
    kernels: tuple | None = None,
) -> torch.Tensor:
    """Run plan ``p`` (:func:`plan_int8_linear`): ``x_fq @ w_fq.T + bias`` [M, N] from the codes
    (layouts as :func:`int8_linear`). ``kernels``: (int8 GEMM, dequantize, float GEMM) kernel
    objects to launch (default these modules'; traced wrappers under ``torch.compile``, which
    launch the Triton kernel of a ``GLUON`` config: torch's ``wrap_triton`` cannot trace Gluon)."""
    M, K, N = x_codes.shape[0], p.K, p.N
    if p.dequant is not None and M and N:
        x_plan, w_plan, mm_plan = p.dequant
        k_int8, k_dq, k_mm = kernels or (None, None, None)
        x_fq = launch_dequantize(x_plan, x_codes, x_scale, x_zero_point, kernel=k_dq)
        w_fq = launch_dequantize(w_plan, w_codes, w_scale, w_zero_point, kernel=k_dq)
        return launch_float_mm(mm_plan, x_fq, w_fq.t(), bias=bias, kernel=k_mm)
    out = empty((M, N), dtype=p.out_dtype, device=x_codes.device)
    if M == 0 or N == 0:
        return out
    if K == 0:
        return out.copy_(bias.expand(M, N) if bias is not None else torch.zeros_like(out))
    if p.gluon is not None and kernels is None and gluon_operands_fit(x_codes, w_codes):
        ss = w_scale.stride()
        if max(N * p.block_m, M + p.block_m, N * ss[0] + p.n_groups * ss[1]) >= 2**31:
            check_offsets(M, N, p.block_m, w_scale, None)  # its 32-bit offsets are the same
        if launch_int8_linear_gluon(p.gluon, x_codes, x_scale, x_zero_point, w_codes, w_scale,
                                    w_code_sum, bias, out) is not None:  # fmt: skip
            return out  # (None: it could not be built here; the Triton kernel runs, same bits)
    sx, sw = x_codes.stride(), w_codes.stride()
    if sx[1] != 1:
        x_codes = x_codes.contiguous()
        sx = x_codes.stride()
    if sw[1] != 1:
        w_codes = w_codes.contiguous()
        sw = w_codes.stride()
    mode, w_asym, G = p.mode, p.w_asym, p.n_groups
    if w_asym:
        if mode != 2 and x_code_sum is None:
            x_code_sum = x_codes.reshape(M, G, K // G).sum(-1, dtype=torch.int32)
        if mode == 2:
            x_code_sum = None
        if x_code_sum is not None and x_code_sum.stride(1) != 1:
            x_code_sum = x_code_sum.contiguous()
    ss = w_scale.stride()
    if w_code_sum.stride() != ss or (w_asym and w_zero_point.stride() != ss):
        w_scale, w_code_sum = w_scale.contiguous(), w_code_sum.contiguous()  # one pair of strides
        w_zero_point = w_zero_point.contiguous() if w_asym else None
        ss = w_scale.stride()
    x_desc, w_desc = x_codes, w_codes
    tma = p.tma and k_major_descriptors_fit(x_codes, sx, w_codes, sw)
    if tma:  # x [M, K] and w [N, K] as descriptors, K-major
        x_desc = descriptor(x_codes, sx, [p.block_m, p.meta["BLOCK_K"]])
        w_desc = descriptor(w_codes, sw, [p.block_n, p.meta["BLOCK_K"]])
    # the 32-bit offsets' full check (check_offsets) where it can fail
    rows, w_reach = -(-M // p.block_m) * p.block_m, 1 + (N - 1) * ss[0] + (G - 1) * ss[1]
    if x_code_sum is not None or N * p.block_m >= 2**31 or w_reach >= 2**31 or rows >= 2**31:
        check_offsets(M, N, p.block_m, w_scale, x_code_sum)
    args = (
        x_codes, x_desc, w_desc, x_scale.contiguous(), x_zero_point.contiguous(), w_codes,
        w_scale, w_code_sum, w_zero_point if w_asym else w_code_sum,
        x_code_sum if x_code_sum is not None else w_code_sum,
        out if bias is None else bias.contiguous(), out, M, N, K, sx[0],
        x_code_sum.stride(0) if x_code_sum is not None else 0, sw[0], ss[0], ss[1],
        N,  # out's row stride: contiguous
    )  # fmt: skip
    grid = (-(-M // p.block_m) * -(-N // p.block_n),)
    if kernels is None:  # JITFunction.run: what kernel[grid](...) calls, without its two frames
        _int8_linear_kernel.run(*args, grid=grid, warmup=False, TMA=tma, **p.meta)
    else:
        kernels[0][grid](*args, TMA=tma, **p.meta)
    return out


def int8_linear(
    x_codes: torch.Tensor,
    x_scale: torch.Tensor,
    x_zero_point: torch.Tensor,
    w_codes: torch.Tensor,
    w_scale: torch.Tensor,
    w_code_sum: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    *,
    asymmetric: bool,
    config: dict,
    w_zero_point: torch.Tensor | None = None,
    x_code_sum: torch.Tensor | None = None,
    w_dtype: torch.dtype | None = None,
    dequant_config: dict | None = None,
    w_code_offset: int = 0,
) -> torch.Tensor:
    """``x_fq @ w_fq.T + bias`` from int8 codes.

    x_codes int8 [M, K], x_scale fp32 [M] or [M, 1], x_zero_point int32 [M] or [M, 1] (stored
    shifted like the codes); w_codes int8 [N, K], w_scale fp32 [N, G], w_code_sum int32 [N, G]
    (G groups of K // G along K); bias [N] or None. Returns [M, N] in ``out_dtype``. ``config``:
    BLOCK_M/N/K, GROUP_M, num_warps, num_stages, fitting :func:`check_fwd_config` (``GLUON``:
    the Gluon kernel where x's device runs it, module doc).
    Asymmetric weights: ``w_zero_point`` int32 [N, G], and ``x_code_sum`` int32 [M, G] the sums of
    x's codes over each weight group (what the activation quantize writes with ``sum_group``;
    computed here from the codes when not given, a pass over them).
    ``config["DEQUANT"]`` (per-group weights): the dequantized path (module doc), which needs
    ``dequant_config`` (the dequantize kernel's BLOCK_R, BLOCK_C, num_warps) and forms w_fq in
    ``w_dtype`` (the weight's dtype; default ``out_dtype``); asymmetric weights whose codes are
    stored shifted (ranges past 127) give their shift as ``w_code_offset``.
    :func:`plan_int8_linear` then :func:`launch_int8_linear`.
    """
    K = x_codes.shape[1]
    plan = plan_int8_linear(K, w_codes.shape[0], w_scale.shape[1] if K else 0, out_dtype,
                            config=config, asymmetric=asymmetric, has_bias=bias is not None,
                            w_asym=w_zero_point is not None, w_dtype=w_dtype,
                            dequant_config=dequant_config, w_code_offset=w_code_offset,
                            gluon=hopper_gluon_device(x_codes.device))  # fmt: skip
    return launch_int8_linear(plan, x_codes, x_scale, x_zero_point, w_codes, w_scale, w_code_sum,
                              bias, w_zero_point, x_code_sum)  # fmt: skip
