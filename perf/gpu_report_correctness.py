"""``make gpu-report``'s correctness phase: device checks, each recorded pass / fail / skipped.

Quantize bit-exact against the plain-torch twins and the reference on the same device tensors
(fp32/fp16/bf16; per-token asym/sym, int4, per-tensor, per-channel, per-group 32/128); torch.ao
parity against ``prepare_qat`` + ``torch.ao.nn.qat.dynamic.Linear``; what torch does for ``x / c``
and for NaN -> int32 on CUDA against what the kernels assume; a non-finite token stays in its
row; ``tq.Linear`` outputs and gradients against fp64; every GEMM path a tuned config may pick
(int8 / dequantized forward, TMA / pointer loads, dgrad, wgrad) against fp64;
``torch.library.opcheck`` of the five ops; ``torch.compile(fullgraph=True)`` (and with CUDA
graphs) against eager; one compiled layer's generated code kept (``compiled-layer.py``). Kernel
outputs are poisoned (``TRITON_QAT_POISON=1``) for these checks and only for them. Each check is
a plain function of (device, sizes) returning a detail string or raising; :func:`phase_correctness`
runs them in priority order (the first of every kind first) until the phase's deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from gpu_report_run import COMPILED_CODE, DTYPES, REL_TOL, Run, Sizes, Skipped, poisoned, rel

import triton_qat as tq
from triton_qat.autotune.tune import cuda_index, default_workers
from triton_qat.kernels import _common


def _gen(device, seed: int = 0) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _data(shape, dtype, device, gen, scale=3.0) -> torch.Tensor:
    """Random rows with one wide-range row and one near-constant row (as tests/test_quantize)."""
    x = torch.randn(shape, device=device, generator=gen) * scale
    x[0, : shape[1] // 3] *= 40
    if shape[0] > 2:
        x[2] = x[2] * 1e-3 + 0.5
    return x.to(dtype)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-equal where not NaN (inf apart from the largest finite value, -0.0 from +0.0), NaN
    where NaN (a NaN's sign and payload are the device's)."""
    if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a.isnan(), b.isnan()):
        return False
    keep = ~a.isnan()
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[a.element_size()]
    return torch.equal(a[keep].view(ints), b[keep].view(ints))


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-equal, NaN where NaN."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
    return torch.equal(a, b)


def _assert_same_fields(got, want, what: str) -> None:
    for name, u, v in zip(got._fields, got, want, strict=True):
        if u is None and v is None:
            continue
        if not _same(u, v):
            diff = (u != v).sum().item() if u.shape == v.shape else "shape"
            raise AssertionError(f"{what} {name}: {diff} of {u.numel()} differ "
                                 f"({u.dtype}{tuple(u.shape)} vs {v.dtype}{tuple(v.shape)})")  # fmt: skip


def _rel_err(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> float:
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}")
    if not torch.isfinite(actual).all():
        raise AssertionError(f"{what}: non-finite values (unwritten output?)")
    a, e = actual.double(), expected.double()
    err = ((a - e).abs().max() / e.abs().max().clamp_min(1e-30)).item() if a.numel() else 0.0
    if err > REL_TOL[dtype]:
        raise AssertionError(f"{what}: relative error {err:.3e} > {REL_TOL[dtype]:.1e}")
    return err


QUANT_CASES = {  # name: (bits, granularity, symmetric, group_size)
    "per_token_asym_i8": (8, "per_token", False, None),
    "per_token_sym_i8": (8, "per_token", True, None),
    "per_token_asym_i4": (4, "per_token", False, None),
    "per_tensor_asym_i8": (8, "per_tensor", False, None),
    "per_tensor_sym_i8": (8, "per_tensor", True, None),
    "per_channel_sym_i8": (8, "per_channel", True, None),
    "per_group32_sym_i4": (4, "per_group", True, 32),
    "per_group128_sym_i4": (4, "per_group", True, 128),
}


def check_quantize(case: str, dtype: torch.dtype, device, sizes: Sizes) -> str:
    """torchao family: the kernel's codes, scales, zero points, masks, code sums and values equal
    the plain-torch twin bit for bit on the same tensors, and tq.fake_quantize (values and its
    STE mask) equals the independent reference."""
    from triton_qat.dispatch import quantize_rows
    from triton_qat.kernels.quantize_torch import quantize_rows_torch
    from triton_qat.reference import fake_quantize_with_mask

    bits, gran, sym, group = QUANT_CASES[case]
    cfg = tq.QuantConfig(bits=bits, granularity=gran, symmetric=sym, group_size=group)
    R, C = sizes.quant_shape
    x = _data((R, C), dtype, device, _gen(device), scale=3.0 if gran != "per_channel" else 0.05)
    if gran != "per_tensor":
        g = group or C
        pack = gran == "per_token"
        args = (x, cfg.qmin, cfg.qmax, g, sym)
        got = quantize_rows(*args, pack_mask=pack, with_y=True)
        want = quantize_rows_torch(*args, pack_mask=pack, with_y=True)
        _assert_same_fields(got, want, "kernel vs twin")
    xg = x.clone().requires_grad_()
    y = tq.fake_quantize(xg, cfg)
    y.backward(torch.ones_like(y))
    y_ref, mask_ref = fake_quantize_with_mask(x, cfg)
    if not _same(y.detach(), y_ref):
        raise AssertionError(f"fake_quantize vs reference: {(y != y_ref).sum().item()} differ")
    if not torch.equal(xg.grad != 0, mask_ref):
        raise AssertionError("STE mask vs reference differs")
    return f"{R}x{C} bit-exact (kernel = twin = reference)"


