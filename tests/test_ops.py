"""torch.library registration: opcheck on every op, and torch.compile(fullgraph=True) of forward +
backward of a model of tq.Linear layers in one frame, matching eager, without recompiles."""

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

import triton_qat as tq
from triton_qat import ops


def _opcheck(op, args):
    torch.library.opcheck(op, args)


def test_opcheck_quantize(device):
    x = torch.randn(13, 40, device=device)
    _opcheck(ops.quantize, (x, -128, 127, 40, False, False, True, None, None))
    _opcheck(ops.quantize, (x, -8, 7, 8, True, False, False, None, None))
    _opcheck(ops.quantize, (x, -128, 127, 40, False, True, True, None, None))
    scale = torch.tensor([[0.05]], device=device)
    zp = torch.tensor([[3]], dtype=torch.int32, device=device)
    _opcheck(ops.quantize, (x, 0, 255, 40, False, False, True, scale, zp))
    # no code sums (an activation for symmetric weights): [R, 0], real and fake alike
    _opcheck(ops.quantize, (x, -128, 127, 40, False, False, True, None, None, False, 0, False))


def test_quantize_without_sums_matches_with_and_checks_sum_group(device):
    x = torch.randn(13, 40, device=device)
    full = ops.quantize(x, -128, 127, 40, False, False, True, None, None)
    bare = ops.quantize(x, -128, 127, 40, False, False, True, None, None, with_sums=False)
    assert bare[4].shape == (13, 0)
    assert all(torch.equal(a, b) for a, b in zip(full[:4], bare[:4], strict=True))
    with pytest.raises(ValueError, match="sum_group"):
        ops.quantize(x, -128, 127, 40, False, False, True, None, None, sum_group=8,
                     with_sums=False)  # fmt: skip


def test_opcheck_fake_quantize(device):
    x = torch.randn(13, 40, device=device, requires_grad=True)
    _opcheck(ops.fake_quantize, (x, -128, 127, 40, False, False, None, None))
    _opcheck(ops.fake_quantize, (x, -8, 7, 8, True, False, None, None))
    xt = torch.randn(40, 13, device=device).t().requires_grad_()  # non-contiguous input
    _opcheck(ops.fake_quantize, (xt, -128, 127, 40, False, False, None, None))


def test_compile_fake_quantize_of_a_transposed_view(device):
    torch._dynamo.reset()
    fn = torch.compile(lambda a: tq.fake_quantize(a.t(), tq.QuantConfig()) * 2, fullgraph=True)
    a = torch.randn(16, 8, device=device)
    assert torch.equal(fn(a), tq.fake_quantize(a.t(), tq.QuantConfig()) * 2)


def test_opcheck_int8_linear(device):
    x = torch.randn(13, 40, device=device)
    w = torch.randn(24, 40, device=device)
    qa = ops.quantize(x, -128, 127, 40, False, False, True, None, None)
    qw = ops.quantize(w, -8, 7, 8, True, False, False, None, None)
    bias = torch.randn(24, device=device)
    _opcheck(ops.int8_linear, (qa[0], qa[1], qa[2], qw[0], qw[1], qw[4], bias, torch.float32))
    _opcheck(ops.int8_linear, (qa[0], qa[1], qa[2], qw[0], qw[1], qw[4], None, torch.bfloat16))


def _x_state(x):
    """The activation state qat_linear takes: quantize(x.reshape(-1, K)) with bit mask."""
    x2d = x.detach().reshape(-1, x.shape[-1])
    return list(ops.quantize(x2d, -128, 127, x2d.shape[1], False, False, True, None, None)[:4])


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("w_group", [8, 40], ids=["g8", "perchannel"])
def test_opcheck_qat_linear_and_backward(bias, w_group, device):
    x = torch.randn(2, 7, 40, device=device, requires_grad=True)
    w = torch.randn(24, 40, device=device, requires_grad=True)
    b = torch.randn(24, device=device, requires_grad=True) if bias else None
    state = _x_state(x)
    _opcheck(ops.qat_linear, (x, *state, w, b, True, -8, 7, w_group, False, None))
    dy = torch.randn(2, 7, 24, device=device)
    w_args = (w.detach(), -8, 7, w_group, False, None)
    _opcheck(ops.qat_linear_backward, (dy, *state, *w_args, True, True, bias))
    _opcheck(ops.qat_linear_backward, (dy, *state, *w_args, False, True, False))
    if w_group == 40:  # a given (torch.ao) per-channel scale: these arguments whatever w_group
        w_scale = torch.rand(24, 1, device=device) + 0.01
        _opcheck(ops.qat_linear, (x, *state, w, b, True, -128, 127, 40, False, w_scale))


