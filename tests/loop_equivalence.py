"""Harness: a paper's real training entry point in 2 gloo processes with gradient accumulation must end with the same
parameters as 1 process running the same global batch in the same micro-batches (1 x 4 micro-batches vs 2 x 2).

Used by the distributed tests of every paper; compares the final checkpoint of each run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _run(cmd, tmp: Path, timeout: int):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def final_state(out_dir: Path) -> dict:
    ckpts = sorted(out_dir.rglob("ckpt-*.pt"))
    assert ckpts, f"no checkpoint under {out_dir}"
    return torch.load(ckpts[-1], map_location="cpu", weights_only=False)


def run_both(module: str, preset: str, sets: list[str], tmp: Path, *, global_batch: int, timeout: int = 900):
    """Run 1 process with per_device_batch = global_batch / 4 and 2 processes with global_batch / 4 per device.

    Returns the final checkpoints (one_process, two_processes)."""
    micro = global_batch // 4
    states = []
    for nproc in (1, 2):
        out = tmp / f"p{nproc}"
        common = [
            "--preset",
            preset,
            "--set",
            f"global_batch={global_batch}",
            f"per_device_batch={micro}",
            f"out_dir={out}/runs",
            f"results_dir={out}/res",
            *sets,
        ]
        if nproc == 1:
            cmd = [sys.executable, "-m", module, *common]
        else:
            cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", module, *common]
        _run(cmd, tmp, timeout)
        states.append(final_state(out / "runs"))
    return states[0], states[1]


def assert_same(a: dict, b: dict, names: list[str], rtol=1e-4, atol=1e-5) -> int:
    """Every tensor of the named checkpoint objects agrees; returns how many tensors were compared."""
    assert a["world_size"] == 1 and b["world_size"] == 2
    count = 0
    for name in names:
        sa, sb = a["objects"][name], b["objects"][name]
        assert sa.keys() == sb.keys(), name
        for k, v in sa.items():
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                torch.testing.assert_close(sb[k], v, rtol=rtol, atol=atol, msg=f"{name}.{k} differs")
                count += 1
    return count
