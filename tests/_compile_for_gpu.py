"""Compile every kernel variant for NVIDIA GPUs on a machine without one, exactly as a launch
compiles it, and read the compiled code: perf/kernel_static.py calls each real launcher on fake CUDA
tensors and specializes the captured arguments with Triton's own JIT binder (16-aligned pointers
and ints divisible by 16 get tt.divisibility=16, ints equal to 1 become constexprs), so the program
checked is the one that runs, with its vectorized loads and cp.async pipelines.

As a script (``python tests/_compile_for_gpu.py ARCH OUT.json [JOBS]``, TRITON_INTERPRET=0) it
writes the rows of ``kernel_static.py --all --json`` for sm_<ARCH>. Tests call :func:`compiled`,
which runs the script once per architecture and pytest process (test_gpu_compile.py and
test_kernel_static.py read the same compile pass); tests/conftest.py starts both passes in the
background as soon as a session has collected one of those tests."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# compile passes started ahead (conftest starts them when the session collects a test that reads
# them, so they run on the core the single-process suite leaves idle): arch -> (process, out)
_STARTED: dict[int, tuple[subprocess.Popen, str]] = {}


def start(arch: int, jobs: int = 2) -> None:
    """Start the compile pass for sm_<arch> in a subprocess of ``jobs`` compile workers, unless
    it was started already; :func:`compiled` waits for it."""
    if arch in _STARTED:
        return
    tmp = tempfile.mkdtemp(prefix=f"compile_sm{arch}_")
    out = os.path.join(tmp, "rows.json")
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": os.path.join(tmp, "cache"),
           "TRITON_DEFAULT_FP_FUSION": "1"}  # fmt: skip
    with open(os.path.join(tmp, "stderr.txt"), "w") as err:  # a file: a pipe could fill up
        proc = subprocess.Popen([sys.executable, __file__, str(arch), out, str(jobs)], env=env,
                                stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
    _STARTED[arch] = (proc, out)


def stop_all() -> None:
    """End the compile passes still running (a session that stops early)."""
    for proc, _ in _STARTED.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@functools.cache
def compiled(arch: int) -> dict[str, dict]:
    """{variant key: kernel_static row} for sm_<arch> (90: sm_90a); a row with "error" failed.
    Waits for the pass :func:`start` began, or runs it now."""
    start(arch)
    proc, out = _STARTED[arch]
    try:
        proc.wait(timeout=900)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    if proc.returncode != 0 or not os.path.exists(out):
        err = open(os.path.join(os.path.dirname(out), "stderr.txt")).read()
        raise RuntimeError(f"compile pass for sm{arch} failed:\n{err[-3000:]}")
    with open(out) as f:
        return {r["key"]: r for r in json.load(f)}


def main(arch: int, out: str, jobs: int) -> None:
    sys.path.insert(0, str(ROOT / "perf"))
    import kernel_static  # sets TRITON_INTERPRET=0 before Triton and triton_qat are imported

    # sm_80's readers (test_gpu_compile.py, test_kernel_static.py's spill test) read the SASS of
    # the quantize kernels only (their FFMAs and x loads): the other ~70 variants skip nvdisasm
    sass = ["--sass", "quantize"] if arch == 80 else []
    kernel_static.main(["--arch", str(arch), "--all", "--json", out, "--out", "", "--quiet",
                        "--jobs", str(jobs), *sass])  # fmt: skip


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 2)
