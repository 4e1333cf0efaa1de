"""common/diffusion beyond the step: feature taps on the three tiny backbones, toy tasks from config (layouts, VP,
class-conditional analytic teachers), weights-only initialisation, streamed evaluation, the labelled real-image
loader, the DDIM teacher sampler built from a scheduler config."""

import dataclasses

import pytest
import torch

from common.config import ConfigError
from common.data.toy2d import ring
from common.diffusion.denoisers import CondDenoiser, EpsDenoiser, MLPDenoiser, UNetDenoiser, VPDenoiser
from common.diffusion.schedules import EDMSchedule, VPSchedule
from common.diffusion.tasks import DistillConfig, build, init_weights_from, toy_mixtures
from common.diffusion.teachers import AnalyticTeacher, save_small_denoiser

# ---------------------------------------------------------------- denoiser API and feature taps


def _check_taps(net, x, t, cond, names, stop_name):
    full = net(x, t, cond, taps=names, pred=True)
    assert set(full.features) == set(names)
    assert full.x0.shape == x.shape and full.eps.shape == x.shape
    torch.testing.assert_close(full.x0, net(x, t, cond))  # the plain call is the same forward
    shapes = {k: v.shape for k, v in full.features.items()}
    assert all(len(s) == 4 and s[0] == x.shape[0] for s in shapes.values())
    early = net(x, t, cond, taps=(stop_name,), pred=True, stop_after_taps=True)
    assert early.x0 is None and early.eps is None  # the forward stopped after the tapped block
    torch.testing.assert_close(early.features[stop_name], full.features[stop_name])
    with pytest.raises(KeyError, match="unknown"):
        net(x, t, cond, taps=("nope",))
    return shapes


def test_unet2d_taps_mid_and_resolutions():
    from common.diffusion.t2i import tiny_imagenet_unet

    net = UNetDenoiser(tiny_imagenet_unet(16), 0.5)
    x, sigma, y = torch.randn(2, 3, 16, 16), torch.full((2,), 1.3), torch.tensor([1, 2])
    shapes = _check_taps(net, x, sigma, y, ("mid", "down0", "down1", "up0", "up1"), "down0")
    assert shapes["down0"][-1] == 8 and shapes["mid"][-1] == 8 and shapes["up1"][-1] == 16  # several resolutions
    p = net(x, sigma, y, pred=True)
    torch.testing.assert_close(p.eps, (x - p.x0) / 1.3)  # VE: x = x0 + sigma eps
    assert net.tap_shapes(x, sigma, y)["mid"] == (64, 8, 8)


def test_unet2d_condition_taps_sd_and_eps_x0_consistency():
    from common.diffusion.t2i import tiny_sd_unet

    sched = VPSchedule("scaled_linear")
    net = EpsDenoiser(tiny_sd_unet(False), sched)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    cond = {"encoder_hidden_states": torch.randn(2, 5, 32)}
    _check_taps(net, x, t, cond, ("mid", "down0", "down1", "up0", "up1"), "mid")
    p = net(x, t, cond, pred=True)
    a, s = sched.alpha_sigma(t)
    torch.testing.assert_close(a[:, None, None, None] * p.x0 + s[:, None, None, None] * p.eps, x, atol=1e-4, rtol=1e-4)
    # the conditional wrapper passes {"cond": ...} through and keeps the taps
    wrapped = CondDenoiser(net)
    torch.testing.assert_close(wrapped(x, t, {"cond": cond, "uncond": None}, pred=True).x0, p.x0)


def test_pixart_transformer_taps_tokens_as_maps():
    from common.diffusion.t2i import tiny_pixart

    net = EpsDenoiser(tiny_pixart(8), VPSchedule("linear", 1e-4, 0.02))
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([5, 500])
    cond = {"encoder_hidden_states": torch.randn(2, 6, 32), "encoder_attention_mask": torch.ones(2, 6)}
    shapes = _check_taps(net, x, t, cond, ("mid", "block0", "block3"), "block0")
    assert shapes["mid"] == (2, 16, 4, 4)  # 16 tokens of width 16 -> a 4x4 map (patch 2 on an 8x8 latent)
    assert net(x, t, cond, pred=True).eps.shape == x.shape  # learned variance: the first half of the channels


# ---------------------------------------------------------------- toy tasks from config


def _cfg(**kw):
    base = dict(task="toy2d", global_batch=64, fake_init_steps=2, width=16, depth=2, eval_samples=64)
    return DistillConfig(**{**base, **kw})


