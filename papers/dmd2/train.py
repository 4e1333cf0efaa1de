"""DMD2 training: one-step (or 4-step) generator distilled from a diffusion teacher.

    python -m papers.dmd2.train                      # embedded default: toy2d, a few minutes on 2 CPU cores
    python -m papers.dmd2.train --preset digits      # 8x8 digits with a cached UNet2DModel teacher
    accelerate launch papers/dmd2/train.py --preset sd15 --set real_data=... prompts=...

One iteration (DMD2 official code; paper §4): the generator G makes x from noise (multi-step: from its own
no-grad rollout = backward simulation, §4.5); on generator turns (step % ttur_ratio == 0, TTUR §4.2) it is
updated with L_G = L_DM + w_G * L_GAN-G, the fake score and head frozen; the fake score + GAN head then update
every iteration with L_fake + w_D * L_GAN-D on the detached samples. Re-running the same command resumes.
Left out: the SDXL LPIPS regression pre-training, the separate FID-polling evaluator process.
"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # `accelerate launch papers/dmd2/train.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from common.checkpoint import Checkpointer, atomic_torch_save
from common.config import parse_cli
from common.diffusion.losses import dm_loss, fake_score_loss, gan_d_loss, gan_g_loss, gen_turn
from common.diffusion.samplers import rollout
from common.launch import start
from papers.dmd2.config import PRESETS, Config
from papers.dmd2.model import build


def _noise(shape, n, g, device):
    return torch.randn((n, *shape), generator=g).to(device)


def generator_input(cfg, S, G, z, cond, g, g_shared, real=None):
    """(x_in, index) of the generator's differentiable step: 1-step noise, or backward simulation / real data."""
    steps = S.student_steps
    k = 0 if len(steps) == 1 else int(torch.randint(len(steps), (1,), generator=g_shared))  # same k on every rank
    if k > 0 and cfg.multistep_input == "backward":  # §4.5: run the student itself through the first k steps
        xs, _ = rollout(G, S.schedule, steps, z, k=k, grad=False, cond=cond, generator=g)
        x_in = xs[k]
    elif k > 0:  # ablation: forward-noised real data at t_k
        x_in = S.schedule.add_noise(real, torch.full((z.shape[0],), steps[k], device=z.device), z)
    else:
        xs, _ = rollout(G, S.schedule, steps, z, k=0, cond=cond)
        x_in = xs[0]
    return x_in, torch.full((z.shape[0],), steps[k], device=z.device, dtype=torch.long)


def noised(S, x, lo, hi, g):
    idx = S.schedule.sample_index(x.shape[0], lo, hi, generator=g, device=x.device)
    eps = torch.randn(x.shape, generator=g).to(x)
    return S.schedule.add_noise(x, idx, eps), idx, eps


def critic_forward(S, x, idx, cond):
    return S.fake(x, S.schedule.net_time(idx), cond, return_features=True)


def cat_cond(conds):
    """Concatenate per-batch conditioning (None, tensors, or dicts of tensors) along the batch."""
    if all(c is None for c in conds):
        return None
    if isinstance(conds[0], dict):
        return {k: cat_cond([c[k] for c in conds]) for k in conds[0]}
    return torch.cat(conds)


def check_finite(name, value, step):
    if not math.isfinite(value):
        raise FloatingPointError(
            f"{name} is {value} at iteration {step}; lower gen_lr/fake_lr or w_g (the last checkpoint is intact)"
        )


