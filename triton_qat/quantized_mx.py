"""``QuantizedMXLinear``: what ``tq.convert`` makes of an MX / NVFP4 :class:`triton_qat.Linear`
(docs/numerics.md "Converting").

The weight is stored as its MX / NVFP4 codes (float8 elements, or e2m1 packed two per byte) and
block scales, computed once at convert time by the plain-torch twin of the fake quantization
(kernels/quantize_mx_torch.py, the kernels' bits); each forward dequantizes them with the twin's
last step and runs the prepared layer's GEMM (:func:`triton_qat.mx.mx_linear_on_weight`), so the
output is the prepared layer's eval output, bit for bit.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from triton_qat.checks import check_input, check_no_grad_transform
from triton_qat.config import MXConfig, NVFP4Config
from triton_qat.kernels.quantize_mx_torch import (
    e2m1_codes,
    e2m1_values,
    mx_codes_torch,
    mx_dequantize_torch,
    nvfp4_codes_torch,
    nvfp4_dequantize_torch,
)
from triton_qat.linear import _autocast_output  # the prepared layer's autocast rule, shared
from triton_qat.mx import MX_CONFIGS, check_mx_configs, mx_linear_on_weight
from triton_qat.quantized import (
    QuantizedLinearModule,
    check_count,
    check_float_dtype,
    needs_input_grad,
    pack_int4,
    unpack_nibbles,
    with_input_grad,
)

_FP4 = torch.float4_e2m1fn_x2
_NO_FP16 = (
    "MX / NVFP4 fake quantization takes float32 or bfloat16 (torchao's to_mx / to_nvfp4 reject "
    "float16, so there are no numerics to follow)"
)


def _packed(config: MXConfig | NVFP4Config) -> bool:
    """Whether the elements are e2m1, stored two per byte (MXFP4, NVFP4)."""
    return isinstance(config, NVFP4Config) or config.dtype == _FP4


@torch.no_grad()
def mx_weight_codes(
    weight: Tensor, config: MXConfig | NVFP4Config
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The stored form of a weight [N, K] (fp32 / bf16) fake-quantized with ``config``:
    (codes, block scales, per-tensor scale or None), as :class:`QuantizedMXLinear` holds them.

    MX: codes in the element dtype [N, K] (float8) or uint8 [N, ceil(K/2)] (e2m1, element 2j in
    the low nibble), scales uint8 [N, K / block_size] (e8m0 biased exponents). NVFP4: uint8
    e2m1 codes [N, ceil(K/2)], float8_e4m3fn scales [N, K / 16], the fp32 0-dim per-tensor scale
    when the config uses one (the rounding gives no e2m1 NaN; see :func:`mx_dequantize`)."""
    N, K = weight.shape
    if isinstance(config, NVFP4Config):
        q, s8, pts = nvfp4_codes_torch(weight, config.use_per_tensor_scale)
        codes = pack_int4(e2m1_codes(q).reshape(N, K))
        return codes, s8.reshape(N, -1).to(torch.float8_e4m3fn), pts
    q, e = mx_codes_torch(weight, config.elem, config.block_size, config.scaling_mode)
    q = q.reshape(N, K)
    codes = pack_int4(e2m1_codes(q)) if config.dtype == _FP4 else q.to(config.dtype)
    return codes, e.reshape(N, -1).to(torch.uint8), None


def mx_dequantize(
    codes: Tensor,
    scale: Tensor,
    tensor_scale: Tensor | None,
    config: MXConfig | NVFP4Config,
    K: int,
    dtype: torch.dtype,
) -> Tensor:
    """The fake-quantized weight [N, K] in ``dtype`` from :func:`mx_weight_codes`' tensors: the
    twin's last step (``dt(q * 2^(e - 127))``; NVFP4 ``dt(q * s8)`` / ``dt(q * (pts * s8))``),
    the bits of the fake quantization of a weight of that dtype.

    e2m1 has no NaN and the rounding gives none (a NaN scaled value takes torchao's code for
    its bits); MX float8 codes keep their NaNs, and a block whose e8m0 scale is NaN is NaN."""
    N = codes.shape[0]
    if isinstance(config, NVFP4Config):
        q = e2m1_values(unpack_nibbles(codes, K)).reshape(N, -1, 16)
        s8 = scale.to(torch.float32).unsqueeze(-1)
        return nvfp4_dequantize_torch(q, s8, tensor_scale, dtype)
    if config.dtype == _FP4:
        q = e2m1_values(unpack_nibbles(codes, K))
    else:
        q = codes.to(torch.float32)
    e = scale.to(torch.int32).unsqueeze(-1)
    return mx_dequantize_torch(q.reshape(N, -1, config.block_size), e, dtype)


