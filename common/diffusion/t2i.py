"""Full-scale backbones: ImageNet-64 (EDM, class-conditional) and text-to-image (SD1.5 / SDXL / PixArt-alpha).

Everything goes through diffusers / transformers: UNet2DModel (stand-in for the NVlabs EDM network; see
common/diffusion for the port), UNet2DConditionModel, PixArtTransformer2DModel, AutoencoderKL, the CLIP / T5 text
encoders, and the model's own DDIMScheduler config for the betas. Prompts are encoded by the diffusers pipeline's
`encode_prompt` (SD1.5: CLIP last hidden state, empty-prompt unconditional; SDXL: both CLIPs' penultimate states,
pooled text_embeds, zeros as unconditional as in the DMD2 code, micro-conditioning time_ids
(1024, 1024, 0, 0, 1024, 1024); PixArt: T5 with its attention mask, 120 tokens as in the TDM code). With
`tiny_models` every network is built from a tiny config with random weights (no download), so the smoke twins run
the same code path on CPU. The student is exported as a diffusers pipeline with an LCMScheduler (DMD2's inference).
Left out: LoRA, the SDXL LPIPS regression pre-training, COCO evaluation prompts.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import torch

from common.diffusion.denoisers import CondDenoiser, EpsDenoiser, UNetDenoiser, freeze
from common.diffusion.distill import GuidedTarget
from common.diffusion.losses import ConvGANHead
from common.diffusion.schedules import EDMSchedule, VPSchedule

__all__ = [
    "tiny_tokenizer",
    "tiny_text_encoder",
    "tiny_t5_encoder",
    "tiny_vae",
    "tiny_sd_unet",
    "tiny_pixart",
    "real_image_sampler",
    "PromptEncoder",
    "build",
    "export_pipeline",
]

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


def tiny_t5_encoder(hidden=32):
    """A 2-layer T5 encoder over the tiny tokenizer's vocabulary (PixArt's text encoder, random weights)."""
    from transformers import T5Config, T5EncoderModel

    c = T5Config(vocab_size=514, d_model=hidden, d_kv=8, d_ff=37, num_layers=2, num_heads=4, pad_token_id=513)
    return T5EncoderModel(c)


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


def tiny_pixart(sample_size=8):
    """PixArt-alpha transformer (adaLN-single, learned variance: 8 output channels for 4 latent channels)."""
    from diffusers import PixArtTransformer2DModel

    return PixArtTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=4,
        cross_attention_dim=16,
        caption_channels=32,
        sample_size=sample_size,
        patch_size=2,
        norm_num_groups=8,
    )


def tiny_imagenet_unet(resolution: int):
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=resolution,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=16,
        num_class_embeds=10,
    )


# ------------------------------------------------------------------ real images


def real_image_sampler(cfg, channels=3, with_labels=False):
    """Infinite sampler (n, g) -> (images in [-1, 1], labels or None) over cfg.real_data (image folder with class
    sub-folders, or a datasets name); random images for the smoke twins without real_data."""
    if cfg.tiny_models and not cfg.real_data:

        def sample(n, g):
            x = torch.rand((n, channels, cfg.resolution, cfg.resolution), generator=g) * 2 - 1
            return x, torch.randint(10, (n,), generator=g) if with_labels else None

        return sample
    if not cfg.real_data:
        raise ValueError("real_data: full-scale presets need an image folder or HF dataset name (--set real_data=...)")
    from common.data.images import hf_image_dataset, image_folder_dataset

    ds = (
        image_folder_dataset(cfg.real_data, cfg.resolution, channels)
        if Path(cfg.real_data).is_dir()
        else hf_image_dataset(cfg.real_data, "train", cfg.resolution, channels=channels)
    )

    def sample(n, g):
        items = [ds[i] for i in torch.randint(len(ds), (n,), generator=g).tolist()]
        x = torch.stack([it["image"] for it in items])
        if not with_labels:
            return x, None
        if any("label" not in it for it in items):
            raise ValueError(f"real_data: {cfg.real_data} has no labels; a class-conditional task needs class folders")
        return x, torch.tensor([it["label"] for it in items])

    return sample


# ------------------------------------------------------------------ ImageNet-64 (EDM, class-conditional)


def build_imagenet64(cfg):
    from diffusers import UNet2DModel

    from common.diffusion.tasks import Setup, _student_steps
    from common.diffusion.teachers import load_small_denoiser

    sd = cfg.sigma_data or 0.5
    edm_kind = None
    if cfg.teacher_path and Path(cfg.teacher_path, "config.json").is_file():
        edm_kind = json.loads(Path(cfg.teacher_path, "config.json").read_text()).get("kind")
    if cfg.tiny_models:
        teacher = UNetDenoiser(tiny_imagenet_unet(cfg.resolution), sd)
    elif edm_kind == "edm":  # the paper's teacher: EDM's ADM pickle converted by common.diffusion.edm_convert
        from common.diffusion.edm_convert import load_edm_net

        teacher = load_edm_net(cfg.teacher_path, dropout=0.0)  # official code: dropout 0 for the trained copies
    elif edm_kind:
        teacher = load_small_denoiser(cfg.teacher_path, expect={"kind": "unet"})
    elif cfg.teacher_path:
        teacher = UNetDenoiser(UNet2DModel.from_pretrained(cfg.teacher_path), sd)
    else:
        raise ValueError(
            "teacher_path: imagenet64 needs the EDM teacher converted by `python -m common.diffusion.edm_convert "
            "edm-imagenet-64x64-cond-adm.pkl DIR` (or a diffusers UNet2DModel folder)"
        )
    edm = edm_kind == "edm"
    res = teacher.img_resolution if edm else teacher.unet.config.sample_size
    n_classes = teacher.label_dim if edm else teacher.unet.config.num_class_embeds
    if res != cfg.resolution:
        raise ValueError(f"teacher_path: teacher is {res}px, the preset needs {cfg.resolution}px")
    if edm and cfg.gradient_checkpointing:
        raise ValueError(
            "gradient_checkpointing: not available for the EDM networks (the official run does not use it)"
        )
    generator = copy.deepcopy(teacher).train().requires_grad_(True)
    fake = copy.deepcopy(teacher).train().requires_grad_(True)
    if cfg.gradient_checkpointing:
        for m in (generator, fake):
            m.unet.enable_gradient_checkpointing()
    if cfg.teacher_dtype == "bf16":
        teacher.to(torch.bfloat16)
    if edm:
        mid = cfg.resolution // 2 ** (len(teacher.cfg.model_kwargs.get("channel_mult", (1, 2, 3, 4))) - 1)
    else:
        mid = cfg.resolution // 2 ** (len(teacher.unet.config.block_out_channels) - 1)
    head = ConvGANHead(teacher.feature_channels, mid, groups=16 if cfg.tiny_models else 32)
    schedule = EDMSchedule(cfg.sigma_min, cfg.sigma_max, cfg.rho, cfg.num_levels, sd)

    def sample_cond(n, g):
        return torch.randint(n_classes, (n,), generator=g) if n_classes else None

    return Setup(
        generator,
        freeze(teacher),
        fake,
        head,
        schedule,
        real_image_sampler(cfg, 3, with_labels=bool(n_classes)),
        sample_cond,
        (3, cfg.resolution, cfg.resolution),
        _student_steps(cfg, schedule),
        extra={"n_classes": n_classes},
    )


# ------------------------------------------------------------------ text-to-image


class PromptEncoder:
    """Prompts -> {"cond": ..., "uncond": ...} for the guided teacher, through the pipeline's `encode_prompt`."""

    def __init__(self, pipe, kind: str, resolution: int):
        self.pipe, self.kind, self.resolution = pipe, kind, resolution

    def _encode(self, prompts, device, cfg_branch: bool):
        p = self.pipe
        if self.kind == "sdxl":
            c, u, pooled, upooled = p.encode_prompt(prompts, device=device, do_classifier_free_guidance=cfg_branch)
            r = self.resolution  # official code: (1024, 1024, 0, 0, 1024, 1024) at 1024 px
            ids = torch.tensor([[r, r, 0, 0, r, r]], dtype=torch.float32, device=device).repeat(len(prompts), 1)
            out = {
                "encoder_hidden_states": c.float(),
                "added_cond_kwargs": {"text_embeds": pooled.float(), "time_ids": ids},
            }
            un = {
                "encoder_hidden_states": u.float(),
                "added_cond_kwargs": {"text_embeds": upooled.float(), "time_ids": ids},
            }
        elif self.kind == "pixart":
            c, cm, u, um = p.encode_prompt(
                prompts,
                do_classifier_free_guidance=cfg_branch,
                device=device,
                max_sequence_length=p.tokenizer.model_max_length,
            )
            out = {"encoder_hidden_states": c.float(), "encoder_attention_mask": cm}
            un = {"encoder_hidden_states": u.float(), "encoder_attention_mask": um} if u is not None else None
        else:
            c, u = p.encode_prompt(prompts, device, 1, cfg_branch)
            out = {"encoder_hidden_states": c.float()}
            un = {"encoder_hidden_states": u.float()} if u is not None else None
        return out, un

    @torch.no_grad()
    def __call__(self, prompts: list[str], device) -> dict:
        cond, uncond = self._encode(prompts, device, cfg_branch=True)
        return {"cond": cond, "uncond": uncond}


