"""Where the time of one triton_qat layer call goes: host (Python, dispatch, launches) or device.

``perf/bench.py`` times one call at a time (synchronize, call, synchronize), so every
microsecond the host spends before the last kernel is queued counts. This script splits that
time, per provider and mode:

* ``single``: what bench.py measures, one synchronized call (CUDA events);
* ``host``: wall time to queue N calls back to back, per call;
* ``device``: device time per call of N calls queued behind a GPU sleep (so the host's queuing
  is hidden): host > device means the host sets the pace;
* ``syncs``: device synchronizations inside one call (``torch.cuda.set_sync_debug_mode``).

Then it profiles one eager forward and one eager forward+backward of triton_qat with cProfile
(Python functions by own time) and torch.profiler (operators by self CPU time).

    python3 perf/profile_host.py --out /tmp/prof          # on a CUDA machine
    python perf/profile_host.py --dry-run                 # the same code path on a CPU

``--dry-run`` runs on the CPU in Triton's interpreter (run as a script, it sets
``TRITON_INTERPRET=1`` before Triton is imported), with few calls and, unless ``--shapes`` names
others, one tiny shape.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
import warnings
from pathlib import Path

if __name__ == "__main__" and "--dry-run" in sys.argv[1:]:
    # the CPU rehearsal runs the real kernels in Triton's interpreter, which must be chosen
    # before Triton (and triton_qat) is imported: without it a CPU has no Triton driver at all
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import Timer, make_layer, queued_ms  # noqa: E402

import triton_qat as tq  # noqa: E402
from triton_qat.autotune.problems import parse_shapes as parse_mxkxn  # noqa: E402
from triton_qat.kernels._common import INTERPRET  # noqa: E402
from triton_qat.kernels.gemm_int8 import MAX_IN_FEATURES  # noqa: E402

# compiled host time is judged against F.linear's compiled (issue 27: within 30 us); CUDA graphs
# replay without host work per kernel
PROVIDERS = ("F.linear", "F.linear compiled", "triton_qat eager", "triton_qat compiled",
             "triton_qat compiled cudagraphs", "triton_qat i4g128 compiled")  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _call(layer, x, dy, mode: str) -> None:
    out = layer(x)
    if mode == "fwd+bwd":
        out.backward(dy)


def split_times(layer, x, dy, mode: str, n: int, device: torch.device) -> dict:
    """single / host / device milliseconds per call, and the syncs one call makes."""
    cuda = device.type == "cuda"
    call = lambda _state: _call(layer, x, dy, mode)  # noqa: E731
    # warm (compile) every graph, then n synchronized single calls as bench.py times them
    singles = Timer(device, 3, n)(lambda i: None, call)
    _sync(device)
    # host: queuing time per call; device: per call when queued behind a GPU sleep longer than
    # the queuing (bench.queued_ms), so it cannot include the host's time
    host_ms, device_ms = queued_ms(lambda i: None, call, n, device)
    device_ms = device_ms if cuda else float("nan")
    syncs = 0
    if cuda:
        prev = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                _call(layer, x, dy, mode)
            syncs = sum("synchroniz" in str(w.message) for w in caught)
        finally:
            torch.cuda.set_sync_debug_mode(prev)
    return dict(single=statistics.median(singles), host=host_ms, device=device_ms, syncs=syncs)


def python_profile(layer, x, dy, mode: str, n: int, top: int) -> str:
    """cProfile of n calls: the top functions by own time, then by cumulative time."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        _call(layer, x, dy, mode)
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return buf.getvalue()


def torch_profile(layer, x, dy, mode: str, n: int, top: int, device: torch.device) -> str:
    """torch.profiler over n calls: operators by self CPU time (and device time on CUDA)."""
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(n):
            _call(layer, x, dy, mode)
        _sync(device)
    averages = prof.key_averages()
    tables = [averages.table(sort_by="self_cpu_time_total", row_limit=top)]
    if device.type == "cuda":  # the key's name changed across torch versions
        for key in ("self_device_time_total", "self_cuda_time_total"):
            try:
                tables.append(averages.table(sort_by=key, row_limit=top))
                break
            except (AttributeError, KeyError, ValueError):
                continue
    return "\n".join(tables)


@triton.jit
def _noop_kernel(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)


