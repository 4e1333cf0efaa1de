"""Benchmark assembly for Margin-MSE: collection, BM25 candidates, training lists, teachers, and the gates.

Embedded: the paraphrased-facts collection (data.py). BM25 top-C candidates (random tie order) for every query;
per training query one designated positive and ``negatives_per_query`` negatives sampled from its BM25 list minus
the positive (as MSMARCO's triples were built), so every student loss sees the same (q, p+, p-_1..K) lists.

Teachers (BERT_CAT) train on their own lists: the positive plus ``teacher_negatives`` negatives of which a share
``teacher_distractor_frac`` are binding distractors (the same entity or attribute in another fact), false negatives
removed through the training qrels. They are frozen and score every (q, p) of the student lists and the val/dev
candidates once; the scores are cached in the official TSV format (``pos_score \\t neg_score \\t qid \\t pid+
\\t pid-``) next to the saved teacher, keyed by every setting that changes them. T2 = mean of the members' raw
scores (``teacher_scores_ensemble.py``, "mean").

Gates (``gates``): the oracle ranks every query perfectly; BM25 with random tie order; every teacher beats BM25 by
``min_gap``; no dev (entity, attribute) pair occurs among the training or validation queries. The labels-only
student gate needs a trained student and is checked by the claims runner.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.checkpoint import atomic_torch_save, atomic_write_json
from common.metrics.retrieval import rank, ranking_metrics
from common.optim import param_groups, warmup_linear_decay
from common.retrieval.bm25 import BM25
from common.retrieval.formats import ScoredTriple, write_triples
from common.retrieval.index import rerank
from common.retrieval.losses import ranknet
from papers.margin_mse.config import Config
from papers.margin_mse.data import Collection, build_collection, real_word_names
from papers.margin_mse.model import build_teacher, resolve_base


@dataclass
class Split:
    queries: list[str]
    pairs: np.ndarray  # (Q, 2) entity, attribute
    qrels: list[dict[int, int]]
    cands: np.ndarray  # (Q, C) BM25 candidates, rank order (random ties)
    bm25: np.ndarray  # (Q, C) BM25 scores


@dataclass
class Bench:
    coll: Collection
    passages: list[str]
    train_queries: list[str]
    train_pairs: np.ndarray
    train_lists: np.ndarray  # (Q, 1 + K) students: designated positive, then K BM25 negatives
    teacher_lists: np.ndarray  # (Q, 1 + Kt) teachers: positive, then distractor / BM25 negatives (no false ones)
    val: Split
    dev: Split

    @property
    def vocab(self) -> list[str]:
        return self.coll.vocab

    def split(self, name: str) -> Split:
        return {"val": self.val, "dev": self.dev}[name]


def collection_kwargs(cfg: Config) -> dict:
    return dict(
        n_entities=cfg.n_entities,
        n_attributes=cfg.n_attributes,
        values_per_attribute=cfg.values_per_attribute,
        facts_per_passage=cfg.facts_per_passage,
        dev_frac=cfg.dev_frac,
        val_frac=cfg.val_frac,
        train_paraphrases=cfg.train_paraphrases,
    )


def build_embedded(cfg: Config) -> Bench:
    kw = collection_kwargs(cfg)
    if cfg.teacher_base != "tiny":  # names as single-token words of the pretrained teacher's vocabulary
        from transformers import AutoTokenizer

        vocab = AutoTokenizer.from_pretrained(resolve_base(cfg.teacher_base)).get_vocab()
        kw["names"] = real_word_names(
            vocab, cfg.n_entities, cfg.n_attributes, cfg.values_per_attribute, seed=cfg.data_seed
        )
    c = build_collection(cfg.data_seed, **kw)
    bm = BM25(c.passages, k1=cfg.bm25_k1, b=cfg.bm25_b)
    tr = c.splits["train"]
    tr_ids, _ = bm.topk(tr.text, cfg.candidates, ties="random", seed=cfg.data_seed)
    splits = {}
    for name in ("val", "dev"):
        q = c.splits[name]
        ids, sc = bm.topk(q.text, cfg.candidates, ties="random", seed=cfg.data_seed + 1)
        splits[name] = Split(q.text, q.pairs, q.qrels, ids, sc)
    rng = np.random.default_rng(cfg.data_seed + 1)
    k = cfg.negatives_per_query
    lists = np.zeros((len(tr.text), 1 + k), dtype=np.int64)
    for i, pos in enumerate(tr.pos):
        lists[i, 0] = pos
        pool = tr_ids[i][tr_ids[i] != pos]
        lists[i, 1:] = rng.choice(pool, size=k, replace=len(pool) < k)
    return Bench(
        c, c.passages, tr.text, tr.pairs, lists, teacher_lists(cfg, c, tr_ids, rng), splits["val"], splits["dev"]
    )


def build_embedded_cached(cfg: Config) -> Bench:
    """``build_embedded``, pickled in the shared folder under a hash of the settings it reads (the claims runners
    build the same benchmark)."""
    import hashlib
    import pickle

    keys = [k for k in TEACHER_KEYS if not k.startswith("teacher_") and k not in ("identity_init_layers",)]
    keys += ["teacher_base", "teacher_negatives", "teacher_distractor_frac"]
    key = hashlib.sha256(json.dumps({k: getattr(cfg, k) for k in keys}, sort_keys=True).encode()).hexdigest()[:16]
    f = Path(cfg.out_dir) / "margin_mse" / cfg.preset / "shared" / f"bench-{key}.pkl"
    if f.is_file():
        return pickle.loads(f.read_bytes())
    bench = build_embedded(cfg)
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(bench))
    tmp.replace(f)
    return bench


def teacher_lists(cfg: Config, c: Collection, tr_ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Positive + negatives for teacher training: binding distractors first (same entity and attribute in other
    facts; then same entity or same attribute), the rest from the BM25 list; no passage relevant by the qrels."""
    tr = c.splits["train"]
    kt = cfg.teacher_negatives
    n_dis = int(round(cfg.teacher_distractor_frac * kt))
    out = np.zeros((len(tr.text), 1 + kt), dtype=np.int64)
    for i, ((e, a), pos) in enumerate(zip(tr.pairs, tr.pos, strict=True)):
        rel = c.by_pair[(int(e), int(a))]
        strong = c.binding_distractors(int(e), int(a))
        weak = sorted((c.by_entity[int(e)] | c.by_attribute[int(a)]) - rel - set(strong))
        dis = list(rng.permutation(strong))[:n_dis]
        if len(dis) < n_dis:
            dis += list(rng.choice(weak, size=n_dis - len(dis), replace=False))
        pool = [p for p in tr_ids[i] if p not in rel and p not in dis]
        rest = list(rng.choice(pool, size=kt - n_dis, replace=len(pool) < kt - n_dis))
        out[i] = [pos, *dis, *rest]
    return out


