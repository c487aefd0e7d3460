"""Python function calls per layer call: the host path counted, not timed.

The Triton launches are made no-ops (the interpreter's ``InterpretedFunction.run`` returns at
once), so what is left is the host's own work between ``module(x)`` and the kernels: module
dispatch, checks, plan lookups, allocations, argument binding. cProfile counts every Python and
built-in function call (what the issue's budget is stated in); a count is deterministic, so
``tests/test_host_calls.py`` holds it to a budget where a timing could not be a test.

    TRITON_INTERPRET=1 TRITON_QAT_POISON=0 .venv/bin/python perf/host_calls.py [--top 30]

Prints, per layer kind, the calls of one forward (``layer(x)``) and of one forward+backward
(``layer(x).backward(g)``), eager (after warm-up calls, so plans are kept) and, with
``--compiled``, of the ``torch.compile``-d layer (its generated code calling the ops).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import sys
from pathlib import Path

if os.environ.get("TRITON_INTERPRET") != "1" or os.environ.get("TRITON_QAT_POISON", "0") != "0":
    sys.exit("run with TRITON_INTERPRET=1 TRITON_QAT_POISON=0 (the interpreter's launches are "
             "the ones made no-ops; poisoned outputs would add fills)")  # fmt: skip

import torch  # noqa: E402
import triton.runtime.interpreter as _interpreter  # noqa: E402

import triton_qat as tq  # noqa: E402

M, K, N = 64, 256, 128  # the default config, bf16: what the budget is stated at
LAYERS = {
    "default (int8 per-token x int8 per-channel)": {},
    "int4 per-group 32": {
        "weight": tq.QuantConfig(bits=4, granularity="per_group", group_size=32, symmetric=True)
    },
    "weight-only int4 per-group 32": {
        "activation": tq.NOT_QUANTIZED,
        "weight": tq.QuantConfig(bits=4, granularity="per_group", group_size=32, symmetric=True),
    },
    # e4m3 per row (the fp8 GEMM path: through the float8_linear custom op, not a fused plan)
    "float8 e4m3 per-row": {"activation": tq.Float8Config(), "weight": tq.Float8Config()},
}


def no_launches() -> None:
    """Make every interpreted kernel launch return at once (in this process, for good)."""
    _interpreter.InterpretedFunction.run = lambda self, *args, grid, warmup, **kwargs: None


REPO = Path(__file__).resolve().parents[1]


def files_to_launches(layer: torch.nn.Module, dtype=torch.bfloat16) -> list[list[str]]:
    """For each launch of one forward of ``layer`` (after a warm-up call), the project files on
    the call stack from the module's ``forward`` down to the launch, outermost first, each run of
    frames in one file counted once (torch's own frames left out): the route a call takes."""
    x = torch.randn(M, K, dtype=dtype, requires_grad=True)
    layer(x)
    routes: list[list[str]] = []
    real = _interpreter.InterpretedFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        route: list[str] = []
        frame = sys._getframe(1)
        while frame is not None:
            path = Path(frame.f_code.co_filename).resolve()
            ours = path.is_relative_to(REPO) and not {"perf", ".venv", "site-packages"} & set(
                path.parts
            )
            if ours:
                name = path.relative_to(REPO).as_posix()
                if not route or route[-1] != name:
                    route.append(name)
                if name == "triton_qat/linear.py":
                    break
            frame = frame.f_back
        routes.append(route[::-1])

    _interpreter.InterpretedFunction.run = record
    try:
        layer(x)
    finally:
        _interpreter.InterpretedFunction.run = real
    return routes


def count(fn, warmup: int = 3) -> tuple[int, pstats.Stats]:
    """Python + built-in function calls made by one ``fn()`` (``fn``'s own frame and the
    profiler's ``disable`` not counted) after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    stats = pstats.Stats(prof)
    ours = sum(
        stats.stats[key][1]  # primitive + recursive calls of the harness entries
        for key in stats.stats
        if key[2] == fn.__name__ or "_lsprof.Profiler" in key[2]
    )
    return stats.total_calls - ours, stats


def layer_calls(layer: torch.nn.Module, dtype=torch.bfloat16) -> dict[str, tuple[int, object]]:
    """{"fwd": (calls, stats), "fwd+bwd": (calls, stats)} of ``layer`` on x [M, K] in ``dtype``."""
    x = torch.randn(M, K, dtype=dtype, requires_grad=True)
    g = torch.randn(M, N, dtype=dtype)

    def fwd():
        layer(x)

    def fwd_bwd():
        layer(x).backward(g)

    return {"fwd": count(fwd), "fwd+bwd": count(fwd_bwd)}


def cyclic_garbage(layer: torch.nn.Module, dtype=torch.bfloat16, warmup: int = 3) -> dict:
    """{type name: count} of the objects one forward+backward of ``layer`` leaves in reference
    cycles (what only the cycle collector frees: a tensor caught in one outlives the step), after
    ``warmup`` steps. Empty on a host path that frees everything by reference counting."""
    x = torch.randn(M, K, dtype=dtype, requires_grad=True)
    g = torch.randn(M, N, dtype=dtype)
    for _ in range(warmup):
        layer(x).backward(g)
    gc.collect()
    was_enabled, debug, earlier = gc.isenabled(), gc.get_debug(), list(gc.garbage)
    gc.disable()
    gc.garbage.clear()
    gc.set_debug(gc.DEBUG_SAVEALL)  # collected objects go to gc.garbage instead of being freed
    try:
        layer(x).backward(g)
        gc.collect()
        kinds: dict[str, int] = {}
        for obj in gc.garbage:
            kinds[type(obj).__name__] = kinds.get(type(obj).__name__, 0) + 1
        return kinds
    finally:
        gc.set_debug(debug)
        gc.garbage[:] = earlier
        if was_enabled:
            gc.enable()


def make(kind: str, compiled: bool = False) -> torch.nn.Module:
    layer = tq.Linear(K, N, dtype=torch.bfloat16, **LAYERS[kind])
    if compiled:
        layer = torch.compile(layer, fullgraph=True, dynamic=False)
    return layer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--top", type=int, default=0, help="also list the N most frequent calls")
    p.add_argument("--compiled", action="store_true", help="also count the compiled layer")
    args = p.parse_args(argv)
    no_launches()
    print(f"# Python function calls per call, {M}x{K}->{N} bf16, launches no-ops "
          f"(torch {torch.__version__})")  # fmt: skip
    print("| layer | mode | fwd | fwd+bwd |\n| --- | --- | ---: | ---: |")
    for kind in LAYERS:
        for compiled in (False, True) if args.compiled else (False,):
            counts = layer_calls(make(kind, compiled))
            mode = "compiled" if compiled else "eager"
            print(f"| {kind} | {mode} | {counts['fwd'][0]} | {counts['fwd+bwd'][0]} |")
            if args.top and not compiled:
                for route in files_to_launches(make(kind)):
                    print("    route to a launch:", " -> ".join(route))
            if args.top:
                for what in ("fwd", "fwd+bwd"):
                    print(f"\n{kind}, {mode}, {what}:")
                    counts[what][1].sort_stats("ncalls").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
