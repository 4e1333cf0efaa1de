"""Full-scale CPRD: MSCOCO / Flickr30K (Karpathy splits), a BLIP ITM teacher, a CLIP or BERT + ViT student.

Data come from a Karpathy annotation file plus an image folder (``karpathy_json`` + ``image_root``) or from a hub
dataset through ``datasets`` (``hf_dataset``; rows with an ``image`` column are used directly, rows with
``filepath``/``filename`` are joined to ``image_root``). Training batches are random (image, one of its captions)
pairs with distinct images; the teacher scores, on the fly, exactly the pairs the method needs (the mined lists in
both directions plus the positives for hard-negative methods, the whole in-batch matrix for the all-negative
baselines). Evaluation: R@1/5/10 in both directions over the whole test gallery (5 captions per image), the teacher
by re-ranking the student's top-``rerank_k``, rank correlation, score distributions, throughput.

The smoke twins (``coco-smoke``, ``flickr30k-smoke``) run this path on a Karpathy JSON fixture with tiny random
models. Not run here at full scale (needs a GPU and the downloads); no numbers are claimed for it.

Left out: multi-process evaluation, the CxC ranking benchmark.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from common.data.karpathy import flatten, from_hf_rows, load_karpathy_json
from common.launch import start
from common.metrics.image_text import distribution_stats, image_text_recall, rank_correlations
from common.retrieval.mining import mine_hard_negatives
from papers.cprd.config import HARD_METHODS, Config
from papers.cprd.model import build_student, build_teacher, shapes_tokenizer

PAPER = "cprd"


def load_split(cfg: Config, split: str):
    if cfg.karpathy_json:
        return load_karpathy_json(cfg.karpathy_json, split)
    if not cfg.hf_dataset:
        raise SystemExit(f"error: preset {cfg.preset} needs karpathy_json=FILE image_root=DIR or hf_dataset=NAME")
    import datasets

    ds = datasets.load_dataset(cfg.hf_dataset)
    rows = ds[split] if split in ds else [r for part in ds.values() for r in part]
    cols = set(rows.column_names if hasattr(rows, "column_names") else rows[0])
    if "image" in cols:
        return from_hf_rows(rows, caption_key="caption" if "caption" in cols else "sentences",
                            split_key="split" if "split" in cols and split not in ds else None, split=split)  # fmt: skip
    out = []
    for r in rows:
        if "split" in r and split not in ds and r["split"] not in ({split, "restval"} if split == "train" else {split}):
            continue
        caps = [s["raw"] if isinstance(s, dict) else s for s in r.get("sentences", r.get("caption", []))]
        out.append(_img(r, caps))
    return out


def _img(r, caps):
    from common.data.karpathy import KarpathyImage

    return KarpathyImage(f"{r.get('filepath', '')}/{r['filename']}".lstrip("/"), caps, str(r.get("cocoid", "")))


def open_image(x, root: str):
    from PIL import Image

    if isinstance(x, str):
        return Image.open(Path(root) / x).convert("RGB")
    return x.convert("RGB")


class Transforms:
    """Student and teacher pixel pipelines (their own processors at full scale; resize + [0, 1] for tiny models)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.student = self._student()
        self.teacher = self._teacher()

    def _plain(self, pil_list):
        size = self.cfg.image_size
        arr = [np.asarray(p.resize((size, size)), dtype=np.float32).transpose(2, 0, 1) / 255.0 for p in pil_list]
        return torch.from_numpy(np.stack(arr))

    def _student(self):
        cfg = self.cfg
        if cfg.student == "clip":
            from transformers import CLIPImageProcessor

            proc = CLIPImageProcessor.from_pretrained(cfg.student_clip)
            return lambda ims: proc(images=ims, return_tensors="pt")["pixel_values"]
        if cfg.student_text == "tiny":
            return self._plain
        import timm

        dc = timm.data.resolve_data_config({}, model=timm.create_model(cfg.student_image, pretrained=False))
        tf = timm.data.create_transform(**dc)
        return lambda ims: torch.stack([tf(i) for i in ims])

    def _teacher(self):
        if self.cfg.teacher in ("train", "tiny"):
            return self._plain
        from transformers import BlipImageProcessor

        proc = BlipImageProcessor.from_pretrained(self.cfg.teacher)
        return lambda ims: proc(images=ims, return_tensors="pt")["pixel_values"]


