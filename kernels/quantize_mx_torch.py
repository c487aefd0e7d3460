"""Plain-torch twin of kernels/quantize_mx.py (the ``"torch"`` backend): MX and NVFP4 fake
quantization, the same bits as the kernels and as torchao 0.18's ``MXTensor.to_mx(...)
.dequantize()`` / ``NVFP4Tensor.to_nvfp4(...).dequantize()`` (docs/numerics.md "MX and NVFP4").

``x2d`` is a contiguous [R, K] tensor in fp32 / bf16 whose rows are cut into blocks of
``block_size`` (K a multiple of it); the result is [R, K] in x's dtype. The steps are torchao's,
except two computed from bits as the kernels do (the same values): RCEIL's
``ceil(log2(amax / max))`` and the e2m1 rounding. Each fake quantization is two halves:
``*_codes_torch`` (the element values and block scales) and ``*_dequantize_torch`` (the last
multiplication and cast), which ``tq.convert``'s MX / NVFP4 modules run on their stored codes, so
their weight has the fake-quantized weight's bits. Like everything in ``kernels/``, this imports
nothing from ``triton_qat``.
"""

from __future__ import annotations

import torch

from .quantize_mx import ELEM_CODES, ELEM_MAX, ELEM_MAX_POW2, ELEM_MBITS, NVFP4_PER_TENSOR_DIV
from .quantize_torch import unaliased

_F8 = {0: torch.float8_e4m3fn, 1: torch.float8_e5m2}
_THRESHOLDS = (1, 1, 2, 3, 6, 12, 23)  # _log2_threshold by p = 0..6 (p < 0 reads p = 0)
E4M3_TINY = 2.0**-6  # torch.finfo(torch.float8_e4m3fn).tiny, NVFP4's least block scale


def _f32(bits: torch.Tensor) -> torch.Tensor:
    return bits.to(torch.int32).view(torch.float32)


# 2**(e - 127) for e = 0..254 (0: the subnormal 2**-127; Python's float holds each exactly, and
# so does fp32), NaN for 255: e8m0's values, looked up rather than built from bits, so that
# torch.jit.trace can record a converted layer's dequantize (it has no dtype-view op)
_E8M0_VALUES = tuple(2.0 ** (e - 127) for e in range(255)) + (float("nan"),)


def pow2_e8m0(e: torch.Tensor) -> torch.Tensor:
    """2**(e - 127) fp32 for biased exponents e (int32 / uint8) in [0, 255]: 0 -> 2**-127,
    255 -> NaN."""
    table = torch.tensor(_E8M0_VALUES, dtype=torch.float32, device=e.device)
    return table[e.long()]


def rceil_exponent(d: torch.Tensor) -> torch.Tensor:
    """torchao's RCEIL biased exponent (int32) of ``d`` (fp32 >= 0 or NaN): 255 NaN, 254 inf,
    else ``clamp(ceil(log2(d)), -127, 127) + 127`` with a correctly rounded fp32 log2 (see the
    kernel's ``_rceil_exponent``)."""
    bits = d.view(torch.int32)
    ex = (bits >> 23) & 0xFF
    k = torch.where(ex == 0, -127, ex - 127)
    j = torch.where(ex == 0, torch.clamp(bits - 0x400000, min=0) * 2, bits & 0x7FFFFF)
    u = torch.where(k > 0, k, -k - 1)
    p = ((u.to(torch.float32).view(torch.int32) >> 23) & 0xFF) - 127
    thr = torch.tensor(_THRESHOLDS, dtype=torch.int32, device=d.device)[p.clamp(0, 6)]
    e = torch.clamp(k + (j >= thr).to(torch.int32), -127, 127) + 127
    return torch.where(d.isnan(), 255, torch.where(bits == 0x7F800000, 254, e)).to(torch.int32)


