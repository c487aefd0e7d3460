"""``make gpu-report``'s tuning phase: what tuning buys, and the configs to ship.

The curated candidate lists (``autotune/space.py`` ``CURATED``), compiled in parallel, at the
headline token count, bf16, for each (K, N) pair: int8 per channel (every kernel), int4 group 128
(forward, weight quantize) and, at the headline pair, int4 group 32 (forward: the int8 and the
dequantized path each timed). Each tuned config is checked against the default config's output
(:func:`outputs_agree`; a config that disagrees is never shipped) and timed against it; the
winners go to ``autotune/configs/<gpu>__triton-<version>.json``, a copy in the report folder and
this process's private cache, so the later phases run the tuned configs.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import triton
from gpu_report_run import REL_TOL, Run, Sizes, poisoned

import triton_qat as tq
from triton_qat import autotune
from triton_qat.autotune import cache as cache_mod
from triton_qat.autotune.problems import KERNELS, LinearShape, problems
from triton_qat.autotune.tune import tune


def tuning_plan(sizes: Sizes) -> list[tuple[LinearShape, tuple[str, ...]]]:
    """Headline shape first (all kernels, then its int4 g128 forward and weight quantize, and its
    int4 g32 forward: both per-group forwards time the int8 and the dequantized path), then the
    other (K, N) pairs; per-group shares dgrad / wgrad / quantize_x keys with per channel."""
    M, dt = sizes.head_tokens, sizes.tune_dtype
    plan = []
    for i, (K, N) in enumerate(sizes.pairs):
        plan.append((LinearShape(M, K, N, dt), KERNELS))
        if K % 128 == 0:
            plan.append((LinearShape(M, K, N, dt, 4, 128), ("fwd", "quantize_w")))
        if i == 0 and K % 32 == 0:
            plan.append((LinearShape(M, K, N, dt, 4, 32), ("fwd",)))
    return plan


def _flatten(out) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, tuple | list):
        return [t for o in out for t in _flatten(o)]
    return []


def outputs_agree(a, b, dtype) -> str | None:
    """None if the outputs of two configs of one kernel agree (integers exactly; floats NaN where
    NaN and within REL_TOL of the larger magnitude: GEMMs may sum in another order), else what
    differs."""
    ta, tb = _flatten(a), _flatten(b)
    if len(ta) != len(tb):
        return f"{len(ta)} outputs vs {len(tb)}"
    tol = REL_TOL.get(dtype, REL_TOL[torch.bfloat16])
    for i, (u, v) in enumerate(zip(ta, tb, strict=True)):
        if u.shape != v.shape or u.dtype != v.dtype:
            return f"output {i}: {u.dtype}{tuple(u.shape)} vs {v.dtype}{tuple(v.shape)}"
        if not u.is_floating_point():
            if not torch.equal(u, v):
                return f"output {i}: {(u != v).sum().item()} of {u.numel()} integers differ"
            continue
        if not torch.equal(u.isnan(), v.isnan()):
            return f"output {i}: NaN positions differ"
        if u.numel() == 0:
            continue
        ud, vd = u.nan_to_num().double(), v.nan_to_num().double()
        err = ((ud - vd).abs().max() / vd.abs().max().clamp_min(1e-30)).item()
        if err > tol:
            return f"output {i}: relative difference {err:.2e} > {tol:.1e}"
    return None


def phase_tuning(run: Run, deadline: float, sizes: Sizes) -> bool:
    """Tune each planned shape, check each tuned config against the default config's output,
    record default vs tuned times, and write the JSON after every shape."""
    name = run.cache_name
    run.tuned_json = run.folder / cache_mod.file_name(name)
    if not run.dry_run:
        run.shipped_json = cache_mod.SHIPPED_DIR / cache_mod.file_name(name)
    done_keys: set[str] = set()
    stopped = False
    with poisoned(False):
        for s, kernels in tuning_plan(sizes):
            if time.monotonic() > deadline:
                stopped = True
                run.row(phase="tuning", item=s.label, status="skipped",
                        detail="skipped: phase time limit", M=s.M, K=s.K, N=s.N)  # fmt: skip
                run.say(f"tuning {s.label}: skipped (phase time limit)")
                continue
            stats: dict = {}
            t0 = time.monotonic()
            try:
                results = tune(s, run.device, kernels, store=False, curated=True,
                               deadline=deadline, skip_keys=done_keys, stats=stats)  # fmt: skip
            except Exception as e:  # noqa: BLE001 - e.g. out of memory: the next shape runs
                msg = f"{type(e).__name__}: {str(e).strip()[:300]}"
                run.row(phase="tuning", item=s.label, status="fail", detail=msg, M=s.M, K=s.K,
                        N=s.N)  # fmt: skip
                run.say(f"tuning {s.label}: FAILED {msg}")
                if run.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            secs = time.monotonic() - t0
            if stats.get("launches"):
                stats["shape"] = s.label
                run.compile_stats.append(stats)
                par = stats["sum_s"] / stats["wall_s"] if stats["wall_s"] > 0 else float("nan")
                run.row(phase="tuning", item=f"{s.label} compile", status="done", metric="compile_wall_s",
                        value=stats["wall_s"], detail=f"{stats['launches']} first launches on "
                        f"{stats['workers']} threads; sum of launch times {stats['sum_s']:.1f} s "
                        f"({par:.1f}x parallel)", M=s.M, K=s.K, N=s.N)  # fmt: skip
            registry = problems(s, run.device) if results else {}
            entries = {}
            for kernel, r in results.items():
                done_keys.add(r["key"])
                agree = None
                if r["config"] != r["default_config"] and r["default_ms"] is None:
                    run.row(phase="tuning", item=f"tuned_agrees_with_default[{s.label},{kernel}]",
                            status="skipped", detail="skipped: the default config did not run",
                            kernel=kernel, M=s.M, K=s.K, N=s.N, config=r["config"])  # fmt: skip
                elif r["config"] != r["default_config"]:
                    prob = registry[kernel]
                    try:
                        agree = outputs_agree(prob.launch(r["config"]),
                                              prob.launch(r["default_config"]), s.dtype)  # fmt: skip
                    except Exception as e:  # noqa: BLE001
                        agree = f"{type(e).__name__}: {e}"
                    status = "pass" if agree is None else "fail"
                    run.row(phase="tuning", item=f"tuned_agrees_with_default[{s.label},{kernel}]",
                            status=status, detail=agree or "outputs agree", kernel=kernel,
                            M=s.M, K=s.K, N=s.N, config=r["config"])  # fmt: skip
                    if agree is not None:  # never ship a config that computes something else
                        run.say(f"FAIL tuned {kernel} at {s.label} disagrees with the default: "
                                f"{agree}; keeping the default")  # fmt: skip
                        r = {**r, "config": r["default_config"], "ms": r["default_ms"]}
                gain = r["default_ms"] / r["ms"] if r["default_ms"] and r["ms"] > 0 else None
                rec = dict(shape=s.label, kernel=kernel, default_ms=r["default_ms"], ms=r["ms"],
                           gain=gain, tried=r["tried"], candidates=r["candidates"],
                           failed=r["failed"], complete=r["complete"], config=r["config"],
                           by_path=r.get("by_path", {}))  # fmt: skip
                run.tuning.append(rec)
                common = dict(phase="tuning", item=f"{s.label} {kernel}", kernel=kernel, M=s.M,
                              K=s.K, N=s.N, dtype=s.dtype, backend=tq.backend(run.device))  # fmt: skip
                status = "done" if r["complete"] else "partial"
                detail = (f"{r['tried']} of {r['candidates']} configs timed, {r['failed']} failed"
                          + ("" if r["complete"] else ", stopped at the phase limit"))  # fmt: skip
                if r["default_ms"] is not None:
                    run.row(**common, status=status, provider="untuned default", metric="ms",
                            value=r["default_ms"], config=r["default_config"], detail=detail)  # fmt: skip
                run.row(**common, status=status, provider="tuned", metric="ms", value=r["ms"],
                        config=r["config"], detail=detail)  # fmt: skip
                if gain is not None:
                    run.row(**common, status=status, provider="tuned", metric="tuning_gain",
                            value=gain, detail="untuned default ms / tuned ms")  # fmt: skip
                for path, ms in r.get("by_path", {}).items():  # the per-group forward's decision
                    run.row(**common, status=status, provider=f"{path} path (fastest)", metric="ms",
                            value=ms, detail="the forward path's fastest timed config")  # fmt: skip
                entries[r["key"]] = {"config": r["config"], "ms": round(r["ms"], 5),
                                     "tried": r["tried"]}  # fmt: skip
                d = f"{r['default_ms']:.4f}" if r["default_ms"] is not None else "failed"
                run.say(f"tuned {s.label:<22} {kernel:<10} default {d} ms -> {r['ms']:.4f} ms "
                        f"({gain:.2f}x)  {r['config']}" if gain else
                        f"tuned {s.label:<22} {kernel:<10} {r['ms']:.4f} ms  {r['config']}")  # fmt: skip
            if entries:
                try:
                    write_tuned(run, entries)
                except (OSError, ValueError) as e:
                    run.row(phase="tuning", item=f"{s.label} write", status="fail",
                            detail=f"{type(e).__name__}: {e}")  # fmt: skip
                    run.say(f"tuning {s.label}: could not write the tuned configs: {e}")
            run.say(f"tuning {s.label}: {len(results)} kernel(s) in {secs:.1f} s")
            if any(not r["complete"] for r in results.values()):
                stopped = True
    return stopped


def write_json(path: Path, device_name: str, entries: dict) -> None:
    """``entries`` as a cache file (autotune/cache.py's format), written atomically with no lock
    file beside it (the report folder holds at most 8 files), and read back through the cache's
    own validation: every entry must survive it."""
    payload = {
        "version": cache_mod.FORMAT_VERSION,
        "gpu": device_name,
        "triton": triton.__version__,
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "entries": dict(sorted(entries.items())),
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)
    kept = cache_mod.read_entries(path)
    if set(kept) != set(entries):
        raise ValueError(f"{path}: the cache rejects {sorted(set(entries) - set(kept))}")


def write_tuned(run: Run, entries: dict) -> None:
    """The tuned entries (all so far) into the report folder's JSON, the shipped configs folder
    (GPU runs) and this process's private cache (so the benchmark phase runs the tuned configs)."""
    run.tuned_entries.update(entries)
    write_json(run.tuned_json, run.cache_name, run.tuned_entries)
    if run.shipped_json is not None:
        try:
            write_json(run.shipped_json, run.cache_name, run.tuned_entries)
        except OSError as e:
            run.say(
                f"could not write {run.shipped_json}: {e} (the report folder's copy is complete)"
            )
            run.shipped_json = None
    autotune.get_cache(run.device).store(entries)
