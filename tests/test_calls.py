"""The direct paths (triton_qat.fused for the linear, triton_qat.calls for the other ops): plain
eager code skips the dispatcher and computes the ops' exact bits; everything else sees the ops."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import triton_qat as tq
from triton_qat import calls, fused, ops

LAYERS = {
    "default": {},
    "i4g32_asym": {
        "weight": tq.QuantConfig(bits=4, granularity="per_group", group_size=32, symmetric=False)
    },  # fmt: skip
    "per_tensor_act": {"activation": tq.QuantConfig(granularity="per_tensor")},
    "weight_only": {"activation": None},
    "range_learning": {
        "weight": tq.QuantConfig(
            bits=4, granularity="per_group", group_size=32, symmetric=True, range_learning=True
        )
    },  # fmt: skip
}


class _OpLog:
    """Stands in for ``torch.ops.triton_qat`` in :mod:`triton_qat.calls`: records each op name."""

    def __init__(self):
        self.names = []

    def __getattr__(self, name):
        self.names.append(name)
        return getattr(torch.ops.triton_qat, name)


def _step(layer, x, dy):
    for p in layer.parameters():
        p.grad = None
    x.grad = None
    out = layer(x)
    out.backward(dy)
    grads = [x.grad] + [p.grad for p in layer.parameters() if p.grad is not None]
    return [out.detach(), *grads]


def _log_op_impls(monkeypatch) -> list[str]:
    """Names of the ``torch.ops.triton_qat`` ops run from now on (every op's body goes through
    ``ops._run``; the direct path runs none of them)."""
    log, real = [], ops._run

    def logged(name, *args):
        log.append(name)
        return real(name, *args)

    monkeypatch.setattr(ops, "_run", logged)
    return log


@pytest.mark.parametrize("name", LAYERS)
def test_direct_calls_match_the_ops_bit_for_bit(name, device, monkeypatch):
    layer = tq.Linear(64, 24, device=device, **LAYERS[name])
    x = torch.randn(2, 5, 64, device=device, requires_grad=True)
    dy = torch.randn(2, 5, 24, device=device)
    log = _log_op_impls(monkeypatch)
    direct = _step(layer, x, dy)
    assert log == [], f"plain eager code went through the ops: {log}"
    prev = fused.set_enabled(False)
    try:
        via_ops = _step(layer, x, dy)
    finally:
        fused.set_enabled(prev)
    assert log, "set_enabled(False) did not route through torch.ops.triton_qat"
    assert len(direct) == len(via_ops) >= 3
    for a, b in zip(direct, via_ops, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_fake_quantize_direct_call_and_its_gradient(device, monkeypatch):
    x = torch.randn(6, 32, device=device, requires_grad=True)
    cfg = tq.QuantConfig(bits=4, granularity="per_group", group_size=8)
    log = _OpLog()
    monkeypatch.setattr(calls, "_op", log)
    y = tq.fake_quantize(x, cfg)
    y.backward(torch.ones_like(y))
    assert log.names == []
    prev = calls.set_enabled(False)
    try:
        x2 = x.detach().clone().requires_grad_(True)
        y2 = tq.fake_quantize(x2, cfg)
        y2.backward(torch.ones_like(y2))
    finally:
        calls.set_enabled(prev)
    assert torch.equal(y, y2) and torch.equal(x.grad, x2.grad)


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_modes_and_subclasses_still_see_the_ops(device):
    """A dispatch mode (a FLOP counter, FakeTensorMode, ...) sees triton_qat's ops, as before."""
    layer = tq.Linear(32, 16, device=device)
    x = torch.randn(4, 32, device=device, requires_grad=True)
    with _Recorder() as rec:
        layer(x).sum().backward()
    assert any("triton_qat.quantize" in op for op in rec.ops), rec.ops
    assert any("triton_qat.qat_linear." in op for op in rec.ops), rec.ops
    assert any("triton_qat.qat_linear_backward" in op for op in rec.ops), rec.ops
    assert calls.usable(x, layer.weight) and fused.direct()
    assert not calls.usable(x, x.detach().as_subclass(_Sub))
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = mode.from_tensor(x)
        assert not calls.usable(fake) and not fused.direct()


class _Sub(torch.Tensor):
    pass


def test_compiled_graph_holds_the_ops(device):
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm

    layer = tq.Linear(32, 16, device=device)
    x = torch.randn(4, 32, device=device)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend=backend)
    assert torch.equal(compiled(x), layer(x))
    assert len(graphs) == 1
    assert "triton_qat.qat_linear" in graphs[0] and "triton_qat.quantize" in graphs[0]


@pytest.mark.parametrize("kind", ["torch.ao", "float8-int4"])
def test_jit_trace_save_and_load_of_prepared_layers(kind, device, tmp_path):
    """torch.jit.trace of a prepared layer in eval mode, saved and loaded, computes the layer's
    bits: a torch.ao layer failed to trace (trace compiles torch.ao's exported toggles, which
    called an override TorchScript cannot compile), a float8-int4 layer to save (its rounding's
    autograd Function was in the graph without any gradient to carry; hostile trial 6). The
    torch.ao toggles still work."""
    torch.manual_seed(0)
    if kind == "torch.ao":
        layer = tq.Linear(
            32, 16, device=device, qconfig=torch.ao.quantization.default_dynamic_qat_qconfig
        )
        layer(torch.randn(4, 32, device=device))  # observe once
        layer.apply(torch.ao.quantization.disable_fake_quant)
        assert not layer.weight_fake_quant.fake_quant_on
        layer.apply(torch.ao.quantization.enable_fake_quant)
        assert layer.weight_fake_quant.fake_quant_on
    else:
        f8, w = tq.Float8Config(), tq.Float8Int4WeightConfig(group_size=16)
        layer = tq.Linear(32, 16, device=device, activation=f8, weight=w)
    layer.eval()
    x = torch.randn(4, 32, device=device)
    with torch.no_grad():
        traced = torch.jit.trace(layer, x, check_trace=False)
        torch.jit.save(traced, tmp_path / "layer.pt")
        loaded = torch.jit.load(tmp_path / "layer.pt")
        x2 = torch.randn(6, 32, device=device)
        assert torch.equal(loaded(x2), layer(x2))


def test_jit_trace_profiler_and_forward_ad_take_the_ops(device, monkeypatch):
    """torch.jit.trace records the ops (the direct path would hand the impls traced sizes and
    bake the launches' outputs in as constants); profiles name them; forward-mode AD keeps the
    ops' behaviour."""
    layer = tq.Linear(32, 16, device=device)
    x = torch.randn(4, 32, device=device)
    traced = torch.jit.trace(layer, x, check_trace=False)
    assert "triton_qat::qat_linear" in str(traced.graph)
    x2 = torch.randn(6, 32, device=device)
    assert torch.equal(traced(x2), layer(x2))  # replays the ops on new inputs
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        layer(x)
    assert any("triton_qat::qat_linear" in e.key for e in prof.key_averages())
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        dual = fwAD.make_dual(x, torch.ones_like(x))
        assert not calls.usable(dual) and not fused.direct()
