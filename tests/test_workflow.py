"""The module-swapping contract of prepare / convert (issue 26): what a user's nn.Module already
relies on survives the swap, as with torch.ao's prepare_qat: per-module qconfig (None keeps a
layer in float), parametrizations (weight_norm, spectral_norm, LoRA), hooks of every kind with
their handles, the fused fast path of nn.TransformerEncoder(Layer) kept off, and all or nothing:
a failing swap names the module and leaves the model as it was."""

import ast
import copy
import inspect
import pickle
import warnings
from contextlib import contextmanager

import pytest
import torch
import torch.ao.quantization as q
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

import triton_qat as tq
import triton_qat.torchao_compat
from triton_qat.quantized import QuantizedLinear

QCONFIG = q.default_dynamic_qat_qconfig
I4G16 = tq.QuantConfig(bits=4, granularity="per_group", group_size=16, symmetric=True)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(32, 48),
        nn.ReLU(),
        nn.Sequential(nn.Linear(48, 32), nn.ReLU()),
        nn.Linear(32, 16),
    )


def _linears(model):
    return {fqn: type(m) for fqn, m in model.named_modules() if isinstance(m, nn.Linear)}


# -- defect 2: child.qconfig = None keeps the layer in float (torch.ao semantics) ---------------


def test_child_qconfig_none_keeps_the_layer_float_as_prepare_qat_does():
    ao_mapping = {nn.Linear: torch.ao.nn.qat.dynamic.Linear}
    for how in ("attribute", "keyword"):
        model, ref = _mlp(), _mlp()
        model[3].qconfig = ref[3].qconfig = None  # this layer stays float
        model[2].qconfig = ref[2].qconfig = None  # a container: its children too ...
        model[2][0].qconfig = ref[2][0].qconfig = QCONFIG  # ... unless they have their own
        ref.qconfig = QCONFIG
        q.prepare_qat(ref, mapping=ao_mapping, inplace=True)
        if how == "attribute":
            model.qconfig = QCONFIG
            tq.prepare(model)
        else:
            tq.prepare(model, qconfig=QCONFIG)
        assert type(model[3]) is nn.Linear and type(ref[3]) is nn.Linear
        assert type(ref[0]) is type(ref[2][0]) is torch.ao.nn.qat.dynamic.Linear
        assert model[0].uses_ao_numerics and model[2][0].uses_ao_numerics


def test_qconfig_none_without_a_torch_ao_qconfig_in_scope_changes_nothing():
    """None attributes outside a torch.ao qconfig's scope (e.g. left by propagate_qconfig_
    without a qconfig) are "absent": torchao numerics for every linear, as before. Explicit
    activation= / weight= configs do not consult qconfig attributes at all (filter_fn selects)."""
    model = _mlp()
    for mod in model.modules():
        mod.qconfig = None
    tq.prepare(model)
    assert set(_linears(model).values()) == {tq.Linear}
    assert not any(m.uses_ao_numerics for m in model.modules() if isinstance(m, tq.Linear))
    model = _mlp()
    model.qconfig, model[3].qconfig = QCONFIG, None
    tq.prepare(model, weight=I4G16)
    assert set(_linears(model).values()) == {tq.Linear}
    assert model[3].weight_config == I4G16 and not model[3].uses_ao_numerics


# -- defect 3: parametrized linears are prepared, their parametrizations carried -------------


class LoRA(nn.Module):
    """``W + B @ A``: a LoRA update as a parametrization of the weight."""

    def __init__(self, out_features: int, in_features: int, rank: int = 4) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.randn(rank, in_features) * 0.1)
        self.B = nn.Parameter(torch.randn(out_features, rank) * 0.1)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.B @ self.A


def _lora(lin: nn.Linear) -> nn.Linear:
    return parametrize.register_parametrization(
        lin, "weight", LoRA(lin.out_features, lin.in_features)
    )


PARAMETRIZE = {"weight_norm": weight_norm, "spectral_norm": spectral_norm, "lora": _lora}


def _parametrized_model(kind: str):
    model = _mlp()
    PARAMETRIZE[kind](model[2][0])
    return model