def check_nonfinite_token(bad: float, symmetric: bool, device, sizes: Sizes) -> str:
    """A NaN / inf token changes only its own row, and that row is what the reference says."""
    from triton_qat.dispatch import quantize_rows
    from triton_qat.kernels.quantize_torch import quantize_rows_torch

    C = 24
    x = _data((5, C), torch.float32, device, _gen(device, 1))
    x[3, 7] = bad
    args = (-128, 127, C, symmetric)
    got = quantize_rows(x, *args, pack_mask=True, with_y=True)
    clean = quantize_rows(torch.cat([x[:3], x[4:]]), *args, pack_mask=True, with_y=True)
    keep = [0, 1, 2, 4]
    if not (torch.equal(got.y[keep], clean.y) and torch.equal(got.codes[keep], clean.codes)):
        raise AssertionError("other rows changed")
    want = quantize_rows_torch(x, *args, pack_mask=True, with_y=True)
    if not (_same(got.y, want.y) and torch.isnan(got.y[3]).any()):
        raise AssertionError("the non-finite row differs from the twin (or hides the NaN)")
    if not torch.equal(got.mask, want.mask):
        raise AssertionError("mask differs from the twin")
    lin = tq.Linear(C, 16, device=device)
    xl = torch.randn(6, C, device=device, generator=_gen(device, 2))
    xl[2, 5] = bad
    xl.requires_grad_()
    out = lin(xl)
    rows = [0, 1, 3, 4, 5]
    if not torch.equal(out[rows], lin(xl.detach()[rows])) or torch.isfinite(out[2]).all():
        raise AssertionError("tq.Linear: the bad token leaked into other rows or was hidden")
    out[rows].sum().backward()
    if not torch.isfinite(xl.grad[rows]).all():
        raise AssertionError("tq.Linear: non-finite gradient in clean rows")
    return "row-local in quantize and tq.Linear"


# -NaN by its bits in each dtype (x86's default NaN has its sign bit set)
NEG_NAN_BITS = {torch.float32: (-4194304, torch.int32), torch.float16: (-512, torch.int16),
                torch.bfloat16: (-64, torch.int16)}  # fmt: skip


def check_negative_nan(dtype: torch.dtype, device, sizes: Sizes) -> str:
    """A NaN with its sign bit set among positive values (per token with a bit mask, and in
    groups of 32) makes its row's scale and values NaN, as in the twin: the kernel's 16-bit row
    maxima are widened keeping a NaN's sign, which the GPU's fp16 -> fp32 conversion drops."""
    from triton_qat.dispatch import quantize_rows
    from triton_qat.kernels.quantize_torch import quantize_rows_torch

    x = _data((4, 64), dtype, device, _gen(device, 3)).abs()
    value, int_dtype = NEG_NAN_BITS[dtype]
    x[1, 5] = torch.tensor([value], dtype=int_dtype).view(dtype)[0].to(device)
    for group in (64, 32):
        args = (x, -128, 127, group, False)
        got = quantize_rows(*args, pack_mask=group == 64, with_y=True)
        _assert_same_fields(got, quantize_rows_torch(*args, pack_mask=group == 64, with_y=True),
                            f"group {group}: kernel vs twin")  # fmt: skip
        if not torch.isnan(got.scale[1, 0]):
            raise AssertionError(f"group {group}: the -NaN row got a finite scale")
    return "row scale and values NaN, = twin"


LINEAR_CASES = {  # activation, weight
    "default": (tq.QuantConfig(), tq.QuantConfig(granularity="per_channel", symmetric=True)),
    "sym_act_i4g32": (
        tq.QuantConfig(symmetric=True),
        tq.QuantConfig(bits=4, granularity="per_group", group_size=32, symmetric=True),
    ),
    "per_tensor": (
        tq.QuantConfig(granularity="per_tensor"),
        tq.QuantConfig(granularity="per_tensor", symmetric=True),
    ),
    "i4g128": (
        tq.QuantConfig(),
        tq.QuantConfig(bits=4, granularity="per_group", group_size=128, symmetric=True),
    ),
}


def check_linear_fp64(case: str, dtype, shape, device, sizes: Sizes) -> str:
    """tq.Linear forward and all gradients against F.linear in fp64 over the same fake-quantized
    values with the STE masks (tests/test_linear.py), within REL_TOL."""
    import torch.nn.functional as F

    from triton_qat.reference import fake_quantize_with_mask

    act, wcfg = LINEAR_CASES[case]
    M, K, N = shape
    if wcfg.granularity == "per_group" and K % wcfg.group_size:
        raise Skipped(f"group {wcfg.group_size} does not divide K={K}")
    torch.manual_seed(0)
    lin = tq.Linear(K, N, activation=act, weight=wcfg, device=device, dtype=dtype)
    x = (torch.randn(M, K, device=device, generator=_gen(device, 3)) * 2).to(dtype)
    x.requires_grad_()
    out = lin(x)
    dy = torch.randn(out.shape, device=device, generator=_gen(device, 4)).to(dtype)
    out.backward(dy)
    x_fq, mx = fake_quantize_with_mask(x.detach(), act)
    w_fq, mw = fake_quantize_with_mask(lin.weight.detach(), wcfg)
    xd = x_fq.double().requires_grad_()
    wd = w_fq.double().requires_grad_()
    bd = lin.bias.detach().double().requires_grad_()
    ref = F.linear(xd, wd, bd)
    ref.backward(dy.double())
    if out.dtype != dtype:
        raise AssertionError(f"output dtype {out.dtype} != {dtype}")
    errs = [_rel_err(out, ref, dtype, "out"), _rel_err(x.grad, xd.grad * mx, dtype, "grad_x"),
            _rel_err(lin.weight.grad, wd.grad * mw, dtype, "grad_w"),
            _rel_err(lin.bias.grad, bd.grad, dtype, "grad_bias")]  # fmt: skip
    return f"{M}x{K}->{N} max rel err {max(errs):.2e} (tol {REL_TOL[dtype]:.1e})"


NARROW_PAIRS = ((torch.bfloat16, torch.float32), (torch.float16, torch.float32),
                (torch.bfloat16, torch.float16))  # (weight, input): fewer mantissa bits  # fmt: skip


def check_narrow_weight(device, sizes: Sizes) -> str:
    """A weight narrower than its input (docs/numerics.md "Weights narrower than the input"):
    the forward takes the dequantized path (its per-channel launch and the capped tile compiled
    here), within x's bound of the fp64 product of w_fq rounded in the weight's dtype; grad_x
    likewise. Per channel and int4 per group of 32, each (weight, input) dtype pair."""
    from triton_qat.reference import fake_quantize_with_mask

    M, K, N = sizes.linear_shapes[0]
    if K % 32:
        raise Skipped(f"group 32 does not divide K={K}")
    worst = 0.0
    for w_dtype, x_dtype in NARROW_PAIRS:
        for wcfg in (LINEAR_CASES["default"][1], tq.QuantConfig(bits=4, granularity="per_group",
                                                                group_size=32, symmetric=True)):  # fmt: skip
            torch.manual_seed(0)
            lin = tq.Linear(K, N, weight=wcfg, device=device).to(w_dtype)
            x = torch.randn(M, K, device=device, generator=_gen(device, 5)).to(x_dtype)
            x.requires_grad_()
            out = lin(x)
            dy = torch.randn(out.shape, device=device, generator=_gen(device, 6)).to(x_dtype)
            out.backward(dy)
            x_fq, mx = fake_quantize_with_mask(x.detach(), lin.activation_config)
            w_fq, _ = fake_quantize_with_mask(lin.weight.detach(), wcfg)
            ref = x_fq.double() @ w_fq.double().T + lin.bias.detach().double()
            what = f"{rel(str(w_dtype))} weight, {rel(str(x_dtype))} x"
            worst = max(worst, _rel_err(out, ref, x_dtype, f"{what}: out"),
                        _rel_err(x.grad, (dy.double() @ w_fq.double()) * mx, x_dtype,
                                 f"{what}: grad_x"))  # fmt: skip
    return (
        f"{M}x{K}->{N}: {len(NARROW_PAIRS)} dtype pairs x 2 weight configs, max rel err {worst:.2e}"
    )


