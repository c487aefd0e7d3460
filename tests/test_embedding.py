"""tq.Embedding / tq.QuantizedEmbedding: fake-quantized tables (bit-exact vs the plain-torch
reference, exact STE gradients), prepare(embedding=...), convert (bit-exact lookups, int4 packed,
state_dict), an embedding tied to lm_head through prepare / convert, torch.compile."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from conftest import DTYPES, dt_id
from torch import nn
from torch._dynamo.utils import counters

import triton_qat as tq
from triton_qat.reference import fake_quantize_with_mask

I4G32 = tq.QuantConfig(bits=4, granularity="per_group", group_size=32, symmetric=True)
I8PC = tq.QuantConfig(granularity="per_channel", symmetric=True)
I2G16 = tq.QuantConfig(bits=2, granularity="per_group", group_size=16, symmetric=True)
CONFIGS = {"i4g32": I4G32, "i8pc": I8PC, "i2g16": I2G16}


class TinyGPT(nn.Module):
    """Token embedding tied to lm_head, one MLP block: the layout of a GPT's ends."""

    def __init__(self, vocab: int = 80, dim: int = 64, dtype=torch.float32, tied: bool = True):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim, dtype=dtype)
        self.fc = nn.Linear(dim, dim, dtype=dtype)
        self.lm_head = nn.Linear(dim, vocab, bias=False, dtype=dtype)
        if tied:
            self.lm_head.weight = self.tok.weight

    def forward(self, idx):
        return self.lm_head(F.gelu(self.fc(self.tok(idx))))


@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
@pytest.mark.parametrize("name", CONFIGS)
def test_embedding_bit_exact_with_exact_ste_gradient(name, dtype, device):
    cfg = CONFIGS[name]
    emb = tq.Embedding(70, 64, device=device, dtype=dtype, weight=cfg)
    emb.weight.data[3] = 0  # an all-zero row: scale eps, codes 0
    idx = torch.tensor([[0, 3, 69, 3], [5, 5, 1, 0]], device=device)
    w_fq, mask = fake_quantize_with_mask(emb.weight.detach(), cfg)  # independent plain torch
    out = emb(idx)
    assert out.dtype == dtype and out.shape == (2, 4, 64)
    assert torch.equal(out, F.embedding(idx, w_fq))
    g = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, emb.weight, g)
    w = emb.weight.detach().clone().requires_grad_()
    (plain,) = torch.autograd.grad(F.embedding(idx, w), w, g)
    assert torch.equal(grad, torch.where(mask, plain, torch.zeros_like(plain)))


def test_embedding_options_and_toggle(device):
    base = nn.Embedding(20, 32, padding_idx=2, max_norm=1.0, scale_grad_by_freq=True).to(device)
    base.weight.data *= 3
    emb = tq.Embedding.from_float(base, weight=I4G32)
    assert emb.weight is base.weight and emb.padding_idx == 2 and emb.max_norm == 1.0
    before = emb.weight.detach().clone()
    idx = torch.tensor([1, 2, 2, 7], device=device)
    out = emb(idx)
    w_fq, _ = fake_quantize_with_mask(before, I4G32)
    ref = F.embedding(idx, w_fq.clone(), 2, 1.0, 2.0, True)
    assert torch.equal(out, ref)
    assert torch.equal(emb.weight, before)  # max_norm renormalizes the fake-quantized copy only
    out.sum().backward()
    assert not emb.weight.grad[2].any()  # padding_idx: no gradient
    emb.disable_fake_quant()
    assert not emb.fake_quant_enabled and "fake_quant=False" in repr(emb)
    plain = nn.Embedding(20, 32, padding_idx=2, device=device)
    plain.weight = emb.weight
    emb.max_norm = None
    assert torch.equal(emb(idx), plain(idx))
    assert emb.enable_fake_quant().fake_quant_enabled
    back = emb.to_float()
    assert type(back) is nn.Embedding and back.weight is emb.weight and back.padding_idx == 2


