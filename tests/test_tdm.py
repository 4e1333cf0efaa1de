"""TDM: trajectory segments and rollout, the generator loss, step-count conditioning, and the entry points."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from common.diffusion.denoisers import MLPDenoiser
from common.diffusion.losses import dm_loss
from common.diffusion.schedules import VPSchedule, eps_from_x0
from papers.tdm.losses import paper_huber_c, tdm_loss
from papers.tdm.trajectory import (
    StepConditioned,
    WithoutK,
    importance_weights,
    matching_sample,
    pick,
    rollout_points,
    sample_k,
    sample_segments,
    split_k,
    student_sample,
    student_times,
    with_k,
)

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
SCHED = VPSchedule("linear", 1e-4, 0.02, 1000)


class Lin(nn.Module):
    """A deterministic x0-model with a time dependence: x0 = x * c(t)."""

    def forward(self, x, t, cond=None):
        return x * (0.5 + torch.as_tensor(t, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1))) / 2000)


def test_student_times_match_the_demo():
    assert student_times(900, 4) == [899, 674, 449, 224]
    assert student_times(900, 2) == [899, 449]
    assert student_times(900, 1) == [899]
    assert student_times(1000, 4) == [999, 749, 499, 249]


@pytest.mark.parametrize("ks", [(4,), (1, 2, 4)])
def test_segments_do_not_overlap_and_cover_every_step(ks):
    g = torch.Generator().manual_seed(0)
    k = sample_k(20000, ks, g)
    seg = sample_segments(k, 900, "trajectory", 20, 10, generator=g)
    assert ((seg.i >= 0) & (seg.i < seg.k)).all()
    assert ((seg.tau >= seg.t_end) & (seg.tau < seg.t_start) & (seg.tau >= 20)).all()
    for kk in ks:
        times = student_times(900, kk) + [0]
        m = seg.k == kk
        assert set(seg.i[m].tolist()) == set(range(kk))  # every step is trained
        for i in range(kk):  # segment i is exactly [max(20, t_{i+1}), t_i - 10)
            taus = seg.tau[m & (seg.i == i)]
            assert taus.min() >= max(20, times[i + 1]) and taus.max() < times[i] - 10
            # the level of a sample identifies its step: no other segment of the same K holds it
            others = [j for j in range(kk) if j != i]
            assert not any(((taus >= times[j + 1]) & (taus < times[j])).any() for j in others)


def test_clean_and_overlap_levels():
    g = torch.Generator().manual_seed(1)
    k = sample_k(5000, (4,), g)
    clean = sample_segments(k, 900, "clean", 20, 10, generator=g)
    assert clean.tau.min() >= 20 and clean.tau.max() < 890 and clean.tau.min() < 100 and clean.tau.max() > 800
    over = sample_segments(k, 900, "overlap", 20, 10, generator=g)
    assert (over.tau >= over.t_end.clamp_min(20)).all() and over.tau.max() < 890
    assert (over.tau >= over.t_start).any()  # levels above the segment: overlapping across steps


def test_rollout_points_equal_per_k_sampling():
    """The batched rollout with mixed K equals running each K-step sampler alone, point by point."""
    net = Lin()
    g = torch.Generator().manual_seed(2)
    z = torch.randn(9, 3, generator=g)
    k = torch.tensor([1, 2, 4, 4, 2, 1, 4, 2, 4])
    pts = rollout_points(net, SCHED, z, k, 900, None)
    for kk in (1, 2, 4):
        m = k == kk
        x = z[m]
        times = student_times(900, kk)
        for j, t in enumerate(times):
            assert torch.allclose(pts[j][m], x, atol=1e-6), (kk, j)
            tt = torch.full((len(x),), t)
            x0 = net(x, tt)
            eps = eps_from_x0(x, x0, *SCHED.alpha_sigma(tt))
            if j + 1 < kk:
                a, s = SCHED.alpha_sigma(torch.full((len(x),), times[j + 1]))
                x = a[:, None] * x0 + s[:, None] * eps
            else:
                x = x0
        assert torch.allclose(student_sample(net, SCHED, z[m], kk, 900), x, atol=1e-5)
    i = torch.tensor([0, 1, 3, 2, 0, 0, 1, 1, 3])
    assert torch.equal(pick(pts, i)[2], pts[3][2]) and torch.equal(pick(pts, i)[3], pts[2][3])


def test_matching_sample_forward_transition_and_weights():
    """x_tau = (a_tau / a_end) x_end + beta n around the trajectory point; clean: a_tau x0 + s_tau n, weight 1."""
    net = Lin()
    g = torch.Generator().manual_seed(3)
    k = torch.full((6,), 4)
    seg = sample_segments(k, 900, "trajectory", generator=g)
    z = torch.randn(6, 2, generator=g)
    x_start = pick(rollout_points(net, SCHED, z, k, 900), seg.i)
    ts = seg.t_start
    x0 = net(x_start, ts)
    x_tau, n = matching_sample(SCHED, x_start, x0, seg, "trajectory", generator=torch.Generator().manual_seed(5))
    eps = eps_from_x0(x_start, x0, *SCHED.alpha_sigma(ts))
    a_e, s_e = SCHED.alpha_sigma(seg.t_end)
    x_end = a_e[:, None] * x0 + s_e[:, None] * eps
    a_t, s_t = SCHED.alpha_sigma(seg.tau)
    beta = (s_t**2 - (a_t * s_e / a_e) ** 2).sqrt()
    assert torch.allclose(x_tau, (a_t / a_e)[:, None] * x_end + beta[:, None] * n, atol=1e-5)
    w = importance_weights(x_tau, x0, n, SCHED, seg.tau)
    m = (x_tau - a_t[:, None] * x0) / s_t[:, None]
    assert torch.allclose(w, torch.exp(-0.5 * (m**2).mean(1) + 0.5 * (n**2).mean(1)), rtol=1e-5)
    x_tau_c, nc = matching_sample(SCHED, x_start, x0, seg, "clean", generator=torch.Generator().manual_seed(5))
    assert torch.allclose(x_tau_c, a_t[:, None] * x0 + s_t[:, None] * nc, atol=1e-6)
    assert torch.allclose(importance_weights(x_tau_c, x0, nc, SCHED, seg.tau), torch.ones(6), atol=1e-4)


def test_loss_forms_gradients():
    torch.manual_seed(0)
    x = torch.randn(5, 3, 4, 4, requires_grad=True)
    mu_real, mu_fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    # elementwise form with omega is the common operator
    assert torch.allclose(
        tdm_loss(x, mu_real, mu_fake, "elementwise"), dm_loss(x, mu_real, mu_fake, metric="pseudo_huber")
    )
    # vector form: per-sample gradient (mu_fake - mu_real) / sqrt(|.|^2 + c^2) / omega / (d B)
    (gx,) = torch.autograd.grad(tdm_loss(x, mu_real, mu_fake, "vector"), x)
    d, diff = 48, (mu_fake - mu_real).flatten(1)
    omega = (x.detach() - mu_real).abs().flatten(1).mean(1) + 1e-6
    c = paper_huber_c(d)
    want = diff / ((diff**2).sum(1, keepdim=True) + c**2).sqrt() / omega[:, None] / (d * 5)
    assert torch.allclose(gx.flatten(1), want, atol=1e-7)
    assert math.isclose(paper_huber_c(4 * 64 * 64), 0.00054 * 128)
    # mse without omega: gradient 2 (mu_fake - mu_real) / numel
    (gm,) = torch.autograd.grad(tdm_loss(x, mu_real, mu_fake, "mse", normalise=False), x)
    assert torch.allclose(gm, 2 * (mu_fake - mu_real) / x.numel(), atol=1e-7)
    # no gradient when the fake score equals the teacher
    for form in ("vector", "elementwise", "mse"):
        (g0,) = torch.autograd.grad(tdm_loss(x, mu_real, mu_real, form), x)
        assert g0.abs().max() == 0


def test_step_conditioning_starts_as_the_base_and_learns_k():
    base = MLPDenoiser(2, 32, 2, 1.0)
    x, s = torch.randn(6, 2), torch.full((6,), 0.7)
    ref = base(x, s)
    net = StepConditioned(base, (1, 2, 4))
    k = torch.tensor([1, 2, 4, 1, 2, 4])
    assert torch.allclose(net(x, s, with_k(None, k)), ref)  # zero-initialised embedding
    loss = net(x, s, with_k(None, k)).pow(2).sum()
    loss.backward()
    assert net.embed.weight.grad[[1, 2, 4]].abs().sum() > 0 and net.embed.weight.grad[3].abs().sum() == 0
    with torch.no_grad():
        net.embed.weight.normal_()
    same = x[:1].repeat(3, 1)
    out = net(same, s[:3], with_k(None, torch.tensor([1, 2, 4])))
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2])
    with pytest.raises(ValueError, match="not among"):
        net(x, s, with_k(None, torch.full((6,), 3)))
    with pytest.raises(TypeError):
        net(x, s, None)
    # the step count rides in the conditioning dict; the teacher never sees it
    c = with_k({"cond": torch.ones(6), "uncond": torch.zeros(6)}, k)
    assert split_k(c)[0].keys() == {"cond", "uncond"} and split_k(with_k(torch.ones(2), k))[0].shape == (2,)
    seen = []
    WithoutK(lambda x, t, cond: seen.append(cond) or x)(x, s, with_k(None, k))
    assert seen == [None]


def test_step_conditioning_taps_diffusers_backbones():
    from diffusers import PixArtTransformer2DModel, UNet2DModel

    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
    )
    w = StepConditioned(unet, (1, 4))
    assert w.tap == "time_embedding"
    pix = PixArtTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=1,
        sample_size=8,
        patch_size=2,
        cross_attention_dim=16,
        caption_channels=16,
    )
    w2 = StepConditioned(pix, (1, 4))
    assert w2.tap == "adaln_single.emb.timestep_embedder" and w2.embed.weight.shape[1] == 16


def _run(module, args, tmp_path, check=True):
    cmd = [
        sys.executable,
        "-m",
        module,
        *args,
        "--set",
        f"out_dir={tmp_path}/runs",
        f"results_dir={tmp_path}/res",
        f"cache_dir={tmp_path}/cache",
    ]
    p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    if check:
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def _records(tmp_path, preset):
    return {
        r["method"]: r for r in (json.loads(f.read_text()) for f in (tmp_path / "res" / "tdm" / preset).glob("*.json"))
    }


def test_toy2d_smoke_records_and_resume(tmp_path):
    _run("papers.tdm.train", ["--preset", "toy2d-smoke"], tmp_path)
    recs = _records(tmp_path, "toy2d-smoke")
    assert {"tdm", "teacher, 4 steps", "teacher, 8 steps"} <= set(recs)
    assert recs["tdm"]["nfe"] == 4 and recs["teacher, 4 steps"]["nfe"] == 4
    assert {"SWD", "SWD K=1", "SWD K=2"} <= set(recs["tdm"]["metrics"])
    assert recs["tdm"]["timing"]["throughput vs teacher@8"] > 0 and recs["tdm"]["sampling_throughput"] > 0
    assert (tmp_path / "runs" / "tdm" / "toy2d-smoke" / "tdm-seed0" / "samples.png").is_file()
    p = _run("papers.tdm.train", ["--preset", "toy2d-smoke"], tmp_path)  # resumes at the end: no iteration again
    assert "0/3" not in p.stderr.replace("3/3", "")


def test_unify_smoke_and_bad_inputs(tmp_path):
    _run(
        "papers.tdm.train", ["--preset", "toy2d-smoke", "--set", "unify=true", "method=unify", "match=clean"], tmp_path
    )
    assert "unify" in _records(tmp_path, "toy2d-smoke")
    p = _run("papers.tdm.train", ["--preset", "toy2d-smoke", "--set", "unify=true", "eval_ks=3"], tmp_path, check=False)
    assert p.returncode == 2 and "eval_ks" in p.stderr
    p = _run("papers.tdm.train", ["--preset", "toy2d-smoke", "--set", "match=noisy"], tmp_path, check=False)
    assert p.returncode == 2 and "match" in p.stderr
    p = _run(
        "papers.tdm.train",
        ["--preset", "toy2d-smoke", "--set", "gen_lr=1e30", "fake_lr=1e30", "run_name=x"],
        tmp_path,
        check=False,
    )
    assert p.returncode != 0 and ("non-finite" in p.stderr or " is nan" in p.stderr or " is inf" in p.stderr)


def _toy_cfg(**kw):
    from common.config import override
    from papers.tdm.config import PRESETS

    return override(PRESETS["toy2d-smoke"], [f"{k}={v}" for k, v in kw.items()])


def test_step_zero_gradient_when_fake_equals_teacher_and_weights_reach_the_critic():
    """The trajectory loss moves x0_hat along mu_real - mu_fake only: no gradient when the fake is the teacher;
    the critic's x0 loss is min(SNR, 5) x importance weight x MSE to x0_hat at the matching sample."""
    from common.diffusion.schedules import snr
    from papers.tdm.model import build
    from papers.tdm.train import TDMStep

    cfg = _toy_cfg(init_steps=0)
    S = build(cfg)
    S.fake = S.teacher
    step = TDMStep(cfg, S)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 2, generator=g)
    x_in, idx, seg = step.make_input(z, None, g=g)
    assert torch.equal(idx, seg.t_start) and set(seg.k.tolist()) == {4}
    out = step.generate(S.student, x_in, idx, seg, None)
    loss, logs = step.generator_loss(out, None, 0, g)
    (grad,) = torch.autograd.grad(loss, out.x0)
    assert grad.abs().max() == 0 and "loss_tdm" in logs
    # critic: the importance weight of each sample multiplies its SNR-clamped x0 error
    seen = {}
    noise_fn = step.critic_noise

    def spy(st, o, gen):
        seen["n"] = noise_fn(st, o, gen)
        return seen["n"]

    step.critic_noise = spy
    S2 = build(cfg)
    step.fake = S2.fake
    lc, _ = step.critic_loss(out, None, g=g)
    n = seen["n"]
    assert n.weight is not None and (n.weight != 1).any()
    a, s = S.schedule.alpha_sigma(n.idx)
    want = (((S2.fake(n.x_t, n.idx) - out.x0.detach()) ** 2).mean(1) * snr(a, s).clamp_max(5) * n.weight).mean()
    assert torch.allclose(lc, want, rtol=1e-5)


