"""``QuantizedLinear``: real int8 inference after QAT (what ``tq.convert`` swaps in).

Weights are stored as int8 codes (bits <= 4: two codes packed per byte) with fp32 scales; the input
is quantized per token (or per tensor) at run time and multiplied on the int8 GEMM of the training
forward, so the eval output equals the prepared model's eval output (QAT trained on exactly this
arithmetic). Layers trained with torch.ao numerics quantize activations per tensor with fp32
qparams from the current input, as torch.ao's dynamic quantized Linear does; that equals the
prepared model's eval output while its (memoryless) activation observer is enabled.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn

from triton_qat import ao
from triton_qat import calls as _ops  # the ops, skipping the dispatcher in plain eager code
from triton_qat.checks import check_input
from triton_qat.config import DEFAULT_ACTIVATION, DEFAULT_WEIGHT, NOT_QUANTIZED, QuantConfig
from triton_qat.dispatch import activation_sum_group
from triton_qat.ops import float_linear
from triton_qat.spec import ao_spec, spec_for


def pack_int4(codes: Tensor) -> Tensor:
    """int8 codes in [-8, 7], [N, K] -> uint8 [N, ceil(K/2)]: element 2j in the low nibble."""
    N, K = codes.shape
    u = (codes.to(torch.int16) & 0xF).to(torch.uint8)
    if K % 2:
        u = torch.nn.functional.pad(u, (0, 1))
    return u[:, 0::2] | (u[:, 1::2] << 4)


def unpack_int4(packed: Tensor, K: int) -> Tensor:
    """Inverse of :func:`pack_int4`: uint8 [N, ceil(K/2)] -> int8 [N, K] (sign-extended)."""
    lo = (packed & 0xF).to(torch.int8)
    hi = (packed >> 4).to(torch.int8)
    codes = torch.stack([lo, hi], dim=-1).reshape(packed.shape[0], -1)[:, :K]
    return torch.where(codes > 7, codes - 16, codes)


# buffers holding the quantized weight: dtype casts of the module leave them as they are
_QUANT_BUFFERS = frozenset(("weight_codes", "weight_scale", "weight_code_sum", "weight_zero_point"))
# per ``_apply`` function (one per ``.to`` / ``.cuda`` / ``to_empty`` ... call): id(buffer) ->
# weak refs to (buffer, result), so a buffer shared by several modules stays shared
_APPLY_MEMO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _apply_to_buffer(fn, buf: Tensor, keep_dtype: bool, memo: dict) -> Tensor:
    key = (id(buf), keep_dtype)
    hit = memo.get(key)
    if hit is not None and hit[0]() is buf and hit[1]() is not None:
        return hit[1]()
    out = fn(buf)
    if keep_dtype and out.dtype != buf.dtype:
        out = buf.to(device=out.device)  # only the move, if any
    memo[key] = (weakref.ref(buf), weakref.ref(out))
    return out


def apply_sharing_buffers(module: nn.Module, base_apply, fn, recurse: bool, keep_dtype) -> None:
    """``nn.Module._apply`` for modules holding quantized buffers: ``base_apply`` (the parent
    class's ``_apply``) handles parameters and submodules; each buffer then gets ``fn`` with its
    dtype kept where ``keep_dtype(name)`` says so (device moves still move it), and a buffer
    shared with another module (tied weights after ``convert``) stays shared."""
    names = [k for k, b in module._buffers.items() if b is not None]
    held = {k: module._buffers[k] for k in names}
    module._buffers.update(dict.fromkeys(names))
    try:
        base_apply(fn, recurse)
    finally:
        module._buffers.update(held)
    try:
        memo = _APPLY_MEMO.setdefault(fn, {})
    except TypeError:  # fn not weakly referenceable: no sharing across modules
        memo = {}
    for k in names:
        module._buffers[k] = _apply_to_buffer(fn, held[k], keep_dtype(k), memo)


def dequantize_weight(codes: Tensor, scale: Tensor, zero_point: Tensor | None, dtype) -> Tensor:
    """The fake-quantized weight from its codes [N, K], scales [N, G] and zero points [N, G] (or
    None), in ``dtype``: torchao's ``(dt(q) - dt(zp)) * s`` then ``dt``, the bits the quantize
    kernel's fake-quantized values have."""
    N, K = codes.shape
    G = scale.shape[1]
    q = codes.reshape(N, G, K // G).to(dtype)
    if zero_point is not None:
        q = q - zero_point.reshape(N, G, 1).to(dtype)
    return (q * scale.reshape(N, G, 1)).to(dtype).reshape(N, K)


class QuantizedLinear(nn.Module):
    """Int8 inference linear layer (no gradients).

    Buffers: ``weight_codes`` int8 [N, K] (or uint8 [N, ceil(K/2)] when ``weight_bits <= 4``),
    ``weight_scale`` fp32 [N, G], ``weight_code_sum`` int32 [N, G], ``weight_zero_point`` int32
    [N, G] (asymmetric weights only), ``bias`` [N] or None. Input [..., K] fp32 / fp16 / bf16 ->
    output [..., N] in the input's dtype. A weight-only layer (``activation=NOT_QUANTIZED``)
    dequantizes the weight in ``dtype`` (the trained weight's) and runs a float GEMM in the
    input's dtype, as the prepared layer does.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        activation: QuantConfig = DEFAULT_ACTIVATION,
        weight: QuantConfig = DEFAULT_WEIGHT,
        activation_range: tuple[int, int] | None = None,
        device=None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.activation_config, self.weight_config = activation, weight
        # torch.ao layers quantize activations per tensor with their own (e.g. quint8) range
        # torch.ao layers (activation_range given) quantize activations per tensor with fp32
        # qparams like torch.ao's dynamic quantized Linear; torchao layers in the input dtype
        self.ao_activation = activation_range is not None
        self.weight_only = activation is NOT_QUANTIZED
        if self.weight_only:
            self.activation_range = None
        else:
            self.activation_range = activation_range or (activation.qmin, activation.qmax)
        self.weight_dtype = dtype
        self.packed = weight.bits <= 4
        n_groups = in_features // spec_for(weight).group_for(in_features)
        code_cols = (in_features + 1) // 2 if self.packed else in_features
        code_dtype = torch.uint8 if self.packed else torch.int8
        self.register_buffer(
            "weight_codes", torch.zeros(out_features, code_cols, dtype=code_dtype, device=device)
        )
        self.register_buffer("weight_scale", torch.ones(out_features, n_groups, device=device))
        self.register_buffer(
            "weight_code_sum", torch.zeros(out_features, n_groups, dtype=torch.int32, device=device)
        )
        if not weight.symmetric:
            self.register_buffer(
                "weight_zero_point",
                torch.zeros(out_features, n_groups, dtype=torch.int32, device=device),
            )
        else:
            self.weight_zero_point = None
        self.register_buffer(
            "bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None
        )

    @classmethod
    @torch.no_grad()
    def from_qat(cls, lin: nn.Module) -> QuantizedLinear:
        """Freeze a trained :class:`triton_qat.Linear` into int8 codes with its exact numerics."""
        w = lin.weight.detach()
        K = lin.in_features
        if lin.uses_ao_numerics:
            w_fq, a_fq = lin.weight_fake_quant, lin.activation_post_process
            w_scale, _ = (
                ao.observe(w_fq, w) if w_fq.observer_enabled[0] == 1 else (w_fq.scale, None)
            )
            qmin, qmax = w_fq.quant_min, w_fq.quant_max
            wcfg = QuantConfig(bits=8, granularity="per_channel", symmetric=True)
            act = QuantConfig(granularity="per_tensor")
            a_range = (a_fq.quant_min, a_fq.quant_max)
            scale = w_scale.to(torch.float32).reshape(-1, 1).expand(w.shape[0], 1)
            codes, scale, _, _, code_sum = _ops.quantize(
                w, **ao_spec(qmin, qmax, symmetric=True).quantize_args(K), pack_mask=False, scale=scale,
                zero_point=None,
            )  # fmt: skip
        else:
            wcfg, act, a_range = lin.weight_config, lin.activation_config, None
            w_spec = spec_for(wcfg)
            learned = lin.weight_scale.detach().float() if wcfg.range_learning else None
            codes, scale, zero_point, _, code_sum = _ops.quantize(
                w, **w_spec.quantize_args(K), pack_mask=False, scale=learned, zero_point=None
            )
            if w_spec.per_tensor:
                wcfg = QuantConfig(bits=wcfg.bits, granularity="per_channel", symmetric=True)
        new = cls(
            K,
            lin.out_features,
            lin.bias is not None,
            activation=act,
            weight=wcfg,
            activation_range=a_range,
            device=w.device,
            dtype=w.dtype,
        )
        new.weight_codes.copy_(pack_int4(codes) if new.packed else codes)
        new.weight_scale.copy_(scale)
        new.weight_code_sum.copy_(code_sum)
        if new.weight_zero_point is not None:
            new.weight_zero_point.copy_(zero_point)
        if lin.bias is not None:
            new.bias.copy_(lin.bias.detach())
        return new

    def _apply(self, fn, recurse=True):
        """What ``.to`` / ``.cuda`` / ``.half`` / ``.type`` / ``to_empty`` ... run: as in
        ``nn.Module``, except that (1) dtype casts leave the codes, scales and code sums in their
        own dtypes (``.to(torch.bfloat16)`` casts only the bias; device moves move everything),
        and (2) a buffer shared with another module (tied weights after ``convert``) stays
        shared, as a shared Parameter does."""
        apply_sharing_buffers(self, super()._apply, fn, recurse, _QUANT_BUFFERS.__contains__)
        return self

    def weight_nbytes(self) -> int:
        """Bytes of weight storage (codes + scales + code sums + bias)."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def get_extra_state(self) -> dict:
        """The dtype a weight-only layer dequantizes its weight into (the prepared layer's weight
        dtype) travels with the state dict: rebuilt with another ``dtype`` and loaded, the layer
        still computes the prepared layer's bits."""
        return {"weight_dtype": str(self.weight_dtype).removeprefix("torch.")}

    def set_extra_state(self, state: dict) -> None:
        if isinstance(state, dict) and "weight_dtype" in state:
            self.weight_dtype = getattr(torch, state["weight_dtype"])

    def forward(self, input: Tensor) -> Tensor:
        check_input(input, self.in_features, self.weight_codes.device)
        codes = self.weight_codes
        if self.packed:
            codes = unpack_int4(codes, self.in_features)
        K, N = self.in_features, self.out_features
        w_zp = self.weight_zero_point
        if self.weight_only:  # the prepared layer's float GEMM on the same fake-quantized weight
            w_fq = dequantize_weight(codes, self.weight_scale, w_zp, self.weight_dtype)
            return float_linear(input, w_fq, self.bias)
        x2d = input.reshape(-1, K)
        qmin, qmax = self.activation_range
        a_scale = a_zp = None
        if self.ao_activation:
            a_scale, a_zp = (t.reshape(1, 1) for t in ao.dynamic_qparams(x2d, qmin, qmax))
            a_spec = ao_spec(qmin, qmax)
        else:
            a_spec = spec_for(self.activation_config)
        G = self.weight_scale.shape[1]
        sum_group = activation_sum_group(K, K // G) if w_zp is not None else None
        x_codes, x_scale, x_zp, _, x_sum = _ops.quantize(
            x2d, **a_spec.quantize_args(K), pack_mask=True, scale=a_scale, zero_point=a_zp,
            sum_group=sum_group or 0,
        )  # fmt: skip
        bias = self.bias  # added in fp32 by the GEMM epilogue, as in training
        out = _ops.int8_linear(
            x_codes,
            x_scale,
            x_zp,
            codes,
            self.weight_scale,
            self.weight_code_sum,
            bias,
            input.dtype,
            w_zero_point=w_zp,
            x_code_sum=x_sum if w_zp is not None and x_sum.shape[1] == G else None,
            w_dtype=self.weight_dtype,  # w_fq formed in the trained weight's dtype, as in training
        )
        return out.reshape(*input.shape[:-1], N)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, weight={self.weight_config}, "
            f"activation={self.activation_config}"
        )
