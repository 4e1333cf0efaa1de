"""Text ranking encoders on transformers: cross-encoder (BERT_CAT), bi-encoder (BERT_DOT), late interaction (ColBERT).

Architectures as in Hofstätter et al. 2020 (arXiv:2010.02666) and their matchmaker library:
* ``CrossEncoder`` (CAT): ``[CLS] q [SEP] p [SEP]`` -> CLS vector -> linear -> one raw score (a logit, never
  squashed: Margin-MSE needs the teacher's raw scale). Built on ``AutoModelForSequenceClassification(num_labels=1)``.
  ``pooling='mean'`` (not the paper's) feeds the masked mean of the last hidden states to the same linear head.
* ``BiEncoder`` (DOT): one encoder shared by queries and passages, CLS vector, unnormalised dot product, optional
  linear compression (off by default). Saved folders also carry a sentence-transformers description (CLS pooling)
  so ``SentenceTransformer(folder)`` loads them.
* ``ColBERT``: per-token vectors (optional linear compression), MaxSim: for each query token the largest dot
  product over passage tokens (padding masked to -1e4), summed over query tokens; queries are padded to a fixed
  length with ``[MASK]`` tokens (query augmentation).

Each is built from a pretrained name/path (full scale) or from a small config plus a tokenizer (embedded runs), and
saves as a transformers model folder with its tokenizer. Query and passage are truncated separately (query length,
passage length), as in the paper's setup.

Left out: PreTTR and TK students, ONNX export.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, PretrainedConfig

_HEAD_FILE = "ranking_head.pt"
_META_FILE = "ranking_encoder.json"


def _ids(tokenizer, texts: list[str], max_len: int) -> list[list[int]]:
    return tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_len)["input_ids"]


def _pad(seqs: list[list[int]], pad_id: int, segs: list[list[int]] | None, device) -> dict[str, torch.Tensor]:
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    tt = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        if segs is not None:
            tt[i, : len(s)] = torch.tensor(segs[i])
    out = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if segs is not None:
        out["token_type_ids"] = tt.to(device)
    return out


class _Base(nn.Module):
    kind = ""

    def __init__(self, tokenizer, max_query_len: int, max_doc_len: int):
        super().__init__()
        self.tokenizer = tokenizer
        self.max_query_len, self.max_doc_len = max_query_len, max_doc_len

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _meta(self) -> dict:
        return {"kind": self.kind, "max_query_len": self.max_query_len, "max_doc_len": self.max_doc_len}


class CrossEncoder(_Base):
    """BERT_CAT: score(q, p) = w . CLS(BERT([CLS] q [SEP] p [SEP])) + b (or the mean of the hidden states)."""

    kind = "cat"

    def __init__(self, model, tokenizer, max_query_len: int = 30, max_doc_len: int = 200, pooling: str = "cls"):
        super().__init__(tokenizer, max_query_len, max_doc_len)
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling: {pooling!r} not in ('cls', 'mean')")
        if pooling == "mean" and not isinstance(getattr(model, "classifier", None), nn.Linear):
            raise ValueError("pooling='mean' needs a model whose head is one linear layer named 'classifier'")
        self.model, self.pooling = model, pooling
        self._use_tt = "token_type_ids" in tokenizer.model_input_names

    def _meta(self) -> dict:
        return {**super()._meta(), "pooling": self.pooling}

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kw) -> CrossEncoder:
        tok = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForSequenceClassification.from_pretrained(name_or_path, num_labels=1)
        kw = {**_load_meta(name_or_path), **kw}
        return cls(model, tok, **kw)

    @classmethod
    def from_config(cls, config: PretrainedConfig, tokenizer, **kw) -> CrossEncoder:
        config.num_labels = 1
        return cls(AutoModelForSequenceClassification.from_config(config), tokenizer, **kw)

    def tokenize(self, queries: list[str], docs: list[str]) -> dict[str, torch.Tensor]:
        t = self.tokenizer
        qs, ds = _ids(t, queries, self.max_query_len), _ids(t, docs, self.max_doc_len)
        seqs = [[t.cls_token_id, *q, t.sep_token_id, *d, t.sep_token_id] for q, d in zip(qs, ds, strict=True)]
        segs = [[0] * (len(q) + 2) + [1] * (len(d) + 1) for q, d in zip(qs, ds, strict=True)] if self._use_tt else None
        return _pad(seqs, t.pad_token_id, segs, self.device)

    def forward(self, queries: list[str], docs: list[str]) -> torch.Tensor:
        batch = self.tokenize(queries, docs)
        if self.pooling == "cls":
            return self.model(**batch).logits.squeeze(-1)
        h = self.model.base_model(**batch).last_hidden_state
        m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
        return self.model.classifier((h * m).sum(1) / m.sum(1).clamp_min(1.0)).squeeze(-1)

    @torch.no_grad()
    def score(self, queries: list[str], docs: list[str], batch_size: int = 256) -> torch.Tensor:
        """Raw scores of (query, doc) pairs in eval mode, batched, on CPU."""
        was = self.training
        self.eval()
        out = [
            self(queries[i : i + batch_size], docs[i : i + batch_size]).float().cpu()
            for i in range(0, len(queries), batch_size)
        ]
        self.train(was)
        return torch.cat(out) if out else torch.zeros(0)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        (path / _META_FILE).write_text(json.dumps(self._meta()))


class BiEncoder(_Base):
    """BERT_DOT (``pooling='cls'``, the paper) or mean pooling; similarity = unnormalised dot product."""

    kind = "dot"

    def __init__(
        self,
        encoder,
        tokenizer,
        max_query_len: int = 30,
        max_doc_len: int = 200,
        pooling: str = "cls",
        compress_dim: int = 0,
    ):
        super().__init__(tokenizer, max_query_len, max_doc_len)
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling: {pooling!r} not in ('cls', 'mean')")
        self.encoder, self.pooling = encoder, pooling
        self.compress = nn.Linear(encoder.config.hidden_size, compress_dim) if compress_dim else None

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kw) -> BiEncoder:
        meta = {**_load_meta(name_or_path), **kw}
        enc = cls(AutoModel.from_pretrained(name_or_path), AutoTokenizer.from_pretrained(name_or_path), **meta)
        _load_head(enc, name_or_path)
        return enc

    @classmethod
    def from_config(cls, config: PretrainedConfig, tokenizer, **kw) -> BiEncoder:
        return cls(AutoModel.from_config(config), tokenizer, **kw)

    def _encode(self, texts: list[str], max_len: int) -> torch.Tensor:
        t = self.tokenizer
        seqs = [[t.cls_token_id, *s, t.sep_token_id] for s in _ids(t, texts, max_len)]
        batch = _pad(seqs, t.pad_token_id, None, self.device)
        h = self.encoder(**batch).last_hidden_state
        if self.pooling == "cls":
            v = h[:, 0]
        else:
            m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
            v = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.compress(v) if self.compress is not None else v

    def encode_query(self, queries: list[str]) -> torch.Tensor:
        return self._encode(queries, self.max_query_len)

    def encode_doc(self, docs: list[str]) -> torch.Tensor:
        return self._encode(docs, self.max_doc_len)

    def forward(self, queries: list[str], docs: list[str]) -> torch.Tensor:
        """Pair scores: dot(q_i, d_i)."""
        return (self.encode_query(queries) * self.encode_doc(docs)).sum(-1)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        self.encoder.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        meta = {
            **self._meta(),
            "pooling": self.pooling,
            "compress_dim": self.compress.out_features if self.compress else 0,
        }
        (path / _META_FILE).write_text(json.dumps(meta))
        if self.compress is not None:
            torch.save(self.compress.state_dict(), path / _HEAD_FILE)
        _write_sentence_transformers_files(path, self)


class ColBERT(_Base):
    """Late interaction: sum_i max_j q_i . d_j over per-token vectors (dot product, padding masked)."""

    kind = "colbert"

    def __init__(
        self,
        encoder,
        tokenizer,
        max_query_len: int = 32,
        max_doc_len: int = 200,
        compress_dim: int = 0,
        augment_queries: bool = True,
    ):
        super().__init__(tokenizer, max_query_len, max_doc_len)
        self.encoder, self.augment_queries = encoder, augment_queries
        self.compress = nn.Linear(encoder.config.hidden_size, compress_dim) if compress_dim else None

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kw) -> ColBERT:
        meta = {**_load_meta(name_or_path), **kw}
        enc = cls(AutoModel.from_pretrained(name_or_path), AutoTokenizer.from_pretrained(name_or_path), **meta)
        _load_head(enc, name_or_path)
        return enc

    @classmethod
    def from_config(cls, config: PretrainedConfig, tokenizer, **kw) -> ColBERT:
        return cls(AutoModel.from_config(config), tokenizer, **kw)

    def _encode(self, texts: list[str], max_len: int, is_query: bool) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.tokenizer
        seqs = [[t.cls_token_id, *s, t.sep_token_id] for s in _ids(t, texts, max_len)]
        if is_query and self.augment_queries:  # pad with [MASK] (id 103 in BERT), attended to, to a fixed length
            seqs = [s + [t.mask_token_id] * (max_len + 2 - len(s)) for s in seqs]
        batch = _pad(seqs, t.pad_token_id, None, self.device)
        h = self.encoder(**batch).last_hidden_state
        if self.compress is not None:
            h = self.compress(h)
        return h, batch["attention_mask"]

    def encode_query(self, queries: list[str]):
        return self._encode(queries, self.max_query_len, True)

    def encode_doc(self, docs: list[str]):
        return self._encode(docs, self.max_doc_len, False)

    @staticmethod
    def maxsim(q: torch.Tensor, qmask: torch.Tensor, d: torch.Tensor, dmask: torch.Tensor) -> torch.Tensor:
        """(B, Lq, D) x (B, Ld, D) -> (B,) pairwise late-interaction scores."""
        sim = torch.einsum("bqd,bkd->bqk", q, d).masked_fill(dmask[:, None, :] == 0, -1e4)
        return (sim.max(-1).values * qmask).sum(-1)

    def forward(self, queries: list[str], docs: list[str]) -> torch.Tensor:
        (q, qm), (d, dm) = self.encode_query(queries), self.encode_doc(docs)
        return self.maxsim(q, qm.to(q.dtype), d, dm)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        self.encoder.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        meta = {
            **self._meta(),
            "compress_dim": self.compress.out_features if self.compress else 0,
            "augment_queries": self.augment_queries,
        }
        (path / _META_FILE).write_text(json.dumps(meta))
        if self.compress is not None:
            torch.save(self.compress.state_dict(), path / _HEAD_FILE)


def _load_meta(path) -> dict:
    f = Path(path) / _META_FILE
    if not f.is_file():
        return {}
    meta = json.loads(f.read_text())
    meta.pop("kind", None)
    return meta


def _load_head(enc, path) -> None:
    f = Path(path) / _HEAD_FILE
    if enc.compress is not None and f.is_file():
        enc.compress.load_state_dict(torch.load(f, map_location="cpu"))


def _write_sentence_transformers_files(path: Path, enc: BiEncoder) -> None:
    """modules.json + pooling config so ``SentenceTransformer(path)`` reproduces encode_doc (CLS/mean, no norm)."""
    if enc.compress is not None:
        return  # the compression layer has no sentence-transformers description here
    dim = enc.encoder.config.hidden_size
    (path / "1_Pooling").mkdir(exist_ok=True)
    pool = {
        "word_embedding_dimension": dim,
        "pooling_mode_cls_token": enc.pooling == "cls",
        "pooling_mode_mean_tokens": enc.pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (path / "1_Pooling" / "config.json").write_text(json.dumps(pool, indent=2))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (path / "modules.json").write_text(json.dumps(modules, indent=2))
    st_cfg = {"max_seq_length": enc.max_doc_len + 2, "do_lower_case": False}
    (path / "sentence_bert_config.json").write_text(json.dumps(st_cfg, indent=2))
    (path / "config_sentence_transformers.json").write_text(json.dumps({"similarity_fn_name": "dot"}, indent=2))


def tiny_config(kind: str, vocab_size: int, hidden: int, layers: int, heads: int, max_len: int = 64):
    """A small BERT config for embedded and smoke runs (FFN = 4 x hidden)."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=max_len,
        type_vocab_size=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def pairwise_dot(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """(Q, D) x (N, D) -> (Q, N) dot-product similarity."""
    return q @ d.T


def cosine(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return F.normalize(q, dim=-1) @ F.normalize(d, dim=-1).T
