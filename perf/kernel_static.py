"""Static (GPU-less) code-quality report of triton_qat's kernels, from the compiled sm_90a / sm_80 code.

Every kernel variant is compiled exactly as a launch on a CUDA device would compile it: the real
launcher (kernels/*.py) is called on fake CUDA tensors (torch FakeTensorMode: shapes, strides,
dtypes, ``is_cuda``, no memory) with the config the op layer would pass
(``autotune.space.default_config`` fitted by ``fit_config``); its ``kernel[grid](...)`` call is
captured, and Triton's own JIT binder specializes the arguments as ``JITFunction.run`` does (pointers
16-byte aligned -> tt.divisibility=16, as fresh CUDA allocations are; ints divisible by 16 ->
tt.divisibility=16; ints equal to 1 -> constexpr). :func:`capture` and :func:`specialize` are the one
place in the repo that knows how a launch specializes (tests/_compile_for_gpu.py imports them).

Columns: tc: wgmma (HGMMA/IGMMA) / mma.sync (HMMA/IMMA) / none; wait: WARPGROUP.DEPBAR.LE depth in
the hot loop (0: each wgmma group is waited for at once; "0 (ptxas)": ptxas serialized the
wgmma, its reason in the JSON's ``wgmma_serialized``); operands: TMA / cp.async (LDGSTS) / LDG in
the hot loop; ld bits: widths of the hot loop's global loads; stages: async-copy buffer depths
(TTGIR); regs, spill: the ptxas -v log of the compile itself; loop: SASS instructions per iteration
(and thread) of the hot loop (the outermost back-edge loop with the most MMA, else the biggest
innermost loop) by class (cvt = F2F/F2FP/I2F/F2I/I2I; other = sync, branch, uniform, SHFL, local
memory); ni/kMAC: non-MMA warp-instructions per 1024 MACs of the CTA tile; vs anchor: hot-loop
instructions per MAC over those of a plain tl.dot matmul (Triton tutorial 03) at the same tile,
warps, stages and operand layout.

Run from a checkout with its venv (no GPU; a few minutes on 2 cores):
  .venv/bin/python perf/kernel_static.py --arch 90   # writes perf/results/static/sm90.md
  [--all] (every dtype and quantize flag, as the tests compile) [--only SUBSTR] [--json PATH|-]
  [--dump DIR] (keeps ttgir/ptx/sass/cubin per variant) [--jobs N] [--out PATH]
  [--sass FAMILIES] (disassemble only these families, e.g. quantize)
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# read at import by Triton and triton_qat: compile, never interpret
os.environ["TRITON_INTERPRET"] = "0"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, minus its warning

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import BaseBackend, GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
M, K, N = 8192, 4096, 4096  # headline: tokens, in_features, out_features
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
I8, U8, I32, F32, F16, BF16 = torch.int8, torch.uint8, torch.int32, torch.float32, torch.float16, torch.bfloat16  # fmt: skip
DT_NAME = {F32: "fp32", F16: "fp16", BF16: "bf16"}


# ------------------------------------------------------------------------------------------------
# anchor: a plain tl.dot matmul at a given tile and operand layout


@triton.jit
def anchor_matmul(a_ptr, b_ptr, c_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, stride_cm,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  GROUP_M: tl.constexpr, INT: tl.constexpr):  # fmt: skip
    """Triton tutorial 03: C = A @ B, fp32 (float inputs) or int32 (int8 inputs) accumulator."""
    pid = tl.program_id(0)
    num_pid_m, num_pid_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    first_m = (pid // (GROUP_M * num_pid_n)) * GROUP_M
    size_m = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + ((pid % (GROUP_M * num_pid_n)) % size_m)
    pid_n = (pid % (GROUP_M * num_pid_n)) // size_m
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32 if INT else tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        a = tl.load(a_ptrs, mask=offs_k[None, :] < K - k * BLOCK_K, other=0)
        b = tl.load(b_ptrs, mask=offs_k[:, None] < K - k * BLOCK_K, other=0)
        if INT:  # the int8 forward's form (Triton 3.6 wants out_dtype for an int32 accumulator)
            acc += tl.dot(a, b, out_dtype=tl.int32)
        else:
            acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    offs_cm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_cn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    c_mask = (offs_cm[:, None] < M) & (offs_cn[None, :] < N)
    p_c = c_ptr + offs_cm[:, None] * stride_cm + offs_cn[None, :]
    tl.store(p_c, acc.to(c_ptr.dtype.element_ty), mask=c_mask)


def anchor_launch(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, config: dict) -> None:
    """c = a @ b with the anchor kernel (a [M, K], b [K, N] with any strides)."""
    (m, k), n = a.shape, b.shape[1]
    grid = (triton.cdiv(m, config["BLOCK_M"]) * triton.cdiv(n, config["BLOCK_N"]),)
    anchor_matmul[grid](a, b, c, m, n, k, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
                        c.stride(0), BLOCK_M=config["BLOCK_M"], BLOCK_N=config["BLOCK_N"],
                        BLOCK_K=config["BLOCK_K"], GROUP_M=config["GROUP_M"], INT=a.dtype == torch.int8,
                        num_warps=config["num_warps"], num_stages=config["num_stages"])  # fmt: skip


# ------------------------------------------------------------------------------------------------
# launches: the real launchers on fake CUDA tensors, their kernel[grid](...) call captured


@dataclass
class Launch:
    """One captured ``kernel[grid](*args, **kwargs)`` call."""

    fn: JITFunction
    grid: tuple
    args: tuple
    kwargs: dict


def fake(shape, dtype) -> torch.Tensor:
    """A CUDA tensor without memory (call inside :func:`capture`'s ``call``)."""
    return torch.empty(shape, dtype=dtype, device="cuda")


def capture(call: Callable[[], object]) -> list[Launch]:
    """The kernel launches ``call()`` makes, run under FakeTensorMode with launching disabled, on
    a fake GPU of the report's architecture (``torch.cuda.get_device_capability``, which a
    launcher may ask, answers it)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    launches: list[Launch] = []

    def getitem(self, grid):
        return lambda *args, **kwargs: launches.append(Launch(self, grid, args, kwargs))

    def run(self, *args, grid, warmup=False, **kwargs):
        launches.append(Launch(self, grid, args, kwargs))

    arch = int(os.environ.get(ARCH_ENV, "90"))
    orig = JITFunction.__getitem__, JITFunction.run, torch.cuda.get_device_capability
    JITFunction.__getitem__ = getitem  # KernelInterface.__getitem__ is what kernel[grid] calls
    JITFunction.run = run  # and what the launchers call themselves
    torch.cuda.get_device_capability = lambda device=None: (arch // 10, arch % 10)
    try:
        with FakeTensorMode():
            call()
    finally:
        JITFunction.__getitem__, JITFunction.run, torch.cuda.get_device_capability = orig
    return launches


def _meta(v):
    """A fake tensor as a meta tensor at the same storage offset: the JIT reads dtype and data_ptr
    (meta data_ptr = offset * itemsize, i.e. a 16-aligned base, as CUDA allocations are)."""
    if not isinstance(v, torch.Tensor):
        return v
    off = v.storage_offset()
    return torch.empty(off + 1, dtype=v.dtype, device="meta")[off:]


def specialize(launch: Launch, arch: int):
    """(ASTSource, GPUTarget, options dict, what got specialized) for ``launch`` on sm_<arch>,
    through the JIT's own binder (Triton 3.6 and 3.9: ``JITFunction.run``'s code path)."""
    from triton import knobs

    fn = launch.fn
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    kwargs = dict(launch.kwargs)
    kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug  # as JITFunction.run
    for opt in ("instrumentation_mode", "fpsan_homomorphic_casts"):
        if hasattr(knobs.compilation, opt):
            kwargs[opt] = getattr(knobs.compilation, opt)
    args = [_meta(a) for a in launch.args]
    try:
        from triton.runtime.jit import create_function_from_signature

        binder = create_function_from_signature(fn.signature, fn.params, backend)
        bound, spec, options = binder(*args, **kwargs)
        options, sig, consts, attrs = fn._pack_args(backend, kwargs, bound, spec, options)
    except (ImportError, AttributeError, TypeError):  # the JIT's internals moved: its rules by hand
        sig, consts, attrs = _specialize_by_hand(fn, args, kwargs)
        options = backend.parse_options({k: v for k, v in kwargs.items() if k not in sig})
    names = [p.name for p in fn.params]
    info = {"one": sorted(names[p[0]] for p in consts if not fn.params[p[0]].is_constexpr),
            "div16": sorted(names[p[0]] for p, a in attrs.items() if a)}  # fmt: skip
    return _source_class(fn)(fn, sig, consts, attrs), target, options.__dict__, info


def _source_class(fn):
    """ASTSource, or for a Gluon kernel Gluon's (it sets the module's warps and target, which
    Gluon's explicit layouts are checked against), as the JIT's binder picks it."""
    if fn.is_gluon():
        from triton.experimental.gluon._runtime import GluonASTSource  # 3.6 exports it here only

        return GluonASTSource
    return ASTSource


def _specialize_by_hand(fn, args, kwargs):
    from triton.runtime.jit import native_specialize_impl  # in Triton 3.6 and 3.9

    bound = dict(zip([p.name for p in fn.params], args, strict=False))  # rest: kwargs
    bound.update({k: v for k, v in kwargs.items() if k in bound or k in fn.arg_names})
    sig, consts, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        v = bound[p.name]
        if p.is_constexpr:
            sig[p.name], consts[(i,)] = "constexpr", v
            continue
        sig[p.name], sp = native_specialize_impl(BaseBackend, v, False, True, True)
        if sig[p.name] == "constexpr":
            consts[(i,)] = sp
        elif isinstance(sp, str) and sp:
            attrs[(i,)] = BaseBackend.parse_attr(sp)
    return sig, consts, attrs


def compile_launch(launch: Launch, arch: int):
    """(CompiledKernel, ptxas -v log, specialization info): compiled now, never from Triton's
    cache, so the log is the one of the ptxas run that produced this cubin."""
    from triton import knobs

    src, target, options, info = specialize(launch, arch)
    old = knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log
    knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log = True, True
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            k = triton.compile(src, target=target, options=options)
    finally:
        knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log = old
    return k, buf.getvalue(), info


# ------------------------------------------------------------------------------------------------
# the variants


@dataclass
class Variant:
    label: str  # unique: the report's row (key + the config)
    key: str  # unique, without the config: what tests and KNOWN_GAPS name
    family: str  # quantize / fwd / dgrad / wgrad / dequantize / mask / anchor
    call: Callable[[], object]  # calls real launchers on fake tensors; the last launch is analysed
    headline: bool = True  # in the default report (else only with --all)
    anchor: str | None = None  # label of the anchor this GEMM is compared with
    meta: dict = field(default_factory=dict)


class T(tuple):
    """A fake tensor to be: T((shape, dtype)); created when the launcher is called."""


def call_by_name(launcher: Callable, pool: dict):
    """``launcher(**{p: pool[p]})`` for each of its parameters found in ``pool`` (T entries become
    fake tensors): the table names operands, the launcher decides which it takes and what it
    passes to its kernel, so a renamed or reordered launcher still runs (a parameter missing from
    the pool fails with its name)."""
    import inspect

    params = inspect.signature(launcher).parameters
    missing = [n for n, p in params.items() if n not in pool and p.default is p.empty]
    if missing:
        raise TypeError(f"kernel_static: {launcher.__name__} needs {missing}, not in its table")
    return launcher(**{n: fake(*pool[n]) if isinstance(pool[n], T) else pool[n]
                       for n in params if n in pool})  # fmt: skip


def _cfg_label(c: dict, tile: tuple) -> str:
    tma = " tma" if c.get("TMA") and not c.get("GLUON") else ""  # Gluon: TMA is its own
    return f"{'x'.join(map(str, tile))} w{c['num_warps']} s{c['num_stages']}{tma}"


_VARIANTS: list[Variant] = []
# The architecture variants are built for (defaults can differ by GPU generation); set by run()
# before its worker processes start, which inherit it.
ARCH_ENV = "KERNEL_STATIC_ARCH"


def variants() -> list[Variant]:
    """Headline variants (bf16, M=8192, K=N=4096) and their anchors, then the rest of the test
    matrix (other dtypes, quantize flags), all through the real launchers with the default configs
    fitted as the op layer fits them."""
    if _VARIANTS:
        return _VARIANTS
    from triton_qat import autotune
    from triton_qat.autotune.space import (
        CURATED,
        GLUON_GROUP_TILES,
        default_config,
        fit_config,
        fit_quantize,
    )
    from triton_qat.kernels import (
        dequantize,
        gemm_backward,
        gemm_float8,
        gemm_int8,
        gemm_int8_gluon,
        quantize,
        quantize_float8,
        quantize_mx,
        ste_mask,
    )

    out: list[Variant] = []
    anchors: dict[tuple, str] = {}
    major = int(os.environ.get(ARCH_ENV, "90")) // 10  # defaults are the GPU generation's own

    def add(key, family, cfg_text, call, headline=True, anchor=None, **meta):
        out.append(Variant(f"{key} {cfg_text}".strip(), key, family, call, headline, anchor, meta))

    def anchor(dt, tile, cfg, layout) -> str:
        """The anchor at this tile (rows, cols, reduction), warps, stages, operand layout."""
        key = (dt, tile, cfg["num_warps"], cfg["num_stages"], layout)
        if key not in anchors:
            c = {"BLOCK_M": tile[0], "BLOCK_N": tile[1], "BLOCK_K": tile[2], "GROUP_M": 8,
                 "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}  # fmt: skip
            mm, nn, kk = {"fwd": (M, N, K), "dgrad": (M, K, N), "wgrad": (N, K, M)}[layout]

            def call(c=c, mm=mm, nn=nn, kk=kk):  # A [mm, kk] @ B [kk, nn], strides as the GEMM's
                a = fake((mm, kk), dt) if layout != "wgrad" else fake((kk, mm), dt).t()
                b = fake((nn, kk), dt).t() if layout == "fwd" else fake((kk, nn), dt)
                anchor_launch(a, b, fake((mm, nn), I32 if dt == I8 else dt), c)

            name = f"anchor {DT_NAME.get(dt, 'int8')} {layout} layout"
            anchors[key] = f"{name} {_cfg_label(c, tile)}"
            add(anchors[key], "anchor", "", call, tile=tile)
        return anchors[key]

    # The op layer's data flow, launcher by launcher (triton_qat/ops.py): the activation is
    # quantized once (bit mask; no code sums: the default weights are symmetric), the weight per
    # forward (group-major qparams, no mask) and again in the backward (fake-quantized values
    # and byte mask, no codes); x_fq is dequantized from the
    # codes. A GEMM variant runs its producers first, so its operands have the producers' real
    # layouts, and the GEMM (the last launch) is the one analysed.
    def act(dt):
        cfg = default_config("quantize", (M, K), interpret=False)
        pool = dict(x=T(((M, K), dt)), qmin=-128, qmax=127, group_size=K, symmetric=False,
                    pack_mask=True, config=cfg, write_sums=False)  # fmt: skip
        return pool, lambda: call_by_name(quantize.quantize_rows, pool)

    def weight(dt, group, backward=False, sums=None):
        """The weight's quantize as the op calls it; ``sums`` (default: as the op decides) the
        code sums, which only the int8 forward path reads (not the dequantized one)."""
        bits = 8 if group == K else 4
        cfg = fit_quantize(default_config("quantize", (N, group), interpret=False), backward, True)
        pool = dict(x=T(((N, K), dt)), qmin=-(1 << (bits - 1)), qmax=(1 << (bits - 1)) - 1,
                    group_size=group, symmetric=True,
                    pack_mask=backward and group == K and dt != F32,
                    config=cfg)  # fmt: skip
        if sums is None:
            fwd = default_config("fwd", (M, N, K), False, group, dt.itemsize, major)
            sums = not fwd.get("DEQUANT", 0)
        pool.update(dict(with_y=True, write_codes=False, write_zero_point=False) if backward
                    else dict(group_major=True, write_mask=False, write_sums=sums,
                              write_zero_point=False))  # fmt: skip
        return pool, lambda: call_by_name(quantize.quantize_rows, pool)

    def x_fq(dt):
        qa = act(dt)[1]()
        cfg = autotune.dequantize_config(M, K, torch.device("cuda"), dt)
        pool = dict(codes=qa.codes, scale=qa.scale, zero_point=qa.zero_point, dtype=dt, config=cfg)
        return call_by_name(dequantize.dequantize_rows, pool)

    def qcfg(c):
        return f"R{c['BLOCK_R']}xC{c['BLOCK_C']} w{c['num_warps']}"

    pool, call = act(BF16)
    add("quantize act per-token, bit mask", "quantize", qcfg(pool["config"]), call, config=pool["config"])  # fmt: skip
    for group, what in ((K, "per-channel"), (128, "int4 group 128"), (32, "int4 group 32"),
                        (8, "int4 group 8")):  # fmt: skip
        pool, call = weight(BF16, group)
        add(f"quantize weight {what}", "quantize", qcfg(pool["config"]), call, config=pool["config"])  # fmt: skip
    for group, what in ((K, "per-channel"), (128, "int4 group 128")):
        pool, call = weight(BF16, group, backward=True)
        add(f"quantize weight {what}, backward (y, no codes)", "quantize", qcfg(pool["config"]),
            call, config=pool["config"])  # fmt: skip
    for dt in (BF16, F16, F32):
        cfg = autotune.dequantize_config(M, K, torch.device("cuda"), dt)
        sfx = "" if dt == BF16 else f" {DT_NAME[dt]}"
        add(f"dequantize x codes{sfx}", "dequantize", qcfg(cfg), lambda dt=dt: x_fq(dt),
            dt == BF16, config=cfg)  # fmt: skip
    # the forward's dequantized path also dequantizes the weight (group-major group scales)
    for group in (128, 32):
        cfg = autotune.dequantize_config(N, K, torch.device("cuda"), BF16)

        def w_fq(group=group, cfg=cfg):
            qw = weight(BF16, group)[1]()
            pool = dict(codes=qw.codes, scale=qw.scale, zero_point=None, dtype=BF16,
                        config=cfg)  # symmetric: as the forward calls it, no zero point  # fmt: skip
            return call_by_name(dequantize.dequantize_rows, pool)

        add(f"dequantize w int4 group {group}", "dequantize", qcfg(cfg), w_fq, config=cfg)
    # fake_quantize (with y) at every dtype and flag (per-tensor / torch.ao: given qparams)
    for dt in (F32, F16, BF16):
        for sym, given, pack in ((s, g, p) for s in (False, True) for g in (False, True) for p in (False, True)):  # fmt: skip
            cfg = fit_quantize(default_config("quantize", (M, K), interpret=False), True, not given)
            pool = dict(x=T(((M, K), dt)), qmin=0 if given and not sym else -128,
                        qmax=255 if given and not sym else 127, group_size=K, symmetric=sym,
                        pack_mask=pack, config=cfg, with_y=True)  # fmt: skip
            if given:
                pool.update(scale=T(((1, 1), F32)), zero_point=T(((1, 1), I32)))
            add(f"quantize {DT_NAME[dt]} sym={sym} given={given} pack={pack} with y", "quantize",
                "", lambda pool=pool: call_by_name(quantize.quantize_rows, pool), False, config=cfg)  # fmt: skip
        # y computed per element from qparams the kernel computes: torchao's asymmetric weights
        # (int4 g128) and a range without 0 (quint8, g128)
        for what, qmin, qmax, asym_w in (("asym-weight", -8, 7, True), ("quint8", 0, 255, False)):
            cfg = fit_quantize(default_config("quantize", (N, 128), interpret=False), True, False)
            pool = dict(x=T(((N, K), dt)), qmin=qmin, qmax=qmax, group_size=128, symmetric=False,
                        pack_mask=False, config=cfg, with_y=True, asym_weight=asym_w)  # fmt: skip
            add(f"quantize {DT_NAME[dt]} {what} g128 with y", "quantize", "",
                lambda pool=pool: call_by_name(quantize.quantize_rows, pool), False, config=cfg)  # fmt: skip
        # a per-tensor (or torch.ao) activation: given qparams, bit mask, no y, no code sums
        cfg = default_config("quantize", (M, K), interpret=False)
        pool = dict(x=T(((M, K), dt)), qmin=-128, qmax=127, group_size=K, symmetric=False,
                    pack_mask=True, config=cfg, scale=T(((1, 1), F32)), zero_point=T(((1, 1), I32)),
                    write_sums=False)  # fmt: skip
        add(
            f"quantize {DT_NAME[dt]} act given qparams",
            "quantize",
            "",
            lambda pool=pool: call_by_name(quantize.quantize_rows, pool),
            False,
            config=cfg,
        )

    # forward GEMM per weight group size: the int8 path (MODE 0 per channel, 1 int4 groups % 32,
    # 2 otherwise) at its default tile, and for per-group weights at 16-bit dtypes the dequantized
    # path (DEQUANT: x_fq and w_fq dequantized, then a plain 16-bit GEMM), their default there
    for dt in (BF16, F16, F32):
        for group, what in ((K, "int8 per-channel"), (128, "int4 group 128"),
                            (32, "int4 group 32"), (8, "int4 group 8")):  # fmt: skip
            # the int8 path's default: per channel what this dtype runs, per group the int8
            # path's own (at 16-bit dtypes the dequantized path is the default there)
            int8_cfg = default_config("fwd", (M, N, K), False, group,
                                      dt.itemsize if group == K else 4, major)  # fmt: skip
            int8_cfg = fit_config("fwd", int8_cfg, K, group)
            paths = [(f"MODE {gemm_int8.fwd_mode(K, group)}", int8_cfg, I8)]
            if group != K and dt != F32:
                cfg = fit_config("fwd", default_config("fwd", (M, N, K), False, group, 2, major),
                                 K, group)  # fmt: skip
                paths.append(("DEQUANT", cfg, dt))
            for path, cfg, operand in paths:
                tile = (cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"])

                def call(dt=dt, group=group, cfg=cfg):
                    qa, qw = act(dt)[1](), weight(dt, group, sums=True)[1]()
                    dq = autotune.dequantize_config(M, K, torch.device("cuda"), dt)
                    pool = dict(x_codes=qa.codes, x_scale=qa.scale, x_zero_point=qa.zero_point,
                                w_codes=qw.codes, w_scale=qw.scale, w_code_sum=qw.code_sum,
                                bias=T(((N,), dt)), out_dtype=dt, asymmetric=True, config=cfg,
                                w_dtype=dt, dequant_config=dq)  # fmt: skip
                    call_by_name(gemm_int8.int8_linear, pool)

                head = dt == BF16
                add(f"fwd {path} {what}" + ("" if head else f" {DT_NAME[dt]}"), "fwd",
                    _cfg_label(cfg, tile), call, head,
                    anchor(operand, tile, cfg, "fwd") if head else None, tile=tile, config=cfg)  # fmt: skip

    # the Gluon MODE 0 kernel (kernels/gemm_int8_gluon.py), a tuner candidate on sm_90 where this
    # Triton has Gluon's Hopper API: at the first curated GLUON tile, the Triton default's own,
    # so its row compares with "fwd MODE 0 int8 per-channel" (bf16) tile for tile; fp16 / fp32
    # outputs with --all. Launched as int8_linear launches it on an sm_90 GPU.
    if major == 9 and gemm_int8_gluon.gluon_available():
        gcfg = next(c for c in CURATED["fwd"] if c.get("GLUON"))
        gtile = (gcfg["BLOCK_M"], gcfg["BLOCK_N"], gcfg["BLOCK_K"])
        for dt in (BF16, F16, F32):

            def call_g(dt=dt):
                qa, qw = act(dt)[1](), weight(dt, K, sums=True)[1]()
                pool = dict(x_codes=qa.codes, x_scale=qa.scale, x_zero_point=qa.zero_point,
                            w_codes=qw.codes, w_scale=qw.scale, w_code_sum=qw.code_sum,
                            bias=T(((N,), dt)), out_dtype=dt, asymmetric=True, config=gcfg)  # fmt: skip
                call_by_name(gemm_int8.int8_linear, pool)

            head = dt == BF16
            add("fwd gluon int8 per-channel" + ("" if head else f" {DT_NAME[dt]}"), "fwd",
                _cfg_label(gcfg, gtile), call_g, head, anchor(I8, gtile, gcfg, "fwd") if head else None,
                tile=gtile, config=gcfg)  # fmt: skip
        # MODE 1 (per-group symmetric weights): int4 group 128 at its first curated tile (two
        # groups per loop iteration: k_steps), fp32 (the zero point in int32) and g32 with --all
        bm, bn, bk, w, st = GLUON_GROUP_TILES[0]
        g1cfg = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "num_warps": w,
                 "num_stages": st, "DEQUANT": 0, "TMA": 0, "GLUON": 1}  # fmt: skip
        for dt, group in ((BF16, 128), (F32, 128), (BF16, 32)):
            cfg1 = fit_config("fwd", g1cfg, K, group)
            tile1 = (cfg1["BLOCK_M"], cfg1["BLOCK_N"], cfg1["BLOCK_K"])

            def call_g1(dt=dt, group=group, cfg=cfg1):
                qa, qw = act(dt)[1](), weight(dt, group, sums=True)[1]()
                pool = dict(x_codes=qa.codes, x_scale=qa.scale, x_zero_point=qa.zero_point,
                            w_codes=qw.codes, w_scale=qw.scale, w_code_sum=qw.code_sum,
                            bias=T(((N,), dt)), out_dtype=dt, asymmetric=True, config=cfg)  # fmt: skip
                call_by_name(gemm_int8.int8_linear, pool)

            head = dt == BF16 and group == 128
            sfx = "" if dt == BF16 else f" {DT_NAME[dt]}"
            add(f"fwd gluon int4 group {group}{sfx}", "fwd", _cfg_label(cfg1, tile1), call_g1,
                head, anchor(I8, tile1, cfg1, "fwd") if head else None, tile=tile1, config=cfg1,
                k_steps=2 * (group // cfg1["BLOCK_K"]))  # two groups per iteration  # fmt: skip

    # float8 (e4m3) forward: the codes quantize (per row) and the fp8 tensor-core GEMM at its
    # default config, x per row and w per row (the layer's launches, triton_qat/float8.py)
    def f8_codes(dt, rows):
        plan = quantize_float8.plan_float8_quantize(K, dt, False, None, None, True,
                                                    e4m3_cvt=f8_cvt())  # fmt: skip
        return quantize_float8.launch_float8_codes(plan, fake((rows, K), dt))

    def f8_cvt():  # asked inside the launch, where the fake GPU answers the capability
        return quantize_float8.e4m3_cvt_device(torch.device("cuda"))

    f8q = quantize_float8.plan_float8_quantize(K, BF16, False, None, None, True)
    add("quantize float8 codes per-row", "quantize", f"K{f8q.block_k} w{f8q.num_warps}",
        lambda: f8_codes(BF16, M), config={"BLOCK_R": 1, "BLOCK_C": f8q.block_k},
        cold=r"_f8_row_ieee\(", row_elems=K, elem_bits=16)  # fmt: skip

    # the float8 fake quantization's values (torchao's Float8FakeQuantizer: fp32 layers, the
    # weight-only and int4 paths), per row, each dtype
    def f8_values(dt):
        plan = quantize_float8.plan_float8_quantize(K, dt, False, None, None, True,
                                                    e4m3_cvt=f8_cvt())  # fmt: skip
        return quantize_float8.launch_float8_quantize(plan, fake((M, K), dt))

    for dt in (BF16, F16, F32):
        add(f"quantize float8 values per-row {DT_NAME[dt]}", "quantize",
            f"K{f8q.block_k} w{f8q.num_warps}", lambda dt=dt: f8_values(dt), headline=False,
            config={"BLOCK_R": 1, "BLOCK_C": f8q.block_k}, cold=r"_f8_row_ieee\(", row_elems=K,
            elem_bits=torch.finfo(dt).bits)  # fmt: skip

    # the float8 backward (torchao's gradient of the fake quantization), per row, bf16
    def f8_bwd():
        plan = quantize_float8.plan_float8_quantize(K, BF16, False, None, None, True,
                                                    e4m3_cvt=f8_cvt())  # fmt: skip
        return quantize_float8.launch_float8_backward(plan, fake((M, K), BF16),
                                                      fake((M, K), BF16), fake((M, 1), F32))  # fmt: skip

    add("quantize float8 backward per-row", "quantize", f"K{f8q.block_k} w8",
        f8_bwd, config={"BLOCK_R": 1, "BLOCK_C": f8q.block_k}, cold=r", False, E4M3_CVT",
        row_elems=K, elem_bits=16, x_ptr="p_x")  # elements counted by x's loads  # fmt: skip
    # MX / NVFP4 fake quantization (kernels/quantize_mx.py), bf16, blocks of 32 / 16 along K
    for elem, mode, what in (("float8_e4m3fn", "rceil", "mxfp8 e4m3 rceil"),
                             ("float4_e2m1fn_x2", "rceil", "mxfp4 rceil"),
                             ("float4_e2m1fn_x2", "nvfp4", "nvfp4 per-tensor")):  # fmt: skip
        mxp = quantize_mx.plan_mx_quantize(BF16, elem, 16 if mode == "nvfp4" else 32, mode, True)

        def call_mx(mxp=mxp):
            if mxp.mode == -1:
                return quantize_mx.launch_nvfp4_quantize(mxp, fake((M, K), BF16), True)
            return quantize_mx.launch_mx_quantize(
                mxp._replace(fp8_cvt=f8_cvt()), fake((M, K), BF16)
            )

        add(f"quantize {what}", "quantize", f"B{mxp.blocks}x{mxp.block_size} w{mxp.num_warps}",
            call_mx, config={"BLOCK_R": mxp.blocks, "BLOCK_C": mxp.bsp})  # fmt: skip
    # fp8 tensor cores: sm_89 and up (sm_80 has none; the layer takes the dequantized path there)
    for dt in (BF16, F16) if major >= 9 else ():
        f8cfg = default_config("f8fwd", (M, N, K), False, 0, dt.itemsize, major)
        f8tile = (f8cfg["BLOCK_M"], f8cfg["BLOCK_N"], f8cfg["BLOCK_K"])

        def call_f8(dt=dt, cfg=f8cfg):
            (xc, xs), (wc, ws) = f8_codes(dt, M), f8_codes(dt, N)
            gemm_float8.float8_linear(xc, xs, wc, ws, fake((N,), dt), dt, config=cfg)

        head = dt == BF16
        add("fwd float8 e4m3 per-row" + ("" if head else f" {DT_NAME[dt]}"), "fwd",
            _cfg_label(f8cfg, f8tile), call_f8, head,
            anchor(BF16, f8tile, f8cfg, "fwd") if head else None, tile=f8tile, config=f8cfg)  # fmt: skip
        if gemm_int8_gluon.gluon_available():  # the Gluon candidate at the same tile
            gcfg = {**f8cfg, "GLUON": 1}
            add("fwd float8 gluon e4m3 per-row" + ("" if head else f" {DT_NAME[dt]}"), "fwd",
                _cfg_label(gcfg, f8tile), lambda dt=dt, cfg=gcfg: call_f8(dt, cfg), head,
                anchor(BF16, f8tile, f8cfg, "fwd") if head else None, tile=f8tile, config=gcfg,
                k_steps=2)  # its loop takes two K steps (two partial sums in turn)  # fmt: skip

    # STE backward: dgrad's output tile is [BM, BK] (reduction over N), wgrad's [BN, BK] (over M).
    # The Triton kernels at the default tiles (CUBLAS off: at 16-bit dtypes the default runs
    # torch.mm and then the mask pass below; the Triton kernels stay the tuner's candidates)
    def bwd_triton(cfg: dict) -> dict:
        return {**cfg, "CUBLAS": 0}

    # the mask pass after torch.mm (kernels/ste_mask.py): x's bit mask (dgrad), w's (wgrad; bits
    # per channel, the headline)
    for kern, bits, (rows, cols) in (("dgrad", True, (M, K)), ("wgrad", True, (N, K))):
        zp = ste_mask.plan_zero_masked(bits)
        mask_cols = -(-cols // 8) if bits else cols

        def call_m(bits=bits, rows=rows, cols=cols, mask_cols=mask_cols):
            pool = dict(c=T(((rows, cols), BF16)), mask=T(((rows, mask_cols), torch.uint8)),
                        bits=bits)  # fmt: skip
            call_by_name(ste_mask.zero_masked, pool)

        add(f"{kern} mask pass", "mask", f"R{zp.block_m}xC{zp.block_n} w{zp.num_warps}", call_m,
            config={"BLOCK_R": zp.block_m, "BLOCK_C": zp.block_n})  # fmt: skip

    for dt in (BF16, F16, F32):
        head, sfx = dt == BF16, "" if dt == BF16 else f" {DT_NAME[dt]}"

        def call_d(dt=dt):
            cfg = bwd_triton(default_config("dgrad", (M, N, K), False, 0, dt.itemsize, major))
            qa, qw = act(dt)[1](), weight(dt, K, backward=True)[1]()
            pool = dict(grad_y=T(((M, N), dt)), w_fq=qw.y, x_mask=qa.mask, config=cfg)
            call_by_name(gemm_backward.dgrad, pool)

        def call_w(dt=dt):
            cfg = bwd_triton(default_config("wgrad", (M, N, K), False, 0, dt.itemsize, major))
            xf, qw = x_fq(dt), weight(dt, K, backward=True)[1]()
            pool = dict(grad_y=T(((M, N), dt)), x_fq=xf, w_mask=qw.mask, config=cfg,
                        mask_bits=dt != F32)  # per channel: bits (fp32: bytes)  # fmt: skip
            call_by_name(gemm_backward.wgrad, pool)

        for kern, call, layout in (("dgrad", call_d, (0, 2, 1)), ("wgrad", call_w, (1, 2, 0))):
            cfg = bwd_triton(default_config(kern, (M, N, K), False, 0, dt.itemsize, major))
            bmnk = (cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"])
            tile = tuple(bmnk[i] for i in layout)  # (out rows, out cols, reduction)
            add(f"{kern}{sfx}", kern, _cfg_label(cfg, tile), call, head,
                anchor(dt, tile, cfg, kern) if head else None, tile=tile, config=cfg)  # fmt: skip
    # range learning (learned weight scales): wgrad's scale-gradient epilogue, per channel (one
    # group per tile) and int4 group 32 (several whole groups per tile), bf16, at the default
    # tile and at a 4-warp one of the curated list (a tuned wgrad config serves it too)
    four_warps = {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 256, "num_warps": 4}
    for group, what, over in ((K, "per-channel", {}), (32, "int4 group 32", {}),
                              (K, "per-channel w4", four_warps)):  # fmt: skip
        cfg = {**default_config("wgrad", (M, N, K), False, 0, 2, major), **over}

        def call_sg(group=group, cfg=cfg):
            wpool, _ = weight(BF16, group, backward=True)
            wpool = {**wpool, "pack_mask": False}  # the scale-gradient epilogue reads bytes
            xf, qw = x_fq(BF16), call_by_name(quantize.quantize_rows, wpool)
            pool = dict(grad_y=T(((M, N), BF16)), x_fq=xf, w_mask=qw.mask, config=cfg,
                        weight=T(((N, K), BF16)), w_scale=T(((N, K // group), F32)),
                        qmin=wpool["qmin"], qmax=wpool["qmax"])  # fmt: skip
            call_by_name(gemm_backward.wgrad, pool)

        tiles = gemm_backward.scale_grad_tiles(
            gemm_backward.tiles_of(cfg, "BLOCK_N", "BLOCK_K", "BLOCK_M"), K, K // group
        )[1]
        add(f"wgrad scale-grad {what}", "wgrad", _cfg_label(cfg, tiles[:3]), call_sg, False,
            tile=tiles[:3], config=cfg)  # fmt: skip
    # the tutorial's own tile, for scale
    anchor(BF16, (128, 256, 64), {"num_warps": 8, "num_stages": 3}, "fwd")
    anchor(I8, (128, 256, 64), {"num_warps": 8, "num_stages": 3}, "fwd")
    order = {"quantize": 0, "dequantize": 1, "fwd": 2, "dgrad": 3, "wgrad": 4, "mask": 5,
             "anchor": 6}  # fmt: skip
    _VARIANTS[:] = sorted(out, key=lambda v: (not v.headline, order[v.family]))
    assert len({v.label for v in _VARIANTS}) == len({v.key for v in _VARIANTS}) == len(_VARIANTS)
    return _VARIANTS


# ------------------------------------------------------------------------------------------------
# SASS analysis

CLASSES = [("mma", r"^[HIQ]GMMA|^HMMA|^IMMA"), ("gld", r"^LDG(?!DEPBAR)|^UTMALDG|^UBLKCP"),
           ("gst", r"^STG|^RED|^ATOM"), ("sh", r"^LDS|^STS|^LDSM|^STSM"),
           ("cvt", r"^F2F|^I2F|^F2I|^FRND|^I2I"),
           ("falu", r"^F(ADD|MUL|FMA|MNMX|SETP|SEL|CHK|SWZ)|^H(ADD|MUL|FMA|MNMX|SETP)2"),
           ("ialu", r"^(IADD3|IMAD|IMUL|LOP3|SHF|LEA|ISETP|SEL|IMNMX|VIADD|VIMNMX|MOV|PRMT|IABS|POPC|"
                    r"FLO|BMSK|SGXT|PLOP3|P2R|R2P|CS2R|S2R|BREV|IDP|IADD|LOP)")]  # fmt: skip
CLASS_NAMES = [c for c, _ in CLASSES] + ["other"]
FP_OPS = r"^(FMUL|FADD|FFMA|FSEL|I2FP|F2FP)\b"  # a row's "fp_ops": fp32 arithmetic, its rounding
INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Za-z0-9_.]+)([^;]*);")


def classify(op: str) -> str:
    return next((c for c, rx in CLASSES if re.match(rx, op)), "other")


def load_bits(op: str) -> int:
    """Width in bits of a global load / async copy opcode (LDG.E.128, LDGSTS.E.BYPASS.128, ...)."""
    if op.startswith(("UTMALDG", "UBLKCP")):
        return 0  # bulk copy: no per-thread width
    m = re.search(r"\.(128|64)\b", op)
    if m:
        return int(m.group(1))
    m = re.search(r"\.[US](8|16)\b", op)
    return int(m.group(1)) if m else 32


def _tool(name: str) -> str:
    try:
        from triton import knobs

        return getattr(knobs.nvidia, name).path
    except Exception:  # noqa: BLE001 - the wheel's copy
        return os.path.join(BIN, name)


def sass(cubin_path: str):
    """[(addr, opcode, operands, 'file:line' of the outermost inlined frame)], {label: addr},
    {addr: (file, line) of the innermost frame}, and the number of instructions left out: the
    out-of-line subroutines after the kernel's end (``$__internal_..._div_rn_..._slowpath``,
    CALLed only for the divisors the IEEE division's fast path cannot take), which no loop
    holds and no ordinary element runs."""
    txt = subprocess.run([_tool("nvdisasm"), "-c", "-gi", cubin_path], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    insns, labels, pending, loc, inner, inn, run = [], {}, [], "?", {}, ("?", "?"), False
    subroutine, out_of_line = False, 0
    for line in txt.splitlines():
        if re.match(r"^\$[\w$.]+:", line):  # a subroutine's label: the kernel has ended
            subroutine = True
        if subroutine:
            out_of_line += bool(INSN.search(line))
            continue
        if line.lstrip().startswith("//## File"):  # -gi: innermost frame first, outermost last
            fl = re.findall(r'"([^"]+)", line (\d+)', line) or [("?", "?")]
            loc, inn, run = (
                f"{os.path.basename(fl[-1][0])}:{fl[-1][1]}",
                inn if run else fl[0],
                True,
            )
            continue
        run = False
        if re.match(r"^\.L_x_\d+:", line):
            pending.append(line.split(":")[0])
        elif m := INSN.search(line):
            labels.update({lb: int(m.group(1), 16) for lb in pending})
            pending = []
            # operands keep a guard predicate in front ("@P0 "): an unguarded EXIT ends the kernel
            insns.append((int(m.group(1), 16), m.group(3), (m.group(2) or "") + m.group(4), loc))
            inner[insns[-1][0]] = inn
    return insns, labels, inner, out_of_line


def hot_loop(insns, labels, cold: str | None = None):
    """(hot loop body, sizes of loops nested in it, other loop bodies); loops = backward branches.
    With MMA: the outermost loop with the most MMA (MODE 1's group loop is its K step). Without:
    the innermost loop that loads from global memory, else any loop that does (a group loop
    whose group fits one tile), else the biggest loop; a kernel without loops is its own body.
    ``cold``: the kernel's source locations ('file:line') of the calls whose loops are a rare
    path (the float8 kernels' rows of IEEE divisions): never the hot loop."""
    loops = [(labels[t.group(1)], a) for a, op, rest, _ in insns if op.startswith("BRA")
             and (t := re.search(r"(\.L_x_\d+)", rest)) and labels.get(t.group(1), a) < a]  # fmt: skip
    cold = cold or set()
    loops = [lp for lp in loops if not any(a == lp[1] and lc in cold for a, _, _, lc in insns)]
    # a TMA pipeline's mbarrier retry stubs sit after the kernel's end and branch back into the
    # loop: the "loop" they close spans the epilogue and its unguarded EXIT, so it is no loop (a
    # real loop may hold a guarded "@P0 EXIT")
    body = {lp: [i for i in insns if lp[0] <= i[0] <= lp[1]] for lp in loops}
    loops = [lp for lp in loops
             if not any(op.startswith("EXIT") and not r.startswith("@") for _, op, r, _ in body[lp])]  # fmt: skip
    if not loops:
        return list(insns), [], []
    nmma = {lp: sum(classify(i[1]) == "mma" for i in b) for lp, b in body.items()}
    ngld = {lp: sum(classify(i[1]) == "gld" for i in b) for lp, b in body.items()}
    inner = {
        lp: not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in loops) for lp in loops
    }
    # with a rare path named: the common path's writing loop (not its first pass over the row)
    writes = {lp: bool(cold) and any(classify(i[1]) == "gst" for i in b) for lp, b in body.items()}
    best = max(loops, key=lambda lp: (nmma[lp], len(body[lp])) if nmma[lp]
               else (0, writes[lp], ngld[lp] > 0, inner[lp], len(body[lp])))  # fmt: skip
    nested = [len(body[lp]) for lp in loops if lp != best and best[0] <= lp[0] and lp[1] <= best[1]]
    others = [b for lp, b in body.items() if not (best[0] <= lp[0] and lp[1] <= best[1])]
    return body[best], nested, others


def _load_names(src_file: str) -> dict[str, str]:
    """{'file:line': pointer name} for each source line holding a tl.load / gl.load, or the
    descriptor of a Gluon kernel's TMA load."""
    out = {}
    for i, t in enumerate(open(src_file).read().splitlines(), 1):
        if m := re.search(r"(?:tl|gl)\.load\(\s*([A-Za-z_]\w*)|_tma_load\(\s*([A-Za-z_]\w*)", t):
            out[f"{os.path.basename(src_file)}:{i}"] = m.group(1) or m.group(2)
    return out


def analyse(v: Variant, arch: int, dump: str, read_sass: bool = True) -> dict:
    """Compile ``v`` for sm_<arch> and read its code (see the module doc for the fields).
    ``read_sass=False``: no disassembly (nvdisasm costs ~0.25 s a cubin), so the SASS fields
    (hot loop, instruction classes, loads, FFMAs) are empty and ``row["sass"]`` is False; the
    compile, ptxas's registers / spills, shared memory and the PTX fields are all there."""
    import inspect

    t0 = time.time()
    launches = capture(v.call)
    if not launches:
        raise RuntimeError("the launcher launched nothing")
    launch = launches[-1]  # producers first, then the analysed kernel
    k, log, spec = compile_launch(launch, arch)
    base = os.path.join(dump, f"sm{arch}_" + re.sub(r"\W+", "_", v.label)[:70])
    ttgir, ptx = k.asm["ttgir"], k.asm["ptx"]
    with open(base + ".cubin", "wb") as f:
        f.write(k.asm["cubin"])
    for ext, text in ((".ttgir", ttgir), (".ptx", ptx)):
        with open(base + ext, "w") as f:
            f.write(text)
    insns, labels, inner, out_of_line = sass(base + ".cubin") if read_sass else ([], {}, {}, 0)
    if read_sass:
        with open(base + ".sass", "w") as f:
            f.write("\n".join(f"{a:05x} {o}{r}  // {lc}" for a, o, r, lc in insns))
    g = lambda rx: int(m.group(1)) if (m := re.search(rx, log)) else -1  # noqa: E731
    src = inspect.getsourcefile(launch.fn.fn)
    cold = _cold_calls(src, launch.fn.fn.__name__, v.meta["cold"]) if "cold" in v.meta else None
    loop, nested, others = hot_loop(insns, labels, cold)
    ops = [op for _, op, _, _ in loop]
    cls = collections.Counter(classify(op) for op in ops)
    mma = sorted({o for o in ops if classify(o) == "mma"} or {o for _, o, _, _ in insns if classify(o) == "mma"})  # fmt: skip
    tc = "wgmma" if "wgmma.mma_async" in ptx else "mma.sync" if "mma.sync" in ptx else "none"
    opnd = ("TMA" if any(o.startswith(("UTMALDG", "UBLKCP")) for o in ops)
            else "cp.async" if any(o.startswith("LDGSTS") for o in ops)
            else "LDG" if any(o.startswith("LDG") for o in ops) else "-")  # fmt: skip
    bufs = {int(b) for b in re.findall(r"ttg\.local_alloc\s*:\s*\(\)\s*->\s*!ttg\.memdesc<(\d+)x", ttgir)}  # fmt: skip
    piped = bufs and ("async_copy" in ttgir or "async_tma" in ttgir)
    stages = "/".join(map(str, sorted(bufs, reverse=True))) if piped else "1"
    waits = sorted({int(r.split(",")[-1], 16) for _, o, r, _ in loop if o.startswith("WARPGROUP.DEPBAR")})  # fmt: skip
    opts = launch.kwargs
    tile = v.meta.get("tile")
    # MACs one hot-loop iteration covers: the tile, times the K steps an unrolled loop takes
    mac = tile[0] * tile[1] * tile[2] * v.meta.get("k_steps", 1) if tile else 0
    warps = opts.get("num_warps", 4)
    names = _load_names(src)
    loads = collections.defaultdict(collections.Counter)  # hot loop: pointer -> {bits: count}
    for _, o, _, lc in loop:
        if classify(o) == "gld":
            loads[names.get(lc, lc)][load_bits(o)] += 1
    helpers = collections.Counter(f"{os.path.basename(inner[a][0])}:{inner[a][1]}" for a, _, _, _ in loop
                                  if inner[a][0] != src and "/triton/" not in inner[a][0]
                                  and inner[a][0] != "?")  # fmt: skip
    lines = collections.Counter(lc for _, _, _, lc in loop)
    hot = [(lc, n, collections.Counter(classify(o) for _, o, _, l2 in loop if l2 == lc).most_common(3))
           for lc, n in lines.most_common(int(os.environ.get("TOPN", 6)))]  # fmt: skip
    row = {
        "label": v.label, "key": v.key, "family": v.family, "triton": triton.__version__, "headline": v.headline, "kernel": launch.fn.__name__,
        "arch": arch, "gpu": f"sm_{arch}{'a' if arch >= 90 else ''}", "anchor": v.anchor,
        "options": {k2: opts[k2] for k2 in ("num_warps", "num_stages", "enable_fp_fusion") if k2 in opts},
        "constexpr_one": spec["one"], "div16": spec["div16"],
        "tc": tc, "mma": mma, "wait": waits, "operands": opnd, "stages": stages,
        "ld_bits": sorted({load_bits(o) for o in ops if classify(o) == "gld"}),
        "loads": {p: dict(sorted(c.items())) for p, c in sorted(loads.items())},
        "regs": g(r"Used (\d+) registers"), "spill_store": g(r"(\d+) bytes spill stores"),
        "spill_load": g(r"(\d+) bytes spill loads"), "smem": k.metadata.shared,
        "local_insns": sum(o.startswith(("STL", "LDL")) for _, o, _, _ in insns),
        "loop_insns": len(ops), "classes": {c: cls[c] for c in CLASS_NAMES},
        "mac": mac, "warps": warps, "tile": list(tile) if tile else None,
        "ni_kmac": round((len(ops) - cls["mma"]) * warps / (mac / 1024), 2) if mac and ops else None,
        "fma": ptx.count("fma.rn.f32"), "div_rn": ptx.count("div.rn.f32"),
        "ptx_fma_at": _ptx_fma_at(ptx),
        # the kernel's float arithmetic by opcode (an epilogue's: int32 -> fp32, products,
        # selects, adds, the output's rounding), over the whole kernel
        "fp_ops": dict(sorted(collections.Counter(o.split(".")[0] for _, o, _, _ in insns
                                                  if re.match(FP_OPS, o)).items())),
        # where ptxas put FFMAs (its own mul + add contractions would show here; an IEEE
        # division's Newton steps are FFMAs too, at the div_rn's line)
        "ffma_at": sorted({f"{os.path.basename(inner[a][0])}:{inner[a][1]}"
                           for a, o, _, _ in insns if o.startswith("FFMA")}),
        "nested": nested, "other_loops": sorted(len(b) for b in others),
        "drain": any(o.startswith("DEPBAR") and re.search(r"SB0,\s*0x0", r) for _, o, r, _ in loop),
        "helpers": dict(helpers.most_common(4)), "hot_lines": hot,
        "seconds": round(time.time() - t0, 1),
    }  # fmt: skip
    # ptxas's own word when it serializes wgmma (C7514 / C7515 ...: each group waited for at once)
    row["wgmma_serialized"] = next((ln.split("Potential Performance Loss:")[-1].strip()
                                    for ln in log.splitlines() if "wgmma.mma_async" in ln
                                    and "serialized" in ln), None)  # fmt: skip
    row["sass"] = read_sass
    row["scope"] = "kernel" if len(loop) == len(insns) else "loop"
    row["out_of_line"] = out_of_line
    if v.family in ("quantize", "dequantize", "mask") and read_sass:
        # every instruction a thread runs (its loops run once per program at these shapes; the
        # out-of-line division slow path left out), over the elements it owns
        c = v.meta["config"]
        row["insns_per_elem"] = round(len(insns) * warps * 32 / (c["BLOCK_R"] * c["BLOCK_C"]), 2)
    if cold and read_sass:
        x_ptr = v.meta.get("x_ptr", ".*")

        def loads_x(a):  # the load's pointer, named at its innermost frame
            at = f"{os.path.basename(inner[a][0])}:{inner[a][1]}"
            return re.fullmatch(x_ptr, names.get(at, "")) is not None

        row["insns_per_elem"], row["cold_insns"] = common_path_per_elem(
            insns, labels, cold, v.meta["row_elems"] / (warps * 32), v.meta["elem_bits"], loads_x
        )
    return row


def _ptx_fma_at(ptx: str) -> list[str]:
    """'file:line' (innermost frame) of each PTX ``fma.rn.f32``: an explicit ``tl.fma`` there is
    the kernel's own, anything else LLVM's contraction of a multiply and an add."""
    at, out = "?", set()
    for ln in ptx.splitlines():
        if ln.lstrip().startswith(".loc") and (m := re.search(r"//\s*([\w.]+:\d+)", ln)):
            at = m.group(1)
        elif "fma.rn.f32" in ln:
            out.add(at)
    return sorted(out)


def _cold_calls(src_file: str, kernel: str, pattern: str) -> set[str]:
    """'file:line' of each line of ``kernel``'s body matching the regex ``pattern``: the calls of
    its rare path (each inlined instruction of a call is attributed to its line, the outermost
    frame)."""
    lines = open(src_file).read().splitlines()
    start = next(i for i, t in enumerate(lines) if re.match(rf"def {kernel}\(", t))
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"(@|def |class )", lines[i])),
               len(lines))  # fmt: skip
    hits = {f"{os.path.basename(src_file)}:{i + 1}" for i in range(start, end)
            if re.search(pattern, lines[i])}  # fmt: skip
    if not hits:
        raise ValueError(f"no line of {kernel} matches the rare path's pattern {pattern!r}")
    return hits


