"""Converted modules (tq.QuantizedLinear, tq.QuantizedEmbedding) as users handle them: safetensors
files (what Hugging Face's ``save_pretrained`` writes), dtype casts and autocast (converted equals
prepared eval, cast or autocast the same way), empty inputs, meta-device construction,
``torch.save`` with ``weights_only=True``, ``deepcopy``, forward hooks and bad arguments."""

import copy
import dataclasses
import io

import pytest
import torch
import torch.ao.quantization as q
import torch.nn.functional as F
from conftest import dt_id
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

import triton_qat as tq
from triton_qat.config import NOT_QUANTIZED

I8PC = tq.QuantConfig(granularity="per_channel", symmetric=True)
I4G16 = tq.QuantConfig(bits=4, granularity="per_group", group_size=16, symmetric=True)
ASYM4 = tq.QuantConfig(bits=4, granularity="per_group", group_size=16, symmetric=False)
AO_PER_CHANNEL = q.QConfig(
    activation=q.default_dynamic_qat_qconfig.activation,
    weight=q.default_per_channel_weight_fake_quant,
)
LINEARS = {  # every QuantizedLinear flavour: tq.Linear keyword arguments
    "i8": {},
    "i4g16-packed": dict(weight=I4G16),
    "asym-i4g16": dict(weight=ASYM4),
    "weight-only": dict(activation=NOT_QUANTIZED, weight=I4G16),
    "weight-only-asym": dict(activation=NOT_QUANTIZED, weight=ASYM4),
    "ao-per-tensor": dict(qconfig=q.default_dynamic_qat_qconfig),
    "ao-per-channel": dict(qconfig=AO_PER_CHANNEL),
}
MX8 = tq.MXConfig(torch.float8_e4m3fn)
FORMATS = {  # the other converted layers (QuantizedFloat8Linear, QuantizedMXLinear)
    "float8": dict(activation=tq.Float8Config(), weight=tq.Float8Config()),
    "float8-int4": dict(activation=tq.Float8Config(), weight=tq.Float8Int4WeightConfig(16)),
    "mx": dict(activation=MX8, weight=MX8),
}
BF16_TOL = dict(rtol=1e-2, atol=1e-2)  # test_model.py::test_convert_torch_ao_family, bf16


def _prepared_linear(name: str, device, dtype=torch.float32, K: int = 32, N: int = 24):
    """A tq.Linear of flavour ``name`` in eval mode (torch.ao observers initialized)."""
    lin = tq.Linear(K, N, device=device, dtype=dtype, **{**LINEARS, **FORMATS}[name])
    if lin.uses_ao_numerics:
        lin(torch.randn(4, K, device=device, dtype=dtype))
    return lin.eval()