def host_us(fn, n: int, device: torch.device) -> float:
    """Microseconds of host time per call over n calls queued back to back."""
    for _ in range(5):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    us = 1e6 * (time.perf_counter() - t0) / n
    _sync(device)
    return us


def ladder(device: torch.device, dtype: torch.dtype, K: int, N: int, n: int) -> list[str]:
    """Host microseconds per call of each layer under a triton_qat forward, from a bare Triton
    launch up to the module, at 64 tokens (device work too small to hold the host back)."""
    from triton_qat import dispatch
    from triton_qat.autotune import quantize_config
    from triton_qat.kernels.quantize import launch_quantize, plan_quantize

    x = torch.randn(64, K, device=device, dtype=dtype)
    xg = x.clone().requires_grad_(True)
    w = torch.randn(N, K, device=device, dtype=dtype)
    layer = make_layer("triton_qat eager", K, N, device, dtype)
    config = quantize_config(64, K, device, dtype, True)
    args = (x, -128, 127, K, False)
    plan = plan_quantize(K, dtype, device, -128, 127, K, False, pack_mask=True, config=config)
    steps = {
        "torch.empty (one 64xK int8)": lambda: torch.empty(64, K, dtype=torch.int8, device=device),
        "bare Triton launch (1 pointer)": lambda: _noop_kernel[(1,)](x, 16, BLOCK=16),
        "autotune.quantize_config": lambda: quantize_config(64, K, device, dtype, True),
        "kernels.quantize.launch_quantize (a kept plan)": lambda: launch_quantize(plan, x),
        "dispatch.quantize_rows (key -> kept launch)": lambda: dispatch.quantize_rows(
            *args, pack_mask=True
        ),
        "torch.ops.triton_qat.quantize": lambda: torch.ops.triton_qat.quantize(
            x, -128, 127, K, False, False, True, None, None
        ),
        "F.linear": lambda: torch.nn.functional.linear(x, w),
        "tq.Linear forward, no grad": lambda: layer(x),
        "tq.Linear forward, grad": lambda: layer(xg),
        **_backward_steps(layer, x, device, dtype),
    }
    rows = [f"\n## host microseconds per call, 64x{K}->{N} {dtype}, {n} calls each",
            "| step | us |", "| --- | ---: |"]  # fmt: skip
    for name, fn in steps.items():
        rows.append(f"| {name} | {host_us(fn, n, device):.1f} |")
    return rows


