"""Quantize kernels: per-token / per-channel / per-group / per-tensor int-b quantization.

One kernel serves activations and weights: a program owns ``BLOCK_R`` rows of a 2-D tensor and walks
its groups (a group is ``group_size`` consecutive elements of a row; per-token and per-channel are one
group of the whole row; a group that fits one ``BLOCK_C`` tile is read from memory once and kept in
registers, longer groups are swept twice; a power-of-two group narrower than the row runs as rows
of groups, ``GROUP_ROWS``: a program walks one row and each tile row is one of its groups). Per
group it computes the qparams in the input dtype (docs/numerics.md: family 1, or torchao's
asymmetric weight formula with ``asym_weight``) or loads given ones (per-tensor, torch.ao family 2),
then writes in one more sweep:

* the int8 codes (ranges above 127, torch.ao's quint8, are stored shifted by -128 together with the
  zero point, so ``code - zero_point`` is unchanged and every code fits int8),
* the clamp mask for the STE backward: 1 bit per element (``PACK_MASK``) or 1 byte per element,
* sums of the codes per group, or per ``sum_group`` columns (the zero-point corrections of the int8
  GEMM: an activation's sums over each weight group),
* optionally the fake-quantized values in the input dtype.

Codes come from the bits of ``x * (1/s) + 1.5 * 2**23`` clamped in float (``_rounding_consts``):
an add, two min/max and an integer subtraction per element, the STE mask is ``r == clamp(r)``, and
NaN / inf rows are handled by per-row constants (per element only where a NaN product can sit in
any row: given qparams, torchao's asymmetric weights, ranges without ``QMIN < 0 <= QMAX``).

Layout: x [R, C] any strides, fp32/fp16/bf16. Outputs are contiguous: codes int8 [R, C],
scale fp32 [R, G], zero_point int32 [R, G], mask uint8 [R, ceil(C/8)] or [R, C], code_sum int32
[R, G] (or [R, C // sum_group]), y [R, C] in x's dtype, with G = C // group_size.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._common import (
    COMPILED,
    NATIVE_BF16_CAST,
    PTX_ASM,
    capability_major,
    cast_to_dt,
    device_major,
    div_scalar,
    dtype_code,
    empty,
    mul_rn,
    rint,
    round_to_dt,
)

# What torch's float -> int32 cast makes of NaN (the zero point of a row whose min is -inf):
# x86 CPUs give INT32_MIN, CUDA's cvt.rzi gives 0 (docs/numerics.md, "device-dependent").
NAN_ZERO_POINT = {"cpu": -(2**31), "cuda": 0}

# The rounding trick (docs/numerics.md, known traps): for |v| < 2**22, v + 1.5 * 2**23 rounds v to
# an integer, half to even, and the bits of the sum are MAGIC_BITS + rne(v). So one fp32 add gives
# the integer code as an int32 (the bits minus a per-row constant) with no float->int conversion.
MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2**23
MAGIC_BITS = tl.constexpr(0x4B400000)  # its bits
# Zero points beyond +-2**21 (only torchao's asymmetric weights and the x86 NaN zero point) would
# push the clamp bounds out of the range where MAGIC + k is exact: their codes are a constant.
BIG_ZP = tl.constexpr(2097152)
# Bits of +inf and of a quiet NaN in the output dtype (fp32, fp16, bf16: DT codes 0, 1, 2).
INF_BITS = tl.constexpr((0x7F800000, 0x7C00, 0x7F80))
NAN_BITS = tl.constexpr((0x7FC00000, 0x7E00, 0x7FC0))


@triton.jit
def _to_f32(b_x, DT: tl.constexpr):
    """The loaded tile as fp32. bf16 is widened at the bit level (its bits are the top half of
    the fp32's): one shift or mask per element, where the generic conversion takes a byte
    permute and a shift for every other element."""
    if DT == 2:
        return (b_x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        return b_x.to(tl.float32)


@triton.jit
def _max_nan(a, b):
    """torch.maximum: NaN wins (max.NaN on the GPU, np.maximum under the interpreter)."""
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _group_view(b_t, SPLIT: tl.constexpr):
    """A tile [SPLIT * BR, E] whose row ``q * BR + g`` holds columns [q E, (q + 1) E) of group g
    as [SPLIT, BR, E] (free: a thread's rows of one group stay in its registers)."""
    if SPLIT == 1:
        return b_t
    else:
        return tl.reshape(b_t, [SPLIT, b_t.shape[0] // SPLIT, b_t.shape[1]])


@triton.jit
def _group_max(b_t, SPLIT: tl.constexpr, KEEP_TYPE: tl.constexpr = False):
    """Per group, the maximum of a tile's elements: axis 1 of a [BR, BC] tile, or of a split tile
    (:func:`_group_view`) over the split axis first (in registers), then the columns. KEEP_TYPE:
    ``tl.reduce``, which keeps 16-bit integers 16-bit (``tl.max`` widens them to int32 first;
    the interpreter's ``tl.reduce`` with a Python combine is slow)."""
    b_g = _group_view(b_t, SPLIT)
    if KEEP_TYPE and SPLIT == 1:
        return tl.reduce(b_g, 1, _max_combine)
    elif KEEP_TYPE:
        return tl.reduce(tl.reduce(b_g, 0, _max_combine), 1, _max_combine)
    elif SPLIT == 1:
        return tl.max(b_g, axis=1)
    else:
        return tl.max(tl.max(b_g, axis=0), axis=1)


@triton.jit
def _tile_rows(v, SPLIT: tl.constexpr):
    """A per-group vector [BR] as the per-row vector [SPLIT * BR] of a split tile (row q BR + g
    takes group g's value; in registers)."""
    if SPLIT == 1:
        return v
    else:
        return tl.reshape(tl.broadcast_to(v[None, :], [SPLIT, v.shape[0]]), [SPLIT * v.shape[0]])


@triton.jit
def _bits_max(b_raw, DT: tl.constexpr, REDUCE16: tl.constexpr, SPLIT: tl.constexpr = 1):
    """Per-row (signed, unsigned) max of the fp32 bits of a tile as loaded (in x's dtype): the
    int32 order of the bits is the float order of the non-negative values (a positive NaN above
    +inf), and the uint32 order puts every negative value above them, the most negative (or a
    negative NaN) last. Two integer max reductions, fast under the interpreter too (np.max), and
    exact where a float max would drop NaN. The 16-bit dtypes order their own bits the same way:
    they are reduced as loaded, before widening (4 elements per 3-input VIMNMX3.S16x2 on sm_90,
    2 per VIMNMX3 on fp32 bits; REDUCE16: compute capability 9+, where those SIMD maxima exist),
    and only the two maxima are widened."""
    if DT == 0:
        b_b = b_raw.to(tl.int32, bitcast=True)
        return _group_max(b_b, SPLIT), _group_max(b_b.to(tl.uint32, bitcast=True), SPLIT)
    else:
        b_h = b_raw.to(tl.int16, bitcast=True)
        keep16: tl.constexpr = COMPILED and REDUCE16  # else the same maxima, widened and cast
        t_s = _group_max(b_h, SPLIT, keep16).to(tl.int16)
        t_u = _group_max(b_h.to(tl.uint16, bitcast=True), SPLIT, keep16).to(tl.uint16)
        return _widen_bits(t_s, b_raw.dtype, DT), _widen_bits(t_u, b_raw.dtype, DT).to(
            tl.uint32, bitcast=True
        )


@triton.jit
def _widen_bits(t_h, dtype: tl.constexpr, DT: tl.constexpr):
    """The fp32 bits (int32) of the 16-bit value whose bits are ``t_h``, sign bit kept for NaN
    too: the GPU's fp16 -> fp32 conversion returns a NaN without its sign (0x7FFFFFFF), which
    would hide a negative NaN that the unsigned maximum found (the row's range comes from that
    sign)."""
    b = _to_f32(t_h.to(dtype, bitcast=True), DT).to(tl.int32, bitcast=True)
    if DT == 1:  # bf16 widens by a shift, which keeps the sign
        b = b | ((t_h.to(tl.int32) & 0x8000) << 16)
    return b


@triton.jit
def _max_combine(a, b):
    return tl.maximum(a, b)


@triton.jit
def _range_from_bits(b_ms, b_mu):
    """Family 1's (min(min(x), 0), max(max(x), 0)) from :func:`_bits_max`'s running maxima
    (started at 0, the bits of +0.0): a NaN in x, positive or negative, comes out in one of
    them, and NaN-propagating qparam math takes it from there, as torch's amin/amax do."""
    b_mx = tl.where(b_ms > 0, b_ms, 0).to(tl.float32, bitcast=True)
    b_mu = b_mu.to(tl.int32, bitcast=True)  # negative: some x has its sign bit set
    b_mn = tl.where(b_mu < 0, b_mu, 0).to(tl.float32, bitcast=True)
    return b_mn, b_mx


@triton.jit
def _rounding_consts(b_s, b_zpi, QMIN: tl.constexpr, QMAX: tl.constexpr,
                     CODE_OFFSET: tl.constexpr, NAN_PER_ROW: tl.constexpr):  # fmt: skip
    """Per-row constants that turn ``r = fp32(x * (1/s)) + MAGIC`` into codes with a float clamp
    and an integer subtraction (see :func:`_round_codes`): the reference's
    ``q = clamp(rne(x * (1/s)) + zp, QMIN, QMAX)`` and ``mask = QMIN <= rne(..) + zp <= QMAX``.

    ``rc = clamp(r, lo, hi)`` holds ``MAGIC + q - z`` and ``code = bits(rc) - kc`` (``kc`` folds
    in MAGIC_BITS, z and the storage offset). Returns (lo, hi, kc, ok, z):
    * finite scale (an ordinary row): z = zp and lo/hi = MAGIC + (QMIN/QMAX - zp); r past them is
      past 2**22 or clipped, so huge and infinite products clamp as the reference's do;
    * non-finite scale (a row holding inf or NaN, or a fp16 range overflow): 1/s is 0 or NaN, so
      r is MAGIC (finite x: the code is clamp(zp), in range iff zp is) or NaN (code 0). z is
      clamp(zp), lo = MAGIC and hi = MAGIC - z, where NaN lands (min(NaN, hi) is hi);
    * a zero point past +-BIG_ZP (finite scale; torchao's asymmetric weights): every code is
      z = clamp(zp) (lo = hi = MAGIC) and no mask bit is set.
    ``ok`` is false where a whole row's mask is 0 although r == rc (zp out of range there).
    Family-1 qparams computed here (NAN_PER_ROW) have an in-range zero point wherever the
    scale is finite, so z is clamp(zp) in every row there.
    """
    b_c = tl.minimum(tl.maximum(b_zpi, QMIN), QMAX)
    fin = tl.abs(b_s) < float("inf")
    if NAN_PER_ROW:
        normal = fin
        b_z = b_c
    else:
        normal = fin & (b_zpi >= -BIG_ZP) & (b_zpi <= BIG_ZP)
        b_z = tl.where(normal, b_zpi, b_c)
    b_zf = b_z.to(tl.float32)
    lo = tl.where(normal, MAGIC + (QMIN - b_zf), MAGIC)
    hi = tl.where(normal, MAGIC + (QMAX - b_zf), tl.where(fin, MAGIC, MAGIC - b_zf))
    kc = (MAGIC_BITS - CODE_OFFSET) - b_z
    ok = normal | (b_zpi == b_c)
    return lo, hi, kc, ok, b_z


@triton.jit
def _round_codes(b_x, b_inv, lo, hi, kc, NAN_PER_ROW: tl.constexpr, CODE_OFFSET: tl.constexpr):
    """(r, rc, code) of a tile: r = fp32(x * (1/s)) + MAGIC (the product rounds first:
    :func:`mul_rn`), rc = r clamped to [lo, hi] (min first: NaN becomes hi),
    code = bits(rc) - kc, the stored int32 code. Without NAN_PER_ROW a NaN product can sit in
    any row: its code is tested here (0, the reference's nan_to_num, stored with the offset)."""
    b_r = mul_rn(b_x, b_inv[:, None]) + MAGIC
    b_rc = tl.maximum(tl.minimum(b_r, hi[:, None]), lo[:, None])
    b_code = b_rc.to(tl.int32, bitcast=True) - kc[:, None]
    if not NAN_PER_ROW:
        b_code = tl.where(b_r == b_r, b_code, CODE_OFFSET)
    return b_r, b_rc, b_code


@triton.jit
def _to_int8(b_code, ASM_PACK4: tl.constexpr):
    """int32 codes (int8's range) as int8: on NVIDIA GPUs two ``cvt.pack.sat.s8.s32.b32`` (I2IP)
    per 4 codes, byte k from code k (the saturation never acts); the plain cast packs with three
    byte permutes (PRMT). ASM_PACK4: a thread holds a multiple of 4 codes (the launcher's test)."""
    if PTX_ASM and ASM_PACK4:
        return tl.inline_asm_elementwise(
            "{ .reg .b32 t; cvt.pack.sat.s8.s32.b32 t, $4, $3, 0; "
            "cvt.pack.sat.s8.s32.b32 $0, $2, $1, t; }",
            "=r,r,r,r,r", [b_code], dtype=tl.int8, is_pure=True, pack=4,
        )  # fmt: skip
    else:
        return b_code.to(tl.int8)


@triton.jit
def _y_consts(b_s, b_z, ok, DT: tl.constexpr, OK_ALWAYS: tl.constexpr):
    """Per-row constants of the fake-quantized value for family-1 rows (NAN_PER_ROW):
    y = dt((rc - ym) * sy) | orm (:func:`_y_bits`), the reference's dt((q - zp) * s).
    A finite-scale row: ym = MAGIC (rc - MAGIC is q - zp), sy = s, orm = 0. A non-finite scale
    makes every y NaN (orm = the bits of NaN) except where the zero point is out of range (the
    x86 NaN zero point INT32_MIN, ok false): there the reference gives +inf for finite x,
    (QMIN - INT32_MIN) * inf, and NaN for NaN products. sy = 1 and ym = MAGIC - F, F a power of
    two above |QMIN| (z = QMIN there): finite x (rc = MAGIC) give F, whose mantissa is 0, NaN
    products (rc = hi = MAGIC - QMIN) give F - QMIN in (F, 2F), whose mantissa is not; with the
    bits of inf OR-ed in (orm) they are +inf and NaN. OK_ALWAYS (the NaN zero point is in range,
    so ok holds in every row: CUDA): a non-finite scale's row is NaN through sy = NaN, no OR."""
    fin = tl.abs(b_s) < float("inf")
    if OK_ALWAYS:  # no +inf row (ok is true in every row): a NaN scale makes the row's y NaN
        return (tl.full(b_s.shape, MAGIC, tl.float32), tl.where(fin, b_s, float("nan")),
                tl.zeros(b_s.shape, tl.int32))  # fmt: skip
    f = tl.where(b_z < -127, 256.0, 128.0)  # F - QMIN <= 384: exact in bf16 and fp16
    ym = tl.where(fin | ok, MAGIC, MAGIC - f)
    sy = tl.where(fin, b_s, 1.0)
    orm = tl.where(fin, 0, tl.where(ok, NAN_BITS[DT], INF_BITS[DT]))
    return ym, sy, orm


@triton.jit
def _y_bits(b_rc, ym, sy, orm, DT: tl.constexpr, MUL16: tl.constexpr = False):
    """y = dt((rc - ym) * sy) | orm, as dt: rc - ym is exact; the rounding to dt is
    round-to-nearest-even on the GPU (the hardware cast) and under the interpreter (bf16 at the
    bit level there, as round_to_bf16, without its NaN test: y is never NaN before orm).

    MUL16 (a 16-bit dt on a GPU whose rows have no orm: OK_ALWAYS, sm_90 for bf16): the product
    in dt itself, two elements per ``mul.rn.{bf16,f16}x2``. k = rc - ym is an integer of at most
    255 in magnitude and sy a dt value (NaN in non-finite rows), both exact in dt, and their
    product has at most 19 significant bits, exact in fp32: so dt(fp32(k * sy)) and the
    correctly rounded dt product are the same bits (measured on sm_90a: a subtraction per
    element and a conversion and a multiply per pair, 2.0 instead of 2.5 per element)."""
    if PTX_ASM and MUL16:
        dt: tl.constexpr = tl.bfloat16 if DT == 2 else tl.float16
        b_k = (b_rc - ym[:, None]).to(dt)
        b_s = tl.broadcast_to(sy.to(dt)[:, None], b_k.shape)
        if DT == 2:
            return tl.inline_asm_elementwise("mul.rn.bf16x2 $0, $1, $2;", "=r,r,r", [b_k, b_s],
                                             dtype=tl.bfloat16, is_pure=True, pack=2)  # fmt: skip
        else:
            return tl.inline_asm_elementwise("mul.rn.f16x2 $0, $1, $2;", "=r,r,r", [b_k, b_s],
                                             dtype=tl.float16, is_pure=True, pack=2)  # fmt: skip
    b_y = (b_rc - ym[:, None]) * sy[:, None]
    if DT == 1:
        b_h = b_y.to(tl.float16).to(tl.int16, bitcast=True) | orm[:, None].to(tl.int16)
        return b_h.to(tl.float16, bitcast=True)
    elif DT == 2 and NATIVE_BF16_CAST:
        b_h = b_y.to(tl.bfloat16).to(tl.int16, bitcast=True) | orm[:, None].to(tl.int16)
        return b_h.to(tl.bfloat16, bitcast=True)
    elif DT == 2:
        b_b = b_y.to(tl.uint32, bitcast=True)
        b_b = (b_b + 0x7FFF + ((b_b >> 16) & 1)) >> 16
        b_h = b_b.to(tl.uint16) | orm[:, None].to(tl.uint16)
        return b_h.to(tl.bfloat16, bitcast=True)
    else:
        b_b = b_y.to(tl.int32, bitcast=True) | orm[:, None]
        return b_b.to(tl.float32, bitcast=True)


# One mask byte from 8 (r, rc) pairs: bit k set where r_k == rc_k (setp.eq: NaN is never equal).
# ptxas makes each step one FSETP and one predicated add (LLVM turns the plain form below into a
# compare, a select and an add tree: 2.7 instead of 2.2 instructions per element).
_PACK_ASM = tl.constexpr(
    "{ .reg .pred p; setp.eq.f32 p, $1, $9; selp.b32 $0, 1, 0, p; "
    + " ".join(
        f"setp.eq.f32 p, ${1 + k}, ${9 + k}; @p or.b32 $0, $0, {1 << k};" for k in range(1, 8)
    )
    + " }"
)


# Four mask bytes from 4 (r, rc) pairs, byte k = (r_k == rc_k): one FSETP and one predicated add
# per element (the plain compare, select and byte packing measured about three).
_KEEP4_ASM = tl.constexpr(
    "{ .reg .pred p; setp.eq.f32 p, $1, $5; selp.b32 $0, 1, 0, p; "
    + " ".join(
        f"setp.eq.f32 p, ${1 + k}, ${5 + k}; @p or.b32 $0, $0, {1 << 8 * k};" for k in (1, 2, 3)
    )
    + " }"
)


@triton.jit
def _keep_bytes(b_r, b_rc, ASM_PACK4: tl.constexpr):
    """The STE mask as 0/1 bytes, r == rc (a NaN r is never equal): inline PTX on NVIDIA GPUs
    (``_KEEP4_ASM``; ASM_PACK4: a thread holds a multiple of 4 elements), the same compare in
    plain Triton elsewhere (the CPU tests run it)."""
    if PTX_ASM and ASM_PACK4:
        return tl.inline_asm_elementwise(
            _KEEP4_ASM, "=r,f,f,f,f,f,f,f,f", [b_r, b_rc], dtype=tl.uint8, is_pure=True, pack=4
        )
    else:
        return tl.where(b_rc == b_r, 1, 0).to(tl.uint8)


@triton.jit
def _split8(b_t, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """[BR, BC] -> the 8 columns of each byte, [BR, BC // 8] each: column 8j + k in the k-th
    (a column index 8j + 4a + 2b + c is split by c, then b, then a)."""
    t = tl.reshape(b_t, [BLOCK_R, BLOCK_C // 8, 2, 2, 2])
    t_c0, t_c1 = tl.split(t)
    t_c0b0, t_c0b1 = tl.split(t_c0)
    t_c1b0, t_c1b1 = tl.split(t_c1)
    t0, t4 = tl.split(t_c0b0)
    t2, t6 = tl.split(t_c0b1)
    t1, t5 = tl.split(t_c1b0)
    t3, t7 = tl.split(t_c1b1)
    return t0, t1, t2, t3, t4, t5, t6, t7


@triton.jit
def _pack_bits(b_r, b_rc, ok, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """The STE mask (r == rc, and the row's ``ok``) as bytes: [BR, BC] -> [BR, BC // 8], column c
    in bit c % 8 of byte c // 8. Inline PTX on NVIDIA GPUs (``_PACK_ASM``), the same compares in
    plain Triton elsewhere (the interpreter runs these, so the CPU tests check the column order)."""
    r0, r1, r2, r3, r4, r5, r6, r7 = _split8(b_r, BLOCK_R, BLOCK_C)
    c0, c1, c2, c3, c4, c5, c6, c7 = _split8(b_rc, BLOCK_R, BLOCK_C)
    if PTX_ASM:
        b_byte = tl.inline_asm_elementwise(
            _PACK_ASM, "=r,f,f,f,f,f,f,f,f,f,f,f,f,f,f,f,f",
            [r0, r1, r2, r3, r4, r5, r6, r7, c0, c1, c2, c3, c4, c5, c6, c7],
            dtype=tl.int32, is_pure=True, pack=1,
        )  # fmt: skip
    else:
        b_byte = tl.where(r0 == c0, 1, 0) | tl.where(r1 == c1, 2, 0)
        b_byte |= tl.where(r2 == c2, 4, 0) | tl.where(r3 == c3, 8, 0)
        b_byte |= tl.where(r4 == c4, 16, 0) | tl.where(r5 == c5, 32, 0)
        b_byte |= tl.where(r6 == c6, 64, 0) | tl.where(r7 == c7, 128, 0)
    return b_byte & tl.where(ok, 0xFF, 0)[:, None]


@triton.jit
def _quantize_rows_kernel(
    x_ptr,
    stride_xr,
    stride_xc,
    codes_ptr,
    scale_ptr,
    zp_ptr,
    mask_ptr,
    sum_ptr,
    y_ptr,
    R,
    C,
    GROUP,
    stride_qr,
    stride_qg,
    QMIN: tl.constexpr,
    QMAX: tl.constexpr,
    CODE_OFFSET: tl.constexpr,
    SYMMETRIC: tl.constexpr,
    ASYM_WEIGHT: tl.constexpr,
    HAS_QPARAMS: tl.constexpr,
    DT: tl.constexpr,
    DIV_BY_RECIP: tl.constexpr,
    NAN_ZP: tl.constexpr,
    PACK_MASK: tl.constexpr,
    PARTIAL_BYTE: tl.constexpr,
    WRITE_CODES: tl.constexpr,
    WRITE_Y: tl.constexpr,
    WRITE_MASK: tl.constexpr,
    WRITE_ZP: tl.constexpr,
    ONE_SWEEP: tl.constexpr,
    GROUP_ROWS: tl.constexpr,
    ONE_GROUP: tl.constexpr,
    ASM_PACK4: tl.constexpr,
    REDUCE16: tl.constexpr,
    FULL_TILE: tl.constexpr,
    SUM_MODE: tl.constexpr,
    SUM_GROUP: tl.constexpr,
    SPLIT: tl.constexpr,
    EPS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # Family-1 qparams computed here from a finite-or-not row: a NaN product (x * (1/s)) can only
    # come from a row whose scale is not finite, so NaN is handled per row (_rounding_consts).
    # Given qparams and torchao's asymmetric weights can meet a NaN product anywhere: they test
    # each element. So do ranges without QMIN < 0 <= QMAX (the per-row NaN handling needs it).
    NAN_PER_ROW: tl.constexpr = (not HAS_QPARAMS) and (not ASYM_WEIGHT) and QMIN < 0 and QMAX >= 0
    # family-1 qparams whose zero point is in range in every row, NaN-made ones too (CUDA casts NaN
    # to 0): no row's mask is cleared and no row's values are +inf (``ok`` holds everywhere)
    OK_ALWAYS: tl.constexpr = NAN_PER_ROW and QMIN <= NAN_ZP and NAN_ZP <= QMAX
    X_BYTES: tl.constexpr = 4 if DT == 0 else 2
    # y's product in dt, two per instruction (_y_bits): 16-bit dt, no row OR-ed (bf16: sm_90)
    MUL16: tl.constexpr = OK_ALWAYS and (DT == 1 or (DT == 2 and REDUCE16))
    pid = tl.program_id(0)
    n_bytes = (C + 7) // 8
    o_c = tl.arange(0, BLOCK_C).to(tl.int64)  # [BC]; col * stride can pass 2**31 (x.T)
    if GROUP_ROWS:
        # rows of groups (the launcher's GROUP_ROWS: a power-of-two group, GROUP == BLOCK_C): the
        # program owns row pid and each tile row is one of its groups, BLOCK_R per step, so a
        # thread holds whole 16-byte vectors of one group and no column of the tile is padding
        # SPLIT > 1 (the launcher's split): a group is SPLIT tile rows of BLOCK_C columns, tile row
        # q * BLOCK_R + j holding columns [q BLOCK_C, (q + 1) BLOCK_C) of the step's group j, so
        # that each thread's rows are one group's (its qparams computed once per thread, reduced
        # in its registers and across the few threads of the group)
        tl.static_assert(ONE_SWEEP and not PACK_MASK and SUM_MODE <= 0)
        tl.static_assert(SPLIT == 1 or (NAN_PER_ROW and SUM_MODE < 0))
        row = pid.to(tl.int64)
        m_r = tl.full([BLOCK_R], True, tl.int1)  # every group of the step exists (BLOCK_R | G)
        m_t = tl.full([SPLIT * BLOCK_R], True, tl.int1)  # and so every tile row
        n_groups = C // (BLOCK_R * BLOCK_C * SPLIT)  # steps
        group_n = BLOCK_C  # a compile-time group length: whole 16-byte vectors, no padding
    else:
        o_r = pid.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BR]
        n_groups = 1 if ONE_GROUP else C // GROUP
        if FULL_TILE:  # the group fills the tile and BLOCK_R divides R: no load or store masks
            m_r = tl.full([BLOCK_R], True, tl.int1)
            group_n = BLOCK_C
        else:
            m_r = o_r < R
            group_n = GROUP
        m_t = m_r  # one tile row per row
    # ONE_SWEEP: the group fits one tile, read from memory once and kept in registers
    GROUP_END = BLOCK_C if ONE_SWEEP else group_n
    for g in range(0, n_groups):
        # [BR] offsets of each tile row's group: in x, in the [R, C] outputs, in the [R, G] qparams
        if GROUP_ROWS:
            o_g = g * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)  # [BR] this step's groups
            o_q = row * stride_qr + o_g * stride_qg
            o_t = tl.arange(0, SPLIT * BLOCK_R).to(tl.int64)  # [SPLIT BR] tile rows
            t_col = (g * BLOCK_R + o_t % BLOCK_R) * (SPLIT * BLOCK_C) + (o_t // BLOCK_R) * BLOCK_C
            x_base = row * stride_xr + t_col * stride_xc
            out_base = row * C + t_col
        else:
            col0 = g * GROUP
            x_base = o_r * stride_xr + col0 * stride_xc
            out_base = o_r * C + col0
            o_q = o_r * stride_qr + g * stride_qg
        if ONE_SWEEP:
            m_c1 = o_c < group_n
            p_x1 = x_ptr + x_base[:, None] + o_c[None, :] * stride_xc
            b_raw1 = tl.load(p_x1, mask=m_t[:, None] & m_c1[None, :], other=0.0)
            b_x1 = _to_f32(b_raw1, DT)
        if HAS_QPARAMS:
            b_s = tl.load(scale_ptr + o_q, mask=m_r, other=1.0)
            # given zero points are stored shifted, like the codes
            b_zpi = tl.load(zp_ptr + o_q, mask=m_r, other=0) - CODE_OFFSET
        else:
            # sweep 1: row-group min and max, NaN-propagating as torch's amin/amax
            if ASYM_WEIGHT:  # torchao's own range (0 not included; padding is +-inf)
                b_mn = tl.full([BLOCK_R], float("inf"), tl.float32)
                b_mx = tl.full([BLOCK_R], float("-inf"), tl.float32)
                b_nan = tl.zeros([BLOCK_R], dtype=tl.int32)
            else:  # family 1 includes 0 in the range: zero padding is harmless
                b_ms = tl.zeros([BLOCK_R], dtype=tl.int32)
                b_mu = tl.zeros([BLOCK_R], dtype=tl.uint32)
            for c0 in range(0, GROUP_END, BLOCK_C):
                m_c = (c0 + o_c) < group_n
                if ONE_SWEEP:
                    b_raw = b_raw1
                else:
                    p_x = x_ptr + x_base[:, None] + (c0 + o_c)[None, :] * stride_xc
                    b_raw = tl.load(p_x, mask=m_r[:, None] & m_c[None, :], other=0.0)
                if ASYM_WEIGHT:
                    b_x = _to_f32(b_raw, DT)
                    m_in = m_r[:, None] & m_c[None, :]
                    b_mn = tl.minimum(b_mn, tl.min(tl.where(m_in, b_x, float("inf")), axis=1))
                    b_mx = tl.maximum(b_mx, tl.max(tl.where(m_in, b_x, float("-inf")), axis=1))
                    # |x| bits above those of inf: NaN (tl.min / tl.max drop it)
                    b_abs = b_x.to(tl.int32, bitcast=True) & 0x7FFFFFFF
                    b_nan = tl.maximum(b_nan, tl.max(b_abs, axis=1))
                else:
                    t_ms, t_mu = _bits_max(b_raw, DT, REDUCE16, SPLIT)
                    b_ms = tl.maximum(b_ms, t_ms)
                    b_mu = tl.maximum(b_mu, t_mu)
            if ASYM_WEIGHT:
                # rows past R: keep their (never stored) qparams finite
                b_mn = tl.where(b_nan > 0x7F800000, float("nan"), tl.where(m_r, b_mn, 0.0))
                b_mx = tl.where(b_nan > 0x7F800000, float("nan"), tl.where(m_r, b_mx, 0.0))
            else:
                b_mn, b_mx = _range_from_bits(b_ms, b_mu)
            # qparams "in dt": round to the input dtype after every op, as torch does
            if SYMMETRIC:
                b_amax = _max_nan(-b_mn, b_mx)
                b_s = round_to_dt(div_scalar(b_amax, (QMAX - QMIN) / 2, DIV_BY_RECIP), DT)
            else:
                b_rng = round_to_dt(b_mx - b_mn, DT)
                b_s = round_to_dt(div_scalar(b_rng, QMAX - QMIN, DIV_BY_RECIP), DT)
            # clamp(s, min=eps) in dt, NaN kept: torchao's weight eps 1e-6 rounds to dt; family
            # 1's (dt's smallest normal) is exact in dt, so the maximum of two dt values is one
            if ASYM_WEIGHT:
                b_s = tl.where(b_s != b_s, b_s, round_to_dt(tl.maximum(b_s, EPS), DT))
            else:
                b_s = _max_nan(b_s, EPS)
            if SYMMETRIC:
                b_zpi = tl.zeros([BLOCK_R], dtype=tl.int32)
            elif ASYM_WEIGHT:
                # torchao's groupwise affine weights: a float-domain zero point mn + s * 2**(b-1)
                # (in dt), cast to int32 by truncation (torch's cast: NaN per device)
                half = tl.full([BLOCK_R], (QMAX - QMIN + 1) // 2, tl.float32)
                b_mid = round_to_dt(mul_rn(b_s, half), DT)  # rounded before the add, as torch
                b_zpf = round_to_dt(b_mn + b_mid, DT)
                b_zpi = tl.where(b_zpf != b_zpf, NAN_ZP, b_zpf.to(tl.int32))
            else:
                b_ratio = round_to_dt(tl.div_rn(b_mn, b_s), DT)
                b_zp = tl.minimum(tl.maximum(QMIN - rint(b_ratio), QMIN), QMAX)
                # mn / s is NaN (min -inf): torch casts the NaN zero point per device
                b_zpi = tl.where(b_ratio != b_ratio, NAN_ZP, b_zp.to(tl.int32))
            tl.store(scale_ptr + o_q, b_s, mask=m_r)
            if WRITE_ZP:
                tl.store(zp_ptr + o_q, b_zpi + CODE_OFFSET, mask=m_r)
        b_inv = tl.div_rn(tl.full([BLOCK_R], 1.0, tl.float32), b_s)  # IEEE 1/s, as torch
        lo, hi, kc, ok, b_z = _rounding_consts(b_s, b_zpi, QMIN, QMAX, CODE_OFFSET, NAN_PER_ROW)
        if OK_ALWAYS:  # the compiler drops the per-row test
            ok = tl.full([BLOCK_R], True, tl.int1)
        if WRITE_Y and NAN_PER_ROW:
            ym, sy, orm = _y_consts(b_s, b_z, ok, DT, OK_ALWAYS)
        if SUM_MODE == 0 or SUM_MODE == 1:
            # the padding columns (x = 0) of a partial tile hold this code: taken out of sums
            b_zero = tl.zeros([BLOCK_R, 1], tl.float32)
            _, _, code0 = _round_codes(b_zero, b_inv, lo, hi, kc, NAN_PER_ROW, CODE_OFFSET)
            code0 = tl.sum(code0, axis=1)
            b_sum = tl.zeros([BLOCK_R], dtype=tl.int32)
        if SPLIT > 1:  # per group -> per tile row (in registers)
            b_inv, lo, hi, kc, ok = (_tile_rows(b_inv, SPLIT), _tile_rows(lo, SPLIT),
                                     _tile_rows(hi, SPLIT), _tile_rows(kc, SPLIT),
                                     _tile_rows(ok, SPLIT))  # fmt: skip
            if WRITE_Y:
                ym, sy, orm = _tile_rows(ym, SPLIT), _tile_rows(sy, SPLIT), _tile_rows(orm, SPLIT)
        # sweep 2: codes, mask, code sums, fake-quantized values
        for c0 in range(0, GROUP_END, BLOCK_C):
            m_c = (c0 + o_c) < group_n
            m_rc = m_t[:, None] & m_c[None, :]
            if ONE_SWEEP:
                b_x = b_x1
            else:
                p_x = x_ptr + x_base[:, None] + (c0 + o_c)[None, :] * stride_xc
                b_x = _to_f32(tl.load(p_x, mask=m_rc, other=0.0), DT)
            b_r, b_rc, b_code = _round_codes(b_x, b_inv, lo, hi, kc, NAN_PER_ROW, CODE_OFFSET)
            if SUM_MODE == 2:  # several sum groups per tile: one store of [BR, BC // SUM_GROUP]
                b_codes = tl.where(m_rc, b_code, 0)
                b_part = tl.sum(tl.reshape(b_codes, [BLOCK_R, BLOCK_C // SUM_GROUP, SUM_GROUP]), 2)
                o_s = (col0 + c0) // SUM_GROUP + tl.arange(0, BLOCK_C // SUM_GROUP)
                m_s = m_r[:, None] & (o_s < (col0 + GROUP) // SUM_GROUP)[None, :]
                tl.store(sum_ptr + o_r[:, None] * (C // SUM_GROUP) + o_s[None, :], b_part, mask=m_s)
            elif SUM_MODE >= 0:
                n_pad = BLOCK_C - tl.minimum(group_n - c0, BLOCK_C)
                b_sum += tl.sum(b_code, axis=1) - n_pad * code0
            if SUM_MODE == 1:  # a sum group spans whole tiles: store at its last tile
                o_s1 = (col0 + c0) // SUM_GROUP
                m_end = ((c0 + BLOCK_C) % SUM_GROUP) == 0
                tl.store(sum_ptr + o_r * (C // SUM_GROUP) + o_s1, b_sum, mask=m_r & m_end)
                b_sum = tl.where(m_end, 0, b_sum)
            o_rc = out_base[:, None] + (c0 + o_c)[None, :]
            if WRITE_CODES:
                # cvt.pack where it measured shorter: computed asymmetric qparams (a per-row kc);
                # symmetric ones fold their constant kc into the plain cast's byte permutes, and
                # with given qparams the plain cast measured shorter too (kernel_static --all)
                pack4: tl.constexpr = ASM_PACK4 and NAN_PER_ROW and not SYMMETRIC
                tl.store(codes_ptr + o_rc, _to_int8(b_code, pack4), mask=m_rc)
            if WRITE_Y:
                if NAN_PER_ROW:
                    b_yd = _y_bits(b_rc, ym, sy, orm, DT, MUL16)
                else:
                    b_q = (b_rc - MAGIC) + b_z.to(tl.float32)[:, None]  # clamped code (exact)
                    # (not b_zpf: a loop-carried [BR] value of the asymmetric-weight qparams)
                    b_zpt = b_zpi.to(tl.float32)[:, None]
                    if ASYM_WEIGHT:  # dt(q) - dt(zp) in dt: the zero point is not bounded
                        b_y = round_to_dt(b_q - round_to_dt(b_zpt, DT), DT) * b_s[:, None]
                    else:
                        b_y = (b_q - b_zpt) * b_s[:, None]
                    b_y = tl.where(b_r == b_r, b_y, float("nan"))  # NaN product: so is y
                    b_yd = cast_to_dt(b_y, DT)
                tl.store(y_ptr + o_rc, b_yd, mask=m_rc)
            if WRITE_MASK and PACK_MASK:
                # one group per row and BLOCK_C % 8 == 0, so bytes never straddle two programs.
                # A byte holding padding columns is past the row's last byte (not stored) unless
                # the row ends inside a byte (PARTIAL_BYTE): only there are padding bits cleared.
                # The test below is always true; the branch starts a new basic block, which keeps
                # LLVM's SLP vectorizer from merging these compares with the ones above into i1
                # vectors (measured: 19.0 -> 15.0 SASS per element at 64 elements per thread).
                o_byte = (c0 // 8) + tl.arange(0, BLOCK_C // 8)
                if c0 // 8 < n_bytes:
                    b_byte = _pack_bits(b_r, b_rc, ok, BLOCK_R, BLOCK_C)
                    if PARTIAL_BYTE:
                        n_tail = tl.minimum(
                            tl.maximum(GROUP - (c0 + 8 * tl.arange(0, BLOCK_C // 8)), 0), 8
                        )
                        b_byte = b_byte & ((1 << n_tail) - 1)[None, :]
                    p_m = mask_ptr + o_r[:, None] * n_bytes + o_byte[None, :]
                    if FULL_TILE:  # the row is the tile: every byte exists (no compares)
                        m_m = m_r[:, None] & (o_byte < BLOCK_C // 8)[None, :]
                    else:
                        m_m = m_r[:, None] & (o_byte < n_bytes)[None, :]
                    tl.store(p_m, b_byte.to(tl.uint8), mask=m_m)
            elif WRITE_MASK and c0 < C:  # always true: a block boundary for the compares, as above
                b_keep = _keep_bytes(b_r, b_rc, ASM_PACK4)
                if not OK_ALWAYS:  # rows whose zero point is out of range keep nothing
                    b_keep = b_keep & tl.where(ok, 1, 0).to(tl.uint8)[:, None]
                o_m = o_rc
                if WRITE_Y:
                    o_m = tl.max_contiguous(o_rc, [1, 16 // X_BYTES])
                tl.store(mask_ptr + o_m, b_keep, mask=m_rc)
        if SUM_MODE == 0:
            tl.store(sum_ptr + o_q, b_sum, mask=m_r)


class Quantized(NamedTuple):
    """What :func:`quantize_rows` returns (see the module docstring for layouts)."""

    codes: torch.Tensor  # int8 [R, C]
    scale: torch.Tensor  # fp32 [R, G]
    zero_point: torch.Tensor  # int32 [R, G], shifted by code_offset like the codes
    mask: torch.Tensor  # uint8 [R, ceil(C/8)] bits (pack_mask) or [R, C] 0/1
    code_sum: torch.Tensor  # int32 [R, G], or [R, C // sum_group]
    y: torch.Tensor | None  # fake-quantized values [R, C] in x.dtype (with_y)


# Quantized(*fields) in one call (a NamedTuple's __new__ is a Python function around this one)
_quantized = tuple.__new__


def code_offset(qmin: int, qmax: int) -> int:
    """Shift applied to stored codes and zero points so that the code range fits int8."""
    return -128 if qmax > 127 else 0


def eps_for(dtype: torch.dtype, asym_weight: bool = False) -> float:
    """The scale's lower bound: family 1 takes the smallest normal of the input dtype, torchao's
    asymmetric weight formula (``get_groupwise_affine_qparams``) 1e-6."""
    return ASYM_WEIGHT_EPS if asym_weight else torch.finfo(dtype).smallest_normal


# torchao's get_groupwise_affine_qparams: eps=None becomes 1e-6
ASYM_WEIGHT_EPS = 1e-6


def sum_layout(group_size: int, sum_group: int, block_c: int) -> tuple[int, int]:
    """(SUM_MODE, BLOCK_C) for code sums over ``sum_group`` columns (a divisor of the qparam
    ``group_size``): 0 one sum per qparam group; 2 several power-of-two sum groups per tile;
    1 a sum group spans whole tiles (BLOCK_C lowered to a power of two dividing it if needed);
    -1 no tile fits (the launcher sums the written codes instead)."""
    if sum_group == group_size:
        return 0, block_c
    if block_c % sum_group == 0 and sum_group & (sum_group - 1) == 0:
        return 2, block_c
    if sum_group % block_c == 0:
        return 1, block_c
    low = sum_group & -sum_group  # the largest power of two dividing it
    if low >= 8:
        return 1, low
    return -1, block_c


def nan_per_row(qmin: int, qmax: int, given_qparams: bool, asym_weight: bool) -> bool:
    """The kernel's NAN_PER_ROW: family-1 qparams it computes for a range holding 0, whose NaN
    products can only sit in non-finite rows (handled per row); the other cases (given qparams,
    torchao's asymmetric weights, ranges without 0) test each element."""
    return not given_qparams and not asym_weight and qmin < 0 <= qmax


def group_split(
    groups: int, group_size: int, num_warps: int, elem_bytes: int, write_codes: bool
) -> int:
    """How many tile rows a group of rows-of-groups mode spans (the kernel's SPLIT): with
    ``groups`` groups of ``group_size`` per step over ``num_warps`` warps, a thread holds
    ``per_thread`` elements in 16-byte vectors, and the tile's default layout spreads each tile
    row over threads first. Split into ``per_thread / vector`` rows, each group lies in the
    registers of ``group_size / per_thread`` threads (one 16-byte vector of each row per
    thread), not of ``group_size / vector`` threads that each repeat its qparams for several
    groups (a thread holding two or more of them holds each whole). 1 where a thread holds a
    whole group or less, or a partial vector. A tile row spans at least 4 threads where int8
    codes are stored, else 2: at 2 (bf16 g128, 64 per thread) the codes' 16-byte stores want
    another layout than the loads, and the 16-bit maxima went through shared memory (11.97
    SASS per element against 8.47 at 4); without codes 2 measured shorter (11.98 against 12.88,
    perf/kernel_static.py)."""
    vec = 16 // elem_bytes
    per_thread = groups * group_size // (32 * num_warps)
    if per_thread < vec or per_thread >= group_size or per_thread % vec:
        return 1
    if group_size % per_thread or (group_size // per_thread) > 32:
        return 1
    return max(1, min(per_thread // vec, group_size // ((4 if write_codes else 2) * vec)))


# ----------------------------------------------------------------------------------------------
# launcher: a plan (everything decided from the key: shapes but the rows, dtype, device, flags,
# config), made once per key by the caller, and a launch (allocations, grid, one kernel call)


class QuantizePlan(NamedTuple):
    """What a quantize launch of rows of ``cols`` columns needs beyond the tensors themselves,
    decided once (:func:`plan_quantize`); :func:`launch_quantize` only allocates and launches."""

    cols: int
    group_size: int
    n_groups: int
    mask_cols: int  # bytes per row of the clamp mask (written: ``write_mask``)
    sum_cols: int  # columns of the kernel's code sums (0: none written)
    sums_like_scale: bool  # the kernel's code sums are laid out as the scales (one per group)
    torch_sum_group: int  # no tile fits the sum groups (of this size): summed after the launch
    offset: int  # code_offset(qmin, qmax)
    has_qparams: bool
    write_codes: bool
    write_mask: bool
    write_zero_point: bool
    group_major: bool
    y_dtype: torch.dtype | None  # with_y: the fake-quantized values' dtype
    block_r: int  # rows per program (GROUP_ROWS: one row per program, block_r groups per step)
    group_rows: bool
    full_if_rows_divide: bool  # FULL_TILE when the row count is a multiple of block_r
    meta: dict  # the kernel's constexprs and launch options, FULL_TILE excepted


def plan_quantize(
    cols: int,
    dtype: torch.dtype,
    device: torch.device,
    qmin: int,
    qmax: int,
    group_size: int,
    symmetric: bool,
    *,
    pack_mask: bool,
    config: dict,
    has_qparams: bool = False,
    with_y: bool = False,
    write_codes: bool = True,
    group_major: bool = False,
    asym_weight: bool = False,
    sum_group: int | None = None,
    write_mask: bool = True,
    write_sums: bool = True,
    write_zero_point: bool = True,
    major: int | None = None,
) -> QuantizePlan:
    """The plan of :func:`quantize_rows` for rows of ``cols`` elements of ``dtype`` on ``device``
    (arguments as there; ``has_qparams``: the launch gets ``scale`` / ``zero_point``; ``major``:
    the GPU's compute capability major, asked of the device when None). Pure: no tensor is read."""
    C = cols
    n_groups = C // group_size
    asym = asym_weight and not symmetric
    sum_group = group_size if sum_group is None else sum_group
    sum_mode, block_c = sum_layout(group_size, sum_group, config["BLOCK_C"])
    write_sums = write_sums and write_codes  # the sums go with the codes
    sums_like_scale = sum_mode in (0, -1)
    sum_cols = (n_groups if sums_like_scale else C // sum_group) if write_sums else 0
    block_r = config["BLOCK_R"]
    # Per-group, a power-of-two group no wider than the tile (the default tiles of int4 groups
    # 8..1024): a program walks one row and each tile row is one of its groups, as many per step
    # as the config's tile holds (a power of two dividing G; not fewer than 16 unless the tile
    # holds fewer). Threads hold whole 16-byte vectors of one group, the reads are contiguous
    # and no column is padding (a group of 8 in a 16-wide tile was half padding, loaded 16 bits
    # at a time).
    per_tile = block_r * block_c // group_size  # groups
    group_rows = (
        4 <= group_size < C
        and group_size & (group_size - 1) == 0
        and group_size <= block_c
        and sum_mode == 0
        and not pack_mask
        and min(per_tile, n_groups & -n_groups) >= min(per_tile, 16)
    )
    if group_rows:
        block_r, block_c = min(per_tile, n_groups & -n_groups), group_size
    per_row = nan_per_row(qmin, qmax, has_qparams, asym)
    split = (
        group_split(block_r, group_size, config["num_warps"], dtype.itemsize, write_codes)
        if group_rows and not write_sums and per_row
        else 1
    )
    major = device_major(device) if major is None else major
    is_cuda = device.type == "cuda"
    meta = dict(
        QMIN=qmin,
        QMAX=qmax,
        CODE_OFFSET=code_offset(qmin, qmax),
        SYMMETRIC=symmetric,
        ASYM_WEIGHT=asym,
        HAS_QPARAMS=has_qparams,
        DT=dtype_code(dtype),
        DIV_BY_RECIP=is_cuda,
        NAN_ZP=NAN_ZERO_POINT["cuda" if is_cuda else "cpu"],
        PACK_MASK=pack_mask,
        PARTIAL_BYTE=pack_mask and C % 8 != 0,
        WRITE_CODES=write_codes,
        WRITE_Y=with_y,
        WRITE_MASK=write_mask,
        WRITE_ZP=write_zero_point,  # computed zero points only: given ones are inputs
        ONE_SWEEP=group_size <= block_c,
        GROUP_ROWS=group_rows,
        ONE_GROUP=n_groups == 1,
        # 4+ codes per thread, and a GPU with cvt.pack (sm_72+)
        ASM_PACK4=block_r * block_c >= 4 * 32 * config["num_warps"] and major >= 8,
        REDUCE16=major >= 9,
        SUM_MODE=max(sum_mode, 0) if write_sums else -1,
        SUM_GROUP=sum_group,
        SPLIT=split,
        EPS=eps_for(dtype, asym),  # a constexpr: a float argument could reach the kernel as fp64
        BLOCK_R=block_r,
        BLOCK_C=block_c // split,
        num_warps=config["num_warps"],
    )
    return QuantizePlan(
        cols=C,
        group_size=group_size,
        n_groups=n_groups,
        mask_cols=((C + 7) // 8 if pack_mask else C) if write_mask else -1,
        sum_cols=sum_cols,
        sums_like_scale=sums_like_scale,
        torch_sum_group=sum_group if write_sums and sum_mode == -1 else 0,
        offset=meta["CODE_OFFSET"],
        has_qparams=has_qparams,
        write_codes=write_codes,
        write_mask=write_mask,
        write_zero_point=write_zero_point,
        group_major=group_major and not has_qparams,
        y_dtype=dtype if with_y else None,
        block_r=block_r,
        group_rows=group_rows,
        full_if_rows_divide=group_rows or group_size == block_c,
        meta=meta,
    )


def _given_qparams(p: QuantizePlan, R: int, scale, zero_point, dev) -> tuple:
    """Given qparams as the kernel reads them: fp32 scales and int32 zero points (shifted by
    the code offset) [R, G], contiguous."""
    as_rows = torch.contiguous_format  # copies: an output never aliases the given qparams
    out_scale = scale.to(torch.float32).expand(R, p.n_groups).clone(memory_format=as_rows)
    zp = zero_point if zero_point is not None else torch.zeros((), dtype=torch.int32, device=dev)
    return out_scale, (zp.to(torch.int32) + p.offset).expand(R, p.n_groups).clone(
        memory_format=as_rows
    )


def launch_quantize(
    p: QuantizePlan,
    x: torch.Tensor,
    scale: torch.Tensor | None = None,
    zero_point: torch.Tensor | None = None,
    kernel=None,
) -> Quantized:
    """Run plan ``p`` (:func:`plan_quantize`) on x [R, cols] (the plan's dtype and device, any
    strides), with the given qparams where the plan has them. ``kernel``: the kernel object to
    launch (default this module's; a traced wrapper of it under ``torch.compile``)."""
    R = x.shape[0]
    C, G, dev = p.cols, p.n_groups, x.device
    codes = empty((R, C) if p.write_codes else (0,), dtype=torch.int8, device=dev)
    if p.has_qparams:
        out_scale, out_zp = _given_qparams(p, R, scale, zero_point, dev)
        q_strides = (G, 1)
    elif p.group_major:  # [G, R] memory seen as [R, G]
        out_scale = empty((G, R), dtype=torch.float32, device=dev).t()
        if p.write_zero_point:
            out_zp = empty((G, R), dtype=torch.int32, device=dev).t()
        else:
            out_zp = empty((R, 0), dtype=torch.int32, device=dev)
        q_strides = (1, R)
    else:
        out_scale = empty((R, G), dtype=torch.float32, device=dev)
        out_zp = empty((R, G if p.write_zero_point else 0), dtype=torch.int32, device=dev)
        q_strides = (G, 1)
    mask = empty((R, p.mask_cols) if p.write_mask else (0,), dtype=torch.uint8, device=dev)
    if p.sums_like_scale and p.group_major:
        code_sum = empty((p.sum_cols, R), dtype=torch.int32, device=dev).t()
    else:
        code_sum = empty((R, p.sum_cols), dtype=torch.int32, device=dev)
    y = empty((R, C), dtype=p.y_dtype, device=dev) if p.y_dtype is not None else None
    if R == 0 or C == 0:
        if p.torch_sum_group:
            code_sum = torch.zeros((R, C // p.torch_sum_group), dtype=torch.int32, device=dev)
        return _quantized(Quantized, (codes, out_scale, out_zp, mask.zero_(), code_sum.zero_(), y))
    block_r = p.block_r
    grid = (R,) if p.group_rows else (-(-R // block_r),)
    sx = x.stride()
    args = (x, sx[0], sx[1], codes if p.write_codes else mask, out_scale, out_zp, mask, code_sum,
            mask if y is None else y, R, C, p.group_size, q_strides[0], q_strides[1])  # fmt: skip
    # a symbolic row count (torch.compile, dynamic shapes) takes the masked tiles: no guard on R
    full = p.full_if_rows_divide and (p.group_rows or (type(R) is int and R % block_r == 0))
    if kernel is None:  # JITFunction.run: what kernel[grid](...) calls, without its two frames
        _quantize_rows_kernel.run(*args, grid=grid, warmup=False, FULL_TILE=full, **p.meta)
    else:
        kernel[grid](*args, FULL_TILE=full, **p.meta)
    if p.torch_sum_group:  # no tile fits the sum groups: sum the codes written
        g = p.torch_sum_group
        code_sum = codes.reshape(R, C // g, g).sum(-1, dtype=torch.int32)
    return _quantized(Quantized, (codes, out_scale, out_zp, mask, code_sum, y))


def quantize_rows(
    x: torch.Tensor,
    qmin: int,
    qmax: int,
    group_size: int,
    symmetric: bool,
    *,
    pack_mask: bool,
    config: dict,
    scale: torch.Tensor | None = None,
    zero_point: torch.Tensor | None = None,
    with_y: bool = False,
    write_codes: bool = True,
    group_major: bool = False,
    asym_weight: bool = False,
    sum_group: int | None = None,
    write_mask: bool = True,
    write_sums: bool = True,
    write_zero_point: bool = True,
) -> Quantized:
    """Quantize the rows of ``x`` [R, C] (fp32/fp16/bf16, any strides) in groups of ``group_size``:
    :func:`plan_quantize` then :func:`launch_quantize` (callers that launch the same key often
    keep the plan).

    Without ``scale`` the qparams are computed per (row, group) with family-1 numerics (in x's
    dtype, eps = smallest normal), or with ``asym_weight`` (and ``symmetric=False``) by torchao's
    asymmetric weight formula (docs/numerics.md). ``sum_group`` (a divisor of ``group_size``;
    default ``group_size``): ``code_sum`` holds the sums of the codes over each ``sum_group``
    columns, [R, C // sum_group] (the activation's sums per weight group). With ``scale`` (fp32)
    and ``zero_point`` (int32), both broadcastable to [R, G], they are used as given (the
    per-tensor and torch.ao paths); the given zero point is the true one (not shifted).
    ``pack_mask`` needs ``group_size == C``. ``config``: ``{"BLOCK_R", "BLOCK_C", "num_warps"}``
    (powers of two, BLOCK_C >= 8). The caller has checked the arguments (``triton_qat.ops``).
    ``write_codes=False`` skips storing the codes and their sums (the backward re-derives only
    the fake-quantized weight and its mask); ``codes`` and ``code_sum`` are then unset.
    ``write_mask=False`` skips the clamp mask (the forward's weight: its backward re-derives the
    mask) and ``write_sums=False`` the code sums (an activation whose GEMM applies no weight zero
    points); ``mask`` / ``code_sum`` are then empty ([0] / [R, 0]). ``write_zero_point=False``
    skips storing computed zero points (symmetric weights, whose zero point is the code offset,
    for a GEMM that reads none); ``zero_point`` is then [R, 0]. Given qparams come back as given.
    """
    plan = plan_quantize(
        x.shape[1], x.dtype, x.device, qmin, qmax, group_size, symmetric, pack_mask=pack_mask,
        config=config, has_qparams=scale is not None, with_y=with_y, write_codes=write_codes,
        group_major=group_major, asym_weight=asym_weight, sum_group=sum_group,
        write_mask=write_mask, write_sums=write_sums, write_zero_point=write_zero_point,
        major=capability_major(x),
    )  # fmt: skip
    return launch_quantize(plan, x, scale, zero_point)
