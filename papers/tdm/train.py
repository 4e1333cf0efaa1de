"""TDM training: a K-step (or step-count-aware) student by trajectory distribution matching.

    python -m papers.tdm.train                        # embedded default: toy2d, about a minute on 2 CPU cores
    python -m papers.tdm.train --set unify=true       # TDM-unify: one student for K in {1, 2, 4}
    python -m papers.tdm.train --preset digits
    accelerate launch papers/tdm/train.py --preset pixart512 --set prompts=prompts.txt

One iteration (official demo; paper Algorithm in §4): draw noise, a step count K per sample (unify) and roll the
current student out along its deterministic K-step trajectory without gradients. Fake step: pick a segment and a
level tau per sample, form x_tau from the student's step, and update the fake score with the SNR-clamped x0 loss
times the importance weights (Eq. 7). Generator step: pick new segments and levels on the same trajectories, make
the segment's student step with gradients, diffuse its result to x_tau, and minimise the normalised pseudo-Huber
distance to the target corrected by teacher (CFG) minus fake score (Eq. 6). No images are used.
Re-running the same command resumes.
"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # `accelerate launch papers/tdm/train.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from common.checkpoint import Checkpointer
from common.config import parse_cli
from common.diffusion.losses import fake_score_loss
from common.diffusion.schedules import snr
from common.launch import start
from papers.tdm.config import PRESETS, Config
from papers.tdm.losses import tdm_loss
from papers.tdm.model import build
from papers.tdm.trajectory import (
    importance_weights,
    pick,
    rollout_points,
    sample_k,
    sample_segments,
    segment_step,
    with_k,
)


def check_finite(name, value, step):
    if not math.isfinite(value):
        raise FloatingPointError(
            f"{name} is {value} at iteration {step}; lower gen_lr/fake_lr (the last checkpoint is intact)"
        )


def _segments(cfg, k, g):
    return sample_segments(k, cfg.total_steps, cfg.match, cfg.tau_min, cfg.tau_gap, generator=g)


def fake_loss(cfg, S, fake, G, points, k, cond, g):
    """Fake-score loss on the student's segment samples (Eq. 7): min(SNR, clamp) x importance weight x x0-MSE."""
    seg = _segments(cfg, k, g)
    with torch.no_grad():
        x0, x_tau, n = segment_step(G, S.schedule, pick(points, seg.i), seg, cfg.match, cond, cfg.unify, g)
    pred = fake(x_tau, S.schedule.net_time(seg.tau), with_k(cond, seg.k, cfg.unify))
    a, s = S.schedule.alpha_sigma(seg.tau)
    w = importance_weights(x_tau, x0, n, S.schedule, seg.tau) if cfg.is_weights else None
    loss = fake_score_loss("x0_snr", pred, x0.detach(), snr=snr(a, s), gamma=cfg.snr_clamp, weight=w)
    return loss, {"is_weight_mean": w.mean().item() if w is not None else 1.0}


def generator_loss(cfg, S, fake, G, points, k, cond, g):
    """Trajectory distribution-matching loss (Eq. 6) of one differentiable student step per sample."""
    seg = _segments(cfg, k, g)
    x0, x_tau, _ = segment_step(G, S.schedule, pick(points, seg.i), seg, cfg.match, cond, cfg.unify, g)
    t_tau = S.schedule.net_time(seg.tau)
    with torch.no_grad():
        mu_real = (
            S.teacher(x_tau, t_tau, cond, guidance=cfg.guidance) if cfg.guidance > 1 else S.teacher(x_tau, t_tau, cond)
        )
        mu_fake = fake(x_tau, t_tau, with_k(cond, seg.k, cfg.unify))
    loss = tdm_loss(x0.float(), mu_real.float(), mu_fake.float(), cfg.loss_form, cfg.huber_c or None, cfg.normalise)
    return loss, x0