def _backward_steps(layer, x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> dict:
    """The backward's rungs: each launch of its kept plan alone, the whole op implementation, and
    the autograd step around it (forward + backward, so the forward's rung is to be subtracted)."""
    from triton_qat import dispatch, ops
    from triton_qat.spec import spec_for

    w = layer.weight.detach()
    M, K, N = x.shape[0], w.shape[1], w.shape[0]
    dy = torch.randn(M, N, device=device, dtype=dtype)
    plan = dispatch.linear_plan(M, K, N, dtype, dtype, device, spec_for(layer.activation_config),
                                spec_for(layer.weight_config), has_bias=True)  # fmt: skip
    codes, scale, zp, mask, _ = ops.quantize_impl(x, -128, 127, K, False, False, True, None, None)
    wq = plan.quantize_w_bwd[True, True](w)
    xg = x.clone().requires_grad_(True)

    def step():
        layer.weight.grad = layer.bias.grad = xg.grad = None
        layer(xg).backward(dy)

    return {
        "backward: weight quantize (y + mask)": lambda: plan.quantize_w_bwd[True, True](w),
        "backward: dgrad launch": lambda: plan.dgrad(dy, wq.y, mask),
        "backward: dequantize launch": lambda: plan.dequantize_x(codes, scale, zp),
        "backward: wgrad launch": lambda: plan.wgrad(dy.t(), x, wq.mask),
        "backward: ops.qat_linear_backward_impl": lambda: ops.qat_linear_backward_impl(
            dy, codes, scale, zp, mask, w, -128, 127, K, False, None, True, True, True
        ),
        "tq.Linear forward + backward": step,
    }


DRY_SHAPES = [(32, 128, 48)]


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    """``MxKxN[,MxKxN...]`` (the autotune CLI's parser), K a triton_qat layer runs."""
    shapes = parse_mxkxn(text)
    for M, K, N in shapes:
        if K > MAX_IN_FEATURES:
            raise argparse.ArgumentTypeError(
                f"{M}x{K}x{N}: in_features K at most {MAX_IN_FEATURES} (the int8 GEMM's int32 "
                f"accumulator), got {K}"
            )
    return shapes


def providers_for(K: int) -> list[str]:
    """:data:`PROVIDERS` whose layer takes ``K`` in_features (a weight group must divide K)."""
    return [p for p in PROVIDERS if " i4g" not in p or K % int(p.split(" i4g")[1].split()[0]) == 0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true",
                   help="CPU, Triton interpreter, few calls; tiny shapes unless --shapes is given")  # fmt: skip
    p.add_argument("--shapes", type=parse_shapes, default=None,
                   help="MxKxN,... (default 2048x4096x4096,8192x4096x4096; --dry-run: 32x128x48)")  # fmt: skip
    p.add_argument("--ladder-only", action="store_true", help="only the host-time ladder")
    p.add_argument("--no-profiles", action="store_true", help="skip cProfile / torch.profiler")
    p.add_argument("--out", default=None, help="folder for profile.txt (default: print only)")
    args = p.parse_args(argv)
    if args.dry_run:
        device = torch.device("cpu")
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not INTERPRET:
        # the ladder launches Triton kernels itself: on a CPU only the interpreter runs them
        if args.dry_run:
            p.error("--dry-run: on a CPU the Triton kernels run in Triton's interpreter, and "
                    "TRITON_INTERPRET=1 must be set before Triton is imported (run it as a "
                    "script, python perf/profile_host.py --dry-run, which sets it)")  # fmt: skip
        p.error("no CUDA device: on a CPU pass --dry-run (Triton's interpreter; or set "
                "TRITON_INTERPRET=1 for these shapes in the interpreter)")  # fmt: skip
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.shapes is not None:
        shapes = args.shapes
    else:
        shapes = DRY_SHAPES if args.dry_run else [(2048, 4096, 4096), (8192, 4096, 4096)]
    n, top = (2, 12) if args.dry_run else (20, 40)
    lines = [f"# host vs device, {device}, torch {torch.__version__}, backend {tq.backend(device)}"]

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    K0, N0 = shapes[0][1:]
    for row in ladder(device, dtype, K0, N0, 3 if args.dry_run else 200):
        say(row)
    if args.ladder_only:
        return _write(args.out, lines)
    for M, K, N in shapes:
        x = torch.randn(M, K, device=device, dtype=dtype, requires_grad=True)
        dy = torch.randn(M, N, device=device, dtype=dtype)
        say(f"\n## {M}x{K}->{N} {dtype}: ms per call (median single; host/device over {n})")
        say("| provider | mode | single | host | device | syncs |")
        say("| --- | --- | ---: | ---: | ---: | ---: |")
        for provider in providers_for(K):
            layer = make_layer(provider, K, N, device, dtype)
            for mode in ("fwd", "fwd+bwd"):
                t = split_times(layer, x, dy, mode, n, device)
                say(f"| {provider} | {mode} | {t['single']:.3f} | {t['host']:.3f} | "
                    f"{t['device']:.3f} | {t['syncs']} |")  # fmt: skip
    if args.no_profiles:
        return _write(args.out, lines)
    M, K, N = shapes[0]
    x = torch.randn(M, K, device=device, dtype=dtype, requires_grad=True)
    dy = torch.randn(M, N, device=device, dtype=dtype)
    for provider in ("triton_qat eager", "triton_qat compiled"):
        layer = make_layer(provider, K, N, device, dtype)
        for mode in ("fwd", "fwd+bwd"):
            for _ in range(3):
                _call(layer, x, dy, mode)
            say(f"\n## cProfile, {provider} {mode}, {M}x{K}->{N}, {n} calls")
            say(python_profile(layer, x, dy, mode, n, top))
            say(f"\n## torch.profiler, {provider} {mode}, {M}x{K}->{N}, {n} calls")
            say(torch_profile(layer, x, dy, mode, n, top, device))
    return _write(args.out, lines)


def _write(out: str | None, lines: list[str]) -> int:
    """profile.txt in ``out`` (when given) from the lines printed so far; the exit status."""
    if out:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "profile.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