def test_toy_layouts_weights_and_stds_from_config():
    data, _ = toy_mixtures(_cfg(toy_layout="grid", grid_side=3, mode_std=0.05))
    assert data.num_modes == 9 and torch.allclose(data.stds, torch.full((9,), 0.05, dtype=torch.float64))
    data, _ = toy_mixtures(
        _cfg(toy_layout="explicit", mode_means=(0, 0, 3, 0), mode_weights=(3, 1), mode_stds=(0.1, 0.2))
    )
    torch.testing.assert_close(data.weights, torch.tensor([0.75, 0.25], dtype=torch.float64))
    torch.testing.assert_close(data.stds, torch.tensor([0.1, 0.2], dtype=torch.float64))
    with pytest.raises(ConfigError, match="mode_weights"):
        _cfg(mode_weights=(1.0, 2.0))  # 8 ring modes need 8 weights
    with pytest.raises(ConfigError, match="mode_means"):
        _cfg(toy_layout="explicit", mode_means=(1.0, 2.0, 3.0))
    from common.config import parse_cli

    cfg = parse_cli(DistillConfig, {"x": _cfg()}, ["--preset", "x", "--set", "mode_weights=1,2,3,4,5,6,7,8"])
    assert cfg.mode_weights == (1, 2, 3, 4, 5, 6, 7, 8)


def test_vp_analytic_teacher_equals_ve_at_rescaled_sigma_and_class_conditioning():
    mix = ring(8, 2.0, 0.1)
    vp = VPSchedule("linear", 1e-4, 0.02)
    t = torch.tensor([100, 400, 800])
    a, s = vp.alpha_sigma(t)
    x0 = mix.sample(3, torch.Generator().manual_seed(0))
    x_t = vp.add_noise(x0, t, torch.randn(3, 2))
    direct = AnalyticTeacher(mix, vp)(x_t, t)
    via_ve = AnalyticTeacher(mix)(x_t / a[:, None], s / a)
    torch.testing.assert_close(direct, via_ve, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(VPDenoiser(AnalyticTeacher(mix), vp)(x_t, t), direct, rtol=1e-5, atol=1e-5)
    # class-conditional: label c keeps the components k % 2 == c, i.e. the denoiser of the class's own mixture
    from common.data.toy2d import GaussianMixture

    cond_t = AnalyticTeacher(mix, num_classes=2)
    x, sig = torch.randn(6, 2, dtype=torch.float64) * 2, torch.full((6,), 0.7)
    labels = torch.tensor([0, 1, 0, 1, -1, -1])
    out = cond_t(x, sig, labels)
    for c in (0, 1):
        sub = GaussianMixture(mix.means[c::2], mix.weights[c::2], mix.stds[c::2])
        torch.testing.assert_close(out[labels == c], sub.denoise(x[labels == c], sig[labels == c]))
    torch.testing.assert_close(out[labels < 0], mix.denoise(x[labels < 0], sig[labels < 0]))


@pytest.mark.parametrize("kw", [{}, {"toy_schedule": "vp"}, {"num_classes": 2, "real_guidance": 2.0}])
def test_toy_builds_run_one_step(kw):
    from common.diffusion.distill import DistillStep

    cfg = _cfg(**kw)
    S = build(cfg)
    step = DistillStep(generator=S.generator, fake=S.fake, head=S.head, target=S.target, schedule=S.schedule, w_g=0.1)
    g = torch.Generator().manual_seed(0)
    cond = S.sample_cond(16, g)
    real, real_cond = S.sample_real(16, g)
    out = step.generate(S.generator, *step.make_input(torch.randn(16, 2), cond), cond)
    loss_g, _ = step.generator_loss(out, cond, 0, g)
    loss_c, _ = step.critic_loss(out, cond, real, real_cond, g)
    assert torch.isfinite(loss_g) and torch.isfinite(loss_c)
    loss_g.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in S.generator.parameters())


# ---------------------------------------------------------------- weights-only initialisation


def test_init_from_weights_file_and_run_folder_with_a_different_config(tmp_path):
    src = MLPDenoiser(2, 16, 2, 1.0)
    save_small_denoiser(src, tmp_path / "run" / "student")
    x, s = torch.randn(4, 2), torch.ones(4)
    for source in (tmp_path / "run", tmp_path / "run" / "student" / "model.safetensors"):
        dst = MLPDenoiser(2, 16, 2, 1.0)
        init_weights_from(dst, str(source))
        torch.testing.assert_close(dst(x, s), src(x, s))
    torch.save({"objects": {"generator": src.state_dict()}, "step": 7}, tmp_path / "ckpt.pt")
    dst = MLPDenoiser(2, 16, 2, 1.0)
    init_weights_from(dst, str(tmp_path / "ckpt.pt"))
    torch.testing.assert_close(dst(x, s), src(x, s))
    with pytest.raises(ConfigError, match="does not fit"):
        init_weights_from(MLPDenoiser(2, 32, 2, 1.0), str(tmp_path / "run"))
    # through build(): a run of another configuration (different lr, steps, seed) starts from those weights
    cfg = _cfg(width=16, depth=2, seed=3, gen_lr=1e-4, sigma_data=1.0, init_from=str(tmp_path / "run"))
    S = build(cfg)
    torch.testing.assert_close(S.generator(x, s), src(x, s))
    assert S.extra["init_from"].endswith("model.safetensors")
    with pytest.raises(ConfigError, match="does not exist"):
        _cfg(init_from=str(tmp_path / "missing")).check_inputs()


