"""``QuantizedLinear``: real int8 inference after QAT (what ``tq.convert`` swaps in);
``QuantizedFloat8Linear``: the same for float8 (e4m3) layers, and for float8-activation layers
with int4 weights (``Float8Int4WeightConfig``). MX / NVFP4: triton_qat/quantized_mx.py.

Weights are stored as int8 codes (bits <= 4: two codes packed per byte) with fp32 scales; the input
is quantized per token (or per tensor) at run time and multiplied on the int8 GEMM of the training
forward, so the eval output equals the prepared model's eval output (QAT trained on exactly this
arithmetic). Layers trained with torch.ao numerics quantize activations per tensor with fp32
qparams from the current input, as torch.ao's dynamic quantized Linear does; that equals the
prepared model's eval output while its (memoryless) activation observer is enabled.

Converted modules behave as the prepared ones under what users do to a model: dtype casts
(``.to(torch.bfloat16)``, ``.half()``, ...) cast what they compute, as they cast the prepared
weight, while the codes and scales stay; autocast gives the output dtype the prepared module's
(``tq.Linear``: the autocast dtype); empty inputs give empty outputs; and their state dicts hold
tensors only (``safetensors``, ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
import zlib

import torch
import torch.autograd.forward_ad as _forward_ad
from torch import Tensor, nn

from triton_qat import ao
from triton_qat import calls as _ops  # the ops, skipping the dispatcher in plain eager code
from triton_qat.checks import (
    FLOAT_DTYPES,
    check_group,
    check_in_features,
    check_input,
    check_no_grad_transform,
    check_range,
    functorch_level,
    refuse_script,
)
from triton_qat.config import (
    DEFAULT_ACTIVATION,
    DEFAULT_WEIGHT,
    NOT_QUANTIZED,
    Float8Config,
    Float8Int4WeightConfig,
    QuantConfig,
)
from triton_qat.dispatch import activation_sum_group
from triton_qat.float8 import (
    float8_dequantize,
    float8_int4_dequantize,
    float8_int4_weight_codes,
    float8_weight_codes,
    fp8_gemm_runs,
    linear_on_codes,
    linear_on_weight,
)
from triton_qat.functional import check_configs
from triton_qat.kernels.quantize_torch import unpack_bits
from triton_qat.linear import _autocast_output  # the prepared layer's autocast rule, shared
from triton_qat.ops import float_linear
from triton_qat.spec import ao_spec, spec_for


def pack_int4(codes: Tensor) -> Tensor:
    """int8 codes in [-8, 7] (or 4-bit codes in 0..15), [N, K] -> uint8 [N, ceil(K/2)]: element
    2j in the low nibble."""
    N, K = codes.shape
    u = (codes.to(torch.int16) & 0xF).to(torch.uint8)
    if K % 2:
        u = torch.nn.functional.pad(u, (0, 1))
    return u[:, 0::2] | (u[:, 1::2] << 4)


def unpack_nibbles(packed: Tensor, K: int) -> Tensor:
    """Inverse of :func:`pack_int4` for 4-bit codes: uint8 [N, ceil(K/2)] -> uint8 [N, K] in
    0..15."""
    codes = torch.stack([packed & 0xF, packed >> 4], dim=-1)
    return codes.reshape(packed.shape[0], 2 * packed.shape[1])[:, :K]


def unpack_int4(packed: Tensor, K: int) -> Tensor:
    """Inverse of :func:`pack_int4`: uint8 [N, ceil(K/2)] -> int8 [N, K] (sign-extended)."""
    codes = unpack_nibbles(packed, K).to(torch.int8)
    return torch.where(codes > 7, codes - 16, codes)


# buffers holding the quantized weight: dtype casts of the module leave them as they are
_QUANT_BUFFERS = frozenset(("weight_codes", "weight_scale", "weight_code_sum", "weight_zero_point",
                            "weight_tensor_scale"))  # fmt: skip
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


def check_count(value: object, name: str, minimum: int = 1) -> None:
    """ValueError naming ``name`` unless ``value`` is an int >= ``minimum`` (1 or 0)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive int" if minimum == 1 else "a non-negative int"
        raise ValueError(f"{name}: expected {what}, got {value!r}")


def check_float_dtype(dtype: object, name: str) -> None:
    """TypeError naming ``name`` unless ``dtype`` is float32, float16 or bfloat16."""
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected float32, float16 or bfloat16, got {dtype}")


