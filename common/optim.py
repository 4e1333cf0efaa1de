"""Optimiser helpers shared by the fine-tuning papers: two parameter groups and warm-up learning-rate schedules.

* ``param_groups``: encoder parameters at ``lr``, newly added heads at ``lr * head_mult`` (matchmaker's two
  parameter groups: BERT 7e-6, "special" parameters 7e-4 in its ``config/train/defaults.yaml``).
* ``warmup_linear_decay``: LambdaLR factor, linear warm-up then linear decay to 0 at ``total`` steps.
* ``warmup_cosine``: LambdaLR factor, linear warm-up then cosine decay to ``floor`` (matchmaker's default schedule).

Left out: matchmaker's stepping of the schedule every 100 batches (we step every batch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

HEAD_NAMES = ("classifier", "pooler", "compress")


def param_groups(
    model: torch.nn.Module, lr: float, head_mult: float, wd: float, head_names: Sequence[str] = HEAD_NAMES
) -> list[dict]:
    """Two AdamW groups: the trainable encoder at ``lr``, parameters whose name contains one of ``head_names`` at
    ``lr * head_mult``. Frozen parameters are left out of both."""
    head = [p for n, p in model.named_parameters() if p.requires_grad and any(h in n for h in head_names)]
    ids = {id(p) for p in head}
    body = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    return [{"params": body, "lr": lr, "weight_decay": wd}, {"params": head, "lr": lr * head_mult, "weight_decay": wd}]


def warmup_linear_decay(warmup: int, total: int) -> Callable[[int], float]:
    """LR factor at step s: min(1, (s+1)/warmup) * max(0, 1 - s/total)."""
    return lambda s: min(1.0, (s + 1) / max(1, warmup)) * max(0.0, 1.0 - s / max(1, total))


def warmup_cosine(warmup: int, total: int, floor: float = 0.0) -> Callable[[int], float]:
    """LR factor at step s: linear warm-up over ``warmup`` steps, then cosine from 1 down to ``floor`` at ``total``."""

    def f(s: int) -> float:
        if s < warmup:
            return (s + 1) / max(1, warmup)
        p = min(1.0, (s - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * p))

    return f