# ---------------------------------------------------------------- streamed evaluation, loaders, samplers


def test_streamed_sampling_in_bounded_batches():
    from common.diffusion.evaluation import sample_student

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x, t, cond=None):
            seen.append(x.shape[0])
            return x * 0

    S = build(_cfg())
    x, _ = sample_student(S, Probe(), 70, torch.Generator(), "cpu", batch=32)
    assert seen == [32, 32, 6] and x.shape == (70, 2)
    seen.clear()
    kept = []
    first, _ = sample_student(S, Probe(), 70, torch.Generator(), "cpu", batch=32, sink=kept.append)
    assert seen == [32, 32, 6] and [len(k) for k in kept] == [32, 32, 6] and len(first) == 32


def test_labelled_image_folder_through_the_real_loader(tmp_path):
    import numpy as np
    from PIL import Image

    from common.diffusion.t2i import real_image_sampler

    for c in ("cat", "dog"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            arr = np.full((12, 12, 3), 40 if c == "cat" else 200, dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / "imgs" / c / f"{i}.png")
    cfg = DistillConfig(task="imagenet64", resolution=8, real_data=str(tmp_path / "imgs"), tiny_models=True)
    x, y = real_image_sampler(cfg, 3, with_labels=True)(16, torch.Generator().manual_seed(0))
    assert x.shape == (16, 3, 8, 8) and y.dtype == torch.long and set(y.tolist()) <= {0, 1}
    # label and image agree: the dark class is "cat" (label 0 in sorted folder order)
    assert torch.equal(y == 0, x.mean((1, 2, 3)) < 0)


def test_ddim_teacher_sampler_from_scheduler_config_and_dm_range():
    from diffusers import DDIMScheduler

    from common.diffusion.samplers import ddim_teacher_sampler

    mix = ring(4, 2.0, 0.1)
    sched = DDIMScheduler(
        beta_schedule="linear", beta_start=1e-4, beta_end=0.02, timestep_spacing="trailing", set_alpha_to_one=False
    )
    vp = VPSchedule.from_diffusers(sched)
    z = torch.randn(512, 2, generator=torch.Generator().manual_seed(0))
    x, nfe = ddim_teacher_sampler(AnalyticTeacher(mix, vp), vp, z, 50, scheduler_config=sched.config)
    assert nfe == 50 and (torch.cdist(x.double(), mix.means).min(1).values < 0.5).float().mean() > 0.9
    y, _ = ddim_teacher_sampler(AnalyticTeacher(mix, vp), vp, z, 50)  # from the schedule's own betas
    torch.testing.assert_close(x, y, atol=1e-3, rtol=1e-3)
    # DM index range [2%, 98%] includes 980 of 1000, as the DMD2 code's randint(20, 981)
    idx = EDMSchedule().sample_index(200_000, 0.02, 0.98, generator=torch.Generator().manual_seed(0))
    assert idx.min() == 20 and idx.max() == 980
    assert EDMSchedule().sample_index(100_000, 0.0, 1.0).max() == 999


def test_edm_fake_loss_uses_ve_sigma_under_vp():
    """The EDM-weighted denoising loss weights a VP level by its VE equivalent sigma / alpha (alpha = 1 for EDM)."""
    from common.diffusion.schedules import edm_loss_weight

    vp = VPSchedule("linear", 1e-4, 0.02, sigma_data=0.7)
    a, s = vp.alpha_sigma(torch.tensor([500]))
    assert torch.allclose(edm_loss_weight(s / a, 0.7), (a / s) ** 2 + 0.7**-2)
    assert dataclasses.is_dataclass(DistillConfig)


def test_pixart_text_to_image_setup_runs_the_step():
    """PixArt-alpha through the same plumbing: T5 prompts with masks (pipeline encode_prompt), guided teacher,
    GAN head on the fake transformer's middle block; one generator and one critic loss."""
    from common.diffusion.distill import DistillStep

    cfg = DistillConfig(task="pixart", tiny_models=True, resolution=64, real_guidance=3.0, global_batch=2)
    S = build(cfg)
    step = DistillStep(
        generator=S.generator, fake=S.fake, head=S.head, target=S.target, schedule=S.schedule, fake_loss=S.fake_loss
    )
    g = torch.Generator().manual_seed(0)
    cond = S.sample_cond(2, g)
    assert cond["cond"]["encoder_attention_mask"].shape[0] == 2 and cond["uncond"] is not None
    real, real_cond = S.sample_real(2, g)
    out = step.generate(S.generator, *step.make_input(torch.randn(2, *S.noise_shape), cond), cond)
    loss_g, _ = step.generator_loss(out, cond, 0, g)
    loss_c, logs = step.critic_loss(out, cond, real, real_cond, g)
    assert torch.isfinite(loss_g) and torch.isfinite(loss_c) and "loss_gan_d" in logs
