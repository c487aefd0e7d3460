"""The main job (python -m triton_qat.demo): float -> PTQ -> QAT -> convert -> save, on a tiny budget;
the kernels against the plain-torch backend; torchrun with two processes."""

import dataclasses
import math
import socket
import subprocess
import sys

import pytest
import torch

from triton_qat import demo

TINY = ["--config", "tiny", "--steps", "40", "--qat-steps", "3", "--quiet"]


def test_demo_tiny_run(tmp_path, capsys, monkeypatch):
    """The whole job in this process, i.e. through the kernels in the interpreter, whose time
    goes with the rows it quantizes: 8 held-out windows (the tiny config's 16 halved; the float8
    PTQ eval launches a kernel per row) and 2 QAT steps (each evaluated)."""
    tiny = dataclasses.replace(demo.CONFIGS["tiny"], eval_windows=8)
    monkeypatch.setitem(demo.CONFIGS, "tiny", tiny)
    torch._dynamo.reset()
    r = demo.main(["--config", "tiny", "--steps", "40", "--qat-steps", "2", "--quiet",
                   "--check-batches", "0", "--out", str(tmp_path)])  # fmt: skip
    losses = ("unigram", "float", "float_finetuned", "ptq", "float8_ptq", "qat_converted",
              "reloaded")  # fmt: skip
    for key in (*losses, "recovered", "recovered_vs_float_finetuned"):
        assert math.isfinite(r[key]), key
    assert r["float"] < r["unigram"]  # 40 steps already beat character frequencies
    assert r["recovered"] == (r["ptq"] - r["qat_converted"]) / (r["ptq"] - r["float"])
    assert r["recovered_vs_float_finetuned"] == (r["ptq"] - r["qat_converted"]) / (
        r["ptq"] - r["float_finetuned"]
    )
    # the saved converted model, loaded into prepare + convert of a new model, is the same model
    assert r["reloaded"] == r["qat_converted"]
    assert (tmp_path / "qat_converted.pt").stat().st_size > 0
    # the QAT curve starts at PTQ (the prepared model in eval mode computes what convert runs)
    # and ends at the converted model
    assert abs(r["curves"]["qat"][0][1] - r["ptq"]) < 1e-5
    assert abs(r["curves"]["qat"][-1][1] - r["qat_converted"]) < 1e-5
    assert r["steps"] == 40 and r["qat_steps"] == 2
    assert len(r["curves"]["qat"]) == 3  # before the first step and after each
    assert r["backend"] == demo.tq.backend(r["device"])
    assert all(math.isfinite(v) and v > 0 for v in r["ms_per_step"].values())
    assert (tmp_path / "qat_demo.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "PTQ gap recovered by QAT" in out and "float8 e4m3 W8A8, PTQ" in out
    # e4m3 keeps 3 mantissa bits per value, int3 per-group weights far fewer: the float8 line
    # stays much closer to the float model than the low-bit PTQ
    assert abs(r["float8_ptq"] - r["float"]) < abs(r["ptq"] - r["float"])
    last = out.rstrip().splitlines()[-1]  # the table is the last thing printed
    assert last.startswith("time per step") and ("CPU time" in last) == (r["device"] == "cpu")


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--weight-bits", "9"], "--weight-bits"),
        (["--act-bits", "1"], "--act-bits"),
        (["--group-size", "-1"], "--group-size"),
        (["--group-size", "7"], "--group-size"),  # divides no in_features: nothing quantized
        (["--group-size", "64"], "--group-size"),  # divides fc2's 128 only, not d_model 32
        (["--device", "cuda"], "--device"),  # torch.cuda.is_available() patched to False
        (["--corpus", "{tmp}/missing.txt"], "--corpus"),
        (["--corpus", "{tmp}/short.txt"], "--corpus"),  # fewer characters than a window
        (["--steps", "0"], "--steps"),
        (["--qat-steps", "-1"], "--qat-steps"),
        (["--check-batches", "-1"], "--check-batches"),
        (["--seed", str(2**64)], "--seed"),
        (["--out", "{tmp}/short.txt"], "--out"),  # a file, not a folder
        (["--config", "huge"], "--config"),
    ],
)
def test_demo_bad_arguments_are_argparse_errors(args, flag, tmp_path, capsys, monkeypatch):
    """Each bad value is an argparse error (exit code 2) naming its flag, before any data is
    loaded or any model trained (both patched to fail here)."""
    (tmp_path / "short.txt").write_text("abc", encoding="utf-8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def no_work(*a, **k):
        raise AssertionError("reached loading / training: the arguments were not checked first")

    monkeypatch.setattr(demo, "load_corpus", no_work)
    monkeypatch.setattr(demo, "train", no_work)
    argv = ["--config", "tiny", "--quiet", *(a.format(tmp=tmp_path) for a in args)]
    with pytest.raises(SystemExit) as exc:
        demo.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err, err  # (the usage line names every flag: not enough)


def test_kernels_and_plain_torch_give_the_same_qat_losses(tmp_path):
    """The check `make demo` runs on a CPU: the QAT model through the Triton kernels (the
    interpreter here) and through the plain-torch backend (a subprocess), from the same weights."""
    cfg = demo.CONFIGS["tiny"]
    torch.manual_seed(0)
    model = demo.TinyGPT(40, cfg)
    data = torch.randint(0, 40, (2000,))
    payload = demo.check_payload(model, cfg, (3, 32, 8), data, n_batches=2, seed=0)
    check = demo.kernel_check(payload, tmp_path)
    assert len(check["torch"]) == len(check["interpreter"]) == 3
    # the same fake quantization, but the GEMMs round differently (int32 sums vs fp32), so the
    # losses agree to float rounding, not bit for bit; and an activation on a rounding boundary can
    # take the neighbouring code, which moves the gradients by ~1e-3 (relative L2)
    assert check["max_rel_loss_diff"] < 1e-5
    assert check["max_rel_grad_err"] < 1e-2
    assert check["ok"]


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def test_demo_under_torchrun_two_processes(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        _free_port(),
        "-m",
        "triton_qat.demo",
        *TINY,
        "--check-batches",
        "1",
        "--compile",
        "on",
        "--out",
        str(tmp_path),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("PTQ gap recovered by QAT") == 1 and "2 process(es)" in res.stdout
    assert "torch.compile: on" in res.stdout
    assert (tmp_path / "qat_demo.png").exists() and (tmp_path / "qat_converted.pt").exists()


def test_a_prepare_that_quantizes_no_layer_stops_the_demo():
    """The guard behind --group-size's check: a weight config no layer takes (prepare leaves
    them all nn.Linear, with a warning) is an error, not a float model compared with itself."""
    import pytest

    model = demo.TinyGPT(40, demo.CONFIGS["tiny"])
    with pytest.warns(UserWarning, match="left as nn.Linear"):
        with pytest.raises(RuntimeError, match="quantized no linear layer"):
            demo.prepare_quantized(model, demo.act_config(8), demo.weight_config(3, 7))
    prepared = demo.prepare_quantized(model, demo.act_config(8), demo.weight_config(3, 32))
    assert any(isinstance(m, demo.tq.Linear) for m in prepared.modules())
