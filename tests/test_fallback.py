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
