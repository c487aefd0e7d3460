"""Every kernel variant compiles for Hopper (sm_90) and Ampere (sm_80) on a machine without a GPU,
the untuned default configs fit the 99 KiB of shared memory of the smallest targeted GPUs
(sm_86/89), and the quantize kernels contain no fused multiply-add (docs/numerics.md: x * (1/s) must round to fp32
before the rounding trick, which FMA contraction would skip)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

HELPER = Path(__file__).with_name("_compile_for_gpu.py")


@pytest.mark.parametrize("arch", [90, 80], ids=["sm90", "sm80"])
def test_kernels_compile_for_gpu(arch, tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path),
           "TRITON_DEFAULT_FP_FUSION": "1"}  # fmt: skip
    res = subprocess.run([sys.executable, str(HELPER), str(arch)], env=env, capture_output=True,
                         text=True, timeout=900)  # fmt: skip
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith(("OK", "FAIL"))]
    failed = [ln for ln in lines if ln.startswith("FAIL")]
    assert res.returncode == 0 and not failed, (failed, res.stderr[-1500:])
    assert len(lines) == 24 + 12 + 6
    defaults = [ln for ln in lines if " default " in ln]
    assert len(defaults) == 18
    assert all(int(ln.rsplit("shared_kib=", 1)[1]) <= 99 for ln in defaults), defaults
    quantize = [ln for ln in lines if " quantize " in ln]
    assert len(quantize) == 24 and all("fma=0" in ln for ln in quantize), quantize
    assert any("div_rn=0" not in ln for ln in quantize)  # the qparams use IEEE division