def common_path_per_elem(insns, labels, cold: set, elems_per_thread: float, elem_bits: int,
                         loads_x=lambda a: True):  # fmt: skip
    """(thread-instructions per element of x on a kernel's common path, the rare path's static
    instruction count) for a one-program-per-row kernel with a rare path (``cold``, as for
    :func:`hot_loop`): each of the common path's loops counts its instructions over the elements
    of x its global loads of x (``loads_x(address)``) bring per iteration (an unrolled loop
    brings several tiles), the straight-line rest counts over the row's ``elems_per_thread`` at
    the headline shape."""
    common = [i for i in insns if i[3] not in cold]
    loops = [(labels[t.group(1)], a) for a, op, rest, lc in common if op.startswith("BRA")
             and (t := re.search(r"(\.L_x_\d+)", rest)) and labels.get(t.group(1), a) < a]  # fmt: skip
    per_elem, in_loops = 0.0, set()
    for lo, hi in loops:
        body = [i for i in common if lo <= i[0] <= hi]
        bits = sum(load_bits(o) for a, o, _, _ in body if classify(o) == "gld" and loads_x(a))
        if bits:
            per_elem += len(body) / (bits / elem_bits)
            in_loops.update(i[0] for i in body)
    rest = sum(1 for i in common if i[0] not in in_loops)
    return round(per_elem + rest / elems_per_thread, 2), len(insns) - len(common)


