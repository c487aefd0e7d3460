"""triton_qat: fused Triton kernels for dynamic fake-quantized (QAT) linear layers.

import triton_qat as tq
lin = tq.Linear(4096, 4096, activation=tq.QuantConfig(), weight=tq.QuantConfig(
    bits=4, granularity="per_group", group_size=32, symmetric=True))
y = lin(x)                      # int8 GEMM forward, STE backward from int8 codes
y = tq.fake_quantize(x, tq.QuantConfig())

model = tq.prepare(model)       # every nn.Linear -> tq.Linear, parameters shared
...train...
model = tq.convert(model)       # tq.Linear -> tq.QuantizedLinear (int8 weights, int8 GEMM);
                                # float8 layers -> tq.QuantizedFloat8Linear (e4m3 / int4 weights);
                                # MX / NVFP4 layers -> tq.QuantizedMXLinear (their codes)

model = tq.prepare(model, QATConfig(...))  # a torchao QAT config, one line (torchao optional)
model = tq.from_torchao(model)  # a torchao-prepared model -> triton_qat; tq.to_torchao back
"""

from triton_qat import float8, mx, ops  # noqa: F401  (registers the torch.library ops)
from triton_qat.config import (
    NOT_QUANTIZED,
    Float8Config,
    Float8Int4WeightConfig,
    MXConfig,
    NVFP4Config,
    QuantConfig,
)
from triton_qat.dispatch import backend
from triton_qat.embedding import Embedding, QuantizedEmbedding
from triton_qat.functional import fake_quantize, qat_linear
from triton_qat.linear import Linear
from triton_qat.model import convert, prepare, weight_nbytes
from triton_qat.quantized import QuantizedFloat8Linear, QuantizedLinear
from triton_qat.quantized_mx import QuantizedMXLinear
from triton_qat.torchao_compat import from_torchao, to_torchao

__all__ = [
    "backend",
    "QuantConfig",
    "Float8Config",
    "Float8Int4WeightConfig",
    "MXConfig",
    "NVFP4Config",
    "NOT_QUANTIZED",
    "fake_quantize",
    "qat_linear",
    "Linear",
    "QuantizedLinear",
    "QuantizedFloat8Linear",
    "QuantizedMXLinear",
    "Embedding",
    "QuantizedEmbedding",
    "prepare",
    "convert",
    "weight_nbytes",
    "from_torchao",
    "to_torchao",
]
__version__ = "0.1.0"