def check_ao_parity(name: str, device, sizes: Sizes) -> str:
    """torch.ao family: tq.Linear(qconfig=...) trains like prepare_qat with
    torch.ao.nn.qat.dynamic.Linear: outputs, gradients, observer state bit-identical per step."""
    import copy

    import torch.ao.nn.qat.dynamic as aoqat
    import torch.ao.quantization as q
    from torch import nn

    qconfigs = {
        "dynamic_default": q.default_dynamic_qat_qconfig,
        "per_channel_weight": q.QConfig(activation=q.default_dynamic_qat_qconfig.activation,
                                        weight=q.default_per_channel_weight_fake_quant),
    }  # fmt: skip
    qconfig = qconfigs[name]
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(40, 24)).to(device)
    ref = copy.deepcopy(base)
    ref[0].qconfig = qconfig
    ref = q.prepare_qat(ref, mapping={nn.Linear: aoqat.Linear})
    ours = copy.deepcopy(base)
    ours[0].qconfig = qconfig
    ours[0] = tq.Linear.from_float(ours[0])
    if set(ours.state_dict()) != set(ref.state_dict()):
        raise AssertionError("state_dict keys differ")
    gen = _gen(device, 5)
    for step in range(3):
        x = torch.randn(13, 40, device=device, generator=gen) * (1 + step)
        y_r, y_o = ref(x), ours(x)
        torch.testing.assert_close(y_o, y_r, rtol=2e-5, atol=1e-5)
        y_r.square().sum().backward()
        y_o.square().sum().backward()
        for (n, p_r), p_o in zip(ref.named_parameters(), ours.parameters(), strict=True):
            torch.testing.assert_close(p_o.grad, p_r.grad, rtol=2e-4, atol=1e-5, msg=n)
        mine = ours.state_dict()
        for k, v in ref.state_dict().items():
            if ("fake_quant" in k or "activation_post_process" in k) and not torch.equal(
                mine[k].reshape(v.shape), v
            ):
                raise AssertionError(f"step {step}: observer state {k} differs")
        for m in (ref, ours):
            m.zero_grad()
    return "3 steps: outputs/grads close, observer state bit-identical"


def _gluon_same_bits(x, w, group, dtype, g) -> float:
    """The Gluon int8 forward (kernels/gemm_int8_gluon.py: per channel, ``group`` = K, int8
    weights at the first curated GLUON tile; per group, MODE 1, int4 weights at the first
    per-group tile) against the Triton kernel at the same config (GLUON 0): the same bits for
    both activation kinds, with and without a bias, else AssertionError; returns its error
    against fp64."""
    from triton_qat.autotune.space import CURATED, GLUON_GROUP_TILES, fit_config
    from triton_qat.dispatch import quantize_rows
    from triton_qat.kernels.gemm_int8 import int8_linear
    from triton_qat.kernels.gemm_int8_gluon import hopper_gluon_device, int8_linear_gluon

    M, K = x.shape
    if group == K:
        cfg, lo, hi = next(c for c in CURATED["fwd"] if c.get("GLUON")), -128, 127
    else:
        bm, bn, bk, nw, st = GLUON_GROUP_TILES[0]
        cfg = fit_config("fwd", {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8,
                                 "num_warps": nw, "num_stages": st, "DEQUANT": 0, "TMA": 0,
                                 "GLUON": 1}, K, group)  # fmt: skip
        lo, hi = -8, 7
    qw = quantize_rows(w, lo, hi, group, True, pack_mask=False, with_y=True, group_major=True)
    bias = torch.randn(w.shape[0], device=x.device, generator=g).to(dtype)
    for sym in (False, True):
        qs = quantize_rows(x, -128, 127, K, sym, pack_mask=True, with_y=True)
        args = (qs.codes, qs.scale, qs.zero_point, qw.codes, qw.scale, qw.code_sum)
        for b in (None, bias):
            want = int8_linear(*args, b, dtype, asymmetric=not sym, config={**cfg, "GLUON": 0})
            # on an sm_90 GPU the Gluon kernel itself (int8_linear would fall back to the
            # Triton kernel if it failed to build, and compare it with itself)
            run = int8_linear_gluon if hopper_gluon_device(x.device) else int8_linear
            got = run(*args, b, dtype, asymmetric=not sym, config=cfg)
            if not _same(got, want):
                raise AssertionError(f"Gluon forward (group {group}, sym={sym}, bias="
                                     f"{b is not None}) differs from the Triton kernel's bits")  # fmt: skip
    ref = qs.y.double() @ qw.y.double().T + bias.double()
    return _rel_err(got, ref, dtype, f"fwd gluon g{group}")