def _work(label: str, arch: int, dump: str, sass_families: tuple[str, ...] | None = None) -> dict:
    v = next(x for x in variants() if x.label == label)
    try:
        return analyse(v, arch, dump, sass_families is None or v.family in sass_families)
    except Exception as e:  # noqa: BLE001 - reported in the table and the JSON; the run goes on
        why = getattr(e, "error_message", None) or e.__cause__ or e  # Triton's CompilationError
        msg = " | ".join([ln for ln in str(why).strip().splitlines() if ln.strip(" ^")][-3:])[:400]
        return {"label": label, "key": v.key, "family": v.family, "headline": v.headline, "arch": arch,
                "anchor": v.anchor, "error": f"{type(e).__name__}: {msg}"}  # fmt: skip


def run(arch: int, labels: list[str], dump: str, jobs: int = 2, log=sys.stderr,
        sass_families: tuple[str, ...] | None = None) -> list[dict]:  # fmt: skip
    """Analyse the variants named in ``labels`` on sm_<arch> (``jobs`` processes), in that order,
    and fill each GEMM's ``ratio``: hot-loop instructions per MAC over its anchor's.
    ``sass_families``: disassemble only these families' kernels (None: all)."""
    os.makedirs(dump, exist_ok=True)
    if os.environ.get(ARCH_ENV) != str(arch):
        os.environ[ARCH_ENV] = str(arch)
        _VARIANTS.clear()
    if jobs <= 1:
        rows = {lb: _work(lb, arch, dump, sass_families) for lb in labels}
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        rows = {}
        # GEMMs first: they take longest
        todo = sorted(labels, key=lambda lb: lb.startswith("quantize"))
        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as ex:
            futs = {ex.submit(_work, lb, arch, dump, sass_families): lb for lb in todo}
            for f in as_completed(futs):
                rows[futs[f]] = r = f.result()
                print(f"sm{arch} {r.get('seconds', '-')}s {futs[f]}", file=log, flush=True)
    out = [rows[lb] for lb in labels]
    by = {r["label"]: r for r in out}
    for r in out:
        a = by.get(r.get("anchor") or "")
        if a and r.get("mac") and a.get("mac") and r.get("loop_insns") and a.get("loop_insns"):
            r["ratio"] = round((r["loop_insns"] / r["mac"]) / (a["loop_insns"] / a["mac"]), 2)
    return out


