"""torchao interop: tq.prepare(model, QATConfig(...)), tq.from_torchao / tq.to_torchao.

Against torchao 0.18's own objects: fake-quantized values and embedding lookups bit-exact, linear
outputs within the GEMM's float-rounding bound (triton_qat's int8 GEMM sums exactly, torchao's
F.linear rounds; weight-only linears bit-exact: both are F.linear on the same fake-quantized
weight), gradients within rounding; round trips (learned scales included); unsupported configs
raising."""

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close_rel, dt_id
from torch import nn
from torch._dynamo.utils import counters
from torch.nn.utils.parametrizations import spectral_norm, weight_norm
from torch.nn.utils.parametrize import type_before_parametrizations

import triton_qat as tq
from triton_qat.torchao_compat import to_quant_config, to_torchao_config

torchao = pytest.importorskip("torchao")  # CI installs it (Makefile); a guard for local runs

from torchao.quantization import (  # noqa: E402
    Float8DynamicActivationFloat8WeightConfig,
    Int4WeightOnlyConfig,
    Int8DynamicActivationIntxWeightConfig,
    IntxWeightOnlyConfig,
    quantize_,
)
from torchao.quantization.granularity import PerAxis, PerGroup  # noqa: E402
from torchao.quantization.qat import (  # noqa: E402
    FakeQuantizedEmbedding,
    FakeQuantizedLinear,
    IntxFakeQuantizeConfig,
    QATConfig,
    initialize_fake_quantizers,
)
from torchao.quantization.qat.fake_quantize_config import (  # noqa: E402
    Float8FakeQuantizeConfig,
    Int4WeightFakeQuantizeConfig,
)
from torchao.quantization.qat.fake_quantizer import IntxFakeQuantizer  # noqa: E402
from torchao.quantization.qat.linear import disable_linear_fake_quant  # noqa: E402
from torchao.quantization.quant_primitives import MappingType, ZeroPointDomain  # noqa: E402

from triton_qat.spec import spec_for  # noqa: E402

ACT = IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)
W4 = IntxFakeQuantizeConfig(torch.int4, group_size=32)
# what torchao users write: fake-quantize configs (fp32 scales), or a base PTQ config, whose
# inferred configs keep scales in the tensor's dtype (scale_precision=None): fp32 models only
EXPLICIT = QATConfig(activation_config=ACT, weight_config=W4)
BASE = QATConfig(
    Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(32))
)
EMB = QATConfig(weight_config=IntxFakeQuantizeConfig(torch.int4, group_size=32))
EMB_BASE = QATConfig(IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)))
W4_ASYM = IntxFakeQuantizeConfig(torch.int4, group_size=32, is_symmetric=False)
W8_ASYM = IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=False)
RL = dict(is_dynamic=False, range_learning=True)  # torchao's learned ranges are static
W4_RL = IntxFakeQuantizeConfig(torch.int4, group_size=32, **RL)
W8_RL = IntxFakeQuantizeConfig(torch.int8, "per_channel", **RL)
# linear configs tq.prepare maps (TinyGPT's embedding gets EMB): name -> (QATConfig, fp32 only)
LINEAR_CONFIGS = {
    "explicit": (EXPLICIT, False),
    "base": (BASE, True),  # scale_precision=None: fp32 only
    "asym-g32": (QATConfig(activation_config=ACT, weight_config=W4_ASYM), False),
    "asym-pc": (QATConfig(activation_config=ACT, weight_config=W8_ASYM), False),
    "weight-only": (EMB, False),  # activation_config=None
    "weight-only-asym": (QATConfig(weight_config=W4_ASYM), False),
    "weight-only-base": (EMB_BASE, True),  # IntxWeightOnlyConfig: torchao infers act None
}
DTYPES2 = [torch.float32, torch.bfloat16]


def is_embedding(mod, fqn):
    return isinstance(mod, nn.Embedding)


class TinyGPT(nn.Module):
    def __init__(self, vocab: int = 80, dim: int = 64, dtype=torch.float32):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim, dtype=dtype)
        self.fc = nn.Linear(dim, dim, dtype=dtype)
        self.lm_head = nn.Linear(dim, vocab, bias=False, dtype=dtype)
        self.lm_head.weight = self.tok.weight  # tied

    def forward(self, idx):
        return self.lm_head(F.gelu(self.fc(self.tok(idx))))


def _pair(dtype, linear_cfg, emb_cfg):
    """(torchao-prepared, triton_qat-prepared) copies of one TinyGPT."""
    torch.manual_seed(0)
    model = TinyGPT(dtype=dtype)
    ref = copy.deepcopy(model)
    quantize_(ref, linear_cfg)
    quantize_(ref, emb_cfg, filter_fn=is_embedding)
    ours = tq.prepare(copy.deepcopy(model), linear_cfg)  # the one line
    tq.prepare(ours, emb_cfg, is_embedding)
    return ref, ours


