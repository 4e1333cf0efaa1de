"""TDM's student trajectory: K-step deterministic DDIM over non-overlapping noise segments (Luo et al. 2025, §3-4).

The student G is an eps-network under a VP schedule. Its K-step sampler starts from pure noise at
t_0 = total_steps - 1 and takes deterministic DDIM steps driven by its own eps (no fresh noise):
x0_hat = (x_t - sigma_t eps) / alpha_t, x_{t_{i+1}} = alpha_{t_{i+1}} x0_hat + sigma_{t_{i+1}} eps; the last step
returns x0_hat (t = 0). Step i owns the noise segment [t_{i+1}, t_i) (t_K = 0), so the segments do not overlap
and each matching level tau belongs to exactly one student step (paper Eq. 5; official demo `--use_separate`).

Per training sample we draw the step count K (TDM-unify, Eq. 8: uniform over the supported counts), the segment
i ~ U{0..K-1} and tau ~ U[max(tau_min, t_{i+1}), t_i - tau_gap) (official demo: 20 and 10). `rollout_points` runs
every trajectory without gradients (one batched call per step, only the samples still moving; the demo keeps the
same points); the shared distillation step makes step i with gradients, and `matching_sample` diffuses its result into the
segment.
Matching modes (each an ablation switch):
  trajectory  x_tau from the trajectory point x_{t_{i+1}} = alpha x0_hat + sigma eps_hat   (TDM)
  clean       x_tau = alpha_tau x0_hat + sigma_tau n, tau anywhere in [tau_min, total - tau_gap)   (paper App.:
              "matching clean samples")
  overlap     as trajectory, but tau ~ U[max(tau_min, t_{i+1}), total - tau_gap)   (the demo's alternative)

`StepConditioned` adds a learned embedding of K to a network's time embedding (TDM-unify; the paper does not
say how K enters the network: this is our design). Left out: the demo's `--use_randmid` regulariser.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from common.diffusion.schedules import bcast, eps_from_x0, forward_transition

__all__ = [
    "MATCH_MODES",
    "STEP_KEY",
    "with_k",
    "split_k",
    "WithoutK",
    "StepConditioned",
    "student_times",
    "segment_bounds",
    "sample_k",
    "sample_segments",
    "index_cond",
    "ddim_move",
    "rollout_points",
    "pick",
    "resample_tau",
    "matching_sample",
    "importance_weights",
    "student_sample",
]

MATCH_MODES = ("trajectory", "clean", "overlap")


def _time_of(total_steps: int, k: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """t_j of a K-step student: total - 1 - round(j * total / K); t_K = 0 (clamped to [0, total - 1])."""
    k, j = k.long(), j.long()
    t = total_steps - 1 - torch.round(j.double() * total_steps / k.double()).long()
    return torch.where(j >= k, torch.zeros_like(t), t).clamp(0, total_steps - 1)


def student_times(total_steps: int, k: int) -> list[int]:
    """Descending student timesteps [t_0, ..., t_{K-1}]; 900 steps, K = 4 -> [899, 674, 449, 224] (demo)."""
    if not 1 <= k <= total_steps:
        raise ValueError(f"k: {k} must lie in [1, {total_steps}]")
    j = torch.arange(k)
    return _time_of(total_steps, torch.full_like(j, k), j).tolist()


def segment_bounds(total_steps: int, k: torch.Tensor, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(t_start, t_end) = (t_i, t_{i+1}) of segment i of a K-step student (t_K = 0), per sample."""
    return _time_of(total_steps, k, i), _time_of(total_steps, k, i + 1)


@dataclass
class Segments:
    k: torch.Tensor  # (B,) step count of each sample's trajectory
    i: torch.Tensor  # (B,) segment (student step) index in [0, K)
    t_start: torch.Tensor  # (B,) t_i: where the differentiable step starts
    t_end: torch.Tensor  # (B,) t_{i+1}: the next trajectory point (0 after the last step)
    tau: torch.Tensor  # (B,) matching level


def sample_k(n: int, ks=(4,), generator: torch.Generator | None = None, device="cpu") -> torch.Tensor:
    """Per-sample step count K, uniform over ks (TDM-unify, Eq. 8; a single K for the plain K-step student)."""
    ks_t = torch.as_tensor(list(ks), dtype=torch.long)
    return ks_t[torch.randint(len(ks_t), (n,), generator=generator)].to(device)


def sample_segments(
    k: torch.Tensor,
    total_steps: int,
    mode: str = "trajectory",
    tau_min: int = 20,
    tau_gap: int = 10,
    generator: torch.Generator | None = None,
) -> Segments:
    """Per-sample segment i ~ U{0..K-1} and matching level tau for trajectories of K steps (module docstring)."""
    dev, k = k.device, k.long().cpu()
    i = (torch.rand(len(k), generator=generator, dtype=torch.float64) * k).long().clamp_max(k - 1)
    t_start, t_end = segment_bounds(total_steps, k, i)
    seg = Segments(*(v.to(dev) for v in (k, i, t_start, t_end, torch.zeros_like(k))))
    return resample_tau(seg, total_steps, mode, tau_min, tau_gap, generator)


