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

import json
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


def train_student(cfg: Config, run, bench, teacher: dict | None):
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
    t_train = teacher["train"] if teacher is not None else None
    bar = run.progress(total=cfg.steps, initial=step, desc=f"student {cfg.variant}")
    t0 = time.time()
    while step < cfg.steps:
        model.train()
        qi = torch.randint(nq, (run.per_device_batch,), generator=gen).numpy()
        lists = bench.train_lists[qi]
        k1 = lists.shape[1]
        q = [bench.train_queries[i] for i in qi for _ in range(k1)]
        d = [bench.passages[p] for p in lists.reshape(-1)]
        with run.accelerator.accumulate(model):
            s = model(q, d).view(len(qi), k1)
            t = t_train[qi].to(s.device) if t_train is not None else None
            loss = training_loss(cfg, s, t)
            run.accelerator.backward(loss)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            run.log(step, loss=loss.item(), lr=sched.get_last_lr()[0])
        if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < cfg.steps:
            ckpt.save(step, {"model": inner, "opt": opt, "sched": sched, "gen": gen})
    bar.close()
    ckpt.save(step, {"model": inner, "opt": opt, "sched": sched, "gen": gen})
    inner.eval()
    return inner, time.time() - t0


@torch.no_grad()
def latency_ms(score_fn, bench, n_queries: int, n_cands: int, batch: int) -> float:
    """Median wall time (ms) to score n_cands candidates of one query (query and passages encoded on the fly)."""
    times = []
    for i in range(min(n_queries, len(bench.dev_queries))):
        cands = np.resize(bench.dev_cands[i], n_cands)
        q = [bench.dev_queries[i]] * n_cands
        d = [bench.passages[p] for p in cands]
        t0 = time.perf_counter()
        for s in range(0, n_cands, batch):
            score_fn(q[s : s + batch], d[s : s + batch])
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times)) if times else float("nan")


@torch.no_grad()
def evaluate_student(cfg: Config, model, bench) -> dict[str, float]:
    sc = rerank(model, bench.dev_queries, bench.dev_cands, bench.passages, batch_size=cfg.eval_batch)
    out = eval_rerank(sc, bench)
    out["_scores"] = sc
    out["score_mean"], out["score_std"] = float(sc.mean()), float(sc.std())
    if cfg.student == "dot":  # dense retrieval over the whole collection
        from common.metrics.retrieval import ranking_metrics

        index = DenseIndex.build(model.encode_doc, bench.passages, batch_size=cfg.eval_batch)
        qv = torch.cat(
            [model.encode_query(bench.dev_queries[i : i + 256]) for i in range(0, len(bench.dev_queries), 256)]
        )
        ids, _ = index.search(qv, cfg.dense_k)
        m = ranking_metrics(ids, bench.dev_qrels, rel_threshold=2, recall_ks=(cfg.dense_k,))
        out.update({f"dense_{k}": v for k, v in m.items()})
    return out


def plot_score_ranges(path: Path, student: torch.Tensor, teacher: torch.Tensor, bm25: np.ndarray, title: str) -> None:
    """Histograms of dev-candidate scores of BM25, teacher and student (the paper's score-range motivation)."""
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


def label_only_result(cfg: Config, cache: Path) -> dict | None:
    f = cache / f"{cfg.student}-ranknet-seed{cfg.seed}.json"
    return json.loads(f.read_text()) if f.is_file() else None


def main(argv=None) -> dict:
    cfg = parse_cli(Config, PRESETS, argv=argv, description=__doc__)
    if cfg.dataset == "msmarco":
        from papers.margin_mse.fullscale import main_msmarco

        return main_msmarco(cfg)
    if not cfg.method:
        cfg = replace(cfg, method=cfg.variant)
    cache = Path(cfg.out_dir) / PAPER / cfg.preset / "shared"
    if cfg.loss != "ranknet" and label_only_result(cfg, cache) is None:
        print("precondition: training the label-only student of this seed first", flush=True)
        base = replace(cfg, loss="ranknet", teacher=PRESETS[cfg.preset].teacher, method="")
        run_embedded(replace(base, method=base.variant))
    return run_embedded(cfg)


