"""Dequantize int8 codes back to the fake-quantized values, in the input dtype.

    y[r, c] = dt((code[r, c] - zero_point[r, g]) * scale[r, g]),   g = c // group_size

which is bit for bit the ``y`` the quantize kernel writes for the same row (docs/numerics.md:
the difference of two integers is exact, one fp32 product, one rounding to dt). Where codes
lose information the results differ: a row with a non-finite scale comes back all NaN (the
quantize's y is non-finite there too: NaN, or inf for a -inf row on CPU or an fp16 asymmetric
weight group whose range overflows; a GEMM reading either is non-finite in that row or column),
and a NaN element of a row whose qparams were given (per-tensor, torch.ao) has code 0 and comes
back finite, as the int8 GEMM, which reads the same codes, sees it. With
``asym_weight`` it is torchao's asymmetric weight formula, ``dt(dt(q) - dt(zp)) * scale`` (the
zero point is not bounded by the code range, so its rounding to dt matters). A bandwidth-bound
elementwise pass: the backward dequantizes the saved activation codes with it (x_fq for wgrad),
the per-group forward (``DEQUANT`` configs of :mod:`.gemm_int8`) both of its operands.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._common import cast_to_dt, dtype_code, empty, round_to_dt


@triton.jit
def _dequantize_kernel(
    codes_ptr,
    scale_ptr,
    zp_ptr,
    y_ptr,
    R,
    C,
    stride_cr,
    stride_sr,
    stride_sg,
    stride_zr,
    stride_zg,
    GROUP,
    TILE_GROUP: tl.constexpr,
    HAS_ZP: tl.constexpr,
    ASYM_WEIGHT: tl.constexpr,
    CODE_OFFSET: tl.constexpr,
    DT: tl.constexpr,
    OUT_DT: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """y [R, C] (contiguous) from codes [R, C] (row stride given) and qparams [R, C // GROUP].

    TILE_GROUP: 0 where a tile lies in one group, else GROUP as a constexpr, so that the column's
    group is a shift or a multiply: a division by the runtime GROUP cost ~14 instructions per
    element under Triton 3.6 (40 SASS per element in all, perf/kernel_static.py)."""
    o_r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BR]
    c0 = tl.program_id(1).to(tl.int64) * BLOCK_C
    o_c = c0 + tl.arange(0, BLOCK_C)  # [BC]
    m_r = o_r < R
    m_rc = m_r[:, None] & (o_c < C)[None, :]
    if TILE_GROUP == 0:  # the tile lies in one group: one scale per row
        g = c0 // GROUP
        b_s = tl.load(scale_ptr + o_r * stride_sr + g * stride_sg, mask=m_r, other=0.0)[:, None]
        if HAS_ZP:
            b_zp = tl.load(zp_ptr + o_r * stride_zr + g * stride_zg, mask=m_r, other=0)[:, None]
        else:
            b_zp = tl.zeros([BLOCK_R, 1], dtype=tl.int32)
    else:  # several groups per tile: a [BR, BC] gather (cached: GROUP neighbours share it)
        o_g = (o_c // TILE_GROUP)[None, :]
        b_s = tl.load(scale_ptr + o_r[:, None] * stride_sr + o_g * stride_sg, mask=m_rc, other=0.0)
        if HAS_ZP:
            b_zp = tl.load(zp_ptr + o_r[:, None] * stride_zr + o_g * stride_zg, mask=m_rc, other=0)
        else:
            b_zp = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.int32)
    b_code = tl.load(codes_ptr + o_r[:, None] * stride_cr + o_c[None, :], mask=m_rc, other=0)
    b_code = b_code.to(tl.int32)
    if ASYM_WEIGHT:
        b_q = (b_code - CODE_OFFSET).to(tl.float32)
        b_zpf = round_to_dt((b_zp - CODE_OFFSET).to(tl.float32), DT)
        b_y = round_to_dt(b_q - b_zpf, DT) * b_s
    else:
        b_y = (b_code - b_zp).to(tl.float32) * b_s  # code - zp is exact: both carry the offset
    # a non-finite scale makes the quantize kernel's whole row NaN (x * (1/inf) rounds to the
    # zero point, and 0 * inf is NaN); codes alone would give +-inf where they differ from it
    b_y = tl.where((b_s == b_s) & (tl.abs(b_s) < float("inf")), b_y, float("nan"))
    if OUT_DT != DT:  # formed in dt (rounded there), then cast once more, as autocast casts it
        b_y = round_to_dt(b_y, DT)
    tl.store(y_ptr + o_r[:, None] * C + o_c[None, :], cast_to_dt(b_y, OUT_DT), mask=m_rc)


class DequantizePlan(NamedTuple):
    """What a :func:`dequantize_rows` launch decides once per key (:func:`plan_dequantize`)."""

    cols: int
    group: int  # columns per scale group
    out_dtype: torch.dtype
    has_zp: bool
    block_r: int
    block_c: int
    meta: dict  # constexprs and launch options


def plan_dequantize(
    cols: int,
    n_groups: int,
    dtype: torch.dtype,
    *,
    config: dict,
    has_zp: bool = True,
    asym_weight: bool = False,
    code_offset: int = 0,
    out_dtype: torch.dtype | None = None,
) -> DequantizePlan:
    """The plan of :func:`dequantize_rows` for rows of ``cols`` codes in ``n_groups`` groups."""
    out_dtype = out_dtype or dtype
    group = cols // n_groups if n_groups else 1
    block_r, block_c = config["BLOCK_R"], config["BLOCK_C"]
    meta = dict(
        TILE_GROUP=0 if n_groups == 1 or group % block_c == 0 else group,
        HAS_ZP=has_zp,
        ASYM_WEIGHT=asym_weight,
        CODE_OFFSET=code_offset,
        DT=dtype_code(dtype),
        OUT_DT=dtype_code(out_dtype),
        BLOCK_R=block_r,
        BLOCK_C=block_c,
        num_warps=config["num_warps"],
    )
    return DequantizePlan(cols, group, out_dtype, has_zp, block_r, block_c, meta)


def launch_dequantize(
    p: DequantizePlan,
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    kernel=None,
) -> torch.Tensor:
    """Run plan ``p`` (:func:`plan_dequantize`) on codes [R, cols] with scales (and zero points
    where the plan has them) [R] / [R, 1] / [R, G]. ``kernel``: the kernel object to launch
    (default this module's; a traced wrapper under ``torch.compile``)."""
    R, C = codes.shape
    y = empty((R, C), dtype=p.out_dtype, device=codes.device)
    if R == 0 or C == 0:
        return y
    sc = codes.stride()
    if sc[1] != 1:
        codes = codes.contiguous()
        sc = codes.stride()
    if scale.ndim == 1:  # per row, [R]: as [R, 1]
        scale = scale.reshape(R, 1)
    if not p.has_zp:
        zero_point = scale  # unread without HAS_ZP
    elif zero_point.ndim == 1:
        zero_point = zero_point.reshape(R, 1)
    ss, sz = scale.stride(), zero_point.stride()
    grid = (-(-R // p.block_r), -(-C // p.block_c))
    args = (codes, scale, zero_point, y, R, C, sc[0], ss[0], ss[1], sz[0], sz[1], p.group)
    if kernel is None:  # JITFunction.run: what kernel[grid](...) calls, without its two frames
        _dequantize_kernel.run(*args, grid=grid, warmup=False, **p.meta)
    else:
        kernel[grid](*args, **p.meta)
    return y


def dequantize_rows(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    dtype: torch.dtype,
    *,
    config: dict,
    asym_weight: bool = False,
    code_offset: int = 0,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """[R, C] ``dtype((codes - zero_point) * scale)`` of int8 codes [R, C] (unit column stride,
    else copied) with fp32 scales and int32 zero points (stored shifted like the codes; None: 0,
    symmetric weights) per row ([R] or [R, 1]) or per group ([R, G], groups of C // G columns,
    any strides). ``asym_weight``: torchao's asymmetric weight formula (codes and zero points
    shifted by ``code_offset``). ``out_dtype`` (default ``dtype``): the values formed in ``dtype``
    stored cast to it (one pass for ``dequantize(...).to(out_dtype)``). ``config``: BLOCK_R,
    BLOCK_C, num_warps (powers of two). :func:`plan_dequantize` then :func:`launch_dequantize`."""
    n_groups = scale.shape[1] if scale.dim() == 2 else 1
    plan = plan_dequantize(codes.shape[1], n_groups, dtype, config=config,
                           has_zp=zero_point is not None, asym_weight=asym_weight,
                           code_offset=code_offset, out_dtype=out_dtype)  # fmt: skip
    return launch_dequantize(plan, codes, scale, zero_point)
