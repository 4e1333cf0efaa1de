"""f-divergence weighting of the distribution-matching gradient (Xu, Nie, Vahdat 2025, "One-step Diffusion Models
with f-Divergence Distribution Matching", arXiv:2502.15681).

For D_f(p || q) = E_q[f(p/q)] at every noise level, the generator gradient is DMD's score difference scaled per
sample by h(r) = r^2 f''(r) of the density ratio r = p_t / q_t (paper Eq. 5 / Table 1). Reverse KL gives h = 1,
i.e. DMD / DMD2. The ratio is read from the GAN discriminator: its optimal logit is log p_t / q_t (paper §4.2), so
r = exp(logit). Before weighting, r is clamped and normalised per noise level, and h is normalised over the batch
(paper §4.3, "two-stage normalisation"); the clamps, the 10 equal-width noise bins and the EMA of the per-bin mean
follow NVlabs FastGen's f-distill (`fastgen/methods/distribution_matching/f_distill.py`), each a config option.

Left out: the paper's tail-weight analysis (App. Table 6), FastGen's extra Neyman chi^2 weighting.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

# paper Table 1: key -> (name, mode-seeking tendency)
DIVERGENCES = {
    "rkl": "reverse KL (= DMD2)",
    "sf": "softened reverse KL",
    "js": "Jensen-Shannon",
    "sh": "squared Hellinger",
    "kl": "forward KL",
    "jf": "Jeffreys",
}


def f_generator(name: str, r: torch.Tensor) -> torch.Tensor:
    """The convex generator f(r) of each divergence (paper Table 1), r = p / q."""
    if name == "rkl":
        return -torch.log(r)
    if name == "sf":
        return (r + 1) * torch.log(0.5 + 0.5 / r)
    if name == "js":
        return r * torch.log(r) - (r + 1) * torch.log((r + 1) / 2)
    if name == "sh":
        return 1 - torch.sqrt(r)
    if name == "kl":
        return r * torch.log(r)
    if name == "jf":
        return (r - 1) * torch.log(r)
    raise ValueError(f"divergence: {name!r} not in {sorted(DIVERGENCES)}")


def h_weight(name: str, r: torch.Tensor) -> torch.Tensor:
    """h(r) = r^2 f''(r) in closed form (paper Table 1)."""
    if name == "rkl":
        return torch.ones_like(r)
    if name == "sf":
        return 1 / (r + 1)
    if name == "js":
        return r / (r + 1)
    if name == "sh":
        return 0.25 * torch.sqrt(r)
    if name == "kl":
        return r
    if name == "jf":
        return r + 1
    raise ValueError(f"divergence: {name!r} not in {sorted(DIVERGENCES)}")


def _all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


class FWeighting(nn.Module):
    """logit of log p_t/q_t and noise level t -> per-sample weight h (detached), as in paper §4.3.

    Pipeline: clamp the logit to +-logit_clamp; r = exp(logit); clamp r to [ratio_min, ratio_max]; stage 1: divide r
    by the running mean of r in its noise bin (num_bins equal-width bins of t over [t_min, t_max], or of log t with
    bin_space="log"); h = h_f(r); stage 2: divide h by its batch mean (+eps). Batch statistics are summed over all
    processes. The per-bin means are a persistent buffer (checkpointed); they start at 1, update only when
    `update=True` (generator steps), and only in bins that hold samples: m <- rate * m + (1 - rate) * batch mean
    (rate 0 = the current batch mean). For reverse KL both normalisations are skipped, so h is exactly 1.
    """

    def __init__(
        self,
        divergence: str = "rkl",
        t_min: float = 0.002,
        t_max: float = 80.0,
        num_bins: int = 10,
        bin_space: str = "linear",
        logit_clamp: float = 10.0,
        ratio_min: float = 0.1,
        ratio_max: float = 20.0,
        ratio_ema_rate: float = 0.0,
        normalize_ratio: bool = True,
        normalize_h: bool = True,
        eps: float = 1e-6,
    ):
        super().__init__()
        if divergence not in DIVERGENCES:
            raise ValueError(f"divergence: {divergence!r} not in {sorted(DIVERGENCES)}")
        if bin_space not in ("linear", "log"):
            raise ValueError(f"bin_space: {bin_space!r} not in ['linear', 'log']")
        if not (t_min < t_max and (t_min > 0 or bin_space == "linear")):
            raise ValueError(f"t range: need t_min < t_max (and t_min > 0 for log bins), got [{t_min}, {t_max}]")
        self.divergence, self.num_bins, self.bin_space = divergence, num_bins, bin_space
        self.t_min, self.t_max = t_min, t_max
        self.logit_clamp, self.ratio_min, self.ratio_max = logit_clamp, ratio_min, ratio_max
        self.rate, self.eps = ratio_ema_rate, eps
        self.normalize_ratio, self.normalize_h = normalize_ratio, normalize_h
        self.register_buffer("bin_mean", torch.ones(num_bins, dtype=torch.float64))

    def bins(self, t: torch.Tensor) -> torch.Tensor:
        t = t.detach().to(torch.float64).reshape(-1)
        lo, hi = self.t_min, self.t_max
        if self.bin_space == "log":
            t, lo, hi = t.clamp_min(1e-12).log(), math.log(lo), math.log(hi)
        return ((t - lo) / (hi - lo) * self.num_bins).floor().long().clamp(0, self.num_bins - 1)

    def ratio(self, logit: torch.Tensor) -> torch.Tensor:
        """Clamped density ratio r = exp(clamp(logit)), detached."""
        r = logit.detach().to(torch.float64).reshape(-1).clamp(-self.logit_clamp, self.logit_clamp).exp()
        return r.clamp(self.ratio_min, self.ratio_max)

    @torch.no_grad()
    def forward(self, logit: torch.Tensor, t: torch.Tensor, update: bool = True, divergence: str | None = None):
        """Returns (h, stats): h of shape (batch,), float32, with a batch mean of 1 (exactly 1 for reverse KL)."""
        div = divergence or self.divergence
        n = logit.numel()
        if div == "rkl":
            return torch.ones(n, device=logit.device), {}
        r = self.ratio(logit)
        stats = {"log_r_mean": r.log().mean().item()}
        if self.normalize_ratio:
            b = self.bins(t).to(r.device)
            sums = torch.zeros(self.num_bins, dtype=torch.float64, device=r.device).index_add_(0, b, r)
            cnts = torch.zeros(self.num_bins, dtype=torch.float64, device=r.device).index_add_(0, b, torch.ones_like(r))
            tot = _all_reduce_sum(torch.stack([sums, cnts]))
            seen = tot[1] > 0
            batch_mean = torch.where(seen, tot[0] / tot[1].clamp_min(1), self.bin_mean.to(r.device))
            if update:
                new = self.rate * self.bin_mean.to(r.device) + (1 - self.rate) * batch_mean
                self.bin_mean.copy_(torch.where(seen, new, self.bin_mean.to(r.device)).to(self.bin_mean))
                norm = self.bin_mean.to(r.device)
            else:
                norm = batch_mean if self.rate == 0 else self.bin_mean.to(r.device)
            r = r / norm[b]
        h = h_weight(div, r)
        tot = _all_reduce_sum(torch.stack([h.sum(), (h * h).sum(), torch.tensor(float(n), dtype=h.dtype)]))
        mean = tot[0] / tot[2]
        stats["h_norm_var"] = (tot[1] / tot[2] / mean.clamp_min(1e-30) ** 2 - 1).item()  # Var(h) / E[h]^2 (Fig. 4)
        if self.normalize_h:
            h = h / (mean + self.eps)
        stats["h_max"] = h.max().item()
        return h.float(), stats
