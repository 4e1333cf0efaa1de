"""DMD2's networks for each task: generator, frozen teacher (real score), fake score and GAN head.

Toy 2-D (dmd2.md §6): the teacher is the exact mixture denoiser (optionally mis-specified) or a trained MLP;
the fake score is an EDM-preconditioned MLP regressed onto the teacher for a few hundred steps (the toy's
"copy of the teacher"); the generator is a copy of that fake score evaluated at sigma_max on sigma_max * z;
the GAN head is an MLP on the fake score's last hidden layer (the analogue of the bottleneck head).
Digits / ImageNet-64: EDM-preconditioned diffusers UNet2DModel; generator and fake score are copies of the
teacher; the conv GAN head sits on the fake UNet's mid block (paper App. F.1).
SD1.5 / SDXL: see papers/dmd2/sd.py.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from common.data.toy2d import GaussianMixture, ring
from common.diffusion.denoisers import MLPDenoiser, UNetDenoiser, freeze
from common.diffusion.distill import FixedTarget
from common.diffusion.losses import ConvGANHead, MLPGANHead
from common.diffusion.schedules import EDMSchedule
from common.diffusion.teachers import AnalyticTeacher, load_small_denoiser, train_teacher


@dataclass
class Setup:
    generator: nn.Module
    teacher: nn.Module
    fake: nn.Module
    head: nn.Module
    schedule: Any
    sample_real: Any  # (n, generator) -> (x0, cond)
    sample_cond: Any  # (n, generator) -> cond for the generator / scores (None when unconditional)
    noise_shape: tuple
    student_steps: list[int]
    fake_loss: str = "edm"
    extra: dict = field(default_factory=dict)
    target: Any = None  # the real-score provider; default: the teacher as a fixed target

    def __post_init__(self):
        if self.target is None:
            self.target = FixedTarget(self.teacher)


def toy_mixtures(cfg) -> tuple[GaussianMixture, GaussianMixture]:
    """(true data mixture, teacher mixture). The mis-specified teacher inflates stds and/or tilts the weights."""
    data = ring(k=cfg.num_modes, radius=cfg.radius, std=cfg.mode_std)
    if cfg.teacher != "misspecified":
        return data, data
    k = torch.arange(cfg.num_modes, dtype=torch.float64)
    w = torch.exp(cfg.teacher_weight_tilt * torch.cos(2 * math.pi * k / cfg.num_modes))
    return data, data.perturbed(std_scale=cfg.teacher_std_scale, weights=w / w.sum())


def _student_steps(cfg, schedule) -> list[int]:
    return list(cfg.student_steps) if cfg.student_steps else [schedule.max_index()]


def build_toy(cfg, progress=None) -> Setup:
    data, teacher_mix = toy_mixtures(cfg)
    sd = cfg.sigma_data or float(data.sample(65536, torch.Generator().manual_seed(1234)).std(0).mean())
    schedule = EDMSchedule(cfg.sigma_min, cfg.sigma_max, cfg.rho, cfg.num_levels, sd)

    def sample_real(n, g):
        return data.sample(n, g), None

    if cfg.teacher == "mlp":  # diffusion_common.md §11.1: learned MLP teacher, 3x256, DSM with log-normal sigma
        teacher, _ = train_teacher(
            MLPDenoiser(2, 256, 3, sd),
            lambda n, g: (data.sample(n, g), None),
            cache_dir=cfg.cache_dir,
            name="toy2d-mlp-teacher",
            spec={"data": data.to_dict(), "arch": [2, 256, 3, sd]},
            steps=2000 if not cfg.tiny_models else 2,
            batch=2048,
            lr=1e-3,
            progress=progress,
        )
    else:
        teacher = AnalyticTeacher(teacher_mix)

    fake = MLPDenoiser(2, cfg.width, cfg.depth, sd)
    _regress_onto_teacher(fake, teacher, teacher_mix, schedule, cfg.fake_init_steps, cfg.global_batch, cfg.seed)
    generator = copy.deepcopy(fake)
    head = MLPGANHead(fake.feature_dim, cfg.width)
    return Setup(
        generator,
        freeze(teacher),
        fake,
        head,
        schedule,
        sample_real,
        lambda n, g: None,
        (2,),
        _student_steps(cfg, schedule),
        extra={"data": data, "teacher_mixture": teacher_mix},
    )


def _regress_onto_teacher(net, teacher, mixture, schedule, steps, batch, seed):
    """'Copy of the teacher' for an analytic teacher: regress net(x_t, sigma) onto teacher(x_t, sigma)."""
    if steps == 0:
        return
    g = torch.Generator().manual_seed(10_000 + seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(steps):
        x0 = mixture.sample(batch, g)
        idx = schedule.sample_index(batch, generator=g)
        _, s = schedule.alpha_sigma(idx)
        x_t = x0 + s[:, None] * torch.randn(x0.shape, generator=g)
        with torch.no_grad():
            target = teacher(x_t, s).float()
        w = s**-2 + schedule.sigma_data**-2
        loss = (w * ((net(x_t, s) - target) ** 2).sum(1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def digits_unet(tiny: bool):
    from diffusers import UNet2DModel

    ch = (16, 32) if tiny else (32, 64)  # not in the paper: our CPU-sized UNet (mid block at 4x4)
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=ch,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8 if tiny else 32,
    )


def digits_teacher(cfg, progress=None) -> tuple[nn.Module, str]:
    """The digits teacher: load cfg.teacher_path, or train it once and cache it (common.diffusion.train_teacher)."""
    from common.data.digits import load_digits_split

    if cfg.teacher_path:
        net = load_small_denoiser(cfg.teacher_path, expect={"kind": "unet"})
        if net.unet.config.sample_size != cfg.resolution or net.unet.config.in_channels != 1:
            raise ValueError(
                f"teacher_path: {cfg.teacher_path} is a {net.unet.config.sample_size}px "
                f"{net.unet.config.in_channels}-channel UNet; the preset needs {cfg.resolution}px grey"
            )
        return freeze(net), cfg.teacher_path
    x, _ = load_digits_split("train")

    def sample(n, g):
        return x[torch.randint(len(x), (n,), generator=g)], None

    net, path = train_teacher(
        UNetDenoiser(digits_unet(cfg.tiny_models), sigma_data=cfg.sigma_data or 0.5),
        sample,
        cache_dir=cfg.cache_dir,
        name="digits-unet-teacher" + ("-tiny" if cfg.tiny_models else ""),
        spec={"data": "sklearn-digits-train", "tiny": cfg.tiny_models, "resolution": cfg.resolution},
        steps=cfg.teacher_steps,
        batch=128,
        lr=2e-3,
        progress=progress,
    )
    return net, str(path)


def build_digits(cfg, progress=None) -> Setup:
    from common.data.digits import load_digits_split

    teacher, teacher_path = digits_teacher(cfg, progress)
    schedule = EDMSchedule(cfg.sigma_min, cfg.sigma_max, cfg.rho, cfg.num_levels, cfg.sigma_data or 0.5)
    fake = copy.deepcopy(teacher).train().requires_grad_(True)
    generator = copy.deepcopy(teacher).train().requires_grad_(True)
    head = ConvGANHead(fake.feature_channels, 4, groups=8 if cfg.tiny_models else 32)
    x, _ = load_digits_split("train")

    def sample_real(n, g):
        return x[torch.randint(len(x), (n,), generator=g)], None

    return Setup(
        generator,
        teacher,
        fake,
        head,
        schedule,
        sample_real,
        lambda n, g: None,
        (1, 8, 8),
        _student_steps(cfg, schedule),
        extra={"teacher_path": teacher_path},
    )


def build(cfg, progress=None) -> Setup:
    if cfg.task == "toy2d":
        return build_toy(cfg, progress)
    if cfg.task == "digits":
        return build_digits(cfg, progress)
    if cfg.task == "imagenet64":
        from papers.dmd2.fullscale import build_imagenet64

        return build_imagenet64(cfg)
    from papers.dmd2.fullscale import build_sd

    return build_sd(cfg)
