"""DMD2 training: one-step (or 4-step) generator distilled from a diffusion teacher.

    python -m papers.dmd2.train                      # embedded default: toy2d, a few minutes on 2 CPU cores
    python -m papers.dmd2.train --preset digits      # 8x8 digits with a cached UNet2DModel teacher
    accelerate launch papers/dmd2/train.py --preset sd15 --set real_data=... prompts=...

DMD2 (Yin et al. 2024, "Improved Distribution Matching Distillation") is the shared distillation step of
common/diffusion/distill.py with its defaults: the fixed (or CFG-guided) teacher as the real score, weight 1 on the
normalised DM gradient, the diffusion-GAN on the fake score's bottleneck, TTUR (paper §4.2), backward simulation for
the multi-step student (§4.5). What is DMD2's own here: the choice of those parts from the config, the GAN-weight
calibration iteration, and the 1-step / 4-step inputs. Re-running the same command resumes.
Left out: the SDXL LPIPS regression pre-training, the separate FID-polling evaluator process.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `accelerate launch papers/dmd2/train.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from common.config import parse_cli
from common.diffusion.distill import DistillStep
from common.diffusion.evaluation import evaluate, quick_score
from common.diffusion.tasks import build, draw_batches, optim_settings
from common.diffusion.trainer import train_loop
from common.launch import start
from papers.dmd2.config import PRESETS, Config


def make_step(cfg, S) -> DistillStep:
    """DMD2's configuration of the shared step."""
    calib_at = min(50 * cfg.ttur_ratio, cfg.steps // 4)  # iteration of the w_G measurement (authors' recipe, #73)
    return DistillStep(
        generator=S.generator,
        fake=S.fake,
        head=S.head if cfg.gan else None,
        target=S.target,
        schedule=S.schedule,
        student_steps=S.student_steps,
        input_mode=cfg.multistep_input,
        per_sample_k={"official": None, "sample": True, "batch": False}[cfg.per_sample_k],
        dm_range=(cfg.dm_t_lo, cfg.dm_t_hi),
        dm_weight=cfg.dm_weight,
        fake_loss=S.fake_loss,
        w_g=cfg.w_g,
        w_d=cfg.w_d,
        w_g_calibrate=cfg.w_g_calibrate,
        calibrate_at=calib_at,
    )


def main(argv=None) -> dict:
    cfg = parse_cli(Config, PRESETS, argv, description=__doc__)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    run = start(cfg, paper="dmd2")
    dev = run.device
    S = build(cfg, progress=run.progress)
    for m in (S.generator, S.fake, S.head, S.teacher):
        m.to(dev)
    step = make_step(cfg, S)
    res = train_loop(
        run,
        step,
        draw_batches(S, dev),
        optim_settings(cfg),  # official code: AdamW (0.9, 0.999), wd 0.01, constant_with_warmup, clip 10 on both
        steps=cfg.steps,
        ckpt_every=cfg.ckpt_every,
        keep_ckpts=cfg.keep_ckpts,
        log_every=cfg.log_every,
        eval_every=cfg.eval_every,
        score_fn=lambda G: quick_score(cfg, S, G, dev),
        desc="dmd2",
    )
    S.generator, S.fake = step.G, step.fake
    out = evaluate(cfg, run, S, step.G, res.state, "dmd2", train_wall_time_s=res.train_time_s, ema=res.ema)
    run.finish()
    return out


if __name__ == "__main__":
    from common.cli import entry

    entry(main)