def check_gemm_paths(dtype, device, sizes: Sizes) -> str:
    """Every GEMM code path a tuned config may pick, each against fp64 products of the same
    fake-quantized values (tests/test_gemm.py): the forward's int8 path (per channel; int4 group
    32) and its dequantized path, and dgrad / wgrad, each with TMA loads and with pointer loads,
    and (16-bit) as torch.mm + the mask pass. On an sm_90 GPU also the Gluon int8 forward (per
    channel, ``GLUON``; and per group of 32 / 128, MODE 1), which must give the Triton kernel's
    bits at the same tile (with and without a bias, both activation kinds)."""
    from triton_qat import autotune
    from triton_qat.autotune.space import fit_config
    from triton_qat.dispatch import quantize_rows
    from triton_qat.kernels import gemm_backward
    from triton_qat.kernels.gemm_int8 import int8_linear
    from triton_qat.kernels.gemm_int8_gluon import gluon_device
    from triton_qat.kernels.quantize_torch import unpack_bits

    M, K, N = sizes.linear_shapes[-1]
    if K % 32:
        raise Skipped(f"K={K} is not a multiple of the group 32")
    g = _gen(device, 8)
    x = (torch.randn(M, K, device=device, generator=g) * 2).to(dtype)
    w = (torch.randn(N, K, device=device, generator=g) * 0.1).to(dtype)
    dy = torch.randn(M, N, device=device, generator=g).to(dtype)
    qa = quantize_rows(x, -128, 127, K, False, pack_mask=True, with_y=True)
    dq = autotune.dequantize_config(M, K, device, dtype)
    errs = {}
    for group, bits in ((K, 8), (32, 4)):
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        qw = quantize_rows(w, lo, hi, group, True, pack_mask=False, with_y=True, group_major=True)
        ref = qa.y.double() @ qw.y.double().T
        base = autotune.gemm_config("fwd", M, N, K, device, dtype, group)
        for dequant in (0, 1) if group != K else (0,):
            for tma in (0, 1):
                cfg = fit_config("fwd", {**base, "DEQUANT": dequant, "TMA": tma}, K, group)
                out = int8_linear(qa.codes, qa.scale, qa.zero_point, qw.codes, qw.scale,
                                  qw.code_sum, None, dtype, asymmetric=True, config=cfg,
                                  dequant_config=dq)  # fmt: skip
                what = f"fwd g{group} {'dequant' if dequant else 'int8'} tma{tma}"
                errs[what] = _rel_err(out, ref, dtype, what)
    if gluon_device(device) or gluon_device(device, 1):  # the Gluon forward (MODE 0 / 1)
        for group in (K, 32, 64, 128):  # per group: an even count of groups, then an odd one
            for k in (K, 3 * group) if group < K and K % (2 * group) == 0 else (K,):
                if k <= K and k % group == 0 and gluon_device(device, int(group < k)):
                    what = "fwd gluon" + (f" g{group} K{k}" if group < k else "")
                    errs[what] = _gluon_same_bits(x[:, :k], w[:, :k], group, dtype, g)
    qw = quantize_rows(w, -128, 127, K, True, pack_mask=False, with_y=True)
    keep_x = unpack_bits(qa.mask, K).double()
    keep_w = qw.mask.bool()
    # the masked Triton kernels with TMA and with pointer loads, and torch.mm + the mask pass
    # (CUBLAS: the 16-bit default on a GPU), whose masked elements must be exactly +0.0
    for path, over in (("tma0", {"TMA": 0, "CUBLAS": 0}), ("tma1", {"TMA": 1, "CUBLAS": 0}),
                       ("cublas", {"CUBLAS": 1})):  # fmt: skip
        if path == "cublas" and dtype == torch.float32:
            continue  # fp32 keeps the Triton kernel (IEEE dots)
        cd = {**autotune.gemm_config("dgrad", M, N, K, device, dtype), **over}
        cw = {**autotune.gemm_config("wgrad", M, N, K, device, dtype), **over}
        got = gemm_backward.dgrad(dy, qw.y, qa.mask, config=cd)
        errs[f"dgrad {path}"] = _rel_err(got, (dy.double() @ qw.y.double()) * keep_x, dtype,
                                         f"dgrad {path}")  # fmt: skip
        if got[keep_x == 0].ne(0).any() or got[keep_x == 0].signbit().any():
            raise AssertionError(f"dgrad {path}: a masked element is not +0.0")
        got = gemm_backward.wgrad(dy, qa.y, qw.mask, config=cw)
        ref = (dy.double().T @ qa.y.double()) * qw.mask.double()
        errs[f"wgrad {path}"] = _rel_err(got, ref, dtype, f"wgrad {path}")
        if got[~keep_w].ne(0).any() or got[~keep_w].signbit().any():
            raise AssertionError(f"wgrad {path}: a masked element is not +0.0")
    worst = max(errs, key=errs.get)
    return f"{M}x{K}->{N}: {len(errs)} paths, worst {worst} {errs[worst]:.2e} (tol {REL_TOL[dtype]:.1e})"


UNIT = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def check_float8_gemm(dtype, shape, device, sizes: Sizes) -> str:
    """The float8 layer on fp8 tensor cores (triton_qat.float8, docs/numerics.md "Float8"):
    its output against the fp64 product of the fake-quantized values within the element-wise
    bound ``(2u + u^2 + K 2^-24) (|x_fq| @ |w_fq|.T) + u |ref|``, NaN nowhere (finite data), and
    its gradients against the same layer's dequantized path (``F.linear`` on the fake-quantized
    values: the same GEMMs on the same values, so equal up to torch.mm's own rounding)."""
    from triton_qat import float8

    M, K, N = shape
    cfg = tq.Float8Config(hp_value_lb=1e-12)
    lin = tq.Linear(K, N, activation=cfg, weight=tq.Float8Config(), device=device, dtype=dtype)
    x = (torch.randn(M, K, device=device, generator=_gen(device, 5)) * 2).to(dtype)
    if not float8.fp8_gemm_runs(x, cfg):
        raise Skipped("no fp8 tensor cores here (compute capability < 8.9): dequantized path")
    x.requires_grad_()
    out = lin(x)
    dy = torch.randn(out.shape, device=device, generator=_gen(device, 6)).to(dtype)
    gx, gw, gb = torch.autograd.grad(out, [x, lin.weight, lin.bias], dy)
    x_fq = tq.fake_quantize(x.detach(), cfg).double()
    w_fq = tq.fake_quantize(lin.weight.detach(), tq.Float8Config()).double()
    ref = x_fq @ w_fq.T + lin.bias.detach().double()
    u = UNIT[dtype]
    bound = (2 * u + u * u + K * 2.0**-24) * (x_fq.abs() @ w_fq.abs().T) + u * ref.abs()
    err = (out.double() - ref).abs()
    if not torch.isfinite(out).all() or (err > bound + 1e-30).any():
        raise AssertionError(f"fp8 GEMM output: max err / bound {(err / bound).max().item():.3g}")
    real = float8.fp8_gemm_runs
    float8.fp8_gemm_runs = lambda x, activation, w_dtype=None: False
    try:
        ref_grads = torch.autograd.grad(lin(x), [x, lin.weight, lin.bias], dy)
    finally:
        float8.fp8_gemm_runs = real
    errs = [_rel_err(g, r, dtype, what) for g, r, what in
            zip((gx, gw, gb), ref_grads, ("grad_x", "grad_w", "grad_bias"), strict=True)]  # fmt: skip
    worst = (err / bound).max().item()
    gluon = _float8_gluon_same_bits(x.detach(), lin.weight.detach(), lin.bias.detach(), dtype)
    return (f"{M}x{K}->{N} output err/bound max {worst:.2f}; grads vs dequantized path "
            f"{max(errs):.1e}; {gluon}")  # fmt: skip