def _grads(model, idx):
    model.zero_grad()
    F.cross_entropy(model(idx).flatten(0, 1).float(), idx.flatten()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_import_triton_qat_does_not_import_torchao():
    code = (
        "import sys, torch, triton_qat as tq\n"
        "m = tq.convert(tq.prepare(torch.nn.Sequential(torch.nn.Linear(8, 8), "
        "torch.nn.Embedding(4, 8)), embedding=tq.QuantConfig(granularity='per_channel', "
        "symmetric=True)))\n"
        "assert 'torchao' not in sys.modules, 'torchao imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize(
    "config, role, expected",
    [
        (ACT, "activation", tq.QuantConfig()),
        (
            IntxFakeQuantizeConfig(torch.int4, "per_token", is_symmetric=False),
            "activation",
            tq.QuantConfig(bits=4),
        ),
        (
            W4,
            "weight",
            tq.QuantConfig(bits=4, granularity="per_group", group_size=32, symmetric=True),
        ),
        (
            IntxFakeQuantizeConfig(torch.int8, PerAxis(0), scale_precision=None),
            "weight",
            tq.QuantConfig(granularity="per_channel", symmetric=True),
        ),
        (
            IntxFakeQuantizeConfig(torch.int2, group_size=16),
            "weight",
            tq.QuantConfig(bits=2, granularity="per_group", group_size=16, symmetric=True),
        ),
        (W4_ASYM, "weight", tq.QuantConfig(bits=4, granularity="per_group", group_size=32)),
        (W8_ASYM, "weight", tq.QuantConfig(granularity="per_channel")),
        (None, "activation", tq.NOT_QUANTIZED),  # weight-only
        (
            W4_RL,
            "weight",
            tq.QuantConfig(bits=4, granularity="per_group", group_size=32, symmetric=True,
                           range_learning=True),
        ),
        (W8_RL, "weight", tq.QuantConfig(granularity="per_channel", symmetric=True, range_learning=True)),
    ],
    ids=["act-i8", "act-i4", "w-i4g32", "w-i8pc", "w-i2g16", "w-i4g32-asym", "w-i8pc-asym",
         "act-none", "w-i4g32-rl", "w-i8pc-rl"],
)  # fmt: skip
def test_mapping_and_its_inverse(config, role, expected):
    assert to_quant_config(config, role) == expected
    back = to_torchao_config(expected, role)
    assert to_quant_config(back, role) == expected
    if config is not None and config.scale_precision is not None:
        assert back == config  # the very config torchao was given
    assert (back is None) == (config is None)


@pytest.mark.parametrize(
    "config, role, match",
    [
        (IntxFakeQuantizeConfig(torch.uint4, group_size=32), "weight", r"\.dtype=torch\.uint4"),
        (IntxFakeQuantizeConfig(torch.int1, group_size=32), "weight", r"\.dtype=torch\.int1"),
        (IntxFakeQuantizeConfig(torch.int8, "per_token"), "activation", "mapping_type"),
        (IntxFakeQuantizeConfig(torch.int4, group_size=32, eps=1e-6), "weight", r"\.eps="),
        (IntxFakeQuantizeConfig(torch.int4, group_size=32, is_dynamic=False), "weight", "is_dynamic"),
        (  # torchao learns asymmetric zero points as floats
            IntxFakeQuantizeConfig(torch.int4, group_size=32, is_symmetric=False, **RL),
            "weight",
            r"range_learning=True with mapping_type=MappingType\.ASYMMETRIC",
        ),
        (
            IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=False, **RL),
            "weight",
            r"range_learning=True with mapping_type",
        ),
        (IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False, **RL), "activation", "range_learning"),
        (
            IntxFakeQuantizeConfig(torch.int4, group_size=32, scale_precision=torch.bfloat16),
            "weight",
            "scale_precision",
        ),
        (
            IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False, zero_point_precision=torch.float32),
            "activation",
            "zero_point_precision",
        ),
        (
            IntxFakeQuantizeConfig(torch.int4, group_size=32, zero_point_domain=ZeroPointDomain.FLOAT),
            "weight",
            "zero_point_domain",
        ),
        (IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False), "weight", "granularity"),
        (None, "weight", "weight_config=None"),
        (IntxFakeQuantizeConfig(torch.int8, "per_channel"), "activation", "granularity"),
        (Float8FakeQuantizeConfig(dtype=torch.float8_e5m2), "weight", "dtype"),  # e4m3 only
        (Int4WeightFakeQuantizeConfig(activation_dtype=torch.bfloat16), "weight", "activation_dtype"),
    ],
)  # fmt: skip
def test_unsupported_fake_quantize_configs_name_the_field(config, role, match):
    with pytest.raises(NotImplementedError, match=match):
        to_quant_config(config, role)


