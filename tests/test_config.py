"""QuantConfig validation and fake_quantize argument checks: errors name the field."""

import pytest
import torch

import triton_qat as tq


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(bits=1), "bits"),
        (dict(bits=9), "bits"),
        (dict(bits=8.0), "bits"),
        (dict(bits=True), "bits"),
        (dict(granularity="per_row"), "granularity"),
        (dict(granularity="per_group", symmetric=True), "group_size"),
        (dict(granularity="per_group", group_size=0, symmetric=True), "group_size"),
        (dict(group_size=32), "group_size"),
        (dict(symmetric="yes"), "symmetric"),
    ],
    ids=[
        "bits1",
        "bits9",
        "bits-float",
        "bits-bool",
        "granularity",
        "group-missing",
        "group0",
        "group-without-per-group",
        "symmetric-str",
    ],
)
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        tq.QuantConfig(**kwargs)


def test_ranges_and_defaults():
    assert (tq.QuantConfig().qmin, tq.QuantConfig().qmax) == (-128, 127)
    assert (tq.QuantConfig(bits=4).qmin, tq.QuantConfig(bits=4).qmax) == (-8, 7)
    assert (tq.QuantConfig(bits=2).qmin, tq.QuantConfig(bits=2).qmax) == (-2, 1)
    lin = tq.Linear(64, 8)
    assert lin.activation_config == tq.QuantConfig(bits=8, granularity="per_token", symmetric=False)
    assert lin.weight_config == tq.QuantConfig(bits=8, granularity="per_channel", symmetric=True)


def test_fake_quantize_bad_arguments():
    with pytest.raises(TypeError, match="x"):
        tq.fake_quantize(torch.arange(8), tq.QuantConfig())
    with pytest.raises(TypeError, match="config"):
        tq.fake_quantize(torch.randn(8), "int8")
    cfg = tq.QuantConfig(bits=4, granularity="per_group", group_size=3, symmetric=True)
    with pytest.raises(ValueError, match="group_size"):
        tq.fake_quantize(torch.randn(2, 8), cfg)


def test_in_features_bounded_by_int32_accumulation():
    with pytest.raises(ValueError, match="in_features: at most 65536"):
        tq.Linear(65537, 8, device="meta")
    assert tq.Linear(65536, 8, device="meta").in_features == 65536


@pytest.mark.parametrize("field", ["in_features", "out_features"])
def test_bad_linear_sizes(field):
    kwargs = {"in_features": 8, "out_features": 4, field: 0}
    with pytest.raises(ValueError, match=field):
        tq.Linear(**kwargs)
