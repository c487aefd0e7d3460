"""perf/train_step.py, the training-step measurement of `make gpu-report` (issue 29): the tiny
decoder learns, every provider starts from the same weights, bad settings are errors naming the
argument, a missing torchao gives "not measured" rows, and the readers of the rows (ratios to bf16,
the headline) say what was measured and nothing else. The whole measurement runs in
tests/test_gpu_report.py's dry run."""

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "perf"))

import train_step as ts  # noqa: E402

import triton_qat as tq  # noqa: E402

CPU = torch.device("cpu")


def test_tiny_decoder_loss_is_finite_and_falls():
    """bf16, eager: 3 passes over the 4 batches; each batch's loss falls by more than 0.3 from the
    first pass to the third (measured: 0.68-0.92; the batches follow one fixed permutation of the
    vocabulary, so there is something to learn)."""
    s = ts.Settings.dry()
    model, opt, _ = ts.build("bf16", "eager", "int8", s, CPU)
    data = ts.batches(s.dims, 4, CPU, s.seed)
    losses = []
    for i in range(12):
        loss = model.loss(*data[i % 4])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    first, last = losses[:4], losses[-4:]  # the same four batches, 8 updates apart
    assert all(b < a - 0.3 for a, b in zip(first, last, strict=True)), losses


def test_providers_start_from_the_same_weights():
    """Same seed: every provider's model holds bit-identical weights before its first step, and
    the first loss differs only by what quantization and bf16 rounding change (measured on this
    tiny model: at most 5e-4 apart, about 0.01%; allowed: 5e-3)."""
    s = ts.Settings.dry()
    tokens, targets = ts.batches(s.dims, 1, CPU, s.seed)[0]
    states, first = {}, {}
    for provider in ts.PROVIDERS:
        model, _, how = ts.build(provider, "eager", "int8", s, CPU)
        states[provider] = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
        with torch.no_grad():
            first[provider] = model.loss(tokens, targets).item()
    ref = states["bf16"]
    for provider, state in states.items():
        weights = {k: v for k, v in state.items() if k in ref}
        assert set(weights) == set(ref), provider  # the blocks' weights keep their names
        assert all(torch.equal(weights[k], ref[k]) for k in ref), provider
    assert max(first.values()) - min(first.values()) < 5e-3, first
    assert abs(first["bf16"] - torch.log(torch.tensor(float(s.dims.vocab))).item()) < 1.0


def test_settings_errors_name_the_argument():
    s = ts.Settings.dry()
    cases = [
        (replace(s, warmup=0), "warmup"),
        (replace(s, steps=0), "steps"),
        (replace(s, providers=("bf16", "fp8")), "providers"),
        (replace(s, modes=()), "modes"),
        (replace(s, weights=("int4g48",)), "weights"),  # 48 does not divide d_model 64
        (replace(s, dims=replace(s.dims, heads=3)), "heads"),
        (replace(s, dims=replace(s.dims, kv_heads=3)), "kv_heads"),
        (replace(s, dims=replace(s.dims, layers=0)), "layers"),
    ]
    for settings, name in cases:
        with pytest.raises(ValueError, match=f"^{name}: "):
            settings.check()
    for bad in ("int4", "int4g0", "int4gx", "fp8", ""):
        with pytest.raises(ValueError, match="^weights: "):
            ts.weight_group(bad)
    assert ts.weight_group("int8") == 0 and ts.weight_group("int4g128") == 128


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--warmup", "0"], "--warmup"),
        (["--steps", "0"], "--steps"),
        (["--providers", "bf16,fp8"], "--providers"),
        (["--weights", "int4g48"], "--weights"),
        (["--layers", "0"], "--layers"),
        (["--seq", "0"], "--seq"),
    ],
)
def test_parse_args_errors_name_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        ts.parse_args(["--dry-run", *argv])
    assert e.value.code == 2
    assert f"error: {flag}: " in capsys.readouterr().err


