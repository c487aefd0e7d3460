"""prepare / convert / QuantizedLinear: the QAT workflow end to end on CPU."""

import copy

import pytest
import torch
import torch.ao.quantization as q
from torch import nn
from torch._dynamo.utils import counters
from torch.ao.quantization.quantize import _observer_forward_hook

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
    with pytest.warns(UserWarning, match=r": 3 \(in_features=40: group_size=32 does not divide"):
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
    for k, v in converted.state_dict().items():  # buffers, and each layer's extra state
        got = fresh.state_dict()[k]
        assert torch.equal(got, v) if isinstance(v, torch.Tensor) else got == v, k
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


def _hooked(mod, calls):
    """Register every kind of forward hook torch.ao's swap_module carries over; they log to calls."""
    mod.register_forward_pre_hook(lambda m, args: calls.append("pre"))

    def pre_kw(m, args, kwargs):  # with_kwargs: doubles the input
        calls.append("pre_kw")
        return (args[0] * 2,), kwargs

    mod.register_forward_pre_hook(pre_kw, with_kwargs=True)
    mod.register_forward_hook(lambda m, args, out: calls.append("post"))
    mod.register_forward_hook(
        lambda m, args, kwargs, out: calls.append("post_kw"), with_kwargs=True, always_call=True
    )


def test_prepare_and_convert_keep_forward_hooks_and_training_flag(device):
    model = _model(device)
    calls = []
    _hooked(model[0], calls)
    model[2][0].eval()  # one layer frozen in eval mode while the model trains
    x = torch.randn(3, 64, device=device)
    x2 = (x * 2).requires_grad_(False)
    tq.prepare(model)
    assert type(model[0]) is tq.Linear
    assert model.training and model[0].training and not model[2][0].training
    want = model[1:](tq.Linear.forward(model[0], x2))  # the pre-hook doubles the input
    assert torch.equal(model(x), want)
    assert calls == ["pre", "pre_kw", "post", "post_kw"]
    # torch.ao's own observer hook is dropped by convert (QuantizedLinear has no observer)
    model[3].activation_post_process = nn.Identity()
    model[3].register_forward_hook(_observer_forward_hook)
    model.eval()
    model[0].train()
    tq.convert(model)
    assert type(model[0]) is tq.QuantizedLinear and type(model[3]) is tq.QuantizedLinear
    assert model[0].training and not model[2][0].training and not model[3].training
    assert not model[3]._forward_hooks
    calls.clear()
    want = model[1:](tq.QuantizedLinear.forward(model[0], x2))
    assert torch.equal(model(x), want)
    assert calls == ["pre", "pre_kw", "post", "post_kw"]
    calls.clear()
    with pytest.raises(ValueError, match="in_features"):
        model(torch.randn(3, 65, device=device))
    assert calls == ["pre", "pre_kw", "post_kw"]  # always_call survived too
    # a bare module (the root itself swapped) keeps its hooks as well
    lin = nn.Linear(64, 8).to(device)
    calls.clear()
    _hooked(lin, calls)
    new = tq.convert(tq.prepare(lin))
    new(x)
    assert calls == ["pre", "pre_kw", "post", "post_kw"]


def test_tied_weights_stay_tied_through_prepare_and_convert(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 64), nn.Linear(64, 32))
    model[3].weight = model[0].weight  # tied weight, separate biases
    model.to(device)
    tq.prepare(model)
    assert type(model[3]) is tq.Linear and model[3].weight is model[0].weight
    model.eval()
    x = torch.randn(5, 64, device=device)
    want = model(x)
    tq.convert(model)
    names = ("weight_codes", "weight_scale", "weight_code_sum")
    for name in names:
        assert getattr(model[3], name).data_ptr() == getattr(model[0], name).data_ptr(), name
    assert model[3].bias.data_ptr() != model[0].bias.data_ptr()
    assert torch.equal(model(x), want)
    # moving / materializing the model keeps the buffers shared, as with tied parameters
    model.to_empty(device=device)
    for name in names:
        assert getattr(model[3], name).data_ptr() == getattr(model[0], name).data_ptr(), name


