"""The eager engine of the fused linear (triton_qat/fused.py) where plans kept per key meet what
can change between calls: autocast, configs or weights replaced on a live layer, outputs changed
in place, the backward's token count. Each case runs through the direct path and the ops."""

import pytest
import torch
from torch import nn

import triton_qat as tq
from triton_qat import autotune, fused
from triton_qat.reference import fake_quantize_with_mask

W4G32 = tq.QuantConfig(bits=4, granularity="per_group", group_size=32, symmetric=True)


@pytest.fixture(params=["direct", "ops"])
def path(request):
    prev = fused.set_enabled(request.param == "direct")
    yield request.param
    fused.set_enabled(prev)


def test_weight_only_under_autocast_has_the_autocast_gradients(path, device):
    """Weight-only QAT under autocast: F.linear runs in the autocast dtype, so the backward's
    gradient arrives in it, not in the plan's (the input's) dtype; grad_w is the masked
    dy^T @ x of that dtype (a GEMM planned for fp32 gave garbage)."""
    torch.manual_seed(0)
    lin = tq.Linear(32, 16, device=device, activation=tq.NOT_QUANTIZED, weight=W4G32)
    x = torch.randn(8, 32, device=device, requires_grad=True)
    with torch.autocast(device, dtype=torch.bfloat16):
        y = lin(x)
    assert y.dtype == torch.bfloat16
    dy = torch.randn_like(y)
    y.backward(dy)
    _, keep = fake_quantize_with_mask(lin.weight.detach(), W4G32)
    want = (dy.double().t() @ x.detach().to(torch.bfloat16).double()) * keep.double()
    err = (lin.weight.grad.double() - want).abs().max() / want.abs().max()
    assert err < 1.6e-2, err


def test_a_config_or_weight_that_no_longer_fits_raises(path, device):
    """A weight config replaced on a live layer, or a weight of another width, is checked again
    (a plan made for the old key would split K into groups that do not divide it)."""
    lin = tq.Linear(64, 8, device=device, weight=W4G32)
    x = torch.randn(4, 64, device=device)
    lin(x)
    lin.weight_config = tq.QuantConfig(bits=4, granularity="per_group", group_size=24,
                                       symmetric=True)  # fmt: skip
    with pytest.raises(ValueError, match="group_size"):
        lin(x)
    lin.weight_config = W4G32
    lin.weight = nn.Parameter(torch.randn(8, 48, device=device))
    with pytest.raises(ValueError, match="group_size"):
        lin(torch.randn(4, 48, device=device))


@pytest.mark.parametrize("kind", ["default", "weight_only"])
def test_output_changed_in_place_trains(kind, path, device):
    """ReLU(inplace=True) after a prepared linear: the layer's output is not a view made inside
    its autograd function, so it can be changed in place, and the gradients are those of the
    out-of-place model."""
    cfg = {} if kind == "default" else {"activation": tq.NOT_QUANTIZED}
    grads = []
    for inplace in (True, False):
        torch.manual_seed(0)
        model = tq.prepare(nn.Sequential(nn.Linear(16, 8), nn.ReLU(inplace=inplace),
                                         nn.Linear(8, 4)).to(device), **cfg)  # fmt: skip
        x = torch.randn(2, 3, 16, device=device, requires_grad=True)
        model(x).square().sum().backward()
        grads.append([x.grad] + [p.grad for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)


def test_backward_configs_are_looked_up_for_the_token_count(path, device):
    """The backward's GEMM configs are keyed by the layer's token count (not grad's M * N / K)."""
    lin = tq.Linear(16, 256, device=device)
    x = torch.randn(4, 16, device=device, requires_grad=True)
    autotune.invalidate()  # every launch is looked up again
    with autotune.record_lookups() as log:
        lin(x).sum().backward()
    keys = [k for k, _ in log if k.startswith(("dgrad", "wgrad"))]
    assert keys and all("|M16|" in k for k in keys), keys
