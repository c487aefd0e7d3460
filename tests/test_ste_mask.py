"""The backward GEMMs as torch.mm + the STE mask pass (kernels/ste_mask.py, ``CUBLAS`` configs),
and which configs clip at all (docs/numerics.md "Which configs clip")."""

import pytest
import torch
from _clip_bounds import overshoot
from conftest import DTYPES, assert_close_rel, dt_id

import triton_qat as tq
from triton_qat import autotune
from triton_qat.dispatch import quantize_rows
from triton_qat.kernels.gemm_backward import dgrad, plan_dgrad, plan_wgrad, uses_cublas, wgrad
from triton_qat.kernels.quantize_torch import pack_bits, unpack_bits
from triton_qat.kernels.ste_mask import zero_masked
from triton_qat.kernels.ste_mask_torch import zero_masked_torch
from triton_qat.reference import fake_quantize_with_mask

SHAPES = [(1, 1), (1, 9), (13, 100), (67, 130), (3, 257)]


def _values(M, N, dtype):
    c = torch.randn(M, N).to(dtype)
    c.view(-1)[::7] = float("nan")  # the pass zeroes NaN and inf where masked, as torch.where
    c.view(-1)[3::11] = float("inf")
    return c


@pytest.mark.parametrize("bits", [True, False], ids=["bits", "bytes"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
@pytest.mark.parametrize("M,N", SHAPES, ids=[f"M{m}-N{n}" for m, n in SHAPES])
def test_zero_masked_equals_where_and_its_twin(M, N, dtype, bits):
    keep = torch.rand(M, N) > 0.3
    mask = pack_bits(keep) if bits else keep.to(torch.uint8)
    c = _values(M, N, dtype)
    want = torch.where(keep, c, torch.zeros((), dtype=dtype))
    got = zero_masked(c.clone(), mask, bits=bits)
    twin = zero_masked_torch(c.clone(), mask, bits=bits)
    for out in (got, twin):
        assert torch.equal(out.isnan(), want.isnan())
        assert torch.equal(torch.nan_to_num(out), torch.nan_to_num(want))
        assert not torch.signbit(out[~keep]).any()  # +0.0, as torch.where(mask, acc, 0.0)


def test_zero_masked_takes_row_strides_and_leaves_the_rest_alone():
    """C may be a column slice of a wider buffer: only its own masked elements are written."""
    wide = torch.randn(13, 80)
    keep = torch.rand(13, 70) > 0.5
    before = wide.clone()
    zero_masked(wide[:, 5:75], pack_bits(keep), bits=True)
    assert torch.equal(wide[:, 5:75], torch.where(keep, before[:, 5:75], 0.0))
    assert torch.equal(wide[:, :5], before[:, :5]) and torch.equal(wide[:, 75:], before[:, 75:])


def _operands(M, K, N, dtype):
    dy = torch.randn(M, N).to(dtype)
    w_fq = torch.randn(N, K).to(dtype)
    x_fq = torch.randn(M, K).to(dtype)
    keep_x, keep_w = torch.rand(M, K) > 0.1, torch.rand(N, K) > 0.1
    return dy, w_fq, x_fq, keep_x, keep_w


@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
@pytest.mark.parametrize("M,K,N", [(1, 40, 8), (67, 130, 33)], ids=["M1-K40-N8", "M67-K130-N33"])
def test_cublas_backward_is_where_of_torch_mm(M, K, N, dtype):
    """A CUBLAS config: grad = torch.where(mask, torch.mm(a, b), 0) exactly (16-bit dtypes); fp32
    keeps the Triton kernel (IEEE dots), so the config changes nothing there."""
    dy, w_fq, x_fq, keep_x, keep_w = _operands(M, K, N, dtype)
    tiles = autotune.gemm_config("dgrad", M, N, K, torch.device("cpu"), dtype)
    cublas, triton_only = {**tiles, "CUBLAS": 1}, {**tiles, "CUBLAS": 0}
    x_mask, w_mask = pack_bits(keep_x), keep_w.to(torch.uint8)
    dx = dgrad(dy, w_fq, x_mask, config=cublas)
    dw = wgrad(dy, x_fq, w_mask, config=cublas)
    assert_close_rel(dx, (dy.double() @ w_fq.double()) * keep_x, dtype, "grad_x")
    assert_close_rel(dw, (dy.double().T @ x_fq.double()) * keep_w, dtype, "grad_w")
    if dtype == torch.float32:  # CUBLAS is ignored: the same Triton launch either way
        assert not uses_cublas(cublas, dtype)
        assert torch.equal(dx, dgrad(dy, w_fq, x_mask, config=triton_only))
        assert torch.equal(dw, wgrad(dy, x_fq, w_mask, config=triton_only))
    else:
        assert type(plan_dgrad(dtype, cublas)).__name__ == "CublasPlan"
        assert type(plan_wgrad(dtype, cublas)).__name__ == "CublasPlan"
        assert torch.equal(dx, torch.where(keep_x, dy @ w_fq, 0.0))
        assert torch.equal(dw, torch.where(keep_w, dy.t() @ x_fq, 0.0))


@pytest.fixture
def cublas_backward(monkeypatch):
    """Every backward GEMM config says CUBLAS (the 16-bit default on a GPU); records them."""
    looked_up = autotune.gemm_config
    used = []

    def forced(kernel, M, N, K, device, dtype=None, group_size=0):
        cfg = looked_up(kernel, M, N, K, device, dtype, group_size)
        if kernel in ("dgrad", "wgrad"):
            cfg = {**cfg, "CUBLAS": 1}
            used.append((kernel, dtype))
        return cfg

    monkeypatch.setattr(autotune, "gemm_config", forced)
    autotune.invalidate()
    yield used
    autotune.invalidate()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=dt_id)
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_layer_trains_the_same_through_torch_mm(cublas_backward, dtype, compiled):
    """tq.Linear's gradients through torch.mm + the mask pass: within the fp64 bound of the STE
    reference, masked elements exactly zero, eager and compiled (fullgraph)."""
    torch.manual_seed(3)
    # torchao's asymmetric weights: an off-centre channel clips on one side (a zero point of 0 on a
    # range that leaves 0 out), so the weight mask has zeros to apply (symmetric int8 bf16
    # channels almost never clip: docs/numerics.md "Which configs clip")
    wcfg = tq.QuantConfig(granularity="per_channel", symmetric=False)
    lin = tq.Linear(96, 40, weight=wcfg)
    lin = lin.to(dtype)
    x = (torch.randn(2, 13, 96) * 2).to(dtype).requires_grad_()
    f = torch.compile(lin, fullgraph=True) if compiled else lin
    out = f(x)
    dy = torch.randn_like(out)
    out.backward(dy)
    assert {k for k, _ in cublas_backward} == {"dgrad", "wgrad"}
    x_fq, keep_x = fake_quantize_with_mask(x.detach().reshape(-1, 96), lin.activation_config)
    w_fq, keep_w = fake_quantize_with_mask(lin.weight.detach(), lin.weight_config)
    dy2 = dy.reshape(-1, 40).double()
    assert_close_rel(x.grad.reshape(-1, 96), (dy2 @ w_fq.double()) * keep_x, dtype, "grad_x")
    assert_close_rel(lin.weight.grad, (dy2.T @ x_fq.double()) * keep_w, dtype, "grad_w")
    assert (~keep_w).any()  # the weight mask has zeros: the pass had something to write
    for grad, keep in ((x.grad.reshape(-1, 96), keep_x), (lin.weight.grad, keep_w)):
        assert torch.all(grad[~keep] == 0) and not grad[~keep].signbit().any()  # +0.0


def test_unpack_matches_pack():  # the pass reads the bits pack_bits writes
    keep = torch.rand(5, 21) > 0.5
    assert torch.equal(unpack_bits(pack_bits(keep), 21), keep)


# ------------------------------------------------------------------------------------------------
# which configs clip (docs/numerics.md "Which configs clip"); the whole table:
# python tests/_clip_bounds.py


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_dynamic_codes_overshoot_by_at_most_one_bf16_every_row(bits, symmetric):
    """bf16, every row up to scaling (tests/_clip_bounds.py): no unclamped code lies more than
    one past the code range; symmetric scales never clip below and do clip above (torchao's
    amax / ((qmax - qmin) / 2) puts +amax on qmax + 1/2)."""
    r = overshoot(torch.bfloat16, bits, symmetric, recip=True)
    assert r["below"] == (0 if symmetric else -1) and r["above"] == 1, r
    assert r["clipping_rows"] > 0


def test_dynamic_codes_overshoot_by_at_most_one_fp32_sampled():
    r = overshoot(torch.float32, 8, False, recip=False, samples=5000)
    assert -1 <= r["below"] <= 0 and 0 <= r["above"] <= 1, r


def test_fp32_asymmetric_rows_clip_rarely_not_never():
    """No dynamic config is clip-free: this fp32 row (found by tests/_clip_bounds.py) puts its
    maximum on qmax + 1 on a CPU, so the mask pass is never skipped."""
    x = torch.tensor([[-3829186048.0, 230865712.0, 0.0, 1.0]])
    _, keep = fake_quantize_with_mask(x, tq.QuantConfig())
    assert keep.tolist() == [[True, False, True, True]]
    q = quantize_rows(x, -128, 127, 4, False, pack_mask=True, with_y=True)
    assert unpack_bits(q.mask, 4).tolist() == keep.tolist()


@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_clipped_elements_lie_within_one_step_of_their_rows_extreme(dtype, symmetric):
    """What the mask pass writes: an element clips only where its code passes the range by one,
    so it lies within one scale step of its row's maximum (or minimum)."""
    x = (torch.randn(512, 96) * torch.logspace(-3, 3, 512)[:, None]).to(dtype)
    q = quantize_rows(x, -128, 127, 96, symmetric, pack_mask=True, with_y=True)
    keep = unpack_bits(q.mask, 96)
    xf, s = x.double(), q.scale.double().reshape(-1, 1)
    mx, mn = xf.amax(1, keepdim=True).clamp_min(0), xf.amin(1, keepdim=True).clamp_max(0)
    near_top = (mx - xf) / s <= 1 + 1e-6
    near_bottom = (xf - mn) / s <= 1 + 1e-6
    if symmetric or dtype != torch.float32:  # fp32 asymmetric rows clip too rarely to meet here
        assert (~keep).any()
    assert torch.all(near_top | near_bottom | keep)
