"""``tq.convert`` of MX / NVFP4 layers (``tq.QuantizedMXLinear``) and of float8-activation,
int4-weight layers (``tq.QuantizedFloat8Linear`` with a ``Float8Int4WeightConfig``): compact
codes, output bit-identical to the prepared layer's eval forward (hard weights: zero, NaN, inf,
tiny, huge rows; every MX element format and scaling mode, several block sizes; NVFP4 with and
without the per-tensor scale; int4 groups of 32 and 128), torchao-prepared models, and what the
other converted modules support (casts, autocast, empty inputs, state dicts, safetensors, meta
skeletons, compile, tied weights, mixed models, all or nothing, errors)."""

import copy
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import triton_qat as tq

E4M3, E5M2, FP4 = torch.float8_e4m3fn, torch.float8_e5m2, torch.float4_e2m1fn_x2
MX_CASES = {  # (activation, weight, bias): every element format, scaling mode, B = 16 / 32 / 64
    "e4m3-floor-32": (tq.MXConfig(E4M3, 32, "floor"),) * 2 + (True,),
    "e4m3-rceil-32": (tq.MXConfig(E4M3, 32, "rceil"),) * 2 + (False,),
    "e5m2-ceil-32": (tq.MXConfig(E5M2, 32, "ceil"),) * 2 + (True,),
    "e5m2-even-16": (tq.MXConfig(E5M2, 16, "even"),) * 2 + (True,),
    "fp4-rceil-32": (tq.MXConfig(FP4, 32, "rceil"),) * 2 + (True,),
    "fp4-even-64": (tq.MXConfig(FP4, 64, "even"),) * 2 + (False,),
    "e4m3-act-fp4-floor-16": (tq.MXConfig(E4M3), tq.MXConfig(FP4, 16, "floor"), True),
    "nvfp4-pts": (tq.NVFP4Config(True),) * 2 + (True,),
    "nvfp4": (tq.NVFP4Config(False),) * 2 + (False,),
}
INT4 = dict(activation=tq.Float8Config(), weight=tq.Float8Int4WeightConfig(32))


def _same_bits(got: torch.Tensor, want: torch.Tensor, what: str = "") -> None:
    """Bit for bit (-0.0 too), NaN positions compared apart from their payloads."""
    assert got.dtype == want.dtype and got.shape == want.shape, what
    nan = want.isnan()
    assert torch.equal(got.isnan(), nan), f"{what}: NaN positions differ"
    ints = {2: torch.int16, 4: torch.int32}[want.element_size()]
    a, b = got.masked_fill(nan, 0).view(ints), want.masked_fill(nan, 0).view(ints)
    assert torch.equal(a, b), f"{what}: {(a != b).sum()} elements differ"


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.element_size() == 1 else t


def _hard_weight(N: int, K: int, dtype: torch.dtype, poison: bool = True) -> torch.Tensor:
    """Values near 1 with a zero row, a zero block, a tiny (subnormal-ish) row, signed zeros and
    fp32 subnormals; ``poison``: a huge row, a NaN row and an inf row too."""
    g = torch.Generator().manual_seed(N * K)
    w = torch.randn(N, K, generator=g) * 0.3
    w[1] = 0
    w[2, :16] = 0
    w[3] *= 1e-38
    w[5, :4] = torch.tensor([1e-45, -0.0, 2.0**-130, -1e-44])
    if poison:
        w[4] *= 1e30
        w[6, 3] = float("nan")
        w[7, 5] = float("-inf")
    return w.to(dtype)


def _prepared(K: int, N: int, dtype: torch.dtype, bias: bool = True, **cfg) -> tq.Linear:
    return tq.Linear(K, N, bias, dtype=dtype, **cfg).eval()


