"""Metrics for low-dimensional toy distributions: sliced Wasserstein, MMD and mode statistics.

Sliced Wasserstein-2 averages the exact 1-D W2 over random unit projections (equal sample sizes: sorted
differences; otherwise quantile matching). MMD^2 is the unbiased estimate with a sum of RBF kernels. Mode statistics
assign each sample to the nearest mixture component and count it only within ``radius_std`` component stds.
"""

from __future__ import annotations

import torch


def _quantiles(x: torch.Tensor, n: int) -> torch.Tensor:
    q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return torch.quantile(x, q, dim=0)


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, n_proj: int = 256, seed: int = 0) -> float:
    """Sliced W2 distance (square root of the mean squared 1-D W2 over projections)."""
    x, y = x.double(), y.double()
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(x.shape[1], n_proj, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    px, py = x @ dirs, y @ dirs
    if len(px) == len(py):
        sx, sy = px.sort(0).values, py.sort(0).values
    else:
        n = max(len(px), len(py))
        sx, sy = _quantiles(px, n), _quantiles(py, n)
    return float(((sx - sy) ** 2).mean().sqrt())


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, bandwidths=None) -> float:
    """Unbiased MMD^2 with k(a, b) = sum_h exp(-|a-b|^2 / (2 h^2))."""
    x, y = x.double(), y.double()
    bandwidths = bandwidths or (0.1, 0.5, 1.0, 2.0)

    def k(a, b):
        d2 = torch.cdist(a, b) ** 2
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)

    m, n = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(term_x + term_y - 2 * kxy.mean())


def mode_stats(samples: torch.Tensor, mixture, radius_std: float = 3.0) -> dict:
    """Mode coverage, total-variation error of the mode weights, and the fraction of samples far from every mode.

    A sample belongs to its nearest mode if it lies within ``radius_std`` stds of it. A mode is covered when it
    holds at least a quarter of the samples its true weight predicts. The weight error is TV(empirical, true) over
    the samples that belong to a mode.
    """
    x = samples.double()
    d = torch.cdist(x, mixture.means)
    nearest = d.argmin(1)
    near = d.gather(1, nearest[:, None]).squeeze(1) <= radius_std * mixture.stds[nearest]
    counts = torch.bincount(nearest[near], minlength=mixture.num_modes).double()
    n_in = counts.sum()
    expected = mixture.weights * len(x)
    covered = (counts >= 0.25 * expected).double().mean().item()
    if n_in > 0:
        tv = 0.5 * (counts / n_in - mixture.weights).abs().sum().item()
    else:
        tv = 1.0
    return {"mode_coverage": covered, "mode_weight_error": tv, "off_mode_fraction": 1.0 - n_in.item() / len(x)}
