"""Compile every kernel variant for NVIDIA GPUs without one (run by test_gpu_compile.py in a
subprocess with TRITON_INTERPRET=0): Triton's ptxas builds cubins for sm_80 / sm_90 on any host.
Prints one line per variant: "OK <tag> <fma count>" or "FAIL <tag> <error>"."""

import itertools
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from triton_qat.kernels.gemm_backward import _dgrad_kernel, _wgrad_kernel
from triton_qat.kernels.gemm_int8 import _int8_linear_kernel
from triton_qat.kernels.quantize import _quantize_rows_kernel

PTR = {0: "*fp32", 1: "*fp16", 2: "*bf16"}


def build(fn, sig, consts, opts, tag, arch):
    sig = {**sig, **dict.fromkeys(consts, "constexpr")}
    try:
        k = triton.compile(
            ASTSource(fn, sig, consts), target=GPUTarget("cuda", arch, 32), options=opts
        )
        ptx = k.asm["ptx"]
        print(
            f"OK {tag} sm{arch} fma={ptx.count('fma.rn.f32')} div_rn={ptx.count('div.rn.f32')}",
            flush=True,
        )
    except Exception as e:  # noqa: BLE001 - reported, the test fails on it
        print(
            f"FAIL {tag} sm{arch} {type(e).__name__}: {' | '.join(str(e).splitlines()[-4:])[:400]}",
            flush=True,
        )


def main(arch: int) -> None:
    q_sig = dict(x_ptr="", stride_xr="i32", stride_xc="i32", codes_ptr="*i8", scale_ptr="*fp32",
                 zp_ptr="*i32", mask_ptr="*u8", sum_ptr="*i32", y_ptr="", R="i32", C="i32",
                 GROUP="i32", eps="fp32")  # fmt: skip
    for dt, sym, given, pack in itertools.product(
        (0, 1, 2), (False, True), (False, True), (False, True)
    ):
        rng = (0, 255, -128) if given and not sym else (-128, 127, 0)
        consts = dict(QMIN=rng[0], QMAX=rng[1], CODE_OFFSET=rng[2], SYMMETRIC=sym, HAS_QPARAMS=given,
                      DT=dt, DIV_BY_RECIP=True, PACK_MASK=pack, WRITE_CODES=True, WRITE_Y=True,
                      BLOCK_R=4, BLOCK_C=512)  # fmt: skip
        build(_quantize_rows_kernel, {**q_sig, "x_ptr": PTR[dt], "y_ptr": PTR[dt]}, consts,
              dict(num_warps=4, enable_fp_fusion=False),
              f"quantize dt={dt} sym={sym} given={given} pack={pack}", arch)  # fmt: skip
    g_sig = dict(xq_ptr="*i8", sx_ptr="*fp32", zpx_ptr="*i32", wq_ptr="*i8", sw_ptr="*fp32",
                 wsum_ptr="*i32", bias_ptr="*fp32", out_ptr="", M="i32", N="i32", K="i32",
                 GROUP="i32", stride_xm="i32", stride_wn="i32", stride_om="i32")  # fmt: skip
    for dt, mode, bk in [(2, 0, 128), (1, 0, 128), (0, 0, 64), (2, 1, 32), (2, 1, 128), (2, 2, 64)]:
        consts = dict(HAS_BIAS=True, ASYM=True, MODE=mode, DT=dt, BLOCK_M=128, BLOCK_N=128,
                      BLOCK_K=bk, GROUP_M=8)  # fmt: skip
        build(_int8_linear_kernel, {**g_sig, "out_ptr": PTR[dt]}, consts,
              dict(num_warps=8, num_stages=3), f"fwd dt={dt} mode={mode} bk={bk}", arch)  # fmt: skip
    for dt in (0, 1, 2):
        d_sig = dict(dy_ptr=PTR[dt], wq_ptr="*i8", sw_ptr="*fp32", mask_ptr="*u8", dx_ptr=PTR[dt],
                     M="i32", N="i32", K="i32", GROUP="i32", stride_dym="i32", stride_dyn="i32",
                     stride_wn="i32", stride_dxm="i32")  # fmt: skip
        consts = dict(DT=dt, DOT_FP32=False, BLOCK_M=128, BLOCK_N=64, BLOCK_K=128, GROUP_M=8)
        build(_dgrad_kernel, d_sig, consts, dict(num_warps=8, num_stages=3), f"dgrad dt={dt}", arch)
        w_sig = dict(dy_ptr=PTR[dt], xq_ptr="*i8", sx_ptr="*fp32", zpx_ptr="*i32", mask_ptr="*u8",
                     dw_ptr=PTR[dt], db_ptr=PTR[dt], M="i32", N="i32", K="i32", stride_dym="i32",
                     stride_dyn="i32", stride_xm="i32", stride_dwn="i32")  # fmt: skip
        consts = dict(HAS_BIAS=True, DT=dt, DOT_FP32=False, BLOCK_M=64, BLOCK_N=128, BLOCK_K=128,
                      GROUP_M=8)  # fmt: skip
        build(_wgrad_kernel, w_sig, consts, dict(num_warps=8, num_stages=3), f"wgrad dt={dt}", arch)


if __name__ == "__main__":
    main(int(sys.argv[1]))
