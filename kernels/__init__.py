"""Raw Triton kernels and their launchers (installed as ``triton_qat.kernels``).

One file per kernel family, each holding its ``@triton.jit`` kernels, the host launchers, and the
plain-torch reference the launchers must equal:

* :mod:`.quantize`      - per-token / per-channel / per-group / per-tensor quantization (codes, qparams,
                          clamp mask, fake-quantized values).
* :mod:`.gemm_int8`     - the forward GEMM: int8 x int8 -> int32 with the dequantizing epilogue, or
                          (per-group weights, ``DEQUANT`` configs) the dequantized 16-bit path.
* :mod:`.gemm_int8_gluon` - the per-channel int8 forward in Gluon (sm_90: TMA ring, int32 wgmma
                          kept in flight), the ``GLUON`` configs' kernel where it can run.
* :mod:`.gemm_float`    - a plain GEMM on dequantized operands with mask / bias epilogues.
* :mod:`.dequantize`    - int8 codes back to the fake-quantized values, bit for bit.
* :mod:`.gemm_backward` - the STE backward GEMMs (dgrad, wgrad) on dequantized operands.
* :mod:`.ste_mask`      - the STE mask applied after a plain ``torch.mm`` (the backward's
                          ``CUBLAS`` configs).
"""
