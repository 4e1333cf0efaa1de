"""Student-side hard-negative mining over a similarity matrix (CPRD §3).

The selection runs under ``torch.no_grad()`` on the student's similarities with every positive masked out (all
captions of the same image, any relevant document); the returned indices are then used to gather the
*differentiable* similarities, so gradients flow through the selected scores only, never through the choice.
``random_negatives`` draws K non-positive candidates uniformly instead (the "easy negatives" ablation).

Left out: cross-batch memory banks and approximate (ANN) mining over a whole corpus.
"""

from __future__ import annotations

import torch


def _check(sim: torch.Tensor, positive: torch.Tensor, k: int) -> None:
    if sim.shape != positive.shape:
        raise ValueError(f"sim {tuple(sim.shape)} and positive mask {tuple(positive.shape)} differ")
    n_neg = int((~positive).sum(1).min()) if sim.shape[0] else 0
    if k > n_neg:
        raise ValueError(f"k={k} hard negatives requested but a row has only {n_neg} non-positive candidates")


def mine_hard_negatives(sim: torch.Tensor, positive: torch.Tensor, k: int) -> torch.Tensor:
    """(A, C) similarities and positive mask -> (A, k) indices of the k most similar non-positive candidates,
    in descending student similarity (ties broken by index)."""
    _check(sim, positive, k)
    with torch.no_grad():
        masked = sim.detach().float().masked_fill(positive, float("-inf"))
        return torch.sort(-masked, dim=1, stable=True).indices[:, :k]


def random_negatives(positive: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(A, k) indices of k uniformly drawn non-positive candidates per row."""
    _check(positive.float(), positive, k)
    noise = torch.rand(positive.shape, generator=generator, device="cpu").to(positive.device)
    return torch.sort(-noise.masked_fill(positive, float("-inf")), dim=1).indices[:, :k]


def gather(scores: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Row-wise gather (keeps the autograd graph of ``scores``)."""
    return torch.gather(scores, 1, idx.to(scores.device))


def positive_mask(row_ids, col_ids) -> torch.Tensor:
    """(A, C) boolean mask: True where the row item and the column item share an id (same image / scene)."""
    r = torch.as_tensor(row_ids).reshape(-1, 1)
    c = torch.as_tensor(col_ids).reshape(1, -1)
    return r == c