# -- bit-identical to the prepared layer's eval forward -------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", list(MX_CASES))
@torch.no_grad()
def test_mx_convert_equals_prepared_eval(name, dtype):
    act, wcfg, bias = MX_CASES[name]
    K, N = 128, 11
    # NVFP4's per-tensor scale makes a NaN / inf weight all NaN: a clean weight tests it too
    for poison in (True, False) if name == "nvfp4-pts" else (True,):
        lin = _prepared(K, N, dtype, bias, activation=act, weight=wcfg)
        lin.weight.copy_(_hard_weight(N, K, dtype, poison))
        conv = tq.convert(copy.deepcopy(lin))
        assert type(conv) is tq.QuantizedMXLinear and conv.weight_dtype == dtype
        w_fq = tq.fake_quantize(lin.weight, wcfg)
        assert w_fq.isnan().all() == (poison and name == "nvfp4-pts")
        assert w_fq.isnan().all() or w_fq.nan_to_num().ne(0).sum() > N * K // 2
        _same_bits(conv.dequantized_weight(), w_fq, f"{name} weight")
        for shape in ((3, 5, K), (K,)):
            x = torch.randn(shape, dtype=dtype)
            _same_bits(conv(x), lin(x), f"{name} {shape}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@torch.no_grad()
def test_nvfp4_zeros_of_an_overflowing_multiplier_keep_torchaos_value(dtype):
    """A whole weight below ~5e-34 with the per-tensor scale: where ``(1 / pts) / s8``
    overflows, ``x * r`` is NaN at the zeros (0 * inf), which e2m1 rounding turns into
    torchao's code for those bits (a tiny nonzero value, tests/test_mx.py); the stored codes
    give that value back, and the layer the prepared one's bits."""
    cfg = tq.NVFP4Config(True)
    lin = _prepared(32, 4, dtype, activation=cfg, weight=cfg)
    w = torch.randn(4, 32) * 1e-35
    w[1] *= 1e-4  # small blocks: s8 < 0.3, so (1 / pts) / s8 > 1e38 / 0.3 overflows
    w[1, :3] = 0
    w[0, :3] = 0  # a block whose multiplier is finite: zeros stay zeros
    lin.weight.copy_(w.to(dtype))
    want = tq.fake_quantize(lin.weight, cfg)
    assert (want[1, :3] != 0).all() and (want[0, :3] == 0).all() and want.isfinite().all()
    conv = tq.convert(copy.deepcopy(lin))
    _same_bits(conv.dequantized_weight(), want)
    x = torch.randn(3, 32, dtype=dtype)
    _same_bits(conv(x), lin(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("group", [32, 128])
@torch.no_grad()
def test_float8_int4_convert_equals_prepared_eval(dtype, group):
    K, N = 256, 10
    lin = _prepared(K, N, dtype, activation=tq.Float8Config(),
                    weight=tq.Float8Int4WeightConfig(group))  # fmt: skip
    w = _hard_weight(N, K, dtype).float()
    w[8, :group] *= 1e-4  # groups at or near the 1e-6 scale floor
    w[9] = 65504.0 if dtype == torch.float16 else 3e38  # w8 overflows w's dtype: inf
    lin.weight.copy_(w.to(dtype))
    conv = tq.convert(copy.deepcopy(lin))
    assert type(conv) is tq.QuantizedFloat8Linear and conv.int4
    assert conv.weight_codes.dtype == torch.uint8 and conv.weight_codes.shape == (N, K // 2)
    assert conv.weight_scale.dtype == torch.float32 and conv.weight_scale.shape == (N, K // group)
    w_fq = tq.fake_quantize(lin.weight, lin.weight_config)
    # NaN groups: the NaN and inf rows (scale NaN / inf); in fp16 also the zero and tiny
    # groups, whose 1 / s overflows (0 * inf): stored as code 0, read back as NaN
    assert w_fq[6].isnan().all() and w_fq[7].isnan().all()
    assert w_fq[1].isnan().all() == (dtype == torch.float16)
    _same_bits(conv.dequantized_weight(), w_fq, "weight")
    for shape in ((3, 5, K), (K,)):
        x = torch.randn(shape, dtype=dtype)
        _same_bits(conv(x), lin(x), str(shape))
    only = _prepared(K, 6, dtype, activation=tq.NOT_QUANTIZED, weight=lin.weight_config)
    x = torch.randn(2, K, dtype=dtype)
    _same_bits(tq.convert(copy.deepcopy(only))(x), only(x), "weight-only")


@torch.no_grad()
def test_torchao_qatconfigs_prepare_then_convert():
    """Models prepared with torchao's QATConfig objects, converted by tq.convert: the output
    is the prepared model's eval output, bit for bit."""
    pytest.importorskip("torchao.prototype.qat")
    from torchao.prototype.mx_formats import (
        MXDynamicActivationMXWeightConfig,
        NVFP4DynamicActivationNVFP4WeightConfig,
    )
    from torchao.quantization import Float8DynamicActivationInt4WeightConfig
    from torchao.quantization.qat import QATConfig
    from torchao.quantization.quantize_.common.kernel_preference import KernelPreference

    bases = [
        MXDynamicActivationMXWeightConfig(kernel_preference=KernelPreference.EMULATED),
        NVFP4DynamicActivationNVFP4WeightConfig(),
        Float8DynamicActivationInt4WeightConfig(),
    ]
    kinds = [tq.QuantizedMXLinear, tq.QuantizedMXLinear, tq.QuantizedFloat8Linear]
    for base, kind in zip(bases, kinds, strict=True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(128, 32), nn.ReLU(), nn.Linear(32, 16))
        tq.prepare(model, QATConfig(base), lambda m, fqn: fqn == "0")
        assert isinstance(model[0], tq.Linear)
        x = torch.randn(5, 128)
        want = model.eval()(x)
        tq.convert(model)
        assert type(model[0]) is kind, base
        _same_bits(model(x), want, type(base).__name__)


# -- storage ---------------------------------------------------------------------------------


def test_stored_codes_are_compact():
    K, N = 128, 16
    # name: (tq.Linear kwargs, codes (dtype, shape), scale (dtype, shape), per-tensor scale)
    cases = {
        "e4m3": (MX_CASES["e4m3-floor-32"], (E4M3, (N, K)), (torch.uint8, (N, 4)), False),
        "e5m2-16": (MX_CASES["e5m2-even-16"], (E5M2, (N, K)), (torch.uint8, (N, 8)), False),
        "fp4": (MX_CASES["fp4-rceil-32"], (torch.uint8, (N, 64)), (torch.uint8, (N, 4)), False),
        "nvfp4-pts": (MX_CASES["nvfp4-pts"], (torch.uint8, (N, 64)), (E4M3, (N, 8)), True),
        "nvfp4": (MX_CASES["nvfp4"], (torch.uint8, (N, 64)), (E4M3, (N, 8)), False),
        "int4-32": (None, (torch.uint8, (N, 64)), (torch.float32, (N, 4)), False),
    }
    for name, (case, codes, scale, pts) in cases.items():
        cfg = INT4 if case is None else dict(activation=case[0], weight=case[1])
        conv = tq.convert(_prepared(K, N, torch.bfloat16, **cfg))
        assert (conv.weight_codes.dtype, tuple(conv.weight_codes.shape)) == codes, name
        assert (conv.weight_scale.dtype, tuple(conv.weight_scale.shape)) == scale, name
        has_pts = "weight_tensor_scale" in conv.state_dict()
        assert has_pts == pts and (getattr(conv, "weight_tensor_scale", None) is not None) == pts
        if pts:
            assert conv.weight_tensor_scale.dtype == torch.float32
            assert conv.weight_tensor_scale.dim() == 0
        bf16 = 2 * N * K + 2 * N
        assert conv.weight_nbytes() < bf16 / 1.7, name  # at most ~1 byte per weight
        assert tq.weight_nbytes(nn.Sequential(conv)) == {"stored": conv.weight_nbytes(),
                                                         "bf16": bf16}  # fmt: skip


@torch.no_grad()
def test_e2m1_packing_order_and_e8m0_scale():
    """Element 2j in the low nibble (pack_int4's order), e2m1 codes with the sign in bit 3, and
    the block's e8m0 biased exponent."""
    cfg = tq.MXConfig(FP4, 32, "rceil")
    lin = _prepared(32, 1, torch.float32, activation=cfg, weight=cfg)
    lin.weight.zero_()
    lin.weight[0, :4] = torch.tensor([6.0, -0.5, 1.5, -0.0])  # amax 6: e = 127, r = 1
    conv = tq.convert(lin)
    assert conv.weight_codes[0, :2].tolist() == [7 | (9 << 4), 3 | (8 << 4)]
    assert conv.weight_scale.tolist() == [[127]]


# -- what the other converted modules support --------------------------------------------------


@pytest.mark.parametrize("name", ["fp4-rceil-32", "nvfp4-pts", "int4"])
@torch.no_grad()
def test_cast_autocast_empty_inputs_and_fp16(name):
    """Autocast gives the autocast dtype, empty inputs empty outputs, as the prepared layer;
    a dtype cast casts weight_dtype and the bias, not the codes or scales; on weights fp32 and
    bf16 quantize alike (bf16 values), the cast MX layer equals the prepared layer cast the same
    way. fp16 is refused as the prepared MX layer refuses it."""
    cfg = INT4 if name == "int4" else dict(activation=MX_CASES[name][0], weight=MX_CASES[name][1])
    lin = _prepared(64, 24, torch.float32, **cfg)
    lin.weight.copy_(lin.weight.bfloat16())
    conv = tq.convert(copy.deepcopy(lin))
    x = torch.randn(3, 5, 64)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got, want = conv(x), lin(x)
    assert want.dtype == torch.bfloat16
    _same_bits(got, want, "autocast")
    for shape in ((0, 64), (2, 0, 64)):
        e = torch.randn(shape)
        got, want = conv(e), lin(e)
        assert got.shape == want.shape == (*shape[:-1], 24) and got.dtype == want.dtype
    codes, scale = conv.weight_codes.clone(), conv.weight_scale.clone()
    assert conv.to(torch.bfloat16) is conv
    assert conv.weight_dtype == torch.bfloat16 and conv.bias.dtype == torch.bfloat16
    assert torch.equal(_bytes(conv.weight_codes), _bytes(codes))
    assert torch.equal(_bytes(conv.weight_scale), _bytes(scale))
    xb = x.bfloat16()
    if name != "int4":  # (float8-int4 scales are computed in the weight's dtype)
        _same_bits(conv(xb), lin.to(torch.bfloat16)(xb), "cast")
        with pytest.raises(ValueError, match="^input: MX / NVFP4 .*float16"):
            conv(x.half())
        with pytest.raises(ValueError, match=r"^weight_dtype: MX / NVFP4 .*\.bfloat16\(\)"):
            copy.deepcopy(conv).half()(xb)
    assert conv(xb).dtype == torch.bfloat16
    conv.double()
    with pytest.raises(TypeError, match=r"Quantized\w+Linear.*float64.*\.float\(\)"):
        conv(x)
    assert conv.float()(x).dtype == torch.float32


@pytest.mark.parametrize("name", ["e5m2-ceil-32", "nvfp4-pts", "int4"])
@torch.no_grad()
def test_state_dict_safetensors_and_meta_skeleton(name, tmp_path):
    """Tensors only (float8_e5m2, e4m3, uint8 codes; a 0-dim fp32 scale), through a
    safetensors file into a fresh module and into a prepared layer converted on the meta
    device, strict, computing the saved module's bits in the recorded dtype."""
    cfg = INT4 if name == "int4" else dict(activation=MX_CASES[name][0], weight=MX_CASES[name][1])
    kind = tq.QuantizedFloat8Linear if name == "int4" else tq.QuantizedMXLinear
    conv = tq.convert(_prepared(64, 24, torch.bfloat16, **cfg))
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    want = conv(x)
    state = conv.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    save_file(state, tmp_path / "w.safetensors")
    loaded = load_file(tmp_path / "w.safetensors")
    assert {k: v.dtype for k, v in loaded.items()} == {k: v.dtype for k, v in state.items()}
    fresh = kind(64, 24, **cfg)
    meta = tq.convert(tq.Linear(64, 24, **cfg).to("meta"))
    assert type(meta) is kind and all(b.is_meta for b in meta.buffers())
    meta.to_empty(device="cpu")
    for other in (fresh, meta):
        other.load_state_dict(loaded, strict=True)
        assert other.weight_dtype == torch.bfloat16
        _same_bits(other.to(torch.bfloat16)(x), want)


def test_compile_fullgraph_equals_eager():
    torch._dynamo.reset()
    for dtype, cfg in (
        (torch.bfloat16, dict(activation=tq.NVFP4Config(), weight=tq.NVFP4Config())),
        (torch.float32, INT4),
    ):
        conv = tq.convert(_prepared(64, 8, dtype, **cfg))
        x = torch.randn(5, 64, dtype=dtype)
        _same_bits(torch.compile(conv, fullgraph=True)(x), conv(x), str(cfg["weight"]))


def test_state_dict_of_another_format_raises_naming_the_key():
    """Formats whose buffers share names and shapes (e4m3 / e5m2 codes; MXFP4 blocks of 16 /
    NVFP4 without the per-tensor scale: e8m0 / e4m3 scales) must not load into each other: a
    copy would convert the codes by value into other weights."""
    e4m3, e5m2, fp4 = torch.float8_e4m3fn, torch.float8_e5m2, torch.float4_e2m1fn_x2
    pairs = (
        (tq.MXConfig(e4m3), tq.MXConfig(e5m2), "weight_codes"),
        (tq.MXConfig(fp4, 16), tq.NVFP4Config(False), "weight_scale"),
    )
    for src, dst, key in pairs:
        state = tq.convert(_prepared(64, 8, torch.float32, activation=src, weight=src)).state_dict()
        other = tq.QuantizedMXLinear(64, 8, activation=dst, weight=dst)
        before = {k: v.clone() for k, v in other.state_dict().items()}
        with pytest.raises(ValueError, match=key):
            other.load_state_dict(state)
        for k, v in other.state_dict().items():  # nothing of it was loaded
            assert torch.equal(_bytes(v), _bytes(before[k])), k


def test_tied_layers_share_their_buffers():
    for cfg in (
        dict(activation=MX_CASES["e5m2-ceil-32"][0], weight=MX_CASES["e5m2-ceil-32"][1]),
        dict(activation=tq.NVFP4Config(), weight=tq.NVFP4Config()),
        dict(activation=tq.NVFP4Config(True), weight=tq.NVFP4Config(True)),
        INT4,
    ):
        a, b = tq.Linear(64, 64, **cfg), tq.Linear(64, 64, **cfg)
        b.weight = a.weight
        with torch.no_grad():  # a NaN: NaN codes / scales must still compare equal to themselves
            a.weight[0, 0] = float("nan")
        model = nn.Sequential(a, b)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "quantized differently" warning
            tq.convert(model)
        names = [k for k, v in model[0].named_buffers() if k.startswith("weight_")]
        pts = isinstance(cfg["weight"], tq.NVFP4Config) and cfg["weight"].use_per_tensor_scale
        assert len(names) == (3 if pts else 2)
        for k in names:
            assert getattr(model[1], k) is getattr(model[0], k), (cfg["weight"], k)
        held = {id(b): b.numel() * b.element_size() for b in model.buffers()}  # once each
        assert tq.weight_nbytes(model) == {
            "stored": sum(held.values()),
            "bf16": 2 * (64 * 64 + 2 * 64),
        }


def test_jit_trace_of_converted_layers_equals_eager():
    """torch.jit.trace records a converted layer (the e8m0 scales looked up, not bit-cast: the
    tracer has no dtype view) and the trace computes the eager bits."""
    for cfg in (
        dict(activation=tq.MXConfig(), weight=tq.MXConfig()),
        dict(activation=tq.MXConfig(torch.float8_e4m3fn), weight=tq.MXConfig(torch.float8_e4m3fn)),
        dict(activation=tq.NVFP4Config(), weight=tq.NVFP4Config()),
        INT4,
    ):
        conv = tq.convert(_prepared(64, 16, torch.float32, **cfg))
        x = torch.randn(3, 64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on Python control flow
            traced = torch.jit.trace(conv, (x,), check_trace=False)
        _same_bits(traced(torch.randn(3, 64).mul_(0).add_(x)), conv(x), str(cfg["weight"]))


@torch.no_grad()
def test_mixed_model_converts_in_one_call_all_or_nothing():
    fp4, nv = MX_CASES["fp4-rceil-32"][0], tq.NVFP4Config()
    model = nn.Sequential(
        tq.Linear(64, 32),
        tq.Linear(32, 32, activation=tq.Float8Config(), weight=tq.Float8Config()),
        tq.Linear(32, 32, activation=fp4, weight=fp4),
        tq.Linear(32, 32, activation=nv, weight=nv),
        tq.Linear(32, 16, **INT4),
    ).eval()
    x = torch.randn(3, 64)
    want = model(x)
    broken = copy.deepcopy(model)
    broken[3].half()  # no fp16 MX / NVFP4 numerics: refused, nothing converted
    with pytest.raises(ValueError, match=r"^3: dtype: MX / NVFP4 .*float16"):
        tq.convert(broken)
    assert all(type(m) is tq.Linear for m in broken)
    tq.convert(model)
    kinds = [tq.QuantizedLinear, tq.QuantizedFloat8Linear, tq.QuantizedMXLinear,
             tq.QuantizedMXLinear, tq.QuantizedFloat8Linear]  # fmt: skip
    assert [type(m) for m in model] == kinds
    _same_bits(model(x), want)
    assert tq.weight_nbytes(model)["stored"] == sum(m.weight_nbytes() for m in model)
    mods = list(model)
    pytest.importorskip("torchao.quantization.qat")
    tq.to_torchao(model)  # no torchao module to map converted ones onto: left as they are
    assert all(a is b for a, b in zip(model, mods, strict=True))


def test_constructor_arguments_name_the_argument():
    nv, mx = tq.NVFP4Config(), tq.MXConfig()
    with pytest.raises(TypeError, match="^weight: expected a triton_qat.MXConfig or NVFP4Config"):
        tq.QuantizedMXLinear(32, 8, weight=tq.QuantConfig())
    with pytest.raises(ValueError, match="^activation: with a NVFP4Config weight"):
        tq.QuantizedMXLinear(32, 8, activation=mx, weight=nv)
    with pytest.raises(ValueError, match=r"^in_features: 48 is not a multiple .*block_size=32"):
        tq.QuantizedMXLinear(48, 8, weight=mx)
    with pytest.raises(ValueError, match="^dtype: MX / NVFP4 .*float16"):
        tq.QuantizedMXLinear(32, 8, weight=nv, dtype=torch.float16)
    with pytest.raises(TypeError, match="^dtype: expected float32, float16 or bfloat16"):
        tq.QuantizedMXLinear(32, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="^out_features: expected a positive int"):
        tq.QuantizedMXLinear(32, 0)
    with pytest.raises(ValueError, match="^weight.group_size: expected a divisor of 96"):
        tq.QuantizedFloat8Linear(96, 8, weight=tq.Float8Int4WeightConfig(128))
    with pytest.raises(ValueError, match="^input: expected last dim"):
        tq.QuantizedMXLinear(32, 8, weight=nv)(torch.randn(2, 16))
    assert tq.QuantizedMXLinear(32, 8, weight=nv).activation_config == nv  # the weight's
