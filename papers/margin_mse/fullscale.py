"""Margin-MSE at full scale: MSMARCO passage, teacher scores from the published files (GPU; downloads).

Training data, streamed (nothing is held as Python strings; each batch reads its rows from Arrow tables):
* ``sentence-transformers/msmarco`` (``datasets``, honoured by HF_HUB_OFFLINE / HF_DATASETS_OFFLINE): subset
  ``bert-ensemble-margin-mse`` (query_id, positive_id, negative_id, score = T2(q, p+) - T2(q, p-), the mean
  ensemble of BERT-Base / BERT-Large / ALBERT-Large CATs, Zenodo 4068216); subsets ``queries`` and ``corpus`` give
  the texts, looked up by id through integer id -> row tables. Triples whose ids do not resolve are counted and
  skipped (as ``teacher_id_to_text.py`` does).
* ``teacher_scores_file`` instead: the id-form teacher file of Zenodo 4068216 (``pos_score \\t neg_score \\t qid \\t
  pid+ \\t pid-``), e.g. the single BERT-Base CAT (**T1**) or the T2 ensemble with separate scores (needed by the
  pointwise and KL losses). ``teacher=T1`` requires it: the hub subset holds T2 margins only.

Validation (as matchmaker): every ``val_every`` steps, re-ranking nDCG@10 on a validation set that is not an
evaluation set (``val_run`` / ``val_qrels`` / ``val_queries_file``, official formats; at most ``val_queries``
queries); the best student is kept and training stops after ``patience`` validations without improvement.

Evaluation of the best student on ``eval_sets`` through ``ir_datasets`` (queries, qrels and the BM25 top-1000
``scoreddocs``): ``dev-small`` (``msmarco-passage/dev/small``, relevant = label >= 1), ``dl19`` / ``dl20``
(``msmarco-passage/trec-dl-20{19,20}/judged``, graded nDCG@10, MRR@10 and Recall binarised at label >= 2). Local
files in the official formats replace dev.small when ``dev_run`` is set. Every judged query counts: a query the run
lacks scores 0. For DOT students also full-collection dense retrieval (``streaming_topk``: passages encoded chunk by
chunk and merged into a running top-k, memory bounded by queries x k). The smoke twin runs this code on tiny
in-memory tables and a stand-in for ir_datasets.
"""

from __future__ import annotations

import json
import time
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.checkpoint import Checkpointer, atomic_write_json
from common.launch import peak_memory_mb, start
from common.metrics.retrieval import rank, ranking_metrics
from common.optim import param_groups, warmup_linear_decay
from common.retrieval import losses as L
from common.retrieval.formats import FormatError, _lines, read_id_text, read_qrels, read_run
from common.retrieval.index import rerank, streaming_topk

PAPER = "margin_mse"
IR_DATASETS = {  # name -> (ir_datasets id, relevance threshold for MRR / Recall)
    "dev-small": ("msmarco-passage/dev/small", 1),
    "dl19": ("msmarco-passage/trec-dl-2019/judged", 2),
    "dl20": ("msmarco-passage/trec-dl-2020/judged", 2),
}


class IdTable:
    """Texts of an Arrow table looked up by integer id (id -> row through a numpy array; no Python strings kept)."""

    def __init__(self, table, id_col: str, text_col: str):
        ids = np.asarray(table[id_col], dtype=np.int64)
        self.table, self.text_col = table, text_col
        self.row = np.full(int(ids.max()) + 1 if len(ids) else 0, -1, dtype=np.int64)
        self.row[ids] = np.arange(len(ids))
        self.ids = ids

    def has(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        ok = (ids >= 0) & (ids < len(self.row))
        ok[ok] = self.row[ids[ok]] >= 0
        return ok

    def get(self, ids) -> list[str]:
        rows = self.row[np.asarray(ids, dtype=np.int64)]
        if (rows < 0).any():
            raise KeyError(f"unknown ids: {np.asarray(ids)[rows < 0][:5].tolist()}")
        return self.table[rows.tolist()][self.text_col]


@dataclass
class Triples:
    """Training triples as arrays: ids and teacher scores (t_pos/t_neg, or only the margin)."""

    qid: np.ndarray
    pos: np.ndarray
    neg: np.ndarray
    margin: np.ndarray
    t_pos: np.ndarray | None
    t_neg: np.ndarray | None
    source: str
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.qid)

    def keep(self, mask: np.ndarray) -> Triples:
        f = lambda a: None if a is None else a[mask]  # noqa: E731
        return Triples(self.qid[mask], self.pos[mask], self.neg[mask], self.margin[mask], f(self.t_pos),
                       f(self.t_neg), self.source, self.dropped + int((~mask).sum()))  # fmt: skip


