"""The distillation loop around `DistillStep`: optimisers, TTUR, warm-up, clipping, EMA, checkpoints, best-by-metric.

One iteration (DMD2 official code `main/train_sd.py`, `main/edm/train_edm.py`; paper §4.2 and App. C):
1. draw conditions, a real batch and noise; build the generator input (1-step or backward simulation);
2. run the generator, with gradients only on generator turns (step % ttur_ratio == 0);
3. on generator turns: freeze the critic, L_G = step.generator_loss, backward, clip, AdamW step, zero the gradients
   of both optimisers, update the EMA copies;
4. every iteration: L_critic = step.critic_loss on the detached samples, backward, clip, step.
Both learning-rate schedules step every iteration, from `diffusers.optimization.get_scheduler`
(`constant_with_warmup` in the DMD2 code; TDM: `cosine_with_restarts` on the generator). EMA copies of the
generator are `torch.optim.swa_utils.AveragedModel`s; the DMD2 code keeps none and picks the best checkpoint by FID,
so the loop also keeps the generator with the best validation score (`score_fn`, on samples disjoint from the test
samples) as `best_generator.pt`. Re-running resumes from the last checkpoint.

Gradient accumulation: an iteration is `grad_accum` micro-batches per process (the global-batch contract of
common.launch); generator and critic gradients are summed over them (`accelerator.backward` divides each loss by
the accumulation count; DDP synchronises on the
last one only) before one optimiser step each, so TTUR counts optimiser steps, not micro-batches. Every random draw
of a micro-batch (data, noise, noise levels, student step k) comes from a generator keyed by (seed, iteration,
global micro-batch index), so a run's parameters depend on the micro-batch size but not on how the micro-batches are
spread over processes: 2 processes x 2 micro-batches end where 1 process x 4 micro-batches ends (tested).

FSDP: with an accelerate FSDP config the loop calls the wrapped generator, checkpoints go through accelerate's
sharded save_state (common.checkpoint) and the best generator is gathered with get_state_dict; EMA copies are
refused. Accelerate runs FSDP on GPUs only, so only the checkpoint path is tested here (on CPU, through DDP).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from common.checkpoint import Checkpointer, atomic_torch_save, is_sharded
from common.diffusion.losses import gen_turn

__all__ = ["OptimSettings", "make_ema", "make_optimizers", "check_finite", "micro_generator", "train_loop"]


@dataclass(frozen=True)
class OptimSettings:
    """Optimiser settings of the two parameter groups (DMD2 official code: AdamW (0.9, 0.999), wd 0.01, clip 10,
    constant_with_warmup 500; TDM demo: betas (0, 0.95), clip 1 on the generator, cosine on the generator only)."""

    gen_lr: float
    critic_lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    critic_betas: tuple[float, float] | None = None
    weight_decay: float = 0.01
    eps: float = 1e-8
    warmup: int = 500
    gen_scheduler: str = "constant_with_warmup"
    critic_scheduler: str = "constant_with_warmup"
    critic_warmup: int | None = None
    total_steps: int | None = None
    gen_clip: float = 10.0
    critic_clip: float = 10.0
    ttur_ratio: int = 5
    ema_rates: tuple[float, ...] = ()


def make_optimizers(G, critic_params, o: OptimSettings):
    """AdamW for the generator and for the critic group (fake score + head), each with a diffusers LR schedule."""
    from diffusers.optimization import get_scheduler

    opt_g = torch.optim.AdamW(G.parameters(), lr=o.gen_lr, betas=o.betas, weight_decay=o.weight_decay, eps=o.eps)
    opt_c = torch.optim.AdamW(
        critic_params, lr=o.critic_lr, betas=o.critic_betas or o.betas, weight_decay=o.weight_decay, eps=o.eps
    )
    cw = o.warmup if o.critic_warmup is None else o.critic_warmup
    sched_g = get_scheduler(o.gen_scheduler, opt_g, num_warmup_steps=o.warmup, num_training_steps=o.total_steps)
    sched_c = get_scheduler(o.critic_scheduler, opt_c, num_warmup_steps=cw, num_training_steps=o.total_steps)
    return opt_g, opt_c, sched_g, sched_c


def make_ema(G, rates) -> list:
    """One torch AveragedModel per EMA rate (the average starts at the generator's weights)."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return [
        AveragedModel(G, multi_avg_fn=get_ema_multi_avg_fn(r), use_buffers=True).requires_grad_(False) for r in rates
    ]


