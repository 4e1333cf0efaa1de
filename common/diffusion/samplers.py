"""Teacher ODE samplers and few-step student samplers / rollouts.

Concepts: EDM deterministic sampler (Karras et al. 2022, Algorithm 1: Euler / Heun on the Karras grid),
DDIM (Song et al. 2021) for VP teachers, the consistency-style multi-step rule with fresh re-noising used
by DMD2 (§4.4), deterministic DDIM with the student's own eps (TDM), and `rollout` for backward simulation.
The EDM Heun loop is written here because it must take any denoiser with our x0 API on any tensor shape
(2-D toys included); VP teachers at full scale use diffusers' DDIMScheduler.
Left out: stochastic (SDE) teacher samplers.
"""

from __future__ import annotations

import torch

from common.diffusion.schedules import bcast, eps_from_x0, karras_sigmas

__all__ = ["edm_sampler", "ddim_teacher_sampler", "student_sample", "rollout"]


@torch.no_grad()
def edm_sampler(denoiser, noise, num_steps=18, sigma_min=0.002, sigma_max=80.0, rho=7.0, heun=True, cond=None):
    """Deterministic EDM sampler (EDM Algorithm 1). NFE = 2*num_steps - 1 with Heun, num_steps with Euler."""
    sig = karras_sigmas(num_steps, sigma_min, sigma_max, rho).float().tolist() + [0.0]
    x = noise * sig[0]
    nfe = 0
    for i in range(num_steps):
        s, s_next = sig[i], sig[i + 1]
        d = (x - denoiser(x, torch.full((x.shape[0],), s, device=x.device), cond)) / s
        nfe += 1
        x_next = x + (s_next - s) * d
        if heun and s_next > 0:
            d2 = (x_next - denoiser(x_next, torch.full((x.shape[0],), s_next, device=x.device), cond)) / s_next
            nfe += 1
            x_next = x + (s_next - s) * 0.5 * (d + d2)
        x = x_next
    return x, nfe


@torch.no_grad()
def ddim_teacher_sampler(denoiser, schedule, noise, num_steps=50, cond=None, scheduler_config=None):
    """DDIM (eta = 0) through diffusers' DDIMScheduler built from the model's own scheduler config (betas, timestep
    spacing, steps offset) when given, else from the schedule's alphas_cumprod. `denoiser(x, t, cond)` returns x0
    (for a guided teacher pass the guided target: CFG is the target's business, not the sampler's)."""
    from diffusers import DDIMScheduler

    if scheduler_config is not None:
        sch = DDIMScheduler.from_config(scheduler_config, clip_sample=False, prediction_type="epsilon")
    else:
        betas = 1 - schedule.alphas_cumprod / torch.cat(
            [torch.ones(1, dtype=torch.float64), schedule.alphas_cumprod[:-1]]
        )
        sch = DDIMScheduler(
            num_train_timesteps=schedule.num_steps,
            trained_betas=betas.float().numpy(),
            clip_sample=False,
            set_alpha_to_one=False,
            prediction_type="epsilon",
            timestep_spacing="trailing",
        )
    sch.set_timesteps(num_steps)
    x = noise
    for t in sch.timesteps:
        tt = torch.full((x.shape[0],), int(t), device=x.device)
        x0 = denoiser(x, tt, cond)
        a, s = schedule.alpha_sigma(tt)
        x = sch.step(eps_from_x0(x, x0, a, s), t, x).prev_sample
    return x, num_steps


def _student_step(student, schedule, x, idx, cond):
    return student(x, schedule.net_time(idx), cond)


def rollout(student, schedule, step_indices, noise, k=None, rule="renoise", grad=False, cond=None, generator=None):
    """Run the student through its first k steps (all if k is None) from pure noise.

    step_indices: descending schedule indices of the student's steps (e.g. [999, 749, 499, 249]).
    rule: "renoise" (DMD2: x_{t_{i+1}} = alpha x0_hat + sigma eps' with fresh eps') or "ddim" (TDM: reuse the
    student's own eps, no fresh noise). Returns (xs, x0s): xs[i] is the input of step i (len k+1 when the
    state after k steps is wanted), x0s[i] the student's x0 at step i (len k).
    """
    b = noise.shape[0]
    k = len(step_indices) if k is None else k
    idx0 = torch.full((b,), step_indices[0], device=noise.device, dtype=torch.long)
    a0, s0 = schedule.alpha_sigma(idx0)
    x = bcast(s0, noise) * noise if schedule.kind == "edm" else noise  # EDM: sigma_max * z; VP: pure noise
    xs, x0s = [x], []
    with torch.set_grad_enabled(grad):
        for i in range(k):
            idx = torch.full((b,), step_indices[i], device=noise.device, dtype=torch.long)
            x0 = _student_step(student, schedule, x, idx, cond)
            x0s.append(x0)
            if i + 1 < len(step_indices):
                nidx = torch.full((b,), step_indices[i + 1], device=noise.device, dtype=torch.long)
                if rule == "renoise":
                    eps = torch.randn(x0.shape, generator=generator).to(x0)
                elif rule == "ddim":
                    a, s = schedule.alpha_sigma(idx)
                    eps = eps_from_x0(x, x0, a, s)
                else:
                    raise ValueError(f"rule: {rule!r} not in ['renoise', 'ddim']")
                x = schedule.add_noise(x0, nidx, eps)
                xs.append(x)
    return xs, x0s


def student_sample(student, schedule, step_indices, noise, cond=None, rule="renoise", generator=None):
    """Few-step student sample (1 step: x = G(noise at t_0)); returns the last x0 and the NFE."""
    with torch.no_grad():
        _, x0s = rollout(student, schedule, step_indices, noise, rule=rule, cond=cond, generator=generator)
    return x0s[-1], len(step_indices)
