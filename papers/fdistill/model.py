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

import torch
from torch import nn

from common.diffusion.denoisers import CondDenoiser, MLPDenoiser, Prediction, edm_precond_coeffs, freeze
from common.diffusion.losses import ConvGANHead, MLPGANHead
from common.diffusion.schedules import EDMSchedule
from common.diffusion.tasks import Setup, regress_onto_teacher, toy_mixtures
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


def toy_mixture(cfg):
    """The true mixture of the shared toy (ring, grid or explicit means; common.diffusion.tasks.toy_mixtures)."""
    return toy_mixtures(cfg)[0]


def build_toy(cfg) -> Setup:
    """The f-distill toy: the shared toy set-up (exact teacher, fake score regressed onto it) with the generator
    fitted to one mode and the discriminator on the noised input."""
    data = toy_mixture(cfg)
    sd = cfg.sigma_data or float(data.sample(65536, torch.Generator().manual_seed(1234)).std(0).mean())
    schedule = EDMSchedule(cfg.sigma_min, cfg.sigma_max, cfg.rho, cfg.num_levels, sd)
    teacher = freeze(AnalyticTeacher(data))
    torch.manual_seed(cfg.seed)
    fake = MLPDenoiser(2, cfg.width, cfg.depth, sd)
    regress_onto_teacher(fake, teacher, data, schedule, cfg.fake_init_steps, cfg.global_batch, cfg.seed)
    fake.zero_grad(set_to_none=True)  # no leftover gradient of the fit reaches the first critic step
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
        schedule,
        lambda n, g: (data.sample(n, g), None),
        lambda n, g: None,
        (2,),
        [schedule.max_index()],
        extra={"data": data, "init_fit_mse": fit_loss, "gan_features": features},
    )


def _groups(channels: int) -> int:
    return next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)


@torch.no_grad()
def tap_shapes(net, S, taps) -> dict:
    """Shapes of the feature maps `net` records at `taps` for one example input."""
    g = torch.Generator().manual_seed(0)
    x = torch.zeros((2, *S.noise_shape))
    t = S.schedule.net_time(torch.full((2,), S.schedule.max_index() // 2))
    p = net(x, t, S.sample_cond(2, g), taps=taps, pred=True, stop_after_taps=True)
    return {k: tuple(v.shape[1:]) for k, v in p.features.items()}


def discriminator(cfg, S) -> tuple[nn.Module | None, nn.Module]:
    """(feature network, head) of the discriminator on image tasks: conv heads on the frozen teacher's taps
    (FastGen) or on the fake score's (DMD2), one per tap, logits averaged (Table 5: several resolutions)."""
    # the teacher sees the conditional branch of a guided {"cond", "uncond"} conditioning, as the fake score does
    net = CondDenoiser(S.teacher) if cfg.disc_features == "teacher" else S.fake
    heads = {}
    for tap, (c, h, _) in tap_shapes(net, S, cfg.taps).items():
        heads[tap] = ConvGANHead(c, h, groups=_groups(c))
    head = next(iter(heads.values())) if len(heads) == 1 else MultiHead(heads)
    return (net if cfg.disc_features == "teacher" else None), head


def build(cfg, progress=None) -> Setup:
    """toy2d: `build_toy`; digits and the full-scale tasks: the shared builders with f-distill's discriminator."""
    if cfg.task == "toy2d":
        return build_toy(cfg)
    from common.diffusion.tasks import build as build_task

    S = build_task(cfg, progress)
    S.extra["gan_features"], S.head = discriminator(cfg, S)
    return S
