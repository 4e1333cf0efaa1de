"""Margin-MSE: cross-architecture ranking distillation (Hofstätter et al. 2020, arXiv:2010.02666) — training entry point.

    python -m papers.margin_mse.train                        # embedded default (CPU, minutes)
    accelerate launch papers/margin_mse/train.py --preset embedded --set loss=ranknet seed=1
    python -m papers.margin_mse.train --preset msmarco       # full scale (GPU, downloads; see README)

Embedded run, top to bottom: build the benchmark (synthetic facts + BM25 candidates, benchmark.py); train or load
the BERT_CAT teacher(s) and cache their scores; train the student with ``loss`` on the same (q, p+, p-_1..K)
lists and the same budget as every other loss; evaluate re-ranking of the dev BM25 candidates and (DOT) dense
retrieval over the whole collection; measure score ranges and the re-ranking latency of student and teacher; check
the precondition (teacher beats BM25 and the label-only student; the label-only student of the same seed is trained
when missing); write the result record and save the student as a transformers folder. Re-running resumes.

Left out: PreTTR and TK students; multi-process dense indexing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script (accelerate launch papers/margin_mse/train.py)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import torch

from common.checkpoint import Checkpointer, atomic_write_json
from common.config import parse_cli
from common.launch import peak_memory_mb, start
from common.metrics.retrieval import ranking_metrics
from common.optim import param_groups, warmup_linear_decay
from common.retrieval import losses as L
from common.retrieval.index import DenseIndex, rerank
from papers.margin_mse.benchmark import (
    build_embedded,
    ensemble,
    ensure_teachers,
    eval_rerank,
    replace,
)
from papers.margin_mse.config import PRESETS, Config
from papers.margin_mse.model import build_student

PAPER = "margin_mse"


def student_scores(model, queries: list[str], docs: list[str]) -> torch.Tensor:
    return model(queries, docs)


def training_loss(cfg: Config, s: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
    """s, t: (B, 1 + K) scores of (p+, p-_1..K). Every loss sees the same lists (budget-matched comparison)."""
    s_pos, s_neg = s[:, :1], s[:, 1:]
    if cfg.loss == "ranknet":  # binary labels only: the no-KD baseline
        return L.ranknet(s_pos, s_neg)
    t_pos, t_neg = t[:, :1], t[:, 1:]
    if cfg.loss == "margin_mse":  # Eq. (1), n-tuple form: mean over the K (p+, p-_k) margins
        return L.margin_mse(s_pos, s_neg, t_pos, t_neg)
    if cfg.loss == "pointwise_mse":
        return L.pointwise_mse(s_pos.expand_as(s_neg), s_neg, t_pos.expand_as(t_neg), t_neg)
    if cfg.loss == "kl":
        return L.kl_distill(s, t, tau=cfg.kl_temperature, teacher_temp=cfg.kl_temperature)
    if cfg.loss == "ranknet_teacher":
        return L.ranknet_teacher(s_pos, s_neg, t_pos, t_neg)
    raise ValueError(cfg.loss)


def student_steps(cfg: Config, n_queries: int) -> int:
    """Optimizer steps: ``steps`` if set, else ``epochs`` passes over the training queries."""
    return cfg.steps or max(1, math.ceil(cfg.epochs * n_queries / cfg.global_batch))


def train_student(cfg: Config, run, bench, teacher: dict | None):
    """Epoch-ordered passes over the training lists (each query once per epoch, order from ``seed``)."""
    model = build_student(cfg, bench.vocab).to(run.device)
    opt = torch.optim.AdamW(param_groups(model, cfg.lr, cfg.head_lr_mult, cfg.weight_decay))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_linear_decay(cfg.warmup_steps, cfg.steps))
    gen = torch.Generator().manual_seed(cfg.seed)
    ckpt = Checkpointer(run.dir / "checkpoints", keep=cfg.keep_ckpts, accelerator=run.accelerator)
    objects = {"model": model, "opt": opt, "sched": sched, "gen": gen}
    step, _ = ckpt.resume(objects)
    model, opt = run.accelerator.prepare(model, opt)
    inner = run.accelerator.unwrap_model(model)
    nq = bench.train_lists.shape[0]
    # The epoch order is a function of the seed alone, so a resumed run continues the same sequence. One optimizer
    # step takes the next global_batch queries of it (wrapping inside the epoch for the last step, so every query is
    # seen at least once per epoch); process r's micro-batch m is the (r * accum + m)-th slice of per_device_batch
    # of them. Every process trains on its own queries, and the result does not depend on how the global batch is
    # spread over processes and micro-batches of the same size (tested).
    gb, b, accum = cfg.global_batch, run.per_device_batch, run.grad_accum
    rank = run.accelerator.process_index
    per_epoch = math.ceil(nq / gb)
    orders = [torch.randperm(nq, generator=torch.Generator().manual_seed(cfg.seed * 1000 + ep))
              for ep in range(cfg.steps // per_epoch + 1)]  # fmt: skip
    t_train = teacher["train"] if teacher is not None else None
    bar = run.progress(total=cfg.steps, initial=step, desc=f"student {cfg.variant}")
    t0 = time.time()
    while step < cfg.steps:
        model.train()
        ep, j = divmod(step, per_epoch)
        batch = orders[ep][(j * gb + torch.arange(gb)) % nq]
        losses = []
        for m in range(accum):
            qi = batch[(rank * accum + m) * b : (rank * accum + m + 1) * b].numpy()
            lists = bench.train_lists[qi]
            k1 = lists.shape[1]
            q = [bench.train_queries[i] for i in qi for _ in range(k1)]
            d = [bench.passages[p] for p in lists.reshape(-1)]
            with run.accelerator.accumulate(model):  # DDP reduces on the last micro-batch; loss / accum
                s = model(q, d).view(len(qi), k1)
                t = t_train[qi].to(s.device) if t_train is not None else None
                loss = training_loss(cfg, s, t)
                run.accelerator.backward(loss)
            losses.append(loss.item())
        opt.step()  # one optimizer step per global batch
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            run.log(step, loss=sum(losses) / len(losses), lr=sched.get_last_lr()[0])
        if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < cfg.steps:
            ckpt.save(step, {"model": inner, "opt": opt, "sched": sched, "gen": gen})
    bar.close()
    ckpt.save(step, {"model": inner, "opt": opt, "sched": sched, "gen": gen})
    inner.eval()
    return inner, time.time() - t0


@torch.no_grad()
def latency_ms(score_fn, split, passages, n_queries: int, n_cands: int, batch: int) -> float:
    """Median wall time (ms) to score n_cands candidates of one query (query and passages encoded on the fly)."""
    times = []
    for i in range(min(n_queries, len(split.queries))):
        cands = np.resize(split.cands[i], n_cands)
        q = [split.queries[i]] * n_cands
        d = [passages[p] for p in cands]
        t0 = time.perf_counter()
        for s in range(0, n_cands, batch):
            score_fn(q[s : s + batch], d[s : s + batch])
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times)) if times else float("nan")


@torch.no_grad()
def rerank_by_encoding(model, queries: list[str], cands: np.ndarray, passages: list[str], batch: int) -> torch.Tensor:
    """Candidate scores (Q, C) of a DOT or ColBERT student with every query and every candidate passage encoded
    once (a cross-encoder has to score each pair: ``rerank``). Equal to the pairwise scores up to float rounding."""
    from common.retrieval.encoders import BiEncoder, ColBERT

    if not isinstance(model, BiEncoder | ColBERT):
        return rerank(model, queries, cands, passages, batch_size=batch)
    uniq, inv = np.unique(cands, return_inverse=True)
    inv = torch.as_tensor(inv.reshape(cands.shape))
    texts = [passages[int(p)] for p in uniq]
    if isinstance(model, BiEncoder):
        dv = torch.cat([model.encode_doc(texts[i : i + batch]).float() for i in range(0, len(texts), batch)])
        qv = torch.cat([model.encode_query(queries[i : i + batch]).float() for i in range(0, len(queries), batch)])
        return (qv[:, None, :] * dv[inv]).sum(-1)
    parts = [model.encode_doc(texts[i : i + batch]) for i in range(0, len(texts), batch)]
    width = max(h.shape[1] for h, _ in parts)
    dh = torch.cat([torch.nn.functional.pad(h.float(), (0, 0, 0, width - h.shape[1])) for h, _ in parts])
    dm = torch.cat([torch.nn.functional.pad(m, (0, width - m.shape[1])) for _, m in parts])
    out = []
    for i in range(0, len(queries), 64):
        qh, qm = model.encode_query(queries[i : i + 64])
        rows = inv[i : i + 64]  # (b, C)
        d, m = dh[rows], dm[rows]  # (b, C, L, D), (b, C, L)
        sim = torch.einsum("bqd,bcld->bcql", qh.float(), d).masked_fill(m[:, :, None, :] == 0, -1e4)
        out.append((sim.max(-1).values * qm[:, None, :].float()).sum(-1))
    return torch.cat(out)


@torch.no_grad()
def evaluate_student(cfg: Config, model, bench) -> dict:
    """Re-ranking of the eval split's BM25 candidates (per-query reciprocal ranks kept for paired intervals) and,
    for DOT, dense retrieval over the whole collection."""
    split = bench.split(cfg.eval_split)
    sc = rerank_by_encoding(model, split.queries, split.cands, bench.passages, cfg.eval_batch)
    out = eval_rerank(sc, split, per_query=True)
    out["_scores"] = sc
    out["score_mean"], out["score_std"] = float(sc.mean()), float(sc.std())
    if cfg.student == "dot":
        index = DenseIndex.build(model.encode_doc, bench.passages, batch_size=cfg.eval_batch)
        qv = torch.cat([model.encode_query(split.queries[i : i + 256]) for i in range(0, len(split.queries), 256)])
        ids, _ = index.search(qv, cfg.dense_k)
        m = ranking_metrics(ids, split.qrels, rel_threshold=2, recall_ks=(cfg.dense_k,))
        out.update({f"dense_{k}": v for k, v in m.items()})
    return out


def plot_score_ranges(path: Path, student: torch.Tensor, teacher: torch.Tensor, bm25: np.ndarray, title: str) -> None:
    """Histograms of candidate scores of BM25, teacher and student (the paper's score-range motivation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(12, 3))
    for a, (name, v) in zip(ax, (("BM25", bm25), ("teacher (CAT)", teacher), ("student", student)), strict=True):
        a.hist(np.asarray(v).reshape(-1), bins=60, color="tab:blue")
        a.set_title(name)
        a.set_xlabel("score")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


LABELS_ONLY_IGNORED = ("loss", "teacher", "method", "run_name", "kl_temperature", "results_dir", "trackers")


def labels_only_key(cfg: Config) -> str:
    """Cache key of the labels-only student that a KD run is compared with: every setting of the run except the
    ones a labels-only run does not read (loss, teacher choice, naming)."""
    d = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in LABELS_ONLY_IGNORED}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def label_only_result(cfg: Config, cache: Path) -> dict | None:
    f = cache / f"labels-only-{labels_only_key(cfg)}.json"
    return json.loads(f.read_text()) if f.is_file() else None


