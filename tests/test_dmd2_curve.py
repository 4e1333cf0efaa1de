"""DMD2 learning-curve and teacher-check tools: the reference denoisers are right, checkpoints are read back."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from papers.dmd2.curve import _ema_state, records_figure
from papers.dmd2.teacher_check import empirical_denoiser, gaussian_denoiser

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_gaussian_reference_is_the_posterior_mean_of_gaussian_data():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 4, generator=g)
    x = (torch.randn(20000, 4, generator=g) @ a.T + 1.0).reshape(-1, 1, 2, 2)
    den = gaussian_denoiser(x)
    y = x[:2000] + 0.7 * torch.randn(2000, 1, 2, 2, generator=g)
    # a linear least-squares fit of x0 on y is the MMSE estimator for Gaussian data; the reference must match it
    Y = torch.cat([y.flatten(1), torch.ones(2000, 1)], 1).double()
    coef = torch.linalg.lstsq(Y, x[:2000].flatten(1).double()).solution
    fit = (Y @ coef).float().reshape(y.shape)
    mse_ref = ((den(y, 0.7) - x[:2000]) ** 2).mean()
    mse_fit = ((fit - x[:2000]) ** 2).mean()
    assert abs(mse_ref - mse_fit) / mse_fit < 0.05
    # at huge noise it returns the mean
    assert torch.allclose(den(torch.zeros(1, 1, 2, 2), 1e6).flatten(), x.flatten(1).mean(0), atol=1e-3)


def test_empirical_reference_snaps_to_the_nearest_train_image():
    x = torch.tensor([[0.0, 0.0], [3.0, 3.0]]).reshape(2, 1, 1, 2)
    den = empirical_denoiser(x)
    q = torch.tensor([[2.5, 2.0]]).reshape(1, 1, 1, 2)
    assert torch.allclose(den(q, 0.05), x[1:2])
    assert torch.allclose(den(q, 1e4), x.mean(0, keepdim=True), atol=1e-3)


def test_ema_state_strips_the_averaged_model_wrapper():
    from torch.optim.swa_utils import AveragedModel

    net = torch.nn.Linear(3, 2)
    ema = AveragedModel(net)
    fresh = torch.nn.Linear(3, 2)
    fresh.load_state_dict(_ema_state(ema.state_dict()))  # strict: every key of the network, nothing else
    assert torch.equal(fresh.weight, net.weight)


def test_records_figure_averages_the_seeds(tmp_path):
    paths = []
    for seed, vals in enumerate(([5.0, 3.0, 2.0], [7.0, 5.0, 4.0])):
        rec = {"seed": seed, "extra": {"learning_curve": [[25 * (i + 1), v] for i, v in enumerate(vals)]}}
        p = tmp_path / f"r{seed}.json"
        p.write_text(json.dumps(rec))
        paths.append(p)
    out = records_figure(paths, tmp_path / "c.png", "FD", ("teacher", 2.5))
    assert out["steps"] == [25, 50, 75] and out["mean"] == [6.0, 4.0, 3.0] and out["n"] == 2
    assert (tmp_path / "c.png").stat().st_size > 0


def test_checkpoint_curve_reads_every_checkpoint_and_the_ema(tmp_path):
    common = [f"out_dir={tmp_path}/runs", f"cache_dir={tmp_path}/cache", "ema_rates=0.9", "steps=4", "ckpt_every=2"]
    for cmd in (
        ["papers.dmd2.train", "--preset", "toy2d-smoke", "--set", *common, f"results_dir={tmp_path}/res"],
        ["papers.dmd2.curve", "checkpoints", "--preset", "toy2d-smoke", "--set", *common],
    ):
        p = subprocess.run([sys.executable, "-m", *cmd], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    data = json.loads((tmp_path / "runs" / "dmd2" / "toy2d-smoke" / "dmd2-seed0" / "curve.json").read_text())
    assert [r["iteration"] for r in data["rows"]] == [2, 4]
    assert {"last", "ema 0.9"} <= set(data["rows"][0]) and "precision" in data["rows"][-1]["ema 0.9"]
    assert "off-mode fraction" in data["teacher"]