def _float8_gluon_same_bits(x, w, bias, dtype) -> str:
    """The Gluon fp8 GEMM (a GLUON tuner candidate) against the Triton kernel on the same codes:
    the same bits (kernels/gemm_float8_gluon.py), or why it was not compared."""
    from triton_qat.autotune.space import F8_HOPPER_DEFAULT
    from triton_qat.kernels.gemm_float8 import float8_linear
    from triton_qat.kernels.gemm_float8_gluon import float8_gluon_device
    from triton_qat.kernels.quantize_float8 import (
        e4m3_cvt_device,
        launch_float8_codes,
        plan_float8_quantize,
    )

    if not float8_gluon_device(x.device):
        return "Gluon kernel not compared (not an sm_90 GPU with Gluon's Hopper API)"
    K, cvt = x.shape[1], e4m3_cvt_device(x.device)
    xc, xs = launch_float8_codes(
        plan_float8_quantize(K, dtype, False, 1e-12, None, True, e4m3_cvt=cvt), x
    )
    wc, ws = launch_float8_codes(
        plan_float8_quantize(K, w.dtype, False, None, None, True, e4m3_cvt=cvt), w
    )
    outs = [float8_linear(xc, xs, wc, ws, bias, dtype, config={**F8_HOPPER_DEFAULT, "GLUON": g})
            for g in (0, 1)]  # fmt: skip
    if not _same(*outs):
        raise AssertionError(f"Gluon float8 GEMM: {(outs[0] != outs[1]).sum().item()} outputs "
                             "differ from the Triton kernel's")  # fmt: skip
    return "Gluon kernel: the Triton kernel's bits"


def _float8_rows(dtype, device, gen, shape: tuple[int, int]) -> torch.Tensor:
    """Rows either side of each bound of the float8 quantize's fast division
    (kernels/quantize_float8.py ``_fast_division``; tests/test_float8.py ``_boundary_rows``), then
    ``shape``'s random rows of magnitudes 1e-20 to 1e20."""
    R, K = shape
    x = torch.randn(R + 9, K, device=device, generator=gen)
    x[1, :6] = torch.tensor([0.0, -0.0, -1e-30, 1e-30, -3e-39, 2.0**-20])
    x[2] = x[2] / x[2].abs().max() * 448 * 2.0**-90  # a scale of 2**-90: the smallest fast one
    x[2, 0] = 448 * 2.0**-90
    x[3] = x[3] / x[3].abs().max() * 440 * 2.0**-90  # just below: the IEEE rows
    x[4] = 0
    x[5, 7] = float("-inf")
    x[6] *= 1e30
    x[7] *= torch.finfo(dtype).max / 8
    x[7, 3] = torch.finfo(dtype).max  # fp16: its fake-quantized value overflows
    x[8, 9] = float("nan")
    x[9:] *= torch.logspace(-20, 20, R, device=device)[:, None]
    return x.to(dtype)


def check_float8_kernels(device, sizes: Sizes) -> str:
    """The float8 quantize kernel on the device bit-exact against its plain-torch twin on the
    same device tensors: values, scales, e4m3 codes and GEMM scales, and the backward kernel's
    gradient, every bound kind, per row and per tensor, on rows either side of the fast
    division's bounds. Its fast rows use the
    sm_89+ conversion ``cvt.rn.satfinite.e4m3x2.f32`` and a division by FMA corrections that
    only the GPU runs compiled (the CPU suite runs the same division in the interpreter)."""
    from triton_qat.kernels.quantize_float8 import (
        e4m3_cvt_device,
        float8_quantize,
        launch_float8_codes,
        plan_float8_quantize,
    )
    from triton_qat.kernels.quantize_float8_torch import float8_fake_quantize_torch

    n, cvt = 0, e4m3_cvt_device(device)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        R, K = sizes.quant_shape
        x = _float8_rows(dtype, device, _gen(device, 8), (R if device.type == "cuda" else 3, K))
        bounds_kinds = ((None, None), (None, 1e-10), (1e-12, None), (None, 1.0))
        for bounds in bounds_kinds if device.type == "cuda" else bounds_kinds[:2]:  # dry: 2
            for per_tensor in (False, True):
                for rows in (x, x[[0, 1, 2, 4, 6, 9, 10]]):  # per tensor: an IEEE and a fast one
                    what = f"float8 {rel(str(dtype))} {bounds} per_tensor={per_tensor}"
                    y, s = float8_quantize(rows, per_tensor, *bounds)
                    y_t, s_t = float8_fake_quantize_torch(rows, per_tensor, *bounds)
                    if not (_same_bits(y, y_t) and _same_bits(s, s_t)):
                        raise AssertionError(f"{what}: values differ from the twin's")
                    plan = plan_float8_quantize(rows.shape[1], dtype, per_tensor, *bounds,
                                                rows.is_cuda, e4m3_cvt=cvt)  # fmt: skip
                    codes, gscale = launch_float8_codes(plan, rows)
                    want = torch.clamp(rows.float() / s_t, -448, 448).to(torch.float8_e4m3fn)
                    nan_row = want.float().isnan().any(1) | y_t.isinf().any(1)
                    fin = ~want.float().isnan()  # a NaN's code: 0x7F or 0xFF, either is NaN
                    if not torch.equal(codes.view(torch.uint8)[fin], want.view(torch.uint8)[fin]):
                        raise AssertionError(f"{what}: e4m3 codes differ from torch's cast")
                    expect = torch.where(nan_row, float("nan"), s_t.expand(rows.shape[0], 1)[:, 0])
                    if not _same_bits(gscale, expect):
                        raise AssertionError(f"{what}: GEMM scales differ")
                    n += 2
                    n += _float8_backward_same(rows, plan, s_t, per_tensor, bounds, what)
    return f"{n} launches bit-exact with the twin (hardware e4m3 conversion: {cvt})"


