"""CPRD: a cross-encoder teacher for a dual-encoder image-text retriever (Chen et al., CVPR 2024) — entry point.

    python -m papers.cprd.train                                   # embedded default: shapes, method=cprd
    python -m papers.cprd.train --set method=no_kd seed=1
    accelerate launch papers/cprd/train.py --preset shapes --set method=kl
    python -m papers.cprd.train --preset coco                      # full scale (GPU, downloads; see README)

Embedded run, top to bottom: build the shapes benchmark and its fixed training batches (shapes.py); train or load
the ITM cross-encoder teacher and cache its scores of every in-batch pair of every training batch, a validation
batch (delta calibration) and the test diagnostics (teacher.py); train the dual-encoder student with ITC +
lam * ``method`` on the same batches, steps and seeds as every other method; evaluate R@1/5/10 in both directions on
the test gallery, the compositional ranking test, the teacher-student rank correlation, the score distributions and
the retrieval throughput of the student against teacher re-ranking; write the result record. Re-running resumes.

Left out: momentum encoders and queues (ALBEF/BLIP), mixed-precision teacher scoring on CPU.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script (accelerate launch papers/cprd/train.py)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import torch

from common.checkpoint import Checkpointer, atomic_torch_save, atomic_write_json
from common.config import config_to_dict, parse_cli
from common.launch import peak_memory_mb, start
from common.metrics.image_text import distribution_stats, image_text_recall, rank_correlations
from common.optim import warmup_cosine
from common.retrieval.image_text import gather_with_grad
from common.retrieval.losses import in_batch_contrastive
from common.retrieval.mining import positive_mask
from papers.cprd import shapes as S
from papers.cprd.config import PRESETS, Config
from papers.cprd.losses import calibrate_delta, distill_loss
from papers.cprd.model import build_student, build_teacher, shapes_tokenizer
from papers.cprd.teacher import compositional_metrics, compositional_set, train_teacher

PAPER = "cprd"
_TEACHER_KEYS = ("data_seed", "n_train", "test_fraction", "val_fraction", "max_test", "noise", "teacher",
                 "teacher_width", "teacher_depth", "teacher_steps", "teacher_batch", "teacher_lr", "score_kind",
                 "global_batch", "image_size", "patch", "heads", "max_text_len", "k", "valid_fraction", "dist_batches")  # fmt: skip


@dataclass
class Prepared:
    data: S.ShapesData
    batches: np.ndarray  # (n_batches, N) item indices
    teacher: object
    batch_scores: torch.Tensor  # (n_batches, N, N) teacher score of (image of item a, caption of item b)
    delta: float
    teacher_diag: dict  # compositional metrics, distribution scores of the test batches
    cache: Path


def shared_dir(cfg: Config) -> Path:
    key = json.dumps({k: getattr(cfg, k) for k in _TEACHER_KEYS}, sort_keys=True)
    return Path(cfg.out_dir) / PAPER / cfg.preset / "shared" / hashlib.sha256(key.encode()).hexdigest()[:10]


def _dist_items(data: S.ShapesData, cfg: Config) -> list[np.ndarray]:
    """Test batches of global_batch images (with their first captions) for the score-distribution analysis."""
    n = min(cfg.global_batch, len(data.test_images))
    return [np.arange(i * n, (i + 1) * n) for i in range(cfg.dist_batches) if (i + 1) * n <= len(data.test_images)]


def prepare_shapes(cfg: Config, log=print) -> Prepared:
    cache = shared_dir(cfg)
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write_json({k: getattr(cfg, k) for k in _TEACHER_KEYS}, cache / "key.json")
    t0 = time.time()
    data = S.build(cfg.data_seed, cfg.n_train, cfg.test_fraction, cfg.val_fraction, cfg.noise, cfg.max_test)
    batches = S.fixed_batches(data.train_scene, cfg.global_batch, cfg.data_seed)
    log(f"shapes: {len(data.train_images)} train items in {len(batches)} fixed batches, {len(data.test_images)} test "
        f"images x 5 captions ({time.time() - t0:.0f}s)")  # fmt: skip
    tok = shapes_tokenizer()
    teacher = build_teacher(cfg, tok)
    f = cache / "teacher.pt"
    if f.is_file():
        teacher.load_state_dict(torch.load(f, map_location="cpu"))
        teacher.eval().requires_grad_(False)
    else:
        train_teacher(cfg, data, teacher, log=log)
        atomic_torch_save(teacher.state_dict(), f)
    f = cache / "scores.pt"
    if f.is_file():
        sc = torch.load(f, map_location="cpu")
    else:
        t1 = time.time()
        mats = []
        for b in batches:
            mats.append(
                teacher.score_matrix(torch.from_numpy(data.train_images[b]), [data.train_captions[i] for i in b])
            )
        nv = min(len(data.val_images), 2 * cfg.global_batch)
        val = teacher.score_matrix(torch.from_numpy(data.val_images[:nv]), data.val_captions[:nv])
        delta = calibrate_delta(val, torch.eye(nv, dtype=torch.bool), cfg.k, cfg.valid_fraction)
        cands, grades = compositional_set(data)
        n = len(cands)
        tok_img = teacher.image_tokens(torch.from_numpy(data.test_images))
        flat = [c for cs in cands for c in cs]
        comp = teacher.score_pairs(tok_img, teacher.tokenize(flat), torch.arange(n).repeat_interleave(6),
                                   torch.arange(6 * n)).view(n, 6).numpy()  # fmt: skip
        dist = [teacher.score_matrix(torch.from_numpy(data.test_images[b]), [data.test_captions[5 * i] for i in b])
                for b in _dist_items(data, cfg)]  # fmt: skip
        sc = {"batches": torch.stack(mats), "delta": delta, "comp": compositional_metrics(comp, grades),
              "dist": torch.stack(dist), "time_s": time.time() - t1}  # fmt: skip
        atomic_torch_save(sc, f)
        log(f"teacher scores cached: {len(batches)} batches, delta {delta:.3f} ({sc['time_s']:.0f}s)")
    diag = {"comp": sc["comp"], "dist": sc["dist"]}
    return Prepared(data, batches, teacher, sc["batches"], sc["delta"], diag, cache)


def batch_order(n_batches: int, step: int, seed: int) -> int:
    """Fixed batches visited in a fresh permutation every epoch (seeded by the run seed and the epoch)."""
    epoch, pos = divmod(step, n_batches)
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return int(torch.randperm(n_batches, generator=g)[pos])


class FixedBatches:
    """Training batches of the embedded run: fixed partitions of the items, teacher scores looked up in the cache."""

    def __init__(self, prep: Prepared, seed: int):
        self.prep, self.seed = prep, seed

    def batch(self, step: int):
        b = batch_order(len(self.prep.batches), step, self.seed)
        return ShapesBatch(self.prep, b)


@dataclass
class ShapesBatch:
    prep: Prepared
    b: int

    @property
    def items(self) -> np.ndarray:
        return self.prep.batches[self.b]

    def images(self, pos) -> torch.Tensor:
        return torch.from_numpy(self.prep.data.train_images[self.items[pos]])

    def captions(self, pos) -> list[str]:
        return [self.prep.data.train_captions[i] for i in self.items[pos]]

    def ids(self, pos) -> np.ndarray:
        return self.prep.data.train_scene[self.items[pos]]

    def teacher(self, pos, sim=None, positive=None) -> torch.Tensor:
        return self.prep.batch_scores[self.b][pos][:, pos]


def train_student(cfg: Config, run, source, model, log=print):
    """ITC + lam * distillation on ``source.batch(step)`` (every method: same batches, steps, LR and seed)."""
    model = model.to(run.device)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and p.requires_grad]
    rest = [p for n, p in model.named_parameters() if p.ndim < 2 and p.requires_grad]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=cfg.lr)  # fmt: skip
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.warmup_steps, cfg.steps))
    gen = torch.Generator().manual_seed(cfg.seed)
    ckpt = Checkpointer(run.dir / "checkpoints", keep=cfg.keep_ckpts, accelerator=run.accelerator)
    objects = {"model": model, "opt": opt, "sched": sched, "gen": gen}
    step, _ = ckpt.resume(objects)
    model, opt = run.accelerator.prepare(model, opt)
    inner = run.accelerator.unwrap_model(model)
    world, rank, N, pdb = run.world_size, run.accelerator.process_index, cfg.global_batch, run.per_device_batch
    bar = run.progress(total=cfg.steps, initial=step, desc=f"student {cfg.method}")
    hist = []
    while step < cfg.steps:
        model.train()
        batch = source.batch(step)
        for micro in range(run.grad_accum):
            # the gathered micro-batch = every process's chunk of this micro step (positions in the global batch)
            chunks = [np.arange(N)[(micro * world + r) * pdb : (micro * world + r + 1) * pdb] for r in range(world)]
            local = chunks[rank]
            pos = np.concatenate(chunks) if cfg.mining_scope == "gathered" else local
            with run.accelerator.accumulate(model):
                v, t = model(batch.images(local).to(run.device), batch.captions(local))
                if cfg.mining_scope == "gathered":
                    v, t = gather_with_grad(v), gather_with_grad(t)
                sim = v @ t.T
                tau = inner.tau
                ids = batch.ids(pos)
                same = positive_mask(ids, ids).to(run.device)
                itc = in_batch_contrastive(sim, tau, extra_pos=same if cfg.mask_same_image else None)
                teach = batch.teacher(pos, sim.detach(), same).to(run.device)
                kd, diag = distill_loss(cfg, sim, tau, teach, same, gen)
                loss = itc + cfg.lam * kd
                # gathered: each process holds the whole loss, with gradient through its own slice only, and DDP
                # averages over processes: scale back to the gradient of the whole loss
                scale = world if (cfg.mining_scope == "gathered" and world > 1) else 1.0
                run.accelerator.backward(loss * scale)
                opt.step()
                if run.accelerator.sync_gradients:
                    sched.step()
                opt.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        lists = diag.pop("_lists", None)
        hist.append({"itc": itc.item(), "kd": kd.item(), **diag})
        if step % cfg.log_every == 0 or step == cfg.steps:
            extra = {}
            if lists is not None:
                extra = {f"mined_{k}": v for k, v in rank_correlations(lists[0].cpu(), lists[1].cpu()).items()}
            means = {k: float(np.mean([h[k] for h in hist[-cfg.log_every :] if k in h])) for k in hist[-1]}
            run.log(step, loss=loss.item(), tau=float(tau.detach()), lr=sched.get_last_lr()[0], **means, **extra)
        if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < cfg.steps:
            ckpt.save(step, {"model": inner, "opt": opt, "sched": sched, "gen": gen})
    bar.close()
    ckpt.save(step, {"model": inner, "opt": opt, "sched": sched, "gen": gen})
    inner.eval()
    tail = hist[-cfg.log_every :]
    train_diag = {f"train_{k}": float(np.mean([h[k] for h in tail if k in h])) for k in (tail[-1] if tail else {})}
    return inner, ckpt.train_time_s(), train_diag


def _with_delta(cfg: Config, delta: float) -> Config:
    import dataclasses

    return dataclasses.replace(cfg, delta=float(delta))


@torch.no_grad()
def encode_gallery(model, images: np.ndarray, texts: list[str], batch: int = 512):
    v = torch.cat([model.encode_image(torch.from_numpy(images[i : i + batch])) for i in range(0, len(images), batch)])
    t = torch.cat([model.encode_text(texts[i : i + batch]) for i in range(0, len(texts), batch)])
    return v.cpu(), t.cpu()


def bootstrap_halfwidth(hits: np.ndarray, n_boot: int = 1000, seed: int = 0) -> float:
    """95% half-width (percentile bootstrap over queries) of a mean of per-query hits, in points."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(len(hits), size=(n_boot, len(hits)))
    means = hits[idx].mean(1) * 100.0
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float((hi - lo) / 2)


