"""Teacher and student builders for CPRD.

* Embedded (``shapes``): a word-level BERT tokenizer over the benchmark's vocabulary; the teacher is a small
  ``BlipForImageTextRetrieval`` (ViT + text encoder with cross-attention + ITM head: the ALBEF/BLIP cross-encoder
  architecture) built from a config and trained here (train.py); the student is a ``TwoTower`` of a timm ViT and a
  transformers BERT built from small configs.
* Full scale: the teacher is a BLIP ITM checkpoint (``Salesforce/blip-itm-*``); the student a pretrained CLIP or a
  timm ViT-B/16 + BERT-base two-tower. Smoke twins use the tiny builders with random weights.

Left out: ALBEF weights (LAVIS only).
"""

from __future__ import annotations

from transformers import BertConfig, BertTokenizer, BlipConfig

from common.retrieval.image_text import CLIPTwoTower, ImageTextCrossEncoder, TwoTower
from papers.cprd.config import Config
from papers.cprd.shapes import VOCAB

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def shapes_tokenizer(words: list[str] | None = None) -> BertTokenizer:
    """One token per word of the embedded vocabulary (ids 0-4 are the BERT specials)."""
    vocab = {w: i for i, w in enumerate(SPECIALS + list(words or VOCAB))}
    return BertTokenizer(vocab=vocab, do_lower_case=True)


def tiny_blip_config(tok: BertTokenizer, cfg: Config) -> BlipConfig:
    w, d = cfg.teacher_width, cfg.teacher_depth
    # initializer_range: BlipVisionConfig's default (1e-10) makes a model built from a config output a constant
    vision = dict(hidden_size=w, intermediate_size=4 * w, num_hidden_layers=d, num_attention_heads=cfg.heads,
                  image_size=cfg.image_size, patch_size=cfg.patch, projection_dim=w, attention_dropout=0.0,
                  initializer_range=0.02)  # fmt: skip
    text = dict(vocab_size=len(tok.vocab), hidden_size=w, intermediate_size=4 * w, num_hidden_layers=d,
                num_attention_heads=cfg.heads, max_position_embeddings=cfg.max_text_len + 2, encoder_hidden_size=w,
                pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id,
                eos_token_id=tok.sep_token_id, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    return BlipConfig(vision_config=vision, text_config=text, image_text_hidden_size=w)


def build_teacher(cfg: Config, tok=None) -> ImageTextCrossEncoder:
    if cfg.teacher in ("train", "tiny"):
        tok = tok or shapes_tokenizer()
        return ImageTextCrossEncoder.from_config(
            tiny_blip_config(tok, cfg), tok, max_text_len=cfg.max_text_len + 2, score_kind=cfg.score_kind
        )
    return ImageTextCrossEncoder.from_pretrained(cfg.teacher, score_kind=cfg.score_kind)


def build_student(cfg: Config, tok=None):
    if cfg.student == "clip":
        return CLIPTwoTower.from_pretrained(cfg.student_clip)
    if cfg.student_text == "tiny":
        tok = tok or shapes_tokenizer()
        text = BertConfig(vocab_size=len(tok.vocab), hidden_size=cfg.width, num_hidden_layers=cfg.depth,
                          num_attention_heads=cfg.heads, intermediate_size=4 * cfg.width,
                          max_position_embeddings=cfg.max_text_len + 2, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0, pad_token_id=tok.pad_token_id)  # fmt: skip
        return TwoTower.from_timm_and_transformers(
            cfg.student_image, text, cfg.embed_dim, pretrained=False, tokenizer=tok, max_text_len=cfg.max_text_len + 2,
            tau_init=cfg.tau_init, timm_img_size=cfg.image_size, timm_patch_size=cfg.patch, timm_embed_dim=cfg.width,
            timm_depth=cfg.depth, timm_num_heads=cfg.heads, timm_global_pool="avg",
        )  # fmt: skip
    return TwoTower.from_timm_and_transformers(
        cfg.student_image, cfg.student_text, cfg.embed_dim, pretrained=cfg.student_pretrained,
        max_text_len=cfg.max_text_len, tau_init=cfg.tau_init, timm_img_size=cfg.image_size,
    )  # fmt: skip
