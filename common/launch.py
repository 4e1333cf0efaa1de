"""Run set-up on top of Hugging Face Accelerate: the Accelerator, seeding, a self-describing run folder, logging.

``run = start(cfg, paper="dmd2")`` builds the Accelerator (mixed precision and gradient accumulation from the
config's global-batch contract), seeds every RNG and writes ``<out_dir>/<paper>/<run_name>/`` with ``config.json``,
``env.json`` (git commit and dirty flag, library versions, device, world size) and ``metrics.jsonl``. Accelerate does
the device placement, DDP wrapping and trackers; this module only decides what goes where on disk.

Left out: online trackers (only tensorboard is wired, and only on request) and cluster schedulers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from common.checkpoint import atomic_write_json, atomic_write_text
from common.config import batch_math, config_to_dict

REPO_ROOT = Path(__file__).resolve().parent.parent
_LIBS = (
    "torch",
    "torchvision",
    "diffusers",
    "transformers",
    "accelerate",
    "datasets",
    "timm",
    "torchmetrics",
    "clean-fid",
    "numpy",
    "peft",
)


def git_commit() -> str:
    """The commit of the repository, with '-dirty' when tracked files outside results/ differ from it."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        if sha.returncode:
            return "unknown"
        dirty = subprocess.run(
            # records and the tables built from them are outputs, not code: writing them must not mark runs dirty
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results", ":!README.md"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _LIBS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def peak_memory_mb() -> float:
    """Peak accelerator memory when on CUDA, else the process's peak resident set size."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def seed_everything(seed: int, per_process: bool = False) -> int:
    """Seed python, numpy and torch (all devices). With per_process, offset by the process rank."""
    if per_process:
        seed += int(os.environ.get("RANK", "0"))
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return seed


def env_info(accelerator=None) -> dict:
    info = {
        "git_commit": git_commit(),
        "versions": library_versions(),
        "platform": platform.platform(),
        "argv": sys.argv,
        "torch_threads": torch.get_num_threads(),
    }
    if accelerator is not None:
        info.update(
            device=str(accelerator.device),
            device_name=torch.cuda.get_device_name() if accelerator.device.type == "cuda" else platform.processor(),
            world_size=accelerator.num_processes,
            distributed_type=str(accelerator.distributed_type),
            mixed_precision=accelerator.mixed_precision,
        )
    return info


@dataclass
class Run:
    """One training or evaluation run: its Accelerator, folder and logs."""

    accelerator: object
    cfg: object
    paper: str
    dir: Path
    per_device_batch: int
    grad_accum: int
    started: float = field(default_factory=time.time)
    _log_trimmed: bool = False

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    def path(self, *parts: str) -> Path:
        p = self.dir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def log(self, step: int, **metrics) -> None:
        """Append one JSON line to metrics.jsonl (main process) and forward to trackers."""
        clean = {
            k: (float(v) if isinstance(v, (int, float, np.floating, torch.Tensor)) else v) for k, v in metrics.items()
        }
        if self.is_main:
            if not self._log_trimmed:
                self._trim_log(step)
            with open(self.dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "time_s": round(time.time() - self.started, 3), **clean}) + "\n")
        if self.cfg.trackers:
            self.accelerator.log({k: v for k, v in clean.items() if isinstance(v, float)}, step=step)

    def _trim_log(self, step: int) -> None:
        """On the first line of an invocation, drop lines at or after ``step`` that a killed earlier invocation
        logged past its last checkpoint, so a resumed run's metrics.jsonl has each step once."""
        self._log_trimmed = True
        path = self.dir / "metrics.jsonl"
        if not path.exists():
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get("step", -1) < step:
                    keep.append(line)
            except json.JSONDecodeError:  # a torn last line of a killed run
                continue
        atomic_write_text("".join(k + "\n" for k in keep), path)

    def progress(self, iterable=None, total=None, desc: str = "", initial: int = 0):
        from tqdm.auto import tqdm

        return tqdm(
            iterable,
            total=total,
            desc=desc,
            initial=initial,
            disable=not self.is_main,
            dynamic_ncols=True,
            mininterval=2.0,
        )

    def finish(self, close: bool = True) -> None:
        """End trackers and, with ``close``, tear down the process group so gloo workers exit cleanly.

        A pipeline that starts several runs in one process (e.g. a base run, then a fine-tuning run) passes
        ``close=False`` for all but its last: Accelerate keeps its process state in a singleton that does not
        initialise a destroyed group again, so the next run's first collective would fail."""
        self.accelerator.wait_for_everyone()
        if close:
            self.accelerator.end_training()  # finishes the trackers and destroys the group
            close_distributed()
        else:
            for tracker in self.accelerator.trackers:
                tracker.finish()


def close_distributed() -> None:
    """Tear down the default process group, if any (the end of a multi-run pipeline; see ``Run.finish``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def map_sharded(run: Run, items: list, fn, chunk: int = 1) -> list:
    """``fn(part, index)`` over consecutive chunks of ``chunk`` items, the chunks split between the processes
    (Accelerate's ``split_between_processes``: a contiguous share each) and the outputs, one list per chunk, gathered
    back to every process in the original order (``gather_object``). Every process must call it. The chunks do not
    depend on the number of processes, so when ``fn`` depends only on its chunk and index (seed any sampling from
    the index) the result is the same for any world size."""
    if chunk < 1:
        raise ValueError(f"chunk: {chunk} must be at least 1")
    parts = [items[k : k + chunk] for k in range(0, len(items), chunk)]
    if run.world_size == 1:
        return [y for i, part in enumerate(parts) for y in fn(part, i)]
    from accelerate.utils import gather_object

    with run.accelerator.split_between_processes(list(range(len(parts)))) as mine:
        local = [list(fn(parts[i], i)) for i in mine]
    return [y for out in gather_object(local) for y in out]


# Keys that may change when a run is resumed (extend training, log or checkpoint differently).
# out_dir is where the folder lives, not what it holds: a moved folder (or `./runs` for `runs`) resumes.
RESUMABLE_CHANGES = frozenset(
    {"steps", "log_every", "ckpt_every", "keep_ckpts", "trackers", "results_dir", "out_dir", "num_threads"}
)


def check_same_run(run_dir: Path, cfg) -> None:
    """Refuse to resume a run folder that holds a run of a different configuration.

    A key the folder's config.json lacks (a field added to the code since) counts as unchanged when it holds the
    field's default.
    """
    path = run_dir / "config.json"
    if not path.exists():
        return
    old = json.loads(path.read_text())
    as_json = lambda d: json.loads(json.dumps(d, default=str))  # noqa: E731 - tuples become lists, as on disk
    new = as_json(config_to_dict(cfg))
    defaults = as_json({f.name: f.default for f in dataclasses.fields(cfg) if f.default is not dataclasses.MISSING})
    for key in set(new) - set(old):
        if key in defaults:
            old[key] = defaults[key]
    differ = sorted(k for k in set(old) | set(new) if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k))
    if differ:
        print(
            f"error: {run_dir} holds a run with a different config ({', '.join(differ)} differ); "
            "choose another folder with --set run_name=NAME or delete it",
            file=sys.stderr,
        )
        raise SystemExit(2)


def start(cfg, paper: str, *, find_unused_parameters: bool = False) -> Run:
    """Build the Accelerator from cfg, seed, create the run folder and describe it on disk.

    find_unused_parameters: for models whose forward leaves some parameters out of the loss (DDP must not wait for
    their gradients), e.g. a retrieval student whose unused heads stay in the module.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    run_dir = Path(cfg.out_dir) / paper / cfg.resolved_run_name
    accelerator_probe_world = int(os.environ.get("WORLD_SIZE", "1"))
    per_device, accum = batch_math(cfg.global_batch, cfg.per_device_batch, accelerator_probe_world)
    # Without an accelerator, say cpu=True so that torchrun / `accelerate launch` processes form a gloo group.
    no_accel = not (torch.cuda.is_available() or torch.backends.mps.is_available())
    accelerator = Accelerator(
        cpu=no_accel,
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=accum,
        log_with=["tensorboard"] if cfg.trackers == "tensorboard" else None,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tb")),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)]
        if find_unused_parameters
        else None,
    )
    assert per_device * accum * accelerator.num_processes == cfg.global_batch, "global batch contract violated"
    seed_everything(cfg.seed)
    check_same_run(run_dir, cfg)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(config_to_dict(cfg), run_dir / "config.json")
        atomic_write_json(
            {**env_info(accelerator), "per_device_batch": per_device, "grad_accum": accum}, run_dir / "env.json"
        )
    if cfg.trackers:
        accelerator.init_trackers(
            paper, config={k: v for k, v in config_to_dict(cfg).items() if isinstance(v, (int, float, str, bool))}
        )
    accelerator.wait_for_everyone()
    return Run(
        accelerator=accelerator, cfg=cfg, paper=paper, dir=run_dir, per_device_batch=per_device, grad_accum=accum
    )
