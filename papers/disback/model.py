"""DisBack's networks per task: the frozen teacher, the initial generator G^0, and fresh copies of the teacher's
architecture for the degrading copy (stage 1), the path nodes and the fake score (stage 2).

toy2d (disback.md-style CPU reproduction of the paper's setting "samples start in the teacher's low-density
region"): 8-mode ring, a *learned* EDM-preconditioned MLP teacher (3x256 SiLU, DSM on data only with log-normal
sigma; its score is poor where data never was — an exact analytic teacher would hide the effect), one per seed;
G^0 is an MLP of the teacher's architecture evaluated at sigma_max on sigma_max * z, regressed onto a Gaussian blob
far from the ring (centre (6, 6), std 0.3). With teacher=analytic the toy is instead the shared one of
common.diffusion.tasks (any layout; G^0 = the copy of the exact teacher), as the other methods use it.
digits: EDM UNet2DModel teacher trained on sklearn digits (cached); G^0 = the teacher-initialised one-step
generator before any distillation (the paper's "initial student").
ffhq64 / afhq64 / imagenet64: the EDM paper networks (common.diffusion.edm_networks) loaded from converted official
pickles; G^0 = the teacher-initialised one-step generator (or `init_from`). Smoke twins: tiny random EDM networks.
The generator always starts from weights only (`init_from` = a weights file or a run folder with
`initial_generator.safetensors`), never from a resumable training state.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.data.toy2d import ring
from common.diffusion.denoisers import MLPDenoiser, freeze
from common.diffusion.schedules import EDMSchedule
from common.diffusion.teachers import train_teacher
from papers.disback.path import PathError, load_weights_strict

G0_FILE = "initial_generator.safetensors"


@dataclass
class Setup:
    teacher: nn.Module  # frozen
    generator: nn.Module  # G^0 (trainable copy; stage 1 uses a frozen view of it)
    make_net: Callable[[], nn.Module]  # a fresh trainable network of the teacher's architecture
    schedule: Any
    noise_shape: tuple
    sample_cond: Callable  # (n, generator) -> cond (None when unconditional)
    sample_real: Callable | None = None  # (n, generator) -> (x0, cond); needed only by the GAN of the dmd2 base
    student_steps: list[int] = field(default_factory=list)
    fake_loss: str = "edm"
    extra: dict = field(default_factory=dict)


def _copy_of(net: nn.Module) -> Callable[[], nn.Module]:
    def make():
        return copy.deepcopy(net).train().requires_grad_(True)

    return make


def load_initial_generator(G: nn.Module, path) -> nn.Module:
    """G^0 saved in a run folder (`initial_generator.safetensors`): weights only, every key must match."""
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise PathError(f"{p} does not exist")
    return load_weights_strict(G, load_file(str(p)), what=str(p))


def save_weights(net: nn.Module, path) -> Path:
    from safetensors.torch import save

    from common.checkpoint import atomic_write_bytes

    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    return atomic_write_bytes(save(state), path)


# ------------------------------------------------------------------ toy 2-D


def toy_data(cfg):
    return ring(k=cfg.num_modes, radius=cfg.radius, std=cfg.mode_std)


def _blob_generator(cfg, sd: float) -> nn.Module:
    """G^0 far from the data: regress G(sigma_max * z) onto centre + std * z (a few hundred Adam steps)."""
    g = torch.Generator().manual_seed(20_000 + cfg.seed)
    torch.manual_seed(20_000 + cfg.seed)
    G = MLPDenoiser(2, cfg.teacher_width, cfg.teacher_depth, sd)
    opt = torch.optim.Adam(G.parameters(), lr=1e-3)
    centre = torch.tensor(cfg.g0_center, dtype=torch.float32)
    for _ in range(cfg.g0_steps):
        z = torch.randn(512, 2, generator=g)
        x = G(cfg.sigma_max * z, torch.full((512,), cfg.sigma_max))
        loss = ((x - (centre + cfg.g0_std * z)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return G


def build_toy(cfg, run_dir: Path | None, progress=None) -> Setup:
    data = toy_data(cfg)
    sd = float(data.sample(65536, torch.Generator().manual_seed(1234)).std(0).mean())
    schedule = EDMSchedule(cfg.sigma_min, cfg.sigma_max, cfg.rho, cfg.num_levels, sd)
    arch = [2, cfg.teacher_width, cfg.teacher_depth, sd]
    teacher, teacher_path = train_teacher(  # one teacher per seed (independent base models), cached
        MLPDenoiser(*arch),
        lambda n, g: (data.sample(n, g), None),
        cache_dir=cfg.cache_dir,
        name="disback-toy2d-mlp-teacher",
        spec={"data": data.to_dict(), "arch": arch},
        steps=cfg.teacher_steps,
        batch=cfg.teacher_batch,
        lr=1e-3,
        seed=cfg.seed,
        progress=progress,
    )
    G = initial_generator(cfg, run_dir, lambda: _blob_generator(cfg, sd), MLPDenoiser(*arch))
    return Setup(
        teacher=freeze(teacher),
        generator=G,
        make_net=_copy_of(teacher),
        schedule=schedule,
        noise_shape=(2,),
        sample_cond=lambda n, g: None,
        sample_real=lambda n, g: (data.sample(n, g), None),
        student_steps=[schedule.max_index()],
        extra={"data": data, "teacher_path": str(teacher_path)},
    )


def initial_generator(cfg, run_dir, make_default: Callable[[], nn.Module], template: nn.Module) -> nn.Module:
    """G^0: `init_from` if set, else the run folder's saved G^0 (a resumed run), else `make_default()` saved there.

    Saving G^0 in the run folder makes the run self-describing and lets stage 1 and stage 2 (and a resume) use the
    identical network."""
    saved = Path(run_dir) / G0_FILE if run_dir is not None else None
    if cfg.init_from:
        from common.diffusion.tasks import init_weights_from

        G = template
        init_weights_from(G, cfg.init_from)  # weights only, every key must match (common.diffusion.tasks)
    elif saved is not None and saved.is_file():
        G = load_initial_generator(template, saved)
    else:
        G = make_default()
    if saved is not None and not saved.is_file():
        save_weights(G, saved)
    return G.train().requires_grad_(True)


# ------------------------------------------------------------------ EDM 64x64 (FFHQ, AFHQv2, ImageNet)


class EDMPredict(nn.Module):
    """An EDM paper network (common.diffusion.edm_networks) with the distillation step's call
    `net(x_t, sigma, cond, pred=True) -> Prediction(x0, eps, {})`; eps = (x_t - x0) / sigma (VE, alpha = 1).
    No feature taps: the Diff-Instruct base has no GAN head."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x, t, cond=None, return_features=False, taps=(), pred=False, stop_after_taps=False):
        if taps or return_features:
            raise ValueError("EDMPredict has no feature taps; the GAN head needs a backbone with taps")
        x0 = self.net(x, t, cond)
        if not pred:
            return x0
        from common.diffusion.denoisers import Prediction
        from common.diffusion.schedules import bcast

        sigma = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        return Prediction(x0, (x - x0) / bcast(sigma, x), {})


