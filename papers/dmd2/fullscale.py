"""DMD2 full-scale backbones: ImageNet-64 (EDM teacher, class-conditional) and SD1.5 / SDXL (VP, eps, CFG).

Everything goes through diffusers / transformers: UNet2DModel (our stand-in for the NVlabs EDM network, see
README), UNet2DConditionModel, AutoencoderKL, CLIPTextModel(+WithProjection), CLIPTokenizer, DDIMScheduler
config for the betas, LCMScheduler for the exported student. With `tiny_models` every network is built from a
tiny config with random weights (no download): the smoke twins run the same code path on CPU.
The GAN head sits on the fake UNet's mid block (forward hook). SD1.5 unconditional embedding: the empty prompt;
SDXL: zeros; SDXL micro-conditioning time_ids (1024, 1024, 0, 0, 1024, 1024) (official code).
Left out: the NVlabs EDM pickle loader, SDXL LPIPS regression pre-training, LoRA, COCO evaluation prompts.
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from pathlib import Path

import torch

from common.diffusion.denoisers import CondDenoiser, EpsUNetDenoiser, UNetDenoiser, freeze
from common.diffusion.distill import GuidedTarget
from common.diffusion.losses import ConvGANHead
from common.diffusion.schedules import EDMSchedule, VPSchedule
from papers.dmd2.model import Setup

# ------------------------------------------------------------------ tiny components (smoke twins)


def tiny_tokenizer(max_length=16):
    """A byte-level CLIP tokenizer with no merges (vocab 514), written to a temp folder; no download."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    d = tempfile.mkdtemp(prefix="tiny-clip-tok-")
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    Path(d, "vocab.json").write_text(json.dumps(vocab))
    Path(d, "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(Path(d, "vocab.json")), str(Path(d, "merges.txt")), model_max_length=max_length)


def tiny_text_encoder(projection=False, hidden=32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    c = CLIPTextConfig(
        vocab_size=514,
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
        projection_dim=hidden,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(c)


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(16, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


def tiny_sd_unet(sdxl: bool):
    from diffusers import UNet2DConditionModel

    kw = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64 if sdxl else 32,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    if sdxl:
        kw.update(
            addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8
        )
    return UNet2DConditionModel(**kw)


# ------------------------------------------------------------------ ImageNet-64


def _real_image_loader(cfg, channels=3, with_labels=False):
    """Infinite sampler over cfg.real_data (image folder or HF dataset); random images for the smoke twins."""
    if cfg.tiny_models and not cfg.real_data:

        def sample(n, g):
            x = torch.rand((n, channels, cfg.resolution, cfg.resolution), generator=g) * 2 - 1
            return x, torch.randint(10, (n,), generator=g) if with_labels else None

        return sample
    if not cfg.real_data:
        raise ValueError("real_data: full-scale presets need an image folder or HF dataset name (--set real_data=...)")
    from common.data.images import hf_image_dataset, image_folder_dataset

    ds = (
        image_folder_dataset(cfg.real_data, cfg.resolution)
        if Path(cfg.real_data).is_dir()
        else hf_image_dataset(cfg.real_data, "train", cfg.resolution)
    )

    def sample(n, g):
        idx = torch.randint(len(ds), (n,), generator=g).tolist()
        items = [ds[i] for i in idx]
        x = torch.stack([it[0] if isinstance(it, (tuple, list)) else it["image"] for it in items])
        y = torch.tensor([int(it[1]) for it in items]) if with_labels and isinstance(items[0], (tuple, list)) else None
        return x, y

    return sample


def build_imagenet64(cfg) -> Setup:
    from diffusers import UNet2DModel

    from common.diffusion.teachers import load_small_denoiser

    sd = cfg.sigma_data or 0.5
    if cfg.tiny_models:
        unet = UNet2DModel(
            sample_size=cfg.resolution,
            in_channels=3,
            out_channels=3,
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            layers_per_block=1,
            norm_num_groups=16,
            num_class_embeds=10,
        )
        teacher = UNetDenoiser(unet, sd)
        n_classes = 10
    elif Path(cfg.teacher_path, "config.json").is_file() and json.loads(
        Path(cfg.teacher_path, "config.json").read_text()
    ).get("kind"):
        teacher = load_small_denoiser(cfg.teacher_path, expect={"kind": "unet"})
        n_classes = teacher.unet.config.num_class_embeds
    elif cfg.teacher_path:
        teacher = UNetDenoiser(UNet2DModel.from_pretrained(cfg.teacher_path), sd)
        n_classes = teacher.unet.config.num_class_embeds
    else:
        raise ValueError(
            "teacher_path: imagenet64 needs a diffusers-format EDM teacher folder (see papers/dmd2/README.md)"
        )
    if teacher.unet.config.sample_size != cfg.resolution:
        raise ValueError(
            f"teacher_path: teacher is {teacher.unet.config.sample_size}px, the preset needs {cfg.resolution}px"
        )
    generator = copy.deepcopy(teacher).train().requires_grad_(True)
    fake = copy.deepcopy(teacher).train().requires_grad_(True)
    if cfg.gradient_checkpointing:
        for m in (generator, fake):
            m.unet.enable_gradient_checkpointing()
    if cfg.teacher_dtype == "bf16":
        teacher.unet.to(torch.bfloat16)
    mid = cfg.resolution // 2 ** (len(teacher.unet.config.block_out_channels) - 1)
    head = ConvGANHead(teacher.feature_channels, mid, groups=16 if cfg.tiny_models else 32)
    schedule = EDMSchedule(cfg.sigma_min, cfg.sigma_max, cfg.rho, cfg.num_levels, sd)
    real = _real_image_loader(cfg, 3, with_labels=True)

    def sample_cond(n, g):
        return torch.randint(n_classes or 1, (n,), generator=g) if n_classes else None

    steps = list(cfg.student_steps) or [schedule.max_index()]
    return Setup(
        generator,
        freeze(teacher),
        fake,
        head,
        schedule,
        real,
        sample_cond,
        (3, cfg.resolution, cfg.resolution),
        steps,
        extra={"n_classes": n_classes},
    )


# ------------------------------------------------------------------ SD1.5 / SDXL


class TextEncoder:
    """Prompt -> conditioning dict for SD1.5 (one CLIP) or SDXL (two CLIPs, pooled text_embeds, time_ids)."""

    def __init__(self, tokenizers, encoders, sdxl: bool, resolution: int):
        self.tokenizers, self.encoders, self.sdxl, self.resolution = tokenizers, encoders, sdxl, resolution

    @torch.no_grad()
    def __call__(self, prompts: list[str], device) -> dict:
        hs, pooled = [], None
        for tok, enc in zip(self.tokenizers, self.encoders):
            ids = tok(
                prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
            ).input_ids.to(device)
            out = enc(ids, output_hidden_states=True)
            if self.sdxl:
                hs.append(out.hidden_states[-2])
                pooled = out[0] if enc is self.encoders[-1] else pooled
            else:
                hs.append(out.last_hidden_state)
        cond = {"encoder_hidden_states": torch.cat(hs, -1).float()}
        if self.sdxl:
            r = self.resolution  # official code: (1024, 1024, 0, 0, 1024, 1024)
            ids = torch.tensor([[r, r, 0, 0, r, r]], dtype=torch.float32, device=device).repeat(len(prompts), 1)
            cond["added_cond_kwargs"] = {"text_embeds": pooled.float(), "time_ids": ids}
        return cond


def _load_sd_components(cfg, sdxl):
    if cfg.tiny_models:
        toks = [tiny_tokenizer()] + ([tiny_tokenizer()] if sdxl else [])
        encs = [tiny_text_encoder(False)] + ([tiny_text_encoder(True)] if sdxl else [])
        from diffusers import DDIMScheduler

        return (
            toks,
            encs,
            tiny_vae(),
            tiny_sd_unet(sdxl),
            DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        )
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    p = cfg.teacher_path
    try:
        toks = [CLIPTokenizer.from_pretrained(p, subfolder="tokenizer")]
        encs = [CLIPTextModel.from_pretrained(p, subfolder="text_encoder")]
        if sdxl:
            toks.append(CLIPTokenizer.from_pretrained(p, subfolder="tokenizer_2"))
            encs.append(CLIPTextModelWithProjection.from_pretrained(p, subfolder="text_encoder_2"))
        vae = AutoencoderKL.from_pretrained(p, subfolder="vae")
        unet = UNet2DConditionModel.from_pretrained(p, subfolder="unet")
        sched = DDIMScheduler.from_pretrained(p, subfolder="scheduler")
    except OSError as e:
        raise OSError(
            f"teacher_path: cannot load {p!r} ({e}); download it with `huggingface-cli download {p}` "
            "or point teacher_path at a local diffusers folder"
        ) from None
    return toks, encs, vae, unet, sched


def _prompts(cfg):
    if cfg.prompts:
        lines = [ln.strip() for ln in Path(cfg.prompts).read_text().splitlines() if ln.strip()]
        if not lines:
            raise ValueError(f"prompts: {cfg.prompts} has no prompts")
        return lines
    if cfg.tiny_models:
        return ["a photo of a cat", "a red car", "a house by the sea", "an astronaut"]
    raise ValueError("prompts: full-scale SD presets need a text file of prompts (--set prompts=...)")


def build_sd(cfg) -> Setup:
    sdxl = cfg.preset.startswith("sdxl")
    toks, encs, vae, unet, sched = _load_sd_components(cfg, sdxl)
    for m in (vae, *encs):
        freeze(m)
    schedule = VPSchedule.from_diffusers(sched)
    teacher_unet = freeze(copy.deepcopy(unet))
    if cfg.teacher_dtype == "bf16":
        teacher_unet.to(torch.bfloat16)
    teacher = EpsUNetDenoiser(teacher_unet, schedule)
    generator = CondDenoiser(EpsUNetDenoiser(copy.deepcopy(unet).float().train().requires_grad_(True), schedule))
    fake = CondDenoiser(EpsUNetDenoiser(copy.deepcopy(unet).float().train().requires_grad_(True), schedule))
    if cfg.gradient_checkpointing:
        for m in (generator, fake):
            m.unet.enable_gradient_checkpointing()
    text = TextEncoder(toks, encs, sdxl, cfg.resolution)
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    lat = cfg.resolution // scale
    mid = lat // 2 ** (len(unet.config.block_out_channels) - 1)
    head = ConvGANHead(unet.config.block_out_channels[-1], mid, groups=16 if cfg.tiny_models else 32)
    prompts = _prompts(cfg)
    images = _real_image_loader(cfg, 3)
    dev_of = lambda: next(generator.parameters()).device  # noqa: E731
    uncond_cache = {}

    def uncond(n, device):
        if "u" not in uncond_cache:
            u = text([""], device)
            if sdxl:  # official code: zeros for SDXL
                u = {
                    "encoder_hidden_states": torch.zeros_like(u["encoder_hidden_states"]),
                    "added_cond_kwargs": {
                        "text_embeds": torch.zeros_like(u["added_cond_kwargs"]["text_embeds"]),
                        "time_ids": u["added_cond_kwargs"]["time_ids"],
                    },
                }
            uncond_cache["u"] = u
        u = uncond_cache["u"]
        rep = lambda v: v.expand(n, *v.shape[1:])  # noqa: E731
        return {
            k: (rep(v) if k != "added_cond_kwargs" else {kk: rep(vv) for kk, vv in v.items()}) for k, v in u.items()
        }

    def sample_cond(n, g):
        idx = torch.randint(len(prompts), (n,), generator=g).tolist()
        dev = dev_of()
        return {"cond": text([prompts[i] for i in idx], dev), "uncond": uncond(n, dev)}

    def sample_real(n, g):  # real latents with their own caption (prompt list stands in when no captions)
        x, _ = images(n, g)
        dev = dev_of()
        with torch.no_grad():
            lat_x = vae.to(dev).encode(x.to(dev)).latent_dist.sample() * vae.config.scaling_factor
        return lat_x, sample_cond(n, g)

    steps = list(cfg.student_steps) or [cfg.gen_timestep]
    return Setup(
        generator,
        teacher,
        fake,
        head,
        schedule,
        sample_real,
        sample_cond,
        (4, lat, lat),
        steps,
        fake_loss="eps_mse",
        target=GuidedTarget(teacher, cfg.real_guidance),
        extra={
            "vae": vae,
            "text": text,
            "toks": toks,
            "encs": encs,
            "unet_config": unet.config,
            "sdxl": sdxl,
            "scheduler": sched,
        },
    )


# ------------------------------------------------------------------ evaluation and export


def export_pipeline(cfg, S, G, path: Path) -> Path:
    """Save the student as a diffusers pipeline folder (LCMScheduler; timesteps stored as `dmd2_timesteps`)."""
    from diffusers import LCMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    from common.diffusion.teachers import _save_dir_atomic

    sched = LCMScheduler.from_config(
        S.extra["scheduler"].config, timestep_spacing="trailing", steps_offset=1, original_inference_steps=1000
    )
    sched.register_to_config(dmd2_timesteps=list(S.student_steps))
    unet = copy.deepcopy(G.unet).eval()
    vae, toks, encs = S.extra["vae"], S.extra["toks"], S.extra["encs"]
    if S.extra["sdxl"]:
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=encs[0],
            text_encoder_2=encs[1],
            tokenizer=toks[0],
            tokenizer_2=toks[1],
            unet=unet,
            scheduler=sched,
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=encs[0],
            tokenizer=toks[0],
            unet=unet,
            scheduler=sched,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    _save_dir_atomic(path, lambda tmp: pipe.save_pretrained(tmp, safe_serialization=True))
    return path


def evaluate_fullscale(cfg, run, S, G, state, train_wall_time_s=None) -> dict:
    """Sample the student (and the teacher sampler for throughput), save a grid, write the record, export.

    FID / CLIP score need Inception / CLIP weights that are not shipped; with them use common.metrics.fid
    (clean_fid_folders) on the folder of samples this writes. The record holds throughput, NFE, wall time.
    """
    from torchvision.utils import save_image

    from common.diffusion.samplers import ddim_teacher_sampler, edm_sampler, student_sample
    from common.launch import peak_memory_mb
    from common.results import make_record, write_record

    dev = run.device
    g = torch.Generator().manual_seed(777 + cfg.seed)
    n = cfg.eval_samples
    G.eval()
    z = torch.randn((n, *S.noise_shape), generator=g).to(dev)
    cond = S.sample_cond(n, g)
    t0 = time.perf_counter()
    with torch.no_grad():
        x, nfe = student_sample(G, S.schedule, S.student_steps, z, cond=cond, generator=g)
    thr = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    if S.schedule.kind == "edm":
        xt, t_nfe = edm_sampler(S.teacher, z, cfg.teacher_eval_steps, cfg.sigma_min, cfg.sigma_max, cfg.rho, cond=cond)
    else:
        xt, t_nfe = ddim_teacher_sampler(S.target, S.schedule, z, cfg.teacher_eval_steps, cond=cond)
        t_nfe *= 2 if cfg.real_guidance != 1.0 else 1
    thr_t = n / (time.perf_counter() - t0)
    if "vae" in S.extra:
        vae = S.extra["vae"]
        with torch.no_grad():
            x = vae.decode(x / vae.config.scaling_factor).sample
    metrics = {"student img/s": thr, "teacher img/s": thr_t, "throughput vs teacher": thr / thr_t}
    if run.is_main:
        save_image((x[:64].float().clamp(-1, 1) + 1) / 2, run.path("samples_student.png"), nrow=8)
        rec = make_record(
            paper="dmd2",
            preset=cfg.preset,
            method=cfg.method or "dmd2",
            seed=cfg.seed,
            benchmark=cfg.benchmark or f"dmd2 / {cfg.preset}",
            dataset=cfg.real_data or "random (smoke)",
            metrics=metrics,
            protocol={
                "samples": n,
                "note": "throughput only; FID/CLIP need Inception/CLIP weights (see README)",
                "teacher_nfe": t_nfe,
            },
            config=cfg,
            wall_time_s=train_wall_time_s or 0.0,
            nfe=nfe,
            sampling_throughput=thr,
            peak_memory_mb=peak_memory_mb(),
            train_wall_time_s=train_wall_time_s,
            extra={"w_g_effective": state["w_g"], "teacher_nfe": t_nfe},
        )
        write_record(rec, root=cfg.results_dir)
        if "vae" in S.extra:
            export_pipeline(cfg, S, G, run.path("pipeline"))
        else:
            from common.diffusion.teachers import save_small_denoiser

            save_small_denoiser(G, run.path("student"), meta={"task": cfg.task, "student_steps": S.student_steps})
        print(f"[dmd2] {cfg.preset}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    G.train()
    return metrics