def recorded_dtype(state: object, key: str, owner: str) -> torch.dtype:
    """The float dtype a converted module's ``_extra_state`` records: a zero-element tensor of
    that dtype, or (state dicts of the previous version) ``{"weight_dtype": "bfloat16"}``.
    ValueError naming ``key`` and ``owner`` (the module class) for anything else."""
    if isinstance(state, Tensor):
        dtype = state.dtype
    elif isinstance(state, dict) and isinstance(state.get("weight_dtype"), str):
        dtype = getattr(torch, state["weight_dtype"], None)
    else:
        raise ValueError(
            f"{key}: expected the {owner}'s dtype record (a zero-element floating-point tensor, "
            f"or the {{'weight_dtype': name}} dict of older versions), got {state!r}"
        )
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"{key}: expected a floating-point dtype record ({owner}), got {dtype}")
    return dtype


# training-only config fields: a converted layer computes the same whatever they were
_TRAINING_ONLY_FIELDS = frozenset({"range_learning"})


def config_text(config: object) -> str:
    """A config as the state-dict record reads it: its class and the fields that differ from
    their defaults (so a field added later, at its default, leaves old records valid), training-
    only fields left out; ``"none"`` for ``NOT_QUANTIZED``. E.g. ``QuantConfig(bits=4,
    granularity='per_group', symmetric=True, group_size=32)``."""
    if config is NOT_QUANTIZED or config is None:
        return "none"
    fields = [f"{f.name}={getattr(config, f.name)!r}" for f in dataclasses.fields(config)
              if f.name not in _TRAINING_ONLY_FIELDS
              and getattr(config, f.name) != f.default]  # fmt: skip
    return f"{type(config).__name__}({', '.join(fields)})"


def stored_weight_config(config: QuantConfig) -> QuantConfig:
    """The weight config a :class:`QuantizedLinear` stores codes of: a per-tensor weight's
    (symmetric) scale is stored per channel, broadcast, so it is the per-channel config."""
    if config.granularity != "per_tensor":
        return config
    return QuantConfig(bits=config.bits, granularity="per_channel", symmetric=True)


def config_tag(record: str) -> int:
    """The record's CRC-32: what a state dict stores of it (see :class:`QuantizedModule`)."""
    return zlib.crc32(record.encode())


