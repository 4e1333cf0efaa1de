"""Checkpoints through accelerate's save_state (the path FSDP runs take): 2 gloo processes, kill and resume.

Accelerate runs FSDP on GPUs only, so on CPU the same Checkpointer path is forced with TINY_SHARDED=1 on a DDP run:
every rank writes through ``accelerator.save_state`` into a temporary folder that is renamed when all are done, the
per-rank objects accelerate does not manage (EMA copy, LR scheduler, each rank's data generator) go to meta.pt, and
a killed run resumed by the same command ends with the parameters of an uninterrupted one.
"""

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = Path(sys.executable).with_name("torchrun")


def run(out_dir, crash_after=0):
    env = {**os.environ, "TINY_CRASH_AFTER": str(crash_after), "TINY_SHARDED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(ROOT / "tests" / "tiny_train.py")]
    cmd += ["--set", f"out_dir={out_dir}", "steps=12", "ckpt_every=4"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=out_dir.parent)


def test_sharded_checkpoints_resume_like_an_uninterrupted_run(tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    ok = run(straight)
    assert ok.returncode == 0, ok.stderr[-3000:]
    folder = broken / "tiny" / "tiny" / "default-seed0" / "checkpoints"
    assert run(broken, crash_after=6).returncode != 0  # dies at step 6; last complete checkpoint at step 4
    assert sorted(p.name for p in folder.iterdir()) == ["ckpt-00000004"]
    assert (folder / "ckpt-00000004" / "meta.pt").is_file()
    resumed = run(broken)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["ckpt-00000008", "ckpt-00000012"]  # rotation keeps two, no temporary folders left
    a = torch.load(straight / "tiny" / "tiny" / "default-seed0" / "final.pt", weights_only=False)
    b = torch.load(broken / "tiny" / "tiny" / "default-seed0" / "final.pt", weights_only=False)
    assert a["world"] == b["world"] == 2
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"