def _load_components(cfg, kind):
    """(pipeline with the teacher's backbone, backbone, DDIM scheduler) from tiny configs or cfg.teacher_path."""
    from diffusers import (
        DDIMScheduler,
        PixArtAlphaPipeline,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    if cfg.tiny_models:
        sched = DDIMScheduler(
            beta_schedule="linear" if kind == "pixart" else "scaled_linear",
            beta_start=1e-4 if kind == "pixart" else 0.00085,
            beta_end=0.02 if kind == "pixart" else 0.012,
        )
        if kind == "pixart":
            tok = tiny_tokenizer()
            pipe = PixArtAlphaPipeline(
                tokenizer=tok,
                text_encoder=tiny_t5_encoder(),
                vae=tiny_vae(),
                transformer=tiny_pixart(cfg.resolution // 8),
                scheduler=sched,
            )
        elif kind == "sdxl":
            pipe = StableDiffusionXLPipeline(
                vae=tiny_vae(),
                text_encoder=tiny_text_encoder(False),
                text_encoder_2=tiny_text_encoder(True),
                tokenizer=tiny_tokenizer(),
                tokenizer_2=tiny_tokenizer(),
                unet=tiny_sd_unet(True),
                scheduler=sched,
            )
        else:
            pipe = StableDiffusionPipeline(
                vae=tiny_vae(),
                text_encoder=tiny_text_encoder(False),
                tokenizer=tiny_tokenizer(),
                unet=tiny_sd_unet(False),
                scheduler=sched,
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
    else:
        cls = {"sd15": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline, "pixart": PixArtAlphaPipeline}[kind]
        kw = {"safety_checker": None, "requires_safety_checker": False} if kind == "sd15" else {}
        try:
            pipe = cls.from_pretrained(cfg.teacher_path, **kw)
            sched = DDIMScheduler.from_pretrained(cfg.teacher_path, subfolder="scheduler")
        except OSError as e:
            raise OSError(
                f"teacher_path: cannot load {cfg.teacher_path!r} ({e}); download it with "
                f"`huggingface-cli download {cfg.teacher_path}` or point teacher_path at a local diffusers folder"
            ) from None
    backbone = pipe.transformer if kind == "pixart" else pipe.unet
    return pipe, backbone, sched


def _prompts(cfg):
    if cfg.prompts:
        lines = [ln.strip() for ln in Path(cfg.prompts).read_text().splitlines() if ln.strip()]
        if not lines:
            raise ValueError(f"prompts: {cfg.prompts} has no prompts")
        return lines
    if cfg.tiny_models:
        return ["a photo of a cat", "a red car", "a house by the sea", "an astronaut"]
    raise ValueError("prompts: full-scale text-to-image presets need a text file of prompts (--set prompts=...)")


def t2i_kind(cfg) -> str:
    if cfg.task == "pixart":
        return "pixart"
    return "sdxl" if cfg.preset.startswith("sdxl") else "sd15"


def build_t2i(cfg, real_images: bool = True, gan_head: bool = True):
    """Teacher, generator and fake score (copies of the teacher), prompt sampler, schedule of a text-to-image task.

    real_images / gan_head False: a data-free method without a discriminator (TDM) needs no image data and no head;
    `sample_real` then raises and the head is None."""
    from common.diffusion.tasks import Setup

    kind = t2i_kind(cfg)
    pipe, backbone, sched = _load_components(cfg, kind)
    for m in (pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if m is not None:
            freeze(m)
    schedule = VPSchedule.from_diffusers(sched)
    teacher_net = freeze(copy.deepcopy(backbone))
    if cfg.teacher_dtype == "bf16":
        teacher_net.to(torch.bfloat16)
    teacher = EpsDenoiser(teacher_net, schedule)
    generator = CondDenoiser(EpsDenoiser(copy.deepcopy(backbone).float().train().requires_grad_(True), schedule))
    fake = CondDenoiser(EpsDenoiser(copy.deepcopy(backbone).float().train().requires_grad_(True), schedule))
    if cfg.gradient_checkpointing:
        for m in (generator, fake):
            m.unet.enable_gradient_checkpointing()
    encode = PromptEncoder(pipe, kind, cfg.resolution)
    lat = cfg.resolution // pipe.vae_scale_factor
    if kind == "pixart":
        mid = lat // backbone.config.patch_size
        channels = fake.feature_channels
    else:
        mid = lat // 2 ** (len(backbone.config.block_out_channels) - 1)
        channels = backbone.config.block_out_channels[-1]
    head = ConvGANHead(channels, mid, groups=min(16 if cfg.tiny_models else 32, channels)) if gan_head else None
    prompts = _prompts(cfg)
    images = real_image_sampler(cfg, 3) if real_images else None
    vae = pipe.vae

    def dev():
        return next(generator.parameters()).device

    def sample_cond(n, g):
        idx = torch.randint(len(prompts), (n,), generator=g).tolist()
        return encode([prompts[i] for i in idx], dev())

    def sample_real(n, g):  # real latents; the prompt list stands in for their captions
        if images is None:
            raise ValueError("this text-to-image task was built without real images (real_images=False)")
        x, _ = images(n, g)
        with torch.no_grad():
            lat_x = vae.to(dev()).encode(x.to(dev())).latent_dist.sample() * vae.config.scaling_factor
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
        extra={"pipe": pipe, "vae": vae, "kind": kind, "scheduler": sched},
    )


def build(cfg):
    return build_imagenet64(cfg) if cfg.task == "imagenet64" else build_t2i(cfg)


def export_pipeline(S, G, path: Path, timesteps) -> Path:
    """Save the student as a diffusers pipeline folder (LCMScheduler; timesteps stored as `student_timesteps` and,
    for DMD2's released pipelines' key, `dmd2_timesteps`)."""
    from diffusers import LCMScheduler

    from common.diffusion.teachers import _save_dir_atomic

    sched = LCMScheduler.from_config(
        S.extra["scheduler"].config, timestep_spacing="trailing", steps_offset=1, original_inference_steps=1000
    )
    sched.register_to_config(dmd2_timesteps=list(timesteps), student_timesteps=list(timesteps))
    pipe = S.extra["pipe"]
    name = "transformer" if S.extra["kind"] == "pixart" else "unet"
    kw = {"requires_safety_checker": False} if S.extra["kind"] == "sd15" else {}
    out = type(pipe)(**{**pipe.components, name: copy.deepcopy(G.unet).eval(), "scheduler": sched}, **kw)
    _save_dir_atomic(path, lambda tmp: out.save_pretrained(tmp, safe_serialization=True))
    return path
