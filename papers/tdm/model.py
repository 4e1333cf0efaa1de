"""TDM's networks for the CPU tiers: frozen VP teacher, K-step eps-student and fake score.

toy2d (tdm.md §6): the teacher is the exact posterior mean of the 8-mode ring under the VP schedule; student and
fake score are EDM-preconditioned MLPs read in VP time (`VPFromVE`), regressed onto the teacher for a few hundred
steps (the toy's "copy of the teacher"); the student is a copy of that network.
digits: the cached EDM UNet2DModel teacher of common.diffusion read in VP time; student and fake are copies.
A VE denoiser D(y, s) (y = x0 + s eps) serves a VP schedule through x_t / alpha_t = x0 + (sigma_t / alpha_t) eps:
x0_hat(x_t, t) = D(x_t / alpha_t, sigma_t / alpha_t).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from common.data.toy2d import ring
from common.diffusion.denoisers import MLPDenoiser, freeze
from common.diffusion.schedules import VPSchedule, bcast
from common.diffusion.teachers import AnalyticTeacher
from papers.tdm.trajectory import StepConditioned


class VPFromVE(nn.Module):
    """A VE (EDM) denoiser read as a VP x0-model: net(x_t, t) = D(x_t / alpha_t, sigma_t / alpha_t)."""

    def __init__(self, net: nn.Module, schedule: VPSchedule):
        super().__init__()
        self.net, self.schedule = net, schedule

    def forward(self, x, t, cond=None, **kw):
        t = torch.as_tensor(t, device=x.device).long().expand(x.shape[0])
        a, s = self.schedule.alpha_sigma(t)
        return self.net(x / bcast(a, x), s / a, cond, **kw)


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
    data = ring(k=cfg.num_modes, radius=cfg.radius, std=cfg.mode_std)
    schedule = vp_schedule(cfg)
    teacher = freeze(VPFromVE(AnalyticTeacher(data), schedule))
    sd = float(data.sample(65536, torch.Generator().manual_seed(1234)).std(0).mean())
    torch.manual_seed(cfg.seed)
    base = VPFromVE(MLPDenoiser(2, cfg.width, cfg.depth, sd), schedule)
    _regress(base, teacher, data, schedule, cfg.init_steps, 1024, cfg.seed, sd)  # independent of the run batch
    student = _k_aware(cfg, copy.deepcopy(base))
    fake = _k_aware(cfg, copy.deepcopy(base))
    return Setup(student, teacher, fake, schedule, lambda n, g: None, (2,), extra={"data": data})


def build(cfg) -> Setup:
    if cfg.task == "toy2d":
        return build_toy(cfg)
    raise NotImplementedError(f"task {cfg.task!r}")
