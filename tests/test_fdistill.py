"""f-distill: the weighting h(r) = r^2 f''(r), its two normalisations, checkpointed and all-reduced statistics."""

import dataclasses
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from papers.fdistill.losses import DIVERGENCES, FWeighting, f_generator, h_weight  # noqa: E402


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_h_is_r2_times_second_derivative_of_f(name):
    r = torch.logspace(-1.3, 1.3, 41, dtype=torch.float64)
    d = 1e-4 * r
    f2 = (f_generator(name, r + d) - 2 * f_generator(name, r) + f_generator(name, r - d)) / d**2
    torch.testing.assert_close(h_weight(name, r), r**2 * f2, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_f_is_convex_and_vanishes_at_one(name):
    r = torch.logspace(-1, 1, 21, dtype=torch.float64)
    assert (h_weight(name, r) > 0).all()  # f'' > 0
    assert abs(f_generator(name, torch.tensor(1.0, dtype=torch.float64)).item()) < 1e-12


def test_mode_seeking_ordering_of_the_weights():
    """Table 1: as r grows (teacher density above the student's), the weights grow for the less mode-seeking f."""
    r = torch.tensor([0.5, 2.0], dtype=torch.float64)
    growth = {k: (h_weight(k, r)[1] / h_weight(k, r)[0]).item() for k in DIVERGENCES}
    assert growth["sf"] < growth["rkl"] == 1 < growth["sh"] < growth["kl"]
    assert 1 < growth["js"] < growth["kl"] and 1 < growth["jf"] < growth["kl"]


def _batch(n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    logit = 2.0 * torch.randn(n, generator=g) + 0.5
    t = 0.002 + 80 * torch.rand(n, generator=g) ** 3
    return logit, t


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_batch_mean_of_h_is_one(name):
    logit, t = _batch()
    h, _ = FWeighting(name)(logit, t)
    assert h.shape == (512,) and h.dtype == torch.float32
    assert abs(h.double().mean().item() - 1) < 1e-5
    if name == "rkl":
        assert torch.equal(h, torch.ones(512))  # normalisations skipped: exactly DMD2


def test_clamps():
    fw = FWeighting("kl", normalize_ratio=False, normalize_h=False)
    h, _ = fw(torch.tensor([100.0, -100.0, 0.0]), torch.ones(3))
    torch.testing.assert_close(h, torch.tensor([20.0, 0.1, 1.0]))


def test_stage1_bins_start_at_one_update_only_seen_bins_and_follow_the_ema():
    fw = FWeighting("kl", t_min=0.0 + 1e-3, t_max=10.0, num_bins=10, ratio_ema_rate=0.5, normalize_h=False)
    assert torch.equal(fw.bin_mean, torch.ones(10, dtype=torch.float64))
    logit = torch.log(torch.tensor([2.0, 4.0, 8.0]))
    t = torch.tensor([0.5, 0.5, 9.5])  # bins 0, 0 and 9
    h, _ = fw(logit, t)
    expect = torch.ones(10, dtype=torch.float64)
    expect[0], expect[9] = 0.5 * 1 + 0.5 * 3.0, 0.5 * 1 + 0.5 * 8.0
    torch.testing.assert_close(fw.bin_mean, expect)
    torch.testing.assert_close(h, torch.tensor([2 / 2.0, 4 / 2.0, 8 / 4.5]))
    before = fw.bin_mean.clone()
    fw(logit, t, update=False)  # critic / evaluation calls leave the statistics alone
    assert torch.equal(fw.bin_mean, before)


def test_stage1_rate0_makes_the_mean_ratio_one_per_bin():
    fw = FWeighting("kl", num_bins=10, normalize_h=False)
    logit, t = _batch(4096, seed=1)
    logit = logit.clamp(-2, 2)  # inside the ratio clamps, so the division is the whole story
    h, _ = fw(logit, t)
    b = fw.bins(t)
    for k in b.unique():
        assert abs(h[b == k].double().mean().item() - 1) < 1e-5


def test_log_bins():
    fw = FWeighting("js", t_min=0.002, t_max=80.0, num_bins=4, bin_space="log")
    assert fw.bins(torch.tensor([0.002, 0.05, 1.0, 80.0])).tolist() == [0, 1, 2, 3]


def test_statistics_survive_a_checkpoint_round_trip(tmp_path):
    fw = FWeighting("js", ratio_ema_rate=0.5)
    for s in range(3):
        fw(*_batch(seed=s))
    torch.save(fw.state_dict(), tmp_path / "fw.pt")
    fresh = FWeighting("js", ratio_ema_rate=0.5)
    assert not torch.equal(fresh.bin_mean, fw.bin_mean)
    fresh.load_state_dict(torch.load(tmp_path / "fw.pt", weights_only=True))
    logit, t = _batch(seed=9)
    torch.testing.assert_close(fresh(logit, t)[0], fw(logit, t)[0], rtol=0, atol=0)
    assert torch.equal(fresh.bin_mean, fw.bin_mean)


def _dist_worker(rank, world, store_path, out_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world)
    logit, t = _batch(512, seed=3)
    fw = FWeighting("kl", ratio_ema_rate=0.5)
    hs = []
    for _ in range(2):
        h, _ = fw(logit[rank::world], t[rank::world])
        hs.append(h)
    torch.save({"h": hs, "bin_mean": fw.bin_mean}, f"{out_path}.{rank}")
    dist.destroy_process_group()


def test_two_processes_match_one_process_on_the_global_batch(tmp_path):
    """Per-bin statistics and the batch mean of h are all-reduced: 2 gloo processes = 1 process, same global batch."""
    import torch.multiprocessing as mp

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = tmp_path / "h"
    mp.spawn(_dist_worker, args=(2, str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    logit, t = _batch(512, seed=3)
    ref = FWeighting("kl", ratio_ema_rate=0.5)
    ref_h = [ref(logit, t)[0] for _ in range(2)]
    for rank in range(2):
        got = torch.load(f"{out}.{rank}", weights_only=True)
        torch.testing.assert_close(got["bin_mean"], ref.bin_mean)
        for a, b in zip(got["h"], ref_h):
            torch.testing.assert_close(a, b[rank::2])


def test_rkl_weight_reproduces_the_dmd2_generator_gradient_bit_for_bit():
    from common.diffusion.losses import dm_loss

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=g, requires_grad=True)
    mu_r, mu_f = torch.randn(64, 2, generator=g), torch.randn(64, 2, generator=g)
    h, _ = FWeighting("rkl")(torch.randn(64, generator=g), torch.rand(64, generator=g) + 0.1)
    (g_ref,) = torch.autograd.grad(dm_loss(x, mu_r, mu_f), x)
    (g_f,) = torch.autograd.grad(dm_loss(x, mu_r, mu_f, scale=h), x)
    assert torch.equal(g_ref, g_f)


# ----------------------------------------------------------------------------- through the shared step


def _toy_setup(**kw):
    from papers.fdistill.config import PRESETS
    from papers.fdistill.model import build

    cfg = dataclasses.replace(PRESETS["toy2d-smoke"], **kw)
    return cfg, build(cfg)


def _gen_grads(cfg, S, weight_fn):
    from papers.fdistill.train import make_step

    step = make_step(cfg, S)
    step.dm_weight_fn = weight_fn(cfg, S, step) if weight_fn else None
    g = torch.Generator().manual_seed(5)
    z = torch.randn(32, 2, generator=g)
    x_in, idx, k = step.make_input(z, None, None, g)
    out = step.generate(step.G, x_in, idx, k, None)
    S.fake.requires_grad_(False)
    S.head.requires_grad_(False)
    loss, _ = step.generator_loss(out, None, 0, g)
    loss.backward()
    return {n: p.grad.clone() for n, p in S.generator.named_parameters()}


def test_rkl_through_the_step_reproduces_the_dmd2_generator_gradient_bit_for_bit():
    """h = 1 from the weighting module (reverse KL) vs the step without any weight (DMD2): identical gradients."""
    import copy

    from papers.fdistill.train import HWeight

    cfg, S = _toy_setup(divergence="rkl")
    S2 = copy.deepcopy(S)
    ref = _gen_grads(cfg, S, None)
    got = _gen_grads(cfg, S2, lambda c, s, st: HWeight(c, s.schedule, st))
    for name, g in ref.items():
        assert torch.equal(got[name], g), name
    # and a non-trivial divergence does change them (the test can fail)
    S3 = copy.deepcopy(S2)
    js = _gen_grads(dataclasses.replace(cfg, divergence="kl"), S3, lambda c, s, st: HWeight(c, s.schedule, st))
    assert any(not torch.equal(js[n], ref[n]) for n in ref)


def _train(args, tmp_path, module="papers.fdistill.train", check=True):
    import subprocess

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", module, *args]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def test_toy2d_smoke_records_pictures_and_resume_with_ratio_statistics(tmp_path):
    import json

    sets = ["--set", f"out_dir={tmp_path}/runs", f"results_dir={tmp_path}/res", "ckpt_every=2"]
    _train(["--preset", "toy2d-smoke", *sets], tmp_path)
    recs = {json.loads(f.read_text())["method"]: json.loads(f.read_text()) for f in (tmp_path / "res").rglob("*.json")}
    assert set(recs) == {"js", "teacher (analytic, ODE)", "initial generator"}
    m = recs["js"]["metrics"]
    assert {"recall", "modes covered", "mode weight TV", "precision", "h var (norm.)"} <= set(m)
    assert any(k.startswith("log r corr @") for k in m) and any(k.startswith("init head log r corr @") for k in m)
    run = tmp_path / "runs" / "fdistill" / "toy2d-smoke" / "js-seed0"
    assert (run / "samples.png").is_file()
    ck = sorted((run / "checkpoints").glob("*.pt"))[-1]
    extra = torch.load(ck, map_location="cpu", weights_only=False)["extra"]
    assert len(extra["ratio_bin_mean"]) == 10 and extra["ratio_bin_mean"] == recs["js"]["extra"]["ratio_bin_mean"]
    # more iterations resume from the checkpoint and continue from its statistics
    sets5 = ["--set", f"out_dir={tmp_path}/runs", f"results_dir={tmp_path}/res5", "ckpt_every=2", "steps=5"]
    p = _train(["--preset", "toy2d-smoke", *sets5], tmp_path)
    assert "0/5" not in p.stderr.replace("5/5", "")
    rec5 = json.loads((tmp_path / "res5" / "fdistill" / "toy2d-smoke" / "js-seed0.json").read_text())
    assert rec5["extra"]["ratio_bin_mean"] != extra["ratio_bin_mean"]  # updated from the restored statistics


def test_bad_divergence_is_a_one_line_error(tmp_path):
    p = _train(["--preset", "toy2d-smoke", "--set", "divergence=tv"], tmp_path, check=False)
    assert p.returncode == 2 and "divergence" in p.stderr and "Traceback" not in p.stderr


# ----------------------------------------------------------------------------- claim logic on synthetic records


def _rec(method, seed, **metrics):
    return {"method": method, "seed": seed, "metrics": metrics}


def _toy_records(js_recall, rkl_modes=(5, 6, 5)):
    recs = []
    for s in range(3):
        recs.append(_rec("teacher (analytic, ODE)", s, **{"modes covered": 8, "mode coverage": 1.0, "recall": 0.99}))
        recs.append(_rec("initial generator", s, **{"modes covered": 1, "recall": 0.1}))
        base = {"recall": 0.80 + 0.01 * s, "modes covered": rkl_modes[s], "mode weight TV": 0.3, "precision": 0.6}
        recs.append(_rec("rkl", s, **base))
        recs.append(
            _rec(
                "js",
                s,
                **{
                    "recall": base["recall"] + js_recall + 0.003 * s,
                    "modes covered": base["modes covered"] + 1,
                    "mode weight TV": 0.2 - 0.01 * s,
                    "precision": 0.59,
                },
            )
        )
    return recs


def test_gates_and_verdicts():
    from papers.fdistill.claims import gates, verdict

    assert all(ok for ok, _ in gates(_toy_records(0.05), [0, 1, 2]).values())
    assert verdict(_toy_records(0.05), "js")[0] == "supported"
    assert verdict(_toy_records(-0.05), "js")[0].startswith("contradicted")
    assert verdict(_toy_records(0.0), "js")[0].startswith("inconclusive")
    no_room = gates(_toy_records(0.05, rkl_modes=(8, 8, 8)), [0, 1, 2])
    assert not no_room["room to gain (reverse KL misses modes)"][0]


def test_committed_readme_block_is_up_to_date():
    from papers.fdistill.claims import README, readme_text

    assert README.read_text() == readme_text(ROOT / "results" / "raw"), (
        "run python -m papers.fdistill.claims --summary --readme"
    )


def test_two_process_run_through_the_entry_point(tmp_path):
    """torchrun, 2 gloo processes: the ratio statistics are all-reduced inside the real loop and the run finishes."""
    import json
    import subprocess

    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "papers" / "fdistill" / "train.py"),
        "--preset",
        "toy2d-smoke",
        "--set",
        f"out_dir={tmp_path}/runs",
        f"results_dir={tmp_path}/res",
        "divergence=kl",
        "method=kl",
    ]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rec = json.loads((tmp_path / "res" / "fdistill" / "toy2d-smoke" / "kl-seed0.json").read_text())
    assert rec["extra"]["ratio_bin_mean"] != [1.0] * 10  # statistics were updated (and agreed on by both ranks)


@pytest.mark.parametrize("preset", ["digits-smoke", "cifar10-smoke", "imagenet64-smoke", "sd15-smoke"])
def test_image_smoke_twins(preset, tmp_path):
    """Every image preset's smoke twin through the real entry point: head on the frozen teacher's taps, records."""
    import json

    sets = ["--set", f"out_dir={tmp_path}/runs", f"results_dir={tmp_path}/res", f"cache_dir={tmp_path}/cache"]
    _train(["--preset", preset, *sets], tmp_path)
    recs = [json.loads(f.read_text()) for f in (tmp_path / "res").rglob("*.json")]
    assert any(r["method"] in ("js", "kl") and r["paper"] == "fdistill" for r in recs)
