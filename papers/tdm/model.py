"""TDM's networks for the CPU tiers: frozen VP teacher, K-step eps-student and fake score.

toy2d: the teacher is the exact posterior mean of the mixture (the 8-mode ring; a grid or other weights by config)
under the VP schedule; student and fake score are EDM-preconditioned MLPs read in VP time (common `VPDenoiser`: x0_hat(x_t, t) = D(x_t / alpha_t, sigma_t /
alpha_t)), regressed onto the teacher for 1500 steps at batch 1024 whatever the run's batch (the toy's "copy of the
teacher"); the student is a copy of that network.
digits: the shared cached EDM UNet2DModel teacher (common.diffusion.tasks) read in VP time; student and fake score
are copies. pixart / sd: papers/tdm/fullscale.py.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from common.data.toy2d import grid, ring
from common.diffusion.denoisers import MLPDenoiser, VPDenoiser, freeze
from common.diffusion.schedules import VPSchedule
from common.diffusion.teachers import AnalyticTeacher
from papers.tdm.trajectory import StepConditioned


@dataclass
class Setup:
    student: nn.Module
    teacher: nn.Module
    fake: nn.Module
    schedule: VPSchedule
    sample_cond: Any  # (n, generator) -> conditioning (None when unconditional)
    noise_shape: tuple
    guided: bool = False  # the teacher takes {"cond", "uncond"} and is queried with CFG
    extra: dict = field(default_factory=dict)


def vp_schedule(cfg) -> VPSchedule:
    return VPSchedule(cfg.beta_schedule, cfg.beta_start, cfg.beta_end, cfg.num_train_steps)


def _regress(net, teacher, data, schedule, steps, batch, seed, sd):
    """'Copy of the teacher' for an analytic teacher: regress net(x_t, t) onto teacher(x_t, t), SNR-clamped weight."""
    g = torch.Generator().manual_seed(10_000 + seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(steps):
        x0 = data.sample(batch, g)
        t = schedule.sample_index(batch, generator=g)
        x_t = schedule.add_noise(x0, t, torch.randn(x0.shape, generator=g))
        with torch.no_grad():
            target = teacher(x_t, t).float()
        a, s = schedule.alpha_sigma(t)
        w = a**2 / s**2 + 1 / sd**2  # EDM weighting lambda = 1/sigma_ve^2 + 1/sigma_data^2 with sigma_ve = sigma/alpha
        loss = (w * ((net(x_t, t) - target) ** 2).sum(1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _k_aware(cfg, net):
    return StepConditioned(net, cfg.unify_ks) if cfg.unify else net


def build_toy(cfg) -> Setup:
    w = list(cfg.mode_weights) or None
    if cfg.toy_layout == "grid":
        data = grid(side=cfg.grid_side, spacing=cfg.grid_spacing, std=cfg.mode_std, weights=w)
    else:
        data = ring(k=cfg.num_modes, radius=cfg.radius, std=cfg.mode_std, weights=w)
    schedule = vp_schedule(cfg)
    teacher = freeze(VPDenoiser(AnalyticTeacher(data), schedule))
    sd = float(data.sample(65536, torch.Generator().manual_seed(1234)).std(0).mean())
    torch.manual_seed(cfg.seed)
    base = VPDenoiser(MLPDenoiser(2, cfg.width, cfg.depth, sd), schedule)
    _regress(base, teacher, data, schedule, cfg.init_steps, 1024, cfg.seed, sd)  # independent of the run batch
    student = _k_aware(cfg, copy.deepcopy(base))
    fake = _k_aware(cfg, copy.deepcopy(base))
    return Setup(student, teacher, fake, schedule, lambda n, g: None, (2,), extra={"data": data})


def build_digits(cfg, progress=None) -> Setup:
    """The shared cached EDM UNet2DModel digits teacher, read in VP time; student and fake score are copies."""
    from common.diffusion.tasks import digits_teacher

    ve, path = digits_teacher(SimpleNamespace(**dataclasses.asdict(cfg), sigma_data=0.5), progress)
    schedule = vp_schedule(cfg)

    def copy_of_teacher():
        return _k_aware(cfg, VPDenoiser(copy.deepcopy(ve).train().requires_grad_(True), schedule))

    teacher = freeze(VPDenoiser(ve, schedule))
    return Setup(
        copy_of_teacher(),
        teacher,
        copy_of_teacher(),
        schedule,
        lambda n, g: None,
        (1, 8, 8),
        extra={"teacher_path": path},
    )


def build(cfg, progress=None) -> Setup:
    if cfg.task == "toy2d":
        return build_toy(cfg)
    if cfg.task == "digits":
        return build_digits(cfg, progress)
    from papers.tdm.fullscale import build_fullscale

    return build_fullscale(cfg)
