"""The config every diffusion-distillation paper shares, and the CPU tasks built from it (toy 2-D, 8x8 digits).

`DistillConfig` holds the fields of the shared step and loop (schedule, DM range, GAN weights, optimisers, EMA,
evaluation, weights-only initialisation) and of the tasks; a paper subclasses it and adds only its own fields.
`build(cfg)` returns a `Setup`: generator, frozen teacher (and the target provider built on it), fake score,
GAN head, schedule, data samplers. The generator and the fake score start as copies of the teacher, as in all four
methods (DMD2 §4; DisBack, TDM and f-distill inherit it).

toy2d: a Gaussian mixture (`ring`, `grid` or explicit means; weights and stds settable from --set) with its exact
denoiser as teacher, for the VE/EDM or the VP schedule, unconditional or class-conditional (component k belongs to
class k % num_classes); a mis-specified copy of it (inflated stds, tilted weights: DMD2's "student beats the
teacher" setting) or a trained MLP teacher. The fake score is an EDM-preconditioned MLP regressed onto the teacher
(the toy's "copy of the teacher"), the generator a copy of it, the GAN head an MLP on its last hidden layer.
digits: scikit-learn's 8x8 digits with an EDM UNet2DModel teacher trained once and cached under cache_dir.
Full-scale tasks (imagenet64, sd, pixart) are built in common/diffusion/t2i.py.
Left out: data-set specific augmentation.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from common.config import BaseConfig, ConfigError, cfg_field
from common.data.toy2d import GaussianMixture, make_mixture
from common.diffusion.denoisers import MLPDenoiser, UNetDenoiser, VPDenoiser, freeze
from common.diffusion.distill import FixedTarget, GuidedTarget
from common.diffusion.losses import ConvGANHead, MLPGANHead
from common.diffusion.schedules import EDMSchedule, VPSchedule
from common.diffusion.teachers import AnalyticTeacher, load_small_denoiser, train_teacher

TASKS = ("toy2d", "digits", "imagenet64", "sd", "pixart")

__all__ = [
    "DistillConfig",
    "Setup",
    "TASKS",
    "build",
    "toy_mixtures",
    "regress_onto_teacher",
    "digits_teacher",
    "init_weights_from",
    "optim_settings",
    "draw_batches",
    "smoke_twin",
]


@dataclass(frozen=True)
class DistillConfig(BaseConfig):
    task: str = cfg_field("toy2d", "problem / backbone family", choices=TASKS)
    # --- toy data and teacher ---
    toy_layout: str = cfg_field("ring", "toy: mixture layout", choices=("ring", "grid", "explicit"))
    num_modes: int = cfg_field(8, "toy ring: modes on the ring", min=2)
    radius: float = cfg_field(2.0, "toy ring: radius", min=0.1)
    grid_side: int = cfg_field(5, "toy grid: modes per side", min=1)
    grid_spacing: float = cfg_field(2.0, "toy grid: distance between neighbouring modes", min=0.01)
    mode_means: tuple[float, ...] = cfg_field((), "toy explicit: means as x1,y1,x2,y2,... (layout=explicit)")
    mode_weights: tuple[float, ...] = cfg_field((), "toy: component weights (normalised); () = equal")
    mode_std: float = cfg_field(0.1, "toy: component std of the true data", min=1e-3)
    mode_stds: tuple[float, ...] = cfg_field((), "toy: one std per component; () = mode_std for all")
    num_classes: int = cfg_field(0, "toy: class-conditional with component k in class k % num_classes; 0 = off", min=0)
    toy_schedule: str = cfg_field(
        "edm", "toy: noise schedule (VE/EDM Karras grid or VP/DDPM betas)", choices=("edm", "vp")
    )
    beta_schedule: str = cfg_field(
        "linear", "VP toy: betas (linear 1e-4..0.02 as DDPM/PixArt)", choices=("linear", "scaled_linear")
    )
    teacher: str = cfg_field(
        "analytic",
        "toy: exact mixture denoiser, its mis-specified copy, or a trained MLP",
        choices=("analytic", "misspecified", "mlp"),
    )
    teacher_std_scale: float = cfg_field(1.5, "toy misspecified teacher: component std multiplier", min=0.1)
    teacher_weight_tilt: float = cfg_field(
        0.0, "toy misspecified teacher: weights w_k ∝ w_k exp(tilt * cos(2πk/K)); 0 keeps the true weights", min=0.0
    )
    fake_init_steps: int = cfg_field(
        300, "toy: steps regressing the fake score onto the teacher ('copy of teacher')", min=0
    )
    fake_init_cover: float = cfg_field(
        0.0,
        "toy: fraction of the copy-of-teacher regression inputs drawn around the origin (N(0, radius^2)) instead of "
        "the data, so the copy also agrees with the teacher where multi-step rollouts go",
        min=0.0,
        max=1.0,
    )
    width: int = cfg_field(128, "toy: MLP width of generator and fake score", min=8)
    depth: int = cfg_field(3, "toy: MLP hidden layers", min=1)
    # --- image data / models ---
    teacher_path: str = cfg_field("", "trained teacher folder or hub id ('' = train/cache it for digits)")
    teacher_steps: int = cfg_field(3000, "digits: teacher training steps (cached)", min=1)
    cache_dir: str = cfg_field("runs/cache", "where trained teachers and classifier features are cached")
    resolution: int = cfg_field(8, "image side in pixels (latent side = resolution / 8 for SD)", min=4)
    tiny_models: bool = cfg_field(False, "build tiny random diffusers models from config (smoke twins; no download)")
    real_data: str = cfg_field("", "full scale: image folder or HF dataset name of the GAN real images")
    prompts: str = cfg_field("", "full scale: text file with one prompt per line")
    real_guidance: float = cfg_field(1.0, "CFG scale of the teacher (real score); fake score is always 1", min=1.0)
    gen_timestep: int = cfg_field(999, "SD: conditioning timestep of the 1-step generator (SDXL: 399)", min=0, max=999)
    student_steps: tuple[int, ...] = cfg_field(
        (), "multi-step student: descending grid indices, e.g. (999, 749, 499, 249); () = 1 step from the max level"
    )
    multistep_input: str = cfg_field(
        "backward",
        "multi-step training input: own no-grad rollout (backward simulation) or forward-noised real data",
        choices=("backward", "forward_real"),
    )
    per_sample_k: str = cfg_field(
        "official",
        "multi-step: student step per sample or per batch ('official': per batch for backward simulation, "
        "per sample for forward-noised real, as the DMD2 code)",
        choices=("official", "sample", "batch"),
    )
    init_from: str = cfg_field(
        "", "weights-only initialisation of the generator: a run folder or a weights file (not a resume)"
    )
    # --- noise schedule (EDM/VE for toy, digits, imagenet64; VP for SD) ---
    sigma_min: float = cfg_field(0.002, "EDM grid sigma_min", min=1e-5)
    sigma_max: float = cfg_field(20.0, "EDM grid sigma_max (80 for images; 20 for the toy)", min=0.1)
    rho: float = cfg_field(7.0, "Karras grid rho", min=1.0)
    num_levels: int = cfg_field(1000, "levels of the discrete grid", min=10)
    sigma_data: float = cfg_field(0.0, "EDM sigma_data; 0 = measured data std (toy) / 0.5 (images)", min=0.0)
    dm_t_lo: float = cfg_field(0.02, "DM loss: lowest grid fraction (official code: 2%)", min=0.0, max=1.0)
    dm_t_hi: float = cfg_field(0.98, "DM loss: highest grid fraction, inclusive (official code: 98%)", min=0.0, max=1.0)
    # --- losses ---
    dm_weight: float = cfg_field(1.0, "weight of the DM loss (0 = GAN only ablation)", min=0.0)
    gan: bool = cfg_field(True, "add the diffusion-GAN on real data")
    w_g: float = cfg_field(
        3e-3,
        "generator GAN weight (gen_cls_loss_weight); with w_g_calibrate: multiple of the calibrated ratio",
        min=0.0,
    )
    w_d: float = cfg_field(1e-2, "discriminator loss weight in the critic loss (guidance_cls_loss_weight)", min=0.0)
    w_g_calibrate: bool = cfg_field(
        False, "authors' recipe: w_G = w_g * |grad L_DM| / |grad L_GAN| measured on the generator output once"
    )
    # --- optimisation ---
    ttur_ratio: int = cfg_field(5, "critic updates per generator update (TTUR)", min=1)
    gen_lr: float = cfg_field(2e-6, "generator learning rate", min=0.0)
    fake_lr: float = cfg_field(2e-6, "fake score + GAN head learning rate", min=0.0)
    weight_decay: float = cfg_field(0.01, "AdamW weight decay (official code)", min=0.0)
    warmup: int = cfg_field(500, "constant_with_warmup: warm-up iterations (official code: 500)", min=0)
    grad_clip: float = cfg_field(10.0, "gradient-norm clip of both optimisers (official code: 10)", min=0.0)
    ema_rates: tuple[float, ...] = cfg_field((), "generator EMA rates; () = none (official code)")
    gradient_checkpointing: bool = cfg_field(False, "UNet gradient checkpointing (SD presets)")
    teacher_dtype: str = cfg_field("fp32", "dtype of the frozen teacher", choices=("fp32", "bf16"))
    # --- evaluation ---
    eval_every: int = cfg_field(
        0, "generator steps between quick evaluations for the best checkpoint; 0 = end only", min=0
    )
    eval_samples: int = cfg_field(4096, "samples per evaluation", min=2)
    eval_batch: int = cfg_field(4096, "samples drawn per forward pass in evaluation (memory bound)", min=1)
    teacher_eval_steps: int = cfg_field(18, "teacher Heun/DDIM sampler steps for the teacher baseline", min=1)
    num_threads: int = cfg_field(
        0, "torch CPU threads; 0 = torch's default (the toy's small MLPs run best on 1)", min=0
    )
    benchmark: str = cfg_field("", "name of the results table this run belongs to ('' = from preset)")

    def check(self) -> None:
        if self.dm_t_lo >= self.dm_t_hi:
            raise ConfigError(f"dm_t_lo: {self.dm_t_lo} must be below dm_t_hi {self.dm_t_hi}")
        if list(self.student_steps) != sorted(self.student_steps, reverse=True):
            raise ConfigError(f"student_steps: {self.student_steps} must be descending")
        if any(not 0 <= s < self.num_levels for s in self.student_steps):
            raise ConfigError(f"student_steps: {self.student_steps} must lie in [0, {self.num_levels})")
        if self.task != "toy2d" and self.teacher != "analytic":
            raise ConfigError(f"teacher: {self.teacher!r} is a toy2d option; task is {self.task!r}")
        if self.dm_weight == 0 and not self.gan:
            raise ConfigError("dm_weight: 0 with gan=false leaves the generator without a loss")
        if any(not 0 < r < 1 for r in self.ema_rates):
            raise ConfigError(f"ema_rates: {self.ema_rates} must lie in (0, 1)")
        if self.tiny_models and self.teacher_path:
            raise ConfigError(
                "teacher_path: tiny_models=true builds tiny random networks and would ignore it; "
                "drop teacher_path or use the full preset"
            )
        if self.toy_layout == "explicit" and (not self.mode_means or len(self.mode_means) % 2):
            raise ConfigError(f"mode_means: layout=explicit needs x1,y1,x2,y2,... (got {self.mode_means})")
        k = {"ring": self.num_modes, "grid": self.grid_side**2, "explicit": len(self.mode_means) // 2}[self.toy_layout]
        if self.mode_weights and (len(self.mode_weights) != k or min(self.mode_weights) < 0):
            raise ConfigError(f"mode_weights: {self.mode_weights} must be {k} non-negative numbers")
        if self.mode_stds and (len(self.mode_stds) != k or min(self.mode_stds) <= 0):
            raise ConfigError(f"mode_stds: {self.mode_stds} must be {k} positive numbers")
        if self.num_classes > k:
            raise ConfigError(f"num_classes: {self.num_classes} exceeds the {k} mixture components")

    def check_inputs(self) -> None:
        """Files and models the run reads, checked before any download or training (also under --dry-run)."""
        super().check_inputs()
        from common.inputs import require_data_source, require_file, require_model

        if self.teacher_path:
            require_model("teacher_path", self.teacher_path)
        if self.real_data:
            require_data_source("real_data", self.real_data)
        if self.prompts:
            require_file("prompts", self.prompts)
        if self.init_from:
            from pathlib import Path

            if not Path(self.init_from).exists():
                raise ConfigError(f"init_from: {self.init_from} does not exist (a run folder or a weights file)")


@dataclass
class Setup:
    generator: nn.Module
    teacher: nn.Module
    fake: nn.Module
    head: nn.Module
    schedule: Any
    sample_real: Any  # (n, generator) -> (x0, cond)
    sample_cond: Any  # (n, generator) -> cond for the generator / scores (None when unconditional)
    noise_shape: tuple
    student_steps: list[int]
    fake_loss: str = "edm"
    extra: dict = field(default_factory=dict)
    target: Any = None  # the real-score provider; default: the teacher as a fixed target

    def __post_init__(self):
        if self.target is None:
            self.target = FixedTarget(self.teacher)


# ----------------------------------------------------------------------------- toy 2-D


def toy_mixtures(cfg) -> tuple[GaussianMixture, GaussianMixture]:
    """(true data mixture, teacher mixture). The mis-specified teacher inflates stds and/or tilts the weights."""
    w = list(cfg.mode_weights) or None
    if cfg.toy_layout == "ring":
        data = make_mixture("ring", k=cfg.num_modes, radius=cfg.radius, std=cfg.mode_std, weights=w)
    elif cfg.toy_layout == "grid":
        data = make_mixture("grid", side=cfg.grid_side, spacing=cfg.grid_spacing, std=cfg.mode_std, weights=w)
    else:
        means = torch.tensor(cfg.mode_means, dtype=torch.float64).reshape(-1, 2)
        data = make_mixture("explicit", means=means, weights=w, stds=cfg.mode_std)
    if cfg.mode_stds:
        data = GaussianMixture(data.means, data.weights, torch.tensor(cfg.mode_stds, dtype=torch.float64))
    if cfg.teacher != "misspecified":
        return data, data
    k = torch.arange(data.num_modes, dtype=torch.float64)
    tilt = torch.exp(cfg.teacher_weight_tilt * torch.cos(2 * math.pi * k / data.num_modes))
    w = data.weights * tilt if cfg.mode_weights else tilt
    return data, data.perturbed(std_scale=cfg.teacher_std_scale, weights=w / w.sum())


def _student_steps(cfg, schedule) -> list[int]:
    return list(cfg.student_steps) if cfg.student_steps else [schedule.max_index()]


def regress_onto_teacher(net, teacher, mixture, schedule, steps, batch, seed, cover=0.0, cover_std=1.0):
    """'Copy of the teacher' for an analytic teacher: regress the VE net(x, sigma) onto the teacher's VE denoiser
    over the schedule's grid (VP levels as their VE equivalent sigma / alpha).

    DMD2 starts the generator and the fake score as exact copies of the teacher network, which agree with it at every
    input. A regression copy agrees only where it was fitted: on noised data alone it is wrong away from the data,
    which is where a multi-step student's intermediate inputs lie (re-noised blurry early outputs near the centre).
    A fraction `cover` of the regression inputs therefore starts from N(0, cover_std^2 I) instead of the data."""
    if steps == 0:
        return
    g = torch.Generator().manual_seed(10_000 + seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(steps):
        x0 = mixture.sample(batch, g)
        if cover > 0:
            wide = torch.rand(batch, generator=g) < cover
            x0 = torch.where(wide[:, None], cover_std * torch.randn(x0.shape, generator=g).to(x0), x0)
        idx = schedule.sample_index(batch, generator=g)
        a, s = schedule.alpha_sigma(idx)
        s = s / a
        x_t = x0 + s[:, None] * torch.randn(x0.shape, generator=g)
        with torch.no_grad():
            target = teacher(x_t, s).float()
        w = s**-2 + schedule.sigma_data**-2
        loss = (w * ((net(x_t, s) - target) ** 2).sum(1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _labelled(x_comp, nc):
    return x_comp[0], x_comp[1] % nc


def build_toy(cfg, progress=None) -> Setup:
    data, teacher_mix = toy_mixtures(cfg)
    sd = cfg.sigma_data or float(data.sample(65536, torch.Generator().manual_seed(1234)).std(0).mean())
    if cfg.toy_schedule == "edm":
        schedule = EDMSchedule(cfg.sigma_min, cfg.sigma_max, cfg.rho, cfg.num_levels, sd)
    else:
        schedule = VPSchedule(cfg.beta_schedule, *((1e-4, 0.02) if cfg.beta_schedule == "linear" else (0.00085, 0.012)))
        schedule.sigma_data = sd
    nc = cfg.num_classes

    guided = bool(nc) and cfg.real_guidance != 1.0

    def as_cond(labels):  # the guided target needs the null class too; the student and fake read "cond"
        return {"cond": labels, "uncond": torch.full_like(labels, -1)} if guided else labels

    def sample_real(n, g):
        if not nc:
            return data.sample(n, g), None
        x, comp = data.sample(n, g, return_labels=True)
        return x, as_cond(comp % nc)

    class_w = torch.zeros(max(nc, 1), dtype=torch.float64).index_add_(
        0, torch.arange(data.num_modes) % max(nc, 1), data.weights
    )

    def sample_cond(n, g):
        if not nc:
            return None
        return as_cond(torch.multinomial(class_w.float(), n, replacement=True, generator=g))

    if cfg.teacher == "mlp":  # learned MLP teacher, 3x256, DSM with log-normal sigma (EDM Table 1)
        ve_teacher, _ = train_teacher(
            MLPDenoiser(2, 256, 3, sd, num_classes=nc),
            lambda n, g: (data.sample(n, g), None) if not nc else _labelled(data.sample(n, g, return_labels=True), nc),
            cache_dir=cfg.cache_dir,
            name="toy2d-mlp-teacher",
            spec={"data": data.to_dict(), "arch": [2, 256, 3, sd], **({"num_classes": nc} if nc else {})},
            steps=2000 if not cfg.tiny_models else 2,
            batch=2048,
            lr=1e-3,
            progress=progress,
        )
    else:
        ve_teacher = AnalyticTeacher(teacher_mix, num_classes=nc)

    fake = MLPDenoiser(2, cfg.width, cfg.depth, sd, num_classes=nc)
    regress_onto_teacher(
        fake,
        ve_teacher,
        teacher_mix,
        schedule,
        cfg.fake_init_steps,
        cfg.global_batch,
        cfg.seed,
        cover=cfg.fake_init_cover,
        cover_std=cfg.radius,
    )
    generator = copy.deepcopy(fake)
    head = MLPGANHead(fake.feature_dim, cfg.width)
    teacher = ve_teacher
    if schedule.kind == "vp":
        generator, fake = VPDenoiser(generator, schedule), VPDenoiser(fake, schedule)
        teacher = VPDenoiser(ve_teacher, schedule)
    target = GuidedTarget(freeze(teacher), cfg.real_guidance) if guided else None
    return Setup(
        generator,
        freeze(teacher),
        fake,
        head,
        schedule,
        sample_real,
        sample_cond,
        (2,),
        _student_steps(cfg, schedule),
        extra={"data": data, "teacher_mixture": teacher_mix},
        target=target,
    )


# ----------------------------------------------------------------------------- digits 8x8


def digits_unet(tiny: bool):
    from diffusers import UNet2DModel

    ch = (16, 32) if tiny else (32, 64)  # not in any paper: our CPU-sized UNet (mid block at 4x4)
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=ch,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8 if tiny else 32,
    )


def digits_teacher(cfg, progress=None) -> tuple[nn.Module, str]:
    """The digits teacher: load cfg.teacher_path, or train it once and cache it (common.diffusion.train_teacher)."""
    from common.data.digits import load_digits_split

    if cfg.teacher_path:
        net = load_small_denoiser(cfg.teacher_path, expect={"kind": "unet"})
        if net.unet.config.sample_size != cfg.resolution or net.unet.config.in_channels != 1:
            raise ValueError(
                f"teacher_path: {cfg.teacher_path} is a {net.unet.config.sample_size}px "
                f"{net.unet.config.in_channels}-channel UNet; the preset needs {cfg.resolution}px grey"
            )
        return freeze(net), cfg.teacher_path
    x, _ = load_digits_split("train")

    def sample(n, g):
        return x[torch.randint(len(x), (n,), generator=g)], None

    net, path = train_teacher(
        UNetDenoiser(digits_unet(cfg.tiny_models), sigma_data=cfg.sigma_data or 0.5),
        sample,
        cache_dir=cfg.cache_dir,
        name="digits-unet-teacher" + ("-tiny" if cfg.tiny_models else ""),
        spec={"data": "sklearn-digits-train", "tiny": cfg.tiny_models, "resolution": cfg.resolution},
        steps=cfg.teacher_steps,
        batch=128,
        lr=2e-3,
        progress=progress,
    )
    return net, str(path)


def build_digits(cfg, progress=None) -> Setup:
    from common.data.digits import load_digits_split

    teacher, teacher_path = digits_teacher(cfg, progress)
    schedule = EDMSchedule(cfg.sigma_min, cfg.sigma_max, cfg.rho, cfg.num_levels, cfg.sigma_data or 0.5)
    fake = copy.deepcopy(teacher).train().requires_grad_(True)
    generator = copy.deepcopy(teacher).train().requires_grad_(True)
    head = ConvGANHead(fake.feature_channels, 4, groups=8 if cfg.tiny_models else 32)
    x, _ = load_digits_split("train")

    def sample_real(n, g):
        return x[torch.randint(len(x), (n,), generator=g)], None

    return Setup(
        generator,
        teacher,
        fake,
        head,
        schedule,
        sample_real,
        lambda n, g: None,
        (1, 8, 8),
        _student_steps(cfg, schedule),
        extra={"teacher_path": teacher_path},
    )


# ----------------------------------------------------------------------------- dispatch and initialisation


def smoke_twin(cfg, toy_extra: dict | None = None, **kw):
    """A preset's smoke twin: the same code path on tiny networks for 3 iterations (the sizes per task below).

    `toy_extra`: a paper's own toy2d fields to shrink as well; `kw` overrides anything."""
    base = dict(
        steps=3,
        eval_samples=64,
        eval_every=0,
        warmup=0,
        ttur_ratio=min(cfg.ttur_ratio, 2),
        tiny_models=True,
        teacher_path="",  # tiny random networks: nothing is loaded
    )
    if cfg.task == "toy2d":
        base.update(global_batch=64, fake_init_steps=2, teacher_eval_steps=2, **(toy_extra or {}))
    elif cfg.task == "digits":
        base.update(global_batch=8, teacher_steps=2, teacher_eval_steps=2, eval_samples=32)
    else:
        base.update(global_batch=2, eval_samples=4, teacher_eval_steps=2, resolution=64 if cfg.task == "sd" else 32)
    return dataclasses.replace(cfg, **{**base, **kw})


