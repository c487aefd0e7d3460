"""``python -m triton_qat.autotune --shapes 8192x4096x4096,8192x4096x14336 [--dtype bf16] ...``
``python -m triton_qat.autotune --model mypkg.models:make_model --tokens 8192``
``python -m triton_qat.autotune --model meta-llama/Llama-3.1-8B --tokens 8192   # needs transformers``

Tunes the kernels of a QAT linear for each shape (MxKxN: tokens x in_features x out_features), or
for every distinct linear (K, N) of a model at ``--tokens`` tokens. ``--model`` takes a factory
``module:attr`` (a callable returning an ``nn.Module``, or a module instance; built on the meta
device, so no weights are allocated) or a Hugging Face model name or config folder (built from its
config with random weights; needs ``transformers``). A shape no triton_qat layer runs (K above
``triton_qat.kernels.gemm_int8.MAX_IN_FEATURES``, a ``--group-size`` not dividing K) is an error with
``--shapes``; with ``--model`` such linears are skipped, each named with the reason (an error if
none is left). Candidates are the curated tutorial lists
(``--full``: the whole config space), compiled in parallel on the CPU cores, then timed one by one;
the table prints each tuned config's time next to the untuned default's. Results go to the cache
file for this GPU and Triton version (``$TRITON_QAT_CACHE_DIR``, default ``~/.cache/triton_qat``),
written after each shape. Needs a CUDA device; on a CPU with TRITON_INTERPRET=1 it runs a dry run
with one config per kernel.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile

import torch
from torch import nn
from tqdm import tqdm

from triton_qat.kernels._common import INTERPRET
from triton_qat.kernels.gemm_int8 import MAX_IN_FEATURES

from . import device_name, get_cache
from .cache import cache_dir
from .problems import fp8_problems_run, parse_shapes
from .tune import KERNELS, LinearShape, entries_of, n_candidates, tune

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {value}")
        return value

    return parse


def parse_device(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cuda", "cpu"):
        raise argparse.ArgumentTypeError(
            f"expected cuda, cuda:N, or cpu (a dry run with TRITON_INTERPRET=1), got {text!r}"
        )
    return device


def linear_layers(model: nn.Module) -> dict[tuple[int, int], list[str]]:
    """The names of the ``nn.Linear`` layers of ``model`` by distinct (in_features,
    out_features), in order of first appearance."""
    layers: dict[tuple[int, int], list[str]] = {}
    for fqn, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            layers.setdefault((mod.in_features, mod.out_features), []).append(fqn or "<root>")
    return layers


def linear_features(model: nn.Module) -> list[tuple[int, int]]:
    """Every distinct (in_features, out_features) of the ``nn.Linear`` layers of ``model``, in
    order of first appearance."""
    return list(linear_layers(model))


def unrunnable(K: int, group: int) -> str | None:
    """Why no triton_qat layer runs a linear of ``K`` in_features with weights in groups of
    ``group`` (0: per channel), in the words of the library's checks (triton_qat.checks, which
    the tuner does not import: it sits below the op layer); None where one does."""
    if K > MAX_IN_FEATURES:
        return (f"in_features: at most {MAX_IN_FEATURES} (the int8 GEMM's int32 accumulator), "
                f"got {K}")  # fmt: skip
    if group and K % group:
        return f"--group-size: expected a divisor of {K}, got {group}"
    return None


def runnable_linears(
    layers: dict[tuple[int, int], list[str]], group: int
) -> tuple[list[tuple[int, int]], list[str]]:
    """The (K, N) of ``layers`` a triton_qat layer runs, and a note for each other one naming its
    layers (the first three) and why."""
    keep, notes = [], []
    for (k, n), names in layers.items():
        why = unrunnable(k, group)
        if why is None:
            keep.append((k, n))
            continue
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        notes.append(f"{k}->{n} ({', '.join(names[:3])}{more}): {why}")
    return keep, notes


def _cause(e: BaseException) -> str:
    """``Type: first line of the message`` of an exception, for a one-line error."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _factory_model(name: str) -> nn.Module:
    """The model of a factory ``module:attr`` (an ``nn.Module``, or a callable taking no arguments
    that returns one, called on the meta device); ``ValueError`` naming ``--model`` and the cause
    for every failure: import, attribute, call, return value."""
    mod_name, _, attr = name.partition(":")
    try:
        obj = importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001 - ImportError, or whatever the module raises on import
        raise ValueError(f"--model {name}: cannot import {mod_name!r} ({_cause(e)})") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"--model {name}: {mod_name!r} has no attribute {attr!r}") from None
        except Exception as e:  # noqa: BLE001 - a lazy attribute that fails when read
            raise ValueError(f"--model {name}: reading {attr!r} failed ({_cause(e)})") from None
    if isinstance(obj, nn.Module):
        return obj
    if not callable(obj):
        raise ValueError(f"--model {name}: {attr!r} is neither an nn.Module nor callable")
    try:
        with torch.device("meta"):
            obj = obj()
    except Exception as e:  # noqa: BLE001 - a factory that needs arguments, or fails inside
        raise ValueError(
            f"--model {name}: calling {attr}() failed ({_cause(e)}); --model takes an nn.Module "
            "or a factory called with no arguments"
        ) from None
    if not isinstance(obj, nn.Module):
        raise ValueError(f"--model {name}: the factory returned a {type(obj).__name__}, "
                         "not an nn.Module")  # fmt: skip
    return obj


