"""DisBack training: stage 1 records the degradation path, stage 2 distils along it back to the teacher.

    python -m papers.disback.train                                   # embedded default: toy2d, both stages
    python -m papers.disback.train --set backtrack=false method=endpoint fake_init=teacher   # endpoint baseline
    accelerate launch papers/disback/train.py --preset imagenet64 --set teacher_path=...

Stage 1 (degradation recording; paper Alg. 1, Eq. 7): a copy s' of the teacher is fine-tuned by denoising score
matching on samples of the frozen initial generator G^0 — the base distiller's critic loss with the generator update
removed, as in the official `main/degradation.py` — and its weights are saved every `stage1_interval` steps as
nodes 1..N of the path (`<run>/path/`). Stage 2 (distribution backtracking; paper Fig. 3, Eq. 8): the shared
distillation step of common/diffusion with the fake score initialised from node N and a step-dependent target that
serves node N-1, ..., 1 for `switch_every` iterations each, then the teacher for good. Both stages resume: stage 1
from its last node (a checkpoint is written with every node), stage 2 from the trainer's checkpoints; the node in
use is a function of the iteration. Every `curve_every` generator steps the distance of G's samples to the data is
measured on fixed noise (the convergence curve of the claim).
Left out: the SDXL code's GAN head during stage 1 (its D-loss on real latents), LoRA on the fake network.
"""

from __future__ import annotations