def _qat_reference(lin: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What a tq.Linear with ``lin``'s configs computes from ``lin``'s effective weight."""
    return tq.qat_linear(x, lin.weight, lin.bias, lin.activation_config, lin.weight_config)


@pytest.mark.parametrize("kind", list(PARAMETRIZE))
def test_prepare_fake_quantizes_the_parametrized_weight_and_trains_the_originals(kind):
    model = _parametrized_model(kind)
    plist = model[2][0].parametrizations.weight
    originals = list(plist.parameters())  # weight_g / weight_v, the original, LoRA's A and B
    params = list(model.parameters())
    keys = model.state_dict().keys()
    tq.prepare(model)
    lin = model[2][0]
    assert parametrize.type_before_parametrizations(lin) is tq.Linear
    assert model.state_dict().keys() == keys  # a float checkpoint loads as it is
    assert lin.parametrizations.weight is plist  # the same parametrization, not a copy
    assert all(a is b for a, b in zip(params, model.parameters(), strict=True))
    lin.eval()  # spectral_norm: no power-iteration step between the two calls
    x = torch.randn(5, 48)
    out = lin(x)
    want = _qat_reference(lin, x)
    assert torch.equal(out, want)
    assert not torch.allclose(out, nn.functional.linear(x, lin.weight, lin.bias))  # quantized
    grads = torch.autograd.grad(out.square().sum(), originals)
    want_grads = torch.autograd.grad(want.square().sum(), originals)
    for got, exp in zip(grads, want_grads, strict=True):
        assert got.abs().sum() > 0
        torch.testing.assert_close(got, exp, rtol=0, atol=0)


@pytest.mark.parametrize("kind", list(PARAMETRIZE))
def test_convert_freezes_the_parametrized_weight(kind):
    model = tq.prepare(_parametrized_model(kind))
    model(torch.randn(3, 32))  # training mode: spectral_norm takes a power-iteration step
    model.eval()
    x = torch.randn(2, 7, 32)
    want = model(x)
    prepared = model[2][0]
    state = {k: v.clone() for k, v in prepared.state_dict().items()}
    converted = tq.convert(model)
    assert type(converted[2][0]) is QuantizedLinear
    assert not parametrize.is_parametrized(converted[2][0])
    assert torch.equal(converted(x), want)  # the eval-mode effective weight, frozen
    for k, v in prepared.state_dict().items():  # no power-iteration step taken on the way
        assert torch.equal(v, state[k]), k


def test_parametrized_value_is_taken_outside_autocast():
    """A stand-in's parametrized weight is the parametrization's value in the originals' dtype,
    whether or not prepare / convert run under autocast."""
    model = tq.prepare(_parametrized_model("lora"))
    plain = tq.convert(copy.deepcopy(model))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = tq.convert(copy.deepcopy(model))
    want, got = plain.state_dict(), under_autocast.state_dict()
    assert want.keys() == got.keys()
    for k, v in want.items():
        assert torch.equal(got[k], v) if isinstance(v, torch.Tensor) else got[k] == v, k


def test_parametrized_embeddings_left_by_prepare_embedding_are_named():
    model = nn.Sequential(nn.Embedding(10, 32), nn.Linear(32, 32))
    weight_norm(model[0])
    with pytest.warns(UserWarning, match=r"left as nn\.Embedding, parametrized.*: 0;"):
        tq.prepare(model, embedding=tq.QuantConfig(granularity="per_channel", symmetric=True))
    assert type(model[1]) is tq.Linear


def test_empty_linears_are_left_and_named():
    model = nn.Sequential(nn.Linear(32, 0), nn.Linear(0, 16), nn.Linear(32, 16))
    with pytest.warns(UserWarning, match=r"0 \(in_features=32, out_features=0: empty\), 1 "):
        tq.prepare(model, qconfig=QCONFIG)
    assert [type(m) for m in model] == [nn.Linear, nn.Linear, tq.Linear]


def test_parametrized_linear_with_torch_ao_qconfig():
    model = _parametrized_model("weight_norm")
    tq.prepare(model, qconfig=QCONFIG)
    lin = model[2][0]
    assert parametrize.is_parametrized(lin, "weight") and lin.uses_ao_numerics
    lin(torch.randn(4, 48)).sum().backward()
    assert lin.parametrizations.weight.original1.grad is not None


# -- defect 4: nn.TransformerEncoder(Layer)'s fused fast path never bypasses the swap ---------


@contextmanager
def _no_fast_path():
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def _encoder_layer():
    torch.manual_seed(0)
    return nn.TransformerEncoderLayer(32, 2, dim_feedforward=64, dropout=0.0, batch_first=True)


def test_transformer_encoder_layer_eval_runs_the_prepared_and_converted_linears():
    layer = _encoder_layer()
    float_layer = copy.deepcopy(layer).eval()
    tq.prepare(layer).eval()
    assert type(layer.self_attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        got = layer(x)
        with _no_fast_path():
            want = layer(x)
        floats = float_layer(x)
    # the prepared model's own (QAT) numerics (up to the attention's own fast path, which the
    # global switch turns off too), not the float model's
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - floats).abs().max() > 1e-3
    for copied in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer)), _reloaded(layer)):
        with torch.no_grad():
            assert torch.equal(copied(x), got)
    converted = tq.convert(copy.deepcopy(layer))
    with torch.no_grad():
        assert torch.equal(converted(x), got)


def _reloaded(layer):
    """A freshly prepared layer with ``layer``'s state dict loaded."""
    fresh = tq.prepare(_encoder_layer()).eval()
    fresh.load_state_dict(layer.state_dict())
    return fresh


def test_transformer_encoder_nested_tensor_path_is_off_after_prepare_and_convert():
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(_encoder_layer(), num_layers=2, enable_nested_tensor=True)
    tq.prepare(enc).eval()
    x = torch.randn(2, 5, 32)
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])  # left-aligned padding
    with torch.no_grad():
        got = enc(x, src_key_padding_mask=pad)
        with _no_fast_path():
            want = enc(x, src_key_padding_mask=pad)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert got[1, 3:].abs().min() > 0  # no nested tensor: padded tokens are not zeroed
    converted = tq.convert(enc)
    with torch.no_grad():
        assert torch.equal(converted(x, src_key_padding_mask=pad), got)