# ------------------------------------------------------------------------------------------------
# report

HEAD = ["kernel (tile MxNxK)", "tc", "mma", "wait", "operands", "ld bits", "stages", "regs",
        "spill st/ld B", "smem KiB", "loop insns", "mma", "gld", "sh", "ialu", "falu", "cvt",
        "other", "ni/kMAC", "vs anchor"]  # fmt: skip


def _cells(r: dict) -> list[str]:
    if "error" in r:
        return [r["label"], f"FAILED {r['error'][:150].replace('|', '/')}"] + [""] * (len(HEAD) - 2)
    shapes = ",".join(".".join(m.split(".")[:3]) for m in r["mma"]) or "-"
    j = lambda xs: ",".join(map(str, xs)) or "-"  # noqa: E731
    wait = j(r["wait"]) + (" (ptxas)" if r.get("wgmma_serialized") else "")
    return [r["label"], r["tc"], shapes, wait, r["operands"], j(r["ld_bits"]), r["stages"],
            str(r["regs"]), f"{r['spill_store']}/{r['spill_load']}", f"{r['smem'] / 1024:.0f}",
            str(r["loop_insns"])] + [str(r["classes"][c]) for c in CLASS_NAMES if c != "gst"] + [
            "-" if r["ni_kmac"] is None else f"{r['ni_kmac']:.1f}",
            f"{r['ratio']:.1f}x" if r.get("ratio") else "-"]  # fmt: skip


