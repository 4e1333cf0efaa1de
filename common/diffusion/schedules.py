"""Noise schedules with one interface (EDM/VE Karras grid; VP/DDPM betas) and the conversions.

Concepts from EDM (Karras et al. 2022, arXiv:2206.00364) and DDPM (Ho et al. 2020). A schedule maps an
integer *index* on its discrete grid to (alpha, sigma) with x_t = alpha * x0 + sigma * eps, and to the
value the network is conditioned on (`net_time`: sigma for EDM, the DDPM timestep for VP). The EDM grid
is stored ascending (index 0 = sigma_min, index N-1 = sigma_max) as in the DMD2 code.
Left out: flow-matching schedules (only the x_t formula is given in `flow_interpolate`).
"""

from __future__ import annotations

import torch

__all__ = [
    "EDMSchedule",
    "VPSchedule",
    "karras_sigmas",
    "x0_from_eps",
    "eps_from_x0",
    "v_from_x0_eps",
    "score_from_x0",
    "snr",
    "forward_transition",
    "flow_interpolate",
    "bcast",
]


def bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample (B,) tensor so that it broadcasts against x (B, ...)."""
    v = torch.as_tensor(v, device=x.device)
    if v.ndim == 0:
        return v.to(x.dtype)
    return v.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Descending Karras grid of n levels (EDM Eq. 5), sigma_max first, sigma_min last."""
    if n == 1:
        return torch.tensor([sigma_max], dtype=torch.float64)
    i = torch.arange(n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + i / (n - 1) * (lo - hi)) ** rho


class _IndexedSchedule:
    """What both schedules share: a grid of num_steps noise levels addressed by integer index, with
    ``alpha_sigma(idx)`` defined by the subclass; x_t = alpha * x0 + sigma * eps."""

    num_steps: int

    def alpha_sigma(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def sample_index(self, n, lo_frac=0.0, hi_frac=1.0, generator=None, device="cpu") -> torch.Tensor:
        """Integer index uniform in [lo_frac*N, hi_frac*N] capped at N-1, both ends included, as the DMD2 code's
        `randint(min_step, min(max_step + 1, N))` with min_step = int(0.02 N), max_step = int(0.98 N): the DM loss
        draws from [20, 980] of 1000, the critic from [0, 999]."""
        lo = int(round(lo_frac * self.num_steps))
        hi = max(lo + 1, min(self.num_steps, int(round(hi_frac * self.num_steps)) + 1))
        return torch.randint(lo, hi, (n,), generator=generator).to(device)

    def add_noise(self, x0, idx, noise):
        a, s = self.alpha_sigma(idx)
        return bcast(a, x0) * x0 + bcast(s, x0) * noise

    def max_index(self) -> int:
        return self.num_steps - 1


class EDMSchedule(_IndexedSchedule):
    """VE schedule x_sigma = x0 + sigma * eps on the Karras grid (ascending storage)."""

    kind = "edm"

    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        num_steps: int = 1000,
        sigma_data: float = 0.5,
    ):
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho
        self.num_steps, self.sigma_data = num_steps, sigma_data
        self.sigmas = karras_sigmas(num_steps, sigma_min, sigma_max, rho).flip(0)  # ascending

    def alpha_sigma(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.sigmas.to(idx.device)[idx.long()].float()
        return torch.ones_like(s), s

    def net_time(self, idx: torch.Tensor) -> torch.Tensor:
        return self.sigmas.to(idx.device)[idx.long()].float()


class VPSchedule(_IndexedSchedule):
    """Discrete VP/DDPM schedule: abar_t = prod(1 - beta_s), alpha = sqrt(abar), sigma = sqrt(1 - abar)."""

    kind = "vp"

    def __init__(
        self,
        beta_schedule: str = "scaled_linear",
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        num_steps: int = 1000,
        alphas_cumprod: torch.Tensor | None = None,
        sigma_data: float = 0.5,
    ):
        self.sigma_data = sigma_data  # for EDM-style loss weights at the equivalent VE sigma = sigma / alpha
        if alphas_cumprod is None:
            if beta_schedule == "linear":  # DDPM / PixArt
                betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
            elif beta_schedule == "scaled_linear":  # SD1.5 / SDXL: linear in sqrt(beta)
                betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2
            else:
                raise ValueError(f"beta_schedule: {beta_schedule!r} not in ['linear', 'scaled_linear']")
            alphas_cumprod = torch.cumprod(1.0 - betas, 0)
        self.alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.num_steps = len(self.alphas_cumprod)

    @classmethod
    def from_diffusers(cls, scheduler) -> VPSchedule:
        """Read the betas from a diffusers scheduler (e.g. the model's DDIMScheduler config)."""
        return cls(alphas_cumprod=scheduler.alphas_cumprod.double())

    def alpha_sigma(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ab = self.alphas_cumprod.to(idx.device)[idx.long()]
        return ab.sqrt().float(), (1 - ab).sqrt().float()

    def net_time(self, idx: torch.Tensor) -> torch.Tensor:
        return idx.long()


# --- conversions (EDM App. B; DDPM Eq. 4); x0 from eps in float64 as the DMD2 code does (main/utils.py) ---


def x0_from_eps(x_t, eps, alpha, sigma):
    dt = x_t.dtype
    a, s = bcast(alpha, x_t).double(), bcast(sigma, x_t).double()
    return ((x_t.double() - s * eps.double()) / a).to(dt)


def eps_from_x0(x_t, x0, alpha, sigma):
    dt = x_t.dtype
    a, s = bcast(alpha, x_t).double(), bcast(sigma, x_t).double()
    return ((x_t.double() - a * x0.double()) / s).to(dt)


def v_from_x0_eps(x0, eps, alpha, sigma):
    return bcast(alpha, x0) * eps - bcast(sigma, x0) * x0


def score_from_x0(x_t, x0, alpha, sigma):
    """Tweedie: grad log p_t(x_t) = (alpha * x0_hat - x_t) / sigma^2."""
    return (bcast(alpha, x_t) * x0 - x_t) / bcast(sigma, x_t) ** 2


def snr(alpha, sigma):
    return alpha**2 / sigma**2


def forward_transition(x_s, alpha_s, sigma_s, alpha_tau, sigma_tau, noise):
    """x_tau from x_s for s < tau: x_tau = (a_tau/a_s) x_s + beta n, beta^2 = s_tau^2 - (a_tau s_s / a_s)^2."""
    r = bcast(alpha_tau / alpha_s, x_s)
    beta2 = bcast(sigma_tau**2 - (alpha_tau * sigma_s / alpha_s) ** 2, x_s).clamp_min(0)
    return r * x_s + beta2.sqrt() * noise


def flow_interpolate(x0, eps, t):
    """Flow matching x_t = (1 - t) x0 + t eps (velocity eps - x0)."""
    t = bcast(t, x0)
    return (1 - t) * x0 + t * eps


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """EDM lambda(sigma) = sigma^-2 + sigma_data^-2 (EDM Table 1)."""
    return sigma**-2 + sigma_data**-2


def lognormal_sigma(n, p_mean=-1.2, p_std=1.2, generator=None, device="cpu"):
    """EDM training distribution ln sigma ~ N(P_mean, P_std^2) (EDM Table 1)."""
    return (torch.randn(n, generator=generator) * p_std + p_mean).exp().to(device)