def optim_settings(cfg, **overrides):
    """The loop's optimiser settings from the shared config (DMD2 official code: AdamW (0.9, 0.999), wd 0.01,
    constant_with_warmup, the same clip on both groups); a method overrides what it sets differently."""
    from common.diffusion.trainer import OptimSettings

    kw = dict(
        gen_lr=cfg.gen_lr,
        critic_lr=cfg.fake_lr,
        weight_decay=cfg.weight_decay,
        warmup=cfg.warmup,
        gen_clip=cfg.grad_clip,
        critic_clip=cfg.grad_clip,
        ttur_ratio=cfg.ttur_ratio,
        ema_rates=cfg.ema_rates,
    )
    return OptimSettings(**{**kw, **overrides})


def draw_batches(S: Setup, device):
    """draw(n, g) -> Batch for the loop: conditions, a real batch with its conditions, and noise, in that order."""
    from common.diffusion.trainer import Batch

    def draw(n, g):
        cond = S.sample_cond(n, g)
        real, real_cond = S.sample_real(n, g)
        z = torch.randn((n, *S.noise_shape), generator=g).to(device)
        return Batch(cond, real.to(device), real_cond, z)

    return draw


def init_weights_from(net: nn.Module, source: str, key: str = "generator") -> str:
    """Weights-only initialisation (not a resume: no optimiser, step or RNG state; any config may load it).

    source: a weights file (.safetensors, or .pt/.pth/.bin holding a state dict or a checkpoint with objects[key]),
    a folder saved by save_small_denoiser (model.safetensors or unet/), or a run folder (its `student/` export, else
    its latest checkpoint's `key`). A state dict of the bare backbone (the UNet / transformer inside a wrapped
    student) loads into the backbone. Every key must match: a partial load is an error, never silent."""
    from pathlib import Path

    p = Path(source)
    if p.is_dir() and (p / "student").is_dir():
        p = p / "student"
    elif p.is_dir() and (p / "checkpoints").is_dir():
        ckpts = sorted((p / "checkpoints").glob("ckpt-*.pt"))
        if not ckpts:
            raise ConfigError(f"init_from: {source} has no student/ export and no checkpoint")
        p = ckpts[-1]
    if p.is_dir() and (p / "model.safetensors").is_file():
        p = p / "model.safetensors"
    if p.is_dir() and (p / "unet").is_dir():
        from diffusers import UNet2DModel

        state = {f"unet.{k}": v for k, v in UNet2DModel.from_pretrained(p / "unet").state_dict().items()}
    elif p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    elif p.is_file():
        state = torch.load(p, map_location="cpu", weights_only=False)
        if isinstance(state, dict) and "objects" in state:
            state = state["objects"][key]
    else:
        raise ConfigError(f"init_from: {source} is neither a weights file nor a run folder")
    target = getattr(net, "net", net) if not any(k.startswith("net.") for k in state) else net  # VPDenoiser
    backbone = getattr(net, "unet", None)
    if isinstance(backbone, nn.Module) and isinstance(state, dict) and set(state) == set(backbone.state_dict()):
        # a bare backbone state dict, e.g. the official DMD2 SDXL generator after its LPIPS regression on teacher
        # ODE pairs (sdxl_lr1e-5_8node_ode_pretraining_10k_cond399_checkpoint_model_002000.bin, a UNet state dict
        # that main/sd_unified_model.py loads into the generator through --generator_ckpt_path)
        target = backbone
    try:
        missing, unexpected = target.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ConfigError(
            f"init_from: {source} does not fit the generator ({str(e).splitlines()[1].strip()})"
        ) from None
    if missing or unexpected:
        raise ConfigError(
            f"init_from: {source} does not fit the generator (missing {list(missing)[:5]}, "
            f"unexpected {list(unexpected)[:5]})"
        )
    return str(p)


