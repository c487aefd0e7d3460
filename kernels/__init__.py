"""Raw Triton kernels and their launchers (installed as ``triton_qat.kernels``).

One file per kernel family, each holding its ``@triton.jit`` kernels, the host launchers, and the
plain-torch reference the launchers must equal:

* :mod:`.quantize`      - per-token / per-channel / per-group / per-tensor quantization (codes, qparams,
                          clamp mask, fake-quantized values).
* :mod:`.gemm_int8`     - the forward int8 x int8 -> int32 GEMM with the dequantizing epilogue.
* :mod:`.gemm_backward` - the STE backward GEMMs that dequantize saved int8 codes on the fly.
"""