def read_teacher_file(path: str | Path) -> Triples:
    """The id-form teacher file (``pos_score \\t neg_score \\t qid \\t pid+ \\t pid-``), read line by line into
    compact arrays; a malformed line is named."""
    cols = [array("f"), array("f"), array("q"), array("q"), array("q")]
    for n, line in _lines(path):
        parts = line.split("\t")
        if len(parts) != 5:
            raise FormatError(f"{path}:{n}: expected 5 tab-separated columns (pos_score, neg_score, qid, pid+, pid-)")
        try:
            vals = (float(parts[0]), float(parts[1]), int(parts[2]), int(parts[3]), int(parts[4]))
        except ValueError as e:
            raise FormatError(f"{path}:{n}: {e}") from e
        for c, v in zip(cols, vals, strict=True):
            c.append(v)
    tp, tn, q, p, ng = (np.frombuffer(c, dtype=np.float32 if i < 2 else np.int64) for i, c in enumerate(cols))
    return Triples(q, p, ng, tp - tn, tp, tn, source=f"teacher file {path}")


def load_training(cfg, tables: dict | None = None) -> tuple[Triples, IdTable, IdTable]:
    """Triples with teacher scores, and the query / passage tables (hub datasets, or ``tables`` for the smoke twin)."""
    if tables is None:
        from datasets import load_dataset

        tables = {
            "queries": load_dataset(cfg.hf_dataset, "queries", split="train"),
            "corpus": load_dataset(cfg.hf_dataset, "corpus", split="train"),
        }
        if not cfg.teacher_scores_file:
            tables["margins"] = load_dataset(cfg.hf_dataset, cfg.margin_subset, split="train")
    queries = IdTable(tables["queries"], "query_id", "query")
    corpus = IdTable(tables["corpus"], "passage_id", "passage")
    if cfg.teacher_scores_file:
        tri = read_teacher_file(cfg.teacher_scores_file)
        tri.source = f"{cfg.teacher} scores from {cfg.teacher_scores_file}"
    else:
        if cfg.teacher != "T2":
            raise SystemExit("error: teacher=T1 needs teacher_scores_file (the T1 file of Zenodo record 4068216)")
        m = tables["margins"]
        margin = np.asarray(m["score"], dtype=np.float32)
        tri = Triples(np.asarray(m["query_id"], dtype=np.int64), np.asarray(m["positive_id"], dtype=np.int64),
                      np.asarray(m["negative_id"], dtype=np.int64), margin, None, None,
                      source=f"published T2 margins ({cfg.hf_dataset}/{cfg.margin_subset})")  # fmt: skip
    tri = tri.keep(queries.has(tri.qid) & corpus.has(tri.pos) & corpus.has(tri.neg))
    if cfg.train_triples:
        tri = tri.keep(np.arange(len(tri)) < cfg.train_triples)
    if cfg.loss in ("pointwise_mse", "kl") and tri.t_pos is None:
        raise SystemExit(f"error: loss={cfg.loss} needs separate teacher scores: set teacher_scores_file")
    return tri, queries, corpus


def batch_loss(cfg, s_pos: torch.Tensor, s_neg: torch.Tensor, tri: Triples, idx: np.ndarray) -> torch.Tensor:
    dev = s_pos.device
    if cfg.loss == "ranknet":
        return L.ranknet(s_pos, s_neg)
    if cfg.loss == "margin_mse":
        return L.margin_mse_from_margin(s_pos, s_neg, torch.as_tensor(tri.margin[idx], device=dev))
    t_pos = torch.as_tensor(tri.t_pos[idx], device=dev)
    t_neg = torch.as_tensor(tri.t_neg[idx], device=dev)
    if cfg.loss == "pointwise_mse":
        return L.pointwise_mse(s_pos, s_neg, t_pos, t_neg)
    if cfg.loss == "kl":
        s, t = torch.stack([s_pos, s_neg], 1), torch.stack([t_pos, t_neg], 1)
        return L.kl_distill(s, t, tau=cfg.kl_temperature, teacher_temp=cfg.kl_temperature)
    return L.ranknet_teacher(s_pos, s_neg, t_pos, t_neg)


