"""Brute-force dense index and candidate re-ranking (evaluation side of ranking distillation).

``DenseIndex`` keeps passage vectors in memory and answers top-k by chunked matrix products (what faiss'
IndexFlatIP does). ``streaming_topk`` never holds the collection: passages are encoded chunk by chunk and each
chunk's scores are merged into a running top-k per query, so memory is bounded by (queries x k) plus one
(query block x passage chunk) score block -- the full-collection search of the paper's 8.8M passages. ``rerank``
scores fixed candidate lists (e.g. BM25 top-100) with any pair scorer.

Left out: approximate search, compression, sharding over processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

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
            top = torch.sort(-sim, dim=-1, stable=True).indices[:, :k]  # stable: ties go to the lower index
            ids.append(self.ids[top.numpy()])
            scores.append(torch.gather(sim, 1, top).numpy())
        return np.concatenate(ids), np.concatenate(scores)


@torch.no_grad()
def streaming_topk(
    queries: torch.Tensor,
    passage_chunks: Iterable[tuple[Sequence, torch.Tensor]],
    k: int,
    query_block: int = 4096,
) -> tuple[list[list], np.ndarray]:
    """Exact inner-product top-k over a collection given as chunks ``(ids, vectors)`` (e.g. encoded on the fly).

    Keeps a running (Q, k) table of the best scores and their global positions; each chunk is scored against
    ``query_block`` queries at a time and merged with ``torch.topk``, so the (Q, N) score matrix never exists.
    Ties between equal scores go to the passage seen first. Returns (ids per query, scores (Q, k))."""
    q = queries.detach().float().cpu()
    best_s = torch.full((len(q), k), float("-inf"))
    best_i = torch.full((len(q), k), -1, dtype=torch.long)
    all_ids: list = []
    for ids, vecs in passage_chunks:
        v = vecs.detach().float().cpu()
        offset = len(all_ids)
        all_ids.extend(ids)
        pos = torch.arange(offset, offset + len(v))
        for s in range(0, len(q), query_block):
            sim = q[s : s + query_block] @ v.T
            cat_s = torch.cat([best_s[s : s + query_block], sim], 1)
            cat_i = torch.cat([best_i[s : s + query_block], pos.expand(len(sim), -1)], 1)
            # sort by (score desc, position asc) so ties keep the earlier passage
            order = torch.sort(-cat_s, dim=1, stable=True).indices[:, :k]
            best_s[s : s + query_block] = torch.gather(cat_s, 1, order)
            best_i[s : s + query_block] = torch.gather(cat_i, 1, order)
    kk = min(k, len(all_ids))
    out_ids = [[all_ids[int(j)] for j in row[:kk]] for row in best_i]
    return out_ids, best_s[:, :kk].numpy()


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
