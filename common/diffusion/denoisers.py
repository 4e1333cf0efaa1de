"""Denoisers behind one API: `net(x_t, t, cond)` -> x0, and `net(x_t, t, cond, pred=True, taps=(...))` ->
`Prediction(x0, eps, features)` from one forward pass.

Concepts: EDM preconditioning (Karras et al. 2022, Eq. 7 / Table 1), classifier-free guidance (Ho & Salimans
2022), Tweedie x0 from an eps-prediction network. `t` is the schedule's `net_time`: sigma for EDM-style
denoisers, the DDPM timestep for VP (eps) denoisers. Backbones: MLP (toy 2-D), diffusers UNet2DModel
(digits / ImageNet-64 stand-in), UNet2DConditionModel (SD1.5 / SDXL) and the PixArt transformer
(`PixArtTransformer2DModel` / `Transformer2DModel`, learned variance: the first half of the output channels is eps,
as the TDM code does).

Feature taps (for GAN heads): named forward hooks, recorded only for the names a call asks for. UNets: `mid` (mid
block), `down{i}` / `up{i}` (output of down / up block i, one per resolution); transformers: `block{i}` (tokens
reshaped to a (C, H, W) map) and `mid` (the middle block); MLP: `mid` (last hidden layer). With
`stop_after_taps=True` the forward stops once every asked tap is recorded (GAN logits need nothing after it);
x0 and eps are then None. DMD2's code patches the UNet forward to return the bottleneck; hooks do the same without
touching diffusers. Left out: the NVlabs EDM network port.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from common.diffusion.schedules import VPSchedule, bcast, x0_from_eps

__all__ = [
    "Prediction",
    "Denoiser",
    "FeatureTaps",
    "edm_precond_coeffs",
    "MLPDenoiser",
    "UNetDenoiser",
    "EpsDenoiser",
    "EpsUNetDenoiser",
    "CondDenoiser",
    "VPDenoiser",
    "cfg",
    "freeze",
]


class Prediction(NamedTuple):
    x0: torch.Tensor | None
    eps: torch.Tensor | None
    features: dict[str, torch.Tensor]


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


class _StopForward(Exception):
    """Raised by a tap once every asked feature is recorded (the rest of the forward is not needed)."""


def _tokens_to_map(f: torch.Tensor) -> torch.Tensor:
    """Transformer tokens (B, N, C) -> (B, C, H, W) with H = W = sqrt(N)."""
    if f.ndim != 3:
        return f
    b, n, c = f.shape
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"feature tap: {n} tokens do not form a square map")
    return f.transpose(1, 2).reshape(b, c, side, side)


class _Tap:
    """One forward hook; a small object (not a closure) so that deepcopy of the network copies it with its owner."""

    def __init__(self, owner: FeatureTaps, name: str):
        self.owner, self.name = owner, name

    def __call__(self, module, inputs, output):
        self.owner.record(self.name, output)


class FeatureTaps:
    """Named forward hooks on a backbone's blocks; records the asked names during one forward."""

    def __init__(self, modules: dict[str, nn.Module], tokens: bool = False):
        self.names = tuple(modules)
        self.tokens = tokens
        self.wanted: tuple[str, ...] = ()
        self.stop = False
        self.feats: dict[str, torch.Tensor] = {}
        for name, m in modules.items():
            m.register_forward_hook(_Tap(self, name))

    def begin(self, names, stop: bool = False) -> None:
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise KeyError(f"feature taps {unknown} unknown; this backbone has {list(self.names)}")
        self.wanted, self.stop, self.feats = tuple(names), stop, {}

    def record(self, name: str, output) -> None:
        if name not in self.wanted:
            return
        f = output[0] if isinstance(output, tuple) else output
        self.feats[name] = _tokens_to_map(f) if self.tokens else f
        if self.stop and len(self.feats) == len(self.wanted):
            raise _StopForward

    def end(self) -> dict[str, torch.Tensor]:
        feats, self.feats, self.wanted = self.feats, {}, ()  # drop references (no stale graph kept alive)
        return feats