def _int8_act_int4_weight_config():
    from torchao.prototype.quantization.int4 import Int8DynamicActivationInt4WeightConfig

    return QATConfig(Int8DynamicActivationInt4WeightConfig(group_size=32))


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: QATConfig(activation_config=ACT), NotImplementedError, "weight_config=None"),
        (lambda: QATConfig(Int4WeightOnlyConfig(group_size=32)), NotImplementedError, "Int4WeightFakeQuantizeConfig"),
        (lambda: QATConfig(Float8DynamicActivationFloat8WeightConfig(weight_dtype=torch.float8_e5m2)), NotImplementedError, "dtype"),
        (_int8_act_int4_weight_config, NotImplementedError, "Int8DynamicActivationInt4WeightConfig"),
        (
            lambda: QATConfig(Int8DynamicActivationIntxWeightConfig(weight_mapping_type=MappingType.ASYMMETRIC)),
            NotImplementedError,
            "base_config=Int8DynamicActivationIntxWeightConfig",
        ),
        (lambda: QATConfig(BASE.base_config, step="convert"), ValueError, "step='convert'"),
        (lambda: BASE.base_config, TypeError, "QATConfig"),  # a bare PTQ config
        (lambda: W4, TypeError, "QATConfig"),
    ],
    ids=["act-only", "int4-weight-only", "float8", "da8w4",
         "bad-base", "convert-step", "bare-base", "bare-fq-config"],
)  # fmt: skip
def test_unsupported_qat_configs_raise_and_leave_the_model(make, error, match):
    model = TinyGPT()
    with pytest.raises(error, match=match):
        tq.prepare(model, make())
    assert type(model.fc) is nn.Linear and type(model.lm_head) is nn.Linear


def test_torchao_errors_are_torchao_errors():
    """Modules torchao cannot prepare raise torchao's own ValueError, prefixed by the module's
    path, with nothing swapped."""
    cases = ((is_embedding, "tok"), (lambda m, f: f in ("fc", ""), "<root>"))
    for filter_fn, where in cases:
        with pytest.raises(ValueError) as theirs:
            quantize_(TinyGPT(), EXPLICIT, filter_fn=filter_fn)
        model = TinyGPT()
        with pytest.raises(ValueError) as ours:
            tq.prepare(model, EXPLICIT, filter_fn=filter_fn)
        assert str(ours.value) == f"{where}: {theirs.value}"
        assert type(model.fc) is nn.Linear


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=dt_id)
def test_fake_quantized_values_bit_exact_vs_torchao_quantizers(dtype):
    torch.manual_seed(0)
    x = torch.randn(6, 64, dtype=dtype) * 3
    x[2] = 0  # all-zero token
    w = torch.randn(48, 64, dtype=dtype)
    configs = [
        (ACT, x, "activation"),
        (IntxFakeQuantizeConfig(torch.int4, "per_token", is_symmetric=False), x, "activation"),
        (W4, w, "weight"),
        (IntxFakeQuantizeConfig(torch.int8, "per_channel"), w, "weight"),
        (IntxFakeQuantizeConfig(torch.int2, group_size=16), w, "weight"),
        (W4_ASYM, w + 1.5, "weight"),  # offset rows: zero points away from the middle
        (W8_ASYM, w, "weight"),
        (IntxFakeQuantizeConfig(torch.int2, group_size=16, is_symmetric=False), w, "weight"),
    ]
    if dtype == torch.float32:  # scale_precision=None: the tensor's dtype
        configs += [
            (c, t, r)
            for c, t, r in zip(_base_configs(), (x, w), ("activation", "weight"), strict=True)
        ]
        configs.append((_base_configs(EMB_BASE)[1], w, "weight"))  # IntxWeightOnlyConfig
    for config, t, role in configs:
        expected = IntxFakeQuantizer(config)(t)
        assert torch.equal(tq.fake_quantize(t, to_quant_config(config, role)), expected), config


def _base_configs(config=BASE):
    from torchao.quantization.qat.fake_quantize_config import _infer_fake_quantize_configs

    return _infer_fake_quantize_configs(config.base_config)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=dt_id)