def _float8_backward_same(x, plan, scale, per_tensor: bool, bounds, what: str) -> int:
    """The float8 backward kernel against its twin on the device, for a gradient holding a NaN,
    an inf and a huge element: bit-exact, but in fp32 at the max elements (the scale gradient's
    sums in another order: not compared here; tests/test_float8.py _grad_match holds their
    bound on the CPU). Returns the launches compared (1)."""
    from triton_qat.kernels.quantize_float8 import launch_float8_backward
    from triton_qat.kernels.quantize_float8_torch import float8_fake_quantize_backward_torch

    g = torch.randn(x.shape, device=x.device, generator=_gen(x.device, 9))
    g[0, :3] = torch.tensor([float("nan"), float("inf"), -1e30])
    g = g.to(x.dtype)
    got = launch_float8_backward(plan, g, x, scale)
    want = float8_fake_quantize_backward_torch(g, x, scale, per_tensor, *bounds)
    if x.dtype == torch.float32:
        m = x.abs().amax(dim=(0, 1) if per_tensor else 1, keepdim=True)
        keep = (x.abs() != m) & ~want.isnan()
        got, want = got[keep], want[keep]
    if not _same_bits(got, want):
        raise AssertionError(f"{what}: the backward differs from the twin's")
    return 1


def check_mx_kernels(device, sizes: Sizes) -> str:
    """The MX / NVFP4 kernels on the device bit-exact against their plain-torch twins on the same
    device tensors (blocks with a zero, an inf, subnormals; every element format and scaling
    mode): a GPU that flushed subnormals would differ in blocks of scale 2^-127."""
    from triton_qat.kernels.quantize_mx import mx_quantize, nvfp4_quantize
    from triton_qat.kernels.quantize_mx_torch import (
        mx_fake_quantize_torch,
        nvfp4_fake_quantize_torch,
    )

    n = 0
    for dtype in (torch.float32, torch.bfloat16):
        x = _data((67, 256), dtype, device, _gen(device, 7))
        x[3, :32] = 0
        x[4, 5] = float("inf")
        x[5, :64] *= 1e-38
        for elem in ("float8_e4m3fn", "float8_e5m2", "float4_e2m1fn_x2"):
            for mode in ("floor", "rceil", "ceil", "even"):
                got, want = (
                    mx_quantize(x, elem, 32, mode),
                    mx_fake_quantize_torch(x, elem, 32, mode),
                )
                if not _same(got, want):
                    raise AssertionError(
                        f"mx {elem} {mode} {rel(str(dtype))}: differs from the twin"
                    )
                n += 1
        for per_tensor in (False, True):
            if not _same(nvfp4_quantize(x, per_tensor), nvfp4_fake_quantize_torch(x, per_tensor)):
                raise AssertionError(f"nvfp4 per_tensor={per_tensor} {rel(str(dtype))}: differs")
            n += 1
        # a tensor below ~5e-34 with signed zeros: its multiplier overflows, so x * r is the
        # device's 0 * inf NaN at the zeros, which the kernel codes once per block
        tiny = (x[:4, :64].float() * 1e-36).to(dtype)
        tiny[0, :5], tiny[1, 3:7] = 0.0, -0.0
        if not _same(nvfp4_quantize(tiny, True), nvfp4_fake_quantize_torch(tiny, True)):
            raise AssertionError(f"nvfp4 tiny tensor {rel(str(dtype))}: differs from the twin")
        n += 1
    return f"{n} kernel launches bit-exact with the twins"


def check_division(device, sizes: Sizes) -> str:
    """What CUDA torch computes for ``x / c`` with a Python-float c (the scale's division by
    qmax - qmin), against the kernels' assumption: a multiply by the fp32 reciprocal on CUDA
    (kernels/quantize.py ``DIV_BY_RECIP=x.is_cuda``), a true division on the CPU."""
    if device.type != "cuda":
        raise Skipped("no CUDA")
    import inspect

    from triton_qat.kernels import quantize as kq

    assumed = "DIV_BY_RECIP=x.is_cuda" in inspect.getsource(kq.quantize_rows)
    x32 = torch.randn(1 << 20, device=device, generator=_gen(device, 6)) * 100
    recip_total = true_total = 0
    for dt in DTYPES:
        x = x32.to(dt)
        for c in (255.0, 127.5, 15.0, 7.5):
            got = x / c
            r = torch.ones((), device=device) / torch.full((), c, device=device)  # IEEE 1/c
            by_recip = (x.float() * r).to(dt)
            true_div = (x.float() / torch.full_like(x.float(), c)).to(dt)
            recip_total += int((got != by_recip).sum())
            true_total += int((got != true_div).sum())
    torch_does = (
        "reciprocal" if recip_total == 0 else ("true division" if true_total == 0 else "neither")
    )
    detail = (f"CUDA torch x / c: {torch_does} (differs from reciprocal-multiply in {recip_total}, "
              f"from true division in {true_total} of {3 * 4 << 20}); kernel assumes "
              f"{'reciprocal on CUDA' if assumed else 'unknown (launcher changed)'}")  # fmt: skip
    if not assumed:
        raise AssertionError(detail)
    if torch_does != "reciprocal":
        raise AssertionError(detail)
    if true_total == 0:
        detail += " (not discriminating: both agree on these values)"
    return detail


def check_nan_cast(device, sizes: Sizes) -> str:
    """torch's NaN -> int32 cast on CUDA (the zero point of a row whose min is -inf) against
    ``NAN_ZERO_POINT['cuda']`` in kernels/quantize.py, and the kernel's zero point of such a row."""
    if device.type != "cuda":
        raise Skipped("no CUDA")
    from triton_qat.dispatch import quantize_rows
    from triton_qat.kernels.quantize import NAN_ZERO_POINT

    torch_cast = torch.tensor([float("nan")], device=device).to(torch.int32).item()
    assumed = NAN_ZERO_POINT["cuda"]
    x = torch.tensor([[-float("inf"), 1.0, -3.0, 0.5]], device=device)
    kernel_zp = quantize_rows(x, -128, 127, 4, False, pack_mask=True, with_y=True).zero_point.item()
    detail = f"torch CUDA NaN->int32 = {torch_cast}; NAN_ZERO_POINT['cuda'] = {assumed}; kernel zp of a -inf row = {kernel_zp}"
    if not torch_cast == assumed == kernel_zp:
        raise AssertionError(detail)
    return detail


