"""Golden tests of the metrics: closed forms and hand-computed cases."""

import math

import pytest
import torch
from torch import nn

from common.data.toy2d import ring
from common.metrics.fid import (
    frechet_distance,
    frechet_distance_from_features,
    frechet_distance_gaussians,
    kernel_inception_distance,
)
from common.metrics.prdc import precision_recall
from common.metrics.toy import mmd_rbf, mode_stats, sliced_wasserstein


class Flatten(nn.Module):
    num_features = 3

    def forward(self, x):
        return x.flatten(1).double()


def test_fd_of_a_set_with_itself_is_zero():
    x = torch.randn(500, 3, 1, 1)
    assert abs(frechet_distance(x, x, Flatten())) < 1e-8


def test_fd_matches_closed_form_for_gaussians():
    mu1, mu2 = torch.tensor([0.0, 1.0]), torch.tensor([2.0, -1.0])
    s1, s2 = torch.diag(torch.tensor([1.0, 4.0])), torch.diag(torch.tensor([9.0, 1.0]))
    # diagonal covariances: |mu1-mu2|^2 + sum (a + b - 2 sqrt(ab)) = 8 + (1+9-6) + (4+1-4) = 13
    assert frechet_distance_gaussians(mu1, s1, mu2, s2) == pytest.approx(13.0, abs=1e-9)
    # non-diagonal, rotated copies: FD between N(0, R S R^T) and N(0, S) for PSD S
    theta = 0.3
    r = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], dtype=torch.float64)
    s = torch.diag(torch.tensor([2.0, 0.5], dtype=torch.float64))
    assert frechet_distance_gaussians(torch.zeros(2), s, torch.zeros(2), s) == pytest.approx(0.0, abs=1e-9)
    fd = frechet_distance_gaussians(torch.zeros(2), r @ s @ r.T, torch.zeros(2), s)
    assert fd > 0.01


def test_fd_from_samples_approaches_closed_form():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200_000, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    b = torch.randn(200_000, 3, generator=g, dtype=torch.float64) + torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    expected = 1.0 + (1 + 1 - 2) + (4 + 1 - 4) + (0.25 + 1 - 1)
    assert frechet_distance_from_features(a, b) == pytest.approx(expected, abs=0.03)
    imgs_a, imgs_b = a[:5000].float().reshape(-1, 3, 1, 1), b[:5000].float().reshape(-1, 3, 1, 1)
    assert frechet_distance(imgs_a, imgs_b, Flatten()) == pytest.approx(
        frechet_distance_from_features(a[:5000].float(), b[:5000].float()), rel=1e-4
    )


def test_kid_near_zero_for_same_distribution_and_positive_for_shift():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(400, 3, 1, 1, generator=g), torch.randn(400, 3, 1, 1, generator=g)
    same, _ = kernel_inception_distance(a, b, Flatten(), subsets=5, subset_size=200)
    shifted, _ = kernel_inception_distance(a, b + 2, Flatten(), subsets=5, subset_size=200)
    assert abs(same) < 0.05 and shifted > 1.0


def test_precision_recall_hand_computed():
    # real points on a line 0,1,2,3 -> k=1 radii are all 1.
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    # fake: 0.5 (inside), 3.9 (inside: |3.9-3| <= 1), 10 (outside) and 10.5 -> precision 2/4
    fake = torch.tensor([[0.5], [3.9], [10.0], [10.5]])
    # fake k=1 radii: 0.5 -> 3.4, 3.9 -> 3.4, 10 -> 0.5, 10.5 -> 0.5; real 0,1,2,3 are all within 3.4 of 0.5 or 3.9
    pr = precision_recall(real, fake, k=1)
    assert pr == {"precision": 0.5, "recall": 1.0}
    far = precision_recall(real, fake + 100, k=1)
    assert far == {"precision": 0.0, "recall": 0.0}


def test_toy_metrics():
    mix = ring(k=8)
    g = torch.Generator().manual_seed(0)
    x, y = mix.sample(2000, generator=g), mix.sample(2000, generator=g)
    assert sliced_wasserstein(x, x) == 0.0
    assert sliced_wasserstein(x, y) < 0.2 < sliced_wasserstein(x, y + 1.0)
    assert abs(mmd_rbf(x, y)) < 0.01 < mmd_rbf(x, y + 1.0)
    stats = mode_stats(x, mix)
    assert stats["mode_coverage"] == 1.0 and stats["mode_weight_error"] < 0.05
    # in 2-D, P(|z| > 3 std) = exp(-9/2) = 0.0111
    assert stats["off_mode_fraction"] == pytest.approx(math.exp(-4.5), abs=0.006)
    # all mass on one mode: 1 of 8 covered, TV = 1 - 1/8
    one = mix.means[0].float().repeat(100, 1)
    s1 = mode_stats(one, mix)
    assert s1["mode_coverage"] == 1 / 8 and s1["mode_weight_error"] == pytest.approx(7 / 8)


def test_digits_feature_net_accuracy():
    from common.metrics.fid import digits_feature_net

    net = digits_feature_net()
    assert net.test_accuracy >= 0.95


def test_precision_recall_matches_the_prdc_package():
    """Our chunked torch code against the reference implementation (Naeem et al. 2020, `prdc`)."""
    prdc = pytest.importorskip("prdc")
    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 8, generator=g)
    fake = 1.3 * torch.randn(250, 8, generator=g) + 0.4
    ours = precision_recall(real, fake, k=5, chunk=64)
    ref = prdc.compute_prdc(real_features=real.numpy(), fake_features=fake.numpy(), nearest_k=5)
    assert ours["precision"] == pytest.approx(ref["precision"], abs=1e-12)
    assert ours["recall"] == pytest.approx(ref["recall"], abs=1e-12)