def test_embedding_config_errors():
    with pytest.raises(ValueError, match="granularity must be one of"):
        tq.Embedding(4, 8, weight=tq.QuantConfig())  # per_token
    with pytest.raises(ValueError, match="granularity must be one of"):
        tq.Embedding(4, 8, weight=tq.QuantConfig(granularity="per_tensor", symmetric=True))
    with pytest.raises(ValueError, match="group_size: expected a divisor of embedding_dim = 48"):
        tq.Embedding(4, 48, weight=I4G32)
    asym = tq.QuantConfig(granularity="per_channel", symmetric=True)
    object.__setattr__(asym, "symmetric", False)  # asymmetric weights: not for tables
    with pytest.raises(ValueError, match="weight.symmetric"):
        tq.Embedding(4, 8, weight=asym)
    with pytest.raises(ValueError, match="sparse"):
        tq.Embedding(4, 8, sparse=True)
    with pytest.raises(TypeError, match="dtype"):
        tq.Embedding(4, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="embedding_dim: expected a positive int, got 0"):
        tq.Embedding(4, 0)  # no row to quantize (and none its QuantizedEmbedding could hold)
    with pytest.raises(TypeError, match="QuantConfig"):
        tq.Embedding(4, 8, weight="int4")
    with pytest.raises(TypeError, match="embedding: expected a triton_qat.QuantConfig"):
        tq.prepare(TinyGPT(), embedding=object())
    model = TinyGPT()
    with pytest.raises(ValueError, match="embedding: embedding tables"):
        tq.prepare(model, embedding=tq.QuantConfig())
    assert type(model.fc) is nn.Linear  # nothing swapped before the error


def test_prepare_embedding_keyword(device):
    model = nn.ModuleDict(
        {"a": nn.Embedding(10, 64), "b": nn.Embedding(10, 48), "c": nn.Embedding(10, 64)}
    ).to(device)
    tq.prepare(model)  # default: embeddings left alone
    assert all(type(m) is nn.Embedding for m in model.values())
    params = list(model.parameters())
    with pytest.warns(UserWarning, match=r"b \(embedding_dim=48\)"):
        tq.prepare(model, embedding=I4G32, filter_fn=lambda mod, fqn: fqn != "c")
    assert type(model["a"]) is tq.Embedding and model["a"].weight_config == I4G32
    assert type(model["b"]) is nn.Embedding and type(model["c"]) is nn.Embedding
    assert all(a is b for a, b in zip(params, model.parameters(), strict=True))
    root = tq.prepare(nn.Embedding(5, 32), embedding=I8PC)  # the root module itself
    assert type(root) is tq.Embedding


@pytest.mark.parametrize("dtype", DTYPES, ids=dt_id)
@pytest.mark.parametrize("name", ["i4g32", "i8pc"])
def test_convert_bit_exact_and_state_dict(name, dtype, device):
    cfg = CONFIGS[name]
    model = nn.Sequential(
        tq.Embedding(33, 64, max_norm=2.0, device=device, dtype=dtype, weight=cfg)
    )
    idx = torch.randint(0, 33, (3, 5), device=device)
    expected = model(idx)
    conv = tq.convert(copy.deepcopy(model))
    q = conv[0]
    assert type(q) is tq.QuantizedEmbedding and q.output_dtype == dtype
    codes_shape = (33, 32) if cfg.bits <= 4 else (33, 64)
    assert q.weight_codes.shape == codes_shape and q.weight_scale.dtype == torch.float32
    assert torch.equal(conv(idx), expected)
    assert torch.equal(q.dequantize(), fake_quantize_with_mask(model[0].weight.detach(), cfg)[0])
    assert q.weight_nbytes() < model[0].weight.numel() * model[0].weight.element_size()
    # state_dict round trip into a converted model of other weights
    buf = io.BytesIO()
    torch.save(conv.state_dict(), buf)
    other = tq.convert(
        nn.Sequential(tq.Embedding(33, 64, max_norm=2.0, device=device, dtype=dtype, weight=cfg))
    )
    assert not torch.equal(other(idx), expected)
    other.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    assert torch.equal(other(idx), expected)
    assert conv.to(torch.float16)[0].weight_codes.dtype == q.weight_codes.dtype  # casts: no-op
    with pytest.raises(TypeError, match="index tensor"):
        q(idx.float())