def load_model(name: str) -> nn.Module:
    """The model ``--model`` names, built on the meta device: a factory ``module:attr`` (callable
    or ``nn.Module``), else a Hugging Face name or config folder (needs ``transformers``).
    Raises ``ValueError`` with a message for the user."""
    if ":" in name:
        return _factory_model(name)
    try:
        import transformers
    except ImportError:
        raise ValueError(
            f"--model {name}: a Hugging Face model needs the 'transformers' package, which is not "
            "installed (pip install transformers); or pass a factory as module:attr, e.g. "
            "--model mypkg.models:make_model"
        ) from None
    try:
        config = transformers.AutoConfig.from_pretrained(name)
    except Exception as e:  # noqa: BLE001 - not found, no network, bad folder: all the user's to fix
        raise ValueError(f"--model {name}: cannot load its Hugging Face config ({_cause(e)})"
                         ) from None  # fmt: skip
    with torch.device("meta"):
        try:
            try:
                return transformers.AutoModelForCausalLM.from_config(config)
            except ValueError:  # not a causal LM: the base model has the same linears
                return transformers.AutoModel.from_config(config)
        except Exception as e:  # noqa: BLE001 - whatever the model code raises: the user's to fix
            raise ValueError(f"--model {name}: building it from its config failed ({_cause(e)})"
                             ) from None  # fmt: skip


def model_linears(name: str) -> dict[tuple[int, int], list[str]]:
    """The linears of the model ``name`` (see :func:`load_model`, :func:`linear_layers`);
    ``ValueError`` if it has none."""
    layers = linear_layers(load_model(name))
    if not layers:
        raise ValueError(f"--model {name}: the model has no nn.Linear layers")
    return layers


def model_shapes(name: str, tokens: int) -> list[tuple[int, int, int]]:
    """(tokens, K, N) for every distinct linear of the model ``name`` (see :func:`load_model`)."""
    return [(tokens, k, n) for k, n in model_linears(name)]


def model_tuning_shapes(name: str, tokens: int, group: int) -> list[tuple[int, int, int]]:
    """(tokens, K, N) for every distinct linear of the model ``name`` a triton_qat layer runs,
    after printing the tuned ones and, one line each, those skipped and why; ``ValueError`` if
    none is left."""
    keep, notes = runnable_linears(model_linears(name), group)
    if not keep:
        raise ValueError(f"--model {name}: no linear layer a triton_qat kernel runs: "
                         + "; ".join(notes))  # fmt: skip
    print(f"{name}: {len(keep)} distinct linear(s) (K -> N): "
          + ", ".join(f"{k}->{n}" for k, n in keep))  # fmt: skip
    for note in notes:
        print(f"skipped {note}")
    return [(tokens, k, n) for k, n in keep]