def main(argv=None) -> dict:
    cfg = parse_cli(Config, PRESETS, argv=argv, description=__doc__)
    if cfg.dataset == "msmarco":
        from papers.margin_mse.fullscale import main_msmarco, tiny_tables

        cfg = cfg if cfg.method else replace(cfg, method=cfg.variant)

        if cfg.hf_dataset != "tiny":
            return main_msmarco(cfg)
        # smoke twin: the same code on tiny tables, a T1 teacher file, validation files and a stand-in ir_datasets
        tables, module, files = tiny_tables(seed=cfg.seed, tmp=Path(cfg.out_dir) / PAPER / cfg.preset / "tiny-data")
        files = {k: v for k, v in files.items() if k != "teacher_scores_file" or cfg.teacher == "T1"}
        return main_msmarco(replace(cfg, **files), tables=tables, ir_module=module)
    bench = build_embedded(cfg)
    cfg = finalize(cfg, bench)
    cache = Path(cfg.out_dir) / PAPER / cfg.preset / "shared"
    if cfg.loss != "ranknet" and label_only_result(cfg, cache) is None:
        print("precondition: training the labels-only student of this configuration first", flush=True)
        base = replace(cfg, loss="ranknet", method="")
        run_embedded(replace(base, method=base.variant), bench)
    return run_embedded(cfg, bench)


