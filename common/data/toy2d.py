"""2-D Gaussian mixtures with exact densities, scores and denoisers: the analytic teacher of the toy experiments.

For p(x) = sum_k w_k N(x; mu_k, s_k^2 I) and x_t = x_0 + sigma * eps, the noised marginal is again a mixture with
variances s_k^2 + sigma^2, so its score and the posterior mean (Tweedie: E[x_0 | x_t] = x_t + sigma^2 grad log p_t)
are exact. Layouts: ``ring`` (the classic 8 Gaussians), ``grid`` (25 Gaussians) and explicit means.

Left out: full covariances (isotropic components suffice for mode-coverage experiments).
"""

from __future__ import annotations

import math

import torch


class GaussianMixture:
    """Isotropic Gaussian mixture in 2-D (any dimension works) with exact noised score and denoiser."""

    def __init__(self, means, weights=None, stds=0.25):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        k, self.dim = self.means.shape
        w = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (k,) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be {k} non-negative numbers with a positive sum, got {w.tolist()}")
        self.weights = w / w.sum()
        s = torch.as_tensor(stds, dtype=torch.float64)
        self.stds = s.expand(k).clone() if s.ndim == 0 else s
        if self.stds.shape != (k,) or (self.stds <= 0).any():
            raise ValueError(f"stds must be positive, one per component ({k}), got {self.stds.tolist()}")

    @property
    def num_modes(self) -> int:
        return self.means.shape[0]

    def sample(self, n: int, generator: torch.Generator | None = None, return_labels: bool = False):
        idx = torch.multinomial(self.weights.float(), n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = (self.means[idx] + self.stds[idx, None] * noise).float()
        return (x, idx) if return_labels else x

    def _log_components(self, x, sigma=0.0):
        """log w_k + log N(x; mu_k, (s_k^2 + sigma^2) I), shape (N, K)."""
        x = x.to(torch.float64)
        sig = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)
        var = self.stds[None, :] ** 2 + sig**2  # (N or 1, K)
        d2 = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)
        return torch.log(self.weights)[None] - 0.5 * d2 / var - 0.5 * self.dim * torch.log(2 * math.pi * var), var

    def log_prob(self, x, sigma=0.0):
        """Exact log density of the data (sigma=0) or of the noised marginal."""
        lc, _ = self._log_components(x, sigma)
        return torch.logsumexp(lc, dim=1).to(x.dtype)

    def responsibilities(self, x, sigma=0.0):
        lc, _ = self._log_components(x, sigma)
        return torch.softmax(lc, dim=1)

    def score(self, x, sigma=0.0):
        """grad_x log p_sigma(x) = sum_k r_k(x) (mu_k - x) / (s_k^2 + sigma^2)."""
        lc, var = self._log_components(x, sigma)
        r = torch.softmax(lc, dim=1)
        x64 = x.to(torch.float64)
        diff = self.means[None] - x64[:, None, :]
        return (r[..., None] * diff / var[..., None]).sum(1).to(x.dtype)

    def denoise(self, x, sigma):
        """Exact posterior mean E[x_0 | x_0 + sigma eps = x] (Tweedie's formula)."""
        sig = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)
        return (x.to(torch.float64) + sig**2 * self.score(x, sigma).to(torch.float64)).to(x.dtype)

    def assign(self, x):
        """Index of the nearest mean for each point."""
        return torch.cdist(x.to(torch.float64), self.means).argmin(1)

    def perturbed(self, std_scale: float = 1.0, weights=None) -> GaussianMixture:
        """A mis-specified copy: inflated stds and/or different weights (for 'student beats teacher' experiments)."""
        return GaussianMixture(self.means, self.weights if weights is None else weights, self.stds * std_scale)

    def to_dict(self) -> dict:
        return {"means": self.means.tolist(), "weights": self.weights.tolist(), "stds": self.stds.tolist()}


def ring(k: int = 8, radius: float = 4.0, std: float = 0.25, weights=None) -> GaussianMixture:
    angles = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    return GaussianMixture(means, weights, std)


def grid(side: int = 5, spacing: float = 2.0, std: float = 0.2, weights=None) -> GaussianMixture:
    coords = (torch.arange(side, dtype=torch.float64) - (side - 1) / 2) * spacing
    means = torch.cartesian_prod(coords, coords)
    return GaussianMixture(means, weights, std)


LAYOUTS = {"ring": ring, "grid": grid}


def make_mixture(layout: str = "ring", **kw) -> GaussianMixture:
    """``ring``, ``grid`` or ``explicit`` (pass means=, weights=, stds=)."""
    if layout == "explicit":
        return GaussianMixture(kw["means"], kw.get("weights"), kw.get("stds", 0.25))
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is unknown; choose one of {', '.join([*LAYOUTS, 'explicit'])}")
    return LAYOUTS[layout](**kw)