def test_unify_step_gives_k_to_student_and_fake_only():
    from papers.tdm.model import build
    from papers.tdm.train import TDMStep

    cfg = _toy_cfg(init_steps=0, unify="true")
    S = build(cfg)
    calls = []

    class Recorder(nn.Module):  # the teacher, recording the conditioning it is given
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x, t, cond=None):
            calls.append(cond)
            return self.net(x, t, cond)

    S.teacher = Recorder(S.teacher)
    step = TDMStep(cfg, S)
    g = torch.Generator().manual_seed(1)
    k = sample_k(32, (1, 2, 4), g)
    cond = with_k(None, k)
    x_in, idx, seg = step.make_input(torch.randn(32, 2, generator=g), cond, g=g)
    assert torch.equal(seg.k, k) and (seg.i < seg.k).all()
    out = step.generate(S.student, x_in, idx, seg, cond)
    step.generator_loss(out, cond, 0, g)
    assert calls and all(c is None for c in calls)  # the teacher never sees K


def test_two_processes_with_accumulation_match_one(tmp_path):
    """TDM-unify through its entry point: 2 gloo processes x 2 micro-batches == 1 process x 4 micro-batches."""
    sys.path.insert(0, str(ROOT / "tests"))
    from loop_equivalence import assert_same, run_both

    sets = ["steps=3", "unify=true", "eval_samples=64", "eval_batch=32", f"cache_dir={tmp_path}/cache"]
    one, two = run_both("papers.tdm.train", "toy2d-smoke", sets, tmp_path, global_batch=16)
    assert one["step"] == two["step"] == 3
    assert assert_same(one, two, ["generator", "fake"]) > 0


