"""Ranking metrics MRR@k, nDCG@k and Recall@k over ranked lists with graded judgements (torchmetrics).

Conventions (trec_eval):
* the mean is over all judged queries; a query with no relevant document in its list scores 0 (trec_eval ``-c``);
* nDCG normalises by the ideal ordering of *all* judged documents of the query, also those the list missed;
  gain is the graded label (linear), or 2^rel - 1 with ``exponential_gain=True``;
* Recall@k divides by all relevant judged documents of the query;
* MRR and Recall binarise at ``rel_threshold`` (MSMARCO dev: 1; TREC-DL: 2);
* ties: the caller's order is final. Scores are turned into strictly decreasing values before torchmetrics sees
  them, so its sort cannot reorder tied documents.

torchmetrics only sees the documents in a list, so judged documents that a list missed are appended below the
list with a lower score: they then count in the ideal DCG and the recall denominator but never inside the top k.
A list shorter than the largest cut-off is first padded with unjudged placeholders up to that depth, so a missed
document can never slip into the top k of a short list.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics.retrieval import RetrievalMRR, RetrievalNormalizedDCG, RetrievalRecall


def rank(scores: torch.Tensor | np.ndarray, ids: torch.Tensor | np.ndarray | None = None) -> np.ndarray:
    """Sort each row by descending score, ties broken by position (stable). Returns the ids (or column indices)."""
    s = torch.as_tensor(scores, dtype=torch.float64)
    order = torch.sort(-s, dim=-1, stable=True).indices.numpy()
    if ids is None:
        return order
    return np.take_along_axis(np.asarray(ids), order, axis=-1)


def _flatten(ranked: Sequence[Sequence[int]], qrels: Sequence[dict[int, int]], depth: int = 0):
    idx, preds, target = [], [], []
    for q, (lst, rel) in enumerate(zip(ranked, qrels, strict=True)):
        lst = [int(d) for d in lst]
        seen = set(lst)
        missed = [d for d, r in rel.items() if r > 0 and d not in seen]
        labels = [rel.get(d, 0) for d in lst] + [0] * max(0, depth - len(lst))  # unjudged placeholders
        n = len(labels)
        idx.extend([q] * (n + len(missed)))
        preds.extend(range(n + len(missed), len(missed), -1))  # strictly decreasing, all > the missed ones
        preds.extend([0] * len(missed))
        target.extend(labels)
        target.extend(rel[d] for d in missed)
    return (
        torch.tensor(idx, dtype=torch.long),
        torch.tensor(preds, dtype=torch.float64),
        torch.tensor(target, dtype=torch.long),
    )


def ranking_metrics(
    ranked: Sequence[Sequence[int]],
    qrels: Sequence[dict[int, int]],
    *,
    mrr_k: int = 10,
    ndcg_k: int = 10,
    recall_ks: Sequence[int] = (100,),
    rel_threshold: int = 1,
    exponential_gain: bool = False,
) -> dict[str, float]:
    """MRR@k, nDCG@k and Recall@k of ranked document-id lists against graded qrels (one dict per query)."""
    if len(ranked) != len(qrels):
        raise ValueError(f"ranked has {len(ranked)} queries but qrels has {len(qrels)}")
    if any(not any(r >= rel_threshold for r in rel.values()) for rel in qrels):
        raise ValueError(f"every query needs at least one judgement >= rel_threshold={rel_threshold}")
    idx, preds, target = _flatten(ranked, qrels, depth=max([mrr_k, ndcg_k, *recall_ks]))
    binary = target >= rel_threshold
    out: dict[str, float] = {}
    out[f"MRR@{mrr_k}"] = float(RetrievalMRR(top_k=mrr_k, empty_target_action="neg")(preds, binary, indexes=idx))
    gain = (2**target - 1) if exponential_gain else target
    ndcg = RetrievalNormalizedDCG(top_k=ndcg_k, empty_target_action="neg")
    out[f"nDCG@{ndcg_k}"] = float(ndcg(preds, gain.to(torch.float64), indexes=idx))
    for k in recall_ks:
        out[f"R@{k}"] = float(RetrievalRecall(top_k=k, empty_target_action="neg")(preds, binary, indexes=idx))
    return out


def pairwise_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of (more relevant, less relevant) pairs within a row that the scores order correctly (ties = 0.5)."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    good = total = 0.0
    for row_s, row_y in zip(s, y, strict=True):
        d = row_s[:, None] - row_s[None, :]
        m = row_y[:, None] > row_y[None, :]
        total += m.sum()
        good += (d[m] > 0).sum() + 0.5 * (d[m] == 0).sum()
    return float(good / total) if total else float("nan")
