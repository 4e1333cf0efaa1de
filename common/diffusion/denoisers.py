"""Denoisers behind one API: `net(x_t, t, cond=None, return_features=False) -> x0` (or (x0, feats)).

Concepts: EDM preconditioning (Karras et al. 2022, Eq. 7 / Table 1), classifier-free guidance (Ho & Salimans
2022), Tweedie x0 from an eps-prediction network. `t` is the schedule's `net_time`: sigma for EDM-style
denoisers, the DDPM timestep for VP (eps) denoisers. Backbones: MLP (toy 2-D), diffusers UNet2DModel
(digits / ImageNet-64 stand-in), diffusers UNet2DConditionModel (SD1.5 / SDXL). Features for GAN heads
are taken from the backbone's bottleneck (MLP last hidden layer; UNet mid-block through a forward hook).
Left out: the NVlabs EDM network port (see papers' READMEs), transformer backbones (PixArt).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from common.diffusion.schedules import VPSchedule, bcast, x0_from_eps

__all__ = [
    "edm_precond_coeffs",
    "MLPDenoiser",
    "UNetDenoiser",
    "EpsUNetDenoiser",
    "cfg",
    "freeze",
]


def edm_precond_coeffs(sigma: torch.Tensor, sigma_data: float):
    """EDM Eq. 7: c_skip, c_out, c_in, c_noise."""
    s2, d2 = sigma**2, sigma_data**2
    c_skip = d2 / (s2 + d2)
    c_out = sigma * sigma_data / (s2 + d2).sqrt()
    c_in = 1 / (s2 + d2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def cfg(mu_uncond: torch.Tensor, mu_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: mu_u + s (mu_c - mu_u); scale 1 returns mu_c."""
    if scale == 1.0:
        return mu_cond
    return mu_uncond + scale * (mu_cond - mu_uncond)


def freeze(module: nn.Module) -> nn.Module:
    """Frozen teacher: no gradients, eval mode."""
    module.requires_grad_(False)
    return module.eval()


class MLPDenoiser(nn.Module):
    """EDM-preconditioned MLP (x, c_noise) -> x0 for low-dimensional data; features = last hidden layer."""

    def __init__(self, dim: int = 2, width: int = 128, depth: int = 3, sigma_data: float = 1.0, emb: int = 16):
        super().__init__()
        self.dim, self.width, self.depth, self.sigma_data, self.emb = dim, width, depth, sigma_data, emb
        self.feature_dim = width
        layers: list[nn.Module] = []
        d = dim + 2 * emb
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.SiLU()]
            d = width
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(width, dim)
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(100.0), emb)), persistent=False)

    def config(self) -> dict:
        return {
            "dim": self.dim,
            "width": self.width,
            "depth": self.depth,
            "sigma_data": self.sigma_data,
            "emb": self.emb,
        }

    def forward(self, x, sigma, cond=None, return_features=False):
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = edm_precond_coeffs(sigma, self.sigma_data)
        ang = c_noise[:, None] * self.freqs[None]
        h = self.body(torch.cat([bcast(c_in, x) * x, ang.sin(), ang.cos()], 1))
        x0 = bcast(c_skip, x) * x + bcast(c_out, x) * self.out(h)
        return (x0, h) if return_features else x0


class _MidBlockHook:
    """Captures the output of a UNet's mid block (DMD2 patches the forward; a hook is cleaner)."""

    def __init__(self, unet: nn.Module):
        self.feats = None
        unet.mid_block.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.feats = output[0] if isinstance(output, tuple) else output


class UNetDenoiser(nn.Module):
    """EDM-preconditioned diffusers UNet2DModel (conditioned on c_noise = ln(sigma)/4; optional class labels)."""

    def __init__(self, unet: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        self.unet, self.sigma_data = unet, sigma_data
        self._hook = _MidBlockHook(unet)

    @property
    def feature_channels(self) -> int:
        return self.unet.config.block_out_channels[-1]

    def forward(self, x, sigma, cond=None, return_features=False):
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = edm_precond_coeffs(sigma, self.sigma_data)
        x_in = (bcast(c_in, x) * x).to(self.unet.dtype)
        f = self.unet(x_in, c_noise.to(self.unet.dtype), class_labels=cond).sample.to(x.dtype)
        x0 = bcast(c_skip, x) * x + bcast(c_out, x) * f
        feats, self._hook.feats = self._hook.feats, None  # drop the reference (deepcopy-safe, no stale graph)
        return (x0, feats) if return_features else x0


class EpsUNetDenoiser(nn.Module):
    """diffusers UNet2DConditionModel predicting eps under a VP schedule; returns x0 (float64 conversion).

    `cond` is a dict with `encoder_hidden_states` and, for SDXL, `added_cond_kwargs` (text_embeds, time_ids).
    """

    def __init__(self, unet: nn.Module, schedule: VPSchedule):
        super().__init__()
        self.unet, self.schedule = unet, schedule
        self._hook = _MidBlockHook(unet)

    @property
    def feature_channels(self) -> int:
        return self.unet.config.block_out_channels[-1]

    def eps(self, x, t, cond):
        cond = cond or {}
        t = torch.as_tensor(t, device=x.device).long().expand(x.shape[0])
        out = self.unet(
            x.to(self.unet.dtype),
            t,
            encoder_hidden_states=cond["encoder_hidden_states"].to(self.unet.dtype),
            added_cond_kwargs=cond.get("added_cond_kwargs"),
        ).sample
        return out[:, : x.shape[1]].to(x.dtype)  # learned-variance models: first half of channels

    def forward(self, x, t, cond=None, return_features=False, return_eps=False):
        t = torch.as_tensor(t, device=x.device).long().expand(x.shape[0])
        eps = self.eps(x, t, cond)
        if return_eps:
            return eps
        a, s = self.schedule.alpha_sigma(t)
        x0 = x0_from_eps(x, eps, a, s)
        feats, self._hook.feats = self._hook.feats, None  # drop the reference (deepcopy-safe, no stale graph)
        return (x0, feats) if return_features else x0