def check_poison(device, sizes: Sizes) -> str:
    """Kernel outputs are poisoned in this phase, so an element a kernel forgets to write cannot
    pass a comparison (TRITON_QAT_POISON=1 set before triton_qat was imported, as in the tests)."""
    t = _common.new_empty((4, 4), torch.float32, device)
    if not (_common.POISON and torch.isnan(t).all()):
        raise AssertionError(f"outputs not poisoned (POISON={_common.POISON})")
    return "outputs start as NaN / 0x5A"


OPS = ("quantize", "fake_quantize", "int8_linear", "qat_linear", "qat_linear_backward")
GRAD_OPS = {"fake_quantize", "qat_linear"}  # opcheck'd with float inputs requiring grad


def _record_op_calls(device) -> dict[str, tuple]:
    """The first call of each triton_qat op made by the public API (tq.Linear forward/backward,
    tq.fake_quantize, tq.convert + QuantizedLinear), as (args, kwargs): opcheck then runs with
    the arguments the library really passes, whatever the ops' signatures are today."""
    from torch.utils._python_dispatch import TorchDispatchMode

    calls: dict[str, tuple] = {}

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            ns = getattr(func, "namespace", "")
            name = func.__name__.split(".")[0]
            public = ns == "triton_qat" and not name.endswith("_opaque")  # not the CPU twins
            if public and name not in calls:
                keep = lambda a: a.detach().clone() if isinstance(a, torch.Tensor) else a  # noqa: E731
                calls[name] = (torch.utils._pytree.tree_map(keep, args),
                               torch.utils._pytree.tree_map(keep, kwargs))  # fmt: skip
            return func(*args, **kwargs)

    gen = _gen(device, 7)
    lin = tq.Linear(40, 24, device=device)
    x = torch.randn(2, 7, 40, device=device, generator=gen, requires_grad=True)
    with Recorder():
        lin(x).sum().backward()
        xf = torch.randn(13, 40, device=device, generator=gen, requires_grad=True)
        tq.fake_quantize(xf, tq.QuantConfig()).sum().backward()
        lin.eval()
        tq.convert(lin)(x.detach())
    return calls


def check_opcheck(op_name: str, calls: dict, device, sizes: Sizes) -> str:
    """torch.library.opcheck (schema, fake tensor, autograd registration, AOT dispatch) of one op,
    with the arguments the public API passed it."""
    if op_name not in calls:
        raise AssertionError(
            f"the public API never called triton_qat::{op_name} (recorded: {sorted(calls)})"
        )
    args, kwargs = calls[op_name]
    if op_name in GRAD_OPS:
        args = tuple(a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point()
                     else a for a in args)  # fmt: skip
    op = getattr(torch.ops.triton_qat, op_name)
    torch.library.opcheck(op, args, kwargs)
    return "opcheck passed"


def check_compile(dtype, device, sizes: Sizes, mode: str | None = None) -> str:
    """torch.compile(fullgraph=True) of a 2-layer tq.Linear MLP: forward bit-equal to eager,
    gradients close, one graph, no graph breaks (tests/test_ops.py). ``mode="reduce-overhead"``:
    the same under CUDA graphs, which must not be skipped on a GPU (no host sync, no CPU tensor
    in the ops)."""
    from torch import nn
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = nn.Sequential(tq.Linear(32, 64, device=device, dtype=dtype), nn.ReLU(),
                          tq.Linear(64, 16, device=device, dtype=dtype))  # fmt: skip
    compiled = torch.compile(model, fullgraph=True, mode=mode)

    def step(m, x):
        out = m(x)
        out.square().mean().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        return out.detach().clone(), grads  # a CUDA graph's output is overwritten by its next run

    gen = _gen(device, 8)
    # CUDA graphs: call 1 warms up, call 2 records and replays, calls 3+ copy new inputs into
    # the graph's buffers and replay (the path a benchmark times)
    for _ in range(2 if mode is None else 4):
        x = torch.randn(5, 9, 32, device=device, generator=gen).to(dtype).requires_grad_()
        e_out, e_grads = step(model, x)
        c_out, c_grads = step(compiled, x)
        torch.testing.assert_close(c_out, e_out, rtol=0, atol=0)
        for g, e in zip(c_grads, e_grads, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-5 if dtype == torch.float32 else 1e-2,
                                       atol=1e-6)  # fmt: skip
    graphs = counters["stats"]["unique_graphs"]
    if graphs != 1 or counters["graph_break"]:
        raise AssertionError(
            f"unique_graphs={graphs}, graph breaks {dict(counters['graph_break'])}"
        )
    if mode is None:
        return "fullgraph forward equal, grads close, 1 graph"
    skips = counters["inductor"]["cudagraph_skips"]  # a count; TORCH_LOGS=perf_hints says why
    if device.type == "cuda" and skips:
        raise AssertionError(f"CUDA graphs skipped {skips} time(s) (TORCH_LOGS=perf_hints: why)")
    ran = "CUDA graphs" if device.type == "cuda" else "no CUDA graphs on a CPU"
    return f"{mode}: forward equal, grads close, 1 graph, {ran}"