@pytest.mark.parametrize("config", [W4, IntxFakeQuantizeConfig(torch.int8, "per_channel")])
def test_embedding_matches_fake_quantized_embedding(config, dtype):
    """Lookups bit-exact; table gradients within one rounding (torchao's STE multiplies by the
    scale and by its reciprocal, triton_qat's passes the gradient through unchanged)."""
    torch.manual_seed(0)
    base = nn.Embedding(50, 64, padding_idx=0, dtype=dtype)
    ref = FakeQuantizedEmbedding.from_embedding(base, config)
    ours = tq.Embedding.from_float(base, weight=to_quant_config(config, "weight"))
    idx = torch.randint(0, 50, (4, 9))
    out = ours(idx)
    assert torch.equal(out, ref(idx))
    g = torch.randn_like(out)
    (g_ours,) = torch.autograd.grad(out, base.weight, g)
    (g_ref,) = torch.autograd.grad(ref(idx), base.weight, g)
    ulp = {torch.float32: 2**-23, torch.bfloat16: 2**-7, torch.float16: 2**-10}[dtype]
    torch.testing.assert_close(g_ours, g_ref, rtol=2 * ulp, atol=0)


@pytest.mark.parametrize(
    "which, dtype",
    # a base config's scale_precision=None is fp32 only (test_scale_precision_none_is_fp32_only)
    [(name, dt) for name, (_, fp32_only) in LINEAR_CONFIGS.items()
     for dt in DTYPES2 if dt == torch.float32 or not fp32_only],
    ids=lambda v: dt_id(v) if isinstance(v, torch.dtype) else v,
)  # fmt: skip
def test_prepare_computes_what_torchao_prepares(which, dtype):
    config = LINEAR_CONFIGS[which][0]
    ref, ours = _pair(dtype, config, EMB)
    kinds = {"tok": (FakeQuantizedEmbedding, tq.Embedding), "fc": (FakeQuantizedLinear, tq.Linear),
             "lm_head": (FakeQuantizedLinear, tq.Linear)}  # fmt: skip
    for name, (theirs, mine) in kinds.items():
        assert type(getattr(ref, name)) is theirs and type(getattr(ours, name)) is mine
    assert ours.lm_head.weight is ours.tok.weight  # tied, as torchao keeps it
    idx = torch.randint(0, 80, (3, 7))
    h = ref.tok(idx)
    assert torch.equal(ours.tok(idx), h)  # embedding rows: bit-exact
    fc = ref.fc
    w_fq = fc.weight_fake_quantizer(fc.weight.detach())
    assert torch.equal(tq.fake_quantize(ours.fc.weight.detach(), ours.fc.weight_config), w_fq)
    weight_only = fc.activation_fake_quantizer is None
    assert (ours.fc.activation_config is tq.NOT_QUANTIZED) == weight_only
    if weight_only:  # both F.linear on the same fake-quantized weight: bit-exact
        assert torch.equal(ours.fc(h), ref.fc(h))
        assert torch.equal(ours(idx), ref(idx))
    else:  # the same fake-quantized operands, the product rounded once instead of per dot
        exact = F.linear(fc.activation_fake_quantizer(h).double(), w_fq.double(), fc.bias.double())
        assert_close_rel(ours.fc(h), exact, dtype, "fc vs fp64 of torchao's operands")
        assert_close_rel(ref.fc(h), exact, dtype, "torchao's fc vs the same")
        assert_close_rel(ours(idx), ref(idx), dtype, "logits")
    g_ref, g_ours = _grads(ref, idx), _grads(ours, idx)
    assert g_ref.keys() == g_ours.keys()
    for name in g_ref:
        assert_close_rel(g_ours[name], g_ref[name], dtype, f"grad {name}")


@pytest.mark.parametrize("dtype", DTYPES2, ids=dt_id)
def test_from_torchao_trains_like_torchao_and_round_trips(dtype):
    config = BASE if dtype == torch.float32 else EXPLICIT
    ref, _ = _pair(dtype, config, EMB)
    disable_linear_fake_quant(ref.fc)  # a flag that must survive both ways
    untouched = copy.deepcopy(ref)
    ours = copy.deepcopy(ref)
    params = dict(ours.named_parameters())
    tq.from_torchao(ours)
    assert type(ours.tok) is tq.Embedding and type(ours.lm_head) is tq.Linear
    assert type(ours.fc) is tq.Linear and not ours.fc.fake_quant_enabled
    assert all(p is params[n] for n, p in ours.named_parameters())  # shared, tied
    assert ours.state_dict().keys() == ref.state_dict().keys()  # checkpoints load both ways
    idx = torch.randint(0, 80, (2, 9))
    h = ours.tok(idx)
    assert torch.equal(h, ref.tok(idx)) and torch.equal(ours.fc(h), ref.fc(h))
    assert_close_rel(ours(idx), ref(idx), dtype, "logits")
    # a few SGD steps on each: the parameters stay equal within rounding
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1)
    for _ in range(3):
        for model, opt in ((ref, opt_ref), (ours, opt_ours)):
            opt.zero_grad()
            F.cross_entropy(model(idx).flatten(0, 1).float(), idx.flatten()).backward()
            opt.step()
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=1e-2)
    for (name, p_ref), p_ours in zip(ref.named_parameters(), ours.parameters(), strict=True):
        torch.testing.assert_close(p_ours, p_ref, **tol, msg=name)
    # round trip: torchao modules again, with torchao's own configs, the same outputs
    back = tq.to_torchao(tq.from_torchao(copy.deepcopy(untouched)))
    for name in ("tok", "fc", "lm_head"):
        mine, theirs = getattr(back, name), getattr(untouched, name)
        assert type(mine) is type(theirs)
        assert mine.weight_fake_quantizer.config == theirs.weight_fake_quantizer.config
        assert mine.weight_fake_quantizer.enabled == theirs.weight_fake_quantizer.enabled
    assert not back.fc.activation_fake_quantizer.enabled
    assert back.lm_head.weight is back.tok.weight
    assert torch.equal(back(idx), untouched(idx))
    if dtype == torch.float32:  # torchao's convert step runs on it, as on torchao's own model
        convert = QATConfig(BASE.base_config, step="convert")
        quantize_(back, convert)
        quantize_(untouched, convert)
        assert torch.equal(back(idx), untouched(idx))