def eval_rerank(scores: torch.Tensor | np.ndarray, split: Split, per_query: bool = False) -> dict:
    """MRR@10 (relevant = label 2), nDCG@10 (graded) of the candidates re-ranked by ``scores``; with ``per_query``
    also the per-query reciprocal ranks (for paired intervals)."""
    ranked = rank(scores, split.cands)
    m = ranking_metrics(ranked, split.qrels, rel_threshold=2, recall_ks=())
    out = {"rerank_MRR@10": m["MRR@10"], "rerank_nDCG@10": m["nDCG@10"]}
    if per_query:
        out["_rr"] = reciprocal_ranks(ranked, split.qrels)
    return out


def reciprocal_ranks(ranked: np.ndarray, qrels: list[dict[int, int]], k: int = 10, threshold: int = 2) -> np.ndarray:
    rr = np.zeros(len(qrels))
    for i, (lst, rel) in enumerate(zip(ranked, qrels, strict=True)):
        for r, d in enumerate(lst[:k]):
            if rel.get(int(d), 0) >= threshold:
                rr[i] = 1.0 / (r + 1)
                break
    return rr


# --- teachers ---------------------------------------------------------------------------------------------------


def train_teacher(cfg: Config, bench: Bench, seed: int, log=print, model=None, first_cycle: int = 0):
    """``teacher_cycles`` warm-restart cycles of ``teacher_steps`` on the teacher lists: softmax cross-entropy over
    (p+, p-_1..K) (our default) or binary RankNet on every (p+, p-_k) pair (matchmaker's ``ranknet``). Each cycle
    starts a fresh AdamW with its own warm-up and linear decay and draws batches from its own RNG (cycle 0: ``seed``,
    cycle c: ``[seed, c]``), so training a cached model on from ``first_cycle`` equals training from scratch."""
    if model is None:
        torch.manual_seed(seed)
        model = build_teacher(cfg, bench.vocab)
    model.train()
    lists = bench.teacher_lists
    nq, k1 = lists.shape
    for cycle in range(first_cycle, cfg.teacher_cycles):
        steps = cfg.teacher_steps if cycle == 0 or not cfg.teacher_restart_steps else cfg.teacher_restart_steps
        opt = torch.optim.AdamW(param_groups(model, cfg.teacher_lr, cfg.head_lr_mult, cfg.weight_decay))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_linear_decay(cfg.teacher_warmup_steps, steps))
        rng = np.random.default_rng(seed if cycle == 0 else [seed, cycle])
        t0, ema = time.time(), None
        for step in range(steps):
            qi = rng.integers(nq, size=cfg.teacher_batch)
            q = [bench.train_queries[i] for i in qi for _ in range(k1)]
            d = [bench.passages[p] for p in lists[qi].reshape(-1)]
            if cfg.teacher_rename:
                q, d = rename_names(bench.coll, q, d, rng)
            s = model(q, d).view(len(qi), k1)
            if cfg.teacher_loss == "softmax":
                loss = F.cross_entropy(s, torch.zeros(len(qi), dtype=torch.long))
            else:
                loss = ranknet(s[:, :1], s[:, 1:])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
            if (step + 1) % max(1, cfg.log_every) == 0:
                log(
                    f"teacher seed {seed} cycle {cycle} step {step + 1}/{steps} {cfg.teacher_loss} "
                    f"{ema:.4f} ({(time.time() - t0) / (step + 1):.2f}s/step)"
                )
    model.eval()
    return model