@pytest.mark.parametrize("preset", ["digits-smoke", "pixart512-smoke", "pixart1024-smoke", "sdxl-smoke", "sd15-smoke"])
def test_preset_smoke_twins(preset, tmp_path):
    _run("papers.tdm.train", ["--preset", preset], tmp_path)
    recs = _records(tmp_path, preset)
    assert "tdm" in recs and any(m.startswith("teacher, ") for m in recs)
    assert recs["tdm"]["nfe"] == 4 and recs["tdm"]["sampling_throughput"] > 0


def test_fullscale_setup_is_data_free_and_lora_trains_adapters_only():
    from papers.tdm.model import build

    S = build(_preset("sdxl-smoke"))
    trainable = [n for n, p in S.student.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)
    assert all(p.requires_grad for p in S.fake.parameters())  # the fake score is a full copy
    from common.diffusion.t2i import build_t2i
    from papers.tdm.fullscale import _shared_cfg

    T = build_t2i(_shared_cfg(_preset("pixart512-smoke")), real_images=False, gan_head=False)
    assert T.head is None
    with pytest.raises(ValueError, match="without real images"):
        T.sample_real(2, torch.Generator().manual_seed(0))


def _preset(name):
    from papers.tdm.config import PRESETS

    return PRESETS[name]