class QuantizedMXLinear(QuantizedLinearModule):
    """MX / NVFP4 inference linear layer (the input gets the prepared layer's gradient, the
    buffers none): what ``tq.convert`` makes of a
    :class:`triton_qat.Linear` with :class:`MXConfig` or :class:`NVFP4Config` configs.

    Buffers (N = out_features, K = in_features, B = the weight's block size):

    * MXFP8 (``MXConfig(torch.float8_e4m3fn / float8_e5m2)``): ``weight_codes`` in that float8
      dtype [N, K]; ``weight_scale`` uint8 [N, K / B] (e8m0: biased exponents, 255 = NaN).
    * MXFP4 (``MXConfig(torch.float4_e2m1fn_x2)``): ``weight_codes`` uint8 [N, ceil(K/2)] (e2m1
      codes, two per byte, element 2j in the low nibble); ``weight_scale`` as MXFP8's.
    * NVFP4: ``weight_codes`` as MXFP4's; ``weight_scale`` float8_e4m3fn [N, K / 16];
      ``weight_tensor_scale`` fp32 0-dim (``use_per_tensor_scale=True`` only, else None).
    * ``bias`` [N] in ``dtype`` or None.

    The forward dequantizes the codes in ``weight_dtype`` (the twin's last step: the bits of
    the prepared layer's fake-quantized weight), then runs the prepared layer's GEMM
    (:func:`triton_qat.mx.mx_linear_on_weight`: the input fake-quantized with ``activation``,
    ``addmm`` / ``mm`` in the input's dtype), so its output is bit-identical to the prepared
    layer's in eval mode. Input [..., K] fp32 / bf16 (empty too; fp16: ValueError, as the
    prepared layer) -> output [..., N] in the input's dtype; under autocast the autocast dtype.
    Dtype casts, ``weight_dtype`` and the state dict follow :class:`QuantizedLinear`'s rules
    (codes and scales keep their dtypes; a module cast to fp16 raises at its forward).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        activation: MXConfig | NVFP4Config | None = None,
        weight: MXConfig | NVFP4Config | None = None,
        device=None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        """``weight`` (default ``MXConfig()``) / ``activation`` (default: the weight's config):
        the prepared layer's configs, both MX or both NVFP4, their block sizes dividing
        ``in_features``; ``dtype``: the prepared weight's dtype (fp32 / bf16)."""
        super().__init__()
        check_count(in_features, "in_features")
        check_count(out_features, "out_features")
        check_float_dtype(dtype, "dtype")
        if dtype == torch.float16:
            raise ValueError(f"dtype: {_NO_FP16}, got torch.float16")
        weight = MXConfig() if weight is None else weight
        if not isinstance(weight, MX_CONFIGS):
            raise TypeError(
                f"weight: expected a triton_qat.MXConfig or NVFP4Config, got {weight!r}"
            )
        activation = weight if activation is None else activation
        check_mx_configs(activation, weight, in_features)
        self.in_features, self.out_features = in_features, out_features
        self.activation_config, self.weight_config = activation, weight
        self.weight_dtype = dtype
        self._register_weight_buffers(device)
        self.register_buffer(
            "bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None
        )

    def _register_weight_buffers(self, device) -> None:
        """``weight_codes``, ``weight_scale`` and ``weight_tensor_scale`` (see the class
        docstring), zeros (codes) and ones (scales) until loaded."""
        N, K, cfg = self.out_features, self.in_features, self.weight_config
        if _packed(cfg):
            codes = torch.zeros(N, (K + 1) // 2, dtype=torch.uint8, device=device)
        else:
            codes = torch.zeros(N, K, dtype=cfg.dtype, device=device)
        nvfp4 = isinstance(cfg, NVFP4Config)
        scale_dtype = torch.float8_e4m3fn if nvfp4 else torch.uint8
        scale = torch.ones(N, K // cfg.block_size, device=device).to(scale_dtype)
        self.register_buffer("weight_codes", codes)
        self.register_buffer("weight_scale", scale)
        if nvfp4 and cfg.use_per_tensor_scale:
            self.register_buffer("weight_tensor_scale", torch.ones((), device=device))
        else:
            self.weight_tensor_scale = None

    @classmethod
    @torch.no_grad()
    def from_qat(cls, lin: nn.Module) -> QuantizedMXLinear:
        """Freeze a trained MX / NVFP4 :class:`triton_qat.Linear` into its codes and scales."""
        w = lin.weight.detach()
        new = cls._empty_like(lin)
        codes, scale, tensor_scale = mx_weight_codes(w, lin.weight_config)
        new.weight_codes.copy_(codes)
        new.weight_scale.copy_(scale)
        if tensor_scale is not None:
            new.weight_tensor_scale.copy_(tensor_scale)
        if lin.bias is not None:
            new.bias.copy_(lin.bias.detach())
        return new

    def _check_float_dtype(self) -> None:
        """As :class:`QuantizedModule`'s, and ValueError for fp16 (the prepared layer cast to
        fp16 cannot fake-quantize its weight either)."""
        super()._check_float_dtype()
        if self.weight_dtype == torch.float16:
            raise ValueError(
                f"weight_dtype: {_NO_FP16}; {type(self).__name__} was cast to torch.float16: "
                "cast it with .float() or .bfloat16()"
            )

    def dequantized_weight(self) -> Tensor:
        """The fake-quantized weight [N, K] in ``weight_dtype`` (:func:`mx_dequantize`)."""
        return mx_dequantize(self.weight_codes, self.weight_scale, self.weight_tensor_scale,
                             self.weight_config, self.in_features, self.weight_dtype)  # fmt: skip

    def forward(self, input: Tensor) -> Tensor:
        check_input(input, self.in_features, self.weight_codes.device)
        self._check_float_dtype()
        check_no_grad_transform("triton_qat.QuantizedMXLinear", input)
        grad = needs_input_grad(input)  # the addmm would keep the dequantized weight
        out = mx_linear_on_weight(input.detach() if grad else input, self.dequantized_weight(),
                                  self.bias, self.activation_config)  # fmt: skip
        if grad:  # the activation's gradient is the identity (torchao's)
            weight_of = functools.partial(mx_dequantize, config=self.weight_config,
                                          K=self.in_features, dtype=self.weight_dtype)  # fmt: skip
            out = with_input_grad(input, out, "identity", weight_of, self.weight_codes,
                                  self.weight_scale, self.weight_tensor_scale)  # fmt: skip
        return _autocast_output(out)
