"""The supervised fine-tuning loop shared by the embedded student (train.py) and the full-scale LoRA student
(fullscale.py): AdamW (or QLoRA's paged 8-bit AdamW), linear warm-up + cosine decay (App. B: cosine, 3% warm-up),
gradient accumulation and clipping through Accelerate, and resumable checkpoints (``common.checkpoint``).

For LoRA only the trainable parameters are checkpointed (``TrainableState``), so a resumable QLoRA run does not
write the frozen base model at every checkpoint.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

import torch

from common.checkpoint import Checkpointer


def cosine_lambda(total: int, warmup_frac: float, floor: float = 0.1):
    """Linear warm-up, then cosine decay to ``floor`` x peak (App. B: cosine schedule, 3% warm-up)."""
    warm = max(1, int(round(warmup_frac * total)))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def epoch_order(n: int, epochs: int, seed: int) -> list[int]:
    """Item indices of ``epochs`` passes, each a fresh seeded permutation."""
    order: list[int] = []
    for e in range(epochs):
        perm = list(range(n))
        random.Random(seed + e).shuffle(perm)
        order.extend(perm)
    return order


class TrainableState:
    """Checkpointer adapter: the state of the parameters that require grad only (a LoRA adapter)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def state_dict(self) -> dict:
        return {n: p.detach().cpu() for n, p in self.model.named_parameters() if p.requires_grad}

    def load_state_dict(self, state: dict) -> None:
        missing = set(state) - {n for n, _ in self.model.named_parameters()}
        if missing:
            raise RuntimeError(f"checkpoint has parameters this model lacks: {sorted(missing)[:3]}")
        self.model.load_state_dict(state, strict=False)


def process_micro_batches(items: list, run) -> list[list]:
    """This process's micro-batches of one optimizer step whose global batch is ``items``.

    The global batch is cut in order into world_size x grad_accum near-equal micro-batches and process r takes the
    r-th run of grad_accum of them. Every loss is a mean over its micro-batch and Accelerate averages micro-batches
    (accumulation) and processes (DDP) alike, so a step is the same for any layout of the global batch over
    processes (1 x 4 micro-batches == 2 x 2), and every step has exactly grad_accum micro-batches (a short last
    batch of an epoch is spread, not dropped, and the optimizer still steps)."""
    k = run.world_size * run.grad_accum
    if len(items) < k:
        raise ValueError(f"a global batch of {len(items)} items cannot fill {k} micro-batches")
    cut = [j * len(items) // k for j in range(k + 1)]
    r = run.accelerator.process_index
    return [items[cut[j] : cut[j + 1]] for j in range(r * run.grad_accum, (r + 1) * run.grad_accum)]


def main_process_only(run, fn):
    """``fn()`` (a pair) on the main process only, e.g. teacher calls; the result is broadcast to every process."""
    payload = list(fn()) if run.is_main else [None, None]
    if run.world_size > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(payload, from_process=0)
    return tuple(payload)


def make_optimizer(params, lr: float, weight_decay: float, kind: str = "adamw", betas=(0.9, 0.999)):
    """AdamW, or bitsandbytes' paged 8-bit AdamW (QLoRA, App. B) when ``kind='paged_adamw_8bit'``."""
    if kind == "paged_adamw_8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise SystemExit(
                "error: optim=paged_adamw_8bit needs bitsandbytes (pip install bitsandbytes, CUDA); "
                "or run with --set optim=adamw"
            ) from None
        return bnb.optim.PagedAdamW8bit(params, lr=lr, weight_decay=weight_decay, betas=betas)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas)


def sft_loop(
    run,
    cfg,
    model,
    total_steps: int,
    lr: float,
    ckpt_dir: Path,
    tag: str,
    micro_batches: Callable[[int], list],
    loss_of: Callable,
    *,
    floor: float = 0.1,
    betas=(0.9, 0.999),
    optim: str = "adamw",
    adapter_only: bool = False,
    on_step: Callable | None = None,
):
    """Plain SFT for ``total_steps`` optimizer steps; resumes from the latest checkpoint in ``ckpt_dir``.

    ``micro_batches(step)`` returns this process's micro-batches of one optimizer step (``run.grad_accum`` of them);
    ``loss_of(model, batch)`` their mean loss. Returns the (prepared) model.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, lr, cfg.weight_decay, optim, betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lambda(total_steps, cfg.warmup_frac, floor))
    model, opt = run.accelerator.prepare(model, opt)
    ckpt = Checkpointer(ckpt_dir, keep=cfg.keep_ckpts, accelerator=run.accelerator)

    def state():
        target = TrainableState(run.accelerator.unwrap_model(model)) if adapter_only else model
        return {"model": target, "opt": opt, "sched": sched}

    step, _ = ckpt.resume(state())
    model.train()
    bar = run.progress(total=total_steps, initial=step, desc=tag)
    loss = None
    while step < total_steps:
        for batch in micro_batches(step):
            with run.accelerator.accumulate(model), run.accelerator.autocast():
                loss = loss_of(model, batch)
                run.accelerator.backward(loss)
                if run.accelerator.sync_gradients and cfg.grad_clip > 0:
                    run.accelerator.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                opt.zero_grad()
        sched.step()
        step += 1
        bar.update(1)
        if loss is not None and (step % cfg.log_every == 0 or step == total_steps):
            run.log(step, **{f"{tag}/loss": loss.item(), f"{tag}/lr": sched.get_last_lr()[0]})
        if on_step is not None:
            on_step(step, run.accelerator.unwrap_model(model))
        if (cfg.ckpt_every and step % cfg.ckpt_every == 0) or step == total_steps:
            ckpt.save(step, state())
    bar.close()
    return model