def check_compiled_launches(device, sizes: Sizes, code_path: Path) -> str:
    """torch.compile(fullgraph=True) of one bf16 tq.Linear forward+backward (default configs):
    on a GPU Inductor's generated code launches triton_qat's kernels itself (the ops are
    ``triton_op``s, decomposed while tracing) and calls no triton_qat op; elsewhere it calls the
    opaque ``*_opaque`` ops. The generated code is written to ``code_path`` (issue 27)."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    (_, K, N) = sizes.linear_shapes[-1]
    layer = tq.Linear(K, N, device=device, dtype=dtype)
    compiled = torch.compile(layer, fullgraph=True)
    x = torch.randn(64, K, device=device, dtype=dtype, requires_grad=True)

    def step():
        compiled(x).float().square().sum().backward()

    _, codes = run_and_get_code(step)
    code = "\n\n# ---- next graph ----\n\n".join(codes)
    code_path.write_text(code)
    calls_ops = "torch.ops.triton_qat" in code
    names = ("_quantize_rows_kernel", "_int8_linear_kernel", "_float_mm_kernel",
             "_dequantize_kernel")  # fmt: skip
    launched = [n for n in names if n in code]
    if device.type == "cuda":
        if calls_ops or len(launched) < len(names):
            raise AssertionError(f"generated code calls triton_qat ops: {calls_ops}; launches "
                                 f"{launched} of {list(names)} (see {code_path.name})")  # fmt: skip
        return f"{len(codes)} graphs launch {', '.join(launched)}; no triton_qat op called"
    if not calls_ops:
        raise AssertionError(f"CPU: the opaque ops are missing (see {code_path.name})")
    return f"{len(codes)} graphs call the opaque ops (CPU); code in {code_path.name}"


def _group_fits(wcfg, K: int) -> bool:
    return wcfg.granularity != "per_group" or K % wcfg.group_size == 0


def correctness_checks(device, sizes: Sizes, folder: Path) -> tuple[list, list]:
    """(parallel, serial) lists of (name, fn). Kernel checks may run in threads on a GPU (their
    first launches compile in parallel); opcheck and torch.compile run one at a time after them.
    Within each list the first check of every kind comes first, so a phase stopped by its time
    limit has still tried each kind once."""
    d = lambda t: rel(str(t)).replace("float", "fp").replace("bfp", "bf")  # noqa: E731
    groups = [
        [("poisoned_outputs", lambda: check_poison(device, sizes))],
        [("nan_to_int32_cast_cuda", lambda: check_nan_cast(device, sizes))],
        [("division_by_python_scalar_cuda", lambda: check_division(device, sizes))],
        [(f"quantize_bitexact[{case},{d(dt)}]", lambda c=case, t=dt: check_quantize(c, t, device, sizes))
         for case in QUANT_CASES for dt in sizes.dtypes],
        [(f"nonfinite_token_row[{b},{'sym' if s else 'asym'}]",
          lambda b=b, s=s: check_nonfinite_token(float(b), s, device, sizes))
         for b in ("nan", "inf", "-inf") for s in (False, True)],
        [(f"negative_nan_row[{d(dt)}]", lambda t=dt: check_negative_nan(t, device, sizes))
         for dt in sizes.dtypes],
        [(f"linear_vs_fp64[{case},{d(dt)},{M}x{K}->{N}]",
          lambda c=case, t=dt, sh=(M, K, N): check_linear_fp64(c, t, sh, device, sizes))
         for (M, K, N) in sizes.linear_shapes for case in LINEAR_CASES for dt in sizes.dtypes
         if _group_fits(LINEAR_CASES[case][1], K)],
        [(f"torch_ao_parity[{n}]", lambda n=n: check_ao_parity(n, device, sizes))
         for n in ("dynamic_default", "per_channel_weight")],
        [(f"gemm_paths_vs_fp64[{d(dt)}]", lambda t=dt: check_gemm_paths(t, device, sizes))
         for dt in sizes.dtypes],
        [(f"float8_fp8_gemm[{d(dt)},{M}x{K}->{N}]",
          lambda t=dt, sh=(M, K, N): check_float8_gemm(t, sh, device, sizes))
         for (M, K, N) in sizes.linear_shapes for dt in sizes.dtypes if dt != torch.float32],
        [("mx_nvfp4_kernels_vs_twins", lambda: check_mx_kernels(device, sizes))],
        [("float8_quantize_kernels_vs_twin", lambda: check_float8_kernels(device, sizes))],
        # last in the first round: a phase cut short by its time limit keeps the older checks
        [("narrow_weight_vs_fp64", lambda: check_narrow_weight(device, sizes))],
    ]  # fmt: skip
    calls: dict = {}

    def opcheck(name):
        if not calls:
            calls.update(_record_op_calls(device))
        return check_opcheck(name, calls, device, sizes)

    serial_groups = [
        [(f"opcheck[{op}]", lambda op=op: opcheck(op)) for op in OPS],
        [(f"compile_fullgraph[{d(dt)}]", lambda t=dt: check_compile(t, device, sizes))
         for dt in ([torch.float32, torch.bfloat16] if device.type == "cuda" else [torch.float32])],
        [("compile_cudagraphs[bf16]",
          lambda: check_compile(torch.bfloat16, device, sizes, mode="reduce-overhead"))],
        [("compiled_code_launches_kernels",
          lambda: check_compiled_launches(device, sizes, folder / COMPILED_CODE))],
    ]  # fmt: skip
    return _breadth_first(groups), _breadth_first(serial_groups)


def _breadth_first(groups: list[list]) -> list:
    out = []
    for i in range(max(len(g) for g in groups)):
        out += [g[i] for g in groups if i < len(g)]
    return out


def run_check(run: Run, name: str, fn: Callable[[], str], deadline: float) -> None:
    if time.monotonic() > deadline:
        run.row(
            phase="correctness", item=name, status="skipped", detail="skipped: phase time limit"
        )
        return
    t0 = time.monotonic()
    try:
        detail, status = fn(), "pass"
    except Skipped as e:
        detail, status = f"skipped: {e}", "skipped"
    except Exception as e:  # noqa: BLE001 - recorded, never aborts the run
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        detail, status = f"{type(e).__name__}: {first[:400]}", "fail"
    secs = time.monotonic() - t0
    run.row(phase="correctness", item=name, status=status, detail=detail, metric="seconds",
            value=secs, backend=tq.backend(run.device))  # fmt: skip
    run.say(f"{status.upper():<7} {name} ({secs:.1f} s): {detail}")


def phase_correctness(run: Run, deadline: float, sizes: Sizes, workers: int | None = None) -> bool:
    """Every check, recorded as it finishes. On a GPU the kernel checks run ``workers`` at a time
    (default: one per core) so their first launches compile in parallel; the interpreter is not
    thread-safe, so elsewhere the default is one at a time."""
    parallel, serial = correctness_checks(run.device, sizes, run.folder)
    if workers is None:
        workers = default_workers() if run.device.type == "cuda" else 1
    with poisoned(True):
        if workers > 1:
            index = cuda_index(run.device)  # set_device needs an index; threads start on 0
            # the first checks (poison, NaN cast: one quantize launch) run on this thread, so
            # Triton's driver and launcher helpers are set up before the pool starts
            for name, fn in parallel[:2]:
                run_check(run, name, fn, deadline)

            def task(item):
                if index is not None:
                    torch.cuda.set_device(index)
                run_check(run, item[0], item[1], deadline)

            with ThreadPoolExecutor(workers, thread_name_prefix="gpu_report-check") as pool:
                list(pool.map(task, parallel[2:]))
        else:
            for name, fn in parallel:
                run_check(run, name, fn, deadline)
        for name, fn in serial:
            run_check(run, name, fn, deadline)
    return any(r.get("phase") == "correctness" and r.get("detail") == "skipped: phase time limit"
               for r in run.rows)  # fmt: skip
