"""Two gloo processes on CPU: world size 2 and gradients equal to one process on the same global batch."""

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
def test_two_processes_match_one(tmp_path, per_device_batch, expected_accum):
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