def main(argv=None) -> dict:
    cfg = parse_cli(Config, PRESETS, argv, description=__doc__)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    run = start(cfg, paper="dmd2")
    acc, dev = run.accelerator, run.device
    S = build(cfg, progress=run.progress)
    for m in (S.generator, S.fake, S.head):
        m.to(dev)
    S.teacher.to(dev)
    opt_g = torch.optim.AdamW(
        S.generator.parameters(), lr=cfg.gen_lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay
    )
    opt_c = torch.optim.AdamW(
        [*S.fake.parameters(), *S.head.parameters()], lr=cfg.fake_lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay
    )
    warm = lambda s: min(1.0, (s + 1) / cfg.warmup) if cfg.warmup else 1.0  # noqa: E731  constant_with_warmup
    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, warm)
    sched_c = torch.optim.lr_scheduler.LambdaLR(opt_c, warm)
    G, fake, head, opt_g, opt_c = acc.prepare(S.generator, S.fake, S.head, opt_g, opt_c)
    S.generator, S.fake, S.head = G, fake, head
    ema = [copy.deepcopy(acc.unwrap_model(G)).requires_grad_(False) for _ in cfg.ema_rates]
    g = torch.Generator().manual_seed(cfg.seed * 1000 + acc.process_index)
    g_shared = torch.Generator().manual_seed(cfg.seed * 1000 + 999)
    ckpt = Checkpointer(run.dir / "checkpoints", keep=cfg.keep_ckpts, accelerator=acc)
    objects = {
        "generator": G,
        "fake": fake,
        "head": head,
        "opt_g": opt_g,
        "opt_c": opt_c,
        "sched_g": sched_g,
        "sched_c": sched_c,
        "rng": g,
        "rng_shared": g_shared,
        **{f"ema{i}": e for i, e in enumerate(ema)},
    }
    start_step, state = ckpt.resume(objects)
    state = state or {"w_g": None if cfg.w_g_calibrate else cfg.w_g, "trace": [], "best": None, "calib": None}
    calib_step = min(50 * cfg.ttur_ratio, cfg.steps // 4) * int(cfg.w_g_calibrate)  # iteration of the w_G measurement
    from papers.dmd2.eval import evaluate, quick_score

    n = run.per_device_batch
    bar = run.progress(range(start_step, cfg.steps), total=cfg.steps, initial=start_step, desc="dmd2")
    for step in bar:
        turn = gen_turn(step, cfg.ttur_ratio)
        cond = S.sample_cond(n, g)
        real, real_cond = S.sample_real(n, g)
        real = real.to(dev)
        z = _noise(S.noise_shape, n, g, dev)
        x_in, t_idx = generator_input(cfg, S, acc.unwrap_model(G), z, cond, g, g_shared, real)
        logs = {}
        with torch.set_grad_enabled(turn), acc.autocast():
            x = G(x_in, S.schedule.net_time(t_idx), cond)
        if turn:  # ---- generator update (critic frozen) ----
            fake.requires_grad_(False)
            head.requires_grad_(False)
            with acc.autocast():
                x_t, idx, _ = noised(S, x, cfg.dm_t_lo, cfg.dm_t_hi, g)
                with torch.no_grad():
                    mu_real = S.teacher(x_t, S.schedule.net_time(idx), cond)
                    mu_fake = fake(x_t, S.schedule.net_time(idx), cond)
                l_dm = dm_loss(x.float(), mu_real.float(), mu_fake.float())  # DMD Eq. 7, DMD2 normaliser
                l_gan = torch.zeros((), device=dev)
                if cfg.gan:
                    xg, idx_g, _ = noised(S, x, 0.0, 1.0, g)  # diffusion-GAN: independent random level
                    l_gan = gan_g_loss(head(critic_forward(S, xg, idx_g, cond)[1]))  # DMD2 Eq. 4
            if cfg.gan and state["w_g"] is None and step >= calib_step:  # authors' recipe (issue #73)
                gd = torch.autograd.grad(cfg.dm_weight * l_dm, x, retain_graph=True)[0].norm()
                gg = torch.autograd.grad(l_gan, x, retain_graph=True)[0].norm().clamp_min(1e-12)
                ratio = acc.reduce((gd / gg).reshape(1), reduction="mean").item()
                state["w_g"], state["calib"] = cfg.w_g * ratio, {"iteration": step, "dm_over_gan_grad": ratio}
            w_g = state["w_g"] if (cfg.gan and state["w_g"] is not None) else 0.0
            loss_g = cfg.dm_weight * l_dm + w_g * l_gan
            check_finite("generator loss", loss_g.item(), step)
            acc.backward(loss_g)
            if cfg.grad_clip:
                acc.clip_grad_norm_(G.parameters(), cfg.grad_clip)
            opt_g.step()
            opt_g.zero_grad(set_to_none=True)
            opt_c.zero_grad(set_to_none=True)
            fake.requires_grad_(True)
            head.requires_grad_(True)
            for e, r in zip(ema, cfg.ema_rates):
                with torch.no_grad():
                    for pe, p in zip(e.parameters(), acc.unwrap_model(G).parameters()):
                        pe.lerp_(p.detach(), 1 - r)
            xm = acc.gather(x.detach().float()).flatten(1)
            state["trace"].append([xm.mean(0).norm().item(), (xm**2).mean().item()])  # "brightness" trace
            logs.update(loss_dm=l_dm.item(), loss_gan_g=l_gan.item(), w_g=w_g)
        sched_g.step()
        # ---- critic update: fake score denoising loss + w_D * GAN discriminator loss ----
        xd = x.detach()
        with acc.autocast():
            xf, idx_f, eps_f = noised(S, xd, 0.0, 1.0, g)
            if S.fake_loss == "eps_mse":
                pred = fake(xf, S.schedule.net_time(idx_f), cond, return_eps=True)
                l_fake = fake_score_loss("eps_mse", pred, eps_f)
                l_d = torch.zeros((), device=dev)
                if cfg.gan:
                    xr, idx_r, _ = noised(S, real, 0.0, 1.0, g)
                    xf2, idx_f2, _ = noised(S, xd, 0.0, 1.0, g)
                    l_d = gan_d_loss(
                        head(critic_forward(S, xr, idx_r, real_cond)[1]), head(critic_forward(S, xf2, idx_f2, cond)[1])
                    )
            else:  # one batched forward of [denoising input, noised real, noised fake] (same network, fewer calls)
                _, sig = S.schedule.alpha_sigma(idx_f)
                xs, idxs, conds = [xf], [idx_f], [cond]
                if cfg.gan:
                    xr, idx_r, _ = noised(S, real, 0.0, 1.0, g)
                    xf2, idx_f2, _ = noised(S, xd, 0.0, 1.0, g)
                    xs, idxs, conds = [xf, xr, xf2], [idx_f, idx_r, idx_f2], [cond, real_cond, cond]
                pred, feats = critic_forward(S, torch.cat(xs), torch.cat(idxs), cat_cond(conds))
                l_fake = fake_score_loss("edm", pred[:n], xd, sigma=sig, sigma_data=S.schedule.sigma_data)
                l_d = torch.zeros((), device=dev)
                if cfg.gan:
                    logits = head(feats[n:])
                    l_d = gan_d_loss(logits[:n], logits[n:])  # DMD2 Eq. 4 (discriminator side)
            loss_c = l_fake + cfg.w_d * l_d
        check_finite("critic loss", loss_c.item(), step)
        acc.backward(loss_c)
        if cfg.grad_clip:
            acc.clip_grad_norm_([*fake.parameters(), *head.parameters()], cfg.grad_clip)
        opt_c.step()
        opt_c.zero_grad(set_to_none=True)
        sched_c.step()
        logs.update(loss_fake=l_fake.item(), loss_gan_d=l_d.item())
        gen_step = step // cfg.ttur_ratio
        if turn and cfg.eval_every and gen_step % cfg.eval_every == 0 and gen_step > 0:
            score = quick_score(cfg, S, acc.unwrap_model(G), dev)  # selection metric on a validation set
            logs["val_score"] = score
            if state["best"] is None or score < state["best"]["score"]:
                state["best"] = {"score": score, "gen_step": gen_step}
                if run.is_main:
                    atomic_torch_save(acc.unwrap_model(G).state_dict(), run.path("best_generator.pt"))
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            run.log(step, gen_step=gen_step, **logs)
        if cfg.ckpt_every and (step + 1) % cfg.ckpt_every == 0 and step + 1 < cfg.steps:
            ckpt.save(step + 1, objects, extra=state)
    if start_step < cfg.steps or ckpt.latest() is None:
        ckpt.save(cfg.steps, objects, extra=state)
    train_time = ckpt.train_time_s()  # over every invocation of this run, resumes included
    out = evaluate(cfg, run, S, acc.unwrap_model(G), state, train_wall_time_s=train_time)
    run.finish()
    return out


if __name__ == "__main__":
    from common.cli import entry

    entry(main)
