"""A run killed after a checkpoint and resumed by the same command ends with the same parameters."""

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
SCRIPT = ROOT / "tests" / "tiny_train.py"


def run(out_dir, *extra, crash_after=0):
    env = {**os.environ, "TINY_CRASH_AFTER": str(crash_after)}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--set", f"out_dir={out_dir}", *extra],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def final_state(out_dir):
    return torch.load(Path(out_dir) / "tiny" / "tiny" / "default-seed0" / "final.pt", weights_only=False)


def test_resume_after_kill_matches_uninterrupted(tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert run(straight).returncode == 0
    killed = run(broken, crash_after=12)  # dies at step 12; last checkpoint at step 10
    assert killed.returncode != 0
    ckpts = sorted((broken / "tiny" / "tiny" / "default-seed0" / "checkpoints").glob("ckpt-*.pt"))
    assert [p.name for p in ckpts] == ["ckpt-00000005.pt", "ckpt-00000010.pt"]
    resumed = run(broken)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = final_state(straight), final_state(broken)
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"


def test_checkpoints_rotate_and_no_temp_files_left(tmp_path):
    assert run(tmp_path, "keep_ckpts=2", "ckpt_every=3").returncode == 0
    folder = tmp_path / "tiny" / "tiny" / "default-seed0" / "checkpoints"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["ckpt-00000015.pt", "ckpt-00000018.pt"]


def test_rerun_with_a_different_config_is_refused(tmp_path):
    assert run(tmp_path, "steps=5").returncode == 0
    assert run(tmp_path, "steps=10").returncode == 0  # extending a run is a resume
    other = run(tmp_path, "lr=0.5")
    assert other.returncode == 2 and "lr differ" in other.stderr


def test_new_field_at_its_default_still_resumes(tmp_path):
    import dataclasses
    import json

    from tiny_train import PRESETS

    from common.launch import check_same_run

    cfg = dataclasses.replace(PRESETS["tiny"], preset="tiny")
    folder = tmp_path / "run"
    folder.mkdir()
    old = json.loads(json.dumps(dataclasses.asdict(cfg)))
    del old["ema"]  # a config written before the field existed
    (folder / "config.json").write_text(json.dumps(old))
    check_same_run(folder, cfg)  # ema holds its default: same run
    try:
        check_same_run(folder, dataclasses.replace(cfg, ema=0.5))
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("a changed new field must be refused")


def test_training_time_accumulates_over_resumes(tmp_path):
    import time

    from common.checkpoint import Checkpointer

    gen = torch.Generator()
    first = Checkpointer(tmp_path, keep=2)
    time.sleep(0.2)
    first.save(1, {"g": gen})
    second = Checkpointer(tmp_path, keep=2)
    assert second.train_time_s() < 0.1  # nothing resumed yet
    second.resume({"g": gen})
    assert second.train_time_s() >= 0.2
