"""What ``torch.compile`` makes of triton_qat's ops on a CUDA device, traced on a machine without
one: the ops' bodies run on fake CUDA tensors of a fake sm_90 GPU (the Triton driver's target,
the device queries the op layer makes) under AOTAutograd, which decomposes every
``torch.library.triton_op`` into the kernel launches Inductor then emits itself; the same
functions on CPU tensors keep the opaque ``*_opaque`` ops. Nothing runs: only graphs are made.

As a script (``python tests/_trace_on_fake_gpu.py``, TRITON_INTERPRET=0) it prints one JSON object:
per traced function and device, the call targets of every graph AOTAutograd produced.
tests/test_compiled_launches.py runs it in a child process (the fake GPU stays there)."""

from __future__ import annotations

import json
import os
import sys
import types

os.environ["TRITON_INTERPRET"] = "0"  # real JIT kernels: what wrap_triton traces
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, minus its warning

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402


class _FakeDriver:
    """Triton's active driver as torch's kernel analysis asks it (TTIR for sm_90)."""

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0


def fake_gpu() -> None:
    """Install the fake sm_90 GPU in this process (the queries the op layer makes)."""
    triton.runtime.driver.set_active(_FakeDriver())
    props = types.SimpleNamespace(major=9, minor=0, name="fake sm_90",
                                  shared_memory_per_block_optin=227 * 1024)  # fmt: skip
    torch.cuda.get_device_capability = lambda device=None: (9, 0)
    torch.cuda.get_device_name = lambda device=None: "fake sm_90"
    torch.cuda.get_device_properties = lambda device=None: props
    torch.cuda.current_device = lambda: 0


def graph_targets(fn, *args) -> list[list[str]]:
    """The call targets of each graph AOTAutograd makes of ``fn(*args)`` (fake inputs; inference:
    autograd on fake CUDA tensors needs a CUDA build)."""
    from functorch.compile import aot_function

    graphs: list[list[str]] = []

    def capture(gm, example_inputs):
        graphs.append([str(n.target) for n in gm.graph.nodes if n.op == "call_function"])
        return gm

    mode = _mode(args)
    with mode:
        aot_function(fn, fw_compiler=capture, bw_compiler=capture)(*args)
    return graphs


def _mode(args):
    from torch._subclasses.fake_tensor import FakeTensor

    return next(a.fake_mode for a in args if isinstance(a, FakeTensor))


def main() -> dict:
    from torch._subclasses.fake_tensor import FakeTensorMode

    fake_gpu()
    import triton_qat as tq
    from triton_qat.functional import linear_ops
    from triton_qat.spec import spec_for

    ops = torch.ops.triton_qat
    i4g32 = tq.QuantConfig(bits=4, granularity="per_group", group_size=32, symmetric=True)
    layers = {
        "default": (
            spec_for(tq.QuantConfig()),
            spec_for(tq.QuantConfig(granularity="per_channel", symmetric=True)),
        ),  # fmt: skip
        "int4 g32": (spec_for(tq.QuantConfig()), spec_for(i4g32)),
        "weight-only int4 g32": (None, spec_for(i4g32)),
    }
    out = {}
    for device in ("cuda", "cpu"):
        with FakeTensorMode():
            x = torch.empty(64, 256, dtype=torch.bfloat16, device=device)
            w = torch.empty(128, 256, dtype=torch.bfloat16, device=device)
            b = torch.empty(128, dtype=torch.bfloat16, device=device)
            dy = torch.empty(64, 128, dtype=torch.bfloat16, device=device)
        for name, (a_spec, w_spec) in layers.items():

            def fwd(x, w, b, a_spec=a_spec, w_spec=w_spec):
                return linear_ops(x, w, b, activation=a_spec, weight_spec=w_spec)

            out[f"forward {name} {device}"] = graph_targets(fwd, x, w, b)

        def bwd(dy, x, w):
            state = ops.quantize(x, -128, 127, 256, False, False, True, None, None)[:4]
            return ops.qat_linear_backward(dy, *state, w, -128, 127, 256, False, None, True,
                                           True, True)  # fmt: skip

        out[f"backward {device}"] = graph_targets(bwd, dy, x, w)
    return out


if __name__ == "__main__":
    json.dump(main(), sys.stdout)