# -- defects 5 and 6: hooks of every kind carry over, and their handles keep working ----------


def _register_every_hook(mod, calls):
    """One hook of each kind on ``mod``, logging to ``calls``; returns their handles."""

    def log(name):
        return lambda *args, **kwargs: calls.append(name)

    return [
        mod.register_forward_pre_hook(log("pre")),
        mod.register_forward_pre_hook(log("pre_kw"), with_kwargs=True),
        mod.register_forward_hook(log("post")),
        mod.register_forward_hook(log("post_kw"), with_kwargs=True, always_call=True),
        mod.register_full_backward_pre_hook(log("bwd_pre")),
        mod.register_full_backward_hook(log("bwd")),
        mod.register_state_dict_pre_hook(log("sd_pre")),
        mod.register_state_dict_post_hook(log("sd_post")),
        mod.register_load_state_dict_pre_hook(log("load_pre")),
        mod.register_load_state_dict_post_hook(log("load_post")),
    ]


FORWARD = ["pre", "pre_kw", "post", "post_kw"]
BACKWARD = ["bwd_pre", "bwd"]
STATE_DICT = ["sd_pre", "sd_post", "load_pre", "load_post"]


def _exercise(model, calls, backward=True):
    """Forward (and backward), state_dict and load_state_dict; the hooks' log."""
    calls.clear()
    x = torch.randn(3, 32, requires_grad=backward)
    out = model(x)
    if backward:
        out.sum().backward()
    model.load_state_dict(model.state_dict())
    return list(calls)


def test_prepare_carries_backward_and_state_dict_hooks():
    model = _mlp()
    calls = []
    _register_every_hook(model[2][0], calls)
    assert _exercise(model, calls) == FORWARD + BACKWARD + STATE_DICT
    tq.prepare(model)
    assert type(model[2][0]) is tq.Linear
    assert _exercise(model, calls) == FORWARD + BACKWARD + STATE_DICT
    seen = []
    model[2][0].register_load_state_dict_pre_hook(lambda mod, *args: seen.append(mod))
    model.load_state_dict(model.state_dict())
    assert seen == [model[2][0]]


