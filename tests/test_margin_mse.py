"""Margin-MSE: benchmark construction and gates, training-loss wiring, intervals, full-scale loaders, and smoke twins
through the real entry points."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from papers.margin_mse.config import PRESETS, Config
from papers.margin_mse.data import ATTRIBUTES, build_collection, pair_split, template_words
from papers.margin_mse.train import training_loss

SMALL = dict(n_entities=60, n_attributes=6, values_per_attribute=8)


def test_collection_deterministic_paraphrased_and_oracle_consistent():
    a, b = build_collection(3, **SMALL), build_collection(3, **SMALL)
    assert a.passages == b.passages and a.splits["dev"].text == b.splits["dev"].text
    assert build_collection(4, **SMALL).passages != a.passages
    _, qwords = template_words()
    pwords = {w for p in a.passages for w in p.split()}
    assert not pwords & qwords  # no query paraphrase word ever occurs in a passage
    assert len({len(p.split()) for p in a.passages}) > 3  # templates of different lengths
    for split in ("train", "val", "dev"):
        q = a.splits[split]
        for (e, at), pos, rel in zip(q.pairs, q.pos, q.qrels, strict=True):
            assert rel[int(pos)] == 2
            for pid, fs in enumerate(a.facts):
                states = any(f[0] == e and f[1] == at for f in fs)
                names_e = any(f[0] == e for f in fs)
                assert rel.get(pid, 0) == (2 if states else 1 if names_e else 0)
    # a binding distractor names the entity and the attribute, in different facts
    dev = a.splits["dev"]
    e, at = (int(x) for x in dev.pairs[0])
    for pid in a.binding_distractors(e, at):
        fs = a.facts[pid]
        assert any(f[0] == e for f in fs) and any(f[1] == at for f in fs) and (e, at) not in {f[:2] for f in fs}


def test_dev_pairs_are_reserved_by_construction():
    c = build_collection(0, **SMALL)
    for split, q in c.splits.items():
        # the split of every query is the hash split of its pair, whatever the sampling did
        assert all(pair_split(0, int(e), int(a), 0.25, 0.1) == split for e, a in q.pairs)
    pairs = {s: {tuple(p) for p in c.splits[s].pairs.tolist()} for s in c.splits}
    assert not pairs["dev"] & pairs["train"] and not pairs["dev"] & pairs["val"] and not pairs["val"] & pairs["train"]
    assert len(c.splits["dev"].text) > 0 and len(c.splits["val"].text) > 0
    # a different data seed reserves other pairs, still disjoint
    c2 = build_collection(1, **SMALL)
    assert {tuple(p) for p in c2.splits["dev"].pairs.tolist()} != pairs["dev"]


def test_templates_cover_attributes():
    pw, qw = template_words()
    assert len(ATTRIBUTES) == 8 and not pw & qw
    assert all(len(t) >= 3 and len(p) == 3 for _, t, p in ATTRIBUTES)


def _smoke_bench(**kw):
    from papers.margin_mse.benchmark import build_embedded

    cfg = dataclasses.replace(PRESETS["embedded-smoke"], **kw)
    return cfg, build_embedded(cfg)


def test_gates_oracle_bm25_ties_and_overlap():
    from papers.margin_mse.benchmark import gates, oracle_scores, pair_overlap

    cfg, bench = _smoke_bench(n_entities=40, candidates=14)
    assert pair_overlap(bench) == {"dev_pairs_in_train": 0, "dev_pairs_in_val": 0, "dev_queries_in_train": 0}
    fake = {k: torch.as_tensor(oracle_scores(bench.split(k)), dtype=torch.float32) for k in ("val", "dev")}
    fake["train"] = torch.zeros(bench.train_lists.shape)
    g = gates(cfg, bench, [fake, fake])
    assert g["oracle_MRR@10"] == 1.0 and g["pass"]["oracle_is_1"] and g["pass"]["no_dev_pair_in_training"]
    assert g["teacher_MRR@10"] == [1.0, 1.0] and g["bm25_MRR@10"] < 1.0
    bad = {k: -v for k, v in fake.items()}
    assert not gates(cfg, bench, [fake, bad])["pass"]["teacher_beats_bm25_by_min_gap"]  # every teacher seed counts
    # teacher lists: positive first, no passage relevant by the training qrels among the negatives
    c = bench.coll
    for (e, a), row in zip(bench.train_pairs, bench.teacher_lists, strict=True):
        rel = c.by_pair[(int(e), int(a))]
        assert row[0] in rel and not set(row[1:].tolist()) & rel


def test_teacher_renaming_is_one_label_preserving_bijection_per_batch():
    from papers.margin_mse.benchmark import rename_names

    c = build_collection(0, n_entities=30, n_attributes=4, values_per_attribute=5, train_paraphrases=1)
    tr = c.splits["train"]
    q = tr.text[:25]
    d = [c.passages[p] for p in tr.pos[:25]]
    q2, d2 = rename_names(c, q, d, np.random.default_rng(0))
    mapping: dict[str, str] = {}
    for a, b in zip(q + d, q2 + d2, strict=True):
        wa, wb = a.split(), b.split()
        assert len(wa) == len(wb)
        for x, y in zip(wa, wb, strict=True):
            assert mapping.setdefault(x, y) == y  # one mapping for the queries and the passages of the batch
    assert len(set(mapping.values())) == len(mapping)  # injective
    ents, vals = set(c.entity_names), [set(v) for v in c.value_names]
    for x, y in mapping.items():
        if x in ents:
            assert y in ents
        elif any(x in v for v in vals):
            assert next(v for v in vals if x in v) == next(v for v in vals if y in v)  # a value stays its attribute's
        else:
            assert x == y  # template and paraphrase words are untouched
    assert any(x != y for x, y in mapping.items())
    # relevance is unchanged: the renamed entity of each query is named in its renamed positive
    for a, b, qq in zip(d, d2, q, strict=True):
        e = next(w for w in qq.split() if w in ents)
        assert e in a.split() and mapping[e] in b.split()


def test_training_losses_see_the_same_lists():
    cfg = PRESETS["embedded-smoke"]
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3) * 10
    for loss in ("ranknet", "pointwise_mse", "kl", "margin_mse", "ranknet_teacher"):
        c = dataclasses.replace(cfg, loss=loss)
        val = training_loss(c, s, None if loss == "ranknet" else t)
        assert val.ndim == 0 and torch.isfinite(val)
    c = dataclasses.replace(cfg, loss="margin_mse")
    assert training_loss(c, t + 5.0, t).item() == pytest.approx(0.0, abs=1e-6)


def test_config_rules_and_labels_only_key():
    from common.config import ConfigError
    from papers.margin_mse.train import labels_only_key

    with pytest.raises(ConfigError, match="n_teachers"):
        Config(**{**PRESETS["embedded"].__dict__, "teacher": "T2", "n_teachers": 1})
    with pytest.raises(ConfigError, match="T1"):
        Config(**{**PRESETS["msmarco"].__dict__, "teacher": "T1"})
    assert list(PRESETS)[0] == "embedded"
    assert all(f"{n}-smoke" in PRESETS for n in PRESETS if not n.endswith("-smoke"))
    base = PRESETS["embedded"]
    k = labels_only_key(base)
    assert labels_only_key(dataclasses.replace(base, loss="kl", teacher="T2")) == k  # same labels-only student
    for change in (dict(lr=1e-2), dict(seed=1), dict(student_hidden=64), dict(data_seed=2), dict(epochs=2.0)):
        assert labels_only_key(dataclasses.replace(base, **change)) != k


def test_paired_bootstrap_interval():
    from papers.margin_mse.claims import paired_bootstrap

    rng = np.random.default_rng(0)
    base = rng.random((5, 400))
    d, lo, hi = paired_bootstrap(base + 0.05, base)
    assert d == pytest.approx(0.05) and lo == pytest.approx(0.05) and hi == pytest.approx(0.05)
    noisy = base + rng.normal(0.0, 0.3, base.shape)
    d, lo, hi = paired_bootstrap(noisy, base)
    assert lo < d < hi and lo < 0.03 and hi > -0.03


def test_embedded_smoke_end_to_end(tmp_path):
    from papers.margin_mse.train import main

    out, raw = tmp_path / "runs", tmp_path / "raw"
    sets = [f"out_dir={out}", f"results_dir={raw}"]
    m = main(["--preset", "embedded-smoke", "--set", *sets, "steps=0", "epochs=1"])
    assert {"rerank_MRR@10", "dense_MRR@10", "score_std", "latency_ms_student", "precond_teacher_minus_bm25"} <= set(m)
    recs = sorted(p.name for p in (raw / "margin_mse" / "embedded-smoke").glob("*.json"))
    assert recs == ["dot-margin_mse-T1-seed0.json", "dot-ranknet-seed0.json"]
    rec = json.loads((raw / "margin_mse" / "embedded-smoke" / "dot-margin_mse-T1-seed0.json").read_text())
    assert "precondition_ok" in rec["protocol"] and len(rec["extra"]["per_query_rr"]) == rec["protocol"]["queries"]
    n_train = rec["metrics"].get("n_train_queries") or None
    assert rec["config"]["steps"] * rec["config"]["global_batch"] >= (n_train or 1)  # one epoch at least
    student = out / "margin_mse" / "embedded-smoke" / "dot-margin_mse-T1-seed0" / "student"
    assert (student / "config.json").is_file() and (student / "modules.json").is_file()
    teacher = out / "margin_mse" / "embedded-smoke" / "shared" / "teachers" / "cat-0"
    assert len((teacher / "teacher_scores.tsv").read_text().splitlines()[0].split("\t")) == 5
    m2 = main(["--preset", "embedded-smoke", "--set", *sets, "steps=0", "epochs=1"])  # resumes, same result
    assert m2["rerank_MRR@10"] == pytest.approx(m["rerank_MRR@10"])
    m3 = main(
        ["--preset", "embedded-smoke", "--set", *sets, "student=colbert", "teacher=T2", "n_teachers=2", "loss=kl"]
    )
    assert "dense_MRR@10" not in m3 and np.isfinite(m3["rerank_MRR@10"])


def test_claims_stop_on_a_failed_gate(tmp_path):
    from papers.margin_mse.claims import main

    raw = tmp_path / "raw"
    # 3 teacher steps: the teachers cannot beat BM25 by 0.1, so the claims must not run
    main(["--preset", "embedded-smoke", "--set", f"out_dir={tmp_path}/runs", f"results_dir={raw}"])
    files = sorted(p.name for p in (raw / "margin_mse" / "embedded-smoke").glob("*.json"))
    assert files == ["gates-seed0.json"]
    rec = json.loads((raw / "margin_mse" / "embedded-smoke" / "gates-seed0.json").read_text())
    assert rec["protocol"]["verdict"].startswith("untestable: gate ")
    assert rec["metrics"]["oracle_MRR@10"] == 1.0 and rec["metrics"]["dev_pairs_in_train"] == 0


def test_claims_full_path_with_gates_passing(tmp_path, monkeypatch):
    import papers.margin_mse.claims as claims

    # the smoke teachers are untrained; a negative required gap lets the runner go through every stage once
    monkeypatch.setattr(claims, "MIN_GAP", -10.0)
    raw = tmp_path / "raw"
    sets = ["--set", f"out_dir={tmp_path}/runs", f"results_dir={raw}"]
    only = ["--only", "dot-ranknet", "dot-margin_mse-T2", "--seeds", "0", "1", "--lr-grid", "1e-3", "3e-3"]
    claims.main(["--preset", "embedded-smoke", *only, *sets])
    d = raw / "margin_mse" / "embedded-smoke"
    files = sorted(p.name for p in d.glob("*.json"))
    assert files == [
        "claim-dot-margin_mse-T2-vs-labels-seed0.json",
        "dot-margin_mse-T2-seed0.json",
        "dot-margin_mse-T2-seed1.json",
        "dot-ranknet-seed0.json",
        "dot-ranknet-seed1.json",
        "gates-seed0.json",
        "lr-selection-seed0.json",
    ]
    g = json.loads((d / "gates-seed0.json").read_text())
    assert g["protocol"]["verdict"] == "all gates pass" and "teacher_minus_dot_labels_only_val" in g["metrics"]
    lr = json.loads((d / "lr-selection-seed0.json").read_text())
    assert set(lr["extra"]) == {"dot-ranknet", "dot-margin_mse-T2"} and lr["protocol"]["grid"] == [1e-3, 3e-3]
    c = json.loads((d / "claim-dot-margin_mse-T2-vs-labels-seed0.json").read_text())["metrics"]
    assert c["ci95_lo"] <= c["diff_MRR@10"] <= c["ci95_hi"] and c["n_seeds"] == 2
    block = claims.render_block(dataclasses.replace(PRESETS["embedded-smoke"], results_dir=str(raw)), raw)
    assert "all gates pass" in block and "dot-margin_mse-T2-vs-labels" in block
    # re-running resumes: every (variant, seed) recorded with the same config is skipped, nothing is retrained
    before = {p.name: p.stat().st_mtime_ns for p in d.glob("dot-*.json")}
    for lock in (tmp_path / "runs").rglob("*.lock"):  # a new runner process: the locks of this one do not hold
        lock.unlink()
    ran = []
    monkeypatch.setattr(claims, "run_embedded", lambda c, *a, **k: ran.append((c.method, c.seed)))
    claims.main(["--preset", "embedded-smoke", *only, *sets])
    assert ran == [] and {p.name: p.stat().st_mtime_ns for p in d.glob("dot-*.json")} == before


def test_claims_cli_rejects_unknown_variant():
    from papers.margin_mse.claims import main

    with pytest.raises(SystemExit):
        main(["--only", "nope"])


# --- full scale (msmarco) ------------------------------------------------------------------------------------------


def test_msmarco_smoke_end_to_end_t2_and_t1(tmp_path):
    from papers.margin_mse.train import main

    sets = [f"out_dir={tmp_path}/runs", f"results_dir={tmp_path}/raw"]
    m = main(["--preset", "msmarco-smoke", "--set", *sets])
    assert {"dev-small_rerank_MRR@10", "dl19_rerank_nDCG@10", "dl20_dense_MRR@10", "best_val_nDCG@10"} <= set(m)
    assert m["dl19_rerank_queries_missing_from_run"] == 1.0  # the judged query the run lacks is counted (as 0)
    assert m["dl19_rerank_judged_queries"] == 9.0
    run_dir = tmp_path / "runs" / "margin_mse" / "msmarco-smoke"
    state = json.loads(next(run_dir.glob("*/validation.json")).read_text())
    assert len(state["history"]) >= 1 and (next(run_dir.glob("*/validation.json")).parent / "best").is_dir()
    raw = tmp_path / "raw" / "margin_mse" / "msmarco-smoke"
    rec = json.loads(next(raw.glob("dot-margin_mse-T2-seed*.json")).read_text())
    assert "published T2 margins" in rec["protocol"]["teacher"] and rec["protocol"]["skipped_triples"] == 1
    main(["--preset", "msmarco-smoke", "--set", *sets, "teacher=T1", "loss=pointwise_mse"])
    rec = json.loads(next(raw.glob("dot-pointwise_mse-T1-seed*.json")).read_text())
    assert rec["protocol"]["teacher"].startswith("T1 scores from") and rec["protocol"]["teacher"].endswith("t1.tsv")


def test_msmarco_early_stopping_and_strict_teacher_file(tmp_path):
    from common.retrieval.formats import FormatError
    from papers.margin_mse.fullscale import read_teacher_file
    from papers.margin_mse.train import main

    sets = [f"out_dir={tmp_path}/runs", f"results_dir={tmp_path}/raw"]
    # patience 1 with validation every step: training stops long before the step budget unless it keeps improving
    m = main(["--preset", "msmarco-smoke", "--set", *sets, "steps=200", "val_every=1", "patience=1", "lr=0"])
    assert m["steps"] == 2.0 and m["best_step"] == 1.0  # lr 0: no improvement after the first validation
    f = tmp_path / "bad.tsv"
    f.write_text("1.0\t2.0\t3\t4\t5\n1.0\t2.0\t3\t4\n")
    with pytest.raises(FormatError, match="bad.tsv:2"):
        read_teacher_file(f)
    f.write_text("1.5\t0.5\t3\t4\t5\n")
    t = read_teacher_file(f)
    assert t.margin.tolist() == [1.0] and t.qid.tolist() == [3] and t.neg.tolist() == [5]


def test_rerank_by_encoding_equals_pairwise_scores():
    from common.retrieval.index import rerank
    from papers.margin_mse.model import build_student
    from papers.margin_mse.train import rerank_by_encoding

    cfg, bench = _smoke_bench()
    torch.manual_seed(0)
    for student in ("dot", "colbert", "cat"):
        model = build_student(dataclasses.replace(cfg, student=student), bench.vocab).eval()
        q, c = bench.dev.queries[:5], bench.dev.cands[:5]
        fast = rerank_by_encoding(model, q, c, bench.passages, batch=7)
        ref = rerank(model, q, c, bench.passages, batch_size=11)
        assert torch.allclose(fast, ref, atol=1e-4), student


def test_teacher_restart_cycles_continue_a_cached_teacher_exactly(tmp_path):
    from papers.margin_mse.benchmark import ensure_teachers

    cfg, bench = _smoke_bench(teacher_steps=3, teacher_restart_steps=2)
    one = ensure_teachers(cfg, bench, 1, tmp_path / "a")  # cycle 0, cached
    two = ensure_teachers(dataclasses.replace(cfg, teacher_cycles=2), bench, 1, tmp_path / "a")  # continues it
    fresh = ensure_teachers(dataclasses.replace(cfg, teacher_cycles=2), bench, 1, tmp_path / "b")  # from scratch
    assert torch.allclose(two[0]["dev"], fresh[0]["dev"], atol=1e-5)
    assert not torch.allclose(two[0]["dev"], one[0]["dev"])
    key = json.loads((tmp_path / "a" / "cat-0" / "cache_key.json").read_text())
    assert key["teacher_cycles"] == 2 and key["teacher_restart_steps"] == 2


def test_student_loop_two_processes_with_accumulation_match_one_loopback(tmp_path):
    """Margin-MSE's student loop through its entry point: 2 processes x 2 micro-batches == 1 process x 4, i.e. every
    process trains on its own share of the global batch (before, every rank drew the same queries)."""
    from loop_equivalence import assert_same, run_both

    sets = ["loss=ranknet", "steps=3"]
    one, two = run_both("papers.margin_mse.train", "embedded-smoke", sets, tmp_path, global_batch=8)
    assert one["step"] == two["step"] == 3
    assert assert_same(one, two, ["model"]) > 0