@pytest.mark.parametrize("which", [n for n in LINEAR_CONFIGS if n not in ("explicit", "base")])
def test_from_torchao_round_trips_asymmetric_and_weight_only(which):
    """A torchao-prepared model with asymmetric or weight-only linears: from_torchao computes what
    it computes (weight-only bit-exact), to_torchao gives back torchao's configs, flags, outputs."""
    ref, _ = _pair(torch.float32, LINEAR_CONFIGS[which][0], EMB)
    disable_linear_fake_quant(ref.fc)
    ours = tq.from_torchao(copy.deepcopy(ref))
    act = ours.lm_head.activation_config
    assert type(ours.lm_head) is tq.Linear and not ours.fc.fake_quant_enabled
    assert (act is tq.NOT_QUANTIZED) == which.startswith("weight-only")
    assert ours.lm_head.weight_config.symmetric == ("asym" not in which)
    idx = torch.randint(0, 80, (2, 9))
    if act is tq.NOT_QUANTIZED:
        assert torch.equal(ours(idx), ref(idx))
    else:
        assert_close_rel(ours(idx), ref(idx), torch.float32, "logits")
    back = tq.to_torchao(ours)
    for name in ("tok", "fc", "lm_head"):
        mine, theirs = getattr(back, name), getattr(ref, name)
        assert type(mine) is type(theirs)
        assert mine.weight_fake_quantizer.config == theirs.weight_fake_quantizer.config
        assert mine.weight_fake_quantizer.enabled == theirs.weight_fake_quantizer.enabled
        if name != "tok":
            a_mine, a_theirs = mine.activation_fake_quantizer, theirs.activation_fake_quantizer
            assert (a_mine is None) == (a_theirs is None)
            assert a_mine is None or a_mine.config == a_theirs.config
    assert torch.equal(back(idx), ref(idx))
    quantize_(back, QATConfig(step="convert"))  # torchao's convert step: plain modules again
    assert type(back.fc) is nn.Linear


def test_to_torchao_of_a_triton_qat_model():
    i4 = tq.QuantConfig(bits=4, granularity="per_group", group_size=32, symmetric=True)
    model = tq.prepare(TinyGPT(), weight=i4, embedding=i4)
    idx = torch.randint(0, 80, (2, 5))
    emb_out = model.tok(idx)
    tq.to_torchao(model)
    assert type(model.tok) is FakeQuantizedEmbedding and type(model.fc) is FakeQuantizedLinear
    assert model.fc.weight_fake_quantizer.config == W4
    assert model.fc.activation_fake_quantizer.config == ACT
    assert torch.equal(model.tok(idx), emb_out)
    quantize_(model, QATConfig(step="convert"))  # back to nn modules
    assert type(model.fc) is nn.Linear and model.lm_head.weight is model.tok.weight
    for bad, match in (
        (tq.Linear(8, 8, activation=tq.QuantConfig(granularity="per_tensor")), "per-token"),
        (tq.Linear(8, 8, qconfig=torch.ao.quantization.default_dynamic_qat_qconfig), "torch.ao"),
    ):
        seq = nn.Sequential(tq.Embedding(4, 8), bad)
        with pytest.raises(NotImplementedError, match=match):
            tq.to_torchao(seq)
        assert type(seq[0]) is tq.Embedding  # nothing swapped
    # weight-only with asymmetric weights: activation_config=None, is_symmetric=False
    i4a = tq.QuantConfig(bits=4, granularity="per_group", group_size=32)
    model = tq.prepare(TinyGPT(), activation=tq.NOT_QUANTIZED, weight=i4a)
    h = torch.randn(3, 64)
    out = model.fc(h)
    tq.to_torchao(model)
    assert model.fc.activation_fake_quantizer is None
    assert model.fc.weight_fake_quantizer.config == W4_ASYM
    assert torch.equal(model.fc(h), out)


