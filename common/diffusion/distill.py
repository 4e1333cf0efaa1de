"""One distillation step for distribution-matching distillation, with the parts DMD2, f-distill, DisBack and TDM set.

The step (DMD2: Yin et al. 2024b, §4 and Alg. 1; official code tianweiy/DMD2 `main/sd_guidance.py`,
`main/edm/edm_guidance.py`) has two halves that share the generator's output x = G(x_in):

- generator loss: noise x to x_t, query the target score and the fake score there (no grad), and apply the
  distribution-matching operator `dm_loss` (DMD Eq. 7 with DMD2's normaliser; `normalise=False` is Diff-Instruct's
  plain score difference), times an optional per-sample weight, plus the GAN generator loss and any extra losses;
- critic loss: the fake score's denoising loss on the detached x, plus the GAN discriminator loss on noised real and
  generated samples, batched through the fake network in one forward when the head sits on its features.

Pluggable parts (each a constructor argument; defaults are DMD2):

    target         the real score: FixedTarget(teacher), GuidedTarget(teacher, scale) (CFG, scale per call), or
                   StepScheduledTarget(nodes, every, final) whose network changes with the training step (DisBack)
    input_mode     generator input: "backward" (1-step, or backward simulation over `student_steps`) or
                   "forward_real" (forward-noised real data at the student's level); per_sample_k: a student step
                   per sample or per batch (default as the DMD2 code: per batch for backward, per sample for real)
    rollout_rule   "renoise" (DMD2: fresh noise between student steps) or "ddim" (TDM: the student's own eps)
    dm_noise       (step, out, g) -> Noised: where the scores are queried (default: index uniform in dm_range);
                   TDM diffuses the student's next trajectory point into its segment here
    dm_weight_fn   (DMContext) -> (B,) per-sample weight on the DM gradient; f-distill's h(r) reads ctx.logits,
                   the discriminator logits on the same x_t (computed when this is set)
    extra_gen_losses / extra_critic_losses   {name: (weight, fn(ctx) -> scalar)}
    critic_noise   (step, out, g) -> Noised with an optional per-sample `weight` (TDM's importance weights)
    gan_features   the network whose taps feed the head: the fake score (DMD2) or a frozen teacher (FastGen)

How a new method plugs in (f-distill, for example; `train_loop` in common/diffusion/trainer.py runs the loop):

    from common.diffusion.distill import DistillStep, FixedTarget

    class FWeights:                           # h(r) = r^2 f''(r) from the discriminator's log-ratio
        def __call__(self, ctx):
            r = ctx.logits.detach().clamp(-10, 10).exp().clamp(0.1, 20)
            h = r / (r + 1)                   # Jensen-Shannon
            return h / (h.mean() + 1e-6)

    step = DistillStep(
        generator=G, fake=fake, head=head, schedule=schedule,
        target=FixedTarget(teacher),          # DisBack: StepScheduledTarget(path_nodes, every=1000, final=teacher)
        gan_same_noise=True,                  # GAN-G on the same x_t as the DM term (FastGen)
        dm_weight_fn=FWeights(),              # DMD2: None (weight 1); Diff-Instruct: normalise=False
        w_g=3e-3, w_d=1e-2,
    )
    # TDM: rollout_rule="ddim", per_sample_k=True, student_steps=[899, 674, 449, 224], dm_noise=segment_noise
    #      (reads out.k, out.idx, out.eps), dm_metric="pseudo_huber", fake_loss="x0_snr",
    #      critic_noise=importance_weighted_noise (Noised.weight), head=None, OptimSettings(ttur_ratio=1)
    res = train_loop(run, step, draw, OptimSettings(gen_lr=2e-6, critic_lr=2e-6, ttur_ratio=5), steps=cfg.steps)
    # per iteration it calls out = step.generate(G, *step.make_input(z, cond, real, g)), then
    # step.generator_loss(out, cond, it, g) on generator turns and step.critic_loss(out, cond, real, real_cond, g)

Left out: the optimiser loop (common/diffusion/trainer.py), per-method weight functions (with each paper).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from common.diffusion.denoisers import cfg as cfg_combine
from common.diffusion.losses import dm_loss, fake_score_loss, gan_d_loss, gan_g_loss
from common.diffusion.samplers import rollout
from common.diffusion.schedules import eps_from_x0, snr

__all__ = [
    "FixedTarget",
    "GuidedTarget",
    "StepScheduledTarget",
    "Noised",
    "GenOutput",
    "DMContext",
    "CriticContext",
    "DistillStep",
    "cat_cond",
    "generator_input",
]


# ----------------------------------------------------------------------------- target-score providers
# A provider maps (x_t, t, cond, step) to the target x0; it runs without gradients.


class FixedTarget:
    """The frozen teacher as the real score (DMD2, f-distill, TDM)."""

    def __init__(self, net: nn.Module):
        self.net = net

    @torch.no_grad()
    def __call__(self, x_t, t, cond=None, step: int = 0):
        return self.net(x_t, t, cond)


def cat_cond(conds):
    """Concatenate per-batch conditioning (None, tensors, or dicts of them) along the batch."""
    if all(c is None for c in conds):
        return None
    if isinstance(conds[0], dict):
        return {k: cat_cond([c[k] for c in conds]) for k in conds[0]}
    return torch.cat(conds)


class GuidedTarget:
    """Teacher with classifier-free guidance mu_u + s (mu_c - mu_u) (DMD2 `real_guidance_scale`; TDM `--cfg`).

    `cond` is {"cond": c, "uncond": u}; the two branches go through the teacher in one batch. The scale is set at
    construction and can be overridden per call (`scale=`). Scale 1 queries only the conditional branch."""

    def __init__(self, net: nn.Module, scale: float):
        self.net, self.scale = net, scale

    @torch.no_grad()
    def __call__(self, x_t, t, cond=None, step: int = 0, scale: float | None = None):
        s = self.scale if scale is None else scale
        if s == 1.0:
            return self.net(x_t, t, cond["cond"])
        t2 = torch.as_tensor(t, device=x_t.device).expand(x_t.shape[0]).repeat(2)
        both = cat_cond([cond["uncond"], cond["cond"]])
        mu_u, mu_c = self.net(torch.cat([x_t, x_t]), t2, both).chunk(2)
        return cfg_combine(mu_u, mu_c, s)


class StepScheduledTarget:
    """A target whose network changes with the training step: node i serves steps [i*every, (i+1)*every), then
    `final` (any provider, normally the teacher) serves for good (DisBack §3.4: the recorded degradation path walked
    back to the teacher).

    nodes: networks, or zero-argument loaders returning one, in the order they are visited (DisBack: N-1, ..., 0).
    A loader runs when its node's turn comes, after the previous node is dropped, so at most one intermediate
    node is in memory. `guidance`: CFG scale applied to the nodes (None = conditional only). The active node is a
    function of the step alone, so a resumed run serves the same node."""

    def __init__(self, nodes: list, every: int, final, guidance: float | None = None):
        if every < 1:
            raise ValueError(f"every: {every} must be >= 1")
        self.nodes, self.every, self.final, self.guidance = list(nodes), every, final, guidance
        self._loaded: tuple[int, Any] | None = None

    def index(self, step: int) -> int:
        """Index of the node serving `step`; len(nodes) means the final target."""
        return min(step // self.every, len(self.nodes))

    def provider(self, step: int, device=None):
        i = self.index(step)
        if i == len(self.nodes):
            self._loaded = None
            return self.final
        if self._loaded is None or self._loaded[0] != i:
            self._loaded = None  # drop the previous node before loading the next one
            node = self.nodes[i]
            net = node if isinstance(node, nn.Module) else node()
            net = net.to(device) if device is not None else net
            self._loaded = (i, FixedTarget(net) if self.guidance is None else GuidedTarget(net, self.guidance))
        return self._loaded[1]

    def __call__(self, x_t, t, cond=None, step: int = 0):
        return self.provider(step, x_t.device)(x_t, t, cond, step)


# ----------------------------------------------------------------------------- what the step passes around


@dataclass
class Noised:
    """A noised batch: x_t = alpha x0 + sigma eps at grid index idx; `weight`: optional per-sample loss weight."""

    x_t: torch.Tensor
    idx: torch.Tensor
    eps: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    target: torch.Tensor | None = None  # x0 the critic regresses onto (default: the clean sample)


@dataclass
class GenOutput:
    """The generator's differentiable step: input x_in at index idx (student step k per sample), output x0."""

    x_in: torch.Tensor
    idx: torch.Tensor
    k: torch.Tensor
    x0: torch.Tensor
    schedule: Any = None
    extra: dict = field(default_factory=dict)

    def detached(self) -> GenOutput:
        """The same output without its graph (what the critic half of the step trains on)."""
        return GenOutput(self.x_in.detach(), self.idx, self.k, self.x0.detach(), self.schedule, self.extra)

    @property
    def eps(self) -> torch.Tensor:
        """The generator's eps at its input (TDM's deterministic DDIM step), from x0 by the schedule."""
        a, s = self.schedule.alpha_sigma(self.idx)
        return eps_from_x0(self.x_in, self.x0, a, s)