def test_tied_weights_quantized_differently_warn(device):
    a, b = nn.Linear(64, 32).to(device), nn.Linear(64, 32).to(device)
    b.weight = a.weight
    model = nn.Sequential(tq.Linear.from_float(a), tq.Linear.from_float(b, weight=I4G32))
    with pytest.warns(UserWarning, match=r"tied.*: 1 \(tied to 0\)"):
        tq.convert(model)
    assert model[0].weight_codes.dtype != model[1].weight_codes.dtype


def test_shared_module_is_swapped_once(device):
    lin = nn.Linear(64, 64).to(device)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    tq.prepare(model)
    assert type(model[0]) is tq.Linear and model[2] is model[0]
    tq.convert(model)
    assert type(model[0]) is tq.QuantizedLinear and model[2] is model[0]


def test_prepare_qconfig_keyword(device):
    qconfig = q.default_dynamic_qat_qconfig
    a = _model(device)
    a.qconfig = qconfig
    a[2].qconfig = q.QConfig(  # a child's own qconfig still wins, as with prepare_qat
        activation=qconfig.activation, weight=q.default_per_channel_weight_fake_quant
    )
    tq.prepare(a)
    b = _model(device)
    b[2].qconfig = a[2].qconfig
    assert tq.prepare(b, qconfig=qconfig) is b
    assert b.qconfig is qconfig
    for ma, mb in zip(a.modules(), b.modules(), strict=True):
        assert type(ma) is type(mb)
        if isinstance(ma, tq.Linear):
            assert mb.uses_ao_numerics and mb.qconfig is ma.qconfig
            assert type(mb.weight_fake_quant) is type(ma.weight_fake_quant)
    assert a.state_dict().keys() == b.state_dict().keys()
    for _ in range(2):
        x = torch.randn(6, 64, device=device)
        assert torch.equal(a(x), b(x))
    with pytest.raises(ValueError, match="qconfig.*activation.*weight"):
        tq.prepare(_model(device), qconfig=qconfig, weight=I4G32)
    with pytest.raises(TypeError, match="qconfig"):
        tq.prepare(_model(device), qconfig=I4G32)


_CASTS = {
    "to-bf16": lambda m: m.to(torch.bfloat16),
    "to-dtype-fp16": lambda m: m.to(dtype=torch.float16),
    "to-device-bf16": lambda m: m.to(m.weight_codes.device, torch.bfloat16),
    "bfloat16": lambda m: m.bfloat16(),
    "half": lambda m: m.half(),
    "type-bf16": lambda m: m.type(torch.bfloat16),
    "double": lambda m: m.double(),
}


@pytest.mark.parametrize("weight", [None, I4G32], ids=["i8", "i4g32"])
@pytest.mark.parametrize("cast", list(_CASTS), ids=list(_CASTS))
def test_quantized_linear_dtype_casts_keep_quantization_buffers(cast, weight, device):
    torch.manual_seed(0)
    m = tq.convert(tq.prepare(nn.Linear(64, 64).to(device), weight=weight)).eval()
    m.weight_scale.mul_(1 + 2**-12)  # scales that bf16 / fp16 cannot hold exactly
    s = m.weight_scale
    assert (s.to(torch.bfloat16).to(s.dtype) != s).all() and (s.half().to(s.dtype) != s).all()
    ref = copy.deepcopy(m)
    dtypes = {k: v.dtype for k, v in m.named_buffers()}
    out = _CASTS[cast](m)
    assert out is m
    dtype = m.bias.dtype
    for k, v in m.named_buffers():
        assert v.dtype == (dtype if k == "bias" else dtypes[k]), k
        assert torch.equal(v.to(ref.get_buffer(k).dtype), ref.get_buffer(k)) or k == "bias", k
    if dtype == torch.float64:  # no fp64 inputs: back to fp32, which must be lossless
        dtype = m.float().bias.dtype
    ref.bias = ref.bias.to(dtype)  # only the bias, cast by hand
    x = torch.randn(7, 64, device=device, dtype=dtype)
    assert torch.equal(m(x), ref(x))


def test_quantized_linear_device_moves_keep_dtypes():
    m = tq.convert(tq.prepare(nn.Linear(64, 16), weight=I4G32))
    dtypes = {k: v.dtype for k, v in m.named_buffers()}
    m.to("meta", torch.bfloat16)
    for k, v in m.named_buffers():
        assert v.is_meta and v.dtype == (torch.bfloat16 if k == "bias" else dtypes[k]), k
    m.to_empty(device="cpu")
    assert all(v.device.type == "cpu" for v in m.buffers())