@pytest.mark.parametrize("w_cfg, match", [(W4_ASYM, "mapping_type"), (W4_RL, "range_learning")])
def test_embedding_configs_triton_qat_lacks_raise(w_cfg, match):
    """torchao fake-quantizes embeddings asymmetrically / with learned ranges; tq.Embedding does
    not: NotImplementedError naming the field, from tq.prepare and from_torchao, nothing swapped."""
    model = TinyGPT()
    with pytest.raises(NotImplementedError, match=rf"tok: weight_config\.{match}"):
        tq.prepare(model, QATConfig(weight_config=w_cfg), is_embedding)
    assert type(model.tok) is nn.Embedding
    ref = TinyGPT()
    quantize_(ref, QATConfig(weight_config=w_cfg), filter_fn=is_embedding)
    with pytest.raises(NotImplementedError, match=match):
        tq.from_torchao(ref)
    assert type(ref.tok) is FakeQuantizedEmbedding


def test_scale_precision_none_is_fp32_only():
    model = TinyGPT(dtype=torch.bfloat16)
    with pytest.raises(
        NotImplementedError, match=r"fc: scale_precision=None.*weight is torch\.bfloat16"
    ):
        tq.prepare(model, BASE)
    assert type(model.fc) is nn.Linear
    ref = TinyGPT(dtype=torch.bfloat16)
    quantize_(ref, BASE)
    with pytest.raises(NotImplementedError, match="scale_precision=None"):
        tq.from_torchao(ref)
    model = tq.prepare(TinyGPT(), BASE)
    h = torch.randn(3, 64)
    model.fc(h)
    with pytest.raises(
        NotImplementedError, match=r"fc: scale_precision=None.*input is torch\.bfloat16"
    ):
        model.fc(h.bfloat16())  # e.g. under autocast: torchao would use bf16 scales
    model.fc.disable_fake_quant()(h.bfloat16())  # no fake quantization: no scales to differ
    model.fc.enable_fake_quant()
    converted = tq.convert(copy.deepcopy(model))  # the guard is the prepared module's only
    assert not converted.fc._forward_pre_hooks
    assert not tq.to_torchao(model).fc._forward_pre_hooks
    with pytest.raises(NotImplementedError, match="weight is torch.bfloat16"):
        tq.prepare(TinyGPT(), BASE).to(torch.bfloat16).fc(h.float())


def test_module_selection_filter_and_hooks():
    model = nn.ModuleDict(
        {"attn": nn.MultiheadAttention(64, 4), "a": nn.Linear(64, 64), "b": nn.Linear(64, 32)}
    )
    seen = []
    model["a"].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    ref = copy.deepcopy(model)
    quantize_(ref, EXPLICIT)
    tq.prepare(model, config=EXPLICIT)
    for name in ("a", "b"):
        assert type(ref[name]) is FakeQuantizedLinear and type(model[name]) is tq.Linear
    # torchao's default filter skips NonDynamicallyQuantizableLinear (attention out_proj)
    assert type(model["attn"].out_proj) is type(ref["attn"].out_proj)
    model["a"](torch.randn(2, 64))
    assert seen == [(2, 64)]  # hooks carried over
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    tq.prepare(model, EXPLICIT, lambda mod, fqn: fqn == "1")  # quantize_'s argument order
    assert type(model[0]) is nn.Linear and type(model[1]) is tq.Linear
    assert type(tq.prepare(nn.Linear(64, 64), EXPLICIT)) is tq.Linear  # the root itself
    with pytest.raises(ValueError, match="not both"):
        tq.prepare(nn.Linear(64, 64), EXPLICIT, config=EXPLICIT)
    with pytest.raises(ValueError, match="not combined"):
        tq.prepare(nn.Linear(64, 64), EXPLICIT, embedding=tq.QuantConfig())


def test_compile_fullgraph_model_prepared_from_qat_config():
    torch._dynamo.reset()
    counters.clear()
    _, model = _pair(torch.float32, BASE, EMB)  # with the fp32 guards' pre-hooks
    compiled = torch.compile(model, fullgraph=True)
    idx = torch.randint(0, 80, (2, 5))
    torch.testing.assert_close(compiled(idx), model(idx), rtol=1e-6, atol=1e-6)
    assert not counters["graph_break"], dict(counters["graph_break"])


# learned ranges: torchao's range_learning=True (after initialize_fake_quantizers) and
# QuantConfig(range_learning=True), whose scales are tq.Linear's weight_scale parameter