def main(argv=None) -> dict:
    cfg = parse_cli(Config, PRESETS, argv, description=__doc__)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    from diffusers.optimization import get_scheduler

    run = start(cfg, paper="tdm")
    acc, dev = run.accelerator, run.device
    S = build(cfg)
    S.student.to(dev), S.fake.to(dev), S.teacher.to(dev)
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    opt_g = torch.optim.AdamW(
        S.student.parameters(), lr=cfg.gen_lr, betas=betas, weight_decay=cfg.weight_decay, eps=1e-8
    )
    opt_f = torch.optim.AdamW(S.fake.parameters(), lr=cfg.fake_lr, betas=betas, weight_decay=cfg.weight_decay, eps=1e-8)
    sched_g = get_scheduler(cfg.lr_schedule, opt_g, num_warmup_steps=cfg.warmup, num_training_steps=max(cfg.steps, 1))
    G, fake, opt_g, opt_f = acc.prepare(S.student, S.fake, opt_g, opt_f)
    S.student, S.fake = G, fake
    ema = [copy.deepcopy(acc.unwrap_model(G)).requires_grad_(False) for _ in cfg.ema_rates]
    g = torch.Generator().manual_seed(cfg.seed * 1000 + acc.process_index)
    ckpt = Checkpointer(run.dir / "checkpoints", keep=cfg.keep_ckpts, accelerator=acc)
    objects = {"student": G, "fake": fake, "opt_g": opt_g, "opt_f": opt_f, "sched_g": sched_g, "rng": g}
    objects.update({f"ema{i}": e for i, e in enumerate(ema)})
    start_step, state = ckpt.resume(objects)
    state = state or {}
    from papers.tdm.eval import evaluate, quick_score

    n = run.per_device_batch
    Gu = acc.unwrap_model(G)
    bar = run.progress(range(start_step, cfg.steps), total=cfg.steps, initial=start_step, desc="tdm")
    for step in bar:
        cond = S.sample_cond(n, g)
        z = torch.randn((n, *S.noise_shape), generator=g).to(dev)
        k = sample_k(n, cfg.train_ks, g).to(dev)
        points = rollout_points(Gu, S.schedule, z, k, cfg.total_steps, cond, cfg.unify)  # pre-update student
        # ---- fake-score step ----
        with acc.autocast():
            l_fake, logs = fake_loss(cfg, S, fake, Gu, points, k, cond, g)
        check_finite("fake-score loss", l_fake.item(), step)
        acc.backward(l_fake)
        opt_f.step()
        opt_f.zero_grad(set_to_none=True)
        # ---- generator step (fake score as just updated, frozen here) ----
        fake.requires_grad_(False)
        with acc.autocast():
            l_gen, x0 = generator_loss(cfg, S, fake, G, points, k, cond, g)
        check_finite("generator loss", l_gen.item(), step)
        acc.backward(l_gen)
        if cfg.grad_clip:
            acc.clip_grad_norm_(G.parameters(), cfg.grad_clip)
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)
        opt_f.zero_grad(set_to_none=True)
        sched_g.step()
        fake.requires_grad_(True)
        for e, r in zip(ema, cfg.ema_rates):
            with torch.no_grad():
                for pe, p in zip(e.parameters(), Gu.parameters()):
                    pe.lerp_(p.detach(), 1 - r)
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and cfg.task in ("toy2d", "digits"):
            logs["val_score"] = quick_score(cfg, S, Gu, dev)  # separate validation noise, never the test draw
        if step % cfg.log_every == 0 or step == cfg.steps - 1 or "val_score" in logs:
            run.log(step, loss_fake=l_fake.item(), loss_gen=l_gen.item(), lr_g=sched_g.get_last_lr()[0], **logs)
        if cfg.ckpt_every and (step + 1) % cfg.ckpt_every == 0 and step + 1 < cfg.steps:
            ckpt.save(step + 1, objects, extra=state)
    if start_step < cfg.steps or ckpt.latest() is None:
        ckpt.save(cfg.steps, objects, extra=state)
    out = evaluate(cfg, run, S, Gu, ema=ema, train_wall_time_s=ckpt.train_time_s())
    run.finish()
    return out


if __name__ == "__main__":
    main()
