"""Margin-MSE at full scale: MSMARCO passage with the published T2 ensemble margins (GPU; downloads).

Data (through ``datasets``, honoured by HF_HUB_OFFLINE / HF_DATASETS_OFFLINE):
* ``sentence-transformers/msmarco``, subset ``bert-ensemble-margin-mse``: (query_id, positive_id, negative_id, score)
  with score = T2(q, p+) - T2(q, p-), the mean ensemble of BERT-Base / BERT-Large / ALBERT-Large CATs
  (Zenodo 4068216); subsets ``queries`` (query_id, query) and ``corpus`` (passage_id, passage) give the texts.
  Ids that do not resolve are counted and the triple dropped (as ``teacher_id_to_text.py`` does).
* dev.small evaluation from local files in the official formats (``dev_run``: BM25 top-1000 ``qid \\t pid``,
  ``dev_qrels``: TREC qrels, ``dev_queries_file``, ``collection_file``), e.g. exported from ir_datasets
  ``msmarco-passage/dev/small``.

The student (DistilBERT_DOT by default; ColBERT or CAT via ``student``) is trained with ``loss`` on the published
margins (``margin_mse``) or on labels only (``ranknet``); pointwise losses need the separate scores of
``bert-ensemble-mse`` and are not wired here. Evaluation: re-ranking BM25 top-1000 (MRR@10, nDCG@10; MSMARCO
qrels are binary, relevant = label >= 1) and, for DOT, brute-force dense retrieval over the collection
(MRR@10, Recall@1000). The smoke twin (``msmarco-smoke``) runs the same code on tiny in-memory tables.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from common.checkpoint import Checkpointer
from common.launch import peak_memory_mb, start
from common.metrics.retrieval import rank, ranking_metrics
from common.retrieval import losses as L
from common.retrieval.formats import read_id_text, read_qrels, read_run
from common.retrieval.index import DenseIndex, rerank

PAPER = "margin_mse"


def load_margin_triples(cfg):
    """(queries, passages, triples[(qtext, ptext, ntext, margin)], missing counts) from the hub dataset."""
    from datasets import load_dataset

    trip = load_dataset(cfg.hf_dataset, cfg.margin_subset, split="train")
    if cfg.train_triples:
        trip = trip.select(range(min(cfg.train_triples, len(trip))))
    queries = load_dataset(cfg.hf_dataset, "queries", split="train")
    corpus = load_dataset(cfg.hf_dataset, "corpus", split="train")
    qmap = dict(zip(map(str, queries["query_id"]), queries["query"], strict=True))
    pmap = dict(zip(map(str, corpus["passage_id"]), corpus["passage"], strict=True))
    return join_margins(trip, qmap, pmap), pmap


def join_margins(rows, qmap: dict[str, str], pmap: dict[str, str]):
    out, missing = [], 0
    for r in rows:
        q, p, n = qmap.get(str(r["query_id"])), pmap.get(str(r["positive_id"])), pmap.get(str(r["negative_id"]))
        if q is None or p is None or n is None:
            missing += 1
            continue
        out.append((q, p, n, float(r["score"])))
    return out, missing


def tiny_tables(n_q: int = 8, n_p: int = 40, seed: int = 0):
    """In-memory stand-in for the smoke twin: random word ids as texts, margins, a run and qrels."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(30)]
    pmap = {str(i): " ".join(rng.choice(words, 8)) for i in range(n_p)}
    qmap = {str(i): " ".join(rng.choice(words, 3)) for i in range(n_q)}
    rows = [
        {"query_id": str(i % n_q), "positive_id": str(rng.integers(n_p)), "negative_id": str(rng.integers(n_p)), "score": float(rng.normal(5, 3))}
        for i in range(64)
    ]  # fmt: skip
    run = {q: [str(p) for p in rng.choice(n_p, 10, replace=False)] for q in qmap}
    qrels = {q: {run[q][int(rng.integers(10))]: 1} for q in qmap}
    return rows, qmap, pmap, run, qrels, words


