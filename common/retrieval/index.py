"""Brute-force dense index and candidate re-ranking (evaluation side of ranking distillation).

``DenseIndex`` keeps passage vectors in memory and answers top-k by chunked matrix products (what faiss'
IndexFlatIP does; at the paper's 8.8M-passage scale use faiss on a GPU instead). ``rerank`` scores fixed candidate
lists (e.g. BM25 top-100) with any pair scorer.

Left out: approximate search, compression, sharding over processes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch


class DenseIndex:
    """Inner-product (or cosine) top-k over a fixed set of passage vectors."""

    def __init__(self, vectors: torch.Tensor, ids: Sequence[int] | None = None, metric: str = "dot"):
        if metric not in ("dot", "cosine"):
            raise ValueError(f"metric: {metric!r} not in ('dot', 'cosine')")
        v = vectors.detach().float().cpu()
        self.vectors = torch.nn.functional.normalize(v, dim=-1) if metric == "cosine" else v
        self.ids = np.arange(len(v)) if ids is None else np.asarray(ids)
        self.metric = metric

    @classmethod
    @torch.no_grad()
    def build(
        cls, encode: Callable[[list[str]], torch.Tensor], texts: list[str], batch_size: int = 512, **kw
    ) -> DenseIndex:
        vecs = [encode(texts[i : i + batch_size]).float().cpu() for i in range(0, len(texts), batch_size)]
        return cls(torch.cat(vecs), **kw)

    @torch.no_grad()
    def search(self, queries: torch.Tensor, k: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (ids, scores) per query vector; ties go to the lower index (stable sort)."""
        q = queries.detach().float().cpu()
        if self.metric == "cosine":
            q = torch.nn.functional.normalize(q, dim=-1)
        k = min(k, len(self.vectors))
        ids, scores = [], []
        for s in range(0, len(q), chunk):
            sim = q[s : s + chunk] @ self.vectors.T
            top = torch.sort(-sim, dim=-1, stable=True).indices[:, :k]
            ids.append(self.ids[top.numpy()])
            scores.append(torch.gather(sim, 1, top).numpy())
        return np.concatenate(ids), np.concatenate(scores)


@torch.no_grad()
def rerank(
    score_pairs: Callable[[list[str], list[str]], torch.Tensor],
    queries: Sequence[str],
    candidates: np.ndarray,
    passages: Sequence[str],
    batch_size: int = 1000,
) -> torch.Tensor:
    """Scores (Q, C) of every query against its candidate passage ids, computed in flat batches of pairs."""
    nq, nc = candidates.shape
    flat_q = [queries[i] for i in range(nq) for _ in range(nc)]
    flat_d = [passages[int(d)] for d in candidates.reshape(-1)]
    out = [
        score_pairs(flat_q[i : i + batch_size], flat_d[i : i + batch_size]).float().cpu()
        for i in range(0, len(flat_q), batch_size)
    ]
    return torch.cat(out).view(nq, nc)