def finalize(cfg: Config, bench) -> Config:
    """Derived settings: steps from epochs, the method name."""
    cfg = replace(cfg, steps=student_steps(cfg, len(bench.train_queries)))
    return cfg if cfg.method else replace(cfg, method=cfg.variant)


def run_embedded(cfg: Config, bench=None, teachers: list[dict] | None = None, write: bool = True) -> dict:
    """One student run on the embedded benchmark; ``bench`` and ``teachers`` may be passed in (claims runner)."""
    torch.set_num_threads(min(cfg_threads(), torch.get_num_threads()))
    t_all = time.time()
    bench = bench if bench is not None else build_embedded(cfg)
    if cfg.steps == 0:
        cfg = finalize(cfg, bench)
    run = start(cfg, paper=PAPER, find_unused_parameters=True)  # unused student heads stay in the module
    log = (lambda m: print(m, flush=True)) if run.is_main else (lambda m: None)
    cache = Path(cfg.out_dir) / PAPER / cfg.preset / "shared"
    n_t = 1 if cfg.teacher == "T1" else cfg.n_teachers
    if teachers is None:
        teachers = ensure_teachers(cfg, bench, n_t, cache / "teachers", log=log) if run.is_main else []
        run.accelerator.wait_for_everyone()
        if not run.is_main:
            teachers = ensure_teachers(cfg, bench, n_t, cache / "teachers", log=log)
    # teachers=[]: a labels-only student trained before the teachers exist (nothing is recorded then)
    teacher = ensemble(teachers[:n_t], cfg.teacher) if teachers else None
    if teacher is None and cfg.loss != "ranknet":
        raise ValueError(f"loss={cfg.loss} needs teacher scores")
    split = bench.split(cfg.eval_split)
    bm25 = eval_rerank(split.bm25, split)
    tm = eval_rerank(teacher[cfg.eval_split], split) if teacher is not None else None
    log(f"BM25 {bm25}\nteacher {cfg.teacher} {tm}")

    use_teacher = cfg.loss != "ranknet"
    model, train_s = train_student(cfg, run, bench, teacher if use_teacher else None)
    metrics = evaluate_student(cfg, model, bench)
    dev_scores, rr = metrics.pop("_scores"), metrics.pop("_rr")
    log(f"{cfg.variant} seed {cfg.seed} lr {cfg.lr}: {cfg.eval_split} MRR@10 {metrics['rerank_MRR@10']:.4f}")
    if run.is_main and write and teacher is not None:
        plot_score_ranges(run.path("score_ranges.png"), dev_scores, teacher[cfg.eval_split], split.bm25, cfg.variant)
    if teacher is not None:
        metrics["teacher_score_mean"] = float(teacher[cfg.eval_split].mean())
        metrics["teacher_score_std"] = float(teacher[cfg.eval_split].std())
    metrics["latency_ms_student"] = latency_ms(
        model, split, bench.passages, cfg.latency_queries, cfg.latency_candidates, cfg.eval_batch
    )
    # precondition of a single run: the teacher beats BM25 and the labels-only student of the same configuration
    if run.is_main and teacher is not None:
        if cfg.loss == "ranknet":
            atomic_write_json({"metrics": metrics}, cache / f"labels-only-{labels_only_key(cfg)}.json")
        lab = label_only_result(cfg, cache)
        metrics["precond_teacher_minus_bm25"] = tm["rerank_MRR@10"] - bm25["rerank_MRR@10"]
        if lab is not None:
            metrics["precond_teacher_minus_labelonly"] = tm["rerank_MRR@10"] - lab["metrics"]["rerank_MRR@10"]
        ok = metrics["precond_teacher_minus_bm25"] > 0 and metrics.get("precond_teacher_minus_labelonly", 1.0) > 0
        if write:
            _write_records(cfg, run, bench, metrics, rr, bm25, tm, ok, train_s, time.time() - t_all)
            model.save(run.dir / "student")
    run.finish()
    metrics["_rr"] = rr
    return metrics