def main_msmarco(cfg) -> dict:
    from papers.margin_mse.model import build_student

    smoke = cfg.student_base == "tiny"
    run = start(cfg, paper=PAPER)
    t_all = time.time()
    if smoke:
        rows, qmap, pmap, dev_run, qrels, words = tiny_tables(seed=cfg.seed)
        triples, missing = join_margins(rows, qmap, pmap)
        dev_q = qmap
    else:
        (triples, missing), pmap = load_margin_triples(cfg)
        words = []
        for f in ("dev_run", "dev_qrels", "dev_queries_file"):
            if not getattr(cfg, f):
                raise SystemExit(f"error: {f} is required for the msmarco preset (see papers/margin_mse/README.md)")
        dev_run, qrels, dev_q = read_run(cfg.dev_run), read_qrels(cfg.dev_qrels), read_id_text(cfg.dev_queries_file)
        if cfg.collection_file:
            pmap = read_id_text(cfg.collection_file)
    if run.is_main:
        print(f"{len(triples)} triples, {missing} dropped for unresolved ids", flush=True)

    model = build_student(cfg, words).to(run.device)
    from common.optim import param_groups, warmup_linear_decay

    opt = torch.optim.AdamW(param_groups(model, cfg.lr, cfg.head_lr_mult, cfg.weight_decay))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_linear_decay(cfg.warmup_steps, cfg.steps))
    gen = torch.Generator().manual_seed(cfg.seed)
    ckpt = Checkpointer(run.dir / "checkpoints", keep=cfg.keep_ckpts, accelerator=run.accelerator)
    step, _ = ckpt.resume({"model": model, "opt": opt, "sched": sched, "gen": gen})
    model, opt = run.accelerator.prepare(model, opt)
    inner = run.accelerator.unwrap_model(model)
    bar = run.progress(total=cfg.steps, initial=step, desc="student")
    t0 = time.time()
    while step < cfg.steps:
        model.train()
        idx = torch.randint(len(triples), (run.per_device_batch,), generator=gen).tolist()
        q = [triples[i][0] for i in idx]
        s = model(q + q, [triples[i][1] for i in idx] + [triples[i][2] for i in idx])
        s_pos, s_neg = s[: len(idx)], s[len(idx) :]
        with run.accelerator.accumulate(model):
            if cfg.loss == "margin_mse":
                margin = torch.tensor([triples[i][3] for i in idx], device=s.device)
                loss = L.margin_mse_from_margin(s_pos.float(), s_neg.float(), margin)
            elif cfg.loss == "ranknet":
                loss = L.ranknet(s_pos.float(), s_neg.float())
            else:
                raise SystemExit(
                    f"error: loss={cfg.loss} needs separate teacher scores; msmarco supports margin_mse, ranknet"
                )
            run.accelerator.backward(loss)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0:
            run.log(step, loss=loss.item())
        if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < cfg.steps:
            ckpt.save(step, {"model": inner, "opt": opt, "sched": sched, "gen": gen})
    bar.close()
    ckpt.save(step, {"model": inner, "opt": opt, "sched": sched, "gen": gen})
    train_s = time.time() - t0
    inner.eval()

    metrics: dict[str, float] = {}
    qids = [q for q in dev_run if q in qrels and any(r >= 1 for r in qrels[q].values())]
    cands = [dev_run[q][: cfg.candidates] for q in qids]
    width = max(len(c) for c in cands)
    pad = np.array([c + [c[-1]] * (width - len(c)) for c in cands])
    with torch.no_grad():
        sc = rerank(
            inner,
            [dev_q[q] for q in qids],
            np.arange(pad.size).reshape(pad.shape),
            [pmap[p] for p in pad.reshape(-1)],
            batch_size=cfg.eval_batch,
        )
    ranked = [list(dict.fromkeys(r)) for r in rank(sc, pad).tolist()]  # drop the padding repeats
    ql = [{d: r for d, r in qrels[q].items()} for q in qids]
    m = ranking_metrics(ranked, ql, rel_threshold=1, recall_ks=())
    metrics.update(rerank_MRR10=m["MRR@10"], rerank_nDCG10=m["nDCG@10"])
    if cfg.student == "dot":
        pids = list(pmap)[: cfg.dense_corpus_limit or None]
        with torch.no_grad():
            index = DenseIndex.build(inner.encode_doc, [pmap[p] for p in pids], batch_size=cfg.eval_batch, ids=pids)
            qv = torch.cat(
                [inner.encode_query([dev_q[q] for q in qids[i : i + 256]]) for i in range(0, len(qids), 256)]
            )
        ids, _ = index.search(qv, cfg.dense_k)
        m = ranking_metrics(ids.tolist(), ql, rel_threshold=1, recall_ks=(cfg.dense_k,))
        metrics.update({f"dense_{k}": v for k, v in m.items()})
    metrics = {k.replace("MRR10", "MRR@10").replace("nDCG10", "nDCG@10"): v for k, v in metrics.items()}
    if run.is_main:
        from common.results import make_record, write_record

        rec = make_record(
            paper=PAPER, preset=cfg.preset, method=cfg.variant, seed=cfg.seed,
            benchmark=f"margin_mse / {cfg.preset}: MSMARCO dev.small", dataset="msmarco-passage dev.small" if not smoke else "tiny tables",
            metrics=metrics,
            protocol={"rerank": f"BM25 top-{cfg.candidates}", "relevance": "qrels label >= 1", "teacher": "published T2 margins",
                      "dropped_triples": missing},
            config=cfg, wall_time_s=time.time() - t_all, train_wall_time_s=train_s, peak_memory_mb=peak_memory_mb(),
        )  # fmt: skip
        write_record(rec, cfg.results_dir)
        inner.save(run.dir / "student")
    run.finish()
    return metrics
