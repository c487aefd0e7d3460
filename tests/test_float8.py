"""Float8 (e4m3) QAT, issue 30 part A: bit-identical to torchao's own Float8FakeQuantizer /
FakeQuantizedLinear objects (values and gradients), kernel vs twin vs reference, the library
paths (prepare through QATConfig, from/to_torchao, compile fullgraph, opcheck), bad configs."""

import pytest
import torch
from torch import nn

import triton_qat as tq
from kernels.quantize_float8 import float8_quantize
from kernels.quantize_float8_torch import (
    float8_fake_quantize_backward_torch,
    float8_fake_quantize_torch,
)
from triton_qat.reference import float8_fake_quantize_ref, float8_scale_ref

ao_qat = pytest.importorskip("torchao.quantization.qat")
from torchao.quantization import Float8DynamicActivationFloat8WeightConfig  # noqa: E402
from torchao.quantization.granularity import PerRow, PerTensor  # noqa: E402
from torchao.quantization.qat import Float8FakeQuantizeConfig, QATConfig  # noqa: E402
from torchao.quantization.qat.fake_quantizer import Float8FakeQuantizer  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
BOUNDS = [(None, None), (1e-12, None), (0.01, 2.0), (None, 1.0), (1.001, None)]


def _exact(a, b, what=""):
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=what)
    fin = ~a.isnan()
    assert torch.equal(torch.signbit(a[fin]), torch.signbit(b[fin])), what  # -0.0 kept