def to_e2m1(t: torch.Tensor) -> torch.Tensor:
    """fp32 -> the nearest-even e2m1 value as fp32, saturating at 6 (the kernel's ``_to_e2m1``,
    torchao's ``f32_to_f4_unpacked`` then ``f4_unpacked_to_f32``); a NaN takes the code
    torchao's bit arithmetic makes of its bits (+-1, 1.5 or 2), as the kernel's."""
    bits = t.view(torch.int32)
    sign = bits & -0x80000000
    a = bits & 0x7FFFFFFF
    v = a.view(torch.float32)
    rounded = (a + 0x1FFFFF + ((a >> 22) & 1)) & -0x400000  # int32, wrapping for a NaN
    normal = _f32(rounded)
    sub = (v + 4194304.0) - 4194304.0
    nan = _f32(rounded - 0x40000000)  # torchao's code for a NaN's bits: 1, 1.5 or 2
    r = torch.where(v.isnan(), nan, torch.where(v >= 6.0, 6.0, torch.where(v < 1.0, sub, normal)))
    return _f32(r.view(torch.int32) | sign)


def _round_elem(t: torch.Tensor, elem: int) -> torch.Tensor:
    if elem in _F8:
        return t.to(_F8[elem]).to(torch.float32)  # t is clamped: torch's nearest-even cast
    return to_e2m1(t)


