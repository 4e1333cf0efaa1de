"""Image-text retrieval metrics: R@K in both directions (torchmetrics ``RetrievalHitRate``), rank correlations
between two scorers' orders (Spearman, Kendall tau; scipy), and score-distribution statistics.

Conventions (COCO / Flickr30K, as in the CPRD and ALBEF evaluation code): the similarity matrix is (n_images, n_captions) over the
whole gallery; image->text (TR) counts a hit when *any* of the image's captions is in the top K; text->image (IR)
when the caption's image is in the top K. Ties are broken by the lower gallery index (stable sort) before
torchmetrics sees the lists. Only each query's top max(K) candidates are passed to torchmetrics: a hit at K <= max(K)
depends on nothing below, and the (n_queries x n_gallery) flat tensors of a 5K x 25K gallery would not fit.

Left out: RSUM weighting, mean / median rank.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics.retrieval import RetrievalHitRate


def _hit_rates(sim: torch.Tensor, relevant: torch.Tensor, ks: Sequence[int], prefix: str) -> dict[str, float]:
    kmax = min(max(ks), sim.shape[1])
    top = torch.sort(-sim.float(), dim=1, stable=True).indices[:, :kmax]
    target = torch.gather(relevant, 1, top)
    # strictly decreasing preds in the stable order: torchmetrics' own sort cannot reorder ties
    preds = torch.arange(kmax, 0, -1, dtype=torch.float32).expand_as(top).reshape(-1)
    idx = torch.arange(sim.shape[0]).repeat_interleave(kmax)
    out = {}
    for k in ks:
        m = RetrievalHitRate(top_k=k, empty_target_action="neg")
        out[f"{prefix}@{k}"] = 100.0 * float(m(preds, target.reshape(-1), indexes=idx))
    return out


def image_text_recall(
    sim: torch.Tensor, caption_image: Sequence[int] | torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """R@K (in %) for image->text (``TR@K``) and text->image (``IR@K``) from an (n_images, n_captions) matrix;
    ``caption_image[j]`` is the index of the image caption j describes."""
    sim = torch.as_tensor(sim).detach().cpu()
    cap_img = torch.as_tensor(np.asarray(caption_image), dtype=torch.long)
    if sim.shape[1] != len(cap_img):
        raise ValueError(f"sim has {sim.shape[1]} captions but caption_image has {len(cap_img)}")
    rel = cap_img[None, :] == torch.arange(sim.shape[0])[:, None]  # (n_images, n_captions)
    out = _hit_rates(sim, rel, ks, "TR")
    out.update(_hit_rates(sim.T, rel.T, ks, "IR"))
    out["RSUM"] = sum(v for k, v in out.items())
    return out


def rank_correlations(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> dict[str, float]:
    """Mean over rows of Spearman's rho and Kendall's tau-b between the orders of two score arrays (A, L); rows
    with a constant input (undefined correlation) are skipped."""
    from scipy.stats import kendalltau, spearmanr

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"rank_correlations expects two (A, L) arrays of one shape, got {a.shape} and {b.shape}")
    rho, tau = [], []
    for x, y in zip(a, b, strict=True):
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            continue
        rho.append(spearmanr(x, y).statistic)
        tau.append(kendalltau(x, y).statistic)
    nan = float("nan")
    return {"spearman": float(np.mean(rho)) if rho else nan, "kendall": float(np.mean(tau)) if tau else nan}


def distribution_stats(x: np.ndarray | torch.Tensor) -> dict[str, float]:
    """Mean, std, skewness, excess kurtosis, and the spread as interquartile range / (max - min) (a scale-free
    concentration measure: small = mass piled up in a narrow band)."""
    from scipy.stats import kurtosis, skew

    v = np.asarray(x, dtype=np.float64).reshape(-1)
    q1, q3 = np.percentile(v, [25, 75])
    rng = float(v.max() - v.min()) or 1.0
    return {
        "mean": float(v.mean()),
        "std": float(v.std()),
        "skewness": float(skew(v)),
        "excess_kurtosis": float(kurtosis(v)),
        "iqr_over_range": float((q3 - q1) / rng),
    }
