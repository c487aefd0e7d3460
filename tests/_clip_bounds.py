"""How far past the code range a dynamic quantizer's unclamped codes can reach: every row, by
enumeration (docs/numerics.md "Which configs clip"; tests/test_ste_mask.py runs it).

With qparams computed from the row (or group) itself, the codes of a row's elements lie between
the codes of its minimum and its maximum (``rne(x * inv)`` is monotone in x), so the extremes of
all codes over all rows are the extremes over all (min, max) pairs. And every operation of the
family-1 formulas commutes with scaling by a power of two, as long as nothing overflows, underflows
or meets the ``eps`` floor; so the pairs (-m1 * 2^d, m2) with m1, m2 every mantissa of the dtype
in [1, 2) and d in a range past which one end rounds away, plus the one-sided rows (min 0 or max
0), cover every finite row of normal magnitude; the same pairs scaled to the ``eps`` boundary
cover the rest.

    python tests/_clip_bounds.py          # the table (bf16 / fp16 exhaustive, fp32 sampled)
"""

from __future__ import annotations

import math

import torch

DTYPES = (torch.bfloat16, torch.float16, torch.float32)
BITS = (8, 4, 2)


def mantissas(dtype: torch.dtype, samples: int = 0) -> torch.Tensor:
    """Every value of ``dtype`` in [1, 2) (fp32: ``samples`` random ones and both ends)."""
    if dtype == torch.float32:
        gen = torch.Generator().manual_seed(0)
        bits = torch.randint(0, 1 << 23, (samples,), generator=gen, dtype=torch.int64)
        bits = torch.cat([bits, torch.tensor([0, (1 << 23) - 1])])
        return ((bits | (127 << 23)).to(torch.int32)).view(torch.float32)
    n = {torch.bfloat16: 7, torch.float16: 10}[dtype]
    base = {torch.bfloat16: 127 << 7, torch.float16: 15 << 10}[dtype]
    return (torch.arange(1 << n, dtype=torch.int32) + base).to(torch.int16).view(dtype)


def pairs(dtype: torch.dtype, samples: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(row minimum, row maximum) pairs as described in the module doc, at scale 1 (fp32: each
    mantissa paired with a random other one instead of every one)."""
    m = mantissas(dtype, samples)
    span = {torch.bfloat16: 12, torch.float16: 14, torch.float32: 27}[dtype]
    mn, mx = [], []
    gen = torch.Generator().manual_seed(1)
    for d in range(-span, span + 1):
        if dtype == torch.float32:
            a, b = m.float(), m.float()[torch.randperm(len(m), generator=gen)]
        else:
            a, b = torch.meshgrid(m.float(), m.float(), indexing="ij")
        mn.append((-a * 2.0**d).flatten())
        mx.append(b.flatten())
    zero = torch.zeros_like(m.float())
    mn += [zero, -m.float()]  # one-sided rows: max 0 or min 0
    mx += [m.float(), zero]
    return torch.cat(mn).to(dtype), torch.cat(mx).to(dtype)


def _div_scalar(a: torch.Tensor, c: float, recip: bool) -> torch.Tensor:
    """``a / c`` as torch computes it on a CPU (division) or on CUDA (``recip``: the fp32 product
    with the reciprocal of c, rounded to a's dtype)."""
    if not recip:
        return a / c
    return (a.float() * torch.tensor(1.0 / c, dtype=torch.float32)).to(a.dtype)


def extreme_codes(mn, mx, qmin: int, qmax: int, symmetric: bool, recip: bool):
    """(unclamped code of the row minimum, of the row maximum) under the family-1 formulas
    (docs/numerics.md), in the rows' dtype; eps the dtype's smallest normal."""
    dt = mn.dtype
    eps = torch.finfo(dt).smallest_normal
    zero = torch.zeros((), dtype=dt)
    mn, mx = torch.minimum(mn, zero), torch.maximum(mx, zero)
    if symmetric:
        s = torch.clamp(_div_scalar(torch.maximum(-mn, mx), (qmax - qmin) / 2, recip), min=eps)
        zp = torch.zeros(s.shape, dtype=torch.int32)
    else:
        s = torch.clamp(_div_scalar(mx - mn, float(qmax - qmin), recip), min=eps)
        zp = torch.clamp(qmin - torch.round(mn / s), qmin, qmax).to(torch.int32)
    inv = 1.0 / s.float()
    lo = torch.round(mn.float() * inv) + zp
    hi = torch.round(mx.float() * inv) + zp
    return lo, hi, s


def overshoot(dtype, bits: int, symmetric: bool, recip: bool, samples: int = 200_000) -> dict:
    """Over every row (module doc): the lowest code minus qmin and the highest minus qmax (0: no
    clip at that end), how many rows clip, and the largest distance of a clipped end from the
    code range's edge in units of the scale."""
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    mn, mx = pairs(dtype, samples)
    # scale 1, and scaled so the scale meets the eps floor (R / (qmax - qmin) around eps)
    eps_scale = 2.0 ** (round(math.log2(torch.finfo(dtype).smallest_normal)) + bits)
    lows, highs, rows = [], [], 0
    for k in (1.0, eps_scale, eps_scale / 2, eps_scale * 2):
        a, b = (mn.float() * k).to(dtype), (mx.float() * k).to(dtype)
        finite = torch.isfinite(a - b)
        lo, hi, _ = extreme_codes(a[finite], b[finite], qmin, qmax, symmetric, recip)
        lows.append(lo.min().item() - qmin)
        highs.append(hi.max().item() - qmax)
        rows += int(((lo < qmin) | (hi > qmax)).sum())
    return {"below": min(lows), "above": max(highs), "clipping_rows": rows, "rows": 4 * len(mn)}


def table() -> str:
    out = ["| dtype | bits | qparams | division | lowest code - qmin | highest code - qmax | "
           "rows clipping / rows |", "| --- | ---: | --- | --- | ---: | ---: | ---: |"]  # fmt: skip
    for dtype in DTYPES:
        for bits in BITS:
            for symmetric in (False, True):
                for recip in (False, True):
                    r = overshoot(dtype, bits, symmetric, recip)
                    out.append(f"| {str(dtype)[6:]} | {bits} | {'sym' if symmetric else 'asym'} | "
                               f"{'CUDA (reciprocal)' if recip else 'CPU'} | {r['below']:+.0f} | "
                               f"{r['above']:+.0f} | {r['clipping_rows']} / {r['rows']} |")  # fmt: skip
    return "\n".join(out)


if __name__ == "__main__":
    print(table())