def _tiny_edm(cfg):
    """A tiny random EDM network of the preset's family (smoke twins): ADM class-conditional or DDPM++."""
    from common.diffusion.edm_networks import EDMNetConfig, build_edm_net

    kw = dict(model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(8,), dropout=0.0)
    if cfg.edm_arch == "adm":
        kw["model_channels"] = 32
        return build_edm_net(EDMNetConfig("DhariwalUNet", cfg.resolution, 3, cfg.edm_classes, 0.5, kw))
    return build_edm_net(EDMNetConfig("SongUNet", cfg.resolution, 3, cfg.edm_classes, 0.5, kw))


def build_edm64(cfg, run_dir, progress=None) -> Setup:
    """EDM teachers (FFHQ / AFHQv2 64 unconditional DDPM++, ImageNet 64 class-conditional ADM): a converted official
    network from `teacher_path` (`python -m common.diffusion.edm_convert <pickle> <folder>`), or a tiny random one."""
    from common.config import ConfigError
    from common.diffusion.edm_convert import load_edm_net

    if cfg.tiny_models:
        net = _tiny_edm(cfg)
    elif not cfg.teacher_path:
        raise ConfigError(
            "teacher_path: the EDM presets need a converted EDM network folder; make it with "
            "`python -m common.diffusion.edm_convert edm-...-64x64-....pkl <folder>`"
        )
    else:
        net = load_edm_net(cfg.teacher_path)
    if net.label_dim != cfg.edm_classes or net.img_resolution != cfg.resolution:
        raise ConfigError(
            f"teacher_path: {cfg.teacher_path} is a {net.img_resolution}px network with {net.label_dim} classes; "
            f"the preset needs {cfg.resolution}px and edm_classes={cfg.edm_classes}"
        )
    teacher = freeze(EDMPredict(net))
    schedule = EDMSchedule(cfg.sigma_min, cfg.sigma_max, cfg.rho, cfg.num_levels, 0.5)
    k = cfg.edm_classes
    G = initial_generator(cfg, run_dir, _copy_of(teacher), _copy_of(teacher)())  # G^0 = the teacher (DI / DMD)
    return Setup(
        teacher=teacher,
        generator=G,
        make_net=_copy_of(teacher),
        schedule=schedule,
        noise_shape=(3, cfg.resolution, cfg.resolution),
        sample_cond=(lambda n, g: torch.randint(k, (n,), generator=g)) if k else (lambda n, g: None),
        student_steps=[schedule.max_index()],
    )


