"""DMD2: every preset's smoke twin through the real entry point, resume, bad input, and the exported student."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _run(args, tmp_path, check=True):
    cmd = [
        sys.executable,
        "-m",
        "papers.dmd2.train",
        *args,
        "--set",
        f"out_dir={tmp_path}/runs",
        f"results_dir={tmp_path}/res",
        f"cache_dir={tmp_path}/cache",
    ]
    p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def _records(tmp_path, preset):
    return [json.loads(f.read_text()) for f in sorted((tmp_path / "res" / "dmd2" / preset).glob("*.json"))]


def test_toy2d_smoke_records_resume_and_export(tmp_path):
    _run(["--preset", "toy2d-smoke"], tmp_path)
    recs = _records(tmp_path, "toy2d-smoke")
    assert {r["method"] for r in recs} == {"dmd2", "teacher (analytic, ODE)"}
    student = next(r for r in recs if r["method"] == "dmd2")
    assert student["nfe"] == 1 and student["sampling_throughput"] > 0 and "SWD" in student["metrics"]
    run_dir = tmp_path / "runs" / "dmd2" / "toy2d-smoke" / "dmd2-seed0"
    assert (run_dir / "samples.png").is_file() and (run_dir / "student" / "model.safetensors").is_file()
    # re-running resumes from the final checkpoint (no iteration is repeated)
    p = _run(["--preset", "toy2d-smoke"], tmp_path)
    assert "0/3" not in p.stderr.replace("3/3", "")
    from common.diffusion.teachers import load_small_denoiser

    net = load_small_denoiser(run_dir / "student", expect={"kind": "mlp"})
    assert net.dim == 2


@pytest.mark.parametrize("preset", ["digits-smoke", "imagenet64-smoke"])
def test_image_smoke(preset, tmp_path):
    _run(["--preset", preset], tmp_path)
    recs = _records(tmp_path, preset)
    assert any(r["method"] == "dmd2" for r in recs)


@pytest.mark.parametrize("preset", ["sd15-smoke", "sdxl-smoke", "sdxl4-smoke"])
def test_sd_smoke_exports_loadable_pipeline(preset, tmp_path):
    import torch
    from diffusers import DiffusionPipeline

    _run(["--preset", preset], tmp_path)
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "runs" / "dmd2" / preset / "dmd2-seed0" / "pipeline")
    ts = pipe.scheduler.config["dmd2_timesteps"]
    assert ts == ([999, 749, 499, 249] if preset == "sdxl4-smoke" else [399 if preset == "sdxl-smoke" else 999])
    out = pipe(
        prompt="a cat",
        num_inference_steps=len(ts),
        timesteps=ts,
        guidance_scale=0.0,
        height=64,
        width=64,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    assert out.images.shape == (1, 64, 64, 3)
    assert type(pipe).__name__ == ("StableDiffusionPipeline" if preset == "sd15-smoke" else "StableDiffusionXLPipeline")


def test_bad_inputs_fail_clearly(tmp_path):
    p = _run(["--preset", "no-such-preset"], tmp_path, check=False)
    assert p.returncode == 2 and "does not exist" in p.stderr
    p = _run(["--preset", "digits", "--set", f"teacher_path={tmp_path}/nothing"], tmp_path, check=False)
    assert p.returncode == 2 and "teacher_path:" in p.stderr and "does not exist" in p.stderr
    p = _run(["--preset", "digits-smoke", "--set", f"teacher_path={tmp_path}/nothing"], tmp_path, check=False)
    assert p.returncode == 2 and "would ignore it" in p.stderr  # a smoke twin does not silently drop a path
    p = _run(["--preset", "toy2d-smoke", "--set", "gen_lr=1e30", "fake_lr=1e30"], tmp_path, check=False)
    assert p.returncode != 0 and ("non-finite" in p.stderr or "is nan" in p.stderr or "is inf" in p.stderr)
    assert not list((tmp_path / "res").rglob("*.json")) if (tmp_path / "res").exists() else True


def test_claims_definitions_share_budgets():
    from papers.dmd2.claims import CLAIM_SETS, CLAIMS

    for c, (_, _, variants) in CLAIMS.items():
        budgets = {
            (v.get("steps", CLAIM_SETS[c].get("steps")), v.get("ttur_ratio", CLAIM_SETS[c].get("ttur_ratio")))
            for v in variants.values()
        }
        gen_steps = {int(s) // int(r) for s, r in budgets}
        assert len(gen_steps) == 1, (c, budgets)  # same number of generator updates for every variant


def test_streamed_eval_through_the_entry_point(tmp_path):
    """eval_samples larger than eval_batch: every sample is drawn and written, in bounded batches."""
    _run(["--preset", "imagenet64-smoke", "--set", "eval_samples=5", "eval_batch=2"], tmp_path)
    run_dir = tmp_path / "runs" / "dmd2" / "imagenet64-smoke" / "dmd2-seed0"
    for who in ("student", "teacher"):
        assert len(list((run_dir / "samples" / who).glob("*.png"))) == 5
    rec = next(r for r in _records(tmp_path, "imagenet64-smoke") if r["method"] == "dmd2")
    assert rec["protocol"]["samples"] == 5 and rec["protocol"]["batch"] == 2


def test_ema_copies_are_evaluated_and_exported(tmp_path):
    _run(["--preset", "toy2d-smoke", "--set", "ema_rates=0.9"], tmp_path)
    rec = next(r for r in _records(tmp_path, "toy2d-smoke") if r["method"] == "dmd2")
    assert "SWD (ema 0.9)" in rec["metrics"]
    run_dir = tmp_path / "runs" / "dmd2" / "toy2d-smoke" / "dmd2-seed0"
    assert (run_dir / "student_ema0.9" / "model.safetensors").is_file()


def test_teacher_baseline_and_student_do_not_depend_on_eval_every(tmp_path):
    """Validation during training (eval_every) and extra student copies (best, EMA) leave the teacher's record and the
    last student's metrics unchanged: each sampled model draws from its own noise stream."""
    _run(["--preset", "toy2d-smoke", "--set", "eval_every=0"], tmp_path / "a")
    _run(["--preset", "toy2d-smoke", "--set", "eval_every=1", "ema_rates=0.9"], tmp_path / "b")
    a, b = ({r["method"]: r["metrics"] for r in _records(tmp_path / d, "toy2d-smoke")} for d in ("a", "b"))
    assert "SWD (best)" in b["dmd2"] and "SWD (best)" not in a["dmd2"]
    assert a["teacher (analytic, ODE)"] == b["teacher (analytic, ODE)"]
    last = lambda m: {k: v for k, v in m.items() if "(" not in k and "oscillation" not in k}  # noqa: E731
    assert last(a["dmd2"]) == last(b["dmd2"])
