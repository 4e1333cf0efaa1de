"""Atomic, rotating, resumable checkpoints.

One file per checkpoint, ``ckpt-<step>.pt``, holding the state of every object passed in (models unwrapped from
DDP, EMA copies, optimizers, LR schedulers, torch.Generator objects), the python/numpy/torch RNG states, the step,
the world size, the wall time spent so far (so that a resumed run reports its whole training time) and caller
data such as the data-loader position. Files are written to a temporary name and renamed,
so a kill leaves either the old or the new checkpoint, never half of one. Loading goes through the CPU first.

Accelerate's ``save_state`` writes a folder of files non-atomically and does not record the data position, which is
why this small module exists.

Left out: sharded (FSDP) checkpoints; at full scale use accelerate's ``save_state`` with FSDP's state-dict config.
"""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


def _atomic_write(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_torch_save(obj, path) -> Path:
    return _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path) -> Path:
    return _atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_json(obj, path) -> Path:
    return atomic_write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", path)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _state_of(obj, accelerator):
    if isinstance(obj, torch.Generator):
        return obj.get_state()
    if accelerator is not None and isinstance(obj, torch.nn.Module):
        obj = accelerator.unwrap_model(obj)
    return obj.state_dict()


def _load_into(obj, state, accelerator) -> None:
    if isinstance(obj, torch.Generator):
        obj.set_state(state)
        return
    if accelerator is not None and isinstance(obj, torch.nn.Module):
        obj = accelerator.unwrap_model(obj)
    obj.load_state_dict(state)


class Checkpointer:
    """Save, rotate and resume the training state in ``directory``."""

    def __init__(self, directory, keep: int = 2, accelerator=None):
        self.dir = Path(directory)
        self.keep = keep
        self.accelerator = accelerator
        self._prior_time_s, self._since = 0.0, time.monotonic()

    def train_time_s(self) -> float:
        """Wall time spent in this run over all invocations: the time stored in the resumed checkpoint plus the
        time since this invocation resumed (or since the Checkpointer was made, when nothing was resumed)."""
        return self._prior_time_s + time.monotonic() - self._since

    @property
    def _world(self) -> int:
        return self.accelerator.num_processes if self.accelerator is not None else 1

    @property
    def _is_main(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    def all(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.dir.iterdir() if (m := _NAME.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        found = self.all()
        return found[-1] if found else None

    def _gather_rng(self) -> list:
        """RNG states of every process, indexed by rank (ranks may be seeded differently)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            states = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, rng_state())
            return states
        return [rng_state()]

    def save(self, step: int, objects: dict[str, Any], extra: dict | None = None) -> Path | None:
        """Write the state of ``objects`` at ``step`` (main process only) and drop the oldest beyond ``keep``."""
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
        payload = {
            "step": step,
            "world_size": self._world,
            "objects": {k: _state_of(v, self.accelerator) for k, v in objects.items()},
            "rng": self._gather_rng(),
            "extra": extra or {},
            "train_time_s": self.train_time_s(),
        }
        path = None
        if self._is_main:
            path = atomic_torch_save(payload, self.dir / f"ckpt-{step:08d}.pt")
            for old in self.all()[: -self.keep]:
                old.unlink(missing_ok=True)
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
        return path

    def resume(self, objects: dict[str, Any]) -> tuple[int, dict]:
        """Load the latest checkpoint into ``objects``; returns (step, extra), or (0, {}) when there is none."""
        path = self.latest()
        if path is None:
            return 0, {}
        payload = torch.load(path, map_location="cpu", weights_only=False)
        if payload["world_size"] != self._world:
            raise RuntimeError(
                f"{path} was written with world size {payload['world_size']} but this run has {self._world}; "
                "resume with the same number of processes or start a new run folder (--set run_name=...)"
            )
        missing = set(objects) - set(payload["objects"])
        if missing:
            raise RuntimeError(f"{path} has no state for {sorted(missing)}; it belongs to a different configuration")
        for name, obj in objects.items():
            _load_into(obj, payload["objects"][name], self.accelerator)
        rank = self.accelerator.process_index if self.accelerator is not None else 0
        set_rng_state(payload["rng"][rank])
        self._prior_time_s, self._since = payload.get("train_time_s", 0.0), time.monotonic()
        return payload["step"], payload["extra"]