def test_backward_keeps_nothing_weight_sized(device):
    """Autograd keeps the activation state and the weight parameter itself (no copy): no
    weight-sized int8 codes or masks between forward and backward."""
    lin = tq.Linear(64, 48, device=device, weight=tq.QuantConfig(bits=4, granularity="per_group",
                                                                group_size=16, symmetric=True))  # fmt: skip
    x = torch.randn(5, 64, device=device, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        lin(x).sum().backward()
    params = {p.data_ptr() for p in lin.parameters()}
    kept = [t for t in saved if t is not None and t.data_ptr() not in params]
    assert any(t.data_ptr() == lin.weight.data_ptr() for t in saved if t is not None)
    assert all(t.shape[0] == 5 for t in kept), [tuple(t.shape) for t in kept]  # per token only


def test_forward_quantizes_only_what_its_gemm_reads(fwd_path, device, request):
    """The forward quantizes the weight without its clamp mask (the backward re-derives it),
    without zero points (symmetric) and, where the GEMM dequantizes the weight instead of
    correcting zero points, without code sums; the activation has no code sums under symmetric
    weights. The output is unchanged."""
    from triton_qat import dispatch

    torch.manual_seed(0)
    lin = tq.Linear(64, 48, device=device, weight=tq.QuantConfig(bits=4, granularity="per_group",
                                                                group_size=32, symmetric=True))  # fmt: skip
    x = torch.randn(5, 64, device=device)
    with torch.no_grad():
        want = lin(x)
        launches = request.getfixturevalue("quantize_spy")
        got = lin(x.clone())
    assert torch.equal(got, want)
    calls = [(shape, q.mask.numel() > 0, q.code_sum.numel() > 0, q.zero_point.numel() > 0)
             for shape, _, q in launches]  # fmt: skip
    act, weight = calls
    assert act == ((5, 64), True, False, True)
    sums = dispatch.use_kernels(x) and fwd_path.path == "int8"
    assert weight == ((48, 64), False, sums, False)  # symmetric: no zero points either


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_backward_rederives_only_the_values_and_mask_it_reads(symmetric, device, request):
    """The backward's weight quantize writes y and the clamp mask, no codes, no code sums and no
    zero points (y's are computed in registers), symmetric or not; each gradient not asked for
    is its own empty tensor. The gradients are unchanged."""
    wcfg = tq.QuantConfig(bits=4, granularity="per_group", group_size=32, symmetric=symmetric)
    torch.manual_seed(0)
    lin = tq.Linear(64, 48, device=device, weight=wcfg)
    x = torch.randn(5, 64, device=device, requires_grad=True)
    dy = torch.randn(5, 48, device=device)
    lin(x).backward(dy)
    want = [x.grad.clone(), lin.weight.grad.clone(), lin.bias.grad.clone()]
    x.grad = lin.weight.grad = lin.bias.grad = None
    launches = request.getfixturevalue("quantize_spy")
    out = lin(x)
    del launches[:]  # the forward's
    out.backward(dy)
    calls = [(q.codes.numel() > 0, q.code_sum.numel() > 0, q.zero_point.numel() > 0,
              q.mask.numel() > 0, q.y is not None) for _, _, q in launches]  # fmt: skip
    assert calls == [(False, False, False, True, True)]
    for got, w in zip([x.grad, lin.weight.grad, lin.bias.grad], want, strict=True):
        assert torch.equal(got, w)
    state = ops.quantize(x.detach(), -128, 127, 64, False, False, True, None, None)[:4]
    grads = ops.qat_linear_backward(dy, *state, lin.weight.detach(), -8, 7, 32, False, None,
                                    need_x=False, need_w=True, need_bias=False,
                                    w_symmetric=symmetric)  # fmt: skip
    assert [g.shape for g in grads] == [(0,), (48, 64), (0,), (0,)]
    assert len({id(g) for g in grads if g.numel() == 0}) == 3  # one empty tensor each


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_per_tensor_weights_ignore_the_group_size(dtype, device):
    """The raw qat_linear op with per-tensor weights runs one scale per weight whatever
    w_group_size says (the forward's GEMM config and its code-sum decision see group K)."""
    torch.manual_seed(0)
    x = torch.randn(4, 64, device=device, dtype=dtype)
    w = torch.randn(8, 64, device=device, dtype=dtype)
    state = ops.quantize(x, -128, 127, 64, False, False, True, None, None)[:4]
    outs = [ops.qat_linear(x, *state, w, None, True, -128, 127, g, True, None) for g in (64, 32)]
    assert torch.equal(outs[0], outs[1])


def _mlp(device, dtype=torch.float32, **cfg):
    torch.manual_seed(0)
    return nn.Sequential(
        tq.Linear(32, 64, device=device, dtype=dtype, **cfg),
        nn.ReLU(),
        tq.Linear(64, 16, device=device, dtype=dtype, **cfg),
    )


def _step(model, x):
    out = model(x)
    out.square().mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return out.detach(), grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_compile_fullgraph_matches_eager(dtype, device):
    torch._dynamo.reset()
    counters.clear()
    model = _mlp(device, dtype)
    compiled = torch.compile(model, fullgraph=True)
    for _batch in range(3):  # same shapes: one compile, no recompiles
        x = torch.randn(5, 9, 32, device=device, dtype=dtype, requires_grad=True)
        eager_out, eager_grads = _step(model, x)
        comp_out, comp_grads = _step(compiled, x)
        # the custom ops run the same kernels; ReLU/mean may be fused differently by Inductor
        torch.testing.assert_close(comp_out, eager_out, rtol=0, atol=0)
        for g, e in zip(comp_grads, eager_grads, strict=True):
            torch.testing.assert_close(
                g, e, rtol=1e-5 if dtype == torch.float32 else 1e-2, atol=1e-6
            )
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_compile_ao_numerics_fullgraph(device):
    """The torch.ao family (observer buffers updated inside the graph) compiles too."""
    import torch.ao.quantization as q

    torch._dynamo.reset()
    counters.clear()
    eager = _mlp(device, qconfig=q.default_dynamic_qat_qconfig)
    model = _mlp(device, qconfig=q.default_dynamic_qat_qconfig)
    compiled = torch.compile(model, fullgraph=True)
    for _ in range(2):
        x = torch.randn(6, 32, device=device)
        e_out, _ = _step(eager, x)
        c_out, _ = _step(compiled, x)
        torch.testing.assert_close(c_out, e_out, rtol=0, atol=0)
    for (name, a), (_, b) in zip(
        eager.state_dict().items(), model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert counters["stats"]["unique_graphs"] == 1


_FRESH_LAYERS = {
    "int8": {},
    "weight-only": dict(activation=tq.NOT_QUANTIZED),
    "float8": dict(activation=tq.Float8Config(), weight=tq.Float8Config()),
    "mx": dict(
        activation=tq.MXConfig(torch.float8_e4m3fn), weight=tq.MXConfig(torch.float8_e4m3fn)
    ),
    "torch.ao": dict(qconfig=torch.ao.quantization.default_dynamic_qat_qconfig),
}


@pytest.mark.parametrize("cfg", list(_FRESH_LAYERS), ids=list(_FRESH_LAYERS))
def test_a_new_layer_compiles_once_and_under_checkpoint(cfg):
    """A layer never called eagerly: its first compiled forward changes no attribute of it, so
    the frame compiles once (not twice: a guard on a new attribute), and activation checkpointing
    under fullgraph=True, which refuses side effects, compiles too."""
    from torch._dynamo.testing import CompileCounter
    from torch.utils.checkpoint import checkpoint

    x = torch.randn(2, 32, requires_grad=True)
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(_mlp("cpu", **_FRESH_LAYERS[cfg]), fullgraph=True, backend=counter)
    for _ in range(3):
        compiled(x).sum().backward()
    assert counter.frame_count == 1
    torch._dynamo.reset()
    model = _mlp("cpu", **_FRESH_LAYERS[cfg])
    blocked = torch.compile(lambda t: checkpoint(model, t, use_reentrant=False), fullgraph=True,
                            backend="aot_eager")  # fmt: skip
    blocked(x).sum().backward()
    assert model[0].weight.grad is not None


_I4G8 = dict(bits=4, granularity="per_group", group_size=8)
_EAGER_FORWARDS = {
    "int8": {},
    "asym-int4-g8": dict(weight=tq.QuantConfig(**_I4G8)),
    "range-learning": dict(weight=tq.QuantConfig(**_I4G8, symmetric=True, range_learning=True)),
    "weight-only": dict(activation=tq.NOT_QUANTIZED, weight=tq.QuantConfig(**_I4G8)),
    "torch.ao": dict(qconfig=torch.ao.quantization.default_dynamic_qat_qconfig),
    "float8": dict(activation=tq.Float8Config(), weight=tq.Float8Config()),
}


@pytest.mark.parametrize("cfg", list(_EAGER_FORWARDS), ids=list(_EAGER_FORWARDS))
def test_compiled_autograd_of_an_eager_forward(cfg):
    """Compiled autograd traces the eager forward's backward (the direct path's
    autograd.Function): it runs the backward op there, not the raw launches (Dynamo ran the
    launchers on fake tensors and failed), with the eager backward's gradients."""
    import torch._dynamo.config as dynamo_config

    dtype = torch.bfloat16 if cfg == "float8" else torch.float32  # float8: the fp8 GEMM's path
    model = _mlp("cpu", dtype, **_EAGER_FORWARDS[cfg])
    x = torch.randn(2, 32, dtype=dtype, requires_grad=True)
    want = torch.autograd.grad(model(x).square().sum(), [x, *model.parameters()])
    torch._dynamo.reset()
    loss = model(x).square().sum()
    with dynamo_config.patch(compiled_autograd=True):
        got = torch.compile(lambda: torch.autograd.grad(loss, [x, *model.parameters()]),
                            backend="aot_eager")()  # fmt: skip
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def _qat_args(x, w, **kw):
    K = x.shape[-1]
    M = x.numel() // K if K else 0
    state = dict(
        x_codes=torch.zeros(M, K, dtype=torch.int8, device=x.device),
        x_scale=torch.ones(M, 1, device=x.device),
        x_zero_point=torch.zeros(M, 1, dtype=torch.int32, device=x.device),
        x_mask=torch.zeros(M, (K + 7) // 8, dtype=torch.uint8, device=x.device),
    )
    args = dict(weight=w, bias=None, a_asymmetric=True, w_qmin=-128, w_qmax=127,
                w_group_size=w.shape[-1], w_per_tensor=False, w_scale=None)  # fmt: skip
    return {**state, **args, **kw}


@pytest.mark.parametrize(
    "make,needle",
    [
        # the hostile trial: weight K=12 against x K=16 read out of bounds on the kernel path
        (lambda d: ((torch.randn(5, 16, device=d), torch.randn(4, 12, device=d)), {}), "x"),
        (lambda d: ((torch.randn(5, 12, device=d), torch.randn(4, 16, device=d)), {}), "x"),
        (lambda d: ((torch.randn(5, 16, device=d), torch.randn(4, 16, device=d)),
                    {"w_group_size": 5}), "w_group_size"),
        (lambda d: ((torch.randn(5, 16, device=d), torch.randn(4, 16, device=d)),
                    {"w_qmin": 0, "w_qmax": 300}), "w_qmin"),
        (lambda d: ((torch.randn(5, 16, device=d), torch.randn(4, 16, device=d)),
                    {"bias": torch.randn(3, device=d)}), "bias"),
        (lambda d: ((torch.randn(5, 16, device=d), torch.randn(4, 16, device=d)),
                    {"x_scale": torch.ones(2, 2, device=d)}), "x_scale"),
        (lambda d: ((torch.randn(5, 16, device=d), torch.randn(4, 16, device=d)),
                    {"w_scale": torch.ones(3, 1, device=d)}), "w_scale"),
        (lambda d: ((torch.randn(5, 16, device=d), torch.randn(4, 16, device=d)),
                    {"x_zero_point": torch.zeros(5, 1, device=d)}), "x_zero_point"),
        (lambda d: ((torch.randn(5, 16, device=d), torch.randn(4, 16, device=d)),
                    {"x_mask": torch.zeros(5, 16, dtype=torch.uint8, device=d)}), "x_mask"),
        (lambda d: ((torch.randn(5, 16, device=d).int(), torch.randn(4, 16, device=d)), {}), "x"),
        (lambda d: ((torch.randn(5, 16, device=d), torch.randn(16, device=d)), {}), "weight"),
    ],
    ids=["w-narrower", "w-wider", "group", "range", "bias", "x_scale", "w_scale", "x_zp-dtype",
         "x_mask-bytes", "int-x", "1d-weight"],
)  # fmt: skip
def test_qat_linear_op_checks_its_arguments(make, needle, device):
    (x, w), kw = make(device)
    with pytest.raises((ValueError, TypeError), match=needle):
        ops.qat_linear(x, **_qat_args(x, w, **kw))
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:  # the fake impl checks too
        args = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v
                for k, v in _qat_args(x, w, **kw).items()}  # fmt: skip
        with pytest.raises((ValueError, TypeError), match=needle):
            ops.qat_linear(mode.from_tensor(x), **args)


def test_quantize_and_int8_linear_ops_check_their_arguments(device):
    x = torch.randn(6, 16, device=device)
    with pytest.raises(ValueError, match="group_size"):
        ops.quantize(x, -128, 127, 5, False, False, False, None, None)
    with pytest.raises(ValueError, match="pack_mask"):
        ops.quantize(x, -128, 127, 8, False, False, True, None, None)
    with pytest.raises(ValueError, match="x"):
        ops.fake_quantize(x[0], -128, 127, 16, False, False, None, None)
    with pytest.raises(TypeError, match="scale"):
        ops.quantize(x, -128, 127, 16, False, False, True, torch.ones(1, 1).double(), None)
    qa = ops.quantize(x, -128, 127, 16, False, False, True, None, None)
    qw = ops.quantize(torch.randn(4, 16, device=device), -8, 7, 8, True, False, False, None, None)
    good = [qa[0], qa[1], qa[2], qw[0], qw[1], qw[4], None, torch.float32]
    for i, bad, needle in [
        (3, qw[0][:, :12], "w_codes"),  # K mismatch
        (1, qa[1][:3], "x_scale"),
        (4, qw[1][:, :1].expand(4, 3).contiguous(), "w_scale"),  # 3 groups do not divide K=16
        (5, qw[4][:2], "w_code_sum"),
        (6, torch.randn(5, device=device), "bias"),
        (0, qa[0].float(), "x_codes"),
    ]:
        args = list(good)
        args[i] = bad
        with pytest.raises((ValueError, TypeError), match=needle):
            ops.int8_linear(*args)
    with pytest.raises(TypeError, match="w_dtype"):
        ops.int8_linear(*good, w_dtype=torch.int8)
    with pytest.raises(ValueError, match="w_code_offset"):
        ops.int8_linear(*good, w_code_offset=5)
    w = torch.randn(4, 16, device=device)
    state = _x_state(x)
    dy = torch.randn(6, 4, device=device)
    w_args = (w, -8, 7, 8, False, None)
    with pytest.raises(ValueError, match="grad_out"):
        ops.qat_linear_backward(dy[:, :3], *state, *w_args, True, True, False)
    with pytest.raises(ValueError, match="x_mask"):
        ops.qat_linear_backward(dy, *state[:3], state[3][:2], *w_args, True, True, False)
    with pytest.raises(ValueError, match="weight"):
        ops.qat_linear_backward(dy, *state, w[:, :8], -8, 7, 8, False, None, True, True, False)


def test_quantize_fake_matches_real_without_columns_and_ranges_fit_int8(device):
    x = torch.randn(3, 0, device=device)
    for per_tensor in (False, True):
        real = ops.quantize(x, -128, 127, 1, False, per_tensor, False, None, None)
        with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
            fake = ops.quantize(mode.from_tensor(x), -128, 127, 1, False, per_tensor, False, None,
                                None)  # fmt: skip
        assert [tuple(t.shape) for t in real] == [tuple(t.shape) for t in fake]
    with pytest.raises(ValueError, match="qmin"):  # -100 would be stored as -228: wraps in int8
        ops.quantize(
            torch.randn(3, 8, device=device), -100, 150, 8, False, False, False, None, None
        )
