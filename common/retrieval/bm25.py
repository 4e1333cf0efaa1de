"""Okapi BM25 over whitespace-tokenised text, as a sparse matrix (candidate generation for re-ranking and triples).

Written by hand because the maintained package (rank-bm25) scores one query at a time in Python loops; here the
collection is a scipy CSR term-weight matrix and a batch of queries is one sparse product.

    score(q, d) = sum_{w in q} idf(w) * tf(w, d) * (k1 + 1) / (tf(w, d) + k1 * (1 - b + b * |d| / avgdl))
    idf(w) = log(1 + (N - df(w) + 0.5) / (df(w) + 0.5))          (Lucene's non-negative idf)

Defaults k1 = 0.9, b = 0.4 (Anserini's MSMARCO setting). Repeated query words count once per occurrence.
Left out: stemming, stop words, and any text normalisation beyond lower-casing and whitespace splitting.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def _tokenize(text: str) -> list[str]:
    return text.lower().split()


class BM25:
    def __init__(self, docs: list[str], k1: float = 0.9, b: float = 0.4):
        self.k1, self.b = k1, b
        vocab: dict[str, int] = {}
        rows, cols, vals = [], [], []
        lengths = np.zeros(len(docs), dtype=np.float64)
        for i, doc in enumerate(docs):
            toks = _tokenize(doc)
            lengths[i] = len(toks)
            counts: dict[int, int] = {}
            for t in toks:
                j = vocab.setdefault(t, len(vocab))
                counts[j] = counts.get(j, 0) + 1
            rows.extend([i] * len(counts))
            cols.extend(counts.keys())
            vals.extend(counts.values())
        self.vocab = vocab
        tf = sp.csr_matrix((vals, (rows, cols)), shape=(len(docs), len(vocab)), dtype=np.float64)
        n = len(docs)
        df = np.bincount(tf.indices, minlength=len(vocab))
        self.idf = np.log1p((n - df + 0.5) / (df + 0.5))
        avgdl = lengths.mean() if n else 1.0
        norm = k1 * (1.0 - b + b * lengths / max(avgdl, 1e-9))
        tf = tf.tocoo()
        w = tf.data * (k1 + 1.0) / (tf.data + norm[tf.row]) * self.idf[tf.col]
        self.weights = sp.csr_matrix((w, (tf.row, tf.col)), shape=tf.shape)  # (N_docs, V)

    def _query_matrix(self, queries: list[str]) -> sp.csr_matrix:
        rows, cols = [], []
        for i, q in enumerate(queries):
            for t in _tokenize(q):
                j = self.vocab.get(t)
                if j is not None:
                    rows.append(i)
                    cols.append(j)
        data = np.ones(len(rows))
        return sp.csr_matrix((data, (rows, cols)), shape=(len(queries), len(self.vocab)))

    def scores(self, queries: list[str]) -> np.ndarray:
        """Dense (Q, N_docs) score matrix."""
        return np.asarray((self._query_matrix(queries) @ self.weights.T).todense())

    def topk(
        self, queries: list[str], k: int, chunk: int = 256, ties: str = "index", seed: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k document ids and scores per query. Equal scores are ordered by the lower document id
        (``ties='index'``) or in a random order drawn per query from ``seed`` (``ties='random'``): with an index
        order a collection whose relevant documents happen to have low ids would be favoured."""
        if ties not in ("index", "random"):
            raise ValueError(f"ties: {ties!r} not in ('index', 'random')")
        rng = np.random.default_rng(seed)
        ids, scs = [], []
        for s in range(0, len(queries), chunk):
            sc = self.scores(queries[s : s + chunk])
            if ties == "random":
                order = np.lexsort((rng.random(sc.shape), -sc), axis=-1)[:, :k]
            else:
                order = np.argsort(-sc, axis=1, kind="stable")[:, :k]
            ids.append(order)
            scs.append(np.take_along_axis(sc, order, axis=1))
        if not ids:
            return np.zeros((0, k), dtype=np.int64), np.zeros((0, k))
        return np.concatenate(ids).astype(np.int64), np.concatenate(scs)