@dataclass
class EvalSet:
    name: str
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    run: dict[str, list[str]]
    threshold: int


def load_ir_dataset(name: str, ir_id: str, threshold: int, module=None) -> EvalSet:
    """Queries, qrels and the BM25 run (scoreddocs, by descending score) of an ir_datasets collection."""
    if module is None:
        try:
            import ir_datasets as module
        except ImportError as e:
            raise SystemExit(
                f"error: eval set {name} loads through ir_datasets: pip install 'ir-datasets==0.6.3'"
            ) from e
    ds = module.load(ir_id)
    queries = {q.query_id: q.text for q in ds.queries_iter()}
    qrels: dict[str, dict[str, int]] = {}
    for r in ds.qrels_iter():
        qrels.setdefault(r.query_id, {})[r.doc_id] = int(r.relevance)
    scored: dict[str, list[tuple[float, str]]] = {}
    for sd in ds.scoreddocs_iter():
        scored.setdefault(sd.query_id, []).append((-float(sd.score), sd.doc_id))
    run = {q: [d for _, d in sorted(v)] for q, v in scored.items()}
    return EvalSet(name, queries, qrels, run, threshold)


def load_local_set(name: str, run_file: str, qrels_file: str, queries_file: str, threshold: int) -> EvalSet:
    return EvalSet(name, read_id_text(queries_file), read_qrels(qrels_file), read_run(run_file), threshold)


@torch.no_grad()
def evaluate_rerank(model, es: EvalSet, corpus: IdTable, depth: int, batch: int, limit: int = 0) -> dict:
    """Re-rank the run's top-``depth`` per query. The mean runs over every judged query (one with a label >=
    threshold); a judged query missing from the run has an empty list and scores 0."""
    qids = [q for q in es.qrels if any(r >= es.threshold for r in es.qrels[q].values())]
    qids = sorted(qids)[: limit or None]
    ranked = []
    for q in qids:
        cands = es.run.get(q, [])[:depth]
        if not cands or q not in es.queries:
            ranked.append([])
            continue
        sc = rerank(model, [es.queries[q]], np.arange(len(cands))[None], corpus.get([int(c) for c in cands]),
                    batch_size=batch)  # fmt: skip
        ranked.append(rank(sc, np.asarray([cands]))[0].tolist())
    qrels = [{d: r for d, r in es.qrels[q].items()} for q in qids]
    m = ranking_metrics(ranked, qrels, rel_threshold=es.threshold, recall_ks=(depth,))
    m["judged_queries"] = len(qids)
    m["queries_missing_from_run"] = sum(1 for q in qids if not es.run.get(q))
    return m


@torch.no_grad()
def evaluate_dense(model, es: EvalSet, corpus: IdTable, k: int, batch: int, chunk: int, limit: int = 0) -> dict:
    """Full-collection dense retrieval with bounded memory (streaming top-k over encoded passage chunks)."""
    qids = sorted(q for q in es.qrels if any(r >= es.threshold for r in es.qrels[q].values()) and q in es.queries)
    qv = torch.cat([model.encode_query([es.queries[q] for q in qids[i : i + 256]]) for i in range(0, len(qids), 256)])
    ids = corpus.ids[: limit or None]

    def chunks():
        for s in range(0, len(ids), chunk):
            part = ids[s : s + chunk]
            texts = corpus.get(part)
            vecs = torch.cat([model.encode_doc(texts[i : i + batch]) for i in range(0, len(texts), batch)])
            yield [str(int(p)) for p in part], vecs

    top, _ = streaming_topk(qv, chunks(), k)
    return ranking_metrics(top, [es.qrels[q] for q in qids], rel_threshold=es.threshold, recall_ks=(k,))


def eval_sets(cfg, module=None) -> list[EvalSet]:
    out = []
    for name in [n for n in cfg.eval_sets.split(",") if n]:
        if name == "dev-small" and cfg.dev_run:
            out.append(load_local_set(name, cfg.dev_run, cfg.dev_qrels, cfg.dev_queries_file, 1))
        elif name in IR_DATASETS:
            out.append(load_ir_dataset(name, *IR_DATASETS[name], module=module))
        else:
            raise SystemExit(f"error: eval_sets: unknown set {name!r}; choose from {sorted(IR_DATASETS)}")
    return out


