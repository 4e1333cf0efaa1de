"""The shared distillation step (common/diffusion/distill.py): its pluggable parts checked on tiny inputs."""

import copy

import pytest
import torch
from torch import nn

from common.data.toy2d import ring
from common.diffusion.denoisers import MLPDenoiser
from common.diffusion.distill import (
    DistillStep,
    FixedTarget,
    GuidedTarget,
    Noised,
    StepScheduledTarget,
    generator_input,
)
from common.diffusion.losses import MLPGANHead, dm_loss, gan_d_loss, gan_g_loss
from common.diffusion.schedules import EDMSchedule
from common.diffusion.teachers import AnalyticTeacher


def _toy(seed=0, gan=True):
    torch.manual_seed(seed)
    sched = EDMSchedule(0.002, 20.0, 7.0, 1000, sigma_data=1.4)
    fake = MLPDenoiser(2, 32, 2, 1.4)
    G = copy.deepcopy(fake)
    head = MLPGANHead(32, 16) if gan else None
    teacher = AnalyticTeacher(ring(8, 2.0, 0.1))
    return G, fake, head, sched, teacher


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


def _dmd2_by_hand(G, fake, head, sched, teacher, z, g, w_g):
    """DMD2's generator loss written out (official code): DM at a 2%-98% index, GAN-G at an independent index."""
    x = G(sched.sigmas[-1].float() * z, torch.full((z.shape[0],), sched.sigmas[-1].item()))
    idx = sched.sample_index(z.shape[0], 0.02, 0.98, generator=g)
    eps = torch.randn(x.shape, generator=g)
    x_t = sched.add_noise(x, idx, eps)
    t = sched.net_time(idx)
    with torch.no_grad():
        mu_real, mu_fake = teacher(x_t, t), fake(x_t, t)
    l_dm = dm_loss(x, mu_real.float(), mu_fake.float())
    idx_g = sched.sample_index(z.shape[0], 0.0, 1.0, generator=g)
    x_g = sched.add_noise(x, idx_g, torch.randn(x.shape, generator=g))
    l_gan = gan_g_loss(head(fake(x_g, sched.net_time(idx_g), return_features=True)[1]))
    return l_dm + w_g * l_gan


@pytest.mark.parametrize("weight", [None, "ones"])
def test_unit_weight_reproduces_dmd2_generator_gradient_exactly(weight):
    G, fake, head, sched, teacher = _toy()
    fake.requires_grad_(False)
    head.requires_grad_(False)
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    _dmd2_by_hand(G, fake, head, sched, teacher, z, torch.Generator().manual_seed(2), 0.3).backward()
    ref = _grads(G)
    G.zero_grad()
    fn = None if weight is None else (lambda ctx: torch.ones(ctx.out.x0.shape[0]))
    step = DistillStep(
        generator=G, fake=fake, head=head, schedule=sched, target=FixedTarget(teacher), w_g=0.3, dm_weight_fn=fn
    )
    g = torch.Generator().manual_seed(2)
    x_in, idx, k = step.make_input(z, g=g)
    loss, logs = step.generate(G, x_in, idx, k, None), None
    loss, logs = step.generator_loss(loss, None, 0, g)
    loss.backward()
    for a, b in zip(ref, _grads(G)):
        assert torch.equal(a, b)
    assert set(logs) >= {"loss_dm", "loss_gan_g", "w_g"}


def test_weight_function_sees_discriminator_logits_on_the_same_x_t():
    G, fake, head, sched, teacher = _toy()
    seen = {}

    def fn(ctx):
        seen["logits"], seen["x_t"], seen["idx"] = ctx.logits, ctx.noised.x_t, ctx.noised.idx
        return torch.full((ctx.out.x0.shape[0],), 2.0)

    step = DistillStep(generator=G, fake=fake, head=head, schedule=sched, target=FixedTarget(teacher), dm_weight_fn=fn)
    z = torch.randn(16, 2)
    g = torch.Generator().manual_seed(0)
    out = step.generate(G, *step.make_input(z, g=g), None)
    step.generator_loss(out, None, 0, g)
    expect = head(fake(seen["x_t"], sched.net_time(seen["idx"]), return_features=True)[1])
    torch.testing.assert_close(seen["logits"], expect)
    assert not seen["logits"].requires_grad  # the weight reads them; the GAN term uses its own noise level here


def test_per_sample_weight_scales_each_sample_gradient():
    x = torch.randn(4, 3, requires_grad=True)
    mu_r, mu_f = torch.randn(4, 3), torch.randn(4, 3)
    dm_loss(x, mu_r, mu_f).backward()
    g1 = x.grad.clone()
    x.grad = None
    w = torch.tensor([0.0, 1.0, 2.0, 3.0])
    dm_loss(x, mu_r, mu_f, scale=w).backward()
    torch.testing.assert_close(x.grad, g1 * w[:, None])