def mx_codes_torch(
    x2d: torch.Tensor, elem: str, block_size: int, scaling_mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The MX codes of ``x2d`` [R, K]: ``elem`` an element format name (``"float8_e4m3fn"``,
    ``"float8_e5m2"``, ``"float4_e2m1fn_x2"``), ``scaling_mode`` ``"floor"`` / ``"ceil"`` /
    ``"even"`` / ``"rceil"``. Returns (q fp32 [R, K / B, B]: the element values, each exactly
    representable in ``elem``, NaN only in blocks whose e is 255; e int32 [R, K / B, 1]: the
    blocks' e8m0 biased exponents in [0, 255])."""
    R, K = x2d.shape
    code = ELEM_CODES[elem]
    maxv = ELEM_MAX[code]
    xb = x2d.reshape(R, K // block_size, block_size).to(torch.float32)
    m = (xb.view(torch.int32) & 0x7FFFFFFF).amax(-1, keepdim=True)  # NaN above inf
    if scaling_mode == "rceil":
        d = m.view(torch.float32) / maxv
        e = rceil_exponent(d)
        r = torch.where(e == 0, 1.0, pow2_e8m0(torch.clamp(254 - e, min=0)))
        r = torch.where(e == 255, d, r)
        t = torch.clamp(xb * r, -maxv, maxv)
    else:
        k = m + (1 << (22 - ELEM_MBITS[code])) if scaling_mode == "even" else m
        p = ((k >> 23) & 0xFF) - 127
        if scaling_mode == "ceil":
            p = p + ((m & 0x7FFFFF) != 0).to(torch.int32)
        e = torch.clamp(p - ELEM_MAX_POW2[code], -127, 128) + 127
        e = torch.where(m > 0x7F800000, 255, e)
        t = xb / _f32(torch.where(e == 0, 0x800000, e << 23))  # divisor at least 2**-126
        if code in _F8:
            t = torch.clamp(t, -maxv, maxv)
    return _round_elem(t, code), e


def mx_dequantize_torch(q: torch.Tensor, e: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``dt(q * 2**(e - 127))``: q fp32 [R, G, B], e int32 [R, G, 1] (:func:`mx_codes_torch`)
    -> [R, G * B] in ``dtype``."""
    R, G, B = q.shape
    return unaliased((q * pow2_e8m0(e)).to(dtype).reshape(R, G * B))


def mx_fake_quantize_torch(
    x2d: torch.Tensor, elem: str, block_size: int, scaling_mode: str
) -> torch.Tensor:
    """MX fake quantization (:func:`mx_codes_torch`, then :func:`mx_dequantize_torch`). Returns
    [R, K] in x's dtype."""
    q, e = mx_codes_torch(x2d, elem, block_size, scaling_mode)
    return mx_dequantize_torch(q, e, x2d.dtype)


def nvfp4_multiplier(s8: torch.Tensor, pts: torch.Tensor | None) -> torch.Tensor:
    """r, what NVFP4 multiplies x by before the e2m1 rounding: ``1 / s8``, or ``(1 / pts) / s8``
    with the per-tensor scale (fp32, torchao's reciprocals in its order)."""
    return 1.0 / s8 if pts is None else (1.0 / pts) / s8


def nvfp4_codes_torch(
    x2d: torch.Tensor, per_tensor: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The NVFP4 codes of ``x2d`` [R, K] (blocks of 16, with the per-tensor scale
    ``amax(|x|) / 2688`` of all of ``x2d`` when ``per_tensor``). Returns (q fp32 [R, K / 16, 16]:
    e2m1 values, never NaN (a NaN ``x * r``, e.g. x = 0 where r overflows to inf, takes
    torchao's code for its bits, :func:`to_e2m1`); s8 fp32
    [R, K / 16, 1]: the e4m3 block scales, NaN possible; pts: fp32 0-dim, or None)."""
    R, K = x2d.shape
    xb = x2d.to(torch.float32).reshape(R, K // 16, 16)
    bs = xb.abs().amax(-1, keepdim=True) / 6.0
    pts = None
    if per_tensor:
        pts = x2d.abs().max().to(torch.float32) / NVFP4_PER_TENSOR_DIV
        bs = bs / pts
    s8 = torch.clamp(bs, E4M3_TINY, 448.0).to(torch.float8_e4m3fn).to(torch.float32)
    q = to_e2m1(torch.clamp(xb * nvfp4_multiplier(s8, pts), -6.0, 6.0))
    return q, s8, pts


def nvfp4_dequantize_torch(
    q: torch.Tensor, s8: torch.Tensor, pts: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    """``dt(q * s8)`` or ``dt(q * (pts * s8))``: q fp32 [R, G, 16], s8 fp32 [R, G, 1], pts fp32
    0-dim or None (:func:`nvfp4_codes_torch`) -> [R, G * 16] in ``dtype``."""
    sd = s8 if pts is None else pts * s8
    R, G, B = q.shape
    return unaliased((q * sd).to(dtype).reshape(R, G * B))


def nvfp4_fake_quantize_torch(x2d: torch.Tensor, per_tensor: bool) -> torch.Tensor:
    """NVFP4 fake quantization (:func:`nvfp4_codes_torch`, then :func:`nvfp4_dequantize_torch`).
    Returns [R, K] in x's dtype."""
    return nvfp4_dequantize_torch(*nvfp4_codes_torch(x2d, per_tensor), x2d.dtype)


# e2m1's magnitudes by code (bits 0-2; bit 3 is the sign), torchao's f4 unpacked layout
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def e2m1_codes(q: torch.Tensor) -> torch.Tensor:
    """e2m1 values (fp32, as :func:`to_e2m1` gives them) -> their 4-bit codes, uint8 in 0..15
    (sign in bit 3, so -0.0 is 8); NaN (which :func:`to_e2m1` never gives) -> 0."""
    table = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=q.device)
    mag = torch.bucketize(q.abs(), table).to(torch.uint8)  # exact values: their index
    codes = mag | (torch.signbit(q).to(torch.uint8) << 3)
    return torch.where(q.isnan(), torch.zeros((), dtype=torch.uint8, device=q.device), codes)


def e2m1_values(codes: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`e2m1_codes`: uint8 codes in 0..15 -> fp32 values (8 -> -0.0)."""
    signed = E2M1_VALUES + tuple(-v for v in E2M1_VALUES)
    table = torch.tensor(signed, dtype=torch.float32, device=codes.device)
    return table[codes.long()]