def _note(r: dict) -> str:
    if "error" in r:
        return ""
    parts = [f"specialized: constexpr 1 {r['constexpr_one'] or '-'}, divisibility 16 {r['div16']}"]
    if r["loads"]:
        lds = ", ".join(f"`{p}` " + " + ".join(f"{n}x{b}b" for b, n in c.items()) for p, c in r["loads"].items())  # fmt: skip
        parts.append(f"hot-loop global loads per thread: {lds}")
    if r.get("scope") == "kernel":
        parts.append("no loop: the counts are the whole kernel (one tile per program)"
                     + (f" without its {r['out_of_line']}-instruction out-of-line division slow"
                        " path" if r.get("out_of_line") else ""))  # fmt: skip
    if "cold_insns" in r:
        parts.append(f"{r['insns_per_elem']} thread-instructions per element on the common path"
                     " (each loop over the elements it loads, the rest over the row's; the"
                     f" {r['cold_insns']} instructions of the rare rows' path left out)")  # fmt: skip
    elif "insns_per_elem" in r:
        parts.append(f"{r['insns_per_elem']} thread-instructions per element (the whole kernel"
                     " per thread over its elements)")  # fmt: skip
    if r["nested"]:
        parts.append(f"holds inner loop(s) of {r['nested']} insns")
    if r["local_insns"]:
        parts.append(f"{r['local_insns']} STL/LDL (local memory) in the kernel")
    if r["drain"]:
        parts.append("cp.async pipeline drained inside the loop (DEPBAR.LE SB0, 0x0)")
    if r["other_loops"]:
        parts.append(f"other loops: {r['other_loops']} insns")
    if r["helpers"]:
        parts.append(f"inlined helpers: {r['helpers']}")
    top = "; ".join(f"`{lc}` {n} ({', '.join(f'{c} {k}' for c, k in cc)})" for lc, n, cc in r["hot_lines"])  # fmt: skip
    return f"- **{r['label']}**: " + "; ".join(parts) + f"; top lines: {top}"