def main_msmarco(cfg, tables: dict | None = None, ir_module=None) -> dict:
    """Train (streamed triples, validation with early stopping), then evaluate the best student."""
    from papers.margin_mse.model import build_student, load_encoder

    run = start(cfg, paper=PAPER, find_unused_parameters=True)  # unused student heads stay in the module
    log = (lambda m: print(m, flush=True)) if run.is_main else (lambda m: None)
    t_all = time.time()
    tri, queries, corpus = load_training(cfg, tables)
    log(f"{len(tri)} triples ({tri.source}), {tri.dropped} skipped (unresolved ids or train_triples)")
    if not cfg.val_run:
        raise SystemExit("error: val_run, val_qrels and val_queries_file are required (validation for early stopping)")
    val = load_local_set("val", cfg.val_run, cfg.val_qrels, cfg.val_queries_file, 1)
    words = sorted({w for t in queries.table["query"] for w in t.split()}) if cfg.student_base == "tiny" else []
    if cfg.student_base == "tiny":
        words = sorted(set(words) | {w for t in corpus.table["passage"] for w in t.split()})
    model = build_student(cfg, words).to(run.device)
    opt = torch.optim.AdamW(param_groups(model, cfg.lr, cfg.head_lr_mult, cfg.weight_decay))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_linear_decay(cfg.warmup_steps, cfg.steps))
    gen = torch.Generator().manual_seed(cfg.seed)
    ckpt = Checkpointer(run.dir / "checkpoints", keep=cfg.keep_ckpts, accelerator=run.accelerator)
    step, _ = ckpt.resume({"model": model, "opt": opt, "sched": sched, "gen": gen})
    state_f = run.dir / "validation.json"
    state = json.loads(state_f.read_text()) if state_f.is_file() else {"best": -1.0, "best_step": 0, "bad": 0,
                                                                       "history": []}  # fmt: skip
    model, opt = run.accelerator.prepare(model, opt)
    inner = run.accelerator.unwrap_model(model)
    n = len(tri)
    bar = run.progress(total=cfg.steps, initial=step, desc="student")
    t0 = time.time()
    perm: tuple[int, np.ndarray] = (-1, np.zeros(0, dtype=np.int64))
    while step < cfg.steps and state["bad"] < cfg.patience:
        model.train()
        # epoch-wise permutation from the seed: a resumed run draws the same batches
        ep, j = divmod(step * run.per_device_batch, n)
        if perm[0] != ep:
            perm = (ep, torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1000 + ep)).numpy())
        idx = np.sort(perm[1][j : j + run.per_device_batch])
        q = queries.get(tri.qid[idx])
        s = model(q + q, corpus.get(tri.pos[idx]) + corpus.get(tri.neg[idx])).float()
        with run.accelerator.accumulate(model):
            loss = batch_loss(cfg, s[: len(idx)], s[len(idx) :], tri, idx)
            run.accelerator.backward(loss)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0:
            run.log(step, loss=loss.item())
        if cfg.val_every and step % cfg.val_every == 0 and run.is_main:
            inner.eval()
            v = evaluate_rerank(inner, val, corpus, cfg.candidates, cfg.eval_batch, limit=cfg.val_queries)["nDCG@10"]
            state["history"].append([step, v])
            if v > state["best"]:
                state.update(best=v, best_step=step, bad=0)
                inner.save(run.dir / "best")
            else:
                state["bad"] += 1
            atomic_write_json(state, state_f)
            run.log(step, val_nDCG10=v, best=state["best"])
        if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < cfg.steps:
            ckpt.save(step, {"model": inner, "opt": opt, "sched": sched, "gen": gen})
    bar.close()
    ckpt.save(step, {"model": inner, "opt": opt, "sched": sched, "gen": gen})
    train_s = time.time() - t0
    best = load_encoder(run.dir / "best").to(run.device) if (run.dir / "best").is_dir() else inner
    best.eval()

    metrics: dict[str, float] = {"steps": float(step), "best_val_nDCG@10": state["best"],
                                 "best_step": float(state["best_step"])}  # fmt: skip
    for es in eval_sets(cfg, ir_module):
        m = evaluate_rerank(best, es, corpus, cfg.candidates, cfg.eval_batch)
        metrics.update({f"{es.name}_rerank_{k}": v for k, v in m.items()})
        if cfg.student == "dot":
            d = evaluate_dense(best, es, corpus, cfg.dense_k, cfg.eval_batch, cfg.dense_chunk, cfg.dense_corpus_limit)
            metrics.update({f"{es.name}_dense_{k}": v for k, v in d.items()})
    if run.is_main:
        from common.results import make_record, write_record

        rec = make_record(
            paper=PAPER, preset=cfg.preset, method=cfg.variant, seed=cfg.seed,
            benchmark=f"margin_mse / {cfg.preset}: MSMARCO dev.small, TREC-DL'19/'20",
            dataset="msmarco-passage" if tables is None else "tiny tables", metrics=metrics,
            protocol={"rerank": f"BM25 top-{cfg.candidates}", "relevance": "dev: label >= 1; TREC-DL: nDCG graded, "
                      "MRR / Recall at label >= 2", "teacher": tri.source, "skipped_triples": tri.dropped,
                      "validation": f"re-ranking nDCG@10 every {cfg.val_every} steps, patience {cfg.patience}; "
                      "the best student is evaluated", "queries": "every judged query; missing from the run = 0"},
            config=cfg, wall_time_s=time.time() - t_all, train_wall_time_s=train_s, peak_memory_mb=peak_memory_mb(),
            extra={"validation_history": state["history"]},
        )  # fmt: skip
        write_record(rec, cfg.results_dir)
        inner.save(run.dir / "student")
    run.finish()
    return metrics


