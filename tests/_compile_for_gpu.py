"""Compile every kernel variant for NVIDIA GPUs without one (run by test_gpu_compile.py in a
subprocess with TRITON_INTERPRET=0): Triton's ptxas builds cubins for sm_80 / sm_90 on any host.
Prints one line per variant: "OK <tag> <fma count>" or "FAIL <tag> <error>"."""

import itertools
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from triton_qat.autotune.space import DEFAULTS, fit_config
from triton_qat.kernels.gemm_backward import _dgrad_kernel, _wgrad_kernel
from triton_qat.kernels.gemm_int8 import _int8_linear_kernel, fwd_mode
from triton_qat.kernels.quantize import _quantize_rows_kernel

PTR = {0: "*fp32", 1: "*fp16", 2: "*bf16"}


def build(fn, sig, consts, opts, tag, arch):
    sig = {**sig, **dict.fromkeys(consts, "constexpr")}
    try:
        k = triton.compile(
            ASTSource(fn, sig, consts), target=GPUTarget("cuda", arch, 32), options=opts
        )
        ptx = k.asm["ptx"]
        fma, div = ptx.count("fma.rn.f32"), ptx.count("div.rn.f32")
        kib = round(k.metadata.shared / 1024)
        print(f"OK {tag} sm{arch} fma={fma} div_rn={div} shared_kib={kib}", flush=True)
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
                      DT=dt, DIV_BY_RECIP=True, NAN_ZP=0, PACK_MASK=pack, WRITE_CODES=True, WRITE_Y=True,
                      BLOCK_R=4, BLOCK_C=512)  # fmt: skip
        build(_quantize_rows_kernel, {**q_sig, "x_ptr": PTR[dt], "y_ptr": PTR[dt]}, consts,
              dict(num_warps=4, enable_fp_fusion=False),
              f"quantize dt={dt} sym={sym} given={given} pack={pack}", arch)  # fmt: skip
    g_sig = dict(xq_ptr="*i8", sx_ptr="*fp32", zpx_ptr="*i32", wq_ptr="*i8", sw_ptr="*fp32",
                 wsum_ptr="*i32", bias_ptr="*fp32", out_ptr="", M="i32", N="i32", K="i32",
                 GROUP="i32", stride_xm="i32", stride_wn="i32", stride_om="i32")  # fmt: skip
    fwd = DEFAULTS["fwd"]
    for dt, (K, group) in itertools.product(
        (0, 1, 2), ((4096, 4096), (4096, 128), (4096, 32), (4096, 8))
    ):
        mode = fwd_mode(K, group)
        fitted = fit_config("fwd", fwd, K, group)  # what runs with the default
        bk, stages = fitted["BLOCK_K"], fitted["num_stages"]
        consts = dict(HAS_BIAS=True, ASYM=True, MODE=mode, DT=dt, BLOCK_M=fwd["BLOCK_M"],
                      BLOCK_N=fwd["BLOCK_N"], BLOCK_K=bk, GROUP_M=8)  # fmt: skip
        build(_int8_linear_kernel, {**g_sig, "out_ptr": PTR[dt]}, consts,
              dict(num_warps=fwd["num_warps"], num_stages=stages),
              f"default fwd dt={dt} mode={mode} group={group}", arch)  # fmt: skip
    for dt in (0, 1, 2):
        d_sig = dict(dy_ptr=PTR[dt], wq_ptr="*i8", sw_ptr="*fp32", mask_ptr="*u8", dx_ptr=PTR[dt],
                     M="i32", N="i32", K="i32", GROUP="i32", stride_dym="i32", stride_dyn="i32",
                     stride_wn="i32", stride_dxm="i32")  # fmt: skip
        d = DEFAULTS["dgrad"]
        consts = dict(DT=dt, DOT_FP32=False, BLOCK_M=d["BLOCK_M"], BLOCK_N=d["BLOCK_N"],
                      BLOCK_K=d["BLOCK_K"], GROUP_M=8)  # fmt: skip
        build(_dgrad_kernel, d_sig, consts, dict(num_warps=d["num_warps"], num_stages=d["num_stages"]),
              f"default dgrad dt={dt}", arch)  # fmt: skip
        w_sig = dict(dy_ptr=PTR[dt], xq_ptr="*i8", sx_ptr="*fp32", zpx_ptr="*i32", mask_ptr="*u8",
                     dw_ptr=PTR[dt], db_ptr=PTR[dt], M="i32", N="i32", K="i32", stride_dym="i32",
                     stride_dyn="i32", stride_xm="i32", stride_dwn="i32")  # fmt: skip
        w = DEFAULTS["wgrad"]
        consts = dict(HAS_BIAS=True, DT=dt, DOT_FP32=False, BLOCK_M=w["BLOCK_M"],
                      BLOCK_N=w["BLOCK_N"], BLOCK_K=w["BLOCK_K"], GROUP_M=8)  # fmt: skip
        build(_wgrad_kernel, w_sig, consts, dict(num_warps=w["num_warps"], num_stages=w["num_stages"]),
              f"default wgrad dt={dt}", arch)  # fmt: skip


if __name__ == "__main__":
    main(int(sys.argv[1]))