def _hard_input(dtype, R=9, K=37, seed=0):
    """Odd shape; a zero row, NaN and inf rows, subnormals, tiny and huge rows, ties."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(R, K, generator=g) * 3
    x[1] = 0
    x[2, 3] = float("nan")
    x[3, 1] = float("inf")
    x[4, :5] = torch.tensor([1e-40, -1e-39, 3e-41, 0.0, -0.0])
    x[5] *= 1e-3
    x[6] *= 1000  # beyond 448 * scale where an upper bound clamps
    x[7, 2] = -x[7].abs().max()  # a tie for the row max
    x[7, 9] = x[7].abs().max()
    x[8, 4] = float("-inf")
    return x.to(dtype)


def _ao(granularity, lb, ub):
    g = PerTensor() if granularity == "per_tensor" else PerRow()
    return Float8FakeQuantizer(
        Float8FakeQuantizeConfig(granularity=g, hp_value_lb=lb, hp_value_ub=ub)
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("granularity", ["per_row", "per_tensor"])
def test_fake_quantize_bit_identical_to_torchao(dtype, granularity):
    """tq.fake_quantize (the op -> kernel) == torchao's Float8FakeQuantizer, values and
    gradients, on finite rows and, separately, on the hard rows (NaN / inf / zero rows)."""
    for lb, ub in BOUNDS:
        cfg = tq.Float8Config(granularity, lb, ub)
        for x in (_hard_input(dtype), _hard_input(dtype)[[0, 4, 5, 6, 7]].reshape(1, 5, 37)):
            x = x.clone().requires_grad_(True)
            y_ao = _ao(granularity, lb, ub)(x)
            y = tq.fake_quantize(x, cfg)
            _exact(y, y_ao, f"{dtype} {granularity} {lb} {ub}")
            g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
            (gx_ao,) = torch.autograd.grad(y_ao, x, g)
            (gx,) = torch.autograd.grad(y, x, g)
            _exact(gx, gx_ao, f"grad {dtype} {granularity} {lb} {ub}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernel_twin_reference_agree(dtype):
    for per_tensor in (False, True):
        for lb, ub in BOUNDS:
            x = _hard_input(dtype, R=13, K=67, seed=3)
            y_k, s_k = float8_quantize(x, per_tensor, lb, ub)
            y_t, s_t = float8_fake_quantize_torch(x, per_tensor, lb, ub)
            cfg = tq.Float8Config("per_tensor" if per_tensor else "per_row", lb, ub)
            _exact(y_k, y_t)
            _exact(y_k, float8_fake_quantize_ref(x, cfg))
            _exact(s_k, s_t)
            _exact(s_k, float8_scale_ref(x, cfg))
            assert s_k.dtype == torch.float32


def test_reference_and_twin_gradients_equal_torchao():
    for dtype in DTYPES:
        for gran in ("per_row", "per_tensor"):
            x = _hard_input(dtype)[[0, 5, 6, 7]].requires_grad_(True)
            g = torch.randn(x.shape).to(dtype)
            (want,) = torch.autograd.grad(_ao(gran, 0.01, 2.0)(x), x, g)
            (got,) = torch.autograd.grad(
                float8_fake_quantize_ref(x, tq.Float8Config(gran, 0.01, 2.0)), x, g
            )
            _exact(got, want)
            _, s = float8_fake_quantize_torch(x.detach(), gran == "per_tensor", 0.01, 2.0)
            twin = float8_fake_quantize_backward_torch(
                g, x.detach(), s, gran == "per_tensor", 0.01, 2.0
            )
            _exact(twin, want)


def test_gradient_is_torchao_not_plain_ste():
    """torchao's gradient flows through the scale into the row's max |x| and its STE part is
    rounded to e4m3: a plain STE would give g itself."""
    x = torch.tensor([[1.0, 2.0, -4.0, 0.5]], requires_grad=True)
    g = torch.tensor([[0.3, 0.0, 0.0, 0.0]])
    (gx,) = torch.autograd.grad(tq.fake_quantize(x, tq.Float8Config()), x, g)
    assert abs(gx[0, 0].item() - 0.21875) < 1e-6  # fp8(0.3 * 4/448) / (4/448), not 0.3
    assert gx[0, 2] != 0 and gx[0, 1] == 0  # the max's element gets the scale's gradient


def _pair(dtype, a_gran="per_row", w_gran="per_row", lb=1e-12):
    act = tq.Float8Config(a_gran, hp_value_lb=lb)
    w = tq.Float8Config(w_gran)
    ao_act = Float8FakeQuantizeConfig(
        granularity=PerTensor() if a_gran == "per_tensor" else PerRow(), hp_value_lb=lb
    )
    ao_w = Float8FakeQuantizeConfig(granularity=PerTensor() if w_gran == "per_tensor" else PerRow())
    lin = tq.Linear(37, 19, activation=act, weight=w, dtype=dtype)
    ref = ao_qat.FakeQuantizedLinear(
        37, 19, activation_config=ao_act, weight_config=ao_w, dtype=dtype
    )
    ref.weight, ref.bias = lin.weight, lin.bias
    return lin, ref


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "grans", [("per_row", "per_row"), ("per_tensor", "per_row"), ("per_row", "per_tensor")]
)
def test_linear_equals_torchao_fake_quantized_linear(dtype, grans):
    torch.manual_seed(0)
    lin, ref = _pair(dtype, *grans)
    x = torch.randn(3, 5, 37, dtype=dtype, requires_grad=True)
    y, y_ref = lin(x), ref(x)
    _exact(y, y_ref)  # the same F.linear on the same fake-quantized values
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, lin.weight, lin.bias], g)
    want = torch.autograd.grad(y_ref, [x, ref.weight, ref.bias], g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, equal_nan=True)  # the dtype's default bound


def test_prepare_qatconfig_and_torchao_round_trip():
    torch.manual_seed(0)
    base = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    model = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 16))
    twin = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 16))
    twin.load_state_dict(model.state_dict())
    tq.prepare(model, QATConfig(base))
    assert isinstance(model[0], tq.Linear) and isinstance(model[0].weight_config, tq.Float8Config)
    from torchao.quantization import quantize_

    quantize_(twin, QATConfig(base, step="prepare"))
    x = torch.randn(4, 32)
    _exact(model(x), twin(x))
    tq.to_torchao(model)
    assert isinstance(model[0], ao_qat.FakeQuantizedLinear)
    _exact(model(x), twin(x))
    tq.from_torchao(model)
    assert isinstance(model[2], tq.Linear) and model[2].weight_config == tq.Float8Config()
    _exact(model(x), twin(x))
    with pytest.raises(NotImplementedError, match=r"0: converting a float8"):
        tq.convert(model)


def test_compile_fullgraph_and_opcheck():
    torch._dynamo.reset()
    lin = tq.Linear(24, 8, activation=tq.Float8Config("per_tensor"), weight=tq.Float8Config())
    x = torch.randn(5, 24, requires_grad=True)
    y = lin(x)
    yc = torch.compile(lin, fullgraph=True)(x)
    _exact(yc, y)
    (gc,) = torch.autograd.grad(yc.sum(), x)
    (ge,) = torch.autograd.grad(lin(x).sum(), x)
    _exact(gc, ge)
    xs = torch.randn(3, 17)
    for per_tensor in (False, True):
        torch.library.opcheck(
            torch.ops.triton_qat.float8_fake_quantize, (xs, per_tensor, 1e-12, None)
        )
        _, s = torch.ops.triton_qat.float8_fake_quantize(xs, per_tensor, None, None)
        torch.library.opcheck(
            torch.ops.triton_qat.float8_fake_quantize_backward,
            (torch.randn(3, 17), xs, s, per_tensor, None, None),
        )


def test_bad_configs_name_the_argument():
    with pytest.raises(TypeError, match="bits"):
        tq.Float8Config(bits=8)
    with pytest.raises(TypeError, match="symmetric"):
        tq.Float8Config(symmetric=False)
    with pytest.raises(ValueError, match="granularity"):
        tq.Float8Config("per_group")
    with pytest.raises(ValueError, match="dtype"):
        tq.Float8Config(dtype=torch.float8_e5m2)
    with pytest.raises(ValueError, match="hp_value_lb"):
        tq.Float8Config(hp_value_lb=2.0, hp_value_ub=1.0)
    with pytest.raises(ValueError, match="activation"):
        tq.Linear(8, 8, activation=tq.QuantConfig(), weight=tq.Float8Config())
    with pytest.raises(ValueError, match="activation"):
        tq.Linear(
            8,
            8,
            activation=tq.Float8Config(),
            weight=tq.QuantConfig(granularity="per_channel", symmetric=True),
        )
