"""Improved precision and recall (Kynkäänniemi et al., NeurIPS 2019), on any features.

Each set's manifold is the union of balls around its points with radius = distance to the k-th nearest neighbour
within the set (the point itself excluded). Precision = fraction of generated points inside the real manifold;
recall = fraction of real points inside the generated manifold. Written here because torchmetrics has no such metric.
"""

from __future__ import annotations

import torch


def _radii(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    out = []
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i : i + chunk], x)
        out.append(d.kthvalue(k + 1, dim=1).values)  # k+1: the zero distance to itself comes first
    return torch.cat(out)


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> torch.Tensor:
    hits = []
    for i in range(0, len(points), chunk):
        d = torch.cdist(points[i : i + chunk], centres)
        hits.append((d <= radii[None]).any(1))
    return torch.cat(hits)


def precision_recall(real_feats: torch.Tensor, fake_feats: torch.Tensor, k: int = 3, chunk: int = 1024) -> dict:
    real, fake = real_feats.double(), fake_feats.double()
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"need more than k={k} points per set, got {len(real)} real and {len(fake)} fake")
    precision = _inside(fake, real, _radii(real, k, chunk), chunk).double().mean().item()
    recall = _inside(real, fake, _radii(fake, k, chunk), chunk).double().mean().item()
    return {"precision": precision, "recall": recall}