def micro_generator(seed: int, iteration: int, micro: int) -> torch.Generator:
    """The RNG of one micro-batch, keyed by (seed, iteration, global micro-batch index); micro=-1: shared by all."""
    key = (int(seed) * 1_000_003 + int(iteration)) * 65_537 + int(micro) + 1
    return torch.Generator().manual_seed(key % (2**63 - 1))


def _sync_on_last(acc, models, j: int, accum: int):
    """DDP reduces gradients only on the last micro-batch of an iteration (accelerate's no_sync before it)."""
    stack = contextlib.ExitStack()
    if j < accum - 1:
        for m in models:
            if m is not None:
                stack.enter_context(acc.no_sync(m))
    return stack


def _mean_logs(logs: list[dict]) -> dict:
    keys = dict.fromkeys(k for d in logs for k in d)
    return {k: sum(d[k] for d in logs if k in d) / sum(1 for d in logs if k in d) for k in keys}


def generator_state(acc, G, sharded: bool) -> dict:
    """The generator's full state dict; under FSDP gathered from the shards by accelerate (a collective call)."""
    return acc.get_state_dict(G) if sharded else acc.unwrap_model(G).state_dict()


def check_finite(name, value, step):
    if not math.isfinite(value):
        raise FloatingPointError(
            f"{name} is {value} at iteration {step}; lower the learning rates or w_g (the last checkpoint is intact)"
        )


@dataclass
class Batch:
    """What one iteration draws: conditions, a real batch with its conditions, and noise."""

    cond: Any
    real: torch.Tensor | None
    real_cond: Any
    z: torch.Tensor


@dataclass
class LoopResult:
    state: dict
    ema: list
    train_time_s: float
    extra: dict = field(default_factory=dict)


