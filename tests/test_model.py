"""prepare / convert / QuantizedLinear: the QAT workflow end to end on CPU."""

import copy

import pytest
import torch
import torch.ao.quantization as q
from torch import nn
from torch._dynamo.utils import counters

import triton_qat as tq
from triton_qat.quantized import pack_int4, unpack_int4

I4G32 = tq.QuantConfig(bits=4, granularity="per_group", group_size=32, symmetric=True)


def _model(device="cpu"):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 96),
        nn.GELU(),
        nn.Sequential(nn.Linear(96, 40), nn.ReLU()),
        nn.Linear(40, 8),
    ).to(device)


def test_prepare_swaps_in_place_and_shares_parameters(device):
    model = _model(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    params = list(model.parameters())
    out = tq.prepare(model)
    assert out is model
    assert [type(m) for m in model.modules() if isinstance(m, nn.Linear)] == [tq.Linear] * 3
    assert all(a is b for a, b in zip(params, model.parameters(), strict=True))
    before = model[0].weight.detach().clone()
    model(torch.randn(5, 64, device=device)).sum().backward()
    opt.step()  # the optimizer made before prepare trains the prepared model
    assert not torch.equal(before, model[0].weight)


def test_prepare_filter_fn_and_unquantizable_shapes(device):
    model = _model(device)
    with pytest.warns(UserWarning, match=r": 3 \(in_features=40\)"):
        tq.prepare(model, weight=I4G32, filter_fn=lambda mod, fqn: fqn != "0")
    assert type(model[0]) is nn.Linear  # rejected by filter_fn
    assert type(model[2][0]) is tq.Linear and model[2][0].weight_config == I4G32
    assert (
        type(model[3]) is nn.Linear
    )  # 40 is not a multiple of 32: left alone, named in the warning


def test_prepare_respects_torch_ao_qconfig_propagation(device):
    model = _model(device)
    model[2].qconfig = q.default_dynamic_qat_qconfig  # a parent's qconfig reaches its children
    tq.prepare(model)
    assert model[2][0].uses_ao_numerics and hasattr(model[2][0], "weight_fake_quant")
    assert not model[0].uses_ao_numerics and not model[3].uses_ao_numerics


def test_prepare_on_meta_device_then_materialize():
    model = tq.prepare(_model("meta"))
    assert all(p.is_meta for p in model.parameters())
    model.to_empty(device="cpu")
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.reset_parameters()
    assert model(torch.randn(3, 64)).shape == (3, 8)


def test_prepare_bare_linear_returns_new_module():
    lin = nn.Linear(64, 8)
    new = tq.prepare(lin)
    assert type(new) is tq.Linear and new.weight is lin.weight


@pytest.mark.parametrize(
    "weight",
    [
        tq.QuantConfig(granularity="per_channel", symmetric=True),
        tq.QuantConfig(granularity="per_tensor", symmetric=True),
        tq.QuantConfig(bits=4, granularity="per_group", group_size=8, symmetric=True),
    ],
    ids=["i8-per-channel", "i8-per-tensor", "i4-g8"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_convert_matches_prepared_eval(weight, dtype, device):
    model = tq.prepare(_model(device).to(dtype), weight=weight).eval()
    x = torch.randn(2, 7, 64, device=device, dtype=dtype)
    want = model(x)
    converted = tq.convert(copy.deepcopy(model))
    assert [type(m) for m in converted.modules() if isinstance(m, tq.QuantizedLinear)]
    got = converted(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)  # same codes, same GEMM: same bits
    sizes = tq.weight_nbytes(converted)
    assert sizes["stored"] < sizes["bf16"], sizes
    first = converted[0]
    assert first.weight_codes.numel() == 96 * (32 if weight.bits == 4 else 64)  # int4: 2 per byte


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_convert_torch_ao_family(dtype, device):
    model = _model(device).to(dtype)
    model.qconfig = q.QConfig(
        activation=q.default_dynamic_qat_qconfig.activation,
        weight=q.default_per_channel_weight_fake_quant,
    )
    tq.prepare(model)
    for _ in range(3):
        model(torch.randn(9, 64, device=device, dtype=dtype))
    model.eval()  # torch.ao observers keep observing in eval; activations stay dynamic
    x = torch.randn(9, 64, device=device, dtype=dtype)
    converted = tq.convert(copy.deepcopy(model))  # observes the weight once, as model(x) will
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(converted(x), model(x), rtol=tol, atol=tol)


@pytest.mark.parametrize("weight", [None, I4G32], ids=["i8", "i4g32"])
def test_quantized_state_dict_round_trip(weight, device):
    converted = tq.convert(tq.prepare(_model(device), weight=weight)).eval()
    other = _model(device)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(-3.0).add_(0.5)  # different weights and biases: every buffer differs
    fresh = tq.convert(tq.prepare(other, weight=weight)).eval()
    x = torch.randn(4, 64, device=device)
    assert not torch.equal(fresh(x), converted(x))
    fresh.load_state_dict(converted.state_dict())
    for k, v in converted.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    assert torch.equal(fresh(x), converted(x))


def test_prepared_state_dict_round_trip_with_observers(device):
    a = _model(device)
    a.qconfig = q.default_dynamic_qat_qconfig
    tq.prepare(a)
    for _ in range(2):
        a(torch.randn(6, 64, device=device)).sum().backward()
    b = _model(device)
    b.qconfig = q.default_dynamic_qat_qconfig
    tq.prepare(b)
    b.load_state_dict(a.state_dict())
    for k, v in a.state_dict().items():
        assert torch.equal(b.state_dict()[k], v), k
    x = torch.randn(6, 64, device=device)
    assert torch.equal(a(x), b(x))


def test_int4_pack_round_trip():
    codes = torch.randint(-8, 8, (5, 13), dtype=torch.int8)
    packed = pack_int4(codes)
    assert packed.shape == (5, 7) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed, 13), codes)


def test_quantized_linear_compiles_fullgraph(device):
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8)).to(device)
    model = tq.convert(tq.prepare(model, weight=I4G32)).eval()
    compiled = torch.compile(model, fullgraph=True)
    for _ in range(2):
        x = torch.randn(5, 64, device=device)
        assert torch.equal(compiled(x), model(x))
    assert counters["stats"]["unique_graphs"] == 1


def test_quantized_linear_bad_input(device):
    layer = tq.convert(tq.prepare(nn.Linear(64, 8).to(device)))
    with pytest.raises(ValueError, match="in_features = 64"):
        layer(torch.randn(3, 65, device=device))
    with pytest.raises(TypeError, match="input"):
        layer(torch.ones(3, 64, dtype=torch.int32, device=device))
