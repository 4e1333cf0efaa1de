"""f-distill training: a one-step generator distilled from a diffusion teacher under an f-divergence.

    python -m papers.fdistill.train                          # embedded default: toy2d (JS), minutes on 2 CPU cores
    python -m papers.fdistill.train --set divergence=rkl method=rkl      # reverse KL = DMD2
    python -m papers.fdistill.train --preset digits
    accelerate launch papers/fdistill/train.py --preset cifar10 --set teacher_path=... real_data=...

f-distill (Xu, Nie, Vahdat 2025) is the shared distillation step of common/diffusion/distill.py (DMD2's step) with
one change: the DM gradient of each sample is scaled by h(r) = r^2 f''(r) (paper Eq. 5, Table 1), where the density
ratio r = p_t / q_t is read from the discriminator logit on the same noised sample x_t (paper §4.2) and normalised in
two stages (§4.3; papers/fdistill/losses.py). As in FastGen's f_distill.py, the generator's GAN term uses the same x_t
(`gan_same_noise`), the discriminator head sits on frozen-teacher features (toy: on the noised input itself), the
generator alone is gradient-clipped, and an approximate R1 term is optional (Table 5). Re-running resumes; the
per-noise-level ratio statistics are part of the checkpoint.
Left out: FastGen's several time distributions, the ImageNet fine-tuning stage as a separate preset (use
--set gen_lr=5e-7 fake_lr=5e-7 on a finished run).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

if __package__ in (None, ""):  # `accelerate launch papers/fdistill/train.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from common.config import parse_cli
from common.diffusion.distill import DistillStep, Noised
from common.diffusion.losses import approx_r1
from common.diffusion.tasks import draw_batches, optim_settings
from common.diffusion.trainer import train_loop
from common.launch import start
from papers.fdistill.config import PRESETS, Config
from papers.fdistill.losses import FWeighting
from papers.fdistill.model import build

H_TRACE = 1000  # generator steps of h statistics kept in the checkpointed state


class HWeight:
    """The step's per-sample DM weight: normalised h(r) from the discriminator logits on the DM sample x_t.

    The per-bin means of r live in the step's checkpointed state (`ratio_bin_mean`), so a resumed run continues
    with the statistics it had; FWeighting sums its batch statistics over processes."""

    def __init__(self, cfg: Config, schedule, step: DistillStep):
        edm = getattr(schedule, "kind", "edm") == "edm"
        t_range = (cfg.sigma_min, cfg.sigma_max) if edm else (0.0, float(schedule.max_index()))
        self.fw = FWeighting(
            cfg.divergence,
            t_min=t_range[0],
            t_max=t_range[1],
            num_bins=cfg.ratio_bins,
            bin_space=cfg.ratio_bin_space,
            logit_clamp=cfg.logit_clamp,
            ratio_min=cfg.ratio_min,
            ratio_max=cfg.ratio_max,
            ratio_ema_rate=cfg.ratio_ema_rate,
            normalize_ratio=cfg.normalize_ratio,
            normalize_h=cfg.normalize_h,
        )
        self.schedule, self.step = schedule, step
        self.warmup_iters = cfg.rkl_warmup * cfg.ttur_ratio

    def __call__(self, ctx):
        st = self.step.state
        if "ratio_bin_mean" in st:
            self.fw.bin_mean.copy_(torch.tensor(st["ratio_bin_mean"], dtype=torch.float64))
        div = "rkl" if ctx.step < self.warmup_iters else None  # warm-up: h = 1 while the discriminator is weak
        h, stats = self.fw(ctx.logits, self.schedule.net_time(ctx.noised.idx), update=True, divergence=div)
        st["ratio_bin_mean"] = self.fw.bin_mean.tolist()
        trace = st.setdefault("h_trace", [])
        trace.append([ctx.step, stats.get("h_norm_var", 0.0), stats.get("h_max", 1.0), stats.get("log_r_mean", 0.0)])
        del trace[:-H_TRACE]
        return h.to(ctx.out.x0.device)


def make_step(cfg: Config, S) -> DistillStep:
    """f-distill's configuration of the shared step."""
    step = DistillStep(
        generator=S.generator,
        fake=S.fake,
        head=S.head,
        target=S.target,
        schedule=S.schedule,
        student_steps=S.student_steps,
        dm_range=(cfg.dm_t_lo, cfg.dm_t_hi),
        fake_loss=S.fake_loss,
        gan_features=S.extra.get("gan_features"),
        taps=("input",) if cfg.disc_features == "input" else cfg.taps,
        gan_same_noise=True,  # FastGen: the GAN-G term and the ratio on the DM sample x_t
        w_g=cfg.w_g,
        w_d=cfg.w_d,
    )
    if cfg.divergence != "rkl" or cfg.rkl_warmup:
        step.dm_weight_fn = HWeight(cfg, S.schedule, step)
    if cfg.r1_weight > 0:
        g_r1 = torch.Generator().manual_seed(cfg.seed * 1000 + 555)

        def r1(ctx):  # approximate R1 (paper Table 5, from APT): |D(x_real) - D(x_real + alpha n)|^2 at one level
            n = step.noise(ctx.real, 0.0, 1.0, g_r1)
            return approx_r1(lambda x: step.logits(Noised(x, n.idx), ctx.real_cond), n.x_t, cfg.r1_alpha, g_r1)

        step.extra_critic_losses["r1"] = (cfg.r1_weight, r1)
    return step


def main(argv=None) -> dict:
    cfg = parse_cli(Config, PRESETS, argv, description=__doc__)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    run = start(cfg, paper="fdistill")
    dev = run.device
    S = build(cfg, progress=run.progress)
    for m in (S.generator, S.fake, S.head, S.teacher, S.extra.get("gan_features")):
        if m is not None:
            m.to(dev)
    initial = copy.deepcopy(S.generator).requires_grad_(False)  # the (skewed) start, evaluated at the end
    S.extra["initial_head"] = copy.deepcopy(S.head).requires_grad_(False)  # control of the ratio check
    step = make_step(cfg, S)

    from papers.fdistill.eval import evaluate, quick_score

    if cfg.task != "toy2d":
        from common.diffusion.evaluation import quick_score

    result = train_loop(
        run,
        step,
        draw_batches(S, dev),
        optim_settings(cfg, critic_clip=cfg.critic_clip),  # FastGen: clip 10 on the generator only, AdamW wd 1e-2
        steps=cfg.steps,
        ckpt_every=cfg.ckpt_every,
        keep_ckpts=cfg.keep_ckpts,
        log_every=cfg.log_every,
        eval_every=cfg.eval_every,
        score_fn=(lambda G: quick_score(cfg, S, G, dev)) if cfg.eval_every else None,
        desc=f"fdistill {cfg.divergence}",
    )
    out = evaluate(cfg, run, S, step, initial, result)
    run.finish()
    return out


if __name__ == "__main__":
    from common.cli import entry

    entry(main)
