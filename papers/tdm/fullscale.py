"""TDM at full scale: PixArt-alpha (Transformer2DModel), SDXL and SD v1.5 through common/diffusion/t2i.py.

The backbones, prompt encoding (PixArt: T5, 120 tokens, with its mask; SD: CLIP; the empty prompt as the
unconditional branch), the model's own scheduler betas and the tiny random components of the smoke twins come from
the shared text-to-image layer. What is TDM's here: student and fake score as (optionally K-aware) copies of the
teacher, the student optionally as a LoRA (peft) on a frozen copy, and the evaluation with TDM's deterministic
sampler. No images are needed (data-free).

Evaluation: the student at K = student_k and the guided teacher at teacher_steps_eval, each by the same
deterministic DDIM over t_j = total - 1 - j * total / N from the same noise and prompts; decoded PNGs under
samples/<name>/ (for HPSv2 / aesthetic / CLIP scoring outside this repository: no weights offline), a grid, the
sampling throughput, and the latent RMS distance of the student's samples to the teacher's at its largest step
count from the same noise (a diagnostic, not the paper's metric).
Left out: HPSv2 and the other scorers, the CogVideoX video recipe, pipeline export of the K-aware student.
"""

from __future__ import annotations

import dataclasses
import time
from types import SimpleNamespace

import torch

from common.launch import peak_memory_mb
from common.results import make_record, write_record
from papers.tdm.model import Setup
from papers.tdm.trajectory import StepConditioned, student_sample

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # attention projections, as diffusers' LoRA training scripts


def _shared_cfg(cfg):
    """The fields the shared text-to-image builder reads (TDM needs no real images and no GAN)."""
    return SimpleNamespace(
        **dataclasses.asdict(cfg), real_guidance=cfg.guidance, real_data="", student_steps=(), gen_timestep=0
    )


def add_lora(denoiser, rank: int):
    """Freeze the backbone of `denoiser` and add trainable LoRA adapters of rank `rank` (peft via diffusers)."""
    from peft import LoraConfig

    backbone = denoiser.unet
    backbone.requires_grad_(False)
    backbone.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(LORA_TARGETS))
    )
    return denoiser


def build_fullscale(cfg) -> Setup:
    from common.diffusion.t2i import build_t2i

    T = build_t2i(_shared_cfg(cfg), real_images=False, gan_head=False)
    student, fake = T.generator, T.fake
    if cfg.lora_rank:
        add_lora(student.denoiser, cfg.lora_rank)
    if cfg.unify:
        student, fake = StepConditioned(student, cfg.unify_ks), StepConditioned(fake, cfg.unify_ks)
    return Setup(student, T.teacher, fake, T.schedule, T.sample_cond, T.noise_shape, guided=True, extra=T.extra)


def _guided(S, cfg):
    from common.diffusion.distill import GuidedTarget

    target = GuidedTarget(S.teacher, cfg.guidance)
    return lambda x, t, cond: target(x, t, cond)


@torch.no_grad()
def _sample(cfg, S, net, k, n, dev, unify, seed, sink):
    g = torch.Generator().manual_seed(seed)
    xs, t0 = [], time.perf_counter()
    for i in range(0, n, cfg.eval_batch):
        m = min(cfg.eval_batch, n - i)
        z = torch.randn((m, *S.noise_shape), generator=g).to(dev)
        cond = S.sample_cond(m, g)
        x = student_sample(net, S.schedule, z, k, cfg.total_steps, cond, unify)
        xs.append(x.float().cpu())
        sink(x)
    return torch.cat(xs), n / (time.perf_counter() - t0)


def evaluate_fullscale(cfg, run, S, G, train_wall_time_s=None) -> dict:
    from torchvision.utils import save_image

    dev, n, t0 = run.device, cfg.eval_samples, time.time()
    vae = S.extra["vae"]
    seed = 777 + cfg.seed

    def writer(name):
        folder, count = run.path("samples", name, ".keep").parent, [0]

        def sink(lat):
            x = vae.decode(lat.to(vae.dtype) / vae.config.scaling_factor).sample.float()
            x = ((x.clamp(-1, 1) + 1) / 2).cpu()
            if run.is_main:
                for img in x:
                    save_image(img, folder / f"{count[0]:06d}.png")
                    count[0] += 1
                if count[0] <= len(x):
                    save_image(x[:16], run.path(f"samples_{name}.png"), nrow=4)

        return sink

    G.eval()
    x_s, thr = _sample(cfg, S, G, cfg.student_k, n, dev, cfg.unify, seed, writer(f"student_{cfg.student_k}"))
    G.train()
    ref_n = max(cfg.teacher_steps_eval)
    teach = {
        k: _sample(cfg, S, _guided(S, cfg), k, n, dev, False, seed, writer(f"teacher_{k}"))
        for k in cfg.teacher_steps_eval
    }
    rms = lambda a, b: (a - b).pow(2).mean().sqrt().item()  # noqa: E731
    metrics = {f"latent RMS to teacher@{ref_n}": rms(x_s, teach[ref_n][0])}
    metrics[f"throughput vs teacher@{ref_n}"] = thr / teach[ref_n][1]
    if run.is_main:
        common = dict(
            paper="tdm",
            preset=cfg.preset,
            seed=cfg.seed,
            benchmark=cfg.benchmark or f"tdm / {cfg.preset}",
            dataset=cfg.prompts or "smoke prompts",
            protocol={
                "samples": n,
                "sampler": f"deterministic DDIM over t_j = {cfg.total_steps} - 1 - j*{cfg.total_steps}/N, same noise",
                "teacher": f"CFG {cfg.guidance}",
                "note": "HPSv2 / aesthetic / CLIP: score the PNG folders under samples/ (no weights offline)",
            },
            config=cfg,
        )
        write_record(
            make_record(
                **common,
                method=cfg.method or "tdm",
                metrics=metrics,
                wall_time_s=(train_wall_time_s or 0.0) + time.time() - t0,
                nfe=cfg.student_k,
                sampling_throughput=thr,
                peak_memory_mb=peak_memory_mb(),
                train_wall_time_s=train_wall_time_s,
            ),
            root=cfg.results_dir,
        )
        for k, (x, th) in teach.items():
            rec = make_record(
                **common,
                method=f"teacher, {k} steps",
                metrics={f"latent RMS to teacher@{ref_n}": rms(x, teach[ref_n][0])},
                wall_time_s=time.time() - t0,
                nfe=k,
                sampling_throughput=th,
            )
            write_record(rec, root=cfg.results_dir, same_config=False)
        print(f"[tdm] {cfg.preset}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return metrics
