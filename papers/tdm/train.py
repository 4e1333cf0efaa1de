"""TDM training: a K-step (or step-count-aware) student by trajectory distribution matching.

    python -m papers.tdm.train                        # embedded default: toy2d, a few minutes on 2 CPU cores
    python -m papers.tdm.train --set unify=true       # TDM-unify: one student for K in {1, 2, 4}
    python -m papers.tdm.train --preset digits
    accelerate launch papers/tdm/train.py --preset pixart512 --set prompts=prompts.txt

TDM is the shared distillation step of common/diffusion/distill.py with these parts (paper §4; official demo):
- generator input: a step count K per sample (unify) and the current student's deterministic K-step trajectory
  from pure noise, rolled out without gradients; per sample a segment i, whose point x_{t_i} is the input of the
  one differentiable student step (`TDMStep.make_input`);
- matching sample (`dm_noise`): the step's next trajectory point, diffused to a level tau inside the segment;
- target: the frozen teacher (CFG for text-to-image), never told K; the fake score is K-aware under unify;
- generator loss: the normalised pseudo-Huber trajectory loss (Eq. 6) as the step's extra loss (dm_weight 0);
- critic: the fake score's x0 loss x min(SNR, 5) x importance weight on its own tau draw (Eq. 7);
- optimisation: 1 : 1 updates, AdamW betas (0, 0.95), student clip 1, student LR schedule with warm-up, constant
  unclipped fake LR (official demo). The shared loop updates the student first and then the fake score on the
  same (pre-update) student step; the demo updates the fake score first.
No images are used. Re-running the same command resumes.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `accelerate launch papers/tdm/train.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from common.config import parse_cli
from common.diffusion.distill import DistillStep, FixedTarget, GenOutput, GuidedTarget, Noised
from common.diffusion.trainer import Batch, OptimSettings, train_loop
from common.launch import start
from common.results import check_record_slot
from papers.tdm.config import PRESETS, Config
from papers.tdm.losses import tdm_loss
from papers.tdm.model import build
from papers.tdm.trajectory import (
    WithoutK,
    importance_weights,
    matching_sample,
    pick,
    resample_tau,
    rollout_points,
    sample_k,
    sample_segments,
    split_k,
    with_k,
)


class TDMStep(DistillStep):
    """The shared step with TDM's input (a segment step of the student's own trajectory) and matching sample."""

    def __init__(self, cfg, S):
        teacher = WithoutK(S.teacher)
        target = GuidedTarget(teacher, cfg.guidance) if S.guided else FixedTarget(teacher)
        super().__init__(
            generator=S.student,
            fake=S.fake,
            target=target,
            schedule=S.schedule,
            rollout_rule="ddim",
            dm_weight=0.0,  # the trajectory loss below replaces DMD2's operator
            dm_noise=self._dm_noise,
            extra_gen_losses={"tdm": (1.0, self._tdm_loss)},
            fake_loss="x0_snr",
            snr_gamma=cfg.snr_clamp,
            critic_noise=self._critic_noise,
        )
        self.cfg = cfg

    def _tau(self, seg, g):
        c = self.cfg
        return resample_tau(seg, c.total_steps, c.match, c.tau_min, c.tau_gap, generator=g)

    def make_input(self, z, cond=None, real=None, g=None, g_shared=None):
        """(x_{t_i}, t_i, segments): per-sample K (from the conditioning under unify) and segment i."""
        c = self.cfg
        k = split_k(cond)[1] if c.unify else torch.full((z.shape[0],), c.student_k, dtype=torch.long)
        seg = sample_segments(k.cpu(), c.total_steps, c.match, c.tau_min, c.tau_gap, generator=g)
        points = rollout_points(self.G, self.schedule, z, seg.k.to(z.device), c.total_steps, cond)
        seg = type(seg)(*(v.to(z.device) for v in (seg.k, seg.i, seg.t_start, seg.t_end, seg.tau)))
        return pick(points, seg.i), seg.t_start, seg

    def generate(self, G, x_in, idx, seg, cond) -> GenOutput:
        return GenOutput(x_in, idx, seg.i, G(x_in, self.t(idx), cond), self.schedule, {"seg": seg})

    def _dm_noise(self, st, out, g) -> Noised:
        seg = self._tau(out.extra["seg"], g)
        x_tau, n = matching_sample(self.schedule, out.x_in, out.x0, seg, self.cfg.match, g)
        return Noised(x_tau, seg.tau, n)

    def _critic_noise(self, st, out, g) -> Noised:
        seg = self._tau(out.extra["seg"], g)
        x_tau, n = matching_sample(self.schedule, out.x_in, out.x0, seg, self.cfg.match, g)
        w = importance_weights(x_tau, out.x0, n, self.schedule, seg.tau) if self.cfg.is_weights else None
        return Noised(x_tau, seg.tau, n, weight=w)

    def _tdm_loss(self, ctx):
        c = self.cfg
        x0 = ctx.out.x0.float()
        return tdm_loss(x0, ctx.mu_real.float(), ctx.mu_fake.float(), c.loss_form, c.huber_c or None, c.normalise)


def optim_settings(cfg) -> OptimSettings:
    """Official demo: AdamW (0, 0.95), wd 1e-2, eps 1e-8; student: warm-up + schedule, clip 1; fake: constant."""
    return OptimSettings(
        gen_lr=cfg.gen_lr,
        critic_lr=cfg.fake_lr,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.weight_decay,
        eps=1e-8,
        warmup=cfg.warmup,
        gen_scheduler=cfg.lr_schedule,
        critic_scheduler="constant",
        critic_warmup=0,
        total_steps=max(cfg.steps, 1),
        gen_clip=cfg.grad_clip,
        critic_clip=0.0,
        ttur_ratio=1,
        ema_rates=cfg.ema_rates,
    )


def main(argv=None) -> dict:
    cfg = parse_cli(Config, PRESETS, argv, description=__doc__)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    check_record_slot("tdm", cfg.preset, cfg.method or "tdm", cfg, cfg.results_dir)  # refuse before training
    run = start(cfg, paper="tdm")
    dev = run.device
    S = build(cfg, progress=run.progress)
    for m in (S.student, S.fake, S.teacher):
        m.to(dev)
    step = TDMStep(cfg, S)

    def draw(n, g):
        cond = S.sample_cond(n, g)
        if cfg.unify:  # TDM-unify (Eq. 8): K uniform over the supported counts, per sample
            cond = with_k(cond, sample_k(n, cfg.unify_ks, g).to(dev))
        return Batch(cond, None, None, torch.randn((n, *S.noise_shape), generator=g).to(dev))

    from papers.tdm.eval import evaluate, quick_score

    res = train_loop(
        run,
        step,
        draw,
        optim_settings(cfg),
        steps=cfg.steps,
        ckpt_every=cfg.ckpt_every,
        keep_ckpts=cfg.keep_ckpts,
        log_every=cfg.log_every,
        eval_every=cfg.eval_every if cfg.task in ("toy2d", "digits") else 0,
        score_fn=lambda G: quick_score(cfg, S, G, dev),
        desc="tdm",
    )
    S.student, S.fake = step.G, step.fake
    out = evaluate(cfg, run, S, step.G, ema=res.ema, best=res.state.get("best"), train_wall_time_s=res.train_time_s)
    run.finish()
    return out


if __name__ == "__main__":
    from common.cli import entry

    entry(main)