def train_loop(
    run,
    step,
    draw,
    o: OptimSettings,
    *,
    steps: int,
    ckpt_every=0,
    keep_ckpts=2,
    log_every=50,
    eval_every=0,
    score_fn=None,
    desc="distill",
) -> LoopResult:
    """Run the distillation from the last checkpoint to `steps` iterations.

    run: common.launch.Run; step: DistillStep (its generator, fake and head are prepared here);
    draw(n, g) -> Batch for n samples on this process; score_fn(G) -> validation score (lower is better) for the
    best-checkpoint selection every `eval_every` generator updates (0 = off).
    Returns the state (w_G, best, brightness trace), the EMA models and the training wall time over all resumes.
    """
    acc = run.accelerator
    cfg_seed = run.cfg.seed
    opt_g, opt_c, sched_g, sched_c = make_optimizers(step.G, step.critic_parameters(), o)
    if step.gan:
        G, fake, head, opt_g, opt_c = acc.prepare(step.G, step.fake, step.head, opt_g, opt_c)
    else:
        G, fake, opt_g, opt_c = acc.prepare(step.G, step.fake, opt_g, opt_c)
        head = None
    sharded = is_sharded(acc)  # FSDP through an accelerate config (DMD2's SDXL runs: hybrid sharding)
    if sharded and o.ema_rates:
        raise ValueError("ema_rates: EMA copies are not kept under FSDP (the official SDXL runs keep none)")
    # sharded parameters only exist inside the FSDP wrapper: rollouts and evaluations call the wrapped module there
    G_raw = G if sharded else acc.unwrap_model(G)
    step.G, step.fake, step.head = G_raw, fake, head
    step.reduce_mean = lambda t: acc.reduce(t, reduction="mean")
    ema = make_ema(G_raw, o.ema_rates)
    ckpt = Checkpointer(run.dir / "checkpoints", keep=keep_ckpts, accelerator=acc)
    objects = {
        "generator": G,
        "fake": fake,
        **({"head": head} if head is not None else {}),
        "opt_g": opt_g,
        "opt_c": opt_c,
        "sched_g": sched_g,
        "sched_c": sched_c,
        **{f"ema{i}": e for i, e in enumerate(ema)},
    }
    start_step, saved = ckpt.resume(objects)
    state = {"trace": [], "best": None, **step.state, **(saved or {})}
    step.state = state
    critic_params = step.critic_parameters()
    n, accum = run.per_device_batch, run.grad_accum
    rank = acc.process_index
    bar = run.progress(range(start_step, steps), total=steps, initial=start_step, desc=desc)
    for it in bar:
        turn = gen_turn(it, o.ttur_ratio)
        g_shared = micro_generator(cfg_seed, it, -1)  # one draw every process agrees on (e.g. one k per batch)
        micro = []
        for j in range(accum):  # ---- generator outputs; generator gradients on generator turns ----
            g = micro_generator(cfg_seed, it, rank * accum + j)
            b = draw(n, g)
            x_in, idx, k = step.make_input(b.z, b.cond, b.real, g, g_shared)
            with torch.set_grad_enabled(turn), acc.autocast():
                out = step.generate(G, x_in, idx, k, b.cond)
            logs = {}
            if turn:  # critic frozen; DDP reduces the generator gradients on the last micro-batch only
                for m in (fake, head):
                    if m is not None:
                        m.requires_grad_(False)
                with _sync_on_last(acc, [G], j, accum), acc.autocast():
                    loss_g, lg = step.generator_loss(out, b.cond, it, g)
                    check_finite("generator loss", loss_g.item(), it)
                    acc.backward(loss_g)  # accelerate divides by the accumulation count
                logs.update(lg)
            micro.append((b, out.detached(), g, logs))
        logs = _mean_logs([m[3] for m in micro])
        if turn:  # ---- generator update ----
            step.finish_micro_batches()
            if o.gen_clip:
                acc.clip_grad_norm_(G.parameters(), o.gen_clip)
            opt_g.step()
            opt_g.zero_grad(set_to_none=True)
            opt_c.zero_grad(set_to_none=True)
            for m in (fake, head):
                if m is not None:
                    m.requires_grad_(True)
            for e in ema:
                e.update_parameters(G_raw)
            xm = acc.gather(torch.cat([m[1].x0 for m in micro]).float()).flatten(1)
            state["trace"].append([xm.mean(0).norm().item(), (xm**2).mean().item()])  # "brightness" trace
        sched_g.step()
        # ---- critic update: fake-score denoising loss + w_D * GAN discriminator loss, summed over micro-batches ----
        critic_logs = []
        for j, (b, out, g, _) in enumerate(micro):
            with _sync_on_last(acc, [fake, head], j, accum), acc.autocast():
                loss_c, lc = step.critic_loss(out, b.cond, b.real, b.real_cond, g)
                check_finite("critic loss", loss_c.item(), it)
                acc.backward(loss_c)
            critic_logs.append(lc)
        if o.critic_clip:
            acc.clip_grad_norm_(critic_params, o.critic_clip)
        opt_c.step()
        opt_c.zero_grad(set_to_none=True)
        sched_c.step()
        logs.update(_mean_logs(critic_logs))
        gen_step = it // o.ttur_ratio
        if turn and eval_every and score_fn is not None and gen_step % eval_every == 0 and gen_step > 0:
            score = score_fn(G_raw)  # selection metric on a validation set
            run.log(it, gen_step=gen_step, val_score=score)  # every point of the learning curve, whatever log_every
            if state["best"] is None or score < state["best"]["score"]:
                state["best"] = {"score": score, "gen_step": gen_step}
                best_state = generator_state(acc, G, sharded)  # every rank: a collective call under FSDP
                if run.is_main:
                    atomic_torch_save(best_state, run.path("best_generator.pt"))
        if it % log_every == 0 or it == steps - 1:
            run.log(it, gen_step=gen_step, **logs)
        if ckpt_every and (it + 1) % ckpt_every == 0 and it + 1 < steps:
            ckpt.save(it + 1, objects, extra=state)
    if start_step < steps or ckpt.latest() is None:
        ckpt.save(steps, objects, extra=state)
    return LoopResult(state, ema, ckpt.train_time_s())