def run_embedded(cfg: Config) -> dict:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    run = start(cfg, paper=PAPER)
    log = (lambda m: print(m, flush=True)) if run.is_main else (lambda m: None)
    cache = Path(cfg.out_dir) / PAPER / cfg.preset / "shared"
    t_all = time.time()
    bench = build_embedded(cfg)
    n_t = 1 if cfg.teacher == "T1" else cfg.n_teachers
    teachers = ensure_teachers(cfg, bench, n_t, cache / "teachers", log=log) if run.is_main else []
    run.accelerator.wait_for_everyone()
    if not run.is_main:
        teachers = ensure_teachers(cfg, bench, n_t, cache / "teachers", log=log)
    teacher = ensemble(teachers, cfg.teacher)
    bm25 = eval_rerank(bench.dev_bm25, bench)
    tm = eval_rerank(teacher["dev"], bench)
    log(f"BM25 {bm25}\nteacher {cfg.teacher} {tm}")

    use_teacher = cfg.loss != "ranknet"
    model, train_s = train_student(cfg, run, bench, teacher if use_teacher else None)
    metrics = evaluate_student(cfg, model, bench)
    dev_scores = metrics.pop("_scores")
    if run.is_main:
        plot_score_ranges(run.path("score_ranges.png"), dev_scores, teacher["dev"], bench.dev_bm25, cfg.variant)
    metrics["teacher_score_mean"] = float(teacher["dev"].mean())
    metrics["teacher_score_std"] = float(teacher["dev"].std())
    # latency of re-ranking latency_candidates passages for one query (student vs teacher, same batch size)
    metrics["latency_ms_student"] = latency_ms(
        model, bench, cfg.latency_queries, cfg.latency_candidates, cfg.eval_batch
    )
    from papers.margin_mse.model import load_encoder

    teacher_model = load_encoder(cache / "teachers" / "cat-0" / "model")
    metrics["latency_ms_teacher_T1"] = latency_ms(
        teacher_model, bench, cfg.latency_queries, cfg.latency_candidates, cfg.eval_batch
    )

    # precondition: the teacher beats BM25 and the label-only student (same student, same seed)
    if run.is_main:
        if cfg.loss == "ranknet":
            atomic_write_json({"metrics": metrics}, cache / f"{cfg.student}-ranknet-seed{cfg.seed}.json")
        lab = label_only_result(cfg, cache)["metrics"]["rerank_MRR@10"]
        metrics["precond_teacher_minus_bm25"] = tm["rerank_MRR@10"] - bm25["rerank_MRR@10"]
        metrics["precond_teacher_minus_labelonly"] = tm["rerank_MRR@10"] - lab
        ok = metrics["precond_teacher_minus_bm25"] > 0 and metrics["precond_teacher_minus_labelonly"] > 0
        log(f"precondition teacher > BM25 and > label-only student: {ok}")
        _write_records(cfg, run, bench, metrics, bm25, tm, ok, train_s, time.time() - t_all)
        model.save(run.dir / "student")
    run.finish()
    return metrics


def _write_records(cfg, run, bench, metrics, bm25, tm, ok, train_s, wall_s):
    from common.results import make_record, write_record

    protocol = {
        "collection": f"synthetic entity-attribute facts, {len(bench.passages)} passages (data_seed {cfg.data_seed})",
        "dev_queries": len(bench.dev_queries),
        "rerank": f"BM25 top-{cfg.candidates} (k1={cfg.bm25_k1}, b={cfg.bm25_b}) re-ranked",
        "dense": f"brute-force dot product over all {len(bench.passages)} passages" if cfg.student == "dot" else "n/a",
        "relevance": "MRR@10 and Recall: label 2 (fact about (e, a)); nDCG@10: graded 0/1/2, linear gain",
        "teacher": f"{cfg.teacher}: {'1 CAT' if cfg.teacher == 'T1' else f'mean of {cfg.n_teachers} CATs'} "
        f"({cfg.teacher_base}, {cfg.teacher_layers} layers, {cfg.teacher_steps} RankNet steps)",
        "student": f"{cfg.student} ({cfg.student_base}, {cfg.student_layers} layers), {cfg.steps} steps x "
        f"{cfg.global_batch} queries x (1 + {cfg.negatives_per_query}) passages",
        "latency": f"median ms to score {cfg.latency_candidates} candidates of one query, batch {cfg.eval_batch}, "
        f"{torch.get_num_threads()} CPU threads, passages encoded on the fly",
        "precondition_ok": bool(ok),
    }
    bench_name = f"margin_mse / {cfg.preset}: {cfg.student} students (dev re-ranking + dense retrieval)"
    rec = make_record(
        paper=PAPER, preset=cfg.preset, method=cfg.variant, seed=cfg.seed, benchmark=bench_name, dataset="synthetic-facts",
        metrics=metrics, protocol=protocol, config=cfg, wall_time_s=wall_s, train_wall_time_s=train_s,
        peak_memory_mb=peak_memory_mb(),
        extra={"bm25": bm25, "teacher": tm},
    )  # fmt: skip
    write_record(rec, cfg.results_dir)
    ref_name = f"margin_mse / {cfg.preset}: references (BM25, teachers)"
    for method, m in (("bm25", bm25), (f"teacher-{cfg.teacher}", tm)):
        r = make_record(
            paper=PAPER, preset=cfg.preset, method=method, seed=0, benchmark=ref_name, dataset="synthetic-facts",
            metrics=m, protocol=protocol, config=cfg, wall_time_s=wall_s,
        )  # fmt: skip
        write_record(r, cfg.results_dir, same_config=False)  # references do not depend on the student


if __name__ == "__main__":
    from common.cli import entry

    entry(main)
