"""GEMM kernels against fp64 products of the same fake-quantized values."""

import pytest
import torch
from conftest import DTYPES, assert_close_rel, dt_id

from triton_qat import autotune
from triton_qat.dispatch import dequantize_rows, dgrad, int8_linear, quantize_rows, wgrad
from triton_qat.kernels._common import INTERPRET
from triton_qat.kernels.gemm_int8 import fwd_mode
from triton_qat.kernels.quantize_torch import unpack_bits

CASES = [
    # M, K, N, weight group, weight bits, activation symmetric
    (1, 40, 8, 40, 8, False),
    (3, 96, 40, 96, 8, True),
    (13, 96, 40, 32, 4, False),  # per-group, int path (MODE 1)
    (67, 90, 17, 9, 4, False),  # per-group, group not a multiple of 32 (MODE 2)
    (67, 130, 33, 130, 8, False),  # K, N not multiples of any block
]
IDS = [f"M{m}-K{k}-N{n}-g{g}-i{b}{'-sym' if s else ''}" for m, k, n, g, b, s in CASES]


def qw_source(N, K, dtype, device):
    """The weight of :func:`_quantized` (seeded), to re-derive its quantization."""
    gen = torch.Generator(device=device).manual_seed(N * 1000 + K)
    return (torch.randn(N, K, device=device, generator=gen) * 0.1).to(dtype)


def _quantized(M, K, N, group, bits, sym, dtype, device):
    x = (torch.randn(M, K, device=device) * 2).to(dtype)
    w = qw_source(N, K, dtype, device)
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    qa = quantize_rows(x, -128, 127, K, sym, pack_mask=True, with_y=True)
    qw = quantize_rows(w, qmin, qmax, group, True, pack_mask=False, with_y=True)
    return qa, qw


@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
@pytest.mark.parametrize("M,K,N,group,bits,sym", CASES, ids=IDS)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_forward_gemm(M, K, N, group, bits, sym, dtype, with_bias, device, fwd_path):
    qa, qw = _quantized(M, K, N, group, bits, sym, dtype, device)
    bias = torch.randn(N, device=device).to(dtype) if with_bias else None
    out = int8_linear(
        qa.codes,
        qa.scale,
        qa.zero_point,
        qw.codes,
        qw.scale,
        qw.code_sum,
        bias,
        dtype,
        asymmetric=not sym,
    )
    ref = qa.y.double() @ qw.y.double().T
    if with_bias:
        ref += bias.double()
    assert out.dtype == dtype
    assert_close_rel(out, ref, dtype, "out")
    # the forced path ran (per channel is always the int8 one)
    want = int(fwd_path.path == "dequant" and group != K)
    assert [c["DEQUANT"] for c in fwd_path.used] == [want]


