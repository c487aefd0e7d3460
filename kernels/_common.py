"""Helpers shared by every kernel family: interpreter detection, dtype codes, exact rounding.

The ``@triton.jit`` helpers here implement the tricks docs/numerics.md "Known traps" asks for, so
that the kernels are bit-exact both on the GPU and under ``TRITON_INTERPRET=1``. Like everything in
``kernels/``, this file imports nothing from ``triton_qat`` or ``triton_qat.autotune``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Triton decides at decoration time whether @triton.jit functions are interpreted, so this is read
# once, at import, exactly as Triton does.
INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"
# Tests set this so every output a launcher allocates starts as NaN / a sentinel pattern: an element a
# kernel forgets to write can then never pass a comparison (FLA does the same).
POISON: bool = os.environ.get("TRITON_QAT_POISON", "0") == "1"

# Integer codes for the input dtype, passed to kernels as a constexpr.
DT_FP32, DT_FP16, DT_BF16 = 0, 1, 2
_DT_CODE = {torch.float32: DT_FP32, torch.float16: DT_FP16, torch.bfloat16: DT_BF16}
FLOAT_DTYPES = tuple(_DT_CODE)


def dtype_code(dtype: torch.dtype) -> int:
    """The constexpr code of a floating dtype (fp32, fp16 or bf16)."""
    return _DT_CODE[dtype]


def new_empty(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """``torch.empty`` for kernel outputs; poisoned when ``TRITON_QAT_POISON=1``."""
    return empty(shape, dtype=dtype, device=device)


def _poisoned_empty(shape, *, dtype: torch.dtype, device) -> torch.Tensor:
    t = torch.empty(shape, dtype=dtype, device=device)
    return t.fill_(float("nan") if dtype.is_floating_point else 0x5A)


# ``empty(shape, dtype=..., device=...)``: what launchers allocate outputs with; torch.empty itself
# (one call on the hot path) unless the tests poison outputs.
empty = _poisoned_empty if POISON else torch.empty


def capability_major(t: torch.Tensor) -> int:
    """The major compute capability of t's GPU (0 for a CPU tensor): launchers pick forms whose
    instructions only newer GPUs have (sm_90's 16x2 SIMD integer maxima) with it."""
    return device_major(t.device) if t.is_cuda else 0


def device_major(device: torch.device) -> int:
    """The major compute capability of a device (0 unless CUDA)."""
    return device_capability(device)[0]


def device_capability(device: torch.device) -> tuple[int, int]:
    """The compute capability (major, minor) of a device ((0, 0) unless CUDA). Asked once per GPU
    (each launch asked, ~25 us on an H200 host); a patched query (perf/kernel_static.py's fake
    GPU) is asked afresh."""
    if device.type != "cuda":
        return (0, 0)
    query = torch.cuda.get_device_capability
    key = (device.index, query)
    cap = _CAPABILITY.get(key)
    if cap is None:
        cap = _CAPABILITY[key] = tuple(query(device))
    return cap


_CAPABILITY: dict[tuple, tuple[int, int]] = {}


def weight_narrower(w_dtype: torch.dtype | None, dtype: torch.dtype | None) -> bool:
    """Whether a weight of ``w_dtype`` has fewer mantissa bits than inputs of ``dtype`` (bf16 with
    fp16 / fp32 inputs, fp16 with fp32): its fake-quantized values ``dt_w(q * s)`` are rounded
    more coarsely than x's dtype resolves, so the int8 GEMM (which scales the exact integer sum
    and never forms them) would not compute the product of the documented values
    (docs/numerics.md "Weights narrower than the input"); the dequantized path does."""
    return (
        w_dtype is not None
        and dtype is not None
        and torch.finfo(w_dtype).eps > torch.finfo(dtype).eps
    )


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) of positive ints on the host (``triton.cdiv`` is a constexpr function object
    costing ~1.4 us a call in Triton 3.9)."""
    return -(-a // b)


def dot_in_fp32(dtype: torch.dtype) -> bool:
    """Under the interpreter, ``tl.dot`` on bf16 multiplies raw bit patterns: upcast there (exact)."""
    return INTERPRET and dtype == torch.bfloat16


# fp32 -> bf16: the GPU's cvt.rn.bf16.f32 rounds to nearest even (one instruction); the
# interpreter's cast truncates (docs/numerics.md "Known traps"), so there a bit-level rounding
# (six integer instructions on a GPU) stands in for it. Read at decoration time, like INTERPRET.
NATIVE_BF16_CAST: tl.constexpr = tl.constexpr(not INTERPRET)


# Inline PTX where the compiled code is NVIDIA's (never under the interpreter, which runs no asm,
# nor on ROCm), each use beside a plain-Triton form that computes the same bits: that form is what
# the CPU tests run. Read at decoration time, like INTERPRET.
PTX_ASM: tl.constexpr = tl.constexpr(not INTERPRET and torch.version.hip is None)
# Compiled for a GPU (not interpreted): picks forms that compile well but interpret slowly.
COMPILED: tl.constexpr = tl.constexpr(not INTERPRET)


@triton.jit
def round_to_bf16(v):
    """fp32 -> nearest-even bf16 value, kept in fp32 (NaN stays NaN). The hardware cast on a GPU;
    bit-level under the interpreter, whose ``.to(tl.bfloat16)`` truncates."""
    if NATIVE_BF16_CAST:
        return v.to(tl.bfloat16).to(tl.float32)
    else:
        bits = v.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return tl.where(v != v, v, rounded.to(tl.float32, bitcast=True))


@triton.jit
def round_to_dt(v, DT: tl.constexpr):
    """Round an fp32 value to the input dtype (rne) and return it as fp32: emulates one op "in dt"."""
    if DT == 1:
        return v.to(tl.float16).to(tl.float32)
    elif DT == 2:
        return round_to_bf16(v)
    else:
        return v


@triton.jit
def cast_to_dt(v, DT: tl.constexpr):
    """fp32 -> the storage dtype with round-to-nearest-even on the GPU and under the interpreter."""
    if DT == 1:
        return v.to(tl.float16)
    elif DT == 2:
        if NATIVE_BF16_CAST:
            return v.to(tl.bfloat16)
        else:  # the interpreter's fp32 -> bf16 cast truncates and mangles subnormals: the top
            # half of the rounded bits is the bf16
            b = round_to_bf16(v).to(tl.uint32, bitcast=True) >> 16
            return b.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return v


@triton.jit
def rint(v):
    """Round half to even for fp32 (libdevice.round rounds halves away from zero; libdevice.rint
    returns nothing under the interpreter). Adding and subtracting 1.5 * 2**23 is exact rne for
    |v| < 2**22; v is clamped first so NaN-free huge values stay in range (their code clamps)."""
    v = tl.minimum(tl.maximum(v, -4194304.0), 4194304.0)
    return (v + 12582912.0) - 12582912.0


@triton.jit
def mul_rn(a, b):
    """fp32 ``a * b`` rounded on its own, never contracted with an add that follows into one FMA
    (which would skip this rounding): on NVIDIA GPUs an explicit ``mul.rn.f32`` (PTX never
    contracts an instruction that has a rounding modifier), whatever ``enable_fp_fusion`` says:
    ``torch.compile`` launches user kernels with Triton's default, fusion on. The interpreter's
    numpy rounds every operation anyway. Args broadcast as elementwise ops do."""
    if PTX_ASM:
        return tl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=f,f,f", [a, b],
                                         dtype=tl.float32, is_pure=True, pack=1)  # fmt: skip
    else:
        return a * b


@triton.jit
def div_scalar(a, d: tl.constexpr, DIV_BY_RECIP: tl.constexpr):
    """``a / d`` for a Python-float divisor exactly as PyTorch computes it on the input's device:
    CUDA multiplies by the fp32 reciprocal (a CPU scalar divisor), the CPU divides."""
    if DIV_BY_RECIP:
        return a * tl.div_rn(1.0, tl.full(a.shape, d, tl.float32))
    else:
        return tl.div_rn(a, tl.full(a.shape, d, tl.float32))


@triton.jit
def swizzle(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Grouped program ordering so neighbouring programs share operand tiles in L2."""
    n_pid_m = tl.cdiv(M, BLOCK_M)
    n_pid_n = tl.cdiv(N, BLOCK_N)
    n_in_group = GROUP_M * n_pid_n
    group_id = pid // n_in_group
    first_m = group_id * GROUP_M
    size_m = tl.minimum(n_pid_m - first_m, GROUP_M)
    pid_m = first_m + ((pid % n_in_group) % size_m)
    pid_n = (pid % n_in_group) // size_m
    return pid_m, pid_n