def _rl_models(w_cfg, act, dtype):
    """(torchao-prepared and initialized, triton_qat-prepared, example input) of one model."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64, dtype=dtype), nn.GELU(), nn.Linear(64, 48, dtype=dtype))
    config = QATConfig(activation_config=act, weight_config=w_cfg)
    x = (torch.randn(3, 5, 64) * 2).to(dtype)
    ref = copy.deepcopy(model)
    quantize_(ref, config)
    initialize_fake_quantizers(ref, (x,))
    return ref, tq.prepare(copy.deepcopy(model), config), x


def _learned_fq(lin, w):
    """``lin``'s fake quantization of ``w`` with its learned scales."""
    args = spec_for(lin.weight_config).quantize_args(w.shape[1])
    scale = lin.weight_scale.detach()
    return torch.ops.triton_qat.fake_quantize(w, **args, scale=scale, zero_point=None)[0]


@pytest.mark.parametrize("dtype", DTYPES2, ids=dt_id)
@pytest.mark.parametrize("act", [ACT, None], ids=["int8-act", "weight-only"])
@pytest.mark.parametrize("w_cfg", [W4_RL, W8_RL], ids=["i4-g32", "i8-pc"])
def test_range_learning_prepare_matches_torchao(w_cfg, act, dtype):
    """Initial scales equal torchao's; after they moved (equally), fake-quantized weights are
    bit-exact, outputs bit-exact (weight-only) or within the fp64 bound, the gradients of weight,
    bias and scale within rounding of torchao's."""
    ref, ours, x = _rl_models(w_cfg, act, dtype)
    for i in (0, 2):
        fq, lin = ref[i].weight_fake_quantizer, ours[i]
        assert lin.weight_config.range_learning and isinstance(lin.weight_scale, nn.Parameter)
        assert torch.equal(lin.weight_scale.detach(), fq.scale.detach())
        with torch.no_grad():  # training moved the ranges: some tighter, some wider
            lin.weight_scale.mul_(torch.rand_like(lin.weight_scale) * 0.8 + 0.5)
            fq.scale.copy_(lin.weight_scale)
        w = lin.weight.detach()
        assert torch.equal(_learned_fq(lin, w), fq(w))
    got, want = ours(x), ref(x)
    if act is None:  # both F.linear on the same fake-quantized weights
        assert torch.equal(got, want)
    else:
        assert_close_rel(got, want, dtype, "output")
    dy = torch.randn_like(got)
    got.backward(dy)
    want.backward(dy)
    for i in (0, 2):
        mine, theirs = ours[i], ref[i]
        for a, b, what in (
            (mine.weight.grad, theirs.weight.grad, "weight"),
            (mine.bias.grad, theirs.bias.grad, "bias"),
            (mine.weight_scale.grad, theirs.weight_fake_quantizer.scale.grad, "scale"),
        ):
            assert_close_rel(a, b.double(), dtype, f"{i}: grad {what}")


@pytest.mark.parametrize("act", [ACT, None], ids=["int8-act", "weight-only"])
@pytest.mark.parametrize("w_cfg", [W4_RL, W8_RL], ids=["i4-g32", "i8-pc"])
def test_range_learning_round_trips_keep_the_learned_scales(w_cfg, act):
    """from_torchao gives tq.Linear torchao's scale parameter itself (an optimizer built before
    keeps training it); to_torchao gives it back, initialized: configs, scales, outputs kept."""
    ref, _, x = _rl_models(w_cfg, act, torch.float32)
    with torch.no_grad():
        for i in (0, 2):
            s = ref[i].weight_fake_quantizer.scale
            s.mul_(torch.rand_like(s) * 0.8 + 0.5)  # learned: not the weight's own scales
    untouched = copy.deepcopy(ref)
    model = copy.deepcopy(ref)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scales = [model[i].weight_fake_quantizer.scale for i in (0, 2)]
    tq.from_torchao(model)
    for i, s in zip((0, 2), scales, strict=True):
        assert type(model[i]) is tq.Linear and model[i].weight_scale is s
    if act is None:
        assert torch.equal(model(x), ref(x))
    else:
        assert_close_rel(model(x), ref(x), torch.float32, "output")
    back = tq.to_torchao(copy.deepcopy(model))
    assert back.state_dict().keys() == ref.state_dict().keys()
    for i in (0, 2):
        fq, theirs = back[i].weight_fake_quantizer, ref[i].weight_fake_quantizer
        assert fq.config == theirs.config and fq._initialized
        assert isinstance(fq.scale, nn.Parameter) and torch.equal(fq.scale, theirs.scale)
        assert torch.equal(fq.zero_point, theirs.zero_point)
    assert torch.equal(back(x), ref(x))
    # the optimizer built on torchao's model trains the scales triton_qat now holds
    model(x).square().mean().backward()
    opt.step()
    assert not torch.equal(model[0].weight_scale, untouched[0].weight_fake_quantizer.scale)
    back = tq.to_torchao(model)
    assert back[0].weight_fake_quantizer.scale is scales[0]  # the parameter itself, trained


