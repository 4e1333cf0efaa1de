"""Benchmark assembly for Margin-MSE: collection, BM25 candidates, training lists, teacher training and scoring.

Embedded: the synthetic fact collection (data.py), rendered as words of the teacher's tokenizer; BM25 top-C
candidates for train and dev queries; per training query one designated positive and ``negatives_per_query``
negatives sampled from its BM25 list minus the positive (as MSMARCO's triples were built), so every loss sees the
same (q, p+, p-_1..K) lists.

Teachers (BERT_CAT) are trained with binary RankNet on those lists, frozen, and score every (q, p) of the training
lists and the dev candidates once; the scores are cached in the official TSV format
(``pos_score \\t neg_score \\t qid \\t pid+ \\t pid-``) next to the saved teacher. T2 = mean of the members' raw
scores.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.checkpoint import atomic_torch_save, atomic_write_json
from common.metrics.retrieval import rank, ranking_metrics
from common.optim import param_groups, warmup_linear_decay
from common.retrieval.bm25 import BM25
from common.retrieval.formats import ScoredTriple, write_triples
from common.retrieval.index import rerank
from common.retrieval.losses import ranknet
from papers.margin_mse.config import Config
from papers.margin_mse.data import build_collection, pick_words, render
from papers.margin_mse.model import build_teacher, resolve_base


@dataclass
class Bench:
    passages: list[str]
    train_queries: list[str]
    train_lists: np.ndarray  # (Q, 1 + K) passage ids: designated positive, then K sampled negatives
    dev_queries: list[str]
    dev_qrels: list[dict[int, int]]
    dev_cands: np.ndarray  # (Qd, C) BM25 candidates, rank order
    dev_bm25: np.ndarray  # (Qd, C) BM25 scores
    vocab: list[str]  # whole-word vocabulary (tiny word-level tokenizers)


def collection_kwargs(cfg: Config) -> dict:
    return dict(
        n_passages=cfg.n_passages,
        n_entities=cfg.n_entities,
        n_attributes=cfg.n_attributes,
        n_train_queries=cfg.n_train_queries,
        n_dev_queries=cfg.n_dev_queries,
        entities_per_passage=(cfg.entities_per_passage,),
        facts_per_passage=(4, 6),
        facts_per_entity=cfg.facts_per_entity,
        unique_facts=cfg.unique_facts,
        topic_words_per_query=(0, 0),
        filler_per_passage=(0, 0),
        with_values=False,
    )


def build_embedded(cfg: Config) -> Bench:
    c = build_collection(cfg.data_seed, **collection_kwargs(cfg))
    if cfg.teacher_base != "tiny":
        from transformers import AutoTokenizer

        vocab = AutoTokenizer.from_pretrained(resolve_base(cfg.teacher_base)).get_vocab()
        c = render(c, pick_words(vocab, len(c.vocab), seed=cfg.data_seed))
    bm = BM25(c.passages, k1=cfg.bm25_k1, b=cfg.bm25_b)
    tr_ids, _ = bm.topk(c.train_queries, cfg.candidates)
    dv_ids, dv_sc = bm.topk(c.dev_queries, cfg.candidates)
    rng = np.random.default_rng(cfg.data_seed + 1)
    lists = np.zeros((len(c.train_queries), 1 + cfg.negatives_per_query), dtype=np.int64)
    for i, pos in enumerate(c.train_pos):
        lists[i, 0] = pos
        pool = tr_ids[i][tr_ids[i] != pos]
        hard = pool[: cfg.negative_depth - 1] if cfg.negative_depth else pool
        nh = cfg.hard_negatives
        lists[i, 1 : 1 + nh] = rng.choice(hard, size=nh, replace=len(hard) < nh)
        rest = cfg.negatives_per_query - nh
        lists[i, 1 + nh :] = rng.choice(pool, size=rest, replace=len(pool) < rest)
    return Bench(c.passages, c.train_queries, lists, c.dev_queries, c.dev_qrels, dv_ids, dv_sc, c.vocab)


def eval_rerank(scores: torch.Tensor | np.ndarray, bench: Bench) -> dict[str, float]:
    """MRR@10 (relevant = label 2), nDCG@10 (graded) of the dev candidates re-ranked by ``scores``."""
    m = ranking_metrics(rank(scores, bench.dev_cands), bench.dev_qrels, rel_threshold=2, recall_ks=())
    return {"rerank_MRR@10": m["MRR@10"], "rerank_nDCG@10": m["nDCG@10"]}


# --- teachers ---------------------------------------------------------------------------------------------------


def train_teacher(cfg: Config, bench: Bench, seed: int, log=print):
    """Binary RankNet on the training lists (each (q, p+, p-_k) pair), fixed steps."""
    torch.manual_seed(seed)
    model = build_teacher(cfg, bench.vocab)
    model.train()
    opt = torch.optim.AdamW(param_groups(model, cfg.teacher_lr, cfg.head_lr_mult, cfg.weight_decay))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_linear_decay(cfg.teacher_warmup_steps, cfg.teacher_steps))
    rng = np.random.default_rng(seed)
    nq, k = bench.train_lists.shape[0], bench.train_lists.shape[1] - 1
    for step in range(cfg.teacher_steps):
        qi = rng.integers(nq, size=cfg.teacher_batch)
        kj = rng.integers(k, size=cfg.teacher_batch) + 1
        q = [bench.train_queries[i] for i in qi]
        pos = [bench.passages[bench.train_lists[i, 0]] for i in qi]
        neg = [bench.passages[bench.train_lists[i, j]] for i, j in zip(qi, kj, strict=True)]
        s = model(q + q, pos + neg)
        loss = ranknet(s[: len(q)], s[len(q) :])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % max(1, cfg.log_every) == 0:
            log(f"teacher seed {seed} step {step + 1}/{cfg.teacher_steps} ranknet {loss.item():.4f}")
    model.eval()
    return model


def score_lists(model, queries: list[str], lists: np.ndarray, passages: list[str], batch: int) -> torch.Tensor:
    return rerank(model.score if hasattr(model, "score") else model, queries, lists, passages, batch_size=batch)


def teacher_cache_key(cfg: Config) -> dict:
    keys = [
        "dataset", "data_seed", "n_passages", "n_entities", "n_attributes", "n_train_queries", "n_dev_queries",
        "candidates", "negatives_per_query", "bm25_k1", "bm25_b", "teacher_base", "teacher_layers", "teacher_hidden", "identity_init_layers",
        "facts_per_entity", "entities_per_passage", "unique_facts", "negative_depth", "hard_negatives", "teacher_steps",
        "teacher_lr", "head_lr_mult", "weight_decay", "teacher_warmup_steps", "teacher_batch", "max_query_len", "max_doc_len",
        "freeze_embeddings",
    ]  # fmt: skip
    return {k: getattr(cfg, k) for k in keys}


def ensure_teachers(cfg: Config, bench: Bench, n: int, cache_dir: Path, log=print) -> list[dict]:
    """Train (or load from cache) teachers 0..n-1; each gives train-list scores (Q, 1+K), dev scores (Qd, C)."""
    key = teacher_cache_key(cfg)
    out = []
    for t in range(n):
        d = cache_dir / f"cat-{t}"
        f = d / "scores.pt"
        if f.is_file() and json.loads((d / "cache_key.json").read_text()) == key:
            out.append(torch.load(f))
            continue
        t0 = time.time()
        model = train_teacher(cfg, bench, seed=1000 + t, log=log)
        train_s = time.time() - t0
        tr = score_lists(model, bench.train_queries, bench.train_lists, bench.passages, cfg.eval_batch)
        dv = score_lists(model, bench.dev_queries, bench.dev_cands, bench.passages, cfg.eval_batch)
        d.mkdir(parents=True, exist_ok=True)
        model.save(d / "model")
        triples = (
            ScoredTriple(
                float(tr[i, 0]), float(tr[i, j]), str(i), str(bench.train_lists[i, 0]), str(bench.train_lists[i, j])
            )
            for i in range(tr.shape[0])
            for j in range(1, tr.shape[1])
        )
        write_triples(triples, d / "teacher_scores.tsv")
        rec = {"train": tr, "dev": dv, "train_wall_time_s": train_s, "seed": 1000 + t}
        atomic_torch_save(rec, f)
        atomic_write_json(key, d / "cache_key.json")
        log(f"teacher {t}: trained in {train_s:.0f}s, dev {eval_rerank(dv, bench)}")
        out.append(rec)
    return out


def ensemble(teachers: list[dict], which: str) -> dict:
    """T1 = the first teacher; T2 = mean of all members' raw scores (teacher_scores_ensemble.py, 'mean')."""
    if which == "T1":
        return {"train": teachers[0]["train"], "dev": teachers[0]["dev"]}
    return {k: torch.stack([t[k] for t in teachers]).mean(0) for k in ("train", "dev")}


def replace(cfg: Config, **kw) -> Config:
    return dataclasses.replace(cfg, **kw)
