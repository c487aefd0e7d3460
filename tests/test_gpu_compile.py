"""Every kernel variant compiles for Hopper (sm_90a) and Ampere (sm_80) on a machine without a GPU,
as a launch compiles it (the real launchers' arguments, specialized by Triton's JIT binder: see
_compile_for_gpu.py); the untuned default configs fit the shared memory of their GPUs (99 KiB on the
smallest targeted ones, sm_86/89); the quantize kernels contain no fused multiply-add (docs/numerics.md:
x * (1/s) must round to fp32 before the rounding trick, which FMA contraction would skip)."""

from pathlib import Path

import pytest
from _compile_for_gpu import compiled

# one worker runs every reader of the compile passes (pytest -n: they compile once)
pytestmark = pytest.mark.xdist_group("compile_pass")

# every launcher family at the headline shape, plus the dtype / flag matrix (kernel_static --all)
HEADLINE = [
    "quantize act per-token, bit mask",
    "quantize weight per-channel",
    "quantize weight int4 group 128",
    "quantize weight int4 group 32",
    "quantize weight int4 group 8",
    "fwd MODE 0 int8 per-channel",
    "fwd MODE 1 int4 group 128",
    "fwd MODE 1 int4 group 32",
    "fwd MODE 2 int4 group 8",
    "fwd DEQUANT int4 group 128",
    "fwd DEQUANT int4 group 32",
    "fwd DEQUANT int4 group 8",
    "dgrad",
    "wgrad",
]


@pytest.fixture(scope="module", params=[90, 80], ids=["sm90", "sm80"])
def rows(request):
    return compiled(request.param)


def test_every_variant_compiles(rows):
    failed = {k: r["error"] for k, r in rows.items() if "error" in r}
    assert not failed
    assert set(HEADLINE) <= set(rows)
    fams = {r["family"] for r in rows.values()}
    assert {"quantize", "fwd", "dgrad", "wgrad", "anchor"} <= fams
    # 3 dtypes x 8 quantize flag sets (with y), and 2 more dtypes x (4 forward modes, dgrad, wgrad)
    assert sum(r["family"] != "anchor" and not r["headline"] for r in rows.values()) >= 24 + 2 * 6


def test_defaults_fit_shared_memory(rows):
    """sm_80-family defaults fit the 99 KiB of sm_86 / sm_89 (they share compute capability 8);
    Hopper's (the dequantized forward's 128x256 tile) its 227 KiB."""
    limit = 227 if all(r["arch"] == 90 for r in rows.values()) else 99
    big = {k: r["smem"] // 1024 for k, r in rows.items() if r["family"] != "anchor"
           and r["smem"] > limit * 1024}  # fmt: skip
    assert not big


def test_quantize_has_no_fma_and_ieee_division(rows):
    """Compiled with FMA contraction on (Triton's default, what torch.compile's launches use: no
    launch option reaches a user kernel through Inductor), the quantize kernels still contract
    nothing: the PTX's fma (LLVM's) only where the source calls ``tl.fma`` itself (the float8
    quantize's division by FMA corrections), and ptxas's FFMAs only there and in the IEEE
    divisions' own Newton steps (their rounding-critical products are mul_rn, which nothing
    contracts)."""
    quantize = {k: r for k, r in rows.items() if r["family"] == "quantize"}
    assert len(quantize) >= 24
    assert all("enable_fp_fusion" not in r["options"] for r in quantize.values())
    kernels = Path(__file__).resolve().parents[1] / "kernels"

    def line_of(at):  # "" for a line outside kernels/ (Triton's library, "?")
        name, _, line = at.partition(":")
        path = kernels / name
        return path.read_text().splitlines()[int(line) - 1] if path.is_file() and line else ""

    llvm = {k: [at for at in r["ptx_fma_at"] if "tl.fma(" not in line_of(at)]
            for k, r in quantize.items()}  # fmt: skip
    assert not {k: v for k, v in llvm.items() if v}
    assert any(r["fma"] for r in quantize.values())  # the float8 quantize's own
    contracted = {}
    for k, r in quantize.items():
        for at in r["ffma_at"]:
            name, line = at.split(":")
            if not (kernels / name).exists():
                # a Triton library line (tl.sum's): the line table attributes the instructions
                # after a reduction to it until the next marker (the float8 backward's IEEE
                # division of the share: RCP, FCHK, FFMA Newton steps); the PTX's fma are all
                # explicit (asserted above), so nothing was contracted
                continue
            text = line_of(at)
            if "div_rn" not in text and "tl.fma(" not in text:
                contracted.setdefault(k, []).append(f"{at}: {text.strip()}")
    assert not contracted
    # the qparams use IEEE division (MX scales are powers of two taken from exponent bits: no
    # division there)
    assert all(r["div_rn"] > 0 for k, r in quantize.items() if "quantize mx" not in k)


def test_compiled_with_launch_specialization(rows):
    """What a launch specializes on, not a generic program: every pointer 16-byte aligned, unit
    strides constexpr (so tiles load as vectors), and the quantize x read in 16-byte loads."""
    for k, r in rows.items():
        if r["family"] == "anchor":
            continue
        assert any(p.endswith("_ptr") for p in r["div16"]), (k, r["div16"])
        own_layout = ("float8", "mx", "nvfp4")  # kernels that take unit columns by design
        if r["family"] == "quantize" and not any(w in k for w in own_layout):
            assert "stride_xc" in r["constexpr_one"], (k, r["constexpr_one"])
    assert rows["quantize act per-token, bit mask"]["ld_bits"] == [128]