def rename_names(coll: Collection, queries: list[str], passages: list[str], rng: np.random.Generator):
    """One random permutation of the entity names and, per attribute, of its value names, applied to every query and
    passage of a batch alike. Relevance depends only on which entity and attribute a query and a fact share, so the
    labels are unchanged; a model can no longer memorise what a name stands for and has to match names instead."""
    ents = coll.entity_names
    mapping = dict(zip(ents, (ents[i] for i in rng.permutation(len(ents))), strict=True))
    for vals in coll.value_names:
        mapping.update(zip(vals, (vals[i] for i in rng.permutation(len(vals))), strict=True))

    def sub(texts: list[str]) -> list[str]:
        return [" ".join(mapping.get(w, w) for w in t.split()) for t in texts]

    return sub(queries), sub(passages)


def score_lists(model, queries: list[str], lists: np.ndarray, passages: list[str], batch: int) -> torch.Tensor:
    return rerank(model.score if hasattr(model, "score") else model, queries, lists, passages, batch_size=batch)


TEACHER_KEYS = (
    "dataset", "data_seed", "n_entities", "n_attributes", "values_per_attribute", "facts_per_passage", "dev_frac",
    "val_frac", "train_paraphrases", "candidates", "negatives_per_query", "bm25_k1", "bm25_b", "teacher_base",
    "teacher_layers", "teacher_hidden", "teacher_pooling", "identity_init_layers", "teacher_steps", "teacher_cycles", "teacher_restart_steps",
    "teacher_loss", "teacher_rename",
    "teacher_negatives", "teacher_distractor_frac", "teacher_lr", "head_lr_mult", "weight_decay",
    "teacher_warmup_steps", "teacher_batch", "max_query_len", "max_doc_len", "freeze_embeddings",
)  # fmt: skip


def teacher_cache_key(cfg: Config) -> dict:
    """Every setting that changes a teacher's scores (a changed setting retrains instead of reusing the cache)."""
    return {k: getattr(cfg, k) for k in TEACHER_KEYS}


def ensure_teachers(
    cfg: Config, bench: Bench, n: int, cache_dir: Path, log=print, only: list[int] | None = None
) -> list[dict]:
    """Train (or load from cache) teachers 0..n-1 (or the indices in ``only``); each gives scores of the student
    training lists (Q, 1+K) and of the val / dev candidates (Q, C)."""
    key = teacher_cache_key(cfg)
    out = []
    for t in only if only is not None else range(n):
        d = cache_dir / f"cat-{t}"
        f = d / "scores.pt"
        cached = json.loads((d / "cache_key.json").read_text()) if (d / "cache_key.json").is_file() else None
        if cached is not None:  # keys added later hold their defaults in older caches
            cached = {"teacher_cycles": 1, "teacher_restart_steps": 0, "teacher_rename": False, **cached}
        if f.is_file() and cached == key:
            out.append(torch.load(f))
            continue
        t0, model, first, prior_s = time.time(), None, 0, 0.0
        # a cached teacher that differs only by fewer cycles is trained on (the cycles are independent restarts)
        later = ("teacher_cycles", "teacher_restart_steps")
        same = cached is not None and {k: v for k, v in cached.items() if k not in later} == {
            k: v for k, v in key.items() if k not in later
        }
        if same and cached.get("teacher_cycles", 1) < cfg.teacher_cycles and (d / "model").is_dir():
            from papers.margin_mse.model import load_encoder

            model, first = load_encoder(d / "model"), cached.get("teacher_cycles", 1)
            prior_s = float(torch.load(f).get("train_wall_time_s", 0.0)) if f.is_file() else 0.0
            log(f"teacher {t}: continuing the cached model from cycle {first}")
        model = train_teacher(cfg, bench, seed=1000 + t, log=log, model=model, first_cycle=first)
        train_s = prior_s + time.time() - t0
        tr = score_lists(model, bench.train_queries, bench.train_lists, bench.passages, cfg.eval_batch)
        sc = {
            name: score_lists(model, bench.split(name).queries, bench.split(name).cands, bench.passages, cfg.eval_batch)
            for name in ("val", "dev")
        }
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
        rec = {"train": tr, **sc, "train_wall_time_s": train_s, "seed": 1000 + t}
        atomic_torch_save(rec, f)
        atomic_write_json(key, d / "cache_key.json")
        log(f"teacher {t}: trained in {train_s:.0f}s, dev {eval_rerank(sc['dev'], bench.dev)}")
        out.append(rec)
    return out


