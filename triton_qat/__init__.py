"""triton_qat: fused Triton kernels for dynamic fake-quantized (QAT) linear layers.

import triton_qat as tq
lin = tq.Linear(4096, 4096, activation=tq.QuantConfig(), weight=tq.QuantConfig(
    bits=4, granularity="per_group", group_size=32, symmetric=True))
y = lin(x)                      # int8 GEMM forward, STE backward from int8 codes
y = tq.fake_quantize(x, tq.QuantConfig())

model = tq.prepare(model)       # every nn.Linear -> tq.Linear, parameters shared
...train...
model = tq.convert(model)       # tq.Linear -> tq.QuantizedLinear (int8 weights, int8 GEMM)
"""

from triton_qat import ops  # noqa: F401  (registers the torch.library ops)
from triton_qat.config import QuantConfig
from triton_qat.dispatch import backend
from triton_qat.functional import fake_quantize, qat_linear
from triton_qat.linear import Linear
from triton_qat.model import convert, prepare, weight_nbytes
from triton_qat.quantized import QuantizedLinear

__all__ = [
    "backend",
    "QuantConfig",
    "fake_quantize",
    "qat_linear",
    "Linear",
    "QuantizedLinear",
    "prepare",
    "convert",
    "weight_nbytes",
]
__version__ = "0.1.0"