def test_diff_instruct_variant_has_no_normaliser():
    x = torch.randn(4, 3, requires_grad=True)
    mu_r, mu_f = torch.randn(4, 3), torch.randn(4, 3)
    dm_loss(x, mu_r, mu_f, normalise=False).backward()
    torch.testing.assert_close(x.grad, (mu_f - mu_r) / x.numel())


class _Const(nn.Module):
    def __init__(self, v):
        super().__init__()
        self.v = v

    def forward(self, x, t, cond=None):
        return torch.full_like(x, self.v)


def test_step_scheduled_target_switches_networks_on_schedule():
    loads = []

    def loader(v):
        def load():
            loads.append(v)
            return _Const(v)

        return load

    target = StepScheduledTarget([loader(3.0), _Const(2.0), loader(1.0)], every=10, final=FixedTarget(_Const(0.0)))
    x, t = torch.zeros(2, 2), torch.ones(2)
    served = {s: target(x, t, None, s)[0, 0].item() for s in [0, 5, 9, 10, 19, 20, 29, 30, 31, 10_000]}
    assert served == {0: 3.0, 5: 3.0, 9: 3.0, 10: 2.0, 19: 2.0, 20: 1.0, 29: 1.0, 30: 0.0, 31: 0.0, 10_000: 0.0}
    assert loads == [3.0, 1.0]  # each loader runs once, when its node's turn comes
    assert [target.index(s) for s in (0, 10, 20, 30)] == [0, 1, 2, 3]
    # inside the step: the DM target follows the training step
    G, fake, _, sched, _ = _toy(gan=False)
    step = DistillStep(generator=G, fake=fake, schedule=sched, target=target)
    out = step.generate(G, *step.make_input(torch.randn(4, 2)), None)
    seen = []
    step.extra_gen_losses = {"probe": (0.0, lambda ctx: seen.append(ctx.mu_real[0, 0].item()) or torch.zeros(()))}
    for s in (0, 15, 25, 35):
        step.generator_loss(out, None, s, torch.Generator().manual_seed(0))
    assert seen == [3.0, 2.0, 1.0, 0.0]


def test_guided_target_per_call_scale():
    class Lin(nn.Module):
        def forward(self, x, t, cond=None):
            return x * cond[:, None]

    tgt = GuidedTarget(Lin(), scale=3.0)
    x, t = torch.ones(2, 2), torch.ones(2)
    cond = {"cond": torch.tensor([2.0, 2.0]), "uncond": torch.tensor([1.0, 1.0])}
    assert torch.equal(tgt(x, t, cond), torch.full((2, 2), 1 + 3.0 * (2 - 1)))
    assert torch.equal(tgt(x, t, cond, scale=1.0), torch.full((2, 2), 2.0))
    assert torch.equal(tgt(x, t, cond, scale=5.0), torch.full((2, 2), 6.0))


def test_generator_input_per_sample_index_and_modes():
    sched = EDMSchedule(0.002, 20.0, 7.0, 1000, sigma_data=1.0)
    steps = [999, 749, 499, 249]
    G = MLPDenoiser(2, 16, 2, 1.0)
    z, real = torch.randn(256, 2), torch.randn(256, 2)
    x_in, idx, k = generator_input(G, sched, steps, z, mode="forward_real", real=real, generator=torch.Generator())
    assert len(set(k.tolist())) == 4  # a step index per sample
    torch.testing.assert_close(idx, torch.tensor(steps)[k])
    _, s = sched.alpha_sigma(idx)
    expect = torch.where((k > 0)[:, None], real + s[:, None] * z, s[:, None] * z)
    torch.testing.assert_close(x_in, expect)
    # backward simulation, one k per batch (the DMD2 code shares it over processes) or per sample
    x_b, idx_b, k_b = generator_input(
        G, sched, steps, z, per_sample=False, generator=torch.Generator(), shared_generator=torch.Generator()
    )
    assert len(set(k_b.tolist())) == 1
    x_p, idx_p, k_p = generator_input(
        G, sched, steps, z, rule="ddim", per_sample=True, generator=torch.Generator().manual_seed(3)
    )
    assert len(set(k_p.tolist())) == 4 and not x_p.requires_grad
    torch.testing.assert_close(x_p[k_p == 0], 20.0 * z[k_p == 0])
    # ddim rule is deterministic: a sample's input equals its own rollout
    from common.diffusion.samplers import rollout

    i = int((k_p == 3).nonzero()[0])
    xs, _ = rollout(G, sched, steps, z[i : i + 1], k=3, rule="ddim")
    torch.testing.assert_close(x_p[i : i + 1], xs[3])
    # 1 step: the input is sigma_max * z at the top index
    x1, idx1, _ = generator_input(G, sched, [999], z)
    assert (idx1 == 999).all() and torch.allclose(x1, 20.0 * z)


