"""Compile every kernel variant for NVIDIA GPUs on a machine without one, exactly as a launch
compiles it, and read the compiled code: perf/kernel_static.py calls each real launcher on fake CUDA
tensors and specializes the captured arguments with Triton's own JIT binder (16-aligned pointers
and ints divisible by 16 get tt.divisibility=16, ints equal to 1 become constexprs), so the program
checked is the one that runs, with its vectorized loads and cp.async pipelines.

As a script (``python tests/_compile_for_gpu.py ARCH OUT.json``, TRITON_INTERPRET=0) it writes the
rows of ``kernel_static.py --all --json`` for sm_<ARCH>. Tests call :func:`compiled`, which runs
the script once per architecture and pytest process (test_gpu_compile.py and
test_kernel_static.py read the same compile pass)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def compiled(arch: int) -> dict[str, dict]:
    """{variant key: kernel_static row} for sm_<arch> (90: sm_90a); a row with "error" failed."""
    tmp = tempfile.mkdtemp(prefix=f"compile_sm{arch}_")
    out = os.path.join(tmp, "rows.json")
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": os.path.join(tmp, "cache"),
           "TRITON_DEFAULT_FP_FUSION": "1"}  # fmt: skip
    res = subprocess.run([sys.executable, __file__, str(arch), out], env=env, capture_output=True,
                         text=True, timeout=900)  # fmt: skip
    if res.returncode != 0 or not os.path.exists(out):
        raise RuntimeError(f"compile pass for sm{arch} failed:\n{res.stderr[-3000:]}")
    with open(out) as f:
        return {r["key"]: r for r in json.load(f)}


def main(arch: int, out: str) -> None:
    sys.path.insert(0, str(ROOT / "perf"))
    import kernel_static  # sets TRITON_INTERPRET=0 before Triton and triton_qat are imported

    kernel_static.main(["--arch", str(arch), "--all", "--json", out, "--out", "", "--quiet"])


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