def ensemble(teachers: list[dict], which: str) -> dict:
    """T1 = the first teacher; T2 = mean of all members' raw scores (teacher_scores_ensemble.py, 'mean')."""
    keys = ("train", "val", "dev")
    if which == "T1":
        return {k: teachers[0][k] for k in keys}
    return {k: torch.stack([t[k] for t in teachers]).mean(0) for k in keys}


# --- gates (checked and recorded before any claim) ---------------------------------------------------------------


def oracle_scores(split: Split) -> np.ndarray:
    return np.array([[rel.get(int(p), 0) for p in row] for row, rel in zip(split.cands, split.qrels, strict=True)])


def no_binding_scores(bench: Bench, split: Split) -> np.ndarray:
    """Reference heuristic without binding: 2 if a passage names the entity and the attribute (in any facts), 1 if
    one of them, 0 otherwise (an oracle for the attribute paraphrase, random order within a score)."""
    c = bench.coll
    return np.array(
        [
            [(int(p) in c.by_entity[int(e)]) + (int(p) in c.by_attribute[int(a)]) for p in row]
            for row, (e, a) in zip(split.cands, split.pairs, strict=True)
        ],
        dtype=np.float64,
    )


def random_tie_mrr(scores: np.ndarray, split: Split, n: int, seed: int = 0) -> tuple[float, float]:
    """Mean and std of MRR@10 over ``n`` random orders of tied scores."""
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n):
        perm = np.argsort(rng.random(scores.shape), axis=1)
        sc = np.take_along_axis(scores, perm, 1)
        sp = Split(split.queries, split.pairs, split.qrels, np.take_along_axis(split.cands, perm, 1), sc)
        vals.append(eval_rerank(sc, sp)["rerank_MRR@10"])
    return float(np.mean(vals)), float(np.std(vals))


def pair_overlap(bench: Bench) -> dict[str, int]:
    """Count dev (entity, attribute) pairs that occur among training / validation queries (must be 0)."""
    dev = {tuple(p) for p in bench.dev.pairs.tolist()}
    return {
        "dev_pairs_in_train": len(dev & {tuple(p) for p in bench.train_pairs.tolist()}),
        "dev_pairs_in_val": len(dev & {tuple(p) for p in bench.val.pairs.tolist()}),
        "dev_queries_in_train": len(set(bench.dev.queries) & set(bench.train_queries)),
    }


def gates(cfg: Config, bench: Bench, teachers: list[dict], min_gap: float = 0.1) -> dict:
    """The benchmark gates on dev: oracle = 1, BM25 (random ties), each teacher >= BM25 + min_gap, no dev pair in
    training. Returns the measured values and a pass flag per gate."""
    oracle = eval_rerank(oracle_scores(bench.dev), bench.dev)["rerank_MRR@10"]
    bm25_mean, bm25_std = random_tie_mrr(bench.dev.bm25, bench.dev, cfg.bm25_tie_seeds)
    heur_mean, heur_std = random_tie_mrr(no_binding_scores(bench, bench.dev), bench.dev, cfg.bm25_tie_seeds)
    t_mrr = [eval_rerank(t["dev"], bench.dev)["rerank_MRR@10"] for t in teachers]
    t2 = eval_rerank(ensemble(teachers, "T2")["dev"], bench.dev)["rerank_MRR@10"] if len(teachers) > 1 else None
    overlap = pair_overlap(bench)
    out = {
        "oracle_MRR@10": oracle,
        "bm25_MRR@10": bm25_mean,
        "bm25_MRR@10_std_over_tie_orders": bm25_std,
        "no_binding_heuristic_MRR@10": heur_mean,
        "teacher_MRR@10": t_mrr,
        "teacher_T2_MRR@10": t2,
        "min_teacher_minus_bm25": min(t_mrr) - bm25_mean,
        **overlap,
        "dev_queries": len(bench.dev.queries),
        "val_queries": len(bench.val.queries),
        "train_queries": len(bench.train_queries),
    }
    out["pass"] = {
        "oracle_is_1": oracle >= 1.0 - 1e-9,
        "teacher_beats_bm25_by_min_gap": out["min_teacher_minus_bm25"] >= min_gap,
        "no_dev_pair_in_training": sum(overlap.values()) == 0,
    }
    return out


def replace(cfg: Config, **kw) -> Config:
    return dataclasses.replace(cfg, **kw)
