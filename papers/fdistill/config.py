"""f-distill configuration and presets (Xu, Nie, Vahdat 2025, "One-step Diffusion Models with f-Divergence
Distribution Matching", arXiv:2502.15681).

`steps` counts iterations: the critic (fake score + discriminator head) updates every iteration and the generator
every `ttur_ratio`-th, so a run makes steps / ttur_ratio generator updates. `divergence` picks h(r) = r^2 f''(r)
(paper Table 1); `rkl` is DMD2. Presets: toy2d (embedded default: an imbalanced 8-mode ring whose minor modes a
mode-seeking student drops), digits, and full scale cifar10, imagenet64, sd15 (paper Table 5) -- each with a
"-smoke" twin (tiny models, 3 iterations, same code path).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from common.config import ConfigError, cfg_field
from common.diffusion.tasks import DistillConfig, smoke_twin
from papers.fdistill.losses import DIVERGENCES

# Imbalanced ring weights (a geometric-like decay; the smallest mode holds 0.5% of the mass). Not in the paper:
# the CPU stand-in for its mode-coverage argument (paper §3, Fig. 8).
IMBALANCED = (0.45, 0.25, 0.12, 0.08, 0.05, 0.03, 0.015, 0.005)


@dataclass(frozen=True)
class Config(DistillConfig):
    """The shared distillation config (common/diffusion/tasks.py) plus f-distill's own fields; defaults follow
    FastGen's f-distill where the paper is silent."""

    divergence: str = cfg_field("js", "f-divergence of the weighting h(r) (paper Table 1)", choices=tuple(DIVERGENCES))
    # --- f-weighting (paper §4.3; defaults: FastGen f_distill.py) ---
    logit_clamp: float = cfg_field(10.0, "clamp of the discriminator logit before exp", min=0.0)
    ratio_min: float = cfg_field(0.1, "lower clamp of r", min=0.0)
    ratio_max: float = cfg_field(20.0, "upper clamp of r", min=0.0)
    ratio_bins: int = cfg_field(10, "noise-level bins of the stage-1 normalisation of r", min=1)
    ratio_bin_space: str = cfg_field("linear", "bins equal-width in t (FastGen) or in log t", choices=("linear", "log"))
    ratio_ema_rate: float = cfg_field(
        0.0, "EMA rate of the per-bin mean of r (0 = batch mean; 0.5 ImageNet-64)", min=0.0, max=0.999
    )
    normalize_ratio: bool = cfg_field(True, "stage 1: divide r by its per-noise-level running mean")
    normalize_h: bool = cfg_field(True, "stage 2: divide h by its batch mean")
    rkl_warmup: int = cfg_field(0, "generator steps with h = 1 (reverse KL) while the discriminator is weak", min=0)
    # --- discriminator (supplies log r) ---
    disc_features: str = cfg_field(
        "teacher",
        "feature network of the discriminator head: frozen teacher (FastGen), fake score (DMD2), or the noised "
        "input itself with an MLP head (toy: the analytic teacher has no features)",
        choices=("teacher", "fake", "input"),
    )
    taps: tuple[str, ...] = cfg_field(("mid",), "feature taps of the head (one head per tap, logits averaged)")
    r1_weight: float = cfg_field(0.0, "approximate R1 weight gamma (Table 5: 1 CIFAR-10 / SD, 0 ImageNet)", min=0.0)
    r1_alpha: float = cfg_field(0.1, "approximate R1 perturbation scale", min=0.0)
    critic_clip: float = cfg_field(
        0.0, "critic gradient-norm clip (FastGen: none; grad_clip is the generator's)", min=0.0
    )
    # --- toy: skewed start ---
    init_mode: int = cfg_field(
        0, "toy: the initial generator is fitted to this mode only (the skewed q of paper Fig. 8); -1 = no skew", min=-1
    )
    init_steps: int = cfg_field(300, "toy: regression steps fitting the initial generator to its mode", min=0)
    ratio_check_sigmas: tuple[float, ...] = cfg_field(
        (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0), "toy: noise levels of the discriminator-ratio check"
    )
    ratio_check_kde: int = cfg_field(8192, "toy: generator samples in the KDE of q_sigma for the ratio check", min=16)
    # --- defaults that differ from the shared config (FastGen's f-distill) ---
    dm_t_lo: float = cfg_field(0.002, "DM loss: lowest grid fraction (FastGen: 0.2%)", min=0.0, max=1.0)
    dm_t_hi: float = cfg_field(0.998, "DM loss: highest grid fraction (FastGen: 99.8%)", min=0.0, max=1.0)
    warmup: int = cfg_field(0, "constant_with_warmup warm-up iterations (FastGen: 0)", min=0)
    mode_weights: tuple[float, ...] = cfg_field(IMBALANCED, "toy: component weights (normalised); () = equal")

    def check(self) -> None:
        super().check()
        if self.ratio_min >= self.ratio_max:
            raise ConfigError(f"ratio_min: {self.ratio_min} must be below ratio_max {self.ratio_max}")
        k = {"ring": self.num_modes, "grid": self.grid_side**2, "explicit": len(self.mode_means) // 2}[self.toy_layout]
        if self.init_mode >= k:
            raise ConfigError(f"init_mode: {self.init_mode} must be below the {k} mixture components (or -1)")
        if self.task == "toy2d" and self.disc_features == "teacher":
            raise ConfigError("disc_features: the toy's analytic teacher has no features; use 'input' or 'fake'")
        if self.task != "toy2d" and self.disc_features == "input":
            raise ConfigError(f"disc_features: 'input' is a toy2d option; task is {self.task!r}")
        if self.task == "toy2d" and (self.num_classes or self.toy_schedule != "edm"):
            raise ConfigError("num_classes / toy_schedule: the f-distill toy is an unconditional EDM mixture")
        if not self.gan:
            raise ConfigError("gan: f-distill reads the density ratio from the discriminator; it cannot be off")
        if self.student_steps:
            raise ConfigError("student_steps: f-distill trains one-step generators (paper §4)")
        if not self.taps:
            raise ConfigError("taps: at least one feature tap is needed for the discriminator")


def smoke(cfg: Config, **kw) -> Config:
    """Smoke twin: same code path, tiny models, 3 iterations."""
    return smoke_twin(cfg, toy_extra=dict(init_steps=2, ratio_check_kde=64), **kw)


# toy2d: imbalanced 8-mode ring (radius 2, std 0.1), exact mixture teacher, generator fitted to the largest mode
# first (the skewed start of paper Fig. 8). Batch, iterations and LRs: not in the paper, our 2-core budget.
TOY2D = Config(
    preset="toy2d",
    task="toy2d",
    method="js",
    divergence="js",  # paper: JS is the best divergence at scale (Tables 3, 4)
    global_batch=256,  # not in the paper: our 2-core budget
    steps=1500,  # 300 generator updates at TTUR 5 (not in the paper: our 2-core budget, shared machine)
    ttur_ratio=5,  # paper Table 5
    gen_lr=1e-3,  # not in the paper: our default for 2-D MLPs (as the DMD2 toy)
    fake_lr=1e-3,
    sigma_max=20.0,  # toy sigma_max: the 2-D data has std ~1.4
    disc_features="input",  # MLP discriminator on (x_t, sigma): the analytic teacher has no features
    w_g=3e-3,  # paper Table 5 (ImageNet-64)
    w_d=1e-2,
    eval_samples=4096,
    log_every=100,
    ckpt_every=1000,
    num_threads=1,  # small MLPs: extra threads only add synchronisation on a shared CPU
    benchmark="fdistill / toy2d: imbalanced 8-mode ring, skewed start",
)

# digits: sklearn 8x8 digits, UNet2DModel EDM teacher trained on CPU (cached, shared with the other diffusion
# papers), discriminator head on the frozen teacher's mid block. Not in the paper: our CPU tier.
DIGITS = Config(
    preset="digits",
    task="digits",
    method="js",
    divergence="js",
    resolution=8,
    global_batch=32,  # not in the paper: our 2-core budget
    steps=1000,  # 200 generator updates
    ttur_ratio=5,
    gen_lr=1e-4,  # paper Table 5 (CIFAR-10)
    fake_lr=1e-4,
    sigma_max=80.0,
    sigma_data=0.5,
    disc_features="teacher",  # FastGen: frozen-teacher features, trainable head
    w_g=3e-3,
    teacher_steps=1200,  # the cached digits teacher the other diffusion papers use (batch 128)
    eval_samples=1000,
    log_every=50,
    ckpt_every=250,
    num_threads=1,
    benchmark="fdistill / digits 8x8: 1-step student vs teacher",
)

# CIFAR-10 (paper Table 2 / Table 5): EDM cond. VP teacher, forward KL (the best row), batch 2048, TTUR 5,
# w_G 1e-3, head inputs at 32/16/8, lr 1e-4, wd 1e-2, R1 gamma 1, 60K iterations.
CIFAR10 = Config(
    preset="cifar10",
    task="imagenet64",  # the class-conditional EDM image task (common/diffusion/t2i.py), here at 32 px
    method="kl",
    divergence="kl",  # Table 2: forward KL FID 1.92
    resolution=32,
    global_batch=2048,  # Table 5
    steps=60000,  # Table 5 (FastGen: 100K iterations = 20K generator steps)
    ttur_ratio=5,  # Table 5 (FastGen: student_update_freq 5)
    gen_lr=1e-4,  # Table 5
    fake_lr=1e-4,
    sigma_max=80.0,
    sigma_data=0.5,
    disc_features="teacher",  # FastGen
    taps=("down0", "down1", "mid"),  # Table 5: heads on three encoder resolutions (logits averaged)
    w_g=1e-3,  # Table 5
    r1_weight=1.0,  # Table 5
    ema_rates=(0.9999, 0.99995),  # FastGen
    ckpt_every=1000,
    eval_samples=50000,  # FID-50K
    teacher_eval_steps=18,  # EDM Heun, NFE 35
    benchmark="fdistill / CIFAR-10 (cond.)",
)

# ImageNet 64x64 (paper Table 3 / Table 5): EDM ADM teacher, JS with ratio EMA 0.5, batch 512, w_G 3e-3, head on
# the 8x8 features, lr 2e-6 (then a 5e-7 fine-tune: --set gen_lr=5e-7 fake_lr=5e-7 init_from=...), R1 0.
IMAGENET64 = dataclasses.replace(
    CIFAR10,
    preset="imagenet64",
    task="imagenet64",
    method="js",
    divergence="js",  # Table 3: JS FID 1.16
    ratio_ema_rate=0.5,  # FastGen ImageNet-64 config
    resolution=64,
    global_batch=512,  # Table 5
    taps=("mid",),  # Table 5: (8), the 8x8 bottleneck
    steps=380000,  # Table 5
    gen_lr=2e-6,  # Table 5
    fake_lr=2e-6,
    w_g=3e-3,  # Table 5
    r1_weight=0.0,  # Table 5
    mixed_precision="bf16",
    teacher_dtype="bf16",
    teacher_eval_steps=256,  # EDM ODE, NFE 511
    benchmark="fdistill / ImageNet 64x64 (cond.)",
)

# SD v1.5 (paper Table 4 / Table 5): JS, teacher CFG 1.75, TTUR 10, batch 1024, w_G 1e-3, head on the mid block
# (8x8 at 512 px), lr 1e-5, R1 gamma 1, 60K iterations; t ~ U[0.001, 0.999] (FastGen).
SD15 = Config(
    preset="sd15",
    task="sd",
    method="js",
    divergence="js",  # Table 4: JS FID 7.42 at CFG 1.75
    teacher_path="stable-diffusion-v1-5/stable-diffusion-v1-5",  # mirror of runwayml/stable-diffusion-v1-5
    resolution=512,
    global_batch=1024,  # Table 5 (FastGen 2048)
    steps=60000,  # Table 5
    ttur_ratio=10,  # Table 5
    gen_lr=1e-5,  # Table 5
    fake_lr=1e-5,
    real_guidance=1.75,  # Table 4
    gen_timestep=999,
    dm_t_lo=0.001,  # FastGen SD1.5: t ~ U[0.001, 0.999]
    dm_t_hi=0.999,
    disc_features="teacher",
    taps=("mid",),  # Table 5: (8)
    w_g=1e-3,  # Table 5
    r1_weight=1.0,  # Table 5
    mixed_precision="bf16",
    teacher_dtype="bf16",
    gradient_checkpointing=True,
    ckpt_every=500,
    eval_samples=30000,  # zero-shot COCO-30K
    teacher_eval_steps=50,
    benchmark="fdistill / SD v1.5 COCO-30K (CFG 1.75)",
)

PRESETS: dict[str, Config] = {
    "toy2d": TOY2D,
    "digits": DIGITS,
    "cifar10": CIFAR10,
    "imagenet64": IMAGENET64,
    "sd15": SD15,
}
for _name, _cfg in list(PRESETS.items()):
    PRESETS[f"{_name}-smoke"] = smoke(_cfg, preset=f"{_name}-smoke")
