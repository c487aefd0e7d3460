"""Forward GEMM for symmetric int8 / int4 weights in Gluon for Hopper (sm_90): MODE 0 (per
channel / per tensor) and MODE 1 (per group, groups of 32 / 64 / 128 = BLOCK_K).

    out[m, n] = s_x[m] * s_w[n] * (sum_k q_x[m, k] q_w[n, k] - zp_x[m] * colsum_w[n]) + bias[n]

The same product and the same epilogue as :mod:`.gemm_int8`'s MODE 0 (``W_ASYM`` off), written
in Triton's Gluon dialect (``triton.experimental.gluon``) so that the int32 wgmma (IGMMA) stays
in flight: Triton's own pipeliner makes a dot asynchronous only when its accumulator is fp32,
so every int8 ``tl.dot`` waits for its wgmma group to finish (``WARPGROUP.DEPBAR.LE 0``) before
the next one issues. Here the K loop is explicit:

* the int8 tiles of x [M, K] and of the weight codes [N, K] (K-major) come by TMA into a ring of
  ``STAGES`` NVMMA-swizzled shared-memory buffers, one mbarrier per buffer (expect-tx, then a
  wait on its phase);
* ``warpgroup_mma(..., is_async=True)`` accumulates into an int32 register tile and
  ``warpgroup_mma_wait(num_outstanding=1)`` leaves that group in flight while the next tile's
  TMA lands; the buffer the previous group read is then refilled, ``STAGES - 1`` steps ahead;
* the epilogue is the Triton kernel's, operation for operation in fp32: ``acc - zp_x * colsum``
  in int32, then ``(acc * lo) * hi`` with the smaller scale first, NaN rows for non-finite
  token scales, ``+ bias`` in fp32, one rounding to the output dtype. The int32 accumulator is
  exact, so the output is bit-identical to the Triton kernel's (docs/numerics.md "How the
  kernels reproduce it").

What it needs (elsewhere a ``GLUON`` config runs the Triton kernel, :mod:`.gemm_int8`): a
Triton whose Gluon has the Hopper API (:func:`gluon_available`; compiled for sm_90a under 3.5.1,
3.6.0, 3.7.1, 3.8.0 and 3.9.0, whose TMA load changed name; 3.4.0 has no ``warpgroup_mma``; a
release where a kernel still fails to build turns that kernel (per channel or per group) off
for the process at its first launch, with a warning), an NVIDIA GPU of compute capability 9
and compiled Triton (:func:`gluon_device`; never the interpreter: Gluon has none), symmetric
weights per row (MODE 0 without ``W_ASYM``) or in groups of 32 / 64 / 128 (MODE 1), operands that fit tensor descriptors (16-byte aligned rows,
:func:`gluon_operands_fit`) and an eager launch (``torch.compile`` traces user kernels with
``torch.library.wrap_triton``, whose analysis compiles a plain Triton source: a Gluon kernel
fails there, "Could not determine the number of warps per CTA", so traced launches take the
Triton kernel). Out-of-range rows, columns and the K tail read as zeros (TMA's padding), so the
loop has no masks.

Layouts as :func:`.gemm_int8.int8_linear`: x_codes int8 [M, K], x_scale fp32 [M], x_zero_point
int32 [M]; w_codes int8 [N, K], w_scale fp32 [N, 1] and w_code_sum int32 [N, 1] (any strides:
one column); bias [N] or None; out [M, N] contiguous in fp32 / fp16 / bf16.

MODE 1 (:func:`_int8_linear_group_gluon_kernel`, per-group symmetric weights in groups of 32,
64 or 128 = BLOCK_K, the int4 g128 / g32 forward): the Triton kernel's MODE 1 waits for each group's int32 dot before flushing it
into fp32 with the group's scales (an I2F and an FFMA per accumulator element per group), so no
MMA overlaps a flush. Here two int32 partial sums take turns group by group: group g's wgmmas
are issued into one, and while they run group g - 1's finished partial is flushed from the
other, operation for operation as the Triton kernel's flush (zero-point term included), so the
bits are its. w_scale and w_code_sum are [N, G] with one pair of strides.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import triton

from ._common import INTERPRET, cdiv, device_major, dtype_code, empty
from .gemm_float import k_major_descriptors_fit

try:  # Gluon's Hopper API (triton.experimental: it moves between releases)
    import triton.experimental.gluon.language as gl
    from triton.experimental import gluon
    from triton.experimental.gluon.language.nvidia.hopper import (
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor

    # the TMA tile load: ``async_load`` in Triton 3.9, ``async_copy_global_to_shared`` in 3.6
    # (3.9 keeps that name only to raise), same arguments (descriptor, coordinates, barrier,
    # destination, pred)
    _tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
    _GLUON_ERROR = None
except (ImportError, AttributeError) as e:  # an older or reshaped Gluon: the Triton kernel runs
    gluon = None
    _GLUON_ERROR = f"{type(e).__name__}: {e}"


def gluon_available() -> bool:
    """Whether this Triton has the Gluon Hopper API the kernel is written in (TMA loads,
    mbarriers, asynchronous warpgroup MMA, Gluon tensor descriptors)."""
    return gluon is not None


def gluon_unavailable_reason() -> str | None:
    """Why :func:`gluon_available` is False (the import's error), else None."""
    return _GLUON_ERROR


# mode (0: per channel, 1: per group) -> why, set when a launch of that mode's kernel failed to
# build or run (a Triton release whose Gluon has the API's names but not its behaviour: built and
# checked here under 3.5.1, 3.6.0, 3.7.1, 3.8.0 and 3.9.0; 3.4.0 lacks warpgroup_mma and is gated
# off above): the process then runs the Triton kernel for that mode's GLUON configs.
_FAILED: dict[int, str] = {}


def _failed(e: Exception, mode: int) -> None:
    why = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
    _FAILED[mode] = why
    warnings.warn(f"triton_qat: the Gluon int8 forward (MODE {mode}) failed under Triton "
                  f"{triton.__version__} ({why[:300]}); its GLUON configs run the Triton kernel "
                  "from now on", stacklevel=4)  # fmt: skip


if gluon is not None:
    # -- the pieces both Gluon forwards share (this one and kernels/gemm_float8_gluon.py) -------
    @gluon.jit
    def _grouped_tile(M, N, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, GROUP_M: gl.constexpr):
        """(pid_m, pid_n) of this program in grouped ordering (kernels/_common.py ``swizzle``)."""
        pid = gl.program_id(0)
        n_pid_m = gl.cdiv(M, BLOCK_M)
        n_pid_n = gl.cdiv(N, BLOCK_N)
        n_in_group = GROUP_M * n_pid_n
        first_m = (pid // n_in_group) * GROUP_M
        size_m = gl.minimum(n_pid_m - first_m, GROUP_M)
        return first_m + ((pid % n_in_group) % size_m), (pid % n_in_group) // size_m

    @gluon.jit
    def _tma_ring(x_desc, w_desc, ELEM: gl.constexpr, STAGES: gl.constexpr,
                  BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr):  # fmt: skip
        """The ring: STAGES x (x tile [BLOCK_M, BLOCK_K], w tile [BLOCK_N, BLOCK_K]) of 8-bit
        ``ELEM`` in the descriptors' swizzled layouts, one initialized mbarrier each."""
        a_bufs = gl.allocate_shared_memory(ELEM, [STAGES, BLOCK_M, BLOCK_K], x_desc.layout)
        b_bufs = gl.allocate_shared_memory(ELEM, [STAGES, BLOCK_N, BLOCK_K], w_desc.layout)
        bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(bars.index(i), count=1)
        return a_bufs, b_bufs, bars

    @gluon.jit
    def _load_step(a_bufs, b_bufs, bars, x_desc, w_desc, k, n_k, m0, n0, STAGES: gl.constexpr,
                   BLOCK_K: gl.constexpr, TILE_BYTES: gl.constexpr):  # fmt: skip
        """TMA loads of K step k's two tiles into slot k % STAGES, counted on its mbarrier
        (predicated off past the last step)."""
        s = k % STAGES
        on = k < n_k
        mbarrier.expect(bars.index(s), TILE_BYTES, pred=on)
        _tma_load(x_desc, [m0, k * BLOCK_K], bars.index(s), a_bufs.index(s), pred=on)
        _tma_load(w_desc, [n0, k * BLOCK_K], bars.index(s), b_bufs.index(s), pred=on)

    @gluon.jit
    def _mma_step(a_bufs, b_bufs, bars, acc, ki, STAGES: gl.constexpr, USE_ACC: gl.constexpr):
        """K step ki: wait for its tiles (slot ki % STAGES), then start its asynchronous wgmma
        into ``acc`` (``USE_ACC`` False: a fresh sum, ``acc`` only gives the registers' layout).
        B is the [BK, BN] view of the K-major [BN, BK] tile (wgmma reads it transposed)."""
        s = ki % STAGES
        mbarrier.wait(bars.index(s), (ki // STAGES) & 1)
        return warpgroup_mma(a_bufs.index(s), b_bufs.index(s).permute((1, 0)), acc,
                             use_acc=USE_ACC, is_async=True)  # fmt: skip

    @gluon.jit
    def _scale_tile(acc, b_sx, b_sw):
        """``acc * s_x[:, None] * s_w[None, :]`` as ``(acc * lo) * hi``, the smaller scale first
        (a NaN scale, never smaller, is then used first): kernels/gemm_int8.py ``_scale``."""
        row_first = b_sx[:, None] < b_sw[None, :]
        lo = gl.where(row_first, b_sx[:, None], b_sw[None, :])
        hi = gl.where(row_first, b_sw[None, :], b_sx[:, None])
        return (acc * lo) * hi

    @gluon.jit
    def _store_tile(b_out, out_ptr, pid_m, pid_n, M, N, stride_om, DT: gl.constexpr,
                    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, WARPS: gl.constexpr,
                    OUT_VEC: gl.constexpr, OUT_TPW_N: gl.constexpr):  # fmt: skip
        """cast_to_dt (round to nearest even) of the fp32 tile, then a coalesced layout
        (OUT_VEC elements per thread x OUT_TPW_N threads along a row) for the masked store;
        the tile's corner as one 64-bit offset, the elements as 32-bit offsets from it."""
        if DT == 1:
            b_out = b_out.to(gl.float16)
        elif DT == 2:
            b_out = b_out.to(gl.bfloat16)
        out_layout: gl.constexpr = gl.BlockedLayout(
            size_per_thread=[1, OUT_VEC], threads_per_warp=[32 // OUT_TPW_N, OUT_TPW_N],
            warps_per_cta=[WARPS, 1], order=[1, 0],
        )  # fmt: skip
        b_out = gl.convert_layout(b_out, out_layout)
        o_m = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, out_layout))  # [BM]
        o_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, out_layout))  # [BN]
        p_o = out_ptr + (pid_m.to(gl.int64) * BLOCK_M * stride_om + pid_n.to(gl.int64) * BLOCK_N)
        m_o = ((pid_m * BLOCK_M + o_m) < M)[:, None] & ((pid_n * BLOCK_N + o_n) < N)[None, :]
        gl.store(p_o + (o_m[:, None] * stride_om + o_n[None, :]), b_out, mask=m_o)

    @gluon.jit
    def _int8_linear_gluon_kernel(
        x_desc,
        w_desc,
        sx_ptr,
        zpx_ptr,
        sw_ptr,
        wsum_ptr,
        bias_ptr,
        out_ptr,
        M,
        N,
        K,
        stride_sn,
        stride_om,
        HAS_BIAS: gl.constexpr,
        ASYM: gl.constexpr,
        DT: gl.constexpr,
        BLOCK_M: gl.constexpr,
        BLOCK_N: gl.constexpr,
        BLOCK_K: gl.constexpr,
        GROUP_M: gl.constexpr,
        STAGES: gl.constexpr,
        WARPS_M: gl.constexpr,
        WARPS_N: gl.constexpr,
        INSTR_N: gl.constexpr,
        OUT_VEC: gl.constexpr,
        OUT_TPW_N: gl.constexpr,
    ):
        """One [BLOCK_M, BLOCK_N] tile of out per program (grouped ordering, as the Triton
        kernel's ``swizzle``); x_desc / w_desc: int8 [M, K] / [N, K] descriptors with
        [BLOCK_M, BLOCK_K] / [BLOCK_N, BLOCK_K] tiles; WARPS_M x WARPS_N warps share the
        accumulator (m16 x INSTR_N x k32 IGMMA instructions); OUT_VEC x OUT_TPW_N: the store's
        coalesced layout (elements per thread x threads along a row)."""
        pid_m, pid_n = _grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
        m0 = pid_m * BLOCK_M
        n0 = pid_n * BLOCK_N

        acc_layout: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[WARPS_M, WARPS_N], instr_shape=[16, INSTR_N, 32]
        )
        a_bufs, b_bufs, bars = _tma_ring(x_desc, w_desc, gl.int8, STAGES, BLOCK_M, BLOCK_N,
                                         BLOCK_K)  # fmt: skip
        TILE_BYTES: gl.constexpr = (BLOCK_M + BLOCK_N) * BLOCK_K  # int8: one byte an element
        n_k = gl.cdiv(K, BLOCK_K)
        # prologue: the first STAGES - 1 steps in flight (predicated off past the last step)
        for i in gl.static_range(STAGES - 1):
            _load_step(a_bufs, b_bufs, bars, x_desc, w_desc, i, n_k, m0, n0, STAGES, BLOCK_K,
                       TILE_BYTES)  # fmt: skip

        acc = gl.zeros([BLOCK_M, BLOCK_N], gl.int32, layout=acc_layout)  # [BM, BN]
        for ki in range(n_k):
            s = ki % STAGES
            acc = _mma_step(a_bufs, b_bufs, bars, acc, ki, STAGES, True)
            # one group in flight: step ki - 1's group is done, so its buffer takes step
            # ki + STAGES - 1 (the same slot modulo STAGES)
            acc, _, _ = warpgroup_mma_wait(num_outstanding=1,
                                           deps=(acc, a_bufs.index(s), b_bufs.index(s)))  # fmt: skip
            _load_step(a_bufs, b_bufs, bars, x_desc, w_desc, ki + STAGES - 1, n_k, m0, n0,
                       STAGES, BLOCK_K, TILE_BYTES)  # fmt: skip
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(bars.index(i))

        # epilogue: _int8_linear_kernel's MODE 0, operation for operation (W_ASYM off); rows /
        # columns past the edge read row / column 0 (in bounds) and are never stored
        row_layout: gl.constexpr = gl.SliceLayout(1, acc_layout)
        col_layout: gl.constexpr = gl.SliceLayout(0, acc_layout)
        o_mw = (m0 + gl.arange(0, BLOCK_M, layout=row_layout)) % M  # [BM]
        o_nw = (n0 + gl.arange(0, BLOCK_N, layout=col_layout)) % N  # [BN]
        b_sx = gl.load(sx_ptr + o_mw)  # [BM]
        if ASYM:
            b_zp = gl.load(zpx_ptr + o_mw)  # [BM]
            acc -= b_zp[:, None] * gl.load(wsum_ptr + o_nw * stride_sn)[None, :]
        b_sw = gl.load(sw_ptr + o_nw * stride_sn)  # [BN]
        b_out = _scale_tile(acc.to(gl.float32), b_sx, b_sw)  # [BM, BN]
        m_finite = (b_sx == b_sx) & (gl.abs(b_sx) < float("inf"))  # [BM]
        b_out = gl.where(m_finite[:, None], b_out, float("nan"))
        if HAS_BIAS:
            b_out += gl.load(bias_ptr + o_nw).to(gl.float32)[None, :]
        _store_tile(b_out, out_ptr, pid_m, pid_n, M, N, stride_om, DT, BLOCK_M, BLOCK_N,
                    WARPS_M * WARPS_N, OUT_VEC, OUT_TPW_N)  # fmt: skip

    # -- MODE 1: per-group weights, an int32 partial sum per group flushed into fp32 ------------
    @gluon.jit
    def _flush_group(acc_f, b_corr, part, g, sw_ptr, wsum_ptr, o_nv, stride_sn, stride_sg, b_zp,
                     ASYM: gl.constexpr, EXACT_ZP: gl.constexpr):  # fmt: skip
        """Group g's finished int32 partial sum into the fp32 accumulator with the group's weight
        scales: _int8_linear_kernel's MODE 1 flush, operation for operation (EXACT_ZP: the
        zero-point term in int32; else, ASYM, its rank-1 sum ``b_corr`` for after the loop).
        The [BN] vectors load one element a thread (``o_nv``'s layout, where ``b_corr`` stays)
        and move to the accumulator's column layout through shared memory: held in that layout
        across the loop they would take 32 registers each (a thread's columns)."""
        col_layout: gl.constexpr = gl.SliceLayout(0, part.type.layout)
        o_s = o_nv * stride_sn + g * stride_sg  # [BN]
        b_sw = gl.load(sw_ptr + o_s)  # [BN]
        if EXACT_ZP:
            b_ws = gl.convert_layout(gl.load(wsum_ptr + o_s), col_layout)
            part = part - b_zp[:, None] * b_ws[None, :]
        elif ASYM:
            b_corr = b_corr + gl.load(wsum_ptr + o_s).to(gl.float32) * b_sw
        acc_f = acc_f + part.to(gl.float32) * gl.convert_layout(b_sw, col_layout)[None, :]
        return acc_f, b_corr

    @gluon.jit
    def _group_steps(a_bufs, b_bufs, bars, x_desc, w_desc, zero, prev, acc_f, b_corr, g, n_k, m0,
                     n0, sw_ptr, wsum_ptr, o_nv, stride_sn, stride_sg, b_zp,
                     FLUSH: gl.constexpr, R: gl.constexpr, STAGES: gl.constexpr,
                     BLOCK_K: gl.constexpr, ASYM: gl.constexpr, EXACT_ZP: gl.constexpr):  # fmt: skip
        """Start group g: its R K steps into a fresh int32 partial sum, each wgmma asynchronous
        and waited for down to one group in flight, its slot refilled STAGES - 1 steps ahead.
        ``FLUSH``: once step 0 is in flight, group g - 1's partial ``prev`` (the other register
        tile) is complete and is flushed into acc_f while step 0 runs. Returns (group g's
        partial, still in flight; acc_f; b_corr)."""
        TILE_BYTES: gl.constexpr = (a_bufs.type.shape[1] + b_bufs.type.shape[1]) * BLOCK_K
        ki = g * R
        part = _mma_step(a_bufs, b_bufs, bars, zero, ki, STAGES, False)
        if FLUSH:
            done = warpgroup_mma_wait(num_outstanding=1, deps=(prev,))
        _load_step(a_bufs, b_bufs, bars, x_desc, w_desc, ki + STAGES - 1, n_k, m0, n0, STAGES,
                   BLOCK_K, TILE_BYTES)  # fmt: skip
        if FLUSH:
            acc_f, b_corr = _flush_group(acc_f, b_corr, done, g - 1, sw_ptr, wsum_ptr, o_nv,
                                         stride_sn, stride_sg, b_zp, ASYM, EXACT_ZP)  # fmt: skip
        for j in gl.static_range(1, R):
            part = _mma_step(a_bufs, b_bufs, bars, part, ki + j, STAGES, True)
            part = warpgroup_mma_wait(num_outstanding=1, deps=(part,))
            _load_step(a_bufs, b_bufs, bars, x_desc, w_desc, ki + j + STAGES - 1, n_k, m0, n0,
                       STAGES, BLOCK_K, TILE_BYTES)  # fmt: skip
        return part, acc_f, b_corr

    @gluon.jit
    def _int8_linear_group_gluon_kernel(
        x_desc, w_desc, sx_ptr, zpx_ptr, sw_ptr, wsum_ptr, bias_ptr, out_ptr, M, N, K,
        stride_sn, stride_om, stride_sg, GROUP: gl.constexpr, HAS_BIAS: gl.constexpr,
        ASYM: gl.constexpr, DT: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
        BLOCK_K: gl.constexpr, GROUP_M: gl.constexpr, STAGES: gl.constexpr,
        WARPS_M: gl.constexpr, WARPS_N: gl.constexpr, INSTR_N: gl.constexpr,
        OUT_VEC: gl.constexpr, OUT_TPW_N: gl.constexpr,
    ):  # fmt: skip
        """MODE 1 (symmetric weights in groups of GROUP = BLOCK_K along K): as :func:`_int8_linear_gluon_kernel`, with two int32 partial sums taking
        turns group by group, so group g's wgmma group stays in flight while group g - 1's sum
        is flushed into fp32 with its scales (s_w and the code sums [N, G] with strides
        (stride_sn, stride_sg)). The flush and the epilogue are _int8_linear_kernel's MODE 1,
        operation for operation, so the bits are its."""
        pid_m, pid_n = _grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
        m0 = pid_m * BLOCK_M
        n0 = pid_n * BLOCK_N
        acc_layout: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[WARPS_M, WARPS_N], instr_shape=[16, INSTR_N, 32]
        )
        a_bufs, b_bufs, bars = _tma_ring(x_desc, w_desc, gl.int8, STAGES, BLOCK_M, BLOCK_N,
                                         BLOCK_K)  # fmt: skip
        R: gl.constexpr = GROUP // BLOCK_K  # K steps per group
        EXACT_ZP: gl.constexpr = ASYM and DT == 0  # fp32 outputs: the zero point in int32
        n_k = K // BLOCK_K
        n_g = K // GROUP
        for i in gl.static_range(STAGES - 1):
            _load_step(a_bufs, b_bufs, bars, x_desc, w_desc, i, n_k, m0, n0, STAGES, BLOCK_K,
                       (BLOCK_M + BLOCK_N) * BLOCK_K)  # fmt: skip

        # the [BN] vectors (scales, code sums, b_corr) one element a thread (see _flush_group)
        vec_layout: gl.constexpr = gl.BlockedLayout([1], [32], [WARPS_M * WARPS_N], [0])
        o_nv = (n0 + gl.arange(0, BLOCK_N, layout=vec_layout)) % N  # [BN]
        o_mw = (m0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, acc_layout))) % M  # [BM]
        b_zp = gl.load(zpx_ptr + o_mw)  # [BM]
        acc_f = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=acc_layout)  # [BM, BN]
        b_corr = gl.zeros([BLOCK_N], gl.float32, layout=vec_layout)  # [BN]
        zero = gl.zeros([BLOCK_M, BLOCK_N], gl.int32, layout=acc_layout)
        part, acc_f, b_corr = _group_steps(a_bufs, b_bufs, bars, x_desc, w_desc, zero, zero,
                                           acc_f, b_corr, 0, n_k, m0, n0, sw_ptr, wsum_ptr, o_nv,
                                           stride_sn, stride_sg, b_zp, False, R, STAGES, BLOCK_K,
                                           ASYM, EXACT_ZP)  # fmt: skip
        # then two partial sums in turn (part: even groups, part_b: odd ones), so that no
        # register copy reads a group in flight (ptxas serializes every wgmma where one does)
        for g in range(1, n_g - 1, 2):
            part_b, acc_f, b_corr = _group_steps(a_bufs, b_bufs, bars, x_desc, w_desc, zero,
                                                 part, acc_f, b_corr, g, n_k, m0, n0, sw_ptr,
                                                 wsum_ptr, o_nv, stride_sn, stride_sg, b_zp, True,
                                                 R, STAGES, BLOCK_K, ASYM, EXACT_ZP)  # fmt: skip
            part, acc_f, b_corr = _group_steps(a_bufs, b_bufs, bars, x_desc, w_desc, zero,
                                               part_b, acc_f, b_corr, g + 1, n_k, m0, n0, sw_ptr,
                                               wsum_ptr, o_nv, stride_sn, stride_sg, b_zp, True,
                                               R, STAGES, BLOCK_K, ASYM, EXACT_ZP)  # fmt: skip
        if n_g % 2 == 0:  # one group left after the pairs
            part_b, acc_f, b_corr = _group_steps(a_bufs, b_bufs, bars, x_desc, w_desc, zero,
                                                 part, acc_f, b_corr, n_g - 1, n_k, m0, n0,
                                                 sw_ptr, wsum_ptr, o_nv, stride_sn, stride_sg,
                                                 b_zp, True, R, STAGES, BLOCK_K, ASYM,
                                                 EXACT_ZP)  # fmt: skip
            done = warpgroup_mma_wait(num_outstanding=0, deps=(part_b,))
        else:  # (each branch waits for its own tile: a tile in flight copied into a common one
            # where the branches join would serialize every wgmma, ptxas C7514)
            done = warpgroup_mma_wait(num_outstanding=0, deps=(part,))
        acc_f, b_corr = _flush_group(acc_f, b_corr, done, n_g - 1, sw_ptr, wsum_ptr, o_nv,
                                     stride_sn, stride_sg, b_zp, ASYM, EXACT_ZP)  # fmt: skip
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(bars.index(i))

        # epilogue: _int8_linear_kernel's MODE 1 (W_ASYM off), operation for operation
        col_layout: gl.constexpr = gl.SliceLayout(0, acc_layout)
        if ASYM and not EXACT_ZP:
            b_corr = gl.convert_layout(b_corr, col_layout)
            acc_f = acc_f - b_zp.to(gl.float32)[:, None] * b_corr[None, :]
        b_sx = gl.load(sx_ptr + o_mw)  # [BM]
        b_out = acc_f * b_sx[:, None]
        m_finite = (b_sx == b_sx) & (gl.abs(b_sx) < float("inf"))  # [BM]
        b_out = gl.where(m_finite[:, None], b_out, float("nan"))
        if HAS_BIAS:
            o_nw = (n0 + gl.arange(0, BLOCK_N, layout=col_layout)) % N  # [BN]
            b_out += gl.load(bias_ptr + o_nw).to(gl.float32)[None, :]
        _store_tile(b_out, out_ptr, pid_m, pid_n, M, N, stride_om, DT, BLOCK_M, BLOCK_N,
                    WARPS_M * WARPS_N, OUT_VEC, OUT_TPW_N)  # fmt: skip

