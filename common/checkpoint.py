"""Atomic, rotating, resumable checkpoints.

One file per checkpoint, ``ckpt-<step>.pt``, holding the state of every object passed in (models unwrapped from
DDP, EMA copies, optimizers, LR schedulers, torch.Generator objects), the python/numpy/torch RNG states, the step,
the world size, the wall time spent so far (so that a resumed run reports its whole training time) and caller
data such as the data-loader position. Files are written to a temporary name and renamed,
so a kill leaves either the old or the new checkpoint, never half of one. Loading goes through the CPU first.

Accelerate's ``save_state`` writes a folder of files non-atomically and does not record the data position, which is
why this small module exists. Sharded training (FSDP through Accelerate) is the exception: there a checkpoint is a
folder ``ckpt-<step>/`` written by every rank through ``accelerator.save_state`` (the sharded model and optimizer
states, in the state-dict type of the accelerate FSDP config) into a temporary folder that the main process renames
once all ranks are done, plus ``meta.pt`` with the step, caller data and, per rank, the objects accelerate does not
manage (EMA copies, unprepared schedulers, torch.Generator objects). Resuming calls ``accelerator.load_state``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

_NAME = re.compile(r"^ckpt-(\d+)\.pt$")
_DIR_NAME = re.compile(r"^ckpt-(\d+)$")
META = "meta.pt"


def is_sharded(accelerator) -> bool:
    """True when the accelerator shards parameters (FSDP): checkpoints then go through accelerate's save_state."""
    if accelerator is None:
        return False
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


class CheckpointError(RuntimeError):
    """No checkpoint of this run folder can be resumed; the message names the file(s) and the fix."""


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