def per_query_hits_at1(sim: torch.Tensor, caption_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    top_t = torch.sort(-sim, dim=1, stable=True).indices[:, 0].numpy()
    top_i = torch.sort(-sim.T, dim=1, stable=True).indices[:, 0].numpy()
    tr = caption_image[top_t] == np.arange(sim.shape[0])
    ir = top_i == caption_image
    return tr.astype(float), ir.astype(float)


@torch.no_grad()
def teacher_rerank(teacher, sim: torch.Tensor, pixels: torch.Tensor, texts: list[str], k: int):
    """Teacher re-ranking of the student's top-k in both directions: returns a copy of sim whose top-k entries per
    row (TR) / column (IR) are replaced by teacher scores placed above everything else, and the scoring time."""
    ni, nt = sim.shape
    tok_img = torch.cat([teacher.image_tokens(pixels[i : i + 256]) for i in range(0, len(pixels), 256)])
    tok_txt = teacher.tokenize(texts)
    t0 = time.perf_counter()
    top_t = torch.sort(-sim, dim=1, stable=True).indices[:, :k]  # (ni, k) captions per image
    sc_t = teacher.score_pairs(tok_img, tok_txt, torch.arange(ni).repeat_interleave(k), top_t.reshape(-1)).view(ni, k)
    top_i = torch.sort(-sim.T, dim=1, stable=True).indices[:, :k]  # (nt, k) images per caption
    sc_i = teacher.score_pairs(tok_img, tok_txt, top_i.reshape(-1), torch.arange(nt).repeat_interleave(k)).view(nt, k)
    secs = time.perf_counter() - t0
    lift = 1e6  # re-ranked candidates stay above the rest
    tr = torch.full_like(sim, -1e9).scatter_(1, top_t, sc_t + lift)
    ir = torch.full_like(sim.T, -1e9).scatter_(1, top_i, sc_i + lift)
    return tr, ir.T.contiguous(), secs, (ni + nt) * k


@torch.no_grad()
def evaluate(cfg: Config, model, prep: Prepared, log=print) -> tuple[dict, dict]:
    data = prep.data
    cap_img = data.caption_image
    t0 = time.perf_counter()
    v, t = encode_gallery(model, data.test_images, data.test_captions)
    sim = v @ t.T
    torch.sort(-sim, dim=1, stable=True)
    torch.sort(-sim.T, dim=1, stable=True)
    student_s = time.perf_counter() - t0
    m = image_text_recall(sim, cap_img)
    tr1, ir1 = per_query_hits_at1(sim, cap_img)
    m["TR@1_ci95_halfwidth"] = bootstrap_halfwidth(tr1)
    m["IR@1_ci95_halfwidth"] = bootstrap_halfwidth(ir1)
    nq = len(data.test_images) + len(data.test_captions)
    m["student_queries_per_s"] = nq / student_s  # gallery and queries encoded, full matrix, sorted
    # compositional ranking (true caption vs 5 one-edit distractors) and graded Spearman
    cands, grades = compositional_set(data)
    ct = torch.cat([model.encode_text([c for cs in cands[i : i + 256] for c in cs]) for i in range(0, len(cands), 256)])
    comp = (v[:, None, :] * ct.cpu().view(len(cands), 6, -1)).sum(-1).numpy()
    m.update(compositional_metrics(comp, grades))
    # teacher-student rank agreement on the student's top-k captions of corr_anchors test images
    na = min(cfg.corr_anchors, len(data.test_images))
    k = min(cfg.rerank_k, sim.shape[1])
    top = torch.sort(-sim[:na], dim=1, stable=True).indices[:, :k]
    teacher = prep.teacher
    tok_img = teacher.image_tokens(torch.from_numpy(data.test_images[:na]))
    t1 = time.perf_counter()
    tsc = teacher.score_pairs(tok_img, teacher.tokenize(data.test_captions), torch.arange(na).repeat_interleave(k),
                              top.reshape(-1)).view(na, k)  # fmt: skip
    teacher_s = time.perf_counter() - t1
    m.update({f"topk_{n}": x for n, x in rank_correlations(torch.gather(sim[:na], 1, top), tsc).items()})
    m["teacher_rerank_ms_per_query"] = 1e3 * teacher_s / na  # k pairs per query (image tokens precomputed)
    m["student_ms_per_query"] = 1e3 / m["student_queries_per_s"]
    # score distributions over (anchor, in-batch negative) pairs of the test batches
    off = ~torch.eye(prep.teacher_diag["dist"].shape[1], dtype=torch.bool)
    s_neg = []
    for items in _dist_items(data, cfg):
        s_neg.append(sim[items][:, 5 * items][off])
    s_neg = torch.cat(s_neg).numpy()
    t_neg = prep.teacher_diag["dist"][:, off].reshape(-1).numpy()
    m.update({f"student_neg_{k2}": x for k2, x in distribution_stats(s_neg).items()})
    m.update({f"teacher_neg_{k2}": x for k2, x in distribution_stats(t_neg).items()})
    m["tau"] = float(model.tau)
    extra = {"teacher_comp": prep.teacher_diag["comp"], "_s_neg": s_neg, "_t_neg": t_neg, "_sim": sim}
    if cfg.eval_teacher:
        tr, ir, secs, pairs = teacher_rerank(
            teacher, sim, torch.from_numpy(data.test_images), data.test_captions, cfg.rerank_k
        )
        mt = image_text_recall(tr, cap_img)
        mi = image_text_recall(ir, cap_img)
        extra["teacher"] = {
            **{k2: mt[k2] for k2 in mt if k2.startswith("TR")},
            **{k2: mi[k2] for k2 in mi if k2.startswith("IR")},
        }
        extra["teacher"]["rerank_k"] = cfg.rerank_k
        extra["teacher"]["rerank_pairs_per_s"] = pairs / secs
        log(f"teacher (re-ranking this student's top-{cfg.rerank_k}): {extra['teacher']}")
    return m, extra


def plot_distributions(path: Path, s_neg: np.ndarray, t_neg: np.ndarray, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3))
    ax[0].hist(t_neg, bins=60, color="tab:red")
    ax[0].set_title("teacher ITM score (negatives)")
    ax[1].hist(s_neg, bins=60, color="tab:blue")
    ax[1].set_title("student cosine similarity (negatives)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> dict:
    cfg = parse_cli(Config, PRESETS, argv=argv, description=__doc__)
    if cfg.dataset != "shapes":
        from papers.cprd.fullscale import main_fullscale

        return main_fullscale(cfg)
    return run_shapes(cfg)


def run_shapes(cfg: Config) -> dict:
    torch.set_num_threads(cfg.num_threads)
    run = start(cfg, paper=PAPER)
    log = (lambda s: print(s, flush=True)) if run.is_main else (lambda s: None)
    t_all = time.time()
    prep = prepare_shapes(cfg, log=log) if run.is_main else None
    run.accelerator.wait_for_everyone()
    if not run.is_main:
        prep = prepare_shapes(cfg, log=log)
    mcfg = cfg if cfg.delta is not None else _with_delta(cfg, prep.delta)
    student = build_student(cfg, shapes_tokenizer())
    model, train_s, train_diag = train_student(mcfg, run, FixedBatches(prep, cfg.seed), student, log)
    if run.is_main:
        metrics, extra = evaluate(cfg, model, prep, log)
        metrics.update(train_diag)
        s_neg, t_neg = extra.pop("_s_neg"), extra.pop("_t_neg")
        extra.pop("_sim")
        plot_distributions(
            run.path("score_distributions.png"), s_neg, t_neg, f"{cfg.preset} {cfg.method} seed {cfg.seed}"
        )
        log(f"{cfg.method} seed {cfg.seed}: " + ", ".join(f"{k} {metrics[k]:.2f}" for k in
            ("TR@1", "TR@5", "TR@10", "IR@1", "IR@5", "IR@10", "comp_acc")))  # fmt: skip
        _write_record(cfg, prep, metrics, extra, train_s, time.time() - t_all)
        atomic_write_json({"metrics": metrics, "extra": extra}, run.dir / "eval.json")
    run.finish()
    return metrics if run.is_main else {}


def protocol(cfg: Config, prep: Prepared) -> dict:
    d = prep.data
    return {
        "gallery": f"shapes test split: {len(d.test_images)} images (one per reserved scene) x 5 captions",
        "recall": "TR@K: hit if any of the image's 5 captions is in the top K; IR@K: the caption's image; ties -> "
        "lower index; torchmetrics RetrievalHitRate",
        "train": f"{len(prep.batches)} fixed batches of {cfg.global_batch} (data_seed {cfg.data_seed}), {cfg.steps} "
        f"steps, lr {cfg.lr}, the same for every method",
        "teacher": f"BLIP-architecture ITM cross encoder trained here ({cfg.teacher_steps} steps), score "
        f"{cfg.score_kind}",
        "cprd": f"k={cfg.k}, validity={cfg.validity}, delta={'calibrated ' + format(prep.delta, '.3f') if cfg.delta is None else cfg.delta}"
        f", fn_filter={cfg.false_negative_filter}, denominator={cfg.denominator}, tau={cfg.cprd_tau}, lam={cfg.lam}, "
        f"normalise={cfg.normalise}",
        "compositional": "true caption vs 5 one-edit distractor captions per test image (top-1 accuracy); Spearman "
        "vs matching attributes",
        "throughput": f"{torch.get_num_threads()} CPU threads; student: encode gallery + all queries, full matrix, "
        f"sort; teacher: re-rank the student's top-{cfg.rerank_k} per query (image tokens precomputed)",
    }


def _write_record(cfg: Config, prep: Prepared, metrics: dict, extra: dict, train_s: float, wall_s: float) -> None:
    from common.results import make_record, write_record

    rec = make_record(
        paper=PAPER, preset=cfg.preset, method=cfg.method, seed=cfg.seed,
        benchmark=f"cprd / {cfg.preset}: dual-encoder students of an ITM cross-encoder teacher", dataset="shapes",
        metrics=metrics, protocol=protocol(cfg, prep), config=config_to_dict(cfg), wall_time_s=wall_s,
        train_wall_time_s=train_s, peak_memory_mb=peak_memory_mb(), extra=extra,
    )  # fmt: skip
    write_record(rec, cfg.results_dir)


def _write_fullscale_record(cfg: Config, metrics: dict, extra: dict, train_s: float, wall_s: float, n_test: int):
    from common.results import make_record, write_record

    proto = {
        "gallery": f"{cfg.dataset} Karpathy test: {n_test} images x 5 captions",
        "recall": "TR@K: any of the image's captions in the top K; IR@K: the caption's image; torchmetrics",
        "teacher": f"{cfg.teacher} ITM, score {cfg.score_kind}, scored on the fly; re-ranking depth {cfg.rerank_k}",
        "student": cfg.student_clip if cfg.student == "clip" else f"{cfg.student_image} + {cfg.student_text}",
    }
    rec = make_record(
        paper=PAPER, preset=cfg.preset, method=cfg.method, seed=cfg.seed,
        benchmark=f"cprd / {cfg.preset}: dual-encoder students of an ITM cross-encoder teacher", dataset=cfg.dataset,
        metrics=metrics, protocol=proto, config=config_to_dict(cfg), wall_time_s=wall_s, train_wall_time_s=train_s,
        peak_memory_mb=peak_memory_mb(), extra=extra,
    )  # fmt: skip
    write_record(rec, cfg.results_dir)


if __name__ == "__main__":
    main()
