"""The KDE of a sample set at noise level sigma converges to the exact noised density; its score is its gradient."""

import torch

from common.data.toy2d import ring
from common.metrics.kde import kde_log_prob, kde_score


def test_kde_of_mixture_samples_matches_the_exact_noised_density():
    mix = ring(k=8, radius=2.0, std=0.1, weights=[8, 4, 2, 1, 1, 1, 1, 1])
    centres = mix.sample(20000, torch.Generator().manual_seed(0))
    x = mix.sample(500, torch.Generator().manual_seed(1)) + 0.5 * torch.randn(500, 2)
    for sigma in (0.2, 0.5, 2.0):
        err = (kde_log_prob(x, centres, sigma, chunk=128) - mix.log_prob(x.double(), sigma)).abs()
        assert err.median() < 0.05, (sigma, err.median())  # Monte Carlo error of 20K centres
        wrong = (kde_log_prob(x, centres, 1.5 * sigma, chunk=128) - mix.log_prob(x.double(), sigma)).abs()
        assert wrong.median() > 0.1  # the test can tell a wrong bandwidth


def test_kde_score_is_the_gradient_of_the_kde_log_density():
    centres = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
    x = torch.randn(7, 2, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(kde_log_prob(x, centres, 0.3).sum(), x)
    torch.testing.assert_close(kde_score(x.detach(), centres, 0.3), grad)