def test_dequantized_forward_equals_the_reference_gemm_of_the_fake_quantized_values(device):
    """DEQUANT computes x_fq @ w_fq.T on exactly the fake-quantized values (the reference's own
    GEMM), so at fp32 it matches an fp32 product of them to the last few bits, and a weight
    quantized in fp32 feeds a bf16 forward as autocast would cast it."""
    from triton_qat.kernels.gemm_int8 import int8_linear as launch

    M, K, N, group = 33, 96, 40, 32
    x = torch.randn(M, K, device=device)
    w = torch.randn(N, K, device=device) * 0.1
    qa = quantize_rows(x, -128, 127, K, False, pack_mask=True, with_y=True)
    qw = quantize_rows(w, -8, 7, group, True, pack_mask=False, with_y=True, group_major=True)
    cfg = {**autotune.gemm_config("fwd", M, N, K, torch.device(device), torch.float32, group),
           "DEQUANT": 1}  # fmt: skip
    dq = autotune.dequantize_config(M, K, torch.device(device))
    args = (qa.codes, qa.scale, qa.zero_point, qw.codes, qw.scale, qw.code_sum, None)
    out = launch(*args, torch.float32, asymmetric=True, config=cfg, dequant_config=dq)
    assert_close_rel(out, qa.y.double() @ qw.y.double().T, torch.float32, "out")
    # a weight quantized in fp16 feeding a bf16 forward: w_fq formed in fp16, then cast (as
    # autocast casts the reference's); exactly the plain GEMM of those values
    from triton_qat.kernels.gemm_float import float_mm

    xb = x.to(torch.bfloat16)
    qb = quantize_rows(xb, -128, 127, K, False, pack_mask=True, with_y=True)
    q16 = quantize_rows(w.half(), -8, 7, group, True, pack_mask=False, with_y=True)
    out_b = launch(qb.codes, qb.scale, qb.zero_point, q16.codes, q16.scale, q16.code_sum, None,
                   torch.bfloat16, asymmetric=True, config=cfg, dequant_config=dq,
                   w_dtype=torch.float16)  # fmt: skip
    tiles = (cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"], cfg["GROUP_M"], cfg["num_warps"],
             cfg["num_stages"])  # fmt: skip
    ref_b = float_mm(qb.y, q16.y.to(torch.bfloat16).t(), tiles=tiles, tma=bool(cfg["TMA"]))
    assert torch.equal(out_b, ref_b)
    assert_close_rel(out_b, qb.y.double() @ q16.y.double().T, torch.bfloat16, "out")
    with pytest.raises(ValueError, match="dequant_config"):
        launch(*args, torch.float32, asymmetric=True, config=cfg)
    # per channel (a weight narrower than x takes this path): a bf16 weight's w_fq, formed in
    # bf16, feeding an fp32 forward is exactly the plain fp32 GEMM of those values
    pc = quantize_rows(w.bfloat16(), -128, 127, K, True, pack_mask=False, with_y=True)
    out_pc = launch(*args[:3], pc.codes, pc.scale, pc.code_sum, None, torch.float32,
                    asymmetric=True, config=cfg, dequant_config=dq, w_dtype=torch.bfloat16)  # fmt: skip
    assert torch.equal(out_pc, float_mm(qa.y, pc.y.float().t(), tiles=tiles, tma=bool(cfg["TMA"])))
    with pytest.raises(ValueError, match="DEQUANT"):
        launch(*args, torch.float32, asymmetric=True, config={**cfg, "DEQUANT": 2},
               dequant_config=dq)  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=dt_id)