def test_critic_loss_batched_gan_matches_separate_and_importance_weights():
    G, fake, head, sched, teacher = _toy()
    step = DistillStep(generator=G, fake=fake, head=head, schedule=sched, target=FixedTarget(teacher), w_d=0.5)
    z, real = torch.randn(32, 2), torch.randn(32, 2)
    with torch.no_grad():
        out = step.generate(G, *step.make_input(z), None)
    loss, logs = step.critic_loss(out, None, real, None, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    n, nr, nf = (step.noise(v, 0.0, 1.0, g) for v in (out.x0, real, out.x0))
    _, s = sched.alpha_sigma(n.idx)
    l_fake = ((s**-2 + 1.4**-2) * ((fake(n.x_t, s) - out.x0) ** 2).mean(1)).mean()
    lr = head(fake(nr.x_t, sched.net_time(nr.idx), return_features=True)[1])
    lf = head(fake(nf.x_t, sched.net_time(nf.idx), return_features=True)[1])
    torch.testing.assert_close(loss, l_fake + 0.5 * gan_d_loss(lr, lf), rtol=1e-5, atol=1e-6)
    assert logs["loss_fake"] == pytest.approx(l_fake.item(), rel=1e-5)

    # per-sample importance weights from a custom critic noise (TDM) multiply each sample's denoising loss
    def weighted(st, o, gen):
        nn_ = st.noise(o.x0, 0.0, 1.0, gen)
        return Noised(nn_.x_t, nn_.idx, nn_.eps, weight=torch.zeros(o.x0.shape[0]))

    step0 = DistillStep(generator=G, fake=fake, schedule=sched, target=FixedTarget(teacher), critic_noise=weighted)
    l0, _ = step0.critic_loss(out, None, None, None, torch.Generator())
    assert l0.item() == 0.0
    step_x = DistillStep(
        generator=G,
        fake=fake,
        schedule=sched,
        target=FixedTarget(teacher),
        critic_noise=weighted,
        extra_critic_losses={"r1": (2.0, lambda ctx: torch.ones(()))},
    )
    assert step_x.critic_loss(out, None, None, None, torch.Generator())[0].item() == 2.0


def test_w_g_calibration_by_gradient_norms():
    G, fake, head, sched, teacher = _toy()
    fake.requires_grad_(False)
    head.requires_grad_(False)
    step = DistillStep(
        generator=G,
        fake=fake,
        head=head,
        schedule=sched,
        target=FixedTarget(teacher),
        w_g=2.0,
        w_g_calibrate=True,
        calibrate_at=3,
    )
    z = torch.randn(64, 2)
    out = step.generate(G, *step.make_input(z), None)
    _, logs = step.generator_loss(out, None, 0, torch.Generator().manual_seed(0))
    assert logs["w_g"] == 0.0 and step.state["w_g"] is None  # before the measurement: no GAN term
    out = step.generate(G, *step.make_input(z), None)
    _, logs = step.generator_loss(out, None, 3, torch.Generator().manual_seed(0))
    assert logs["w_g"] == 0.0  # measured on this update's micro-batches, applied from the next update on
    step.finish_micro_batches()
    ratio = step.state["calib"]["dm_over_gan_grad"]
    out = step.generate(G, *step.make_input(z), None)
    _, logs = step.generator_loss(out, None, 4, torch.Generator().manual_seed(0))
    assert ratio > 0 and logs["w_g"] == pytest.approx(2.0 * ratio)
    # measured once
    step.generator_loss(step.generate(G, *step.make_input(z), None), None, 9, torch.Generator().manual_seed(1))
    assert step.state["calib"]["iteration"] == 3


def test_extra_generator_loss_and_gan_same_noise():
    G, fake, head, sched, teacher = _toy()
    seen = {}

    def probe(ctx):
        seen["logits_grad"] = ctx.logits.requires_grad
        return (ctx.out.x0**2).mean()

    step = DistillStep(
        generator=G,
        fake=fake,
        head=head,
        schedule=sched,
        target=FixedTarget(teacher),
        gan_same_noise=True,
        w_g=0.1,
        extra_gen_losses={"l2": (0.5, probe)},
    )
    out = step.generate(G, *step.make_input(torch.randn(8, 2)), None)
    loss, logs = step.generator_loss(out, None, 0, torch.Generator().manual_seed(0))
    assert seen["logits_grad"] and "loss_l2" in logs
    expect = logs["loss_dm"] + 0.1 * logs["loss_gan_g"] + 0.5 * logs["loss_l2"]
    assert loss.item() == pytest.approx(expect, rel=1e-5)
