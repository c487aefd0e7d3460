"""torch.library registration: opcheck on every op, and torch.compile(fullgraph=True) of forward +
backward of a model of tq.Linear layers in one frame, matching eager, without recompiles."""

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

import triton_qat as tq
from triton_qat import ops


def _opcheck(op, args):
    torch.library.opcheck(op, args)


def test_opcheck_quantize(device):
    x = torch.randn(13, 40, device=device)
    _opcheck(ops.quantize, (x, -128, 127, 40, False, False, True, None, None))
    _opcheck(ops.quantize, (x, -8, 7, 8, True, False, False, None, None))
    _opcheck(ops.quantize, (x, -128, 127, 40, False, True, True, None, None))
    scale = torch.tensor([[0.05]], device=device)
    zp = torch.tensor([[3]], dtype=torch.int32, device=device)
    _opcheck(ops.quantize, (x, 0, 255, 40, False, False, True, scale, zp))


def test_opcheck_fake_quantize(device):
    x = torch.randn(13, 40, device=device, requires_grad=True)
    _opcheck(ops.fake_quantize, (x, -128, 127, 40, False, False, None, None))
    _opcheck(ops.fake_quantize, (x, -8, 7, 8, True, False, None, None))
    xt = torch.randn(40, 13, device=device).t().requires_grad_()  # non-contiguous input
    _opcheck(ops.fake_quantize, (xt, -128, 127, 40, False, False, None, None))


def test_compile_fake_quantize_of_a_transposed_view(device):
    torch._dynamo.reset()
    fn = torch.compile(lambda a: tq.fake_quantize(a.t(), tq.QuantConfig()) * 2, fullgraph=True)
    a = torch.randn(16, 8, device=device)
    assert torch.equal(fn(a), tq.fake_quantize(a.t(), tq.QuantConfig()) * 2)


def test_opcheck_int8_linear(device):
    x = torch.randn(13, 40, device=device)
    w = torch.randn(24, 40, device=device)
    qa = ops.quantize(x, -128, 127, 40, False, False, True, None, None)
    qw = ops.quantize(w, -8, 7, 8, True, False, False, None, None)
    bias = torch.randn(24, device=device)
    _opcheck(ops.int8_linear, (qa[0], qa[1], qa[2], qw[0], qw[1], qw[4], bias, torch.float32))
    _opcheck(ops.int8_linear, (qa[0], qa[1], qa[2], qw[0], qw[1], qw[4], None, torch.bfloat16))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_opcheck_qat_linear_and_backward(bias, device):
    x = torch.randn(2, 7, 40, device=device, requires_grad=True)
    w = torch.randn(24, 40, device=device, requires_grad=True)
    b = torch.randn(24, device=device, requires_grad=True) if bias else None
    args = (x, w, b, -128, 127, False, False, None, None, -8, 7, 8, False, None)
    _opcheck(ops.qat_linear, args)
    state = [t.detach() for t in ops.qat_linear(*args)[1:]]
    dy = torch.randn(2, 7, 24, device=device)
    _opcheck(ops.qat_linear_backward, (dy, *state, True, True, bias))
    _opcheck(ops.qat_linear_backward, (dy, *state, False, True, False))


def _mlp(device, dtype=torch.float32, **cfg):
    torch.manual_seed(0)
    return nn.Sequential(
        tq.Linear(32, 64, device=device, dtype=dtype, **cfg),
        nn.ReLU(),
        tq.Linear(64, 16, device=device, dtype=dtype, **cfg),
    )


def _step(model, x):
    out = model(x)
    out.square().mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return out.detach(), grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_compile_fullgraph_matches_eager(dtype, device):
    torch._dynamo.reset()
    counters.clear()
    model = _mlp(device, dtype)
    compiled = torch.compile(model, fullgraph=True)
    for _batch in range(3):  # same shapes: one compile, no recompiles
        x = torch.randn(5, 9, 32, device=device, dtype=dtype, requires_grad=True)
        eager_out, eager_grads = _step(model, x)
        comp_out, comp_grads = _step(compiled, x)
        # the custom ops run the same kernels; ReLU/mean may be fused differently by Inductor
        torch.testing.assert_close(comp_out, eager_out, rtol=0, atol=0)
        for g, e in zip(comp_grads, eager_grads, strict=True):
            torch.testing.assert_close(
                g, e, rtol=1e-5 if dtype == torch.float32 else 1e-2, atol=1e-6
            )
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_compile_ao_numerics_fullgraph(device):
    """The torch.ao family (observer buffers updated inside the graph) compiles too."""
    import torch.ao.quantization as q

    torch._dynamo.reset()
    counters.clear()
    eager = _mlp(device, qconfig=q.default_dynamic_qat_qconfig)
    model = _mlp(device, qconfig=q.default_dynamic_qat_qconfig)
    compiled = torch.compile(model, fullgraph=True)
    for _ in range(2):
        x = torch.randn(6, 32, device=device)
        e_out, _ = _step(eager, x)
        c_out, _ = _step(compiled, x)
        torch.testing.assert_close(c_out, e_out, rtol=0, atol=0)
    for (name, a), (_, b) in zip(
        eager.state_dict().items(), model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert counters["stats"]["unique_graphs"] == 1