import contextlib
import copy
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `accelerate launch papers/disback/train.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from common.checkpoint import Checkpointer, atomic_write_json
from common.config import parse_cli
from common.diffusion.distill import DistillStep, FixedTarget, GuidedTarget
from common.diffusion.tasks import optim_settings
from common.diffusion.trainer import Batch, check_finite, train_loop
from common.launch import start
from papers.disback.config import PRESETS, Config
from papers.disback.model import build
from papers.disback.path import TeacherPath


def make_step(cfg, S, generator, fake, target) -> DistillStep:
    """The base distiller on the shared step: DMD2's normalised DM gradient (optionally its GAN), or Diff-Instruct's
    plain score difference (`normalise=False`)."""
    return DistillStep(
        generator=generator,
        fake=fake,
        head=S.extra.get("head") if cfg.gan else None,
        w_g_calibrate=False,
        target=target,
        schedule=S.schedule,
        student_steps=S.student_steps,
        dm_range=(cfg.dm_t_lo, cfg.dm_t_hi),
        normalise=cfg.base == "dmd2",
        fake_loss=S.fake_loss,
        w_g=cfg.w_g if cfg.gan else 0.0,
        w_d=cfg.w_d,
    )


def teacher_target(cfg, S):
    """The final target: the teacher (text-to-image: with CFG, as the shared builder makes it)."""
    if "final_target" in S.extra:
        return S.extra["final_target"]
    return GuidedTarget(S.teacher, cfg.real_guidance) if cfg.task == "sd" else FixedTarget(S.teacher)


def draw_fn(cfg, S, dev):
    def draw(n, g):
        cond = S.sample_cond(n, g)
        real, real_cond = S.sample_real(n, g) if (cfg.gan and S.sample_real) else (None, None)
        z = torch.randn((n, *S.noise_shape), generator=g).to(dev)
        return Batch(cond, None if real is None else real.to(dev), real_cond, z)

    return draw


# ------------------------------------------------------------------ stage 1


def record_path(cfg, run, S, draw) -> TeacherPath:
    """Stage 1: DSM of a teacher copy on G^0's samples; a weights-only node every `stage1_interval` steps."""
    path = TeacherPath(run.dir / "path", cfg.num_nodes, cfg.stage1_interval)
    if path.complete():
        return path
    acc, dev = run.accelerator, run.device
    G0 = copy.deepcopy(S.generator).to(dev).requires_grad_(False).eval()
    aux = S.make_net().to(dev)  # s'_theta <- s_theta (Alg. 1, line 1)
    opt = torch.optim.AdamW(aux.parameters(), lr=cfg.stage1_lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    aux, opt = acc.prepare(aux, opt)
    step = make_step(cfg, S, G0, aux, teacher_target(cfg, S))
    step.head = None  # the SDXL code's stage-1 GAN head is left out
    # One RNG stream per micro-batch of the global batch (global index rank * accum + j), so that the samples of a
    # step do not depend on how the global batch is laid out over processes and accumulation (1 x 4 == 2 x 2).
    n, accum = run.per_device_batch, run.grad_accum
    gens = [torch.Generator().manual_seed(cfg.seed * 1000 + 500 + acc.process_index * accum + j) for j in range(accum)]
    ckpt = Checkpointer(run.dir / "stage1", keep=2, accelerator=acc)
    objects = {"aux": aux, "opt": opt, "rng": gens[0], **{f"rng{j}": g for j, g in enumerate(gens) if j}}
    start_step, extra = ckpt.resume(objects)
    cpu = extra.get("cpu_time_s", 0.0)
    t_cpu = time.process_time()
    bar = run.progress(
        range(start_step, path.stage1_steps), total=path.stage1_steps, initial=start_step, desc="stage 1"
    )
    for it in bar:
        micro_logs = []
        for j, g in enumerate(gens):  # the whole global batch per step: accum micro-batches on every process
            b = draw(n, g)
            x_in, idx, k = step.make_input(b.z, b.cond, b.real, g)
            with torch.no_grad(), acc.autocast():
                out = step.generate(G0, x_in, idx, k, b.cond)  # x0 = G^0(z), G^0 fixed (Alg. 1, line 3)
            last = j == accum - 1  # DDP reduces the gradients on the last micro-batch only
            with contextlib.nullcontext() if last else acc.no_sync(aux), acc.autocast():
                loss, logs = step.critic_loss(out, b.cond, None, None, g)  # Eq. 7
                check_finite("stage-1 loss", loss.item(), it)
                acc.backward(loss)  # accelerate divides by the accumulation count
            micro_logs.append(logs)
        logs = {key: sum(d[key] for d in micro_logs) / len(micro_logs) for key in micro_logs[0]}
        if cfg.grad_clip:
            acc.clip_grad_norm_(aux.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (it + 1) % max(1, cfg.log_every) == 0:
            run.log(it, stage=1, **logs)
        if path.due(it + 1) is not None:
            if run.is_main:
                path.record(it + 1, acc.unwrap_model(aux))
            cpu_now = cpu + time.process_time() - t_cpu
            ckpt.save(it + 1, objects, extra={"cpu_time_s": cpu_now, "train_time_s": None})
    if run.is_main:
        final = ckpt.latest()
        payload = torch.load(final, map_location="cpu", weights_only=False) if final else {}
        atomic_write_json(
            {
                "stage1_steps": path.stage1_steps,
                "train_time_s": payload.get("train_time_s", 0.0),
                "cpu_time_s": payload.get("extra", {}).get("cpu_time_s", 0.0),
            },
            run.dir / "path" / "stage1_cost.json",
        )
    acc.wait_for_everyone()
    if not path.complete():
        raise RuntimeError(f"stage 1 ended without a complete path in {path.dir}")
    return path


# ------------------------------------------------------------------ stage 2


def main(argv=None) -> dict:
    cfg = parse_cli(Config, PRESETS, argv, description=__doc__)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    run = start(cfg, paper="disback")
    dev = run.device
    S = build(cfg, run.dir if run.is_main else None, progress=run.progress)
    S.teacher.to(dev)
    S.generator.to(dev)
    draw = draw_fn(cfg, S, dev)
    t0_cpu = time.process_time()
    path = record_path(cfg, run, S, draw) if cfg.stage1_steps else None
    final = teacher_target(cfg, S)
    if cfg.backtrack:
        guided = cfg.task == "sd" and cfg.cfg_on_intermediate_targets
        target = path.target(
            final,
            lambda: S.make_net().to(dev),
            cfg.switch_every,
            guidance=cfg.real_guidance if guided else None,
            view=(lambda net: net.denoiser) if guided else None,  # both CFG branches go to the unwrapped network
        )
    else:
        target = final
    fake = S.make_net().to(dev)  # a copy of the teacher (DMD2 style) ...
    if cfg.fake_init == "last_node":
        path.load_node(cfg.num_nodes, fake)  # ... or s_phi <- s'_N, which already fits G^0 (paper Fig. 3)
    step = make_step(cfg, S, S.generator, fake, target)

    from papers.disback.eval import CurveProbe, evaluate

    probe = CurveProbe(cfg, S, dev)
    step.state["curve"] = []  # (generator step, distance) points, checkpointed with the trainer's state
    if probe.enabled and not (run.dir / "checkpoints").is_dir():
        step.state["curve"].append([0, probe(S.generator)])  # G^0, before any update

    def curve_point(G):
        curve = step.state["curve"]
        curve.append([len(curve) * cfg.curve_every, probe(G)])
        return curve[-1][1]

    res = train_loop(
        run,
        step,
        draw,
        optim_settings(cfg),
        steps=cfg.steps,
        ckpt_every=cfg.ckpt_every,
        keep_ckpts=cfg.keep_ckpts,
        log_every=cfg.log_every,
        eval_every=cfg.curve_every if probe.enabled else 0,
        score_fn=curve_point,
        desc="stage 2",
    )
    state = res.state
    if len(state["curve"]) and state["curve"][-1][0] < cfg.gen_steps:
        state["curve"].append([cfg.gen_steps, probe(step.G)])
    stage2_cpu = time.process_time() - t0_cpu
    cost = json.loads((run.dir / "path" / "stage1_cost.json").read_text()) if path is not None else {}
    out = evaluate(
        cfg,
        run,
        S,
        step.G,
        state,
        path=path,
        stage1_cost=cost,
        train_wall_time_s=res.train_time_s,
        cpu_time_s=stage2_cpu,
    )
    run.finish()
    return out


if __name__ == "__main__":
    from common.cli import entry

    entry(main)