class Denoiser(nn.Module):
    """Base of every network denoiser. Subclasses implement `_predict(x, t, cond, want_eps) -> (x0, eps)` and
    set `self.taps` (a FeatureTaps or None). Backward-compatible call: `return_features=True` -> (x0, feats["mid"])."""

    taps: FeatureTaps | None = None

    def _predict(self, x, t, cond, want_eps: bool):
        raise NotImplementedError

    def forward(self, x, t, cond=None, return_features=False, taps=(), pred=False, stop_after_taps=False):
        names = tuple(taps) or (("mid",) if return_features else ())
        if names and self.taps is None:
            raise KeyError(f"{type(self).__name__} has no feature taps")
        if names:
            self.taps.begin(names, stop_after_taps)
        try:
            x0, eps = self._predict(x, t, cond, want_eps=pred)
        except _StopForward:
            x0 = eps = None
        finally:
            feats = self.taps.end() if names else {}
        if pred:
            return Prediction(x0, eps, feats)
        return (x0, feats["mid"]) if return_features else x0

    @torch.no_grad()
    def tap_shapes(self, example_x, t, cond=None) -> dict[str, tuple[int, ...]]:
        """(C, H, W) of every tap for an input like `example_x` (to size GAN heads)."""
        p = self(example_x, t, cond, taps=self.taps.names, pred=True)
        return {k: tuple(v.shape[1:]) for k, v in p.features.items()}


def _edm_eps(x, x0, sigma):
    return (x - x0) / bcast(sigma, x)  # VE: x = x0 + sigma * eps


class MLPDenoiser(Denoiser):
    """EDM-preconditioned MLP (x, c_noise) -> x0 for low-dimensional data; tap `mid` = last hidden layer.
    With num_classes > 0 a learned label embedding is added to the noise features; label -1 (or any negative
    label) is the null class of classifier-free guidance."""

    def __init__(
        self, dim: int = 2, width: int = 128, depth: int = 3, sigma_data: float = 1.0, emb: int = 16, num_classes=0
    ):
        super().__init__()
        self.dim, self.width, self.depth, self.sigma_data, self.emb = dim, width, depth, sigma_data, emb
        self.num_classes = num_classes
        self.feature_dim = width
        layers: list[nn.Module] = []
        d = dim + 2 * emb
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.SiLU()]
            d = width
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(width, dim)
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(100.0), emb)), persistent=False)
        self.taps = FeatureTaps({"mid": self.body})
        if num_classes:
            self.label_emb = nn.Embedding(num_classes + 1, 2 * emb)  # the last row is the null class

    def config(self) -> dict:
        out = {"dim": self.dim, "width": self.width, "depth": self.depth, "sigma_data": self.sigma_data}
        return {**out, "emb": self.emb, **({"num_classes": self.num_classes} if self.num_classes else {})}

    def _predict(self, x, sigma, cond, want_eps):
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = edm_precond_coeffs(sigma, self.sigma_data)
        ang = c_noise[:, None] * self.freqs[None]
        feats = torch.cat([ang.sin(), ang.cos()], 1)
        if isinstance(cond, dict):  # {"cond", "uncond"} of a guided target: the student and fake take "cond"
            cond = cond["cond"]
        if self.num_classes and cond is not None:
            labels = torch.as_tensor(cond, device=x.device).long()
            feats = feats + self.label_emb(torch.where(labels < 0, self.num_classes, labels)).to(x.dtype)
        h = self.body(torch.cat([bcast(c_in, x) * x, feats], 1))
        x0 = bcast(c_skip, x) * x + bcast(c_out, x) * self.out(h)
        return x0, (_edm_eps(x, x0, sigma) if want_eps else None)


def _unet_taps(unet: nn.Module) -> FeatureTaps:
    mods = {"mid": unet.mid_block}
    mods.update({f"down{i}": b for i, b in enumerate(unet.down_blocks)})
    mods.update({f"up{i}": b for i, b in enumerate(unet.up_blocks)})
    return FeatureTaps(mods)


