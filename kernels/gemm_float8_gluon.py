"""Float8 forward GEMM in Gluon for Hopper (sm_90): the fp32 promotion with an MMA group in flight.

    out[m, n] = (sum_k q_x[m, k] q_w[n, k]) * s_x[m] * s_w[n] + bias[n]

The product, the promotion and the epilogue of :mod:`.gemm_float8`, operation for operation, in
Triton's Gluon dialect. The Triton kernel promotes each ``BLOCK_K`` step's fp8 partial sum into
the fp32 accumulator (``max_num_imprecise_acc``), which reads the step's wgmma result, so every
step's group is waited for before the next issues. Here the K loop is explicit:

* the e4m3 tiles of x [M, K] and w [N, K] (K-major, as fp8 wgmma reads both) come by TMA into a
  ring of ``STAGES`` buffers, one mbarrier each (as :mod:`.gemm_int8_gluon`);
* step k's ``warpgroup_mma(..., use_acc=False, is_async=True)`` starts a fresh partial sum of its
  ``BLOCK_K`` = 128 products (4 QGMMA of k32, the first with a zero accumulator, as the Triton
  kernel's promotion issues them); ``warpgroup_mma_wait(num_outstanding=1)`` then leaves it in
  flight while step k - 1's finished partial is added into the fp32 accumulator
  (``acc + partial``: the Triton kernel's promotion, one FADD per element, in the same order);
* the epilogue is the Triton kernel's: ``(acc * lo) * hi`` with the smaller scale first,
  ``+ bias`` in fp32, one rounding to the output dtype.

So the output is the Triton kernel's bits (checked on a GPU by ``make gpu-report``'s
``gemm_paths_vs_fp64``-style check ``float8_gluon_equals_triton``; not measured yet). What it
needs (elsewhere a ``GLUON`` config runs the Triton kernel): Gluon's Hopper API, an sm_90 GPU
with compiled Triton (:func:`.gemm_int8_gluon.gluon_device`) and operands that fit tensor
descriptors. Unlike the int8 Gluon kernel it also runs under ``torch.compile``: the float8 op
is an opaque custom op, so its launches are not traced.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import triton

from ._common import cdiv, dtype_code, empty
from .gemm_int8_gluon import (
    _descriptor,
    _grouped_tile,
    _instr_n,
    _load_step,
    _mma_step,
    _scale_tile,
    _store_tile,
    _tma_ring,
    _warps,
    check_gluon_config,
    gluon_available,
    hopper_gluon_device,
)

if gluon_available():
    import triton.experimental.gluon.language as gl
    from triton.experimental import gluon
    from triton.experimental.gluon.language.nvidia.hopper import (
        mbarrier,
        tma,
        warpgroup_mma_wait,
    )

    _tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared

    @gluon.jit
    def _float8_linear_gluon_kernel(
        x_desc, w_desc, sx_ptr, sw_ptr, bias_ptr, out_ptr, M, N, K, stride_om,
        HAS_BIAS: gl.constexpr, DT: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
        BLOCK_K: gl.constexpr, GROUP_M: gl.constexpr, STAGES: gl.constexpr,
        WARPS_M: gl.constexpr, WARPS_N: gl.constexpr, INSTR_N: gl.constexpr,
        OUT_VEC: gl.constexpr, OUT_TPW_N: gl.constexpr,
    ):  # fmt: skip
        """One [BLOCK_M, BLOCK_N] tile of out per program (grouped ordering, as ``swizzle``);
        x_desc / w_desc: e4m3 [M, K] / [N, K] descriptors with [BLOCK_M, BLOCK_K] /
        [BLOCK_N, BLOCK_K] tiles; WARPS_M x WARPS_N warps share the accumulator (m16 x INSTR_N
        x k32 QGMMA instructions)."""
        pid_m, pid_n = _grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
        m0 = pid_m * BLOCK_M
        n0 = pid_n * BLOCK_N
        acc_layout: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[WARPS_M, WARPS_N], instr_shape=[16, INSTR_N, 32]
        )
        a_bufs, b_bufs, bars = _tma_ring(x_desc, w_desc, gl.float8e4nv, STAGES, BLOCK_M,
                                         BLOCK_N, BLOCK_K)  # fmt: skip
        TILE_BYTES: gl.constexpr = (BLOCK_M + BLOCK_N) * BLOCK_K  # e4m3: one byte an element
        n_k = gl.cdiv(K, BLOCK_K)
        for i in gl.static_range(STAGES - 1):
            _load_step(a_bufs, b_bufs, bars, x_desc, w_desc, i, n_k, m0, n0, STAGES, BLOCK_K,
                       TILE_BYTES)  # fmt: skip

        acc = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=acc_layout)  # [BM, BN]
        zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=acc_layout)
        # step 0 starts its partial sum; the slot the prologue left empty takes step STAGES - 1
        part = _mma_step(a_bufs, b_bufs, bars, zero, 0, STAGES, False)
        _load_step(a_bufs, b_bufs, bars, x_desc, w_desc, STAGES - 1, n_k, m0, n0, STAGES, BLOCK_K,
                TILE_BYTES)  # fmt: skip
        # then two partial sums in turn (part: even steps, part_b: odd ones), so that no
        # register copy reads a group in flight (ptxas serializes every wgmma where one does,
        # C7514); after each wait step k - 1's sum is promoted and its slot refilled
        for ki in range(1, n_k - 1, 2):
            part_b = _mma_step(a_bufs, b_bufs, bars, zero, ki, STAGES, False)
            done = warpgroup_mma_wait(num_outstanding=1, deps=(part,))
            acc = acc + done
            _load_step(a_bufs, b_bufs, bars, x_desc, w_desc, ki + STAGES - 1, n_k, m0, n0, STAGES,
                    BLOCK_K, TILE_BYTES)  # fmt: skip
            part = _mma_step(a_bufs, b_bufs, bars, zero, ki + 1, STAGES, False)
            done = warpgroup_mma_wait(num_outstanding=1, deps=(part_b,))
            acc = acc + done
            _load_step(a_bufs, b_bufs, bars, x_desc, w_desc, ki + STAGES, n_k, m0, n0, STAGES,
                    BLOCK_K, TILE_BYTES)  # fmt: skip
        if n_k % 2 == 0:  # one step left after the pairs
            part_b = _mma_step(a_bufs, b_bufs, bars, zero, n_k - 1, STAGES, False)
            done = warpgroup_mma_wait(num_outstanding=1, deps=(part,))
            acc = acc + done
            done = warpgroup_mma_wait(num_outstanding=0, deps=(part_b,))
            acc = acc + done
        else:
            done = warpgroup_mma_wait(num_outstanding=0, deps=(part,))
            acc = acc + done
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(bars.index(i))

        # epilogue: _float8_linear_kernel's, operation for operation
        row_layout: gl.constexpr = gl.SliceLayout(1, acc_layout)
        col_layout: gl.constexpr = gl.SliceLayout(0, acc_layout)
        o_mw = (m0 + gl.arange(0, BLOCK_M, layout=row_layout)) % M  # [BM]
        o_nw = (n0 + gl.arange(0, BLOCK_N, layout=col_layout)) % N  # [BN]
        b_sx = gl.load(sx_ptr + o_mw)  # [BM]
        b_sw = gl.load(sw_ptr + o_nw)  # [BN]
        b_out = _scale_tile(acc, b_sx, b_sw)  # [BM, BN]
        if HAS_BIAS:
            b_out += gl.load(bias_ptr + o_nw).to(gl.float32)[None, :]
        _store_tile(b_out, out_ptr, pid_m, pid_n, M, N, stride_om, DT, BLOCK_M, BLOCK_N,
                    WARPS_M * WARPS_N, OUT_VEC, OUT_TPW_N)  # fmt: skip

else:
    _float8_linear_gluon_kernel = None


_FAILED: list[str] = []  # a launch that failed to build or run: the Triton kernel from then on


def float8_gluon_device(device: torch.device) -> bool:
    """Whether float8 launches on ``device`` can run the Gluon kernel (an sm_90 GPU with
    compiled Triton and Gluon's Hopper API, and no failed launch of it in this process)."""
    return not _FAILED and hopper_gluon_device(device)


class Float8GluonPlan(NamedTuple):
    """What a Gluon float8 launch decides once per key."""

    N: int
    K: int
    out_dtype: torch.dtype
    block_m: int
    block_n: int
    block_k: int
    x_layout: object  # NVMMASharedLayout of the [BLOCK_M, BLOCK_K] e4m3 tile
    w_layout: object
    meta: dict


def plan_float8_linear_gluon(
    K: int, N: int, out_dtype: torch.dtype, *, config: dict, has_bias: bool
) -> Float8GluonPlan:
    """The Gluon plan of a float8 launch (``config`` as :func:`.gemm_float8.plan_float8_linear`
    takes it, fitting :func:`.gemm_int8_gluon.check_gluon_config`: ValueError otherwise)."""
    if not gluon_available():
        raise ValueError("float8_linear: no Gluon Hopper API in this Triton")
    why = check_gluon_config(config)
    if why is not None:
        raise ValueError(f"config: {why}, got {config}")
    bm, bn, bk, w = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"], config["num_warps"]
    wm, wn = _warps(bm, w)
    vec = 16 // out_dtype.itemsize
    meta = dict(HAS_BIAS=has_bias, DT=dtype_code(out_dtype), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                GROUP_M=config["GROUP_M"], STAGES=config["num_stages"], WARPS_M=wm, WARPS_N=wn,
                INSTR_N=_instr_n(bm, bn, w), OUT_VEC=min(vec, bn),
                OUT_TPW_N=max(1, min(32, bn // min(vec, bn))), num_warps=w)  # fmt: skip
    x_layout = gl.NVMMASharedLayout.get_default_for([bm, bk], gl.float8e4nv)
    w_layout = gl.NVMMASharedLayout.get_default_for([bn, bk], gl.float8e4nv)
    return Float8GluonPlan(N, K, out_dtype, bm, bn, bk, x_layout, w_layout, meta)


def launch_float8_linear_gluon(
    p: Float8GluonPlan,
    x_codes: torch.Tensor,
    x_scale: torch.Tensor,
    w_codes: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    fallback: bool = True,
) -> torch.Tensor | None:
    """Run plan ``p`` into ``out`` (contiguous [M, N]); x_codes / w_codes K-major e4m3 with
    16-byte aligned rows, M, N, K > 0 (the caller checks). With ``fallback``, None where the
    kernel cannot be built or launched (once, with a warning): the caller runs the Triton
    kernel; without, the error is raised."""
    if fallback and _FAILED:
        return None
    M = x_codes.shape[0]
    x_desc = _descriptor(x_codes, (x_codes.stride(0), 1), [p.block_m, p.block_k], p.x_layout)
    w_desc = _descriptor(w_codes, (w_codes.stride(0), 1), [p.block_n, p.block_k], p.w_layout)
    args = (x_desc, w_desc, x_scale, w_scale, out if bias is None else bias, out, M, p.N, p.K, p.N)
    grid = (cdiv(M, p.block_m) * cdiv(p.N, p.block_n),)
    try:
        _float8_linear_gluon_kernel.run(*args, grid=grid, warmup=False, **p.meta)
    except Exception as e:  # noqa: BLE001 - a compile / launch failure: the Triton kernel runs
        if not fallback:
            raise
        why = f"{type(e).__name__}: {str(e).strip()[:300]}"
        _FAILED.append(why)
        warnings.warn(f"triton_qat: the Gluon float8 forward failed under Triton "
                      f"{triton.__version__} ({why}); GLUON configs run the Triton kernel from now "
                      "on", stacklevel=3)  # fmt: skip
        return None
    return out


def float8_linear_gluon(
    x_codes: torch.Tensor,
    x_scale: torch.Tensor,
    w_codes: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    *,
    config: dict,
) -> torch.Tensor:
    """``(q_x @ q_w.T) * s_x * s_w + bias`` by the Gluon kernel (layouts as
    :func:`.gemm_float8.float8_linear`); ValueError where the device cannot run it."""
    if not float8_gluon_device(x_codes.device):
        raise ValueError("float8_linear_gluon: needs compiled Triton on an sm_90 GPU")
    M, K, N = x_codes.shape[0], x_codes.shape[1], w_codes.shape[0]
    plan = plan_float8_linear_gluon(K, N, out_dtype, config=config, has_bias=bias is not None)
    out = empty((M, N), dtype=out_dtype, device=x_codes.device)
    return launch_float8_linear_gluon(plan, x_codes, x_scale.contiguous(), w_codes,
                                      w_scale.contiguous(), bias, out, fallback=False)  # fmt: skip