def test_tma_and_pointer_loops_agree(dtype, device):
    """The plain GEMMs' two operand loops (tensor descriptors, ``TMA``; pointers) compute the
    same tiles in the same order: the same bits where both run, and TMA falls back to pointers
    for operands a descriptor cannot take (row stride not 16-byte aligned) with the same result.
    Covers dgrad, wgrad (a transposed operand), the dequantized forward (w_fq transposed) and
    the int8 forward's MODE 0 and MODE 1 (int8 codes)."""
    from triton_qat.kernels import gemm_backward
    from triton_qat.kernels.gemm_float import _tma_view
    from triton_qat.kernels.gemm_int8 import int8_linear as launch

    dev = torch.device(device)
    M, K, N, group = 70, 96, 48, 32
    qa, qw = _quantized(M, K, N, group, 4, False, dtype, device)
    dy = torch.randn(M, N, device=device).to(dtype)
    runs = {}
    dq = autotune.dequantize_config(M, K, dev)
    args = (qa.codes, qa.scale, qa.zero_point, qw.codes, qw.scale, qw.code_sum, None, dtype)
    qc = quantize_rows(qw_source(N, K, dtype, device), -128, 127, K, True, pack_mask=False)
    for tma in (0, 1):
        cd = {**autotune.gemm_config("dgrad", M, N, K, dev, dtype), "TMA": tma}
        cw = {**autotune.gemm_config("wgrad", M, N, K, dev, dtype), "TMA": tma}
        cf = {**autotune.gemm_config("fwd", M, N, K, dev, dtype, group), "TMA": tma}
        runs[tma] = (
            gemm_backward.dgrad(dy, qw.y, qa.mask, config=cd),
            gemm_backward.wgrad(dy, qa.y, qw.mask, config=cw),
            launch(*args, asymmetric=True, config={**cf, "DEQUANT": 1}, dequant_config=dq),
            launch(*args, asymmetric=True, config={**cf, "DEQUANT": 0, "BLOCK_K": 32}),
            launch(
                *args[:3],
                qc.codes,
                qc.scale,
                qc.code_sum,
                None,
                dtype,
                asymmetric=True,
                config={**cf, "DEQUANT": 0},
            ),  # fmt: skip
        )
    # the TMA runs really built descriptors (a silent fallback would also agree)
    from triton_qat.kernels.gemm_float import tma_descriptors

    for a, b in ((dy, qw.y), (dy.t(), qa.y), (qa.codes, qw.codes.t()), (qa.y, qw.y.t())):
        assert tma_descriptors(a, b, 64, 64, 64) is not None
    names = ("dgrad", "wgrad", "fwd dequantized", "fwd int8 MODE 1", "fwd int8 MODE 0")
    for name, a, b in zip(names, *runs.values(), strict=True):
        if INTERPRET:
            assert torch.equal(a, b), name
        else:
            assert_close_rel(a, b.double(), dtype, name)
    assert _tma_view(dy) is not None and _tma_view(dy.t()) is not None
    odd = torch.randn(M, 45, device=device).to(dtype)[:, :44]  # row stride 45: not 16-byte aligned
    assert _tma_view(odd) is None
    assert _tma_view(torch.ones(48, device=device).to(dtype).expand(M, 48)) is None  # stride 0
    cd = {**autotune.gemm_config("dgrad", M, 44, K, dev, dtype), "TMA": 1}
    got = gemm_backward.dgrad(odd, qw.y[:44], qa.mask, config=cd)
    ref = (odd.double() @ qw.y[:44].double()) * unpack_bits(qa.mask, K).double()
    assert_close_rel(got, ref, dtype, "dgrad, unaligned grad_y")


def test_gluon_config_runs_the_triton_kernel_where_gluon_cannot(device):
    """``GLUON`` is a per-channel tuner candidate for sm_90 GPUs (kernels/gemm_int8_gluon.py).
    Where a launch cannot take the Gluon kernel (here: the interpreter / a CPU, which Gluon
    lacks) the config runs the Triton kernel with its other keys: no Gluon plan, the same bits as
    GLUON 0. A GLUON config the Gluon kernel could not run raises, on any device."""
    from triton_qat import dispatch
    from triton_qat.kernels import gemm_int8_gluon as gg
    from triton_qat.kernels.gemm_int8 import check_fwd_config, plan_int8_linear
    from triton_qat.kernels.gemm_int8 import int8_linear as launch

    dev, dt = torch.device(device), torch.bfloat16
    M, K, N = 37, 96, 40
    if INTERPRET:  # never under the interpreter, whatever the device
        assert not gg.gluon_device(dev) and not gg.gluon_device(torch.device("cuda", 0))
    cfg = autotune.gemm_config("fwd", M, N, K, dev, dt)
    # a warpgroup and two stages: what the Gluon kernel needs (on an sm_90 GPU it runs, and
    # must give the same bits)
    glu = {**cfg, "GLUON": 1, "num_warps": 4, "num_stages": max(2, cfg["num_stages"])}
    for sym in (False, True):
        qa, qw = _quantized(M, K, N, K, 8, sym, dt, device)
        args = (qa.codes, qa.scale, qa.zero_point, qw.codes, qw.scale, qw.code_sum,
                torch.randn(N, device=device).to(dt), dt)  # fmt: skip
        want = launch(*args, asymmetric=not sym, config=cfg)
        assert torch.equal(launch(*args, asymmetric=not sym, config=glu), want)
    f = dispatch.int8_linear_launch(M, K, N, 1, dt, dev, has_bias=True, config=glu)
    assert (f.args[0].gluon is not None) == gg.gluon_device(dev)  # planned for this device
    plan = plan_int8_linear(K, N, 1, dt, config=glu, asymmetric=True, has_bias=True, gluon=True)
    assert (plan.gluon is not None) == gg.gluon_available()  # an sm_90 GPU's plan
    bad = [({**glu, "GLUON": 2}, K), (glu, 8), ({**glu, "num_warps": 2}, K),
           ({**glu, "BLOCK_K": 48}, K), ({**glu, "num_stages": 1}, K)]  # fmt: skip
    for c, group in bad:
        with pytest.raises(ValueError, match="GLUON"):
            check_fwd_config(c, K, group)
    if gg.gluon_available():  # the wgmma layout: 4 warps along M (16 rows each), then along N
        for (bm, bn, w), want in (((128, 128, 4), (4, 1, 128)), ((128, 128, 8), (8, 1, 128)),
                                  ((64, 128, 8), (4, 2, 64)), ((256, 128, 8), (8, 1, 128))):  # fmt: skip
            c = {**glu, "BLOCK_M": bm, "BLOCK_N": bn, "num_warps": w}
            meta = gg.plan_int8_linear_gluon(K, N, dt, config=c, asymmetric=True,
                                             has_bias=False).meta  # fmt: skip
            assert (meta["WARPS_M"], meta["WARPS_N"], meta["INSTR_N"]) == want


