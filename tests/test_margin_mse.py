"""Margin-MSE: benchmark construction, training-loss wiring, and smoke twins through the real entry points."""

import json

import numpy as np
import pytest
import torch

from papers.margin_mse.config import PRESETS, Config
from papers.margin_mse.data import build_collection, pick_words, render
from papers.margin_mse.train import training_loss


def test_collection_deterministic_and_oracle_consistent():
    kw = dict(
        n_passages=200,
        n_entities=20,
        n_attributes=6,
        n_train_queries=30,
        n_dev_queries=10,
        facts_per_entity=2,
        entities_per_passage=(3,),
    )
    a, b = build_collection(3, **kw), build_collection(3, **kw)
    assert a.passages == b.passages and a.dev_queries == b.dev_queries
    assert build_collection(4, **kw).passages != a.passages
    for q, pos, rel in zip(a.dev_queries, a.dev_pos, a.dev_qrels, strict=True):
        e, at = q.split()[:2]
        assert rel[int(pos)] == 2  # the designated positive is relevant
        for pid, r in rel.items():
            toks = a.passages[pid].split()
            bound = any(toks[i] == e and toks[i + 1] == at for i in range(len(toks) - 1))
            assert (r == 2) == bound and e in toks
    words = pick_words({f"word{chr(97 + i % 26)}{chr(97 + i // 26)}": 2000 + i for i in range(800)}, len(a.vocab))
    r = render(a, words)
    assert len(set(r.vocab)) == len(a.vocab) and r.dev_qrels == a.dev_qrels


def test_unique_facts_have_one_relevant_passage_and_disjoint_splits():
    kw = dict(n_passages=100, n_entities=100, n_attributes=10, n_train_queries=50, n_dev_queries=20)
    c = build_collection(0, entities_per_passage=(6,), facts_per_entity=1, unique_facts=True, **kw)
    assert all(sum(r == 2 for r in rel.values()) == 1 for rel in c.dev_qrels + c.train_qrels)
    assert not set(c.train_queries) & set(c.dev_queries)


def test_training_losses_see_the_same_lists():
    cfg = PRESETS["embedded-smoke"]
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3) * 10
    for loss in ("ranknet", "pointwise_mse", "kl", "margin_mse", "ranknet_teacher"):
        c = Config(**{**cfg.__dict__, "loss": loss})
        val = training_loss(c, s, None if loss == "ranknet" else t)
        assert val.ndim == 0 and torch.isfinite(val)
    c = Config(**{**cfg.__dict__, "loss": "margin_mse"})
    assert training_loss(c, t + 5.0, t).item() == pytest.approx(0.0, abs=1e-6)


def test_config_rules():
    from common.config import ConfigError

    with pytest.raises(ConfigError, match="n_teachers"):
        Config(**{**PRESETS["embedded"].__dict__, "teacher": "T2", "n_teachers": 1})
    assert list(PRESETS)[0] == "embedded"
    assert all(f"{n}-smoke" in PRESETS for n in PRESETS if not n.endswith("-smoke"))
    assert PRESETS["embedded"].variant == "dot-margin_mse-T1"


def test_embedded_smoke_end_to_end(tmp_path):
    from papers.margin_mse.train import main

    out, raw = tmp_path / "runs", tmp_path / "raw"
    sets = [f"out_dir={out}", f"results_dir={raw}"]
    m = main(["--preset", "embedded-smoke", "--set", *sets])
    assert {"rerank_MRR@10", "dense_MRR@10", "score_std", "latency_ms_student", "precond_teacher_minus_bm25"} <= set(m)
    recs = sorted(p.name for p in (raw / "margin_mse" / "embedded-smoke").glob("*.json"))
    assert recs == [
        "bm25-seed0.json",
        "dot-margin_mse-T1-seed0.json",
        "dot-ranknet-seed0.json",
        "teacher-T1-seed0.json",
    ]
    rec = json.loads((raw / "margin_mse" / "embedded-smoke" / "dot-margin_mse-T1-seed0.json").read_text())
    assert "precondition_ok" in rec["protocol"]
    student = out / "margin_mse" / "embedded-smoke" / "dot-margin_mse-T1-seed0" / "student"
    assert (student / "config.json").is_file() and (student / "modules.json").is_file()
    teacher = out / "margin_mse" / "embedded-smoke" / "shared" / "teachers" / "cat-0"
    lines = (teacher / "teacher_scores.tsv").read_text().splitlines()
    assert len(lines[0].split("\t")) == 5
    # re-running resumes from the final checkpoint and reproduces the record's metrics
    m2 = main(["--preset", "embedded-smoke", "--set", *sets])
    assert m2["rerank_MRR@10"] == pytest.approx(m["rerank_MRR@10"])
    # ColBERT student, T2 and KL through the same path
    m3 = main(
        ["--preset", "embedded-smoke", "--set", *sets, "student=colbert", "teacher=T2", "n_teachers=2", "loss=kl"]
    )
    assert "dense_MRR@10" not in m3 and np.isfinite(m3["rerank_MRR@10"])


def test_msmarco_smoke_end_to_end(tmp_path):
    from papers.margin_mse.train import main

    m = main(["--preset", "msmarco-smoke", "--set", f"out_dir={tmp_path}/runs", f"results_dir={tmp_path}/raw"])
    assert {"rerank_MRR@10", "dense_MRR@10"} <= set(m)
    assert (tmp_path / "runs" / "margin_mse" / "msmarco-smoke").is_dir()


def test_claims_cli_rejects_unknown_variant():
    from papers.margin_mse.claims import main

    with pytest.raises(SystemExit):
        main(["--only", "nope"])