class QuantizedModule(nn.Module):
    """Base of the converted modules (:class:`QuantizedLinear`, :class:`QuantizedFloat8Linear`,
    ``QuantizedMXLinear``, ``QuantizedEmbedding``).

    Their quantized buffers (int codes, fp32 scales, ...) keep their dtypes under dtype casts of
    the module; device moves move them, and a buffer shared with another module (tied weights
    after ``convert``) stays shared. The module's float dtype, the attribute named by
    ``dtype_attr`` (the dtype of the prepared weight: the table's output dtype, the dtype a linear
    forms its fake-quantized weight in), follows dtype casts as a float parameter would
    (``.to(torch.bfloat16)``, ``.half()``, ``.float()``, ``.type(...)``), and travels in the state
    dict as ``_extra_state``, a zero-element tensor of that dtype, so state dicts hold tensors
    only (safetensors files, ``torch.load(weights_only=True)``). Loading sets the recorded dtype
    (the dtype the saved module computed in); other float tensors (a linear's bias) keep the
    receiving module's dtype, as ``load_state_dict`` keeps any tensor's, so cast the model after
    loading to give everything one dtype. A state dict without a record (``QuantizedEmbedding``'s
    of earlier versions) leaves the module's own.

    The record's shape, ``[0, tag]``, also records the configs: ``tag`` is the CRC-32 of
    :meth:`config_record` (the configs the buffers were quantized with). Loading a state dict
    saved from a module of other configs (int4 codes into an int2 layer, per-token activations
    into a per-tensor or weight-only layer: the same keys, shapes and dtypes, other outputs)
    raises a ValueError naming the key before anything of the module is loaded; a record of
    shape ``[0]`` (earlier versions) is not checked.
    """

    dtype_attr = "weight_dtype"

    def __prepare_scriptable__(self):  # torch.jit.script: a clear refusal
        refuse_script(self)

    def keeps_dtype(self, buffer_name: str) -> bool:
        """Whether dtype casts leave this buffer's dtype as it is (all but a linear's bias)."""
        return True

    @property
    def float_dtype(self) -> torch.dtype:
        """The module's float dtype (the value of its ``dtype_attr`` attribute)."""
        return getattr(self, self.dtype_attr)

    def _apply(self, fn, recurse=True):
        """What ``.to`` / ``.cuda`` / ``.half`` / ``.type`` / ``to_empty`` ... run (see the class
        docstring); the float dtype becomes what ``fn`` makes of a float tensor of it."""
        device = self.weight_codes.device
        apply_sharing_buffers(self, super()._apply, fn, recurse, self.keeps_dtype)
        probe = fn(torch.empty(0, dtype=self.float_dtype, device=device))
        setattr(self, self.dtype_attr, probe.dtype)
        return self

    def _check_float_dtype(self) -> None:
        """TypeError naming the module and the way back unless its float dtype is fp32 / fp16 /
        bf16 (``.double()`` casts it to float64, as the prepared module's weight, which the
        prepared module rejects too)."""
        dtype = self.float_dtype
        if dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{type(self).__name__}.{self.dtype_attr} is {dtype} (the module was cast to it); "
                "float32, float16 or bfloat16 only: cast it with .float(), .half() or .bfloat16()"
            )

    def config_record(self) -> str:
        """The configs this module's buffers were quantized with (:func:`config_text` of each),
        as its state dict records them (see the class docstring)."""
        return "; ".join(f"{name}={config_text(getattr(self, name))}"
                         for name in ("activation_config", "weight_config") if hasattr(self, name))  # fmt: skip

    def get_extra_state(self) -> Tensor:
        """The float dtype and the configs' tag, as a [0, tag] tensor of that dtype (see the
        class docstring)."""
        tag = config_tag(self.config_record())
        return torch.empty(0, tag, dtype=self.float_dtype, device=self.weight_codes.device)

    def set_extra_state(self, state: Tensor | dict) -> None:
        setattr(self, self.dtype_attr, recorded_dtype(state, "_extra_state", type(self).__name__))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):  # fmt: skip
        key = prefix + "_extra_state"
        record = state_dict.get(key)
        if key in state_dict:  # checked before anything of this module is loaded
            recorded_dtype(record, key, type(self).__name__)
        self._check_quantized_dtypes(state_dict, prefix)  # (naming the buffer: more specific)
        if isinstance(record, Tensor) and record.dim() == 2:  # [0, tag]: configs recorded
            self._check_config_tag(record.shape[1], key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)  # fmt: skip
        if key not in state_dict and key in missing_keys:  # no record: the module keeps its own
            missing_keys.remove(key)

    def _check_config_tag(self, tag: int, key: str) -> None:
        """ValueError naming ``key`` unless ``tag`` is this module's configs' (see the class
        docstring)."""
        record = self.config_record()
        if tag != config_tag(record):
            raise ValueError(
                f"{key}: the state dict was saved from a {type(self).__name__} of other configs "
                f"than this one's ({record}); its codes and scales would compute other outputs "
                "here: build the module with the configs the state dict was saved from"
            )

    def _check_quantized_dtypes(self, state_dict: dict, prefix: str) -> None:
        """ValueError naming the key where the state dict's quantized buffer (codes, scales, ...:
        those dtype casts keep) has another dtype than this module's: a layer of another format
        (e4m3 codes against e5m2, e8m0 scales against e4m3 ones) whose values a copy would
        convert into different weights instead of failing."""
        for name, buf in self._buffers.items():
            got = state_dict.get(prefix + name)
            if buf is None or not self.keeps_dtype(name) or not isinstance(got, Tensor):
                continue
            if got.dtype != buf.dtype:
                raise ValueError(
                    f"{prefix + name}: the state dict holds {got.dtype}, this "
                    f"{type(self).__name__} stores {buf.dtype} (a layer of another format or "
                    "config; build the module with the config the state dict was saved from)"
                )

    def weight_nbytes(self) -> int:
        """Bytes of weight storage (every buffer: codes, scales, ..., a linear's bias)."""
        return sum(b.numel() * b.element_size() for b in self.buffers())


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


def needs_input_grad(input: Tensor) -> bool:
    """Whether a converted layer's output may need a gradient to ``input``: it requires one, or
    (eagerly) it is a vmap's batched tensor, which does not say whether what it wraps does.
    (While Dynamo traces, functorch's stack is never empty and its levels cannot be read:
    requires_grad decides there, so vmap / torch.func.grad inside torch.compile are not
    supported through converted layers.)"""
    if not torch.is_grad_enabled():
        return False
    if input.requires_grad:
        return True
    return functorch_level() is not None and not torch.compiler.is_compiling()