def tiny_tables(n_q: int = 8, n_p: int = 40, seed: int = 0, tmp: Path | None = None):
    """In-memory stand-ins for the smoke twin: hub tables, a T1 teacher file, validation files and a fake
    ir_datasets module whose run lacks one judged query."""
    from types import SimpleNamespace

    from datasets import Dataset

    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(30)]
    passages = {i: " ".join(rng.choice(words, 8)) for i in range(n_p)}
    qtext = {i: " ".join(rng.choice(words, 3)) for i in range(n_q)}
    trip = [(int(i % n_q), int(rng.integers(n_p)), int(rng.integers(n_p)), float(rng.normal(5, 3))) for i in range(64)]
    trip.append((999, 0, 1, 1.0))  # an unresolved query id: skipped and counted
    tables = {
        "queries": Dataset.from_dict({"query_id": list(qtext), "query": list(qtext.values())}),
        "corpus": Dataset.from_dict({"passage_id": list(passages), "passage": list(passages.values())}),
        "margins": Dataset.from_dict({k: [t[i] for t in trip] for i, k in
                                      enumerate(("query_id", "positive_id", "negative_id", "score"))}),
    }  # fmt: skip
    run = {str(q): [str(p) for p in rng.choice(n_p, 10, replace=False)] for q in qtext}
    qrels = {q: {run[q][int(rng.integers(10))]: 2} for q in run}
    qrels["77"] = {"3": 2}  # judged, but missing from the run: counts 0
    texts = {str(k): v for k, v in qtext.items()} | {"77": "w1 w2"}

    class _DS:
        def queries_iter(self):
            return (SimpleNamespace(query_id=q, text=t) for q, t in texts.items())

        def qrels_iter(self):
            return (SimpleNamespace(query_id=q, doc_id=d, relevance=r) for q, v in qrels.items() for d, r in v.items())

        def scoreddocs_iter(self):
            return (SimpleNamespace(query_id=q, doc_id=d, score=-float(i)) for q, v in run.items()
                    for i, d in enumerate(v))  # fmt: skip

    module = SimpleNamespace(load=lambda ir_id: _DS())
    files = {}
    if tmp is not None:
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "t1.tsv").write_text("".join(f"{5 + t[3]:.3f}\t5.0\t{t[0]}\t{t[1]}\t{t[2]}\n" for t in trip[:-1]))
        (tmp / "val_run.tsv").write_text("".join(f"{q}\t{d}\n" for q, v in run.items() for d in v))
        (tmp / "val_qrels.txt").write_text("".join(f"{q} 0 {d} {r}\n" for q, v in qrels.items() for d, r in v.items()
                                                   if q != "77"))  # fmt: skip
        (tmp / "val_queries.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in texts.items()))
        files = {k: str(tmp / f) for k, f in (("teacher_scores_file", "t1.tsv"), ("val_run", "val_run.tsv"),
                                              ("val_qrels", "val_qrels.txt"), ("val_queries_file", "val_queries.tsv"))}  # fmt: skip
    return tables, module, files