def resample_tau(seg: Segments, total_steps: int, mode="trajectory", tau_min=20, tau_gap=10, generator=None):
    """A fresh matching level per sample for the same segments (trajectory / overlap / clean: module docstring)."""
    if mode not in MATCH_MODES:
        raise ValueError(f"mode: {mode!r} not in {list(MATCH_MODES)}")
    k, t_start, t_end = seg.k.cpu(), seg.t_start.cpu(), seg.t_end.cpu()
    if mode == "clean":
        lo, hi = torch.full_like(k, tau_min), torch.full_like(k, total_steps - tau_gap)
    else:
        lo = t_end.clamp_min(tau_min)
        hi = (t_start - tau_gap) if mode == "trajectory" else torch.full_like(k, total_steps - tau_gap)
    hi = torch.maximum(hi, lo + 1)  # a segment shorter than the gaps still gets its lowest level
    u = torch.rand(len(k), generator=generator, dtype=torch.float64)
    tau = (lo + (u * (hi - lo).double()).long()).clamp(max=total_steps - 1)
    return Segments(seg.k, seg.i, seg.t_start, seg.t_end, tau.to(seg.k.device))


# ------------------------------------------------------------------ step-count conditioning (TDM-unify)


STEP_KEY = "step_count"


def with_k(cond, k: torch.Tensor):
    """Conditioning of a K-aware network: the base conditioning with the per-sample step count under STEP_KEY.

    A dict so that the shared step's batching (`cat_cond`), guided teachers ({"cond", "uncond"}) and sample
    selection (`index_cond`) carry it unchanged; `split_k` undoes it."""
    if isinstance(cond, dict):
        return {**cond, STEP_KEY: k}
    return {STEP_KEY: k} if cond is None else {"base": cond, STEP_KEY: k}


def split_k(cond):
    """(base conditioning, step count or None)."""
    if not (isinstance(cond, dict) and STEP_KEY in cond):
        return cond, None
    rest = {key: v for key, v in cond.items() if key != STEP_KEY}
    base = None if not rest else (rest["base"] if set(rest) == {"base"} else rest)
    return base, cond[STEP_KEY]


class WithoutK(nn.Module):
    """A network that must not see the step count (the teacher): strips it from the conditioning."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x, t, cond=None, *args, **kw):
        return self.net(x, t, split_k(cond)[0], *args, **kw)


def _last_linear(module: nn.Module) -> nn.Linear:
    lins = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not lins:
        raise ValueError(f"{type(module).__name__} has no nn.Linear whose width the K embedding could match")
    return lins[-1]


TIME_EMBEDDING_TAPS = (  # matched as the full name or its last components, in this order
    "time_embedding",  # diffusers UNet2DModel / UNet2DConditionModel
    "adaln_single.emb.timestep_embedder",  # diffusers PixArt Transformer2DModel
    "body.0",  # common MLPDenoiser: the first layer, which sees the time features
)


class StepConditioned(nn.Module):
    """Adds a learned, zero-initialised embedding of the step count K to `net`'s time embedding (forward hook).

    Called as `net(x, t, with_k(base, k))`; the wrapped network sees `base`. Zero initialisation keeps the
    wrapped copy of the teacher identical to it at the start. The tap is the first of TIME_EMBEDDING_TAPS that
    the network has, unless given.
    """

    def __init__(self, net: nn.Module, ks, tap: str | None = None):
        super().__init__()
        self.net, self.ks = net, tuple(int(k) for k in ks)
        names = dict(net.named_modules())
        found = (n for t in TIME_EMBEDDING_TAPS for n in names if n == t or n.endswith("." + t))
        tap = tap or next(found, None)
        if tap is None or tap not in names:
            raise ValueError(
                f"no time embedding to condition on K in {type(net).__name__}; pass tap= one of its modules"
            )
        self.tap = tap
        self.embed = nn.Embedding(max(self.ks) + 1, _last_linear(names[tap]).out_features)
        nn.init.zeros_(self.embed.weight)
        self._k: torch.Tensor | None = None
        names[tap].register_forward_hook(self._add_k)

    def _add_k(self, module, inputs, out):
        if self._k is None:
            raise RuntimeError("StepConditioned: the network was called without a step count")
        e = self.embed(self._k.to(out.device))
        return out + e.reshape(e.shape[0], *([1] * (out.ndim - 2)), e.shape[-1]).to(out.dtype)

    def forward(self, x, t, cond=None, *args, **kw):
        base, k = split_k(cond)
        if k is None:
            raise TypeError("StepConditioned expects cond=with_k(base, k) (the step count is missing)")
        k = torch.as_tensor(k, device=x.device).long().expand(x.shape[0])
        if not all(int(v) in self.ks for v in k.unique()):
            raise ValueError(f"step count {k.unique().tolist()} not among the trained counts {self.ks}")
        self._k = k
        try:
            return self.net(x, t, base, *args, **kw)
        finally:
            self._k = None


def index_cond(cond, idx):
    """Select samples (bool mask or index tensor) of a conditioning: None, tensor or dict of them."""
    if cond is None:
        return None
    if isinstance(cond, dict):
        return {k: index_cond(v, idx) for k, v in cond.items()}
    if torch.is_tensor(cond) and cond.ndim > 0:
        return cond[idx]
    return cond


# ------------------------------------------------------------------ the deterministic student sampler


def ddim_move(schedule, x_t, x0, t, t_next, eps=None):
    """Deterministic DDIM move with the network's own eps: alpha_next x0 + sigma_next eps (x0 where t_next < 0)."""
    a, s = schedule.alpha_sigma(t)
    if eps is None:
        eps = eps_from_x0(x_t, x0, a, s)
    tn = t_next.clamp_min(0)
    an, sn = schedule.alpha_sigma(tn)
    x_next = bcast(an, x0) * x0 + bcast(sn, x0) * eps
    last = (t_next < 0).reshape(-1, *([1] * (x0.ndim - 1)))
    return torch.where(last, x0, x_next), eps


