"""Unit tests of common/diffusion: the DM operator, the analytic teacher's score, GAN loss signs, schedules."""

import math

import pytest
import torch

from common.data.toy2d import ring
from common.diffusion.denoisers import MLPDenoiser, cfg, edm_precond_coeffs
from common.diffusion.losses import ConvGANHead, dm_loss, fake_score_loss, gan_d_loss, gan_g_loss, gen_turn
from common.diffusion.samplers import edm_sampler, rollout
from common.diffusion.schedules import (
    EDMSchedule,
    VPSchedule,
    eps_from_x0,
    forward_transition,
    karras_sigmas,
    score_from_x0,
    x0_from_eps,
)
from common.diffusion.teachers import AnalyticTeacher, TeacherError, load_small_denoiser, save_small_denoiser


def test_dm_gradient_zero_when_fake_equals_real():
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    mu = torch.randn(4, 3, 8, 8)
    dm_loss(x, mu, mu.clone()).backward()
    assert torch.count_nonzero(x.grad) == 0


def test_dm_gradient_is_normalised_difference():
    x = torch.randn(4, 2, 5, requires_grad=True)
    mu_real, mu_fake = torch.randn(4, 2, 5), torch.randn(4, 2, 5)
    dm_loss(x, mu_real, mu_fake, eps=0.0).backward()
    omega = (x.detach() - mu_real).abs().flatten(1).mean(1).view(-1, 1, 1)
    g = (mu_fake - mu_real) / omega
    torch.testing.assert_close(x.grad, g / x.numel())
    # a descent step moves x toward mu_real - mu_fake
    assert ((-x.grad) * (mu_real - mu_fake)).sum() > 0


def test_dm_scale_one_equals_default_and_pseudo_huber_zero():
    x = torch.randn(3, 4, requires_grad=True)
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    assert dm_loss(x, a, b).item() == dm_loss(x, a, b, scale=torch.ones(3)).item()
    y = torch.randn(3, 4, requires_grad=True)
    dm_loss(y, a, a.clone(), metric="pseudo_huber").backward()
    assert torch.count_nonzero(y.grad) == 0


def test_analytic_score_matches_finite_difference():
    mix = ring(k=8, radius=2.0, std=0.1).perturbed(std_scale=1.5, weights=torch.arange(1, 9.0))
    x = torch.randn(16, 2, dtype=torch.float64) * 2
    for sigma in (0.05, 0.5, 3.0):
        h = 1e-5
        fd = torch.stack(
            [
                (mix.log_prob(x + h * e, sigma) - mix.log_prob(x - h * e, sigma)) / (2 * h)
                for e in torch.eye(2, dtype=torch.float64)
            ],
            1,
        )
        torch.testing.assert_close(mix.score(x, sigma), fd, rtol=1e-5, atol=1e-6)
        # the teacher's x0 (Tweedie) gives back the same score through the common conversion
        x0 = AnalyticTeacher(mix)(x, torch.full((16,), sigma))
        one = torch.ones(16, dtype=torch.float64)
        torch.testing.assert_close(score_from_x0(x, x0, one, sigma * one), fd, rtol=1e-5, atol=1e-6)


def test_gan_loss_signs():
    lo, hi = torch.full((8,), -2.0), torch.full((8,), 2.0)
    # D loss falls when real logits rise and when fake logits fall
    assert gan_d_loss(hi, lo) < gan_d_loss(lo, lo) < gan_d_loss(lo, hi)
    # G loss falls when fake logits rise
    assert gan_g_loss(hi) < gan_g_loss(lo)
    logit = torch.zeros(4, requires_grad=True)
    gan_g_loss(logit).backward()
    assert (logit.grad < 0).all()  # gradient descent raises the fake logit
    assert math.isclose(gan_d_loss(torch.zeros(1), torch.zeros(1)).item(), 2 * math.log(2), rel_tol=1e-6)


def test_conv_gan_head_shapes():
    for res in (4, 8, 32):
        assert ConvGANHead(64, res)(torch.randn(2, 64, res, res)).shape == (2,)
    with pytest.raises(ValueError):
        ConvGANHead(64, 6)