def test_gluon_per_group_configs_plan_mode_1_and_run_the_triton_kernel_elsewhere(device):
    """``GLUON`` on per-group symmetric weights (MODE 1, kernels/gemm_int8_gluon.py's
    ``_int8_linear_group_gluon_kernel``): groups of 32 / 64 / 128 with BLOCK_K = the group and a
    tile whose two int32 partial sums fit beside the fp32 accumulator (<= 64 elements a
    thread). Such a config plans the Gluon kernel for an sm_90 GPU (its group in the plan),
    the Triton kernel for asymmetric weights and everywhere Gluon cannot run (here: the same
    bits as GLUON 0, x asymmetric and symmetric, 16-bit and fp32); any other GLUON config on
    per-group weights raises, naming GLUON."""
    from triton_qat.kernels import gemm_int8_gluon as gg
    from triton_qat.kernels.gemm_int8 import check_fwd_config, plan_int8_linear
    from triton_qat.kernels.gemm_int8 import int8_linear as launch

    M, K, N = 37, 128, 40
    glu = {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8, "num_warps": 4,
           "num_stages": 3, "DEQUANT": 0, "TMA": 0, "GLUON": 1}  # fmt: skip
    check_fwd_config(glu, K, 32)
    check_fwd_config({**glu, "BLOCK_K": 64}, K, 64)
    bad = [
        ({**glu, "BLOCK_K": 64}, 256, 128),  # two K steps per group (spills)
        (glu, K, 64),
        ({**glu, "BLOCK_M": 128}, K, 32),  # 128 x 128 over 4 warps: 128 elements a thread
        (glu, 192, 96),  # MODE 1, but no power-of-two group
        ({**glu, "DEQUANT": 1}, K, 32),
        ({**glu, "BLOCK_K": 32}, 64, 8),  # MODE 2
    ]
    for c, k, group in bad:
        with pytest.raises(ValueError, match="GLUON"):
            check_fwd_config(c, k, group)
    plan = plan_int8_linear(K, N, 4, torch.bfloat16, config=glu, asymmetric=True,
                            has_bias=True, gluon=True)  # fmt: skip
    if gg.gluon_available():
        assert plan.gluon is not None and plan.gluon.group == 32 and plan.gluon.meta["GROUP"] == 32
    asym_w = plan_int8_linear(K, N, 4, torch.bfloat16, config=glu, asymmetric=True,
                              has_bias=True, gluon=True, w_asym=True)  # fmt: skip
    assert asym_w.gluon is None  # the Triton kernel's W_ASYM path
    for dt, sym in ((torch.bfloat16, False), (torch.float32, False), (torch.float16, True)):
        qa, qw = _quantized(M, K, N, 32, 4, sym, dt, device)
        args = (qa.codes, qa.scale, qa.zero_point, qw.codes, qw.scale, qw.code_sum,
                torch.randn(N, device=device).to(dt), dt)  # fmt: skip
        want = launch(*args, asymmetric=not sym, config={**glu, "GLUON": 0})
        assert torch.equal(launch(*args, asymmetric=not sym, config=glu), want)