@torch.no_grad()
def rollout_points(student, schedule, noise, k: torch.Tensor, total_steps: int, cond=None):
    """Trajectory points (x_{t_0}, ..., x_{t_{K-1}}) of every sample, stacked (max K, B, ...), without gradients.

    One batched student call per step over the samples whose trajectory is still moving; rows j >= K of a sample
    repeat its last point and are never used.
    """
    x = noise.clone()
    points = [x.clone()]
    for j in range(int(k.max()) - 1):
        act = k > j + 1
        jj = torch.full_like(k, j)
        t, tn = _time_of(total_steps, k, jj)[act], _time_of(total_steps, k, jj + 1)[act]
        xa = x[act]
        x0 = student(xa, schedule.net_time(t), index_cond(cond, act))
        x[act] = ddim_move(schedule, xa, x0, t, tn)[0].to(x.dtype)
        points.append(x.clone())
    return torch.stack(points)


def pick(points: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """x_{t_i} of each sample from rollout_points."""
    return points[i.to(points.device), torch.arange(points.shape[1], device=points.device)]


@torch.no_grad()
def matching_sample(schedule, x_start, x0_hat, seg: Segments, mode="trajectory", generator=None):
    """(x_tau, n): the matching sample of each segment step, without gradients.

    trajectory / overlap: the step's next point x_{t_{i+1}} = alpha x0_hat + sigma eps_hat (eps_hat from x_start and
    x0_hat), diffused to tau by the forward transition (DDPM's q(x_tau | x_0)); clean: x0_hat diffused to tau.
    """
    x0 = x0_hat.detach()
    n = torch.randn(x0.shape, generator=generator).to(x0)
    a_tau, s_tau = schedule.alpha_sigma(seg.tau)
    if mode == "clean":
        return bcast(a_tau, x0) * x0 + bcast(s_tau, x0) * n, n
    x_end, _ = ddim_move(schedule, x_start, x0, seg.t_start, seg.t_end)
    a_e, s_e = schedule.alpha_sigma(seg.t_end)
    return forward_transition(x_end, a_e, s_e, a_tau, s_tau, n), n


def importance_weights(x_tau, x0_hat, noise, schedule, tau) -> torch.Tensor:
    """w = exp(-mean(m^2)/2) / exp(-mean(n^2)/2) with m = (x_tau - alpha_tau x0_hat) / sigma_tau (official demo).

    A tempered q(x_tau | x0_hat) / q(x_tau | x_{t_{i+1}}): it corrects the fake score's denoising target x0_hat
    for x_tau having been drawn around the trajectory point rather than around x0_hat. Equals 1 for clean matching.
    """
    a, s = schedule.alpha_sigma(tau)
    m = (x_tau.float() - bcast(a, x_tau) * x0_hat.float()) / bcast(s, x_tau)
    log_w = -0.5 * (m**2).flatten(1).mean(1) + 0.5 * (noise.float() ** 2).flatten(1).mean(1)
    return log_w.exp().detach()


@torch.no_grad()
def student_sample(student, schedule, noise, k: int, total_steps: int, cond=None, unify=False):
    """K-step deterministic sample (NFE = K): DDIM with the network's own eps; the final step returns x0_hat.

    unify: the network is K-aware and gets the step count with the conditioning."""
    b = noise.shape[0]
    kk = torch.full((b,), k, dtype=torch.long, device=noise.device)
    x = noise
    for j in range(k):
        jj = torch.full_like(kk, j)
        t = _time_of(total_steps, kk, jj)
        tn = _time_of(total_steps, kk, jj + 1) if j + 1 < k else torch.full_like(kk, -1)
        x0 = student(x, schedule.net_time(t), with_k(cond, kk) if unify else cond)
        x = ddim_move(schedule, x, x0, t, tn)[0]
    return x
