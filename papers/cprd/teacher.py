"""The embedded teacher: a small ALBEF/BLIP-style ITM cross encoder trained on the shapes benchmark, then frozen.

Training (our recipe, not the paper's: the paper starts from a pre-trained ALBEF): ALBEF's ITC on the unimodal CLS
vectors plus class-balanced 2-way ITM cross-entropy; per image one positive pair and three negatives: a distractor caption (one attribute, the binding or the relation
changed), the image of a distractor scene with the true caption (both from *training* scenes only), and another
image of the batch with the caption. The frozen teacher then scores every (image, caption) pair of every fixed
training batch once (the score cache keyed by item pair), a validation batch (delta calibration) and the test
diagnostics (compositional ranking, score distribution).

Left out: MLM/LM pre-training of the teacher, momentum distillation, ITC-mined hard negatives.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from common.optim import warmup_cosine
from common.retrieval.losses import in_batch_contrastive
from papers.cprd import shapes as S


def _hard_pairs(data: S.ShapesData, items: np.ndarray, rng: np.random.Generator, noise: float):
    """Per item: a distractor caption and a rendered distractor image, both of training scenes."""
    caps, imgs = [], []
    for it in items:
        s = data.scenes[data.train_scene[it]]
        pool = [t for _, t in S.perturbations(s) if data.split[data.scenes_index[t]] == "train"]
        t = pool[int(rng.integers(len(pool)))] if pool else s
        caps.append(S.captions(t)[int(rng.integers(5))])
        imgs.append(S.render(t, rng, noise=noise))
    return caps, torch.from_numpy(np.stack(imgs))


def itc_loss(model, image_tokens: torch.Tensor, caps: list[str], scene: np.ndarray) -> torch.Tensor:
    """ALBEF/BLIP image-text contrastive loss on the projected CLS vectors (temperature 0.07, same-scene pairs
    masked out of the denominators)."""
    blip = model.blip
    t = model.tokenize(caps)
    h = blip.text_encoder(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).last_hidden_state
    v = F.normalize(blip.vision_proj(image_tokens[:, 0]), dim=-1)
    w = F.normalize(blip.text_proj(h[:, 0]), dim=-1)
    same = torch.from_numpy(scene[:, None] == scene[None, :])
    return in_batch_contrastive(v @ w.T, 0.07, extra_pos=same)


def train_teacher(cfg, data: S.ShapesData, model, log=print):
    torch.manual_seed(cfg.data_seed)
    rng = np.random.default_rng(cfg.data_seed + 7)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.teacher_lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(min(100, cfg.teacher_steps // 10), cfg.teacher_steps))
    model.train()
    n, B = len(data.train_images), cfg.teacher_batch
    t0, run = time.time(), []
    for step in range(cfg.teacher_steps):
        items = rng.choice(n, size=B, replace=False)
        img = torch.from_numpy(data.train_images[items])
        caps = [data.train_captions[i] for i in items]
        hard_caps, hard_img = _hard_pairs(data, items, rng, cfg.noise)
        tok = model.image_tokens(torch.cat([img, hard_img]))
        own, other = tok[:B], tok[B:]
        shift = torch.roll(own, 1, 0)  # another image of the batch (distinct item; a same-scene clash is rare)
        same = torch.from_numpy(data.train_scene[items] == np.roll(data.train_scene[items], 1))
        logits = model.logits(torch.cat([own, own, other, shift]), caps + hard_caps + caps + caps)
        labels = torch.cat([torch.ones(B), torch.zeros(3 * B)]).long()
        labels[3 * B :][same] = 1
        # ITM with the classes balanced (1 positive : 3 negatives), plus ALBEF's ITC on the unimodal CLS vectors,
        # which trains the two encoders quickly before cross-attention has learnt anything
        itm = F.cross_entropy(logits, labels, weight=torch.tensor([1.0, 3.0]))
        loss = itm + itc_loss(model, own, caps, data.train_scene[items])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        run.append(float((logits.argmax(1) == labels).float().mean()))  # pair accuracy (unweighted)
        if (step + 1) % 100 == 0 or step + 1 == cfg.teacher_steps:
            log(f"teacher step {step + 1}/{cfg.teacher_steps} loss {loss.item():.3f} "
                f"pair acc {np.mean(run[-100:]):.3f} ({time.time() - t0:.0f}s)")  # fmt: skip
    model.eval().requires_grad_(False)
    return model


def compositional_set(data: S.ShapesData, seed: int = 0):
    """Per test image: its first caption + 5 distractor captions (one of each kind where possible), and the graded
    similarity (matching attributes, 0..7) of every candidate to the image's scene."""
    rng = np.random.default_rng(seed)
    prefer = ("swap_colours", "swap_shapes", "flip_relation", "change_colour", "change_shape", "change_size",
              "swap_sizes", "change_axis")  # fmt: skip
    cands, grades = [], []
    for si in data.test_scene:
        s = data.scenes[si]
        by_kind: dict[str, list] = {}
        for kind, t in S.perturbations(s):
            by_kind.setdefault(kind, []).append(t)
        picked = []
        for kind in prefer:
            if kind in by_kind and len(picked) < 5:
                opts = by_kind[kind]
                picked.append(opts[int(rng.integers(len(opts)))])
        rest = [t for _, t in S.perturbations(s) if t not in picked]
        picked += [rest[int(j)] for j in rng.permutation(len(rest))[: 5 - len(picked)]]
        cands.append([S.captions(s)[0]] + [S.captions(t)[0] for t in picked])
        grades.append([7] + [S.matching_attributes(s, t) for t in picked])
    return cands, np.asarray(grades)


def compositional_metrics(scores: np.ndarray, grades: np.ndarray) -> dict[str, float]:
    """Top-1 accuracy among the true caption and its distractors; mean Spearman vs the graded similarity."""
    from common.metrics.image_text import rank_correlations

    acc = float((scores.argmax(1) == 0).mean() * 100.0)
    return {"comp_acc": acc, "comp_spearman": rank_correlations(scores, grades.astype(float))["spearman"]}