# ------------------------------------------------------------------ digits and text-to-image (shared builders)


def build_shared(cfg, run_dir, progress=None) -> Setup:
    """digits (cached EDM UNet2DModel teacher), toy2d with teacher=analytic (the shared toy: exact mixture teacher,
    MLP copies regressed onto it; the cross-method benchmark's set-up) and sd (SDXL / SD through diffusers) from
    common.diffusion.tasks:
    G^0 = the shared builder's generator (a copy of the teacher) or `init_from` (SDXL: a DMD2 generator, as the
    official code starts from); the copies for stage 1, the nodes and the fake score are made from a snapshot of
    the shared fake score before any training (fp32, the teacher's weights; text-to-image: the conditional-branch
    wrapper around it)."""
    import dataclasses

    from common.diffusion.tasks import build as shared_build

    S = shared_build(dataclasses.replace(cfg, init_from=""), progress) if cfg.task in ("digits", "toy2d") else None
    if S is None:
        from common.diffusion import t2i

        S = t2i.build(dataclasses.replace(cfg, init_from=""))
    template = copy.deepcopy(S.fake).train().requires_grad_(True)
    G = initial_generator(cfg, run_dir, lambda: S.generator, copy.deepcopy(S.generator))
    extra = {**S.extra, "head": S.head, "final_target": S.target}
    if cfg.task == "digits":
        from common.data.digits import load_digits_split

        extra["real_images"] = load_digits_split("train")[0]
    return Setup(
        teacher=S.teacher,
        generator=G,
        make_net=lambda: copy.deepcopy(template),
        schedule=S.schedule,
        noise_shape=S.noise_shape,
        sample_cond=S.sample_cond,
        sample_real=S.sample_real,
        student_steps=S.student_steps,
        fake_loss=S.fake_loss,
        extra=extra,
    )


def build(cfg, run_dir, progress=None) -> Setup:
    if cfg.task == "toy2d" and cfg.teacher == "mlp":
        return build_toy(cfg, run_dir, progress)
    if cfg.task == "edm64":
        return build_edm64(cfg, run_dir, progress)
    return build_shared(cfg, run_dir, progress)
