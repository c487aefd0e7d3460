"""Test setup: CPU runs the real Triton kernels through the interpreter; outputs are poisoned."""

import os
import tempfile

import torch

if not torch.cuda.is_available():
    # Triton reads this when kernels are decorated, so it must be set before triton_qat is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_QAT_POISON", "1")
# tests never read or write the user's tuned-config cache
os.environ["TRITON_QAT_CACHE_DIR"] = tempfile.mkdtemp(prefix="triton_qat_cache_")

import pytest  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# max |err| / max |ref| allowed for a GEMM output or gradient against an fp64 product
REL_TOL = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def dt_id(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "").replace("float", "fp").replace("bfp", "bf")


# the tests that read the sm_90a / sm_80 compile passes (tests/_compile_for_gpu.py): a session that
# collects one starts both passes at once, in the background, one compile worker each, on the
# core the single-process suite leaves idle (~90 s of the suite's wall time on 2 cores)
COMPILE_PASS_READERS = {"test_gpu_compile.py", "test_kernel_static.py"}


def pytest_collection_finish(session):
    if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n: the readers' worker compiles on demand
        return
    if COMPILE_PASS_READERS & {item.path.name for item in session.items}:
        from _compile_for_gpu import start

        for arch in (90, 80):
            start(arch, jobs=1)


def pytest_sessionfinish(session, exitstatus):
    from _compile_for_gpu import stop_all

    stop_all()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def device() -> str:
    return DEVICE


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str):
    """Relative error (to the largest reference magnitude) within the dtype's bound; NaN fails."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values (unwritten output?)"
    a, e = actual.double(), expected.double()
    scale = e.abs().max().clamp_min(1e-30)
    err = ((a - e).abs().max() / scale).item()
    assert err <= REL_TOL[dtype], f"{what}: relative error {err:.3e} > {REL_TOL[dtype]:.1e}"


@pytest.fixture(params=["int8", "dequant"])
def fwd_path(request, monkeypatch):
    """Forces the forward GEMM's path for per-group weights (the config's ``DEQUANT``: the int8
    tensor-core GEMM or the dequantized 16-bit one; per channel is always int8). Returns the path
    and the list of forward configs used, so a test can check the path really ran."""
    from types import SimpleNamespace

    from triton_qat import autotune
    from triton_qat.autotune.space import fit_config

    looked_up = autotune.gemm_config
    used = []

    def forced(kernel, M, N, K, device, dtype=None, group_size=0):
        cfg = looked_up(kernel, M, N, K, device, dtype, group_size)
        if kernel == "fwd":
            cfg = {**cfg, "DEQUANT": int(request.param == "dequant")}
            cfg = fit_config("fwd", cfg, K, group_size or K)
            used.append(cfg)
        return cfg

    monkeypatch.setattr(autotune, "gemm_config", forced)
    autotune.invalidate()  # plans made with the real lookup are made again with this one
    yield SimpleNamespace(path=request.param, used=used)
    autotune.invalidate()


@pytest.fixture
def quantize_spy(monkeypatch):
    """Every quantize launch's (input shape, the launch's keyword arguments, Quantized result),
    in order: the launches made from now on (kept plans are made again)."""
    from triton_qat import autotune, dispatch

    launches, real = [], dispatch.quantize_launch

    def spying(*args, **kwargs):
        launch = real(*args, **kwargs)

        def run(x, *given, **kernel):
            q = launch(x, *given, **kernel)
            launches.append((tuple(x.shape), kwargs, q))
            return q

        return run

    monkeypatch.setattr(dispatch, "quantize_launch", spying)
    autotune.invalidate()
    yield launches
    autotune.invalidate()
