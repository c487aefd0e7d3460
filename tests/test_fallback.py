"""Without the interpreter, CPU tensors take the plain-torch twins of the kernels: same fake-quant
bits, and the same layer outputs and gradients up to float rounding."""

import os
import subprocess
import sys

import torch
from conftest import assert_close_rel

import triton_qat as tq

SCRIPT = r"""
import sys, torch, triton_qat as tq
assert tq.backend("cpu") == "torch"
torch.manual_seed(0)
x = torch.randn(13, 96).to(torch.bfloat16).requires_grad_()
lin = tq.Linear(96, 40, weight=tq.QuantConfig(bits=4, granularity="per_group", group_size=32,
                                              symmetric=True), dtype=torch.bfloat16)
y = lin(x)
y.float().square().sum().backward()
fq = tq.fake_quantize(x.detach(), tq.QuantConfig())
torch.save({"y": y.detach(), "gx": x.grad, "gw": lin.weight.grad, "fq": fq}, sys.argv[1])
"""


def test_cpu_fallback_matches_the_kernels(tmp_path, device):
    """The fallback (subprocess, CPU, no interpreter) against the kernels on ``device``: the
    interpreter on CPU, the compiled kernels on CUDA."""
    out = tmp_path / "fallback.pt"
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(out)], env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    got = torch.load(out)
    torch.manual_seed(0)
    x = torch.randn(13, 96).to(torch.bfloat16).to(device).requires_grad_()
    cfg = tq.QuantConfig(bits=4, granularity="per_group", group_size=32, symmetric=True)
    lin = tq.Linear(96, 40, weight=cfg, dtype=torch.bfloat16)  # same init as the script, on CPU
    lin.to(device)
    y = lin(x)
    y.float().square().sum().backward()
    fq = tq.fake_quantize(x.detach(), tq.QuantConfig()).cpu()
    if device == "cpu":
        assert torch.equal(got["fq"], fq)
    else:  # CUDA divides by a Python scalar through its reciprocal, the CPU divides: rare ulps
        assert_close_rel(got["fq"], fq, torch.bfloat16, "fake_quantize")
    assert_close_rel(got["y"], y.detach().cpu(), torch.bfloat16, "out")
    assert_close_rel(got["gx"], x.grad.cpu(), torch.bfloat16, "grad_x")
    assert_close_rel(got["gw"], lin.weight.grad.cpu(), torch.bfloat16, "grad_w")


EDGE_SCRIPT = r"""
import torch, triton_qat as tq
assert tq.backend("cpu") == "torch"
I4 = tq.QuantConfig(bits=4, granularity="per_group", group_size=16, symmetric=True)
kinds = {"default": {}, "int4": {"weight": I4},
         "asym weight": {"weight": tq.QuantConfig(bits=4, granularity="per_group", group_size=16,
                                                  symmetric=False)},
         "weight-only": {"activation": None, "weight": I4},
         "torch.ao": {"qconfig": torch.ao.quantization.default_dynamic_qat_qconfig}}
for dt in (torch.float32, torch.bfloat16):
    for name, kw in kinds.items():
        lin = tq.Linear(32, 24, dtype=dt, **kw)
        for shape in ((0, 32), (2, 0, 32)):
            x = torch.randn(*shape, dtype=dt, requires_grad=True)
            y = lin(x)
            y.sum().backward()
            assert y.shape == (*shape[:-1], 24) and x.grad.shape == x.shape, (name, shape)
        lin.eval()
        assert tq.convert(lin)(torch.randn(0, 32, dtype=dt)).shape == (0, 24), name
for cfg in (tq.QuantConfig(), I4, tq.MXConfig(), tq.NVFP4Config(), tq.Float8Config()):
    for rows in (0, 4):
        x = torch.randn(rows, 32, requires_grad=True)
        y = tq.fake_quantize(x, cfg)
        want = y.detach() * 2
        y.mul_(2)  # its own tensor: an in-place write works and backward still runs
        assert torch.equal(y.detach(), want), cfg
        y.sum().backward()
# masked gradient elements are exactly +0.0 where the product is NaN or negative (the kernels'
# select, not a multiply by the mask): a token holding inf makes wgrad's products NaN
from triton_qat.reference import fake_quantize_with_mask
LEARNED = tq.QuantConfig(bits=4, granularity="per_group", group_size=16, symmetric=True,
                         range_learning=True)
for w_cfg in (I4, LEARNED):
    lin = tq.Linear(32, 24, weight=w_cfg)
    x = torch.randn(4, 32)
    x[1, 3] = float("inf")
    x.requires_grad_()
    lin(x).backward(torch.randn(4, 24))
    _, w_keep = fake_quantize_with_mask(lin.weight.detach(), I4)
    _, x_keep = fake_quantize_with_mask(x.detach(), lin.activation_config)
    for grad, keep in ((lin.weight.grad, w_keep), (x.grad, x_keep)):
        masked = grad[~keep]
        assert masked.numel() and masked.view(torch.int32).eq(0).all(), (w_cfg, masked)
# a weight narrower than x: the product of w_fq formed in the weight's dtype, at x's precision
lin = tq.Linear(64, 24).to(torch.bfloat16)
x = torch.randn(5, 64)
w_fq, _ = fake_quantize_with_mask(lin.weight.detach(), lin.weight_config)
x_fq, _ = fake_quantize_with_mask(x, lin.activation_config)
ref = x_fq.double() @ w_fq.double().T + lin.bias.double()
err = ((lin(x).double() - ref).abs().max() / ref.abs().max()).item()
assert err <= 2e-6, err
print("ok")
"""


def test_torch_backend_empty_batches_and_outputs_of_their_own():
    """The plain-torch backend (subprocess, CPU, no interpreter) as the kernels behave: every
    layer kind takes an empty batch (2-D and 3-D) forward, backward and converted, and
    ``tq.fake_quantize``'s output is a tensor of its own (an in-place write works: F.embedding's
    ``max_norm`` renormalizes its weight in place); masked gradient elements are +0.0 where the
    GEMM's product is NaN or negative, as the kernels' select makes them; a bf16 weight with an
    fp32 input computes the product of its bf16 w_fq at fp32 precision."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    res = subprocess.run([sys.executable, "-c", EDGE_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]