def _transformer_taps(net: nn.Module) -> FeatureTaps:
    blocks = net.transformer_blocks
    mods = {f"block{i}": b for i, b in enumerate(blocks)}
    mods["mid"] = blocks[len(blocks) // 2]
    return FeatureTaps(mods, tokens=True)


class UNetDenoiser(Denoiser):
    """EDM-preconditioned diffusers UNet2DModel (conditioned on c_noise = ln(sigma)/4; optional class labels)."""

    def __init__(self, unet: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        self.unet, self.sigma_data = unet, sigma_data
        self.taps = _unet_taps(unet)

    @property
    def feature_channels(self) -> int:
        return self.unet.config.block_out_channels[-1]

    def _predict(self, x, sigma, cond, want_eps):
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = edm_precond_coeffs(sigma, self.sigma_data)
        x_in = (bcast(c_in, x) * x).to(self.unet.dtype)
        f = self.unet(x_in, c_noise.to(self.unet.dtype), class_labels=cond).sample.to(x.dtype)
        x0 = bcast(c_skip, x) * x + bcast(c_out, x) * f
        return x0, (_edm_eps(x, x0, sigma) if want_eps else None)


class EpsDenoiser(Denoiser):
    """An eps-prediction diffusers backbone under a VP schedule: UNet2DConditionModel (SD1.5 / SDXL) or the PixArt
    transformer. Returns x0 by the float64 conversion (DMD2 code). `cond` is a dict with `encoder_hidden_states` and
    optionally `added_cond_kwargs` (SDXL: text_embeds, time_ids) and `encoder_attention_mask` (PixArt's T5 mask).
    `self.unet` holds the backbone whatever its kind."""

    def __init__(self, unet: nn.Module, schedule: VPSchedule):
        super().__init__()
        self.unet, self.schedule = unet, schedule
        self.transformer = hasattr(unet, "transformer_blocks")
        self.taps = _transformer_taps(unet) if self.transformer else _unet_taps(unet)

    @property
    def feature_channels(self) -> int:
        if self.transformer:
            return (
                self.unet.inner_dim
                if hasattr(self.unet, "inner_dim")
                else self.unet.config.num_attention_heads * self.unet.config.attention_head_dim
            )
        return self.unet.config.block_out_channels[-1]

    def eps(self, x, t, cond):
        cond = cond or {}
        t = torch.as_tensor(t, device=x.device).long().expand(x.shape[0])
        kw = {"encoder_hidden_states": cond["encoder_hidden_states"].to(self.unet.dtype)}
        added = cond.get("added_cond_kwargs")
        if self.transformer:
            kw["added_cond_kwargs"] = added or {"resolution": None, "aspect_ratio": None}
            if cond.get("encoder_attention_mask") is not None:
                kw["encoder_attention_mask"] = cond["encoder_attention_mask"]
        else:
            kw["added_cond_kwargs"] = added
        out = self.unet(x.to(self.unet.dtype), timestep=t, **kw).sample
        return out[:, : x.shape[1]].to(x.dtype)  # learned-variance models: first half of channels

    def _predict(self, x, t, cond, want_eps):
        t = torch.as_tensor(t, device=x.device).long().expand(x.shape[0])
        eps = self.eps(x, t, cond)
        a, s = self.schedule.alpha_sigma(t)
        return x0_from_eps(x, eps, a, s), eps

    def forward(
        self, x, t, cond=None, return_features=False, taps=(), pred=False, stop_after_taps=False, return_eps=False
    ):
        if return_eps:
            return self.eps(x, torch.as_tensor(t, device=x.device).long().expand(x.shape[0]), cond)
        return super().forward(x, t, cond, return_features, taps, pred, stop_after_taps)


EpsUNetDenoiser = EpsDenoiser  # the name the SD code used


class VPDenoiser(nn.Module):
    """A VE (EDM) denoiser used under a VP schedule: x_t = alpha x0 + sigma eps is the VE problem at x_t / alpha
    with sigma / alpha, so D_vp(x_t, t) = D_ve(x_t / alpha, sigma / alpha); its eps is the VP eps. `t` is the grid
    index of `schedule`. Lets the toy MLPs serve VP methods (TDM) without a second architecture."""

    def __init__(self, net: nn.Module, schedule):
        super().__init__()
        self.net, self.schedule = net, schedule

    def forward(self, x, t, cond=None, *args, **kw):
        a, s = self.schedule.alpha_sigma(torch.as_tensor(t, device=x.device).long().expand(x.shape[0]))
        return self.net(x / bcast(a, x), s / a, cond, *args, **kw)


class CondDenoiser(nn.Module):
    """Student / fake score of a text-to-image model: only the conditional branch (DMD2: fake_guidance_scale = 1).

    Conditioning comes as {"cond": ..., "uncond": ...} (what the guided teacher needs); this passes on "cond"."""

    def __init__(self, denoiser: Denoiser):
        super().__init__()
        self.denoiser = denoiser

    @property
    def unet(self):
        return self.denoiser.unet

    @property
    def feature_channels(self) -> int:
        return self.denoiser.feature_channels

    def forward(self, x, t, cond=None, *args, **kw):
        c = cond["cond"] if isinstance(cond, dict) and "cond" in cond else cond
        return self.denoiser(x, t, c, *args, **kw)
