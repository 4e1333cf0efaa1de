"""Gaussian kernel density of a sample set at a diffusion noise level: the exact noised density of an empirical set.

Under the forward process x_t = alpha x_0 + sigma eps the noised density of an empirical distribution over M points
x_j is the Gaussian mixture q_t(x) = 1/M sum_j N(x; alpha x_j, sigma^2 I): a KDE with bandwidth sigma. With M fresh
generator samples it estimates the generator's noised density q_t, and becomes exact as M grows; its error is
largest when sigma is below the spacing of the samples. Used for oracle density ratios p_t / q_t and oracle scores
in low dimension. Chunked over query points so that M x N distances never sit in memory at once.
"""

from __future__ import annotations

import math

import torch

__all__ = ["kde_log_prob", "kde_score"]


def _log_kernel(x, centres, alpha, sigma):
    d2 = torch.cdist(x.double(), alpha * centres.double()) ** 2
    return -0.5 * d2 / sigma**2 - 0.5 * x.shape[1] * math.log(2 * math.pi * sigma**2)


def kde_log_prob(x: torch.Tensor, centres: torch.Tensor, sigma: float, alpha: float = 1.0, chunk: int = 2048):
    """log q_t(x) = logsumexp_j log N(x; alpha c_j, sigma^2 I) - log M, float64, shape (N,)."""
    if sigma <= 0:
        raise ValueError(f"sigma: {sigma} must be positive")
    out = [
        torch.logsumexp(_log_kernel(x[i : i + chunk].flatten(1), centres.flatten(1), alpha, sigma), 1)
        for i in range(0, len(x), chunk)
    ]
    return torch.cat(out) - math.log(len(centres))


def kde_score(x: torch.Tensor, centres: torch.Tensor, sigma: float, alpha: float = 1.0, chunk: int = 2048):
    """grad_x log q_t(x) = sum_j w_j (alpha c_j - x) / sigma^2 with softmax weights w_j (float64, shape of x)."""
    c = alpha * centres.flatten(1).double()
    out = []
    for i in range(0, len(x), chunk):
        xi = x[i : i + chunk].flatten(1).double()
        w = torch.softmax(_log_kernel(xi, centres.flatten(1), alpha, sigma), 1)
        out.append((w @ c - xi) / sigma**2)
    return torch.cat(out).reshape(x.shape)