def test_tied_embedding_and_lm_head_through_prepare_and_convert(device):
    model = TinyGPT().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    tq.prepare(model, weight=I4G32, embedding=I4G32)
    assert type(model.tok) is tq.Embedding and type(model.lm_head) is tq.Linear
    assert model.lm_head.weight is model.tok.weight  # still one Parameter
    idx = torch.randint(0, 80, (2, 6), device=device)
    for _ in range(2):
        F.cross_entropy(model(idx).flatten(0, 1), idx.flatten()).backward()
        opt.step()
        opt.zero_grad()
    assert model.lm_head.weight is model.tok.weight
    expected = model.eval()(idx)
    conv = tq.convert(copy.deepcopy(model))
    assert type(conv.tok) is tq.QuantizedEmbedding and type(conv.lm_head) is tq.QuantizedLinear
    assert conv.lm_head.weight_codes is conv.tok.weight_codes
    assert conv.lm_head.weight_scale is conv.tok.weight_scale
    assert torch.equal(conv(idx), expected)
    moved = copy.deepcopy(conv).to(device)  # copies and moves keep the buffers shared
    assert moved.lm_head.weight_codes is moved.tok.weight_codes
    fresh = tq.convert(tq.prepare(TinyGPT().to(device), weight=I4G32, embedding=I4G32))
    fresh.load_state_dict(conv.state_dict())
    assert fresh.lm_head.weight_codes is fresh.tok.weight_codes
    assert torch.equal(fresh(idx), expected)
    # per channel: the same layout (rows of [vocab, dim]) for both
    pc = tq.convert(tq.prepare(TinyGPT().to(device), weight=I8PC, embedding=I8PC))
    assert pc.lm_head.weight_scale is pc.tok.weight_scale


def test_tied_quantized_differently_warns(device):
    model = tq.prepare(TinyGPT().to(device), weight=I8PC, embedding=I4G32)
    assert model.lm_head.weight is model.tok.weight
    with pytest.warns(UserWarning, match=r"tied.*: lm_head \(tied to tok\)"):
        conv = tq.convert(model)
    assert conv.lm_head.weight_codes is not conv.tok.weight_codes


def test_compile_fullgraph_prepared_model_with_embedding(device):
    torch._dynamo.reset()
    counters.clear()
    model = tq.prepare(TinyGPT().to(device), weight=I4G32, embedding=I4G32)
    compiled = torch.compile(model, fullgraph=True)
    idx = torch.randint(0, 80, (2, 5), device=device)
    out = compiled(idx)
    out.square().mean().backward()
    grad = model.tok.weight.grad.clone()
    model.zero_grad()
    eager = model(idx)
    eager.square().mean().backward()
    # the custom ops run the same kernels; Inductor may round GELU differently
    torch.testing.assert_close(out, eager, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, model.tok.weight.grad, rtol=1e-5, atol=1e-7)
    assert torch.equal(torch.compile(model.tok, fullgraph=True)(idx), model.tok(idx))
    assert not counters["graph_break"], dict(counters["graph_break"])
    conv = tq.convert(model.eval())
    torch.testing.assert_close(
        torch.compile(conv, fullgraph=True)(idx), model(idx), rtol=1e-6, atol=1e-6
    )


def test_range_learning_is_rejected_for_embeddings():
    cfg = tq.QuantConfig(granularity="per_channel", symmetric=True, range_learning=True)
    with pytest.raises(ValueError, match="range_learning"):
        tq.Embedding(16, 8, weight=cfg)
