"""Two gloo processes on CPU (torchrun --standalone: sockets on loopback only): world size 2 and gradients equal to one process on the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from dist_grad_worker import make_model_and_batch  # noqa: E402

TORCHRUN = Path(sys.executable).with_name("torchrun")


def reference_grads(global_batch):
    model, x, y = make_model_and_batch(global_batch)
    nn.functional.mse_loss(model(x), y).backward()
    return {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("per_device_batch,expected_accum", [(0, 1), (2, 2)])
def test_two_processes_match_one_loopback(tmp_path, per_device_batch, expected_accum):
    out = tmp_path / "grads.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        str(TORCHRUN),
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "tests" / "dist_grad_worker.py"),
        str(out),
        "8",
        str(per_device_batch),
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(out, weights_only=False)
    assert got["world_size"] == 2
    assert got["grad_accum"] == expected_accum
    ref = reference_grads(8)
    for name, g in ref.items():
        torch.testing.assert_close(got["grads"][name], g, rtol=1e-5, atol=1e-6)


def test_dmd2_loop_two_processes_with_accumulation_match_one_loopback(tmp_path):
    """DMD2 through its entry point: 2 processes x 2 micro-batches == 1 process x 4 (TTUR, GAN, w_G calibration)."""
    from loop_equivalence import assert_same, run_both

    sets = ["steps=4", "ttur_ratio=2", "w_g_calibrate=true", "gan=true", "eval_samples=64"]
    one, two = run_both("papers.dmd2.train", "toy2d-smoke", sets, tmp_path, global_batch=16)
    assert one["step"] == two["step"] == 4
    assert assert_same(one, two, ["generator", "fake", "head"]) > 0
    assert one["extra"]["w_g"] == pytest.approx(two["extra"]["w_g"], rel=1e-5)  # measured over every micro-batch
    assert one["extra"]["w_g"] != 0.0
