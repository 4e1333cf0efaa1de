"""What f-distill's toy adds to the shared toy set-up: a discriminator on the noised input, and a skewed start.

The analytic mixture teacher has no features, so the toy discriminator reads the noised sample itself: a frozen,
parameter-free feature map (EDM input scaling c_in(sigma) x and a Fourier embedding of c_noise = ln(sigma)/4) under a
trainable MLP head -- the 2-D analogue of FastGen's trainable head on frozen-teacher features. The initial generator
is fitted to a single mode of the mixture (x = mu_k + s_k z), the skewed q from which the paper's Fig. 8 contrasts
the divergences; distillation must then move mass to the other modes.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from common.data.toy2d import ring
from common.diffusion.denoisers import MLPDenoiser, Prediction, edm_precond_coeffs, freeze
from common.diffusion.distill import FixedTarget
from common.diffusion.losses import MLPGANHead
from common.diffusion.schedules import EDMSchedule
from common.diffusion.teachers import AnalyticTeacher


class InputFeatures(nn.Module):
    """Frozen feature map of (x_t, sigma) with one tap, "input"; same call signature as the denoisers' taps."""

    def __init__(self, dim: int, sigma_data: float, emb: int = 16):
        super().__init__()
        self.sigma_data, self.feature_dim = sigma_data, dim + 2 * emb
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(100.0), emb)), persistent=False)

    def forward(self, x, t, cond=None, taps=("input",), pred=True, stop_after_taps=True):
        if tuple(taps) != ("input",):
            raise KeyError(f"feature taps {list(taps)} unknown; the input feature map has ['input']")
        sigma = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        _, _, c_in, c_noise = edm_precond_coeffs(sigma, self.sigma_data)
        ang = c_noise[:, None] * self.freqs[None]
        return Prediction(None, None, {"input": torch.cat([c_in[:, None] * x, ang.sin(), ang.cos()], 1)})


class MLPHead(nn.Module):
    """Discriminator head: `depth` SiLU hidden layers of `width` units -> one logit."""

    def __init__(self, dim: int, width: int = 128, depth: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(dim, width), nn.SiLU()]
            dim = width
        self.net = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net(feats.float()).squeeze(1)


def fit_to_mode(G, schedule, mixture, mode: int, steps: int, batch: int, seed: int, lr: float = 1e-3) -> float:
    """Regress the one-step generator x = G(sigma_max z) onto mu_k + s_k z (component `mode` only).

    Returns the final mean squared error. Deterministic given `seed` (its own generator), so every divergence of a
    seed starts from the same skewed generator."""
    g = torch.Generator().manual_seed(20_000 + seed)
    opt = torch.optim.Adam(G.parameters(), lr=lr)
    idx = torch.full((batch,), schedule.max_index())
    t = schedule.net_time(idx)
    _, s_max = schedule.alpha_sigma(idx)
    mu, sd = mixture.means[mode].float(), float(mixture.stds[mode])
    loss = torch.zeros(())
    for _ in range(steps):
        z = torch.randn(batch, mixture.dim, generator=g)
        loss = ((G(s_max[:, None].float() * z, t) - (mu + sd * z)) ** 2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


class MultiHead(nn.Module):
    """One head per feature map, logits averaged (FastGen's multi-resolution discriminator, paper Table 5)."""

    def __init__(self, heads: dict[str, nn.Module]):
        super().__init__()
        self.heads = nn.ModuleDict(heads)

    def forward(self, feats) -> torch.Tensor:
        if not isinstance(feats, dict):
            feats = {next(iter(self.heads)): feats}
        return torch.stack([h(feats[k]) for k, h in self.heads.items()]).mean(0)


@dataclass
class Setup:
    generator: nn.Module
    teacher: nn.Module
    fake: nn.Module
    head: nn.Module
    features: nn.Module | None  # feature network of the discriminator; None = the fake score's taps
    schedule: Any
    sample_real: Any  # (n, generator) -> (x0, cond)
    sample_cond: Any  # (n, generator) -> cond
    noise_shape: tuple
    target: Any = None
    extra: dict = field(default_factory=dict)


def toy_mixture(cfg):
    return ring(k=cfg.num_modes, radius=cfg.radius, std=cfg.mode_std, weights=list(cfg.mode_weights) or None)


def _regress_onto_teacher(net, teacher, mixture, schedule, steps, batch, seed):
    """'Copy of the teacher' for an analytic teacher: regress net(x_t, sigma) onto teacher(x_t, sigma)."""
    g = torch.Generator().manual_seed(10_000 + seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(steps):
        x0 = mixture.sample(batch, g)
        _, s = schedule.alpha_sigma(schedule.sample_index(batch, generator=g))
        x_t = x0 + s[:, None] * torch.randn(x0.shape, generator=g)
        with torch.no_grad():
            target = teacher(x_t, s).float()
        loss = ((s**-2 + schedule.sigma_data**-2) * ((net(x_t, s) - target) ** 2).sum(1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)


def build_toy(cfg) -> Setup:
    data = toy_mixture(cfg)
    sd = cfg.sigma_data or float(data.sample(65536, torch.Generator().manual_seed(1234)).std(0).mean())
    schedule = EDMSchedule(cfg.sigma_min, cfg.sigma_max, cfg.rho, cfg.num_levels, sd)
    teacher = freeze(AnalyticTeacher(data))
    torch.manual_seed(cfg.seed)
    fake = MLPDenoiser(2, cfg.width, cfg.depth, sd)
    _regress_onto_teacher(fake, teacher, data, schedule, cfg.fake_init_steps, cfg.global_batch, cfg.seed)
    generator = copy.deepcopy(fake)
    fit_loss = None
    if cfg.init_mode >= 0:
        fit_loss = fit_to_mode(generator, schedule, data, cfg.init_mode, cfg.init_steps, cfg.global_batch, cfg.seed)
    if cfg.disc_features == "input":
        features = InputFeatures(2, sd)
        head = MLPHead(features.feature_dim, cfg.width, cfg.depth)
    else:  # the fake score's last hidden layer (DMD2's toy head)
        features, head = None, MLPGANHead(fake.feature_dim, cfg.width)
    return Setup(
        generator,
        teacher,
        fake,
        head,
        features,
        schedule,
        lambda n, g: (data.sample(n, g), None),
        lambda n, g: None,
        (2,),
        target=FixedTarget(teacher),
        extra={"data": data, "init_fit_mse": fit_loss},
    )


def build(cfg) -> Setup:
    if cfg.task == "toy2d":
        return build_toy(cfg)
    raise NotImplementedError(f"task {cfg.task!r}: builder not wired yet")