def markdown(rows: list[dict], arch: int) -> str:
    rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()  # fmt: skip
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "kernels", "autotune"],
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    rev = f"{rev or '?'}{' + uncommitted kernels/autotune changes' if dirty else ''}"
    gpu = f"sm_{arch}{'a' if arch >= 90 else ''}"
    md = [f"# kernel_static: {gpu}, triton {triton.__version__}, headline bf16 M={M} K={K} N={N}", "",
          f"Measured without a GPU by `perf/kernel_static.py --arch {arch}` (git {rev}): the code "
          "each launch compiles to (launcher arguments, JIT specialization, default configs fitted "
          "by `fit_config`); regs/spills from the compile's ptxas -v, SASS by nvdisasm -gi. "
          "Columns: see the script's docstring.", "",
          "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]  # fmt: skip
    md += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    md += ["", "Hot loop by kernel source line (outermost inlined frame; instructions per iteration):", ""]  # fmt: skip
    md += [n for n in map(_note, rows) if n]
    return "\n".join(md) + "\n"


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="90 (sm_90a, wgmma) or 80")
    ap.add_argument("--all", action="store_true", help="every variant the tests compile, not only the headline")  # fmt: skip
    ap.add_argument("--only", default="", help="only variants whose label contains this")
    ap.add_argument("--out", help="markdown path (default perf/results/static/sm<arch>.md; '' for none)")  # fmt: skip
    ap.add_argument("--json", help="write the rows as JSON here ('-': stdout, instead of markdown)")
    ap.add_argument("--dump", help="keep ttgir/ptx/sass/cubin of each variant here")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--quiet", action="store_true", help="print no markdown")
    ap.add_argument("--sass", default="", help="comma-separated families whose SASS is read "
                    "(default: all; the others' SASS fields stay empty)")  # fmt: skip
    a = ap.parse_args(argv)
    os.environ[ARCH_ENV] = str(a.arch)
    _VARIANTS.clear()
    vs = [v for v in variants() if (a.all or v.headline) and a.only in v.label]
    if a.only:  # keep the anchors the selected GEMMs compare with
        keep = {v.label for v in vs} | {v.anchor for v in vs if v.anchor}
        vs = [v for v in variants() if v.label in keep]
    with tempfile.TemporaryDirectory(prefix="kernel_static_") as tmp:
        families = tuple(f.strip() for f in a.sass.split(",")) if a.sass else None
        unknown = set(families or ()) - {v.family for v in variants()}
        if unknown:
            ap.error(f"--sass: no variant of the families {sorted(unknown)}")
        rows = run(a.arch, [v.label for v in vs], a.dump or tmp, a.jobs, sass_families=families)
    if a.json:
        text = json.dumps(rows, indent=1, default=list)
        if a.json == "-":
            print(text)
        else:
            with open(a.json, "w") as f:
                f.write(text)
    if a.json != "-":
        md = markdown(rows, a.arch)
        if not a.quiet:
            print(md)
        out = a.out
        if out is None and not (a.only or a.all):  # the full headline report
            out = os.path.join(REPO, "perf", "results", "static", f"sm{a.arch}.md")
        if out:
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            with open(out, "w") as f:
                f.write(md)
    return rows


if __name__ == "__main__":
    main()
