"""``python -m triton_qat.autotune --shapes 8192x4096x4096,8192x4096x14336 [--dtype bf16] ...``

Tunes the kernels of a QAT linear for each shape (MxKxN: tokens x in_features x out_features),
prints the chosen configs and times, and writes them to the cache file for this GPU and Triton
version (``$TRITON_QAT_CACHE_DIR``, default ``~/.cache/triton_qat``). On a CPU with
TRITON_INTERPRET=1 it runs a dry run with one config per kernel.
"""

from __future__ import annotations

import argparse
import sys

import torch
from tqdm import tqdm

from . import device_name, get_cache
from .tune import KERNELS, LinearShape, n_candidates, tune

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    shapes = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        parts = item.lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise argparse.ArgumentTypeError(
                f"--shapes: expected MxKxN with positive ints (e.g. 8192x4096x4096), got {item!r}"
            )
        shapes.append(tuple(int(p) for p in parts))
    if not shapes:
        raise argparse.ArgumentTypeError("--shapes: expected at least one MxKxN")
    return shapes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m triton_qat.autotune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--shapes", type=parse_shapes, required=True, help="MxKxN[,MxKxN...]")
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    p.add_argument("--granularity", choices=["per_channel", "per_group"], default="per_channel",
                   help="weight granularity")  # fmt: skip
    p.add_argument("--group-size", type=int, default=128, help="for --granularity per_group")
    p.add_argument("--bits", type=int, choices=[4, 8], default=8, help="weight bits")
    p.add_argument("--kernels", default=",".join(KERNELS), help=f"subset of {','.join(KERNELS)}")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    kernels = [k for k in args.kernels.split(",") if k]
    bad = [k for k in kernels if k not in KERNELS]
    if bad:
        p.error(f"--kernels: unknown {bad}; expected a subset of {list(KERNELS)}")
    device = torch.device(args.device)
    specs = []
    for M, K, N in args.shapes:
        group = args.group_size if args.granularity == "per_group" else 0
        if group and K % group:
            p.error(f"--group-size: {group} does not divide K={K} of shape {M}x{K}x{N}")
        specs.append(LinearShape(M, K, N, DTYPES[args.dtype], args.bits, group))
    total = sum(n_candidates(s, device, kernels) for s in specs)
    print(f"tuning {len(specs)} shape(s) on {device_name(device)}, {total} configs to time")
    rows = []
    with tqdm(total=total, unit="cfg", dynamic_ncols=True) as bar:
        for s in specs:
            bar.set_description(f"{s.M}x{s.K}x{s.N}")
            for kernel, r in tune(s, device, kernels, progress=bar.update).items():
                rows.append((f"{s.M}x{s.K}x{s.N}", kernel, r["ms"], r["tried"], r["config"]))
    print(f"\n{'shape':<20} {'kernel':<11} {'ms':>9} {'tried':>6}  config")
    for shape, kernel, ms, tried, cfg in rows:
        print(f"{shape:<20} {kernel:<11} {ms:>9.4f} {tried:>6}  {cfg}")
    print(f"\nwrote {get_cache(device).user_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