@dataclass
class DMContext:
    """What a per-sample DM weight or an extra generator loss sees."""

    out: GenOutput
    noised: Noised
    mu_real: torch.Tensor
    mu_fake: torch.Tensor
    logits: torch.Tensor | None  # discriminator logits on noised.x_t (with grad when the GAN term uses them)
    cond: Any
    step: int


@dataclass
class CriticContext:
    """What an extra critic loss sees (e.g. f-distill's approximate R1)."""

    x: torch.Tensor  # detached generator samples
    noised: Noised
    real: torch.Tensor | None
    real_cond: Any
    cond: Any
    logits_real: torch.Tensor | None
    logits_fake: torch.Tensor | None


def generator_input(
    G,
    schedule,
    steps: list[int],
    z,
    cond=None,
    *,
    mode: str = "backward",
    rule: str = "renoise",
    real=None,
    per_sample: bool | None = None,
    generator=None,
    shared_generator=None,
):
    """(x_in, idx, k) of the generator's differentiable step (DMD2 §4.5; official code `prepare_denoising_data`).

    One student step: x_in = noise at steps[0]. K steps: a step index k per sample (per_sample=False: one k per
    batch, drawn from `shared_generator` so that every process agrees; None: as the DMD2 code, per batch for
    backward simulation (`sample_backward`) and per sample for forward-noised real data), and
      backward      x_in = the student's own no-grad rollout through its first k steps (backward simulation);
      forward_real  x_in = real data forward-noised to steps[k] with z (the paper's ablation).
    """
    b, dev, K = z.shape[0], z.device, len(steps)
    if per_sample is None:
        per_sample = mode == "forward_real"
    grid = torch.tensor(steps, device=dev, dtype=torch.long)
    if K == 1:
        k = torch.zeros(b, dtype=torch.long, device=dev)
    elif per_sample:
        k = torch.randint(K, (b,), generator=generator).to(dev)
    else:
        k = torch.full((b,), int(torch.randint(K, (1,), generator=shared_generator)), device=dev, dtype=torch.long)
    kmax = int(k.max())
    if kmax == 0 or mode == "forward_real":
        xs, _ = rollout(G, schedule, steps, z, k=0, cond=cond)
        x_in = xs[0]
        if kmax > 0:
            if real is None:
                raise ValueError("input_mode 'forward_real' needs a real batch")
            noisy = schedule.add_noise(real, grid[k], z)
            x_in = torch.where((k > 0).view(-1, *[1] * (z.ndim - 1)), noisy, x_in)
    elif mode == "backward":
        xs, _ = rollout(G, schedule, steps, z, k=kmax, rule=rule, grad=False, cond=cond, generator=generator)
        x_in = torch.stack(xs)[k, torch.arange(b, device=dev)]
    else:
        raise ValueError(f"input_mode: {mode!r} not in ['backward', 'forward_real']")
    return x_in, grid[k], k