def test_gluon_kernel_that_cannot_build_falls_back_to_the_triton_kernel(monkeypatch):
    """A Triton whose Gluon has the API's names but cannot build the kernel: the first launch
    warns, returns None (the caller then runs the Triton kernel) and turns Gluon off for the
    process (no sm_90 plan picks it any more); the direct Gluon launcher raises instead."""
    from triton_qat.kernels import gemm_int8_gluon as gg

    if not gg.gluon_available():
        pytest.skip(f"no Gluon Hopper API here: {gg.gluon_unavailable_reason()}")

    class Broken:
        def run(self, *args, **kwargs):
            raise RuntimeError("PassManager::run failed")

    monkeypatch.setattr(gg, "_int8_linear_gluon_kernel", Broken())
    monkeypatch.setattr(gg, "_FAILED", {})
    monkeypatch.setattr(gg, "INTERPRET", False)
    monkeypatch.setattr(gg, "device_major", lambda device: 9)  # an sm_90 GPU, as far as it asks
    cuda = torch.device("cuda", 0)
    assert gg.gluon_device(cuda)
    cfg = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 1, "num_warps": 4,
           "num_stages": 2}  # fmt: skip
    p = gg.plan_int8_linear_gluon(64, 32, torch.float32, config=cfg, asymmetric=True,
                                  has_bias=False)  # fmt: skip
    i8, f32, i32 = torch.int8, torch.float32, torch.int32
    args = (torch.zeros(8, 64, dtype=i8), torch.ones(8), torch.zeros(8, dtype=i32),
            torch.zeros(32, 64, dtype=i8), torch.ones(32, 1), torch.zeros(32, 1, dtype=i32), None)  # fmt: skip
    out = torch.empty(8, 32, dtype=f32)
    with pytest.raises(RuntimeError, match="PassManager"):
        gg.launch_int8_linear_gluon(p, *args, out, fallback=False)
    assert gg.gluon_device(cuda)  # the direct launcher raised: nothing turned off
    with pytest.warns(UserWarning, match="Triton kernel from now on"):
        assert gg.launch_int8_linear_gluon(p, *args, out) is None
    assert gg._FAILED and not gg.gluon_device(cuda)
    assert gg.gluon_device(cuda, 1)  # the per-group kernel is another: still on
    assert gg.launch_int8_linear_gluon(p, *args, out) is None  # no second try, no second warning