def _plain_input_grad(input: Tensor) -> bool:
    """Whether ``input`` needs a gradient in plain code: reverse mode, no functorch transform
    and no forward-mode AD level (where a weight-only layer keeps F.linear's autograd)."""
    return (input.requires_grad and torch.is_grad_enabled() and _forward_ad._current_level < 0
            and (functorch_level() is None or torch.compiler.is_compiling()))  # fmt: skip


CONVERTED_DOUBLE_BACKWARD_MSG = (
    "triton_qat: a converted layer's input gradient (the straight-through estimator's) is not "
    "differentiable again (create_graph=True / double backward is not supported). For a "
    "gradient penalty, run the float model, or the prepared one through "
    "triton_qat.reference.qat_linear_ref."
)


def _no_double_backward() -> None:
    if torch.is_grad_enabled():  # backward(create_graph=True): never a detached gradient
        raise RuntimeError(CONVERTED_DOUBLE_BACKWARD_MSG)


@torch.library.custom_op("triton_qat::backward_copy", mutates_args=())
def _backward_copy(codes: Tensor) -> Tensor:
    """A copy of a converted layer's weight codes that a compiler cannot see through: the
    backward re-derives the fake-quantized weight from it, so no weight-sized intermediate of
    the forward's own derivation is merged with the backward's and kept for it."""
    return codes.clone()


@_backward_copy.register_fake
def _(codes: Tensor) -> Tensor:
    return torch.empty_like(codes)