def test_parse_args_without_cuda_says_to_dry_run(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here")
    with pytest.raises(SystemExit):
        ts.parse_args([])
    assert "--dry-run" in capsys.readouterr().err


def test_missing_torchao_gives_not_measured_rows(monkeypatch):
    """torchao made unimportable: its items are "not measured" rows (every metric, status
    skipped), never a failure; triton_qat prepares the same numerics without it."""
    for name in [m for m in sys.modules if m == "torchao" or m.startswith("torchao.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "torchao", None)
    rows, said = [], []
    s = replace(ts.Settings.dry(), providers=("torchao",))
    stopped = ts.run_items(s, CPU, rows.append, say=said.append)
    assert stopped is False
    assert len(rows) == 2 * len(ts.METRICS)
    assert {(r["mode"], r["metric"]) for r in rows} == {
        (m, metric) for m in ts.MODES for metric in ts.METRICS
    }
    for r in rows:
        assert r["status"] == "skipped" and r["provider"] == "torchao"
        assert r["detail"].startswith("not measured: torchao is not installed"), r["detail"]
        assert set(r) <= set(ts.FIELDS)
    assert all("not measured" in line for line in said)
    _, _, how = ts.build("triton_qat", "eager", "int8", ts.Settings.dry(), CPU)
    assert how == "tq.prepare(model, activation=, weight=) (torchao not installed)"


def test_items_put_the_headline_first():
    s = replace(ts.Settings.dry(), weights=("int8", "int4g32"))
    got = ts.items(s)
    assert got[:4] == [("bf16", "eager", "int8"), ("triton_qat", "eager", "int8"),
                       ("bf16", "compiled", "int8"), ("triton_qat", "compiled", "int8")]  # fmt: skip
    assert [it for it in got if it[0] == "bf16"] == got[0:1] + got[2:3]  # bf16 once
    assert len(got) == 6 + 4


def _rows(values: dict) -> list[dict]:
    """Rows as perf/train_step.py emits them: {(provider, mode): (tokens/s, peak MiB) or None}."""
    out = []
    for (provider, mode), got in values.items():
        base = dict(phase=ts.PHASE, provider=provider, mode=mode,
                    config=ts.config_label(provider, "int8"))  # fmt: skip
        if got is None:
            out += ts.not_measured_rows(base, "not measured: torchao is not installed")
            continue
        out.append({**base, "status": "done", "metric": "tokens_per_s", "value": got[0]})
        out.append({**base, "status": "done", "metric": "peak_mem_mb", "value": str(got[1])})
    return out


def test_relative_to_bf16_and_headline():
    rows = _rows({("bf16", "eager"): (1000.0, 800.0), ("bf16", "compiled"): (1250.0, 700.0),
                  ("triton_qat", "eager"): (900.0, 760.0),
                  ("triton_qat", "compiled"): (1500.0, 630.0),
                  ("torchao", "eager"): (700.0, 900.0), ("torchao", "compiled"): None})  # fmt: skip
    tps = ts.relative_to_bf16(rows, "tokens_per_s")
    assert tps == pytest.approx({("bf16", "eager"): 1.0, ("bf16", "compiled"): 1.0,
                                 ("triton_qat", "eager"): 0.9, ("triton_qat", "compiled"): 1.2,
                                 ("torchao", "eager"): 0.7})  # fmt: skip
    mem = ts.relative_to_bf16(rows, "peak_mem_mb")  # values read back from a CSV are strings
    assert mem[("triton_qat", "compiled")] == pytest.approx(0.9)
    assert ("torchao", "compiled") not in mem
    assert ts.headline(rows) == ("training step, triton_qat: eager 900 tokens/s (0.90x bf16, "
                                 "1.29x torchao); compiled 1,500 tokens/s (1.20x bf16)")  # fmt: skip
    # nothing relative to a bf16 that was not measured; nothing at all: said so
    no_bf16 = [r for r in rows if r["provider"] != "bf16"]
    assert ts.relative_to_bf16(no_bf16, "tokens_per_s") == {}
    assert ts.headline(no_bf16) == ("training step, triton_qat: eager 900 tokens/s (1.29x "
                                    "torchao); compiled 1,500 tokens/s")  # fmt: skip
    assert (
        ts.headline([]) == "training step, triton_qat: eager: not measured; compiled: not measured"
    )


def test_float8_weights_measure_triton_qat_and_torchao_on_the_same_numerics():
    """--weights float8: torchao's Float8DynamicActivationFloat8WeightConfig QAT and triton_qat's
    prepare of the same config; both models' first losses agree (e4m3 per row on both sides) and
    the rows are labelled fp8-row. One block at half the dry run's width (the same structure:
    grouped-query heads, SwiGLU): the float8 kernels launch a program per row of x and of each
    weight, which the interpreter runs one by one (the dry run's two blocks took 12 s here)."""
    pytest.importorskip("torchao.quantization.qat")
    dims = replace(ts.Dims.tiny(layers=1), d_model=32, ffn=64)
    s = replace(ts.Settings.dry(), weights=("float8",), dims=dims)
    s.check()
    data = ts.batches(s.dims, 1, CPU, s.seed)
    losses = {}
    for provider in ("torchao", "triton_qat"):
        model, _, how = ts.build(provider, "eager", "float8", s, CPU)
        assert any(isinstance(m, tq.Linear) for m in model.modules()) == (provider == "triton_qat")
        losses[provider] = model.loss(*data[0]).item()
    assert abs(losses["torchao"] - losses["triton_qat"]) < 1e-2, losses
    assert ts.config_label("triton_qat", "float8") == "fp8-row"


def test_torchao_compiled_falls_back_to_graph_breaks_where_fullgraph_fails(monkeypatch):
    """torch 2.11's Dynamo cannot trace torchao 0.18's QAT whole (it skips torch.ao's
    _per_token_quant_qparam_dim_check): the compiled torchao item is then measured with graph
    breaks and says so, instead of a failed row; triton_qat's compiled item must hold
    fullgraph=True (its failure is raised)."""
    s = replace(ts.Settings.dry(), warmup=1, steps=1)
    real = ts.compile_blocks

    def no_fullgraph(model, fullgraph=True):
        real(model, fullgraph)
        if fullgraph:  # as the old Dynamo does on the first call

            def refuse(*args, **kwargs):
                raise torch._dynamo.exc.Unsupported("Attempted to call function marked as skipped")

            model.loss = refuse

    monkeypatch.setattr(ts, "compile_blocks", no_fullgraph)
    m = ts.measure("torchao", "compiled", "int8", s, CPU)
    assert "fullgraph=True failed (Attempted to call function marked as skipped)" in m.how
    assert len(m.step_ms) == 1 and m.losses and all(x == x for x in m.losses)
    with pytest.raises(torch._dynamo.exc.Unsupported):
        ts.measure("triton_qat", "compiled", "int8", s, CPU)