def test_gluon_per_group_launch_reads_scales_and_code_sums_with_one_pair_of_strides(monkeypatch):
    """The per-group Gluon kernel reads s_w and the code sums [N, G] with one pair of strides:
    its launcher makes both contiguous unless their strides agree in both dims (an expanded
    per-row scale next to group-major code sums agree in neither)."""
    from triton_qat.kernels import gemm_int8_gluon as gg

    if not gg.gluon_available():
        pytest.skip(f"no Gluon Hopper API here: {gg.gluon_unavailable_reason()}")
    seen = {}

    class Recorder:
        def run(self, *args, grid, warmup, **meta):
            seen.update(scale=args[4], sums=args[5], stride_sn=args[11], stride_sg=args[13])

    monkeypatch.setattr(gg, "_int8_linear_group_gluon_kernel", Recorder())
    N, K, G = 32, 128, 4
    cfg = {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8, "num_warps": 4,
           "num_stages": 3}  # fmt: skip
    p = gg.plan_int8_linear_gluon(K, N, torch.bfloat16, config=cfg, asymmetric=True,
                                  has_bias=False, group_size=32)  # fmt: skip
    scale = torch.rand(N, 1).expand(N, G)  # strides (1, 0)
    sums = torch.randint(-99, 99, (G, N), dtype=torch.int32).t()  # group-major: (1, N)
    args = (torch.zeros(8, K, dtype=torch.int8), torch.ones(8), torch.zeros(8, dtype=torch.int32),
            torch.zeros(N, K, dtype=torch.int8), scale, sums, None)  # fmt: skip
    gg.launch_int8_linear_gluon(p, *args, torch.empty(8, N, dtype=torch.bfloat16))
    assert seen["scale"].stride() == seen["sums"].stride() == (seen["stride_sn"], seen["stride_sg"])
    assert torch.equal(seen["scale"], scale) and torch.equal(seen["sums"], sums)


def test_forward_default_path_by_group_and_dtype():
    """Untuned defaults: per-group weights at 16-bit dtypes take the dequantized path, fp32 and
    per-channel weights the int8 one (the tuner times both where both run)."""
    dev = torch.device("cpu")
    path = lambda dt, g: autotune.gemm_config("fwd", 64, 64, 256, dev, dt, g)["DEQUANT"]  # noqa: E731
    assert path(torch.bfloat16, 32) == path(torch.float16, 128) == 1
    assert path(torch.float32, 32) == path(torch.bfloat16, 256) == path(torch.bfloat16, 0) == 0


def test_modes_are_all_exercised():
    """Every mode is in CASES, and the tuner fits BLOCK_K / stages to the mode it picks."""
    assert {fwd_mode(k, g) for _, k, _, g, _, _ in CASES} == {0, 1, 2}
    dev = torch.device("cpu")
    fit = lambda K, g: autotune.gemm_config("fwd", 64, 64, K, dev, torch.float32, g)  # noqa: E731
    assert fit(96, 32)["BLOCK_K"] == 32
    assert fit(256, 64)["BLOCK_K"] <= 64 and 64 % fit(256, 64)["BLOCK_K"] == 0
    assert fit(90, 9)["BLOCK_K"] <= 32 and fit(90, 9)["num_stages"] <= 2


@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
@pytest.mark.parametrize("M,K,N,group,bits,sym", CASES, ids=IDS)
def test_backward_gemms(M, K, N, group, bits, sym, dtype, device):
    """The backward's operands are re-derived bit-exactly (x_fq dequantized from the codes, w_fq
    and its mask from the weight without storing codes), and the masked GEMMs match fp64."""
    qa, qw = _quantized(M, K, N, group, bits, sym, dtype, device)
    x_fq = dequantize_rows(qa.codes, qa.scale, qa.zero_point, dtype)
    assert torch.equal(x_fq, qa.y)  # exactly the forward's fake-quantized x
    w = qw_source(N, K, dtype, device)
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    again = quantize_rows(w, qmin, qmax, group, True, pack_mask=False, with_y=True,
                          write_codes=False)  # fmt: skip
    assert torch.equal(again.y, qw.y) and torch.equal(again.mask, qw.mask)
    assert torch.equal(again.scale, qw.scale)
    dy = torch.randn(M, N, device=device).to(dtype)
    mask_x = unpack_bits(qa.mask, K)
    mask_w = qw.mask.bool()
    dx = dgrad(dy, qw.y, qa.mask)
    assert_close_rel(dx, (dy.double() @ qw.y.double()) * mask_x, dtype, "grad_x")
    assert torch.all(dx[~mask_x] == 0)
    dw = wgrad(dy, x_fq, qw.mask)
    assert_close_rel(dw, (dy.double().T @ qa.y.double()) * mask_w, dtype, "grad_w")
    assert torch.all(dw[~mask_w] == 0)