def _assert_converted_equals_prepared(got, want, name: str) -> None:
    """Bit-exact, as tests/test_model.py holds the torchao family; the torch.ao family within its
    documented tolerance (one fp32 rounding of the activation scale, bf16 outputs here)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    if name.startswith("ao"):
        torch.testing.assert_close(got, want, **BF16_TOL)
    else:
        assert torch.equal(got, want)


class Model(nn.Module):
    """Every converted flavour in one model: an int4 table, LayerNorm, then linears."""

    def __init__(self, dtype=torch.float32, device="cpu", tied: bool = False):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.tok = tq.Embedding(40, 32, weight=I4G16, **kw)
        self.norm = nn.LayerNorm(32, **kw)
        self.fc = tq.Linear(32, 48, **kw)
        self.wo = tq.Linear(48, 32, activation=NOT_QUANTIZED, weight=ASYM4, **kw)
        self.ao = tq.Linear(32, 32, qconfig=q.default_dynamic_qat_qconfig, **kw)
        self.head = tq.Linear(32, 40, bias=False, weight=I4G16, **kw)
        if tied:
            self.head.weight = self.tok.weight

    def forward(self, idx):
        h = self.norm(self.tok(idx))
        return self.head(self.ao(self.wo(F.gelu(self.fc(h)))))


def _converted(seed: int, dtype=torch.float32, device="cpu", tied: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    model = Model(dtype, device, tied)
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)  # LayerNorm parameters that differ by seed
        model.norm.bias.uniform_(-0.5, 0.5)
    model(torch.randint(0, 40, (2, 5), device=device))  # initializes the torch.ao observers
    return tq.convert(model.eval())


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k, v in sa.items():
        assert sb[k].dtype == v.dtype and torch.equal(sb[k], v), k


# -- 8: safetensors ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dt_id)
def test_safetensors_save_file_round_trip(dtype, device, tmp_path):
    conv = _converted(0, dtype, device)
    idx = torch.randint(0, 40, (3, 7), device=device)
    want = conv(idx)
    state = conv.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    save_file(state, tmp_path / "model.safetensors")
    loaded = load_file(tmp_path / "model.safetensors", device=device)
    # into a converted model of other weights, built in fp32: the quantized weights' dtypes come
    # from the file, other tensors keep the receiver's (as torch loads them); a cast after
    # loading sets one dtype everywhere
    fresh = _converted(1, torch.float32, device)
    assert not torch.equal(fresh(idx).float(), want.float())
    fresh.load_state_dict(loaded, strict=True)
    assert fresh.wo.weight_dtype == dtype and fresh.tok.output_dtype == dtype
    fresh.to(dtype)
    _assert_same_state(fresh, conv)
    assert torch.equal(fresh(idx), want)
    # safetensors' own module API
    save_model(conv, str(tmp_path / "model2.safetensors"))
    other = _converted(2, dtype, device)
    missing, unexpected = load_model(other, str(tmp_path / "model2.safetensors"), device=device)
    assert not missing and not unexpected
    assert torch.equal(other(idx), want)


def test_safetensors_tied_weights(device, tmp_path):
    """convert shares the codes and scales of an embedding tied to lm_head: ``save_file`` refuses
    shared tensors (safetensors' error names ``save_model``); ``save_model`` / ``load_model``
    store them once and restore them into a model that shares them."""
    conv = _converted(0, device=device, tied=True)
    assert conv.head.weight_codes is conv.tok.weight_codes
    idx = torch.randint(0, 40, (2, 6), device=device)
    want = conv(idx)
    with pytest.raises(RuntimeError, match="save_model"):
        save_file(conv.state_dict(), tmp_path / "tied.safetensors")
    save_model(conv, str(tmp_path / "tied.safetensors"))
    fresh = _converted(1, device=device, tied=True)
    missing, unexpected = load_model(fresh, str(tmp_path / "tied.safetensors"), device=device)
    assert not missing and not unexpected
    assert fresh.head.weight_codes is fresh.tok.weight_codes
    assert torch.equal(fresh(idx), want)


def test_state_dict_of_the_previous_version_still_loads(device):
    """Before, QuantizedLinear's ``_extra_state`` was ``{"weight_dtype": "bfloat16"}`` and
    QuantizedEmbedding had none: such state dicts load (strict), anything else is named."""
    conv = _converted(0, torch.bfloat16, device)
    old = conv.state_dict()
    for name in ("fc", "wo", "ao", "head"):
        old[f"{name}._extra_state"] = {"weight_dtype": "bfloat16"}
    del old["tok._extra_state"]
    buf = io.BytesIO()
    torch.save(old, buf)
    fresh = _converted(1, torch.float32, device)
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert fresh.wo.weight_dtype == torch.bfloat16 and fresh.fc.weight_dtype == torch.bfloat16
    assert fresh.tok.output_dtype == torch.float32  # not recorded then: the receiver's
    idx = torch.randint(0, 40, (2, 3), device=device)
    assert torch.equal(fresh.tok.to(torch.bfloat16)(idx), conv.tok(idx))
    old["wo._extra_state"] = {"dtype": "bf16"}
    with pytest.raises(ValueError, match=r"wo\._extra_state.*QuantizedLinear"):
        fresh.load_state_dict(old)
    old["wo._extra_state"] = torch.zeros(0, dtype=torch.int8)
    with pytest.raises(ValueError, match=r"wo\._extra_state.*floating"):
        fresh.load_state_dict(old)


def _converted_layer(seed: int, activation, weight, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return tq.convert(tq.Linear(64, 16, activation=activation, weight=weight, **kw).eval())


I4G32 = tq.QuantConfig(bits=4, granularity="per_group", group_size=32, symmetric=True)
I2G32 = tq.QuantConfig(bits=2, granularity="per_group", group_size=32, symmetric=True)
OTHER_CONFIGS = {  # (saved from, loaded into): the same keys, shapes and dtypes, other outputs
    "int4 into int2": ((None, I4G32), (None, I2G32)),
    "per-token into per-tensor": ((None, I4G32), (tq.QuantConfig(granularity="per_tensor"), I4G32)),
    "into weight-only": ((None, I4G32), (NOT_QUANTIZED, I4G32)),
    "float8 rows into a float8 tensor": (
        (tq.Float8Config(), tq.Float8Config()),
        (tq.Float8Config("per_tensor"), tq.Float8Config()),
    ),
    "float8 bounds": (
        (tq.Float8Config(), tq.Float8Config()),
        (tq.Float8Config(hp_value_lb=1e-3), tq.Float8Config()),
    ),  # fmt: skip
    "mx block 32 into 16": ((MX8, MX8), (tq.MXConfig(torch.float8_e4m3fn, block_size=16), MX8)),
}


@pytest.mark.parametrize("case", list(OTHER_CONFIGS))
def test_a_state_dict_of_other_configs_is_refused(case):
    """The state dict records the configs (the tag in _extra_state's shape): one saved from a
    layer of other configs, whose keys, shapes and dtypes all match (int4 codes fit an int2 layer's
    buffers, activations are quantized at run time), raises naming the key and the receiving
    configs, and leaves the module as it was (it loaded silently and computed other outputs,
    hostile trial 4); the same configs load, learned ranges or not (training-only)."""
    (a_saved, w_saved), (a_into, w_into) = OTHER_CONFIGS[case]
    saved = _converted_layer(0, a_saved, w_saved).state_dict()
    into = _converted_layer(1, a_into, w_into)
    before = {k: v.clone() for k, v in into.state_dict().items()}
    with pytest.raises(ValueError, match=r"^_extra_state: the state dict was saved from a "
                       r"Quantized\w+ of other configs than this one's \(activation_config="):  # fmt: skip
        into.load_state_dict(saved)
    after = into.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    same = _converted_layer(2, a_saved, w_saved)
    same.load_state_dict(saved)
    assert all(torch.equal(same.state_dict()[k], v) for k, v in saved.items())


@pytest.mark.parametrize("name", ["weight-only", "weight-only-asym", "i8"])
def test_converted_equals_prepared_on_a_non_contiguous_input(name):
    """An N-D input of any layout: the converted weight-only layer ran F.linear on it as it was,
    whose bits depend on the layout (a transposed bf16 input differed in 28% of the outputs,
    hostile trial 6); it runs on x [M, K] as the prepared layer does."""
    lin = _prepared_linear(name, "cpu", torch.bfloat16, K=64, N=24)
    conv = tq.convert(copy.deepcopy(lin))
    torch.manual_seed(0)
    x = torch.randn(6, 4, 64).transpose(0, 1).bfloat16()
    with torch.no_grad():
        assert torch.equal(conv(x), lin(x)) and torch.equal(conv(x), conv(x.contiguous()))


@pytest.mark.parametrize("strict", [False, True], ids=["non-strict", "strict"])
@pytest.mark.parametrize(
    "name", ["i8", "i4g16-packed", "weight-only", "ao-per-tensor", "float8", "mx"]
)
def test_torch_export_with_dynamic_dims(name, strict):
    """torch.export of a converted layer behind a float layer (its input requires grad, so the
    input-gradient Function is in the trace), batch and sequence dims dynamic: the program
    computes the eager bits at other shapes. (Non-strict, torch's default, failed: a reshape of
    the Function's output made the trace guard the dims, hostile trial 6.)"""
    from torch.export import Dim, export

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), tq.convert(_prepared_linear(name, "cpu"))).eval()
    dims = {"input": {0: Dim("batch", max=64), 1: Dim("seq", max=64)}}
    program = export(model, (torch.randn(3, 5, 32),), dynamic_shapes=dims, strict=strict)
    x = torch.randn(4, 7, 32)
    with torch.no_grad():
        assert torch.equal(program.module()(x), model(x))


def test_the_config_record_ignores_training_only_fields_and_old_records_load():
    """Learned ranges (training-only) do not change the record; a torch.ao layer's activation
    range does (as a tuple of ints, whatever sequence was given); a per-tensor weight is stored
    per channel, so a skeleton of the prepared layer's per-tensor configs takes its conversion;
    a record of shape [0] (before configs were recorded) loads unchecked."""
    learned = dataclasses.replace(I4G32, range_learning=True)
    saved = _converted_layer(0, None, learned).state_dict()
    assert saved["_extra_state"].shape[0] == 0 and saved["_extra_state"].dim() == 2
    _converted_layer(1, None, I4G32).load_state_dict(saved)
    ao_layer = _converted_layer(0, None, None, qconfig=q.default_dynamic_qat_qconfig)
    assert "activation_range=(0, 255)" in ao_layer.config_record()
    skeleton = tq.QuantizedLinear(64, 16, activation=ao_layer.activation_config,
                                  weight=ao_layer.weight_config, activation_range=[0, 255])  # fmt: skip
    skeleton.load_state_dict(ao_layer.state_dict())  # a list range is the tuple's record
    skeleton = tq.QuantizedLinear(64, 16, activation_range=(0, 255))  # activation config unread
    skeleton.load_state_dict(ao_layer.state_dict())
    per_tensor = tq.QuantConfig(granularity="per_tensor", symmetric=True)
    skeleton = tq.QuantizedLinear(64, 16, weight=per_tensor)  # the prepared layer's configs
    skeleton.load_state_dict(
        _converted_layer(0, None, per_tensor).state_dict()
    )  # stored per channel
    saved["_extra_state"] = torch.empty(0)
    into = _converted_layer(1, None, I2G32)
    into.load_state_dict(saved)  # an old record: not checked (the int2 layer takes the codes)
    assert torch.equal(into.weight_codes, saved["weight_codes"])


# -- 9: dtype casts ---------------------------------------------------------------------------


def _on_grid(weight: torch.Tensor, bits: int, group: int) -> None:
    """Make ``weight`` [N, K] (symmetric, groups of ``group``) quantize to the same codes and
    scales in fp32, fp16 and bf16: codes k * 2^-e with |k| <= qmax, and a group maximum of
    ((qmax - qmin) / 2) * 2^-e, so the scale is 2^-e in every dtype."""
    N, K = weight.shape
    qmax = 2 ** (bits - 1) - 1
    k = torch.randint(-qmax, qmax + 1, (N, K // group, group)).float()
    k[..., 0] = (qmax + 0.5) * torch.where(torch.rand(N, K // group) < 0.5, -1.0, 1.0)
    step = 2.0 ** -torch.randint(3, 9, (N, K // group, 1)).float()
    with torch.no_grad():
        weight.copy_((k * step).reshape(N, K))


class EmbedNormLinear(nn.Module):
    """The layout that failed: a (converted) table feeds LayerNorm, then a linear."""

    def __init__(self, dtype, device, weight: tq.QuantConfig, bits: int, group: int | None):
        super().__init__()
        self.tok = tq.Embedding(40, 32, weight=I4G16, device=device, dtype=dtype)
        self.norm = nn.LayerNorm(32, device=device, dtype=dtype)
        self.fc = tq.Linear(32, 16, weight=weight, device=device, dtype=dtype)
        _on_grid(self.tok.weight, 4, 16)
        _on_grid(self.fc.weight, bits, group or 32)

    def forward(self, idx):
        return self.fc(self.norm(self.tok(idx)))


_CASTS = {  # (trained dtype, cast)
    "to-bf16": (torch.float32, lambda m: m.to(torch.bfloat16)),
    "bfloat16": (torch.float32, lambda m: m.bfloat16()),
    "half": (torch.float32, lambda m: m.half()),
    "to-dtype-fp16": (torch.float32, lambda m: m.to(dtype=torch.float16)),
    "type-bf16": (torch.float32, lambda m: m.type(torch.bfloat16)),
    "bf16-trained-float": (torch.bfloat16, lambda m: m.float()),
}


@pytest.mark.parametrize("weight", ["i8pc", "i4g16"])
@pytest.mark.parametrize("cast", list(_CASTS))
def test_cast_converted_equals_prepared_cast_the_same_way(cast, weight, device):
    """Casting the converted model casts what it computes as casting the prepared model does: the
    table's output dtype and the dtype a linear forms its dequantized weight in follow the cast
    (codes and scales stay). On weights whose codes and scales every dtype computes alike, the
    cast converted model equals the cast prepared model bit for bit."""
    dtype, fn = _CASTS[cast]
    cfg, bits, group = (I8PC, 8, None) if weight == "i8pc" else (I4G16, 4, 16)
    model = EmbedNormLinear(dtype, device, cfg, bits, group).eval()
    conv = tq.convert(copy.deepcopy(model))
    codes = {k: v.clone() for k, v in conv.state_dict().items() if k.endswith("_codes")}
    assert fn(conv) is conv
    idx = torch.randint(0, 40, (3, 5), device=device)
    want = fn(model)(idx)
    new = want.dtype
    assert new != dtype and conv.tok.output_dtype == new and conv.fc.weight_dtype == new
    got = conv(idx)
    assert got.dtype == new and torch.equal(got, want)
    assert conv.tok(idx).dtype == new
    for k, v in codes.items():
        assert torch.equal(conv.state_dict()[k], v), k
    assert conv.tok.weight_scale.dtype == conv.fc.weight_scale.dtype == torch.float32


def test_weight_only_dequantizes_into_the_cast_dtype(device):
    """A bf16-trained weight-only layer cast to fp32 forms w_fq = q * s in fp32, as the prepared
    layer cast to fp32 forms its fake-quantized weight in fp32 (not the bf16-rounded values)."""
    torch.manual_seed(0)
    lin = tq.Linear(64, 16, activation=NOT_QUANTIZED, weight=I8PC, device=device,
                    dtype=torch.bfloat16)  # fmt: skip
    conv = tq.convert(copy.deepcopy(lin))
    conv.float()
    assert conv.weight_dtype == torch.float32 and conv.bias.dtype == torch.float32
    x = torch.randn(5, 64, device=device)
    w_fq = conv.weight_codes.float() * conv.weight_scale  # fp32 products, one rounding
    assert not torch.equal(w_fq, w_fq.bfloat16().float())  # the test can tell the two apart
    assert torch.equal(conv(x), F.linear(x, w_fq, conv.bias))


def test_double_cast_is_rejected_at_forward_with_the_way_out(device):
    conv = tq.convert(tq.Linear(32, 8, device=device))
    conv.double()
    with pytest.raises(TypeError, match=r"QuantizedLinear.*float64.*\.float\(\)"):
        conv(torch.randn(2, 32, device=device))
    assert torch.isfinite(conv.float()(torch.randn(2, 32, device=device))).all()
    emb = tq.convert(tq.Embedding(10, 32, device=device)).double()
    with pytest.raises(TypeError, match=r"QuantizedEmbedding.*float64.*\.float\(\)"):
        emb(torch.tensor([1], device=device))


# -- 10: autocast ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(LINEARS))
def test_autocast_converted_linear_equals_prepared(name, device):
    lin = _prepared_linear(name, device)
    conv = tq.convert(copy.deepcopy(lin))
    x = torch.randn(3, 5, 32, device=device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        got = conv(x)  # first: the prepared torch.ao layer observes as it runs
        want = lin(x)
    assert want.dtype == torch.bfloat16
    _assert_converted_equals_prepared(got, want, name)


def test_autocast_converted_embedding_equals_prepared(device):
    emb = tq.Embedding(40, 32, max_norm=1.0, weight=I4G16, device=device)
    conv = tq.convert(copy.deepcopy(emb))
    idx = torch.randint(0, 40, (3, 5), device=device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        want, got = emb(idx), conv(idx)
    assert want.dtype == torch.float32  # nn.Embedding is not autocast
    assert got.dtype == want.dtype and torch.equal(got, want)


# -- 11: empty inputs -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dt_id)
@pytest.mark.parametrize("name", list(LINEARS))
def test_empty_input_converted_linear(name, dtype, device):
    lin = _prepared_linear(name, device, dtype)
    conv = tq.convert(copy.deepcopy(lin))
    for shape in [(0, 32), (2, 0, 32), (0,)]:
        x = torch.randn(*shape[:-1], 32, device=device, dtype=dtype)
        want = lin(x)
        got = conv(x)
        assert got.shape == want.shape == (*shape[:-1], 24) and got.dtype == want.dtype == dtype
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        got = conv(torch.randn(0, 32, device=device, dtype=dtype))
    assert got.shape == (0, 24) and got.dtype == torch.bfloat16


@pytest.mark.parametrize("max_norm", [None, 1.0])
@pytest.mark.parametrize("cfg", [I8PC, I4G16], ids=["i8pc", "i4g16"])
def test_empty_input_converted_embedding(cfg, max_norm, device):
    emb = tq.Embedding(20, 32, max_norm=max_norm, weight=cfg, device=device,
                       dtype=torch.bfloat16)  # fmt: skip
    conv = tq.convert(copy.deepcopy(emb))
    for shape in [(0,), (0, 3), (2, 0)]:
        idx = torch.zeros(shape, dtype=torch.long, device=device)
        want, got = emb(idx), conv(idx)
        assert got.shape == want.shape == (*shape, 32)
        assert got.dtype == want.dtype == torch.bfloat16


# -- the rest of the audit ------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(LINEARS))
def test_meta_skeleton_then_to_empty_and_strict_load(name, device):
    """A converted model built on the meta device (a prepared skeleton moved there and converted,
    or the module constructed there), materialized with ``to_empty`` and loaded (strict) computes
    what the saved model computes, its dtype from the state dict."""
    conv = tq.convert(_prepared_linear(name, device, torch.bfloat16))
    skeleton = tq.convert(tq.Linear(32, 24, **LINEARS[name]).to("meta"))
    cfg = LINEARS[name]
    built = tq.QuantizedLinear(32, 24, activation=cfg.get("activation", tq.QuantConfig()),
                               weight=cfg.get("weight", I8PC), device="meta")  # fmt: skip
    x = torch.randn(3, 32, device=device, dtype=torch.bfloat16)
    for meta in (skeleton, built) if "weight" in cfg else (skeleton,):
        assert all(b.is_meta for b in meta.buffers())
        meta.to_empty(device=device)
        meta.load_state_dict(conv.state_dict(), strict=True)
        assert meta.weight_dtype == torch.bfloat16 and torch.equal(meta(x), conv(x))


def test_fresh_modules_state_dict_round_trip_strict(device):
    for make in (
        lambda: tq.QuantizedLinear(32, 8, weight=ASYM4, device=device),
        lambda: tq.QuantizedLinear(32, 8, bias=False, weight=I4G16, device=device),
        lambda: tq.QuantizedEmbedding(10, 32, weight=I4G16, device=device),
    ):
        a, b = make(), make()
        b.load_state_dict(a.state_dict(), strict=True)
        _assert_same_state(a, b)
        save = io.BytesIO()
        torch.save(a.state_dict(), save)
        b.load_state_dict(torch.load(io.BytesIO(save.getvalue()), weights_only=True))


def test_deepcopy_and_pickled_module_round_trip(device):
    conv = _converted(0, torch.bfloat16, device, tied=True)
    idx = torch.randint(0, 40, (2, 4), device=device)
    want = conv(idx)
    for other in (copy.deepcopy(conv), _pickled(conv)):
        assert other.head.weight_codes is other.tok.weight_codes
        assert other.wo.weight_dtype == torch.bfloat16 and torch.equal(other(idx), want)


def _pickled(module: nn.Module) -> nn.Module:
    buf = io.BytesIO()
    torch.save(module, buf)
    return torch.load(io.BytesIO(buf.getvalue()), weights_only=False)


# -- gradients: the input gets the prepared layer's, the buffers none --------------------------

GRAD_LINEARS = {**LINEARS, **FORMATS}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dt_id)
@pytest.mark.parametrize("name", list(GRAD_LINEARS))
def test_converted_input_gets_the_prepared_layers_gradient(name, dtype, device):
    """The gradient to the input of a converted layer is the prepared eval layer's (weights
    frozen): bit-identical, except the int8 families' dgrad, a torch.mm (the prepared layer's
    16-bit GPU default) where the interpreter runs the Triton kernel, whose sums run in another
    order (within a rounding of the dtype). The same with the backward run inside autocast
    (torch.mm there would round to bf16), and with the output changed in place (a ReLU). A model
    that adds an adapter to the converted layer's output gets both contributions (it got the
    adapter's only)."""
    lin = _prepared_linear(name, device, dtype).requires_grad_(False)
    conv = tq.convert(copy.deepcopy(lin))
    x = torch.randn(2, 3, 32, device=device, dtype=dtype, requires_grad=True)
    dy = torch.randn(2, 3, 24, device=device, dtype=dtype)
    (want,) = torch.autograd.grad(lin(x), x, dy)
    (got,) = torch.autograd.grad(conv(x), x, dy)
    assert not any(b.requires_grad for b in conv.buffers())
    int8 = isinstance(conv, tq.QuantizedLinear) and not conv.weight_only

    def assert_prepared(got, want):
        if int8:
            eps = torch.finfo(dtype).eps
            torch.testing.assert_close(got, want, rtol=eps, atol=eps * want.abs().max().item())
        else:
            assert torch.equal(got, want)

    assert_prepared(got, want)
    grads = {}
    for layer in (lin, conv):
        with torch.autocast(device_type=device, dtype=torch.bfloat16):  # backward inside too
            (grads[layer],) = torch.autograd.grad(layer(x), x, dy.to(torch.bfloat16))
    assert_prepared(grads[conv], grads[lin])
    (relu_got,) = torch.autograd.grad(conv(x).relu_(), x, dy)  # in place on the output
    torch.testing.assert_close(relu_got, torch.autograd.grad(conv(x).relu(), x, dy)[0],
                               rtol=0, atol=0)  # fmt: skip
    adapter = nn.Linear(32, 24, bias=False, device=device, dtype=dtype)
    (both,) = torch.autograd.grad(conv(x) + adapter(x), x, dy)
    (alone,) = torch.autograd.grad(adapter(x), x, dy)
    torch.testing.assert_close(both, got + alone, rtol=0, atol=0)
    with torch.no_grad():  # inference: no graph, nothing kept
        assert conv(x).grad_fn is None


def test_converted_input_gradient_edge_cases(device):
    """An empty batch through a per-tensor float8 layer has a gradient (the backward's per-tensor
    scale of no rows raised); a module cast between forward and backward leaves the gradient
    the forward's (the backward read the module's new dtype); under an autocast of the other
    16-bit dtype the gradient is the prepared layer's (w_fq cast to x's dtype, then autocast's)."""
    per_tensor = dict(activation=tq.Float8Config("per_tensor"), weight=tq.Float8Config())
    lin = tq.Linear(32, 24, device=device, **per_tensor).eval().requires_grad_(False)
    conv = tq.convert(copy.deepcopy(lin))
    x = torch.zeros(0, 32, device=device, requires_grad=True)
    (g,) = torch.autograd.grad(conv(x), x, torch.zeros(0, 24, device=device))
    assert g.shape == (0, 32)
    x = torch.randn(4, 32, device=device, requires_grad=True)
    dy = torch.randn(4, 24, device=device)
    (want,) = torch.autograd.grad(conv(x), x, dy)
    out = conv(x)
    conv.to(torch.bfloat16)
    (got,) = torch.autograd.grad(out, x, dy)
    assert torch.equal(got, want)
    for name in ("weight-only", "float8"):
        lin = _prepared_linear(name, device).requires_grad_(False)
        conv = tq.convert(copy.deepcopy(lin))
        x = torch.randn(4, 32, device=device, dtype=torch.float16, requires_grad=True)
        grads = []
        for layer in (lin, conv):
            with torch.autocast(device_type=device, dtype=torch.bfloat16):
                grads += torch.autograd.grad(layer(x), x, torch.ones(4, 24, device=device))
        assert torch.equal(grads[0], grads[1]), name


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("name", ["i4g16-packed", "weight-only", "mx", "float8"])
def test_converted_input_gradient_keeps_no_weight_sized_tensor(name, compiled, device):
    """What a converted layer's graph keeps for the input gradient, besides its buffers and the
    input: the int8 layers the input's clamp bits [M, K/8], the others nothing. (F.linear / addmm
    on the dequantized weight kept that [N, K] weight; compiled, the backward's dequantize was
    merged with the forward's and its weight-sized result kept.)"""
    torch.manual_seed(0)
    conv = tq.convert(_prepared_linear(name, device, torch.float32, K=256, N=192))
    f = conv
    if compiled:
        torch._dynamo.reset()
        f = torch.compile(conv, fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 256, device=device, requires_grad=True)
    f(x)  # compiled: the first call compiles
    kept = {t.untyped_storage().data_ptr() for t in (x, *conv.buffers())}
    new = []

    def pack(t):
        if t.untyped_storage().data_ptr() not in kept:
            new.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        f(x)
    int8 = isinstance(conv, tq.QuantizedLinear) and not conv.weight_only
    assert sum(new) == (4 * 256 // 8 if int8 else 0), new


@pytest.mark.parametrize("name", ["i8", "asym-i4g16", "ao-per-tensor", "float8", "mx"])
def test_converted_input_gradient_compiled_vmapped_and_refused(name, device):
    """The same gradient compiled (fullgraph) and per sample under vmap; a second derivative,
    forward-mode AD and torch.func.grad raise triton_qat's errors instead of a wrong result."""
    import torch.autograd.forward_ad as fwAD

    dtype = torch.bfloat16
    conv = tq.convert(_prepared_linear(name, device, dtype))
    x = torch.randn(2, 6, 32, device=device, dtype=dtype, requires_grad=True)
    dy = torch.randn(2, 6, 24, device=device, dtype=dtype)
    (want,) = torch.autograd.grad(conv(x), x, dy)
    torch._dynamo.reset()
    (compiled,) = torch.autograd.grad(torch.compile(conv, fullgraph=True)(x), x, dy)
    assert torch.equal(compiled, want)
    (batched,) = torch.autograd.grad(torch.vmap(conv)(x), x, dy)
    for i in range(2):  # per sample (torch.ao's per-tensor qparams: each sample's own)
        (one,) = torch.autograd.grad(conv(x[i]), x, dy[i])
        assert torch.equal(batched[i], one[i])
    with pytest.raises(RuntimeError, match="create_graph"):
        torch.autograd.grad(conv(x), x, dy, create_graph=True)
    with fwAD.dual_level(), pytest.raises(RuntimeError, match="forward-mode AD"):
        conv(fwAD.make_dual(x.detach(), torch.ones_like(x)))
    with pytest.raises(RuntimeError, match="torch.func"):
        torch.func.grad(lambda t: conv(t).float().sum())(x.detach())


def test_forward_hooks_run_on_converted_modules(device):
    conv = _converted(0, device=device)
    calls = []
    for name in ("tok", "fc", "wo"):
        conv.get_submodule(name).register_forward_pre_hook(lambda m, a, n=name: calls.append(n))
        conv.get_submodule(name).register_forward_hook(lambda m, a, o: o * 0)
    out = conv(torch.randint(0, 40, (2, 3), device=device))
    assert calls == ["tok", "fc", "wo"] and torch.isfinite(out).all()


def test_constructor_arguments_are_checked():
    with pytest.raises(ValueError, match="in_features: expected a positive int"):
        tq.QuantizedLinear(0, 8)
    with pytest.raises(ValueError, match="out_features: expected a positive int"):
        tq.QuantizedLinear(8, 0)
    with pytest.raises(ValueError, match="weight.group_size: expected a divisor of 30"):
        tq.QuantizedLinear(30, 8, weight=I4G16)
    with pytest.raises(TypeError, match="dtype: expected float32, float16 or bfloat16"):
        tq.QuantizedLinear(32, 8, dtype=torch.float64)
    with pytest.raises(TypeError, match="weight: expected a triton_qat.QuantConfig"):
        tq.QuantizedLinear(32, 8, weight="int4")
    with pytest.raises(ValueError, match="embedding_dim: expected a positive int"):
        tq.QuantizedEmbedding(8, 0)
    with pytest.raises(ValueError, match="num_embeddings: expected a non-negative int"):
        tq.QuantizedEmbedding(-1, 8)
    with pytest.raises(TypeError, match="output_dtype"):
        tq.QuantizedEmbedding(8, 16, output_dtype=torch.float64)
