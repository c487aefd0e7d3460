"""The main job (python -m triton_qat.demo): a short compiled QAT run, single process and torchrun."""

import socket
import subprocess
import sys

import torch

from triton_qat.demo import main


def test_demo_short_run(tmp_path, capsys):
    torch._dynamo.reset()
    results = main(["--steps", "3", "--out", str(tmp_path)])
    assert set(results) == {"float", "QAT triton_qat", "QAT torch ref"}
    qat, ref = results["QAT triton_qat"], results["QAT torch ref"]
    # convert() computes exactly what the prepared model computed in eval
    assert abs(qat["int8_eval"] - qat["eval"]) < 1e-4
    # the fused layer and the plain-torch reference train the same numerics
    assert abs(qat["eval"] - ref["eval"]) < 1e-2
    assert qat["saved_mb"] < ref["saved_mb"]
    assert (tmp_path / "loss_curves.png").stat().st_size > 10_000
    assert "int8 eval" in capsys.readouterr().out


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def test_demo_under_torchrun_two_processes(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", _free_port(), "-m", "triton_qat.demo", "--steps", "2",
           "--out", str(tmp_path)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("train loss") == 1 and "x2 process(es)" in res.stdout