# ----------------------------------------------------------------------------- the step


class DistillStep:
    """Generator and critic losses of one distillation iteration; see the module docstring for the parts."""

    def __init__(
        self,
        *,
        generator: nn.Module,
        fake: nn.Module,
        target: Callable,
        schedule,
        head: nn.Module | None = None,
        student_steps: list[int] | None = None,
        input_mode: str = "backward",
        rollout_rule: str = "renoise",
        per_sample_k: bool | None = None,
        dm_range: tuple[float, float] = (0.02, 0.98),
        dm_weight: float = 1.0,
        dm_metric: str = "mse",
        normalise: bool = True,
        huber_c: float = 1e-3,
        dm_noise: Callable | None = None,
        dm_weight_fn: Callable | None = None,
        extra_gen_losses: dict | None = None,
        fake_loss: str = "edm",
        snr_gamma: float = 5.0,
        critic_noise: Callable | None = None,
        extra_critic_losses: dict | None = None,
        gan_features: nn.Module | None = None,
        taps: tuple[str, ...] = ("mid",),
        gan_same_noise: bool = False,
        w_g: float = 0.0,
        w_d: float = 1e-2,
        w_g_calibrate: bool = False,
        calibrate_at: int = 0,
        reduce_mean: Callable = lambda t: t,
    ):
        self.G, self.fake, self.target, self.schedule, self.head = generator, fake, target, schedule, head
        self.steps = list(student_steps or [schedule.max_index()])
        self.input_mode, self.rollout_rule, self.per_sample_k = input_mode, rollout_rule, per_sample_k
        self.dm_range, self.dm_weight, self.dm_metric = dm_range, dm_weight, dm_metric
        self.normalise, self.huber_c = normalise, huber_c
        self.dm_noise = dm_noise or (lambda st, out, g: st.noise(out.x0, *st.dm_range, g))
        self.dm_weight_fn = dm_weight_fn
        self.extra_gen_losses = extra_gen_losses or {}
        self.fake_loss, self.snr_gamma = fake_loss, snr_gamma
        self.critic_noise = critic_noise or (lambda st, out, g: st.noise(out.x0.detach(), 0.0, 1.0, g))
        self.extra_critic_losses = extra_critic_losses or {}
        self.gan_features = gan_features  # None: the fake score's taps (DMD2)
        self.taps, self.gan_same_noise = tuple(taps), gan_same_noise
        self.w_g, self.w_d = w_g, w_d
        self.w_g_calibrate, self.calibrate_at = w_g_calibrate, calibrate_at
        self.reduce_mean = reduce_mean
        # checkpointed by the trainer: the effective w_G and how it was measured (authors' recipe)
        self.state: dict = {"w_g": None if w_g_calibrate else w_g, "calib": None}
        self._ratios: list[torch.Tensor] = []  # w_G measurements of the current generator update's micro-batches
        self._calib_step = 0

    @property
    def gan(self) -> bool:
        return self.head is not None

    # ---- pieces ----

    def noise(self, x, lo: float, hi: float, g) -> Noised:
        """x_t at a grid index uniform in [lo*N, hi*N] per sample, with fresh eps."""
        idx = self.schedule.sample_index(x.shape[0], lo, hi, generator=g, device=x.device)
        eps = torch.randn(x.shape, generator=g).to(x)
        return Noised(self.schedule.add_noise(x, idx, eps), idx, eps)

    def t(self, idx):
        return self.schedule.net_time(idx)

    def logits(self, n: Noised, cond, grad: bool = True):
        """Discriminator logits on n.x_t: the head on the feature network's taps (stops after the last tap)."""
        net = self.gan_features if self.gan_features is not None else self.fake
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            p = net(n.x_t, self.t(n.idx), cond, taps=self.taps, pred=True, stop_after_taps=True)
            return self.head(self._head_input(p.features))

    def _head_input(self, feats):
        return feats[self.taps[0]] if len(self.taps) == 1 else feats

    def make_input(self, z, cond=None, real=None, g=None, g_shared=None):
        return generator_input(
            self.G,
            self.schedule,
            self.steps,
            z,
            cond,
            mode=self.input_mode,
            rule=self.rollout_rule,
            real=real,
            per_sample=self.per_sample_k,
            generator=g,
            shared_generator=g_shared,
        )

    def generate(self, G, x_in, idx, k, cond) -> GenOutput:
        """The differentiable generator step (gradients as the caller's grad mode says). G may be DDP-wrapped."""
        return GenOutput(x_in, idx, k, G(x_in, self.t(idx), cond), self.schedule)

    # ---- generator loss ----

    def generator_loss(self, out: GenOutput, cond, step: int, g) -> tuple[torch.Tensor, dict]:
        """L_G = dm_weight * L_DM(weighted) + w_G * L_GAN-G + sum of extra losses. The critic must be frozen."""
        x = out.x0
        n = self.dm_noise(self, out, g)
        t = self.t(n.idx)
        mu_real = self.target(n.x_t, t, cond, step)
        with torch.no_grad():
            mu_fake = self.fake(n.x_t, t, cond)
        logits = None
        if self.gan and (self.gan_same_noise or self.dm_weight_fn is not None):
            logits = self.logits(n, cond, grad=self.gan_same_noise)
        ctx = DMContext(out, n, mu_real, mu_fake, logits, cond, step)
        scale = self.dm_weight_fn(ctx) if self.dm_weight_fn is not None else None
        l_dm = dm_loss(
            x.float(),
            mu_real.float(),
            mu_fake.float(),
            scale=scale,
            metric=self.dm_metric,
            c=self.huber_c,
            normalise=self.normalise,
        )
        logs = {"loss_dm": l_dm.item()}
        l_gan = torch.zeros((), device=x.device)
        if self.gan:
            if not self.gan_same_noise:  # diffusion-GAN: an independent random level (DMD2 official code)
                logits = self.logits(self.noise(x, 0.0, 1.0, g), cond)
            l_gan = gan_g_loss(logits)  # DMD2 Eq. 4 (generator side)
            self._maybe_calibrate(l_dm, l_gan, x, step)
            logs["loss_gan_g"] = l_gan.item()
        w_g = self.state["w_g"] if (self.gan and self.state["w_g"] is not None) else 0.0
        loss = self.dm_weight * l_dm + w_g * l_gan
        for name, (w, fn) in self.extra_gen_losses.items():
            extra = fn(ctx)
            logs[f"loss_{name}"] = extra.item()
            loss = loss + w * extra
        if self.gan:
            logs["w_g"] = w_g
        return loss, logs

    def _maybe_calibrate(self, l_dm, l_gan, x, step: int) -> None:
        """Authors' recipe (DMD2 issue #73): choose w_G so that the GAN gradient on the generated image matches the
        DM gradient in norm, times the configured multiplier; measured once, at iteration `calibrate_at`."""
        if self.state["w_g"] is not None or step < self.calibrate_at:
            return
        gd = torch.autograd.grad(self.dm_weight * l_dm, x, retain_graph=True)[0].norm()
        gg = torch.autograd.grad(l_gan, x, retain_graph=True)[0].norm().clamp_min(1e-12)
        self._ratios.append((gd / gg).detach().reshape(1))
        self._calib_step = step

    def finish_micro_batches(self) -> None:
        """After the micro-batches of a generator update: a pending w_G measurement becomes the mean ratio over
        every micro-batch of every process (so it does not depend on how the batch is split); it applies from the
        next generator update on."""
        if not self._ratios:
            return
        ratio = self.reduce_mean(torch.cat(self._ratios).mean().reshape(1)).item()
        self._ratios = []
        self.state["w_g"] = self.w_g * ratio
        self.state["calib"] = {"iteration": self._calib_step, "dm_over_gan_grad": ratio}

    # ---- critic loss ----

    def critic_loss(self, out: GenOutput, cond, real=None, real_cond=None, g=None) -> tuple[torch.Tensor, dict]:
        """Fake-score denoising loss on the detached samples + w_D * GAN discriminator loss (+ extra losses)."""
        xd = out.x0.detach()
        b = xd.shape[0]
        n = self.critic_noise(self, GenOutput(out.x_in, out.idx, out.k, xd, self.schedule, out.extra), g)
        xs, idxs, conds = [n.x_t], [n.idx], [cond]
        nr = nf = None
        if self.gan:
            nr, nf = self.noise(real, 0.0, 1.0, g), self.noise(xd, 0.0, 1.0, g)
            if self.gan_features is None:  # one batched forward of [denoising input, noised real, noised fake]
                xs, idxs, conds = [n.x_t, nr.x_t, nf.x_t], [n.idx, nr.idx, nf.idx], [cond, real_cond, cond]
        taps = self.taps if (self.gan and self.gan_features is None) else ()
        p = self.fake(torch.cat(xs), self.t(torch.cat(idxs)), cat_cond(conds), taps=taps, pred=True)
        target = xd if n.target is None else n.target
        a, s = self.schedule.alpha_sigma(n.idx)
        if self.fake_loss == "eps_mse":
            l_fake = fake_score_loss("eps_mse", p.eps[:b], n.eps, weight=n.weight)
        elif self.fake_loss == "x0_snr":
            l_fake = fake_score_loss("x0_snr", p.x0[:b], target, snr=snr(a, s), gamma=self.snr_gamma, weight=n.weight)
        else:
            l_fake = fake_score_loss(  # VP schedules: at the equivalent VE sigma / alpha (EDM: alpha = 1)
                "edm", p.x0[:b], target, sigma=s / a, sigma_data=self.schedule.sigma_data, weight=n.weight
            )
        loss, logs = l_fake, {"loss_fake": l_fake.item()}
        lr_ = lf_ = None
        if self.gan:
            if self.gan_features is None:
                logit = self.head(self._head_input({k: v[b:] for k, v in p.features.items()}))
                lr_, lf_ = logit[:b], logit[b:]
            else:
                lr_, lf_ = self.logits(nr, real_cond), self.logits(nf, cond)
            l_d = gan_d_loss(lr_, lf_)  # DMD2 Eq. 4 (discriminator side)
            loss = loss + self.w_d * l_d
            logs["loss_gan_d"] = l_d.item()
        ctx = CriticContext(xd, n, real, real_cond, cond, lr_, lf_)
        for name, (w, fn) in self.extra_critic_losses.items():
            extra = fn(ctx)
            logs[f"loss_{name}"] = extra.item()
            loss = loss + w * extra
        return loss, logs

    def critic_parameters(self) -> list[nn.Parameter]:
        return [*self.fake.parameters(), *(self.head.parameters() if self.gan else [])]