def test_range_learning_to_torchao_of_a_triton_qat_model():
    rl = tq.QuantConfig(bits=4, granularity="per_group", group_size=32, symmetric=True,
                        range_learning=True)  # fmt: skip
    model = tq.prepare(nn.Sequential(nn.Linear(64, 64)), activation=tq.NOT_QUANTIZED, weight=rl)
    with torch.no_grad():
        model[0].weight_scale.mul_(0.7)
    x = torch.randn(4, 64)
    out = model(x)
    scale = model[0].weight_scale
    tq.to_torchao(model)
    fq = model[0].weight_fake_quantizer
    assert type(model[0]) is FakeQuantizedLinear and model[0].activation_fake_quantizer is None
    assert fq.config == W4_RL and fq.scale is scale
    assert torch.equal(model(x), out)  # weight-only: bit-exact


def test_range_learning_from_torchao_before_initialize_fake_quantizers():
    """No scale yet (torchao's forward would raise): tq.Linear initializes it from the weight,
    what initialize_fake_quantizers would set."""
    model = nn.Sequential(nn.Linear(64, 32))
    quantize_(model, QATConfig(weight_config=W4_RL))
    ref = copy.deepcopy(model)
    initialize_fake_quantizers(ref, (torch.randn(2, 64),))
    tq.from_torchao(model)
    assert torch.equal(model[0].weight_scale.detach(), ref[0].weight_fake_quantizer.scale.detach())
    x = torch.randn(3, 64)
    assert torch.equal(model(x), ref(x))


# the module-swapping contract (issue 26): parametrized linears, attention, the meta device


@pytest.mark.parametrize("norm", [weight_norm, spectral_norm], ids=["weight_norm", "spectral_norm"])
def test_parametrized_linear_through_qat_config_and_both_round_trips(norm):
    """torchao's quantize_ cannot prepare a parametrized linear (it assigns the computed weight
    as a parameter); tq.prepare(model, QATConfig) fake-quantizes the parametrized weight with
    torchao's numerics, and to_torchao / from_torchao carry the parametrization both ways."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 32))
    norm(model[0])
    plist = model[0].parametrizations.weight
    tq.prepare(model, EXPLICIT).eval()  # eval: spectral_norm takes no power-iteration step
    lin = model[0]
    assert type_before_parametrizations(lin) is tq.Linear and lin.parametrizations.weight is plist
    x = torch.randn(3, 64)
    plain = nn.Linear(64, 64)
    plain.weight, plain.bias = nn.Parameter(lin.weight.detach()), lin.bias
    theirs = FakeQuantizedLinear.from_linear(plain, ACT, W4)
    assert_close_rel(lin(x), theirs(x), torch.float32, "vs torchao on the parametrized weight")
    out = model(x)
    for back, kind in ((tq.to_torchao, FakeQuantizedLinear), (tq.from_torchao, tq.Linear)):
        back(model)
        assert type_before_parametrizations(model[0]) is kind
        assert model[0].parametrizations.weight is plist
        assert_close_rel(model(x), out, torch.float32, kind.__name__)
    assert torch.equal(model(x), out)
    model(x).sum().backward()
    assert all(p.grad is not None for p in plist.parameters())


def test_filter_selecting_attention_out_proj_raises():
    """MultiheadAttention reads out_proj.weight and never calls out_proj: a filter_fn selecting
    it raises instead of preparing a module whose fake quantization would never run."""
    layer = nn.TransformerEncoderLayer(64, 2, 128, batch_first=True)
    with pytest.raises(ValueError, match=r"^self_attn\.out_proj: .*never called"):
        tq.prepare(layer, EXPLICIT, lambda mod, fqn: isinstance(mod, nn.Linear))
    assert type(layer.linear1) is nn.Linear  # nothing swapped
    tq.prepare(layer, EXPLICIT)  # torchao's default filter leaves it out
    assert type(layer.linear1) is tq.Linear
    assert type(layer.self_attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear


def test_to_torchao_on_the_meta_device_keeps_parameters_shared():
    i4 = tq.QuantConfig(bits=4, granularity="per_group", group_size=32, symmetric=True)
    with torch.device("meta"):
        model = tq.prepare(TinyGPT(), weight=i4, embedding=i4)
    params = list(model.parameters())
    tq.to_torchao(model)
    assert model.lm_head.weight is model.tok.weight  # still tied
    assert all(a is b for a, b in zip(params, model.parameters(), strict=True))