def atomic_write_bytes(data: bytes, path) -> Path:
    return _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(text: str, path) -> Path:
    return atomic_write_bytes(text.encode(), path)


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

    def __init__(self, directory, keep: int = 2, accelerator=None, sharded: bool | None = None):
        self.dir = Path(directory)
        self.keep = keep
        self.accelerator = accelerator
        self.sharded = is_sharded(accelerator) if sharded is None else sharded
        if self.sharded and accelerator is None:
            raise ValueError("sharded checkpoints need the accelerator that prepared the models")
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
        if self.sharded:  # complete folders only: meta.pt is written last, just before the rename
            found = [
                (int(m.group(1)), p)
                for p in self.dir.iterdir()
                if (m := _DIR_NAME.match(p.name)) and (p / META).is_file()
            ]
        else:
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

    def _managed(self, obj) -> bool:
        """Objects accelerate's save_state already writes (prepared models, optimizers, schedulers)."""
        acc = self.accelerator
        registered = [*acc._models, *acc._optimizers, *acc._schedulers, *getattr(acc, "_custom_objects", [])]
        return any(
            obj is r or getattr(r, "optimizer", None) is obj or getattr(r, "scheduler", None) is obj for r in registered
        )

    def _save_sharded(self, step, objects, extra) -> Path:
        acc = self.accelerator
        final, tmp = self.dir / f"ckpt-{step:08d}", self.dir / f".ckpt-{step:08d}.tmp"
        if acc.is_main_process:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))  # every rank writes its shards
        own = {k: _state_of(v, acc) for k, v in objects.items() if not self._managed(v)}
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            per_rank = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(per_rank, own)
        else:
            per_rank = [own]
        acc.wait_for_everyone()
        if acc.is_main_process:
            meta = {
                "step": step,
                "world_size": self._world,
                "objects_per_rank": per_rank,
                "extra": extra or {},
                "train_time_s": self.train_time_s(),
            }
            atomic_torch_save(meta, tmp / META)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in self.all()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def save(self, step: int, objects: dict[str, Any], extra: dict | None = None) -> Path | None:
        """Write the state of ``objects`` at ``step`` (main process only) and drop the oldest beyond ``keep``."""
        if self.sharded:
            return self._save_sharded(step, objects, extra)
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

    def _read(self, path: Path) -> dict:
        """Load one checkpoint file, or raise CheckpointError saying why it is unusable."""
        try:
            payload = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # truncated zip, random bytes, empty file: every loader error means "unreadable"
            raise CheckpointError(f"{path} is unreadable ({type(e).__name__})") from None
        if not isinstance(payload, dict) or not {"step", "world_size", "objects", "rng"} <= set(payload):
            raise CheckpointError(f"{path} is not a checkpoint of this code (keys missing)")
        return payload

    def resume(self, objects: dict[str, Any]) -> tuple[int, dict]:
        """Load the newest intact checkpoint into ``objects``; returns (step, extra), or (0, {}) when there is none.

        An unreadable newest file (a truncated copy, an empty or foreign file) is skipped with a warning that names
        it, and the next newest is used; when none is intact, CheckpointError names them.
        """
        found = self.all()
        if not found:
            return 0, {}
        if self.sharded:
            return self._resume_sharded(found[-1], objects)
        bad = []
        for path in reversed(found):
            try:
                payload = self._read(path)
                break
            except CheckpointError as e:
                bad.append(path.name)
                if self._is_main:
                    print(f"warning: {e}; trying an older checkpoint", file=sys.stderr)
        else:
            raise CheckpointError(
                f"no intact checkpoint in {self.dir} ({', '.join(bad)} unreadable); delete them to start over"
            )
        if payload["world_size"] != self._world:
            raise CheckpointError(
                f"{path} was written with world size {payload['world_size']} but this run has {self._world}; "
                "resume with the same number of processes or start a new run folder (--set run_name=...)"
            )
        missing = set(objects) - set(payload["objects"])
        if missing:
            raise CheckpointError(f"{path} has no state for {sorted(missing)}; it belongs to a different configuration")
        for name, obj in objects.items():
            _load_into(obj, payload["objects"][name], self.accelerator)
        rank = self.accelerator.process_index if self.accelerator is not None else 0
        set_rng_state(payload["rng"][rank])
        self._prior_time_s, self._since = payload.get("train_time_s", 0.0), time.monotonic()
        return payload["step"], payload["extra"]

    def _resume_sharded(self, path: Path, objects: dict[str, Any]) -> tuple[int, dict]:
        acc = self.accelerator
        meta = torch.load(path / META, map_location="cpu", weights_only=False)
        if meta["world_size"] != self._world:
            raise CheckpointError(
                f"{path} was written by {meta['world_size']} processes but this run has {self._world}; sharded "
                "checkpoints resume with the same number of processes (or start a new run folder)"
            )
        acc.load_state(str(path))  # models, optimizers, schedulers and RNG states, per rank
        own = meta["objects_per_rank"][acc.process_index]
        missing = {k for k, v in objects.items() if not self._managed(v)} - set(own)
        if missing:
            raise CheckpointError(f"{path} has no state for {sorted(missing)}; it belongs to a different configuration")
        for name, obj in objects.items():
            if name in own:
                _load_into(obj, own[name], acc)
        self._prior_time_s, self._since = meta.get("train_time_s", 0.0), time.monotonic()
        return meta["step"], meta["extra"]


@contextlib.contextmanager
def atomic_dir(path):
    """Write a folder atomically: yields a temporary sibling folder, renamed to ``path`` when the block succeeds.

    For ``save_pretrained`` outputs and caches: a kill leaves the old folder (or none), never a folder with a
    config but no weights. An existing ``path`` is replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def complete_dir(path, required=("config.json",), any_of=("*.safetensors", "*.bin", "*.pt")) -> bool:
    """True when a saved model folder has its required files and at least one weights file."""
    p = Path(path)
    if not p.is_dir() or not all((p / r).exists() for r in required):
        return False
    return not any_of or any(any(p.glob(pattern)) for pattern in any_of)