else:
    _int8_linear_gluon_kernel = None
    _int8_linear_group_gluon_kernel = None


def _warps(block_m: int, num_warps: int) -> tuple[int, int]:
    """(WARPS_M, WARPS_N): wgmma's atom is 4 warps along M (16 rows each); double along M while
    the tile has rows for it, then along N."""
    wm, wn = 4, 1
    while wm * wn < num_warps:
        if block_m > 16 * wm:
            wm *= 2
        else:
            wn *= 2
    return wm, wn


def _instr_n(block_m: int, block_n: int, num_warps: int) -> int:
    """The N of the m16 x N x k32 IGMMA instruction: the columns one warp column owns, at most 128
    (int8 wgmma takes multiples of 16 up to 224; the tiles are powers of two)."""
    _, wn = _warps(block_m, num_warps)
    return min(128, max(16, block_n // wn))


# MODE 1's group sizes: one K step (BLOCK_K) per group; two steps per group spill (60-96 B at
# 128x128x64, g128, sm_90a)
GLUON_GROUP_SIZES = (32, 64, 128)


def check_gluon_config(config: dict, per_group: bool = False) -> str | None:
    """Why ``config`` cannot run the Gluon kernel (None if it can): at least 4 warps (a
    warpgroup), BLOCK_M >= 64 rows per 4 warps, BLOCK_K a multiple of 32 (the IGMMA's k),
    2+ stages (one group in flight while the next tile lands). ``per_group`` (MODE 1): at most
    BLOCK_M x BLOCK_N = 2048 x num_warps, 64 accumulator elements a thread (its two int32
    partial sums beside the fp32 accumulator: 192 registers; larger tiles spill)."""
    bm, bn, bk, w = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"], config["num_warps"]
    wm, wn = _warps(bm, w) if w >= 4 else (0, 0)
    if w < 4 or w & (w - 1) or bm < 16 * wm or bn // wn < 16:
        return f"BLOCK_M={bm} x BLOCK_N={bn} over {w} warps: no wgmma warpgroup layout"
    if bk < 32 or bk % 32:
        return f"BLOCK_K={bk}: the int8 wgmma steps K by 32"
    if config["num_stages"] < 2:
        return "num_stages < 2: one MMA group stays in flight while the next tile lands"
    if per_group and bm * bn > 2048 * w:
        return (f"BLOCK_M={bm} x BLOCK_N={bn} over {w} warps: per-group weights keep two int32 "
                "partial sums beside the fp32 accumulator, at most 64 elements a thread")  # fmt: skip
    return None


class GluonPlan(NamedTuple):
    """What a Gluon launch decides once per key (:func:`plan_int8_linear_gluon`)."""

    N: int
    K: int
    out_dtype: torch.dtype
    block_m: int
    block_n: int
    block_k: int
    x_layout: object  # NVMMASharedLayout of the [BLOCK_M, BLOCK_K] int8 tile
    w_layout: object  # and of the [BLOCK_N, BLOCK_K] one
    meta: dict  # constexprs and launch options
    group: int = 0  # MODE 1: the weight's group size (its kernel); 0: MODE 0


def plan_int8_linear_gluon(
    K: int,
    N: int,
    out_dtype: torch.dtype,
    *,
    config: dict,
    asymmetric: bool,
    has_bias: bool,
    group_size: int = 0,
) -> GluonPlan:
    """The plan of a Gluon launch (arguments as :func:`.gemm_int8.plan_int8_linear` for
    symmetric weights): MODE 0 (per channel), or with ``group_size`` MODE 1 (per group, a
    multiple of BLOCK_K dividing K). ValueError where Gluon is missing or the config cannot run
    it (:func:`check_gluon_config`)."""
    if not gluon_available():
        raise ValueError(f"int8_linear: no Gluon Hopper API in this Triton ({_GLUON_ERROR})")
    if group_size and (group_size not in GLUON_GROUP_SIZES or config["BLOCK_K"] != group_size
                       or K % group_size):  # fmt: skip
        raise ValueError(f"config: GLUON per group needs groups of {GLUON_GROUP_SIZES} and "
                         f"BLOCK_K = group_size={group_size}, got {config}")  # fmt: skip
    why = check_gluon_config(config, per_group=bool(group_size))
    if why is not None:
        raise ValueError(f"config: {why}, got {config}")
    bm, bn, bk, w = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"], config["num_warps"]
    wm, wn = _warps(bm, w)
    vec = 16 // out_dtype.itemsize  # 16-byte stores
    meta = dict(
        HAS_BIAS=has_bias,
        ASYM=asymmetric,
        DT=dtype_code(out_dtype),
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_K=bk,
        GROUP_M=config["GROUP_M"],
        STAGES=config["num_stages"],
        WARPS_M=wm,
        WARPS_N=wn,
        INSTR_N=_instr_n(bm, bn, w),
        OUT_VEC=min(vec, bn),
        OUT_TPW_N=max(1, min(32, bn // min(vec, bn))),
        num_warps=w,
    )
    if group_size:
        meta["GROUP"] = group_size
    x_layout = gl.NVMMASharedLayout.get_default_for([bm, bk], gl.int8)
    w_layout = gl.NVMMASharedLayout.get_default_for([bn, bk], gl.int8)
    return GluonPlan(N, K, out_dtype, bm, bn, bk, x_layout, w_layout, meta, group_size)


def _descriptor(view: torch.Tensor, strides: tuple, block: list, layout) -> object:
    """A Gluon ``TensorDescriptor`` of ``view`` without its constructor's checks (alignment and
    strides are checked by :func:`.gemm_float.k_major_descriptors_fit`; they cost host time, and
    fake tensors of a compile-only capture have no data pointer)."""
    desc = object.__new__(GluonDescriptor)
    desc.base, desc.shape, desc.strides, desc.block_shape = view, list(view.shape), strides, block
    desc.layout, desc.padding, desc.round_f32_to_tf32 = layout, "zero", False
    return desc


def hopper_gluon_device(device: torch.device) -> bool:
    """Whether ``device`` runs Gluon's Hopper kernels: an NVIDIA GPU of compute capability 9
    (wgmma is sm_90a's; later GPUs run the Triton kernels), compiled Triton (never the
    interpreter: Gluon has none) with Gluon's Hopper API."""
    return (gluon is not None and not INTERPRET and device.type == "cuda"
            and torch.version.hip is None and device_major(device) == 9)  # fmt: skip


def gluon_failed(mode: int) -> bool:
    """Whether a launch of the Gluon kernel of ``mode`` (0: per channel, 1: per group) failed in
    this process (its GLUON configs then run the Triton kernel)."""
    return mode in _FAILED


def gluon_device(device: torch.device, mode: int = 0) -> bool:
    """Whether launches on ``device`` can run the Gluon kernel of ``mode`` (0: per channel, 1:
    per group): :func:`hopper_gluon_device`, and no failed launch of it in this process."""
    return mode not in _FAILED and hopper_gluon_device(device)


def gluon_operands_fit(x_codes: torch.Tensor, w_codes: torch.Tensor) -> bool:
    """Whether int8 x [M, K] and w [N, K] can be the kernel's K-major tensor descriptors (unit
    column strides, 16-byte aligned bases and rows)."""
    sx, sw = x_codes.stride(), w_codes.stride()
    return sx[1] == 1 and sw[1] == 1 and k_major_descriptors_fit(x_codes, sx, w_codes, sw)


def launch_int8_linear_gluon(
    p: GluonPlan,
    x_codes: torch.Tensor,
    x_scale: torch.Tensor,
    x_zero_point: torch.Tensor,
    w_codes: torch.Tensor,
    w_scale: torch.Tensor,
    w_code_sum: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor | None = None,
    fallback: bool = True,
) -> torch.Tensor | None:
    """Run plan ``p``: ``x_fq @ w_fq.T + bias`` [M, N] in the plan's dtype, into ``out`` (a
    contiguous [M, N] tensor) if given (layouts as the module doc; the caller has checked
    :func:`gluon_device`, :func:`gluon_operands_fit` and M, N, K > 0). With ``fallback``, None
    where the kernel cannot be built or launched (once, with a warning; then every time): the
    caller runs the Triton kernel; without, the error is raised."""
    mode = 1 if p.group else 0
    if fallback and mode in _FAILED:
        return None
    M, N, K = x_codes.shape[0], p.N, p.K
    if out is None:
        out = empty((M, N), dtype=p.out_dtype, device=x_codes.device)
    x_desc = _descriptor(x_codes, (x_codes.stride(0), 1), [p.block_m, p.block_k], p.x_layout)
    w_desc = _descriptor(w_codes, (w_codes.stride(0), 1), [p.block_n, p.block_k], p.w_layout)
    if w_code_sum.stride() != w_scale.stride():  # one pair of strides reads both
        w_scale, w_code_sum = w_scale.contiguous(), w_code_sum.contiguous()
    args = (x_desc, w_desc, x_scale.contiguous(), x_zero_point.contiguous(), w_scale, w_code_sum,
            out if bias is None else bias.contiguous(), out, M, N, K, w_scale.stride(0), N)  # fmt: skip
    kernel = _int8_linear_gluon_kernel
    if p.group:  # MODE 1: the scales' group stride too
        kernel, args = _int8_linear_group_gluon_kernel, (*args, w_scale.stride(1))
    grid = (cdiv(M, p.block_m) * cdiv(N, p.block_n),)
    try:
        kernel.run(*args, grid=grid, warmup=False, **p.meta)
    except Exception as e:  # noqa: BLE001 - a compile / launch failure: the Triton kernel runs
        if not fallback:
            raise
        _failed(e, mode)
        return None
    return out


def int8_linear_gluon(
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
) -> torch.Tensor:
    """``x_fq @ w_fq.T + bias`` [M, N] by the Gluon kernel, for symmetric weights per channel
    (w_scale [N, 1]) or in G groups (w_scale / w_code_sum [N, G], MODE 1; layouts as
    :func:`.gemm_int8.int8_linear`; ``config``: BLOCK_M/N/K, GROUP_M, num_warps, num_stages
    fitting :func:`check_gluon_config`). ValueError where the operands or the device
    cannot run it (:func:`gluon_device`, :func:`gluon_operands_fit`).
    :func:`plan_int8_linear_gluon` then :func:`launch_int8_linear_gluon`."""
    K, N, G = x_codes.shape[1], w_codes.shape[0], w_scale.shape[1]
    if not (gluon_device(x_codes.device, int(G > 1)) and gluon_operands_fit(x_codes, w_codes)):
        raise ValueError("int8_linear_gluon: needs compiled Triton on an sm_90 GPU and K-major "
                         "int8 operands with 16-byte aligned rows")  # fmt: skip
    if x_codes.shape[0] == 0 or N == 0 or K == 0:
        raise ValueError("int8_linear_gluon: empty operands (int8_linear handles them)")
    plan = plan_int8_linear_gluon(K, N, out_dtype, config=config, asymmetric=asymmetric,
                                  has_bias=bias is not None, group_size=K // G if G > 1 else 0)  # fmt: skip
    return launch_int8_linear_gluon(plan, x_codes, x_scale, x_zero_point, w_codes, w_scale,
                                    w_code_sum, bias, fallback=False)  # fmt: skip