def test_strided_grad_output(device):
    """grad_y arrives with odd strides (e.g. a transposed view); the kernels take strides."""
    qa, qw = _quantized(13, 40, 24, 40, 8, False, torch.float32, device)
    dy = torch.randn(24, 13, device=device).T
    dx = dgrad(dy, qw.y, qa.mask)
    assert_close_rel(
        dx, (dy.double() @ qw.y.double()) * unpack_bits(qa.mask, 40), torch.float32, "grad_x"
    )
    dw = wgrad(dy, qa.y, qw.mask)
    assert_close_rel(dw, (dy.double().T @ qa.y.double()) * qw.mask.bool(), torch.float32, "grad_w")


def test_int32_accumulation_exact_at_the_largest_in_features(device):
    """Worst case at K = 65536: (q_x - zp) * q_w = (-128 - 127) * -128 summed over K is 2.139e9,
    inside int32 although acc and zp * colsum overflow on their own (two's complement wraps)."""
    K = 65536
    x_codes = torch.full((1, K), -128, dtype=torch.int8, device=device)
    w_codes = torch.full((16, K), -128, dtype=torch.int8, device=device)
    w_codes[1::2] = 127
    zp = torch.tensor([[127]], dtype=torch.int32, device=device)
    one = torch.ones(1, 1, device=device)
    w_scale = torch.ones(16, 1, device=device)
    w_sum = w_codes.to(torch.int64).sum(1, keepdim=True).to(torch.int32)
    out = int8_linear(x_codes, one, zp, w_codes, w_scale, w_sum, None, torch.float32)
    exact = ((x_codes.to(torch.int64) - 127) * w_codes.to(torch.int64)).sum(1)  # [16]
    assert exact.abs().max() > 2**31 - 2**24  # really the edge of int32
    assert torch.equal(out[0].to(torch.float64), exact.to(torch.float32).to(torch.float64))


@pytest.mark.parametrize("group", [32, 9], ids=["mode1", "mode2"])
def test_group_major_qparams_give_the_same_output(group, device):
    """The forward's weight quantize stores scales / code sums group-major ([G, N] memory) so a
    tile's group scales are one vector load; the GEMM must read both layouts alike."""
    x = torch.randn(13, 288, device=device)
    w = torch.randn(40, 288, device=device) * 0.1
    qa = quantize_rows(x, -128, 127, 288, False, pack_mask=True)
    qw = quantize_rows(w, -8, 7, group, True, pack_mask=False)
    qg = quantize_rows(w, -8, 7, group, True, pack_mask=False, group_major=True)
    assert qg.scale.stride() == (1, 40) and torch.equal(qg.scale, qw.scale)
    assert torch.equal(qg.code_sum, qw.code_sum) and torch.equal(qg.codes, qw.codes)
    args = (qa.codes, qa.scale, qa.zero_point)
    a = int8_linear(*args, qw.codes, qw.scale, qw.code_sum, None, torch.float32)
    b = int8_linear(*args, qg.codes, qg.scale, qg.code_sum, None, torch.float32)
    assert torch.equal(a, b)


@pytest.mark.parametrize("group", [8192, 32], ids=["perchannel", "g32"])
def test_skewed_activations_keep_the_fp32_bound_at_large_k(group, device):
    """Post-ReLU, mostly-zero activations (zero point -128) at K=8192: the zero-point term must
    not cancel into the fp32 error bound (a rank-1 fp32 correction gave 4.5e-6 here, exact
    per-group int32 subtraction 3.3e-7)."""
    M, K, N = 4, 8192, 16
    x = torch.relu(torch.randn(M, K, device=device)) * (torch.rand(M, K, device=device) < 0.1)
    w = torch.randn(N, K, device=device) * 0.05
    qa = quantize_rows(x, -128, 127, K, False, pack_mask=True, with_y=True)
    qw = quantize_rows(w, -8, 7, group, True, pack_mask=False, with_y=True, group_major=True)
    out = int8_linear(qa.codes, qa.scale, qa.zero_point, qw.codes, qw.scale, qw.code_sum, None,
                      torch.float32)  # fmt: skip
    assert_close_rel(out, qa.y.double() @ qw.y.double().T, torch.float32, "out")


