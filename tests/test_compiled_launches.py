"""Under torch.compile on a CUDA device, the generated code launches triton_qat's kernels itself:
the ops are ``torch.library.triton_op``\\ s, decomposed while tracing into one
``triton_kernel_wrapper_functional`` node per launch (configs decided then), with no triton_qat op
left for Python to run per call (issue 27). Shown as far as a CPU can: the graphs AOTAutograd makes
on a fake sm_90 GPU (tests/_trace_on_fake_gpu.py). On CPU tensors the same functions keep the
opaque ``*_opaque`` ops, which the interpreter and the plain-torch twins need."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
WRAPPER = "triton_kernel_wrapper_functional"


@pytest.fixture(scope="module")
def graphs() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    done = subprocess.run([sys.executable, str(HERE / "_trace_on_fake_gpu.py")], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _targets(graphs: dict, key: str) -> list[str]:
    return [t for g in graphs[key] for t in g]


@pytest.mark.parametrize("layer", ["default", "int4 g32", "weight-only int4 g32"])
def test_cuda_forward_is_kernel_launches(layer, graphs):
    targets = _targets(graphs, f"forward {layer} cuda")
    launches = sum(WRAPPER in t for t in targets)
    # the activation's quantize, the weight's, the GEMM (per group: dequantize x, w, float GEMM)
    want = {"default": 3, "int4 g32": 4, "weight-only int4 g32": 1}[layer]
    assert launches >= want, targets
    assert not [t for t in targets if "triton_qat" in t], targets  # nothing left for Python


def test_cuda_backward_is_kernel_launches(graphs):
    targets = _targets(graphs, "backward cuda")
    # x's quantize (the function's own), the weight's values and mask, dgrad, dequantize, wgrad;
    # bf16 on a GPU: dgrad and wgrad are torch.mm (Inductor's own mm) + the mask pass's launch
    assert sum(WRAPPER in t for t in targets) == 5, targets
    assert targets.count("aten.mm.default") == 2, targets
    assert not [t for t in targets if "triton_qat" in t], targets


def test_cpu_keeps_the_opaque_ops(graphs):
    for key in ("forward default cpu", "forward weight-only int4 g32 cpu", "backward cpu"):
        targets = _targets(graphs, key)
        assert not [t for t in targets if WRAPPER in t], (key, targets)
        assert [t for t in targets if "triton_qat" in t and "_opaque" in t], (key, targets)
