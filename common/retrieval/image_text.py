"""Image-text encoders for cross-encoder -> dual-encoder distillation (CPRD).

* ``TwoTower``: a dual encoder. Image tower = any timm model (``num_classes`` = projection dim, so timm's own head
  projects), text tower = any transformers encoder (CLS or mean pooling, then a linear projection); L2-normalised
  embeddings scored by a dot product; a learnable temperature clamped to [tau_min, tau_max] (BLIP-style clamp).
  ``CLIPTwoTower`` wraps ``CLIPModel`` behind the same interface.
* ``ImageTextCrossEncoder``: an image-text matching (ITM) cross encoder, ALBEF/BLIP style (a ViT, a text encoder
  whose layers cross-attend to the image tokens, a 2-way ITM head on the text CLS). Built on transformers'
  ``BlipForImageTextRetrieval`` (``use_itm_head=True``), from a hub checkpoint (Salesforce/blip-itm-*) or a small
  config. Image tokens are computed once per image and reused for every caption it is paired with.
* ``itm_scores``: the adapter from 2-way ITM logits to one score per pair (``match_logit`` = the "match" logit,
  ``match_prob`` = softmax[:, 1], ``logit_diff`` = logit[1] - logit[0]).
* ``gather_with_grad``: all-gather of embeddings across processes; the local slice keeps its gradient, remote
  slices are constants (the usual CLIP/BLIP practice).

Left out: ALBEF itself (not in transformers; LAVIS), momentum distillation, queues.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SCORE_KINDS = ("match_logit", "match_prob", "logit_diff")


def itm_scores(logits: torch.Tensor, kind: str = "match_logit") -> torch.Tensor:
    """(N, 2) ITM logits (index 1 = match) -> (N,) scores."""
    if logits.dim() != 2 or logits.shape[-1] != 2:
        raise ValueError(f"itm_scores expects (N, 2) logits, got {tuple(logits.shape)}")
    if kind == "match_logit":
        return logits[:, 1]
    if kind == "match_prob":
        return logits.float().softmax(-1)[:, 1]
    if kind == "logit_diff":
        return logits[:, 1] - logits[:, 0]
    raise ValueError(f"score_kind: {kind!r} not in {SCORE_KINDS}")


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x over processes (rank order); only this process's slice carries gradient."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return x
    world = torch.distributed.get_world_size()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    torch.distributed.all_gather(parts, x.detach().contiguous())
    parts[torch.distributed.get_rank()] = x
    return torch.cat(parts)


class ClampedTemperature(nn.Module):
    """Learnable tau, stored as log tau and clamped to [tau_min, tau_max] on every read."""

    def __init__(self, init: float = 0.07, tau_min: float = 0.001, tau_max: float = 0.5, learnable: bool = True):
        super().__init__()
        if not tau_min <= init <= tau_max:
            raise ValueError(f"temperature init {init} outside [{tau_min}, {tau_max}]")
        self.log_tau = nn.Parameter(torch.tensor(math.log(init)), requires_grad=learnable)
        self.tau_min, self.tau_max = tau_min, tau_max

    def forward(self) -> torch.Tensor:
        return self.log_tau.exp().clamp(self.tau_min, self.tau_max)


class TwoTower(nn.Module):
    """timm image tower + transformers text tower -> normalised embeddings of dim ``embed_dim``."""

    def __init__(
        self,
        image_tower: nn.Module,
        text_tower: nn.Module,
        tokenizer,
        embed_dim: int,
        max_text_len: int = 32,
        text_pooling: str = "cls",
        tau_init: float = 0.07,
        tau_min: float = 0.001,
        tau_max: float = 0.5,
    ):
        super().__init__()
        if text_pooling not in ("cls", "mean"):
            raise ValueError(f"text_pooling: {text_pooling!r} not in ('cls', 'mean')")
        if getattr(text_tower, "pooler", None) is not None:  # unused (we pool ourselves); DDP rejects unused params
            text_tower.pooler = None
        self.image_tower, self.text_tower, self.tokenizer = image_tower, text_tower, tokenizer
        self.text_proj = nn.Linear(text_tower.config.hidden_size, embed_dim)
        self.max_text_len, self.text_pooling = max_text_len, text_pooling
        self.temperature = ClampedTemperature(tau_init, tau_min, tau_max)

    @classmethod
    def from_timm_and_transformers(
        cls, timm_name: str, text_name_or_config, embed_dim: int, pretrained: bool = False, tokenizer=None, **kw
    ) -> TwoTower:
        """Image tower ``timm.create_model(timm_name, num_classes=embed_dim)``; text tower from a hub name / folder
        (``AutoModel.from_pretrained``) or a config object (``AutoModel.from_config``). Extra ``timm_*`` keys go to
        timm (e.g. ``timm_img_size=32``)."""
        import timm
        from transformers import AutoModel, AutoTokenizer, PretrainedConfig

        timm_kw = {k[5:]: v for k, v in kw.items() if k.startswith("timm_")}
        kw = {k: v for k, v in kw.items() if not k.startswith("timm_")}
        image = timm.create_model(timm_name, pretrained=pretrained, num_classes=embed_dim, **timm_kw)
        if isinstance(text_name_or_config, PretrainedConfig):
            text = AutoModel.from_config(text_name_or_config)
        else:
            text = AutoModel.from_pretrained(text_name_or_config)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(text_name_or_config)
        if tokenizer is None:
            raise ValueError("a text tower built from a config needs a tokenizer")
        return cls(image, text, tokenizer, embed_dim, **kw)

    @property
    def device(self) -> torch.device:
        return self.text_proj.weight.device

    @property
    def tau(self) -> torch.Tensor:
        return self.temperature()

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_text_len, return_tensors="pt"
        )
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_tower(pixel_values.to(self.device)), dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenize(texts)
        h = self.text_tower(**batch).last_hidden_state
        if self.text_pooling == "cls":
            v = h[:, 0]
        else:
            m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
            v = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        return F.normalize(self.text_proj(v), dim=-1)

    def forward(self, pixel_values: torch.Tensor, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(pixel_values), self.encode_text(texts)


class CLIPTwoTower(nn.Module):
    """``CLIPModel`` behind the TwoTower interface (its own projections; tau = 1 / logit_scale, clamped)."""

    def __init__(self, clip, processor_or_tokenizer, max_text_len: int = 77, tau_min: float = 0.01):
        super().__init__()
        self.clip, self.tokenizer = clip, getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)
        self.max_text_len, self.tau_min = max_text_len, tau_min

    @classmethod
    def from_pretrained(cls, name: str, **kw) -> CLIPTwoTower:
        from transformers import AutoTokenizer, CLIPModel

        return cls(CLIPModel.from_pretrained(name), AutoTokenizer.from_pretrained(name), **kw)

    @property
    def device(self) -> torch.device:
        return self.clip.logit_scale.device

    @property
    def tau(self) -> torch.Tensor:
        return (1.0 / self.clip.logit_scale.exp()).clamp_min(self.tau_min)  # CLIP: logit scale <= 100

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.clip.get_image_features(pixel_values=pixel_values.to(self.device))
        return F.normalize(getattr(out, "pooler_output", out), dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_text_len, return_tensors="pt"
        )
        out = self.clip.get_text_features(
            input_ids=enc["input_ids"].to(self.device), attention_mask=enc["attention_mask"].to(self.device)
        )
        return F.normalize(getattr(out, "pooler_output", out), dim=-1)

    def forward(self, pixel_values, texts):
        return self.encode_image(pixel_values), self.encode_text(texts)


class ImageTextCrossEncoder(nn.Module):
    """ITM cross encoder on ``BlipForImageTextRetrieval``: ``logits(image_tokens, texts) -> (N, 2)``."""

    def __init__(self, blip, tokenizer, max_text_len: int = 35, score_kind: str = "match_logit"):
        super().__init__()
        if score_kind not in SCORE_KINDS:
            raise ValueError(f"score_kind: {score_kind!r} not in {SCORE_KINDS}")
        self.blip, self.tokenizer = blip, tokenizer
        self.max_text_len, self.score_kind = max_text_len, score_kind

    @classmethod
    def from_pretrained(cls, name: str, **kw) -> ImageTextCrossEncoder:
        from transformers import AutoProcessor, BlipForImageTextRetrieval

        proc = AutoProcessor.from_pretrained(name)
        return cls(BlipForImageTextRetrieval.from_pretrained(name), proc.tokenizer, **kw)

    @classmethod
    def from_config(cls, config, tokenizer, **kw) -> ImageTextCrossEncoder:
        from transformers import BlipForImageTextRetrieval

        return cls(BlipForImageTextRetrieval(config), tokenizer, **kw)

    @property
    def device(self) -> torch.device:
        return self.blip.itm_head.weight.device

    def image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.blip.vision_model(pixel_values=pixel_values.to(self.device)).last_hidden_state

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_text_len, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device)}

    def logits(self, image_tokens: torch.Tensor, texts: list[str] | dict) -> torch.Tensor:
        """(N, L, H) image tokens paired row-wise with N texts (strings or a tokenized batch) -> (N, 2) ITM logits."""
        batch = self.tokenize(texts) if isinstance(texts, list) else texts
        img_mask = torch.ones(image_tokens.shape[:2], dtype=torch.long, device=image_tokens.device)
        h = self.blip.text_encoder(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            encoder_hidden_states=image_tokens,
            encoder_attention_mask=img_mask,
        ).last_hidden_state
        return self.blip.itm_head(h[:, 0])

    @torch.no_grad()
    def score_pairs(
        self,
        image_tokens: torch.Tensor,
        tokenized: dict[str, torch.Tensor],
        img_idx: torch.Tensor,
        txt_idx: torch.Tensor,
        batch_size: int = 1024,
    ) -> torch.Tensor:
        """Scores (``score_kind``) of the pairs (image img_idx[n], text txt_idx[n]); inputs precomputed once."""
        was = self.training
        self.eval()
        out = []
        for s in range(0, len(img_idx), batch_size):
            ii, tt = img_idx[s : s + batch_size], txt_idx[s : s + batch_size]
            sub = {k: v[tt] for k, v in tokenized.items()}
            keep = int(sub["attention_mask"].sum(1).max())  # trim common padding
            sub = {k: v[:, :keep] for k, v in sub.items()}
            out.append(itm_scores(self.logits(image_tokens[ii], sub).float(), self.score_kind).cpu())
        self.train(was)
        return torch.cat(out) if out else torch.zeros(0)

    @torch.no_grad()
    def score_matrix(
        self, pixel_values: torch.Tensor, texts: list[str], batch_size: int = 1024, image_batch: int = 256
    ) -> torch.Tensor:
        """Full (n_images, n_texts) teacher score matrix (small galleries and fixed training batches)."""
        toks = torch.cat(
            [self.image_tokens(pixel_values[i : i + image_batch]) for i in range(0, len(pixel_values), image_batch)]
        )
        tokenized = self.tokenize(texts)
        ni, nt = len(pixel_values), len(texts)
        ii = torch.arange(ni).repeat_interleave(nt)
        tt = torch.arange(nt).repeat(ni)
        return self.score_pairs(toks, tokenized, ii, tt, batch_size).view(ni, nt)
