"""What f-distill's toy adds to the shared toy set-up: a discriminator on the noised input, and a skewed start.

The analytic mixture teacher has no features, so the toy discriminator reads the noised sample itself: a frozen,
parameter-free feature map (EDM input scaling c_in(sigma) x and a Fourier embedding of c_noise = ln(sigma)/4) under a
trainable MLP head -- the 2-D analogue of FastGen's trainable head on frozen-teacher features. The initial generator
is fitted to a single mode of the mixture (x = mu_k + s_k z), the skewed q from which the paper's Fig. 8 contrasts
the divergences; distillation must then move mass to the other modes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from common.diffusion.denoisers import Prediction, edm_precond_coeffs


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
    return float(loss)
