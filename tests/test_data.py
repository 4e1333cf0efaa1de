"""Embedded data: exact mixture scores and denoisers, the deterministic digits split, image-folder loading."""

import pytest
import torch
from PIL import Image

from common.data.digits import load_digits_split
from common.data.images import image_folder_dataset
from common.data.toy2d import GaussianMixture, grid, make_mixture, ring


@pytest.mark.parametrize("sigma", [0.0, 0.3, 2.0])
def test_score_is_gradient_of_log_density(sigma):
    mix = GaussianMixture([[0.0, 0.0], [3.0, 1.0], [-2.0, 2.0]], weights=[0.5, 0.3, 0.2], stds=[0.4, 0.7, 1.0])
    x = torch.randn(64, 2, dtype=torch.float64) * 2
    eps = 1e-5
    fd = torch.stack(
        [
            (mix.log_prob(x + eps * e, sigma) - mix.log_prob(x - eps * e, sigma)) / (2 * eps)
            for e in torch.eye(2, dtype=torch.float64)
        ],
        1,
    )
    torch.testing.assert_close(mix.score(x, sigma), fd, rtol=1e-5, atol=1e-6)


def test_denoiser_is_posterior_mean_by_monte_carlo():
    mix = ring(k=4, radius=2.0, std=0.3)
    g = torch.Generator().manual_seed(0)
    x0 = mix.sample(400_000, generator=g).double()
    sigma = 1.0
    xt = x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    query = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    near = (xt - query).norm(dim=1) < 0.1
    assert mix.denoise(query, sigma)[0].sub(x0[near].mean(0)).norm() < 0.05


def test_layouts_and_perturbation():
    assert ring(k=8).num_modes == 8 and grid(side=5).num_modes == 25
    m = make_mixture("explicit", means=[[0, 0], [1, 1]], weights=[3, 1], stds=0.1)
    assert m.weights.tolist() == [0.75, 0.25]
    p = m.perturbed(std_scale=2.0, weights=[1, 1])
    assert p.stds.tolist() == [0.2, 0.2] and p.weights.tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="layout"):
        make_mixture("spiral")


def test_digits_split_is_deterministic_and_disjoint():
    xa, ya = load_digits_split("train")
    xb, _ = load_digits_split("train")
    xt, yt = load_digits_split("test")
    assert xa.shape == (1437, 1, 8, 8) and xt.shape == (360, 1, 8, 8)
    assert torch.equal(xa, xb) and xa.min() == -1 and xa.max() == 1
    assert set(yt.tolist()) == set(range(10))
    train_rows = {tuple(r) for r in xa.flatten(1).tolist()}
    assert sum(tuple(r) in train_rows for r in xt.flatten(1).tolist()) < 10  # only exact duplicate images, if any


def test_image_folder_dataset(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (20, 16), color=(40 * i, 100, 200)).save(tmp_path / cls / f"{i}.png")
    ds = image_folder_dataset(tmp_path, resolution=8)
    assert len(ds) == 6
    item = ds[0]
    assert item["image"].shape == (3, 8, 8) and -1 <= item["image"].min() and item["image"].max() <= 1
    assert {ds[i]["label"] for i in range(6)} == {0, 1}
    with pytest.raises(FileNotFoundError):
        image_folder_dataset(tmp_path / "missing")
