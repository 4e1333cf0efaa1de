"""Gradient check under data parallelism; run by tests/test_distributed.py.

Every process builds the same model and the same global batch, takes its shard, and runs one optimizer step's worth
of forward/backward through the common launch layer (with gradient accumulation when per_device_batch asks for it).
The reduced gradient is saved by rank 0 for comparison with a single-process run on the whole global batch.
"""

import sys

import torch
from torch import nn

from common.checkpoint import atomic_torch_save
from common.config import BaseConfig
from common.launch import start


def make_model_and_batch(global_batch: int):
    torch.manual_seed(123)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
    x = torch.randn(global_batch, 6)
    y = torch.randn(global_batch, 1)
    return model, x, y


def main(out_path: str, global_batch: int, per_device_batch: int):
    cfg = BaseConfig(
        preset="dist", out_dir=out_path + ".runs", global_batch=global_batch, per_device_batch=per_device_batch, steps=1
    )
    run = start(cfg, paper="dist")
    acc = run.accelerator
    model, x, y = make_model_and_batch(global_batch)
    model = acc.prepare(model)
    shard = global_batch // run.world_size
    xs, ys = x[acc.process_index * shard : (acc.process_index + 1) * shard], y[acc.process_index * shard :][:shard]
    for i in range(run.grad_accum):
        sl = slice(i * run.per_device_batch, (i + 1) * run.per_device_batch)
        with acc.accumulate(model):
            loss = nn.functional.mse_loss(model(xs[sl]), ys[sl])
            acc.backward(loss)
    grads = {n: p.grad.detach().clone() for n, p in acc.unwrap_model(model).named_parameters()}
    if run.is_main:
        atomic_torch_save({"grads": grads, "world_size": run.world_size, "grad_accum": run.grad_accum}, out_path)
    run.finish()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