def cfg_threads() -> int:
    import os

    return int(os.environ.get("OMP_NUM_THREADS", "2"))


def _write_records(cfg, run, bench, metrics, rr, bm25, tm, ok, train_s, wall_s):
    from common.results import make_record, write_record

    split = bench.split(cfg.eval_split)
    protocol = {
        "collection": f"paraphrased facts, {len(bench.passages)} passages, {cfg.n_entities} entities x "
        f"{cfg.n_attributes} attributes (data_seed {cfg.data_seed})",
        "eval_split": cfg.eval_split,
        "queries": len(split.queries),
        "rerank": f"BM25 top-{cfg.candidates} (k1={cfg.bm25_k1}, b={cfg.bm25_b}, random tie order) re-ranked",
        "dense": f"brute-force dot product over all {len(bench.passages)} passages" if cfg.student == "dot" else "n/a",
        "relevance": "MRR@10 and Recall: label 2 (states the (entity, attribute) fact); nDCG@10: graded 0/1/2",
        "teacher": f"{cfg.teacher}: {'1 CAT' if cfg.teacher == 'T1' else f'mean of {cfg.n_teachers} CATs'} "
        f"({cfg.teacher_base}, {cfg.teacher_layers} layers, {cfg.teacher_steps} steps)",
        "student": f"{cfg.student} ({cfg.student_base}, {cfg.student_layers} layers, {cfg.student_hidden}-d), "
        f"{cfg.steps} steps x {cfg.global_batch} queries x (1 + {cfg.negatives_per_query}) passages "
        f"({cfg.steps * cfg.global_batch / len(bench.train_queries):.2f} epochs), lr {cfg.lr}",
        "latency": f"median ms to score {cfg.latency_candidates} candidates of one query, batch {cfg.eval_batch}, "
        f"{torch.get_num_threads()} CPU threads, passages encoded on the fly",
        "precondition_ok": bool(ok),
    }
    bench_name = f"margin_mse / {cfg.preset}: {cfg.student} students ({cfg.eval_split} re-ranking)"
    rec = make_record(
        paper=PAPER, preset=cfg.preset, method=cfg.variant, seed=cfg.seed, benchmark=bench_name,
        dataset="paraphrased-facts", metrics=metrics, protocol=protocol, config=cfg, wall_time_s=wall_s,
        train_wall_time_s=train_s, peak_memory_mb=peak_memory_mb(),
        extra={"bm25": bm25, "teacher": tm, "per_query_rr": [round(float(x), 4) for x in rr]},
    )  # fmt: skip
    write_record(rec, cfg.results_dir)


if __name__ == "__main__":
    from common.cli import entry

    entry(main)