def test_karras_grid_ascending_storage_and_vp_conversions():
    s = EDMSchedule(0.002, 80.0, 7.0, 1000)
    assert math.isclose(s.sigmas[0].item(), 0.002, rel_tol=1e-9) and math.isclose(s.sigmas[-1].item(), 80.0)
    assert (s.sigmas[1:] > s.sigmas[:-1]).all()
    assert torch.allclose(karras_sigmas(1000, 0.002, 80.0).flip(0), s.sigmas)
    vp = VPSchedule("scaled_linear")
    t = torch.tensor([0, 500, 999])
    a, sg = vp.alpha_sigma(t)
    torch.testing.assert_close(a**2 + sg**2, torch.ones(3))
    x0, eps = torch.randn(3, 4), torch.randn(3, 4)
    xt = vp.add_noise(x0, t, eps)
    torch.testing.assert_close(x0_from_eps(xt, eps, a, sg), x0, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(eps_from_x0(xt, x0, a, sg), eps, atol=1e-3, rtol=1e-3)
    # forward transition keeps the marginal variance of a VP schedule
    xs = torch.randn(20000, 1)
    s_, tau = torch.tensor([100]), torch.tensor([600])
    (a_s, s_s), (a_t, s_t) = vp.alpha_sigma(s_), vp.alpha_sigma(tau)
    xt = forward_transition(
        a_s * 0 + xs * 0 + a_s * torch.zeros_like(xs) + s_s * xs, a_s, s_s, a_t, s_t, torch.randn_like(xs)
    )
    assert abs(xt.std().item() - s_t.item()) < 0.03


def test_edm_precond_and_cfg():
    c_skip, c_out, c_in, _ = edm_precond_coeffs(torch.tensor([1e-3, 80.0]), 0.5)
    assert c_skip[0] > 0.99 and c_skip[1] < 1e-3 and c_out[1] > 0.49 and c_in[1] < 0.02
    mu_u, mu_c = torch.zeros(2), torch.ones(2)
    assert torch.equal(cfg(mu_u, mu_c, 1.0), mu_c) and torch.equal(cfg(mu_u, mu_c, 3.0), 3 * torch.ones(2))


def test_teacher_sampler_recovers_mixture():
    mix = ring(k=8, radius=2.0, std=0.1)
    x, nfe = edm_sampler(AnalyticTeacher(mix), torch.randn(2000, 2, dtype=torch.float64), 18, 0.002, 20.0)
    assert nfe == 35
    assert (mix.assign(x).bincount(minlength=8) > 150).all()  # every mode receives samples
    assert (torch.cdist(x, mix.means).min(1).values < 0.5).float().mean() > 0.95


def test_rollout_backward_simulation_shapes():
    s = EDMSchedule(0.002, 20.0, 7.0, 1000, sigma_data=1.4)
    net = MLPDenoiser(2, 16, 2, 1.4)
    xs, x0s = rollout(net, s, [999, 749, 499, 249], torch.randn(5, 2), k=2)
    assert len(xs) == 3 and len(x0s) == 2 and not xs[-1].requires_grad


def test_fake_score_loss_kinds_and_ttur():
    p, t = torch.zeros(4, 2), torch.ones(4, 2)
    assert fake_score_loss("eps_mse", p, t).item() == 1.0
    assert fake_score_loss("edm", p, t, sigma=torch.ones(4), sigma_data=1.0).item() == 2.0
    assert fake_score_loss("x0_snr", p, t, snr=torch.full((4,), 10.0)).item() == 5.0
    assert [gen_turn(s, 5) for s in range(6)] == [True, False, False, False, False, True]


def test_small_denoiser_roundtrip_and_mismatch(tmp_path):
    net = MLPDenoiser(2, 16, 2, 1.0)
    save_small_denoiser(net, tmp_path / "t", meta={"task": "toy2d"})
    back = load_small_denoiser(tmp_path / "t", expect={"kind": "mlp"})
    x = torch.randn(3, 2)
    torch.testing.assert_close(back(x, torch.ones(3)), net(x, torch.ones(3)))
    with pytest.raises(TeacherError, match="does not match"):
        load_small_denoiser(tmp_path / "t", expect={"kind": "unet"})
    with pytest.raises(TeacherError, match="does not exist"):
        load_small_denoiser(tmp_path / "missing")
