"""A minimal training script on the common layer, used by the resume and distributed tests.

    python tests/tiny_train.py --set out_dir=/tmp/x steps=20 ckpt_every=5
    torchrun --standalone --nproc_per_node 2 tests/tiny_train.py ...

It exercises everything a paper's train.py uses: config CLI, Accelerator with gradient accumulation, a data stream
whose position is checkpointed, dropout (global RNG), AdamW, an LR schedule, an EMA copy and rotating checkpoints.
The environment variable TINY_CRASH_AFTER=N ends the process abruptly (os._exit) after N steps of this invocation,
like a kill, without changing the command. TINY_SHARDED=1 writes checkpoints through accelerate's save_state (the
path FSDP runs take); TINY_FSDP=1 also wraps the model with FSDP through accelerate.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch
from torch import nn

from common.checkpoint import Checkpointer, atomic_torch_save
from common.config import BaseConfig, cfg_field, parse_cli
from common.launch import start


@dataclass(frozen=True)
class Config(BaseConfig):
    lr: float = cfg_field(1e-2, "AdamW learning rate", min=0.0)
    ema: float = cfg_field(0.9, "EMA decay", min=0.0, max=1.0)


PRESETS = {"tiny": Config(steps=20, global_batch=8, log_every=5, ckpt_every=5)}


def batch_for(generator: torch.Generator, n: int):
    x = torch.randn(n, 4, generator=generator)
    return x, x.sum(1, keepdim=True).sin()


def main(argv=None):
    cfg = parse_cli(Config, PRESETS, argv, __doc__)
    if os.environ.get("TINY_FSDP") == "1":
        os.environ.setdefault("ACCELERATE_USE_FSDP", "true")
    run = start(cfg, paper="tiny")
    acc = run.accelerator
    model = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Dropout(0.1), nn.Linear(32, 1))
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + 0.05 * s))
    data_gen = torch.Generator().manual_seed(cfg.seed + 1000 * acc.process_index)
    model, opt = acc.prepare(model, opt)
    sharded = True if os.environ.get("TINY_SHARDED") == "1" else None
    ckpt = Checkpointer(run.dir / "checkpoints", keep=cfg.keep_ckpts, accelerator=acc, sharded=sharded)
    objects = {"model": model, "ema": ema, "opt": opt, "sched": sched, "data": data_gen}
    start_step, _ = ckpt.resume(objects)
    crash_after = int(os.environ.get("TINY_CRASH_AFTER", "0"))
    done_here = 0
    for step in run.progress(range(start_step, cfg.steps), total=cfg.steps, initial=start_step, desc="tiny"):
        for _ in range(run.grad_accum):
            with acc.accumulate(model):
                x, y = batch_for(data_gen, run.per_device_batch)
                loss = nn.functional.mse_loss(model(x), y)
                acc.backward(loss)
                opt.step()
                opt.zero_grad()
        sched.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), acc.unwrap_model(model).parameters()):
                pe.lerp_(pm, 1 - cfg.ema)
        if (step + 1) % cfg.log_every == 0:
            run.log(step + 1, loss=loss.item())
        if cfg.ckpt_every and (step + 1) % cfg.ckpt_every == 0:
            ckpt.save(step + 1, objects)
        done_here += 1
        if crash_after and done_here >= crash_after:
            os._exit(1)
    if run.is_main:
        final = {"model": acc.unwrap_model(model).state_dict(), "ema": ema.state_dict(), "world": run.world_size}
        atomic_torch_save(final, run.path("final.pt"))
    run.finish()


if __name__ == "__main__":
    main()
