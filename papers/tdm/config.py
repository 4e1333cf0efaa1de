"""TDM configuration and presets (Luo et al. 2025, "Learning Few-Step Diffusion Models by Trajectory Distribution
Matching", arXiv:2503.06674; official demo `train_tdm_demo.py`, github.com/Luo-Yihong/TDM).

One iteration = one fake-score update and one generator update (1 : 1, official demo). Presets: toy2d (embedded
default), digits, and full scale pixart512, pixart1024, sdxl, sd15 -- each with a "-smoke" twin (tiny models,
3 iterations, same code path).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from common.config import BaseConfig, ConfigError, cfg_field
from papers.tdm.losses import FORMS
from papers.tdm.trajectory import MATCH_MODES

TASKS = ("toy2d", "digits", "pixart", "sd")


@dataclass(frozen=True)
class Config(BaseConfig):
    task: str = cfg_field("toy2d", "problem / backbone family", choices=TASKS)
    # --- toy data and teacher ---
    num_modes: int = cfg_field(8, "toy: modes on the ring", min=2)
    radius: float = cfg_field(2.0, "toy: ring radius", min=0.1)
    mode_std: float = cfg_field(0.1, "toy: component std", min=1e-3)
    toy_layout: str = cfg_field("ring", "toy: mixture layout (common.data.toy2d)", choices=("ring", "grid"))
    grid_side: int = cfg_field(5, "toy grid: modes per side", min=1)
    grid_spacing: float = cfg_field(2.0, "toy grid: distance between neighbouring modes", min=0.01)
    mode_weights: tuple[float, ...] = cfg_field((), "toy: component weights (normalised); () = equal")
    width: int = cfg_field(128, "toy: MLP width of student and fake score", min=8)
    depth: int = cfg_field(3, "toy: MLP hidden layers", min=1)
    init_steps: int = cfg_field(
        1500,
        "toy: steps (batch 1024) regressing the MLP onto the analytic teacher (the toy's 'copy of the teacher')",
        min=0,
    )
    # --- image data / models ---
    teacher_path: str = cfg_field(
        "", "digits: trained teacher folder ('' = train/cache it); full scale: hub id or folder"
    )
    teacher_steps: int = cfg_field(3000, "digits: teacher training steps (cached)", min=1)
    cache_dir: str = cfg_field("runs/cache", "where trained teachers and classifier features are cached")
    resolution: int = cfg_field(8, "image side in pixels (latent side = resolution / 8 for PixArt / SD)", min=4)
    tiny_models: bool = cfg_field(False, "build tiny random diffusers models from config (smoke twins; no download)")
    prompts: str = cfg_field("", "full scale: text file with one prompt per line (data-free: no images)")
    guidance: float = cfg_field(1.0, "CFG scale of the teacher (real score); the fake score is never guided", min=1.0)
    lora_rank: int = cfg_field(0, "full scale: LoRA rank of the student (0 = full fine-tune)", min=0)
    # --- VP schedule ---
    beta_schedule: str = cfg_field(
        "linear", "VP betas (toy/digits; full scale reads the model's scheduler)", choices=("linear", "scaled_linear")
    )
    beta_start: float = cfg_field(1e-4, "first beta (official demo: 1e-4, linear)", min=0.0)
    beta_end: float = cfg_field(0.02, "last beta (official demo: 0.02)", min=0.0)
    num_train_steps: int = cfg_field(1000, "steps of the discrete VP schedule", min=10)
    # --- the method ---
    total_steps: int = cfg_field(900, "student trajectory starts at total_steps - 1 (official demo: 900)", min=2)
    student_k: int = cfg_field(4, "student sampling steps K (the 4-step student)", min=1)
    unify: bool = cfg_field(
        False, "TDM-unify (Eq. 8): draw K from unify_ks per sample, condition student and fake on K"
    )
    unify_ks: tuple[int, ...] = cfg_field((1, 2, 4), "TDM-unify: the supported step counts")
    match: str = cfg_field(
        "trajectory",
        "matching sample: trajectory (TDM), clean (x0_hat diffused anywhere: 'matching clean samples'), overlap",
        choices=MATCH_MODES,
    )
    tau_min: int = cfg_field(20, "lowest matching level (official demo: 20)", min=0)
    tau_gap: int = cfg_field(10, "matching levels stop this far below the segment start (official demo: 10)", min=1)
    loss_form: str = cfg_field(
        "vector", "generator distance: vector pseudo-Huber (paper Eq. 6), elementwise (demo) or mse", choices=FORMS
    )
    huber_c: float = cfg_field(
        0.0, "pseudo-Huber c; 0 = the form's default (vector: 0.00054 sqrt(d); elementwise 1e-3)", min=0.0
    )
    normalise: bool = cfg_field(True, "divide the generator loss by omega = mean|x0_hat - mu_real| (official demo)")
    is_weights: bool = cfg_field(True, "importance weights in the fake-score loss (paper Eq. 7; official demo)")
    snr_clamp: float = cfg_field(5.0, "fake-score loss weight min(SNR(tau), snr_clamp) (official demo)", min=0.0)
    # --- optimisation (official demo: AdamW betas (0, 0.95), wd 1e-2, eps 1e-8; G clip 1) ---
    gen_lr: float = cfg_field(4e-6, "student learning rate (demo: fake lr / 5)", min=0.0)
    fake_lr: float = cfg_field(2e-5, "fake-score learning rate", min=0.0)
    adam_beta1: float = cfg_field(0.0, "AdamW beta1 (official demo: 0)", min=0.0, max=1.0)
    adam_beta2: float = cfg_field(0.95, "AdamW beta2 (official demo: 0.95)", min=0.0, max=1.0)
    weight_decay: float = cfg_field(1e-2, "AdamW weight decay (official demo)", min=0.0)
    lr_schedule: str = cfg_field(
        "cosine_with_restarts",
        "student LR schedule (diffusers get_scheduler; demo: cosine)",
        choices=("constant", "constant_with_warmup", "cosine", "cosine_with_restarts"),
    )
    warmup: int = cfg_field(50, "student LR warm-up iterations (official demo: 50); the fake LR is constant", min=0)
    grad_clip: float = cfg_field(1.0, "student gradient-norm clip (official demo: 1); 0 = off", min=0.0)
    ema_rates: tuple[float, ...] = cfg_field((), "student EMA rates; () = none (demo: optional --use_ema)")
    gradient_checkpointing: bool = cfg_field(False, "full scale: gradient checkpointing of student and fake score")
    teacher_dtype: str = cfg_field("fp32", "dtype of the frozen teacher", choices=("fp32", "bf16"))
    # --- evaluation ---
    eval_every: int = cfg_field(0, "iterations between validation scores in metrics.jsonl (toy/digits); 0 = off", min=0)
    eval_samples: int = cfg_field(4096, "samples per evaluation", min=2)
    eval_draws: int = cfg_field(1, "independent test draws (noise and reference) the metrics are averaged over", min=1)
    eval_batch: int = cfg_field(4096, "samples per sampling batch during evaluation", min=1)
    eval_ks: tuple[int, ...] = cfg_field((1, 2, 4), "student step counts evaluated (K must be trained for unify)")
    teacher_steps_eval: tuple[int, ...] = cfg_field((4, 100), "teacher DDIM step counts evaluated (same sampler)")
    num_threads: int = cfg_field(0, "torch CPU threads; 0 = torch's default (toy MLPs run best on 1)", min=0)
    benchmark: str = cfg_field("", "name of the results table this run belongs to ('' = from preset)")

    def check(self) -> None:
        if self.student_k > self.total_steps:
            raise ConfigError(f"student_k: {self.student_k} exceeds total_steps {self.total_steps}")
        if self.total_steps > self.num_train_steps:
            raise ConfigError(f"total_steps: {self.total_steps} exceeds num_train_steps {self.num_train_steps}")
        if self.tau_min + self.tau_gap >= self.total_steps:
            raise ConfigError(
                f"tau_min: {self.tau_min} + tau_gap {self.tau_gap} leave no level below {self.total_steps}"
            )
        if self.unify and (not self.unify_ks or any(k < 1 or k > self.total_steps for k in self.unify_ks)):
            raise ConfigError(f"unify_ks: {self.unify_ks} must be step counts in [1, {self.total_steps}]")
        if self.unify and self.student_k not in self.unify_ks:
            raise ConfigError(f"student_k: {self.student_k} is not among unify_ks {self.unify_ks}")
        if self.unify and any(k not in self.unify_ks for k in self.eval_ks):
            raise ConfigError(f"eval_ks: {self.eval_ks} must be among unify_ks {self.unify_ks} (K-conditioned model)")
        if any(k < 1 for k in (*self.eval_ks, *self.teacher_steps_eval)):
            raise ConfigError("eval_ks / teacher_steps_eval: step counts must be >= 1")
        if any(not 0 < r < 1 for r in self.ema_rates):
            raise ConfigError(f"ema_rates: {self.ema_rates} must lie in (0, 1)")
        k = self.num_modes if self.toy_layout == "ring" else self.grid_side**2
        if self.mode_weights and (len(self.mode_weights) != k or min(self.mode_weights) < 0):
            raise ConfigError(f"mode_weights: {self.mode_weights} must be {k} non-negative numbers")
        if self.beta_end <= self.beta_start:
            raise ConfigError(f"beta_end: {self.beta_end} must exceed beta_start {self.beta_start}")

    @property
    def train_ks(self) -> tuple[int, ...]:
        return tuple(self.unify_ks) if self.unify else (self.student_k,)


def smoke(cfg: Config, **kw) -> Config:
    """Smoke twin: same code path, tiny models, 3 iterations."""
    base = dict(steps=3, warmup=0, tiny_models=True, eval_samples=64, eval_batch=32)
    if cfg.task == "toy2d":
        base.update(global_batch=64, init_steps=2, teacher_steps_eval=(4, 8))
    elif cfg.task == "digits":
        base.update(global_batch=8, teacher_steps=2, eval_samples=48, teacher_steps_eval=(2, 4))
    else:
        base.update(
            global_batch=2,
            eval_samples=4,
            eval_batch=2,
            teacher_steps_eval=(2,),
            resolution=64 if cfg.task == "sd" else 32,
            mixed_precision="no",
            teacher_dtype="fp32",
            gradient_checkpointing=False,
        )
    return dataclasses.replace(cfg, **{**base, **kw})


# toy2d (not in the paper: our 2-D setting, after the official toy demo; 8-mode ring radius 2, std 0.1, analytic VP teacher, 1 : 1 updates, Adam betas (0, 0.95),
# lr G 1e-4 / fake 5e-4 = the demo's 1 : 5 ratio). Batch and length: not in the paper, our 2-core budget.
TOY2D = Config(
    preset="toy2d",
    task="toy2d",
    method="tdm",
    global_batch=512,  # not in the paper: our 2-core budget
    steps=1000,  # not in the paper: our 2-core budget
    gen_lr=1e-4,  # official toy demo
    fake_lr=5e-4,  # official toy demo: the 1 : 5 ratio
    lr_schedule="constant_with_warmup",  # not in the paper: the demo's cosine decay is for 10K iterations
    warmup=50,  # official demo
    eval_samples=4096,
    eval_ks=(1, 2, 4),
    teacher_steps_eval=(1, 2, 4, 100),
    log_every=100,
    ckpt_every=250,
    eval_every=100,
    num_threads=1,  # small MLPs: extra threads only add synchronisation on a shared CPU
    benchmark="tdm / toy2d: 4-step student vs analytic VP teacher",
)

# digits: sklearn 8x8 digits, EDM UNet2DModel teacher trained on CPU (cached) and read as a VP eps-model;
# not in the paper: our CPU image tier.
DIGITS = dataclasses.replace(
    TOY2D,
    preset="digits",
    task="digits",
    resolution=8,
    global_batch=64,  # not in the paper: our 2-core budget
    steps=600,
    gen_lr=2e-5,  # not in the paper: our default (UNet copy of the teacher)
    fake_lr=1e-4,  # the demo's 1 : 5 ratio
    teacher_steps=1200,
    eval_samples=1000,
    eval_batch=500,
    teacher_steps_eval=(4, 100),
    eval_ks=(1, 2, 4),
    log_every=50,
    ckpt_every=200,
    benchmark="tdm / digits 8x8: 4-step student vs teacher",
)

# PixArt-alpha 512, K = 4 (official demo README command): CFG 4.5, lr 2e-5 -> G 4e-6 / fake 2e-5, 16 x 2 GPUs,
# total_steps 900, linear betas, AdamW (0, 0.95), cosine_with_restarts with 50 warm-up steps, clip 1, 500 iterations
# (the README's reported model), fp16 autocast with fp32 trainables.
PIXART512 = Config(
    preset="pixart512",
    task="pixart",
    method="tdm",
    teacher_path="PixArt-alpha/PixArt-XL-2-512x512",
    resolution=512,
    global_batch=32,  # demo: 16 per device x 2 processes
    steps=500,  # demo README: the reported model is the 500-iteration one
    gen_lr=4e-6,  # demo README: lr 2e-5 / 5
    fake_lr=2e-5,
    guidance=4.5,  # demo README: --cfg 4.5
    total_steps=900,  # demo README
    beta_schedule="linear",
    lr_schedule="cosine_with_restarts",
    warmup=50,
    mixed_precision="fp16",  # demo: fp16 autocast, fp32 weights
    teacher_dtype="bf16",
    gradient_checkpointing=True,
    eval_samples=3200,  # HPSv2 benchmark: 4 styles x 800 prompts
    eval_batch=16,
    eval_ks=(4,),
    teacher_steps_eval=(4, 25),  # Table 1: teacher at 25 steps
    log_every=10,
    ckpt_every=50,
    benchmark="tdm / PixArt-alpha 512: HPSv2",
)

# PixArt-alpha 1024 (Table 1): batch 32, G 2e-6 / fake 2e-5, 500 iterations; CFG 4.5 not confirmed for 1024.
PIXART1024 = dataclasses.replace(
    PIXART512,
    preset="pixart1024",
    teacher_path="PixArt-alpha/PixArt-XL-2-1024-MS",
    resolution=1024,
    gen_lr=2e-6,  # paper §4
    benchmark="tdm / PixArt-alpha 1024: HPSv2 (Table 1)",
)

# SDXL 4-step (Table 1): CFG 7.5 (the teacher's evaluation CFG; training CFG not confirmed), batch 32,
# G 2e-6 / fake 2e-5 (not confirmed for SDXL: the paper's PixArt values), LoRA (not confirmed).
SDXL = dataclasses.replace(
    PIXART512,
    preset="sdxl",
    task="sd",
    teacher_path="stabilityai/stable-diffusion-xl-base-1.0",
    resolution=1024,
    gen_lr=2e-6,
    fake_lr=2e-5,
    guidance=7.5,
    lora_rank=64,  # not in the paper: our default rank
    total_steps=1000,  # not in the paper: student times 999, 749, 499, 249
    mixed_precision="bf16",
    benchmark="tdm / SDXL: HPSv2 (Table 1)",
)

# SD v1.5 (Tables 1, 5): TDM-unify over K in {1, 2, 4}, evaluated at 4 NFE; CFG 3.5 (the teacher's; not confirmed
# for training), batch 32, G 2e-6 / fake 2e-5 (not confirmed), full fine-tune (not confirmed).
SD15 = dataclasses.replace(
    SDXL,
    preset="sd15",
    teacher_path="stable-diffusion-v1-5/stable-diffusion-v1-5",  # mirror of runwayml/stable-diffusion-v1-5
    resolution=512,
    guidance=3.5,
    lora_rank=0,
    unify=True,
    unify_ks=(1, 2, 4),
    eval_ks=(1, 2, 4),
    benchmark="tdm / SD v1.5: HPSv2 (Tables 1, 5)",
)

PRESETS: dict[str, Config] = {
    "toy2d": TOY2D,
    "digits": DIGITS,
    "pixart512": PIXART512,
    "pixart1024": PIXART1024,
    "sdxl": SDXL,
    "sd15": SD15,
}
for _name, _cfg in list(PRESETS.items()):
    PRESETS[f"{_name}-smoke"] = smoke(_cfg, preset=f"{_name}-smoke")