def test_hook_handles_taken_before_prepare_and_convert_still_remove_their_hooks():
    for stage in ("prepare", "convert"):
        model = _mlp()
        calls = []
        handles = _register_every_hook(model[2][0], calls)
        tq.prepare(model)
        if stage == "convert":
            tq.convert(model.eval())
            assert type(model[2][0]) is QuantizedLinear
        backward = stage == "prepare"
        want = FORWARD + (BACKWARD if backward else []) + STATE_DICT
        assert _exercise(model, calls, backward) == want, stage
        for handle in handles:
            handle.remove()
        assert _exercise(model, calls, backward) == [], stage
        lin = model[2][0]
        for name in ("_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                     "_forward_pre_hooks_with_kwargs"):  # fmt: skip
            assert not getattr(lin, name), (stage, name)


def test_hooks_of_a_shared_module_and_of_the_root_carry_once():
    lin = nn.Linear(32, 32)
    calls = []
    handle = lin.register_forward_hook(lambda *args: calls.append("post"))
    model = nn.Sequential(lin, nn.ReLU(), lin)
    tq.prepare(model)
    model(torch.randn(2, 32))
    assert calls == ["post", "post"]
    root = tq.prepare(nn.Linear(32, 8))
    root_calls = []
    root_handle = root.register_forward_hook(lambda *args: root_calls.append("post"))
    new_root = tq.convert(root)
    new_root(torch.randn(2, 32))
    handle.remove()
    root_handle.remove()
    model(torch.randn(2, 32))
    new_root(torch.randn(2, 32))
    assert calls == ["post", "post"] and root_calls == ["post"]


# -- defect 7: all or nothing, errors naming the module -----------------------------------------


@pytest.mark.filterwarnings("ignore:.*torch.nn.utils.weight_norm is deprecated")
@pytest.mark.parametrize(
    "norm, way_out",
    [
        (torch.nn.utils.weight_norm, r"parametrizations\.weight_norm"),
        (torch.nn.utils.spectral_norm, r"parametrizations\.spectral_norm"),
    ],
    ids=["weight_norm", "spectral_norm"],
)
def test_old_style_hook_norms_are_rejected_before_anything_is_swapped(norm, way_out):
    model = _mlp()
    norm(model[3])
    before = _linears(model)
    with pytest.raises(ValueError, match=rf"^3: .*{way_out}"):
        tq.prepare(model, qconfig=QCONFIG)
    assert _linears(model) == before
    assert not hasattr(model, "qconfig")  # qconfig= is not left set either


def test_convert_is_all_or_nothing_and_names_the_module(monkeypatch):
    model = tq.prepare(_mlp())
    build = QuantizedLinear.from_qat.__func__

    def from_qat(cls, lin):
        if lin.out_features == 16:
            raise RuntimeError("the cause")
        return build(cls, lin)

    monkeypatch.setattr(QuantizedLinear, "from_qat", classmethod(from_qat))
    with pytest.raises(RuntimeError, match=r"^3: the cause"):
        tq.convert(model)
    assert set(_linears(model).values()) == {tq.Linear}


def test_prepare_of_linears_and_embeddings_is_all_or_nothing():
    model = nn.Sequential(nn.Linear(32, 32), nn.Embedding(10, 32, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"^1: .*float64"):
        tq.prepare(model, embedding=tq.QuantConfig(granularity="per_channel", symmetric=True))
    assert type(model[0]) is nn.Linear


def test_torchao_compat_does_not_import_model():
    """One swapping core (triton_qat.swap) that model.py and torchao_compat.py both use."""
    tree = ast.parse(inspect.getsource(triton_qat.torchao_compat))
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert "triton_qat.model" not in imported
    assert "triton_qat.swap" in imported


def test_bad_arguments_are_named_and_leave_the_model_as_it_was():
    """What a hostile trial found: prepare with a config that is not one (a string, an int), an
    fp16 model with MX configs (torchao's MX takes fp32 / bf16 only), from_float on a
    parametrized module, a 3-D weight for the float8-int4 weight quantization: each raises
    naming the argument (prepare: with the module's path), and prepare leaves the model as it
    was."""
    for kw, match in (({"weight": "int4"}, "weight: expected a triton_qat.QuantConfig, "),
                      ({"activation": 8}, "activation: expected a triton_qat.QuantConfig, ")):  # fmt: skip
        model = _mlp()
        before = [type(m) for m in model.modules()]
        with pytest.raises(TypeError, match=match):
            tq.prepare(model, **kw)
        assert [type(m) for m in model.modules()] == before
    model = _mlp().half()
    with pytest.raises(ValueError, match="dtype: MX / NVFP4 fake quantization takes float32"):
        tq.prepare(model, activation=tq.MXConfig(), weight=tq.MXConfig())
    assert not any(isinstance(m, tq.Linear) for m in model.modules())
    for mod in (weight_norm(nn.Linear(32, 16)), weight_norm(nn.Embedding(10, 32))):
        kind = type(mod).__name__
        with pytest.raises(ValueError, match="mod: a parametrized nn"):
            (tq.Linear if "Linear" in kind else tq.Embedding).from_float(mod)
    i4 = tq.QuantConfig(bits=4, granularity="per_group", group_size=8, symmetric=True)
    for mod in (weight_norm(tq.Linear(32, 16)), weight_norm(tq.Embedding(10, 32, weight=i4))):
        with pytest.raises(ValueError, match="self: a parametrized tq.*to_float"):
            mod.to_float()  # (it raised torch's "cannot assign 'torch.FloatTensor' as parameter")
    with pytest.raises(ValueError, match="weight: expected a 2-D"):
        tq.fake_quantize(torch.randn(2, 2, 32), tq.Float8Int4WeightConfig(16))


def test_a_model_that_is_not_a_module_and_a_bad_filter_fn_are_named():
    """A list or dict of modules, a checkpoint path, a filter_fn that is not callable or takes
    one argument: TypeErrors naming model / filter_fn (they were AttributeErrors from the module
    walk and Python's arity error from inside it, hostile trial 4), the model left as it was."""
    for call in (lambda: tq.prepare([nn.Linear(32, 8)]), lambda: tq.prepare({"fc": _mlp()}),
                 lambda: tq.convert("model.pt"), lambda: tq.to_torchao(None),
                 lambda: tq.from_torchao([_mlp()]), lambda: tq.weight_nbytes("model")):  # fmt: skip
        with pytest.raises(TypeError, match="^model: expected a torch.nn.Module, got "):
            call()
    for bad, match in ((3, "got int$"), (lambda m: True, r"signature \(m\)")):
        model = _mlp()
        with pytest.raises(TypeError, match="^filter_fn: expected a callable filter_fn.*" + match):
            tq.prepare(model, filter_fn=bad)
        assert not any(isinstance(m, tq.Linear) for m in model.modules())
    from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig

    qat = QATConfig(weight_config=IntxFakeQuantizeConfig(torch.int4, group_size=16))
    with pytest.raises(TypeError, match="^filter_fn: expected a callable filter_fn.*got str$"):
        tq.prepare(model, qat, "0")  # a QATConfig's third positional argument is filter_fn
    tq.prepare(model, filter_fn=lambda mod, fqn, *rest: fqn == "0")  # (module, fqn) binds
    assert isinstance(model[0], tq.Linear) and not isinstance(model[3], tq.Linear)


def test_preparing_again_with_other_configs_warns_and_keeps_the_prepared_layers():
    """prepare swaps nn.Linear only: a second prepare with explicit other configs names the
    layers it leaves as they are; one with the same configs, or with the defaults left implicit
    (a two-stage prepare: some layers by filter_fn first, then the rest), says nothing."""
    import warnings

    int4 = tq.QuantConfig(bits=4, granularity="per_group", group_size=16, symmetric=True)
    model = _mlp()
    tq.prepare(model, weight=int4, filter_fn=lambda m, fqn: fqn == "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tq.prepare(model)  # the rest, with the defaults
        tq.prepare(model, weight=int4, filter_fn=lambda m, fqn: fqn == "0")
    with pytest.warns(UserWarning, match="other configs, left as they are .*: 0, 2.0, 3$"):
        tq.prepare(model, weight=tq.QuantConfig(bits=4, granularity="per_channel", symmetric=True))
    from triton_qat.config import DEFAULT_WEIGHT

    assert model[0].weight_config == int4 and model[3].weight_config == DEFAULT_WEIGHT


def test_convert_names_layers_whose_fake_quantization_was_disabled():
    """A layer trained with fake quantization off computed in float: convert quantizes it as
    torch.ao's and torchao's convert do, and a warning names it (a torch.ao layer whose
    FakeQuantize was switched off directly too)."""
    model = _mlp()
    tq.prepare(model)
    model[2][0].disable_fake_quant()
    with pytest.warns(UserWarning, match=r"fake quantization was disabled .*: 2\.0$"):
        tq.convert(model)
    ao_model = _mlp()
    tq.prepare(ao_model, qconfig=q.default_dynamic_qat_qconfig)
    ao_model[3].weight_fake_quant.disable_fake_quant()
    with pytest.warns(UserWarning, match=r"fake quantization was disabled .*: 3$"):
        tq.convert(ao_model)


def test_linear_subclasses_and_torchao_modules_left_by_prepare_and_convert_are_named():
    """prepare swaps exact nn.Linear modules (torch.ao's rule): a subclass it leaves is named
    (its forward may differ), a torchao QAT module too (from_torchao takes it; a legacy
    subclass of one as torchao's), and convert names the torchao modules it leaves;
    MultiheadAttention's out_proj and filtered-out modules are not named. filter_fn is asked
    before anything is swapped: an error it raises leaves the model as it was."""
    from torchao.quantization import qat as torchao_qat

    class MyLinear(nn.Linear):
        pass

    def model():
        return nn.Sequential(MyLinear(32, 32), nn.Linear(32, 32), nn.MultiheadAttention(32, 2))

    with pytest.warns(UserWarning, match=r"subclasses of nn.Linear.*: 0 \(.*MyLinear\)") as got:
        m = tq.prepare(model())
    assert type(m[0]) is MyLinear and isinstance(m[1], tq.Linear)
    assert not any("out_proj" in str(w.message) for w in got)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tq.prepare(model(), filter_fn=lambda mod, fqn: fqn != "0")

    def only_plain_linears(mod, fqn):
        if type(mod) is not nn.Linear:
            raise TypeError(f"unexpected {type(mod).__name__}")
        return True

    m = model()
    with pytest.raises(TypeError, match="unexpected MyLinear"):
        tq.prepare(m, filter_fn=only_plain_linears)
    assert type(m[1]) is nn.Linear  # all or nothing
    ao_linear = torchao_qat.FakeQuantizedLinear(32, 32)

    class LegacyQATLinear(torchao_qat.FakeQuantizedLinear):  # torchao's legacy classes are so
        pass

    LegacyQATLinear.__module__ = "torchao.quantization.qat.linear"
    legacy = LegacyQATLinear(32, 32)
    with pytest.warns(
        UserWarning, match=r"torchao QAT modules.*from_torchao.*FakeQuantizedLinear\)"
    ):
        tq.prepare(nn.Sequential(ao_linear))
    with pytest.warns(UserWarning, match=r"torchao QAT modules.*LegacyQATLinear\)"):
        tq.prepare(nn.Sequential(legacy))
    for left in (ao_linear, legacy):
        with pytest.warns(UserWarning, match="convert: left torchao QAT modules.*from_torchao"):
            tq.convert(nn.Sequential(left).eval())


@pytest.mark.parametrize("kind", ["linear", "converted", "embedding"])
def test_torch_jit_script_is_refused_with_a_clear_error(kind):
    """torch.jit.script cannot compile the modules' Python dispatch: it gets triton_qat's error
    (naming the module and what works instead), not TorchScript's compiler internals."""
    model = nn.Sequential(nn.Linear(32, 16))
    tq.prepare(model)
    if kind == "converted":
        model = tq.convert(model.eval())
    elif kind == "embedding":
        model = nn.Sequential(tq.Embedding(10, 32))
    with pytest.raises(
        RuntimeError, match=r"torch.jit.script: triton_qat\.\w+ cannot be scripted.*torch.compile"
    ):
        torch.jit.script(model)