def init_critic_from(S: Setup, source: str) -> list[str]:
    """The fake score (and the GAN head, when the earlier run had one) from a run folder's or a checkpoint file's
    latest checkpoint, with the generator: DMD2's --ckpt_only_path continuation (ImageNet 1.28 row, SD1.5 stage 2)
    starts both networks from the earlier stage. Sources without a checkpoint (a student export, a weights file)
    leave the fake score as the teacher copy. Returns the names loaded."""
    from pathlib import Path

    p = Path(source)
    if p.is_dir():
        ckpts = sorted((p / "checkpoints").glob("ckpt-*.pt")) if (p / "checkpoints").is_dir() else []
        if not ckpts:
            return []
        p = ckpts[-1]
    if p.suffix != ".pt":
        return []
    objects = torch.load(p, map_location="cpu", weights_only=False).get("objects", {})
    loaded = []
    for name, module in (("fake", S.fake), ("head", S.head)):
        if name in objects and module is not None:
            module.load_state_dict(objects[name], strict=True)
            loaded.append(name)
    return loaded


def build(cfg, progress=None) -> Setup:
    if cfg.task == "toy2d":
        S = build_toy(cfg, progress)
    elif cfg.task == "digits":
        S = build_digits(cfg, progress)
    else:
        from common.diffusion import t2i

        S = t2i.build(cfg)
    if cfg.init_from:
        S.extra["init_from"] = init_weights_from(S.generator, cfg.init_from)
        S.extra["init_from_critic"] = init_critic_from(S, cfg.init_from)
    return S