class RandomPairs:
    """Each step: global_batch distinct images, one random caption each; teacher scores computed on the fly."""

    def __init__(self, cfg: Config, images, teacher, tf: Transforms):
        self.cfg, self.images, self.teacher, self.tf = cfg, images, teacher, tf
        self.n_pairs_scored = 0

    def batch(self, step: int):
        g = np.random.default_rng(self.cfg.seed * 1_000_003 + step)
        idx = g.choice(len(self.images), size=self.cfg.global_batch, replace=False)
        caps = [self.images[i].captions[int(g.integers(len(self.images[i].captions)))] for i in idx]
        pil = [open_image(self.images[i].image, self.cfg.image_root) for i in idx]
        return _Batch(self, idx, caps, pil)


class _Batch:
    def __init__(self, src: RandomPairs, idx, caps, pil):
        self.src, self.idx, self.caps, self.pil = src, idx, caps, pil

    def images(self, pos):
        return self.src.tf.student([self.pil[i] for i in pos])

    def captions(self, pos):
        return [self.caps[i] for i in pos]

    def ids(self, pos):
        return self.idx[pos]

    @torch.no_grad()
    def teacher(self, pos, sim, positive):
        """Teacher scores of the pairs the method needs; other entries NaN (a loss that reads one fails loudly)."""
        cfg, t = self.src.cfg, self.src.teacher
        n = len(pos)
        out = torch.full((n, n), float("nan"))
        if cfg.method == "no_kd":
            return out
        if cfg.method in HARD_METHODS and cfg.method != "cprd_easy":
            need = torch.zeros(n, n, dtype=torch.bool)
            need |= positive.cpu()
            ii = mine_hard_negatives(sim.cpu(), positive.cpu(), cfg.k)
            need.scatter_(1, ii, True)
            tt = mine_hard_negatives(sim.T.cpu(), positive.T.cpu(), cfg.k)
            need.T.scatter_(1, tt, True)
            ri, ci = need.nonzero(as_tuple=True)
        else:
            ri, ci = torch.arange(n).repeat_interleave(n), torch.arange(n).repeat(n)
        tok = t.image_tokens(self.src.tf.teacher([self.pil[i] for i in pos]))
        txt = t.tokenize([self.caps[i] for i in pos])
        out[ri, ci] = t.score_pairs(tok, txt, ri, ci)
        self.src.n_pairs_scored += len(ri)
        return out


def main_fullscale(cfg: Config) -> dict:
    from papers.cprd.train import train_student

    torch.set_num_threads(cfg.num_threads)
    run = start(cfg, paper=PAPER)
    log = (lambda s: print(s, flush=True)) if run.is_main else (lambda s: None)
    t_all = time.time()
    train = load_split(cfg, "train")
    test = load_split(cfg, "test")
    if cfg.max_train_images:
        train = train[: cfg.max_train_images]
    if cfg.max_test_images:
        test = test[: cfg.max_test_images]
    log(f"{cfg.dataset}: {len(train)} train images, {len(test)} test images")
    tok = shapes_tokenizer() if cfg.teacher in ("train", "tiny") else None
    teacher = build_teacher(cfg, tok).to(run.device).eval().requires_grad_(False)
    if cfg.mixed_precision == "bf16":
        teacher = teacher.to(torch.bfloat16)  # frozen teacher only; the student stays fp32
    tf = Transforms(cfg)
    student = build_student(cfg, tok)
    src = RandomPairs(cfg, train, teacher, tf)
    mcfg = cfg if cfg.delta is not None or cfg.validity != "threshold" else _calibrated(cfg, test, teacher, tf, log)
    model, train_s, train_diag = train_student(mcfg, run, src, student, log)
    metrics: dict = {}
    if run.is_main:
        with torch.no_grad():
            metrics = _evaluate(cfg, model, teacher, tf, test, src, train_diag, train_s, t_all, log)
    run.finish()
    return metrics


