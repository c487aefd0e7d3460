"""Edge shapes of the functional API: zero-size tensors of every granularity and dtype, and 0-dim
tensors, bit-exact against the plain-torch reference, gradients included."""

import math

import pytest
import torch
from conftest import DTYPES

import triton_qat as tq
from triton_qat.reference import fake_quantize_ref

ZERO_SIZE = [(0,), (4, 0), (3, 0), (0, 4), (2, 0, 3), (0, 0), (0, 2, 4)]
GRANULARITIES = ["per_token", "per_channel", "per_group", "per_tensor"]


def _config(granularity: str, symmetric: bool, row_len: int) -> tq.QuantConfig:
    """A config of ``granularity``; per_group with a group that fits rows of ``row_len`` (32 for
    empty rows: any group size fits a row of 0 elements)."""
    group = (row_len or 32) if granularity == "per_group" else None
    return tq.QuantConfig(granularity=granularity, symmetric=symmetric, group_size=group)


def _row_len(shape: tuple, granularity: str) -> int:
    """Elements per row: the last dim, or for per_channel everything after dim 0."""
    if not shape:
        return 1
    return math.prod(shape[1:]) if granularity == "per_channel" else shape[-1]


def _check_against_reference(x: torch.Tensor, cfg: tq.QuantConfig) -> None:
    """fake_quantize(x) equals the reference bit for bit, in x's shape and dtype, and both
    gradients (straight-through) have x's shape and agree."""
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    ys = [tq.fake_quantize(xs[0], cfg), fake_quantize_ref(xs[1], cfg)]
    for y in ys:
        assert y.shape == x.shape and y.dtype == x.dtype and y.requires_grad
    assert torch.equal(ys[0], ys[1])
    grads = [
        torch.autograd.grad(y, xi, torch.ones_like(y))[0] for y, xi in zip(ys, xs, strict=True)
    ]
    assert grads[0].shape == x.shape and grads[0].dtype == x.dtype
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("shape", ZERO_SIZE, ids=lambda s: "x".join(map(str, s)) or "0dim")
def test_zero_size_fake_quantize(shape, granularity, symmetric, device):
    """Every zero-size shape, granularity and dtype: the result has x's shape and dtype and stays
    connected to autograd (crashed in ``rows_2d`` for (0,), (4, 0), per-tensor (3, 0),
    per-channel (0, 4)...)."""
    cfg = _config(granularity, symmetric, _row_len(shape, granularity))
    for dtype in DTYPES:
        _check_against_reference(torch.empty(shape, dtype=dtype, device=device), cfg)


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_zero_dim_fake_quantize(granularity, device):
    """A 0-dim tensor is one row of one element, for every granularity."""
    cfg = _config(granularity, False, 1)
    for dtype in DTYPES:
        _check_against_reference(torch.tensor(-2.5, dtype=dtype, device=device), cfg)


def test_group_size_on_empty_rows_and_empty_batches(device):
    """Any group size fits rows of 0 elements (torchao's IntxFakeQuantizer has no behaviour to
    follow: it fails on every zero-size input); rows of 3 elements in an empty batch still need a
    dividing group, as a full batch does (the config does not fit the shape); 0-dim is one
    element."""
    cfg = tq.QuantConfig(granularity="per_group", group_size=32)
    _check_against_reference(torch.empty(4, 0, device=device), cfg)
    for x in (torch.empty(2, 0, 3, device=device), torch.tensor(1.0, device=device)):
        for fn in (tq.fake_quantize, fake_quantize_ref):
            with pytest.raises(ValueError, match="group_size: expected a divisor of"):
                fn(x, cfg)