def cache_write_error() -> str | None:
    """Why the cache folder cannot be written (None: it can), checked before any tuning."""
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        return f"{folder}: {e.strerror or e}"
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m triton_qat.autotune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--shapes", type=parse_shapes, help="MxKxN[,MxKxN...]")
    what.add_argument("--model", help="module:attr factory, or a Hugging Face name/config folder")
    p.add_argument("--tokens", type=_int_at_least(1), default=8192,
                   help="tokens M of each linear of --model (default 8192)")  # fmt: skip
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    p.add_argument("--granularity", choices=["per_channel", "per_group"], default="per_channel",
                   help="weight granularity")  # fmt: skip
    p.add_argument("--group-size", type=_int_at_least(1), default=None,
                   help="for --granularity per_group only (a positive divisor of every K; "
                   "default 128)")  # fmt: skip
    p.add_argument("--bits", type=int, choices=[4, 8], default=8, help="weight bits")
    p.add_argument("--kernels", default=None,
                   help=f"subset of {','.join(KERNELS)} (default: all; f8fwd only where the fp8 "
                   "GEMM runs: --dtype bf16 / fp16 on fp8 tensor cores)")  # fmt: skip
    p.add_argument("--full", action="store_true",
                   help="time the whole config space instead of the curated lists")  # fmt: skip
    p.add_argument("--workers", type=_int_at_least(1), default=None,
                   help="compile threads (default: one per CPU core, at most 16)")  # fmt: skip
    p.add_argument("--device", type=parse_device,
                   default=torch.device("cuda" if torch.cuda.is_available() else "cpu"))  # fmt: skip
    args = p.parse_args(argv)
    device = args.device
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available here; tuning needs a CUDA device "
                "(or TRITON_INTERPRET=1 with --device cpu for a dry run)")  # fmt: skip
    if device.type == "cpu" and not INTERPRET:
        p.error("tuning needs a CUDA device, and none is available; on a CPU set "
                "TRITON_INTERPRET=1 for a dry run (one config per kernel, nothing measured)")  # fmt: skip
    kernels = [k for k in (args.kernels if args.kernels is not None else ",".join(KERNELS)
                           ).split(",") if k]  # fmt: skip
    bad = [k for k in kernels if k not in KERNELS]
    if bad or not kernels:
        p.error(f"--kernels: unknown {bad}; expected a subset of {list(KERNELS)}")
    dtype = DTYPES[args.dtype]
    if args.kernels is not None and "f8fwd" in kernels and not fp8_problems_run(dtype, device):
        # asked for by name, the fp8 GEMM is not silently left out (the default list skips it)
        if dtype not in (torch.bfloat16, torch.float16):
            p.error(f"--kernels f8fwd: the fp8 GEMM runs only at --dtype bf16 or fp16, got "
                    f"--dtype {args.dtype}")  # fmt: skip
        p.error(f"--kernels f8fwd: the fp8 GEMM needs fp8 tensor cores (compute capability "
                f"8.9+), which {device_name(device)} lacks")  # fmt: skip
    if args.group_size is not None and args.granularity != "per_group":
        p.error(f"--group-size {args.group_size}: weights in groups need --granularity per_group "
                f"(--granularity {args.granularity} tunes one scale per output channel)")  # fmt: skip
    group = (args.group_size or 128) if args.granularity == "per_group" else 0
    if args.model is not None:
        try:
            shapes = model_tuning_shapes(args.model, args.tokens, group)
        except ValueError as e:
            p.error(str(e))
    else:
        shapes = args.shapes
    specs = []
    for M, K, N in shapes:
        why = unrunnable(K, group)
        if why is not None:
            p.error(f"--shapes: no triton_qat layer runs {M}x{K}x{N}: {why}")
        specs.append(LinearShape(M, K, N, dtype, args.bits, group))

    cache = get_cache(device)
    save_error = cache_write_error()
    if save_error:
        print(f"warning: cannot write the tuning cache ({save_error}); results will be printed "
              "but NOT saved. Set TRITON_QAT_CACHE_DIR to a writable folder to keep them.",
              file=sys.stderr, flush=True)  # fmt: skip
    curated = not args.full
    total = sum(n_candidates(s, device, kernels, curated) for s in specs)
    where = device_name(device)
    if INTERPRET:
        where += " (Triton interpreter: a dry run, one config per kernel, nothing measured)"
    space = "full space" if args.full else "curated lists"
    print(f"tuning {len(specs)} shape(s) on {where}, {total} configs to time ({space})", flush=True)
    rows = []
    with tqdm(total=total, unit="cfg", dynamic_ncols=True) as bar:
        for s in specs:
            bar.set_description(s.label)
            results = tune(s, device, kernels, progress=bar.update, curated=curated, store=False,
                           workers=args.workers)  # fmt: skip
            for kernel, r in results.items():
                rows.append((s.label, kernel, r))
            if results and save_error is None:
                try:
                    cache.store(entries_of(results))
                except OSError as e:  # e.g. the disk filled up: keep tuning, print, report
                    save_error = f"{cache.user_path}: {e.strerror or e}"
    print_results(rows)
    if save_error:
        print(f"\nresults NOT saved: cannot write the tuning cache ({save_error})",
              file=sys.stderr)  # fmt: skip
        return 1
    print(f"\nwrote {cache.user_path}")
    return 0


def print_results(rows: list[tuple[str, str, dict]]) -> None:
    """One line per (shape, kernel): the untuned default's time, the tuned one's, the gain."""
    print(f"\n{'shape':<24} {'kernel':<11} {'default ms':>11} {'tuned ms':>9} {'gain':>6} "
          f"{'tried':>5}  config")  # fmt: skip
    for label, kernel, r in rows:
        d = r["default_ms"]
        default = f"{d:>11.4f}" if d is not None else f"{'failed':>11}"
        gain = f"{d / r['ms']:>5.2f}x" if d is not None and r["ms"] > 0 else f"{'-':>6}"
        partial = "" if r["complete"] else " (stopped early)"
        print(f"{label:<24} {kernel:<11} {default} {r['ms']:>9.4f} {gain} {r['tried']:>5}  "
              f"{r['config']}{partial}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