def test_forward_offsets_past_32_bits_raise():
    """The forward kernel indexes its output tile, the weight's scales and x's code sums with
    32-bit offsets: shapes past them raise, naming the argument, instead of writing wrong memory
    (checked on metadata only: nothing that large is allocated)."""
    from triton_qat.kernels.gemm_int8 import check_offsets

    scale = torch.empty(4, 1)
    check_offsets(8, 4, 128, scale, None)  # fine
    with pytest.raises(ValueError, match="w_codes: .* 32-bit offsets"):
        check_offsets(8, 2**24, 128, scale, None)  # N * BLOCK_M = 2**31
    with pytest.raises(ValueError, match="w_codes"):
        check_offsets(8, 4, 128, torch.empty(2**16, 2**15, device="meta"), None)
    with pytest.raises(ValueError, match="w_codes"):
        check_offsets(8, 4, 128, scale, torch.empty(2**20, 2**11, device="meta"))
    with pytest.raises(ValueError, match="w_codes"):  # a view reaches past its numel
        check_offsets(8, 4, 128, torch.empty(2**16, 2**16, device="meta")[:, :1], None)
    with pytest.raises(ValueError, match="w_codes"):  # the last row tile passes 2**31
        check_offsets(2**31 - 100, 4, 128, scale, None)


def test_scale_grad_tiles_cap_the_accumulator_per_thread():
    """wgrad's scale-gradient epilogue holds at most SCALE_GRAD_ACC accumulator elements per
    thread (more spill on sm_90a, kernel_static "wgrad scale-grad"), at every warp count: rows
    are halved down to 64 first (a warpgroup's wgmma needs them), then columns while the weight's
    groups still fit the tile; the other tile fields are kept."""
    from triton_qat.kernels.gemm_backward import SCALE_GRAD_ACC, scale_grad_tiles
    from triton_qat.kernels.gemm_float import scale_grad_layout

    for n_groups in (1, 32, 256):  # per channel, group 128, group 16 (several per tile)
        for warps in (1, 4, 8):
            for rows, cols in ((256, 128), (128, 256), (64, 256), (128, 128), (32, 64)):
                sg, t = scale_grad_tiles((rows, cols, 64, 8, warps, 3), 4096, n_groups)
                assert t[2:] == (64, 8, warps, 3)
                assert (sg, t[1]) == scale_grad_layout(4096, n_groups, t[1])  # still fits
                assert t[0] * t[1] <= SCALE_GRAD_ACC * 32 * warps or t[0] == 16, (warps, t)
                assert t[0] >= min(rows, 64) or t[1] == 16 or sg > 0, (n_groups, warps, t)


def test_gpu_reports_gluon_per_group_check_runs(device):
    """make gpu-report's Gluon bits check (perf/gpu_report_correctness.py, per channel and per
    group) runs end to end here too, where GLUON configs run the Triton kernel (so it must
    pass), and its error against fp64 is an int8 GEMM's."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "perf"))
    import gpu_report_correctness as grc

    g = torch.Generator(device=device).manual_seed(3)
    x = torch.randn(24, 96, device=device, generator=g).to(torch.bfloat16)
    w = torch.randn(40, 96, device=device, generator=g).to(torch.bfloat16)
    for group, k in ((64, 64), (32, 64), (32, 96)):  # per channel; per group, even and odd
        assert grc._gluon_same_bits(x[:, :k], w[:, :k], group, torch.bfloat16, g) < 2**-7