def _evaluate(cfg, model, teacher, tf, test, src, train_diag, train_s, t_all, log) -> dict:
    from papers.cprd.train import _write_fullscale_record, teacher_rerank

    caps, owner = flatten(test, captions_per_image=5)
    pil = [open_image(im.image, cfg.image_root) for im in test]
    t0 = time.perf_counter()
    with torch.no_grad():
        v = torch.cat([model.encode_image(tf.student(pil[i : i + 256])).cpu() for i in range(0, len(pil), 256)])
        t = torch.cat([model.encode_text(caps[i : i + 1024]).cpu() for i in range(0, len(caps), 1024)])
    sim = v.float() @ t.float().T
    metrics = image_text_recall(sim, owner)
    metrics["student_queries_per_s"] = (len(pil) + len(caps)) / (time.perf_counter() - t0)
    pixels = tf.teacher(pil)
    na = min(cfg.corr_anchors, len(pil))
    k = min(cfg.rerank_k, sim.shape[1])
    top = torch.sort(-sim[:na], dim=1, stable=True).indices[:, :k]
    tsc = teacher.score_pairs(teacher.image_tokens(pixels[:na]), teacher.tokenize(caps),
                              torch.arange(na).repeat_interleave(k), top.reshape(-1)).view(na, k)  # fmt: skip
    metrics.update({f"topk_{n}": x for n, x in rank_correlations(torch.gather(sim[:na], 1, top), tsc).items()})
    # score distributions over the student's top-k candidates (mostly hard negatives)
    metrics.update({f"teacher_topk_{n}": x for n, x in distribution_stats(tsc).items()})
    metrics.update({f"student_topk_{n}": x for n, x in distribution_stats(torch.gather(sim[:na], 1, top)).items()})
    extra = {"train_pairs_scored_by_teacher": src.n_pairs_scored}
    if cfg.eval_teacher:
        tr, ir, secs, pairs = teacher_rerank(teacher, sim, pixels, caps, cfg.rerank_k)
        mt, mi = image_text_recall(tr, owner), image_text_recall(ir, owner)
        extra["teacher"] = {**{a: b for a, b in mt.items() if a.startswith("TR")},
                            **{a: b for a, b in mi.items() if a.startswith("IR")}}  # fmt: skip
        metrics["teacher_rerank_pairs_per_s"] = pairs / secs
    metrics.update(train_diag)
    metrics["tau"] = float(model.tau)
    _write_fullscale_record(cfg, metrics, extra, train_s, time.time() - t_all, len(test))
    log(f"{cfg.method}: " + ", ".join(f"{a} {metrics[a]:.2f}" for a in ("TR@1", "IR@1")))
    return metrics


def _calibrated(cfg: Config, images, teacher, tf: Transforms, log) -> Config:
    """delta from a held-out batch (the first test-split images are *not* used: the val split is)."""
    import dataclasses

    from papers.cprd.losses import calibrate_delta

    val = load_split(cfg, "val")[: max(2 * cfg.k + 2, min(128, cfg.global_batch))]
    pil = [open_image(im.image, cfg.image_root) for im in val]
    caps = [im.captions[0] for im in val]
    toks = teacher.image_tokens(tf.teacher(pil))
    n = len(val)
    ii, tt = torch.arange(n).repeat_interleave(n), torch.arange(n).repeat(n)
    m = teacher.score_pairs(toks, teacher.tokenize(caps), ii, tt).view(n, n)
    delta = calibrate_delta(m, torch.eye(n, dtype=torch.bool), cfg.k, cfg.valid_fraction)
    log(f"delta calibrated on {n} validation images: {delta:.4f}")
    return dataclasses.replace(cfg, delta=float(delta))