def _mm_fp32_accumulate(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` in their dtype, outside autocast (a backward run under autocast would round
    it to the autocast dtype; the prepared layer's backward GEMMs do not)."""
    if not torch.is_autocast_enabled(a.device.type):
        return torch.mm(a, b)
    with torch.autocast(a.device.type, enabled=False):
        return torch.mm(a, b)


class _InputGrad(torch.autograd.Function):
    """``out`` [..., N] (a converted layer's forward, computed without autograd) with the prepared
    layer's gradient to x [..., K]: ``g = dy @ w_fq`` on the [M, K] / [M, N] views, w_fq =
    ``weight_of(*weights)`` re-derived from the layer's buffers in the backward (nothing
    weight-sized kept), then the activation's gradient: ``x_grad`` "mask" (the int8 layers'
    straight-through estimator: g where the clamp bits ``x_mask`` [M, ceil(K/8)] say kept, else
    0), "float8" (torchao's float8 gradient through the scale of ``fq(x)``, x kept;
    ``float8_args``: its per_tensor, lb, ub) or "identity" (weight-only, MX / NVFP4). The GEMM is
    ``torch.mm`` outside autocast, in dy's dtype, as the prepared layer's 16-bit GPU default.
    (The tensors keep their shapes through the Function: a reshape of its output made
    ``torch.export``'s non-strict trace guard on the dims.)"""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, out, x_grad, x_mask, float8_args, weight_of, *weights):
        return out.detach()  # not ``out`` itself: an input returned is a view, not changeable

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, _, x_grad, x_mask, float8_args, weight_of, *weights = inputs
        x_kept = x if x_grad == "float8" else None
        ctx.save_for_backward(x_kept, x_mask, *weights)
        ctx.x_shape, ctx.x_dtype, ctx.x_grad = x.shape, x.dtype, x_grad
        ctx.float8_args, ctx.weight_of = float8_args, weight_of

    @staticmethod
    def backward(ctx, dy):
        _no_double_backward()
        x, x_mask, codes, *weights = ctx.saved_tensors
        none = (None,) * (6 + len(weights))
        K = ctx.x_shape[-1]
        if ctx.x_grad == "float8" and x.numel() == 0:  # (no rows: no per-tensor scale)
            return torch.zeros_like(x), *none
        if torch.compiler.is_compiling():
            codes = _backward_copy(codes)
        w_fq = ctx.weight_of(codes, *weights)
        dy = dy.reshape(-1, dy.shape[-1])
        if ctx.x_grad == "mask":  # the prepared layer's dgrad: w_fq in dy's dtype
            grad = _mm_fp32_accumulate(dy, w_fq.to(dy.dtype))
            return torch.where(unpack_bits(x_mask, K), grad, 0).reshape(ctx.x_shape), *none
        # F.linear's GEMM: w_fq cast to x's dtype, then by autocast to dy's
        grad = _mm_fp32_accumulate(dy, w_fq.to(ctx.x_dtype).to(dy.dtype))
        if ctx.x_grad == "identity":
            return grad.reshape(ctx.x_shape), *none
        ops = torch.ops.triton_qat
        x2d = x.reshape(-1, K)
        _, x_scale = ops.float8_fake_quantize(x2d, *ctx.float8_args)
        grad = ops.float8_fake_quantize_backward(grad.to(x2d.dtype), x2d, x_scale,
                                                 *ctx.float8_args)  # fmt: skip
        return grad.reshape(ctx.x_shape), *none


def with_input_grad(input: Tensor, out: Tensor, x_grad: str, weight_of, *weights: Tensor | None,
                    x_mask: Tensor | None = None, float8_args: tuple = ()) -> Tensor:  # fmt: skip
    """``out`` [..., N] (computed from ``input.detach()``) carrying :class:`_InputGrad`'s gradient
    to ``input`` [..., K]."""
    return _InputGrad.apply(input, out, x_grad, x_mask, float8_args, weight_of, *weights)


def _int_weight_of(codes: Tensor, scale: Tensor, zero_point: Tensor | None, *, K: int,
                   packed: bool, dtype: torch.dtype) -> Tensor:  # fmt: skip
    """A QuantizedLinear's fake-quantized weight [N, K] from its buffers, in the backward."""
    return dequantize_weight(unpack_int4(codes, K) if packed else codes, scale, zero_point, dtype)


def _float8_weight_of(codes: Tensor, scale: Tensor, *, K: int, int4: bool,
                      dtype: torch.dtype) -> Tensor:  # fmt: skip
    """A QuantizedFloat8Linear's fake-quantized weight [N, K] from its buffers (the backward's:
    :meth:`QuantizedFloat8Linear.dequantized_weight`)."""
    if int4:
        return float8_int4_dequantize(unpack_int4(codes, K), scale, dtype)
    return float8_dequantize(codes, scale, dtype)


class QuantizedLinearModule(QuantizedModule):
    """Base of the converted linear layers: dtype casts cast the bias only (the quantized
    weight's buffers keep their dtypes); ``in_features``, ``out_features``, ``weight_config``,
    ``activation_config`` and ``bias`` set by the subclass."""

    def keeps_dtype(self, buffer_name: str) -> bool:
        """Dtype casts cast the bias only; the quantized weight's buffers keep their dtypes."""
        return buffer_name in _QUANT_BUFFERS

    @classmethod
    def _empty_like(cls, lin: nn.Module):
        """A module of this class for the prepared layer ``lin`` (its shape, bias, configs,
        device and weight dtype), its buffers still to be filled."""
        w = lin.weight
        return cls(lin.in_features, lin.out_features, lin.bias is not None,
                   activation=lin.activation_config, weight=lin.weight_config, device=w.device,
                   dtype=w.dtype)  # fmt: skip

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, weight={self.weight_config}, "
            f"activation={self.activation_config}"
        )


class QuantizedLinear(QuantizedLinearModule):
    """Int8 inference linear layer. Its buffers get no gradient; the input gets the prepared
    layer's (the straight-through estimator's ``(dy @ w_fq) * mask_x``, w_fq dequantized from the
    codes), so layers trained on top of a converted one (adapters) get the gradient QAT gave.

    Buffers: ``weight_codes`` int8 [N, K] (or uint8 [N, ceil(K/2)] when ``weight_bits <= 4``),
    ``weight_scale`` fp32 [N, G], ``weight_code_sum`` int32 [N, G], ``weight_zero_point`` int32
    [N, G] (asymmetric weights only), ``bias`` [N] in ``dtype`` or None. Input [..., K] fp32 /
    fp16 / bf16 (empty too, e.g. [0, K]) -> output [..., N] in the input's dtype; under autocast
    the autocast dtype, as :class:`triton_qat.Linear`.

    ``weight_dtype`` (``dtype`` at construction; ``convert``: the trained weight's dtype) is the
    dtype the layer forms its fake-quantized weight ``dt(q * s)`` in, as the prepared layer does
    in its weight's dtype: a weight-only layer (``activation=NOT_QUANTIZED``) dequantizes into
    it and runs a float GEMM in the input's dtype, and the dequantized per-group GEMM forms w_fq
    in it. Dtype casts of the module cast ``weight_dtype`` and the bias as they cast the prepared
    layer's weight and bias (codes, scales, code sums and zero points stay as they are), so the
    cast layer computes what the prepared layer cast the same way computes from the same codes.
    ``weight_dtype`` travels in the state dict (``_extra_state``, see :class:`QuantizedModule`).
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
        """``activation`` (or ``NOT_QUANTIZED``: weight-only) / ``weight``: the prepared layer's
        configs; ``activation_range``: (qmin, qmax) of a torch.ao layer's per-tensor activation
        (its qparams computed from each input in fp32); ``dtype``: the prepared weight's dtype."""
        super().__init__()
        check_count(in_features, "in_features")
        check_count(out_features, "out_features")
        check_in_features(in_features)
        check_float_dtype(dtype, "dtype")
        check_configs(activation, weight, in_features)
        if activation_range is not None:
            check_range(*activation_range, name="activation_range")
            activation_range = (int(activation_range[0]), int(activation_range[1]))
        self.in_features, self.out_features = in_features, out_features
        self.activation_config, self.weight_config = activation, weight
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

    def config_record(self) -> str:
        """:meth:`QuantizedModule.config_record` of the weight config as stored (a per-tensor
        weight's scale is stored per channel: :func:`stored_weight_config`); a torch.ao layer's
        activation range in place of the activation config, which its forward does not read."""
        weight = f"weight_config={config_text(stored_weight_config(self.weight_config))}"
        if self.ao_activation:
            return f"activation_range={self.activation_range}; {weight}"
        return f"activation_config={config_text(self.activation_config)}; {weight}"

    @classmethod
    @torch.no_grad()
    def from_qat(cls, lin: nn.Module) -> QuantizedLinear:
        """Freeze a trained :class:`triton_qat.Linear` into int8 codes with its exact numerics."""
        w = lin.weight.detach()
        K = lin.in_features
        if lin.uses_ao_numerics:
            w_fq, a_fq = lin.weight_fake_quant, lin.activation_post_process
            # a meta skeleton (to be loaded) has no flag to read: its shapes are the same
            observing = w.is_meta or bool(w_fq.observer_enabled[0] == 1)
            w_scale, _ = ao.observe(w_fq, w) if observing else (w_fq.scale, None)
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
            wcfg = stored_weight_config(wcfg)
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

    def forward(self, input: Tensor) -> Tensor:
        check_input(input, self.in_features, self.weight_codes.device)
        self._check_float_dtype()
        return _autocast_output(self._forward(input))

    def _forward(self, input: Tensor) -> Tensor:
        K, N = self.in_features, self.out_features
        w_zp = self.weight_zero_point
        if self.weight_only:  # the prepared layer's float GEMM on the same fake-quantized weight
            w_fq = self._weight_of()(self.weight_codes, self.weight_scale, w_zp)
            # on x [M, K] as the prepared layer runs it (F.linear's result on an N-D input
            # depends on its layout: a transposed bf16 input gave other bits)
            x2d, out_shape = input.reshape(-1, K), (*input.shape[:-1], N)
            if not _plain_input_grad(input):  # (F.linear's own autograd: forward AD, vmap too)
                return float_linear(x2d, w_fq, self.bias).reshape(out_shape)
            out = float_linear(x2d.detach(), w_fq, self.bias).reshape(out_shape)  # (no w_fq kept)
            return with_input_grad(input, out, "identity", self._weight_of(), self.weight_codes,
                                   self.weight_scale, w_zp)  # fmt: skip
        check_no_grad_transform("triton_qat.QuantizedLinear", input)
        x2d = input.reshape(-1, K)
        grad = needs_input_grad(input)
        if x2d.shape[0] == 0:  # no rows (torch.ao qparams of no values do not exist)
            out = input.new_zeros(0, N)
            x_mask = input.new_zeros(0, (K + 7) // 8, dtype=torch.uint8)
        else:  # (the ops have no autograd: the gradient is _InputGrad's)
            out, x_mask = self._int8_forward(x2d.detach() if grad else x2d)
        out = out.reshape(*input.shape[:-1], N)
        if grad:
            out = with_input_grad(input, out, "mask", self._weight_of(), self.weight_codes,
                                  self.weight_scale, w_zp, x_mask=x_mask)  # fmt: skip
        return out

    def _weight_of(self):
        """What derives the fake-quantized weight from the buffers (codes, scale, zero point):
        the weight-only forward's, and the backward's."""
        return functools.partial(_int_weight_of, K=self.in_features, packed=self.packed,
                                 dtype=self.weight_dtype)  # fmt: skip

    def _int8_forward(self, x2d: Tensor) -> tuple[Tensor, Tensor]:
        """(out [M, N] in x's dtype, the input's clamp bits [M, ceil(K/8)]) of x2d [M, K] (M >=
        1): the prepared layer's int8 forward on the stored codes."""
        K = self.in_features
        w_zp = self.weight_zero_point
        codes = self.weight_codes
        if self.packed:
            codes = unpack_int4(codes, K)
        qmin, qmax = self.activation_range
        a_scale = a_zp = None
        if self.ao_activation:
            a_scale, a_zp = (t.reshape(1, 1) for t in ao.dynamic_qparams(x2d, qmin, qmax))
            a_spec = ao_spec(qmin, qmax)
        else:
            a_spec = spec_for(self.activation_config)
        G = self.weight_scale.shape[1]
        sum_group = activation_sum_group(K, K // G) if w_zp is not None else None
        x_codes, x_scale, x_zp, x_mask, x_sum = _ops.quantize(
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
            x2d.dtype,
            w_zero_point=w_zp,
            x_code_sum=x_sum if w_zp is not None and x_sum.shape[1] == G else None,
            w_dtype=self.weight_dtype,  # w_fq formed in the weight's dtype, as in training
        )
        return out, x_mask


class QuantizedFloat8Linear(QuantizedLinearModule):
    """Float8 (e4m3) inference linear layer (the input gets the prepared layer's gradient, the
    buffers none): what ``tq.convert`` makes of a
    :class:`triton_qat.Linear` with :class:`Float8Config` configs, or with a
    :class:`Float8Int4WeightConfig` weight (float8 activations, int4 weights).

    Buffers, :class:`Float8Config` weight: ``weight_codes`` float8_e4m3fn [N, K],
    ``weight_scale`` fp32 [N, 1] (``"per_row"``) or [1, 1] (``"per_tensor"``), the scale of the
    trained weight with the config's bounds applied. :class:`Float8Int4WeightConfig` weight:
    ``weight_codes`` uint8 [N, ceil(K/2)] (int4 codes in [-8, 7], two per byte, element 2j in
    the low nibble), ``weight_scale`` fp32 [N, K / group_size] (the group scales, computed in
    the trained weight's dtype, which fp32 holds exactly). Both: ``bias`` [N] in ``dtype`` or
    None. The forward fake-quantizes the input with the ``activation`` :class:`Float8Config`
    (the QAT layer's op and kernel; ``NOT_QUANTIZED``: weight-only), forms ``w_fq`` in
    ``weight_dtype`` with the fake quantization's last step (``dt(fp32(q) * s)``; int4:
    ``(dt(q) - 0) * dt(s)``) and runs the QAT layer's ``F.linear`` (docs/numerics.md
    "Converting"), so its output is bit-identical to the prepared layer's in eval mode. Input
    [..., K] fp32 / fp16 / bf16 (empty too) -> output [..., N] in the input's dtype; under
    autocast the autocast dtype. Dtype casts, ``weight_dtype`` and the state dict follow
    :class:`QuantizedLinear`'s rules (codes and scales keep their dtypes). Where the prepared
    e4m3-weight layer runs the fp8 tensor-core GEMM (:func:`triton_qat.float8.fp8_gemm_runs`)
    this runs the same GEMM on the stored codes; elsewhere (and always for int4 weights, as the
    prepared layer) the dequantized one.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        activation: Float8Config | object = None,
        weight: Float8Config | Float8Int4WeightConfig | None = None,
        device=None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        """``activation`` (default ``Float8Config()``; ``NOT_QUANTIZED``: weight-only) /
        ``weight`` (default ``Float8Config()``; or a :class:`Float8Int4WeightConfig` whose
        group size divides ``in_features``): the prepared layer's configs; ``dtype``: the
        prepared weight's dtype."""
        super().__init__()
        check_count(in_features, "in_features")
        check_count(out_features, "out_features")
        check_float_dtype(dtype, "dtype")
        activation = Float8Config() if activation is None else activation
        weight = Float8Config() if weight is None else weight
        if not isinstance(weight, (Float8Config, Float8Int4WeightConfig)):
            raise TypeError(
                f"weight: expected a triton_qat.Float8Config or Float8Int4WeightConfig, got "
                f"{weight!r}"
            )
        if activation is not NOT_QUANTIZED and not isinstance(activation, Float8Config):
            raise TypeError(
                f"activation: expected a triton_qat.Float8Config or NOT_QUANTIZED, got "
                f"{activation!r}"
            )
        self.in_features, self.out_features = in_features, out_features
        self.activation_config, self.weight_config = activation, weight
        if self.int4:
            check_group(weight.group_size, in_features, "weight.group_size")
        self.weight_only = activation is NOT_QUANTIZED
        self.weight_dtype = dtype
        codes, scale = self._buffer_shapes()
        code_dtype = torch.uint8 if self.int4 else torch.float8_e4m3fn
        self.register_buffer("weight_codes", torch.zeros(codes, dtype=code_dtype, device=device))
        self.register_buffer("weight_scale", torch.ones(scale, device=device))
        self.register_buffer(
            "bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None
        )

    @property
    def int4(self) -> bool:
        """Whether the weight is int4 (a :class:`Float8Int4WeightConfig`), not e4m3."""
        return isinstance(self.weight_config, Float8Int4WeightConfig)

    def _buffer_shapes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """The shapes of ``weight_codes`` and ``weight_scale`` (see the class docstring)."""
        N, K, cfg = self.out_features, self.in_features, self.weight_config
        if self.int4:
            return (N, (K + 1) // 2), (N, K // cfg.group_size)
        return (N, K), (1 if cfg.per_tensor else N, 1)

    @classmethod
    @torch.no_grad()
    def from_qat(cls, lin: nn.Module) -> QuantizedFloat8Linear:
        """Freeze a trained float8 :class:`triton_qat.Linear` into e4m3 codes + fp32 scales
        (int4 weights: packed int4 codes + fp32 group scales)."""
        w = lin.weight.detach()
        new = cls._empty_like(lin)
        if new.int4:
            codes, scale = float8_int4_weight_codes(w, lin.weight_config)
            codes = pack_int4(codes)
        else:
            codes, scale = float8_weight_codes(w, lin.weight_config)
        new.weight_codes.copy_(codes)
        new.weight_scale.copy_(scale)
        if lin.bias is not None:
            new.bias.copy_(lin.bias.detach())
        return new

    def dequantized_weight(self) -> Tensor:
        """The fake-quantized weight [N, K] in ``weight_dtype``: ``dt(fp32(q) * s)`` (int4:
        ``(dt(q) - 0) * dt(s)``)."""
        return _float8_weight_of(self.weight_codes, self.weight_scale, K=self.in_features,
                                 int4=self.int4, dtype=self.weight_dtype)  # fmt: skip

    def forward(self, input: Tensor) -> Tensor:
        check_input(input, self.in_features, self.weight_codes.device)
        self._check_float_dtype()
        act = self.activation_config
        # the prepared layer's fp8 GEMM where it runs one (same rule, same weight dtype)
        if act is not NOT_QUANTIZED:
            check_no_grad_transform("triton_qat.QuantizedFloat8Linear", input)
        fp8 = not self.int4 and fp8_gemm_runs(input, act, self.weight_dtype)
        if fp8:
            grad = needs_input_grad(input)
            out = linear_on_codes(input.detach() if grad else input, self.weight_codes,
                                  self.weight_scale, self.bias, act, self.weight_dtype)  # fmt: skip
        elif act is NOT_QUANTIZED:  # weight-only: F.linear's own autograd in forward AD
            grad = _plain_input_grad(input)
        else:
            grad = needs_input_grad(input)
        if not fp8:
            out = linear_on_weight(input.detach() if grad else input, self.dequantized_weight(),
                                   self.bias, act)  # fmt: skip
        if grad:  # (F.linear would keep the dequantized weight)
            weight_of = functools.partial(_float8_weight_of, K=self.in_features, int4=self.int4,
                                          dtype=self.weight_dtype)  # fmt: skip
            if act is NOT_QUANTIZED:
                return _autocast_output(
                    with_input_grad(
                        input, out, "identity", weight_of, self.weight_codes, self.weight_scale
                    )
                )
            args = (act.per_tensor, act.hp_value_lb, act.hp_value_ub)
            out = with_input_grad(input, out, "float8", weight_of, self.weight_codes,
                                  self.weight_scale, float8_args=args)  # fmt: skip
        return _autocast_output(out)
