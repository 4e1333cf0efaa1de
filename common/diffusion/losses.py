"""Distribution-matching operator, fake-score (critic) losses, GAN heads and non-saturating GAN losses.

Concepts: DMD (Yin et al. 2024a, Eq. 7-8) and DMD2 (Yin et al. 2024b, Eq. 4, App. F.1): the generator
gradient is the normalised difference of the fake and real denoisers, applied as a stop-gradient MSE;
the critic is a diffusion model trained by denoising score matching on generator samples; the GAN head
sits on a backbone feature map. Also the TDM pseudo-Huber metric and the f-distill per-sample scale
(an argument here), so that the four diffusion papers share one operator.
Left out: the f-divergence weighting itself (lives with the paper that needs it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common.diffusion.schedules import bcast, edm_loss_weight

__all__ = [
    "dm_loss",
    "fake_score_loss",
    "gan_d_loss",
    "gan_g_loss",
    "approx_r1",
    "ConvGANHead",
    "MLPGANHead",
    "gen_turn",
]


def _mean_chw(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(1)


def dm_loss(x, mu_real, mu_fake, scale=None, metric="mse", c=1e-3, eps=1e-6, normalise=True):
    """Distribution-matching loss on the generator output x (DMD Eq. 7; DMD2 official code `compute_distribution_
    matching_loss`; TDM official code for the pseudo-Huber form).

    omega = mean_CHW |x - mu_real| (detached; 1 when normalise=False, Diff-Instruct's plain score difference);
    g = scale * (mu_fake - mu_real) / (omega + eps), nan_to_num; `scale` is a per-sample weight (f-distill's h(r)).
    mse:          L = 1/2 mean((x - sg(x - g))^2)          -> dL/dx = g / numel  (DMD Eq. 7 with the DMD2
                                                             normaliser replacing alpha_t / sigma_t^2)
    pseudo_huber: L = mean((sqrt((x - sg(x + mu_real - mu_fake))^2 + c^2) - c) / omega)   (TDM)
    """
    mu_real, mu_fake = mu_real.detach().to(x.dtype), mu_fake.detach().to(x.dtype)
    with torch.no_grad():
        omega = _mean_chw((x - mu_real).abs())
        if not normalise:
            omega, eps = torch.ones_like(omega), 0.0
        s = torch.ones_like(omega) if scale is None else torch.as_tensor(scale, dtype=x.dtype).expand_as(omega)
    if metric == "mse":
        g = torch.nan_to_num(bcast(s / (omega + eps), x) * (mu_fake - mu_real))
        return 0.5 * F.mse_loss(x, (x - g).detach())
    if metric == "pseudo_huber":
        target = (x + bcast(s, x) * (mu_real - mu_fake)).detach()
        per = (torch.sqrt((x - target) ** 2 + c**2) - c) / bcast(omega + eps, x)
        return torch.nan_to_num(per).mean()
    raise ValueError(f"metric: {metric!r} not in ['mse', 'pseudo_huber']")


def fake_score_loss(kind, pred, target, sigma=None, sigma_data=0.5, snr=None, gamma=5.0, weight=None):
    """Denoising loss of the fake score on detached generator samples; `weight`: optional per-sample weight
    (TDM's importance weights).

    edm:     mean_b lambda(sigma) * mean |D(x+sigma eps) - x|^2, lambda = sigma^-2 + sigma_data^-2 (EDM Eq. 8;
             DMD2 official code, EDM guidance)
    eps_mse: mean |eps_hat - eps|^2 (DMD2 official code, SD/SDXL guidance)
    x0_snr:  mean_b mean_CHW (mu - x0)^2 * min(SNR, gamma) * w (TDM official code)
    """
    per = _mean_chw((pred.float() - target.float()) ** 2)
    if weight is not None:
        per = per * weight.float()
    if kind == "edm":
        return (edm_loss_weight(sigma.float(), sigma_data) * per).mean()
    if kind == "eps_mse":
        return per.mean()
    if kind == "x0_snr":
        return (per * snr.float().clamp_max(gamma)).mean()
    raise ValueError(f"kind: {kind!r} not in ['edm', 'eps_mse', 'x0_snr']")


def gan_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating discriminator loss softplus(D(fake)) + softplus(-D(real)) (DMD2 Eq. 4)."""
    return F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()


def gan_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss softplus(-D(fake)) (DMD2 Eq. 4)."""
    return F.softplus(-logits_fake).mean()


def approx_r1(head_fn, x_real, alpha=0.1, generator=None):
    """Approximate R1 ||D(x) - D(x + alpha n)||^2 (f-distill); head_fn maps inputs to logits."""
    n = torch.randn(x_real.shape, generator=generator).to(x_real)
    return ((head_fn(x_real) - head_fn(x_real + alpha * n)) ** 2).mean()


class ConvGANHead(nn.Module):
    """DMD2 head (App. F.1): {4x4 conv s2, GroupNorm(32), SiLU} until 4x4, then 4x4 conv s4, GN, SiLU, 1x1 conv."""

    def __init__(self, channels: int, resolution: int, groups: int = 32):
        super().__init__()
        if resolution < 4 or resolution & (resolution - 1):
            raise ValueError(f"resolution: {resolution} must be a power of two >= 4")
        g = min(groups, channels)
        layers: list[nn.Module] = []
        r = resolution
        while r > 4:
            layers += [nn.Conv2d(channels, channels, 4, 2, 1), nn.GroupNorm(g, channels), nn.SiLU()]
            r //= 2
        layers += [nn.Conv2d(channels, channels, 4, 4, 0), nn.GroupNorm(g, channels), nn.SiLU()]
        layers += [nn.Conv2d(channels, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net(feats.float()).flatten(1).mean(1)


class MLPGANHead(nn.Module):
    """Toy analogue of the DMD2 head: an MLP on the fake network's last hidden layer."""

    def __init__(self, dim: int, width: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, width), nn.SiLU(), nn.Linear(width, 1))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net(feats.float()).squeeze(1)


def gen_turn(step: int, ratio: int) -> bool:
    """Two time-scale update rule: generator updates on step % ratio == 0, critic every step (DMD2 App. C)."""
    return step % ratio == 0
