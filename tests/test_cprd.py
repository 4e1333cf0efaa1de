"""CPRD and the image-text retrieval layer: mining, the validity rule, the partial ranking loss on a hand-checked
example, listmle with valid counts, R@K conventions, the Karpathy loader, the benchmark's split reservation, and the
smoke twins through the real entry points."""

import json
import math

import numpy as np
import pytest
import torch

from common.data.karpathy import KarpathyFormatError, flatten, load_karpathy_json
from common.metrics.image_text import distribution_stats, image_text_recall, rank_correlations
from common.retrieval import losses as L
from common.retrieval.image_text import ClampedTemperature, itm_scores
from common.retrieval.mining import gather, mine_hard_negatives, positive_mask, random_negatives
from papers.cprd import shapes as S
from papers.cprd.config import PRESETS
from papers.cprd.losses import calibrate_delta, distill_loss, partial_ranking_loss, validity

# --- mining -----------------------------------------------------------------------------------------------------


def test_mining_masks_positives_and_keeps_gradient_on_selected_scores():
    sim = torch.tensor([[0.9, 0.8, 0.1, 0.5, 0.7], [0.2, 0.95, 0.3, 0.6, 0.1]], requires_grad=True)
    pos = positive_mask([0, 1], [0, 0, 1, 2, 3])  # row 0 owns columns 0 and 1; row 1 owns column 2
    idx = mine_hard_negatives(sim, pos, 2)
    assert idx.tolist() == [[4, 3], [1, 3]]  # positives never selected, descending student similarity
    picked = gather(sim, idx)
    picked.sum().backward()
    grad = sim.grad
    expected = torch.zeros_like(sim)
    expected[0, [4, 3]] = 1
    expected[1, [1, 3]] = 1
    assert torch.equal(grad, expected)  # the choice carries no gradient, the gathered scores do
    with pytest.raises(ValueError, match="non-positive"):
        mine_hard_negatives(sim.detach(), pos, 4)


def test_random_negatives_exclude_positives():
    pos = torch.eye(6, dtype=torch.bool)
    idx = random_negatives(pos, 3, torch.Generator().manual_seed(0))
    assert idx.shape == (6, 3)
    assert not any(int(r) in row.tolist() for r, row in zip(range(6), idx))
    assert all(len(set(row.tolist())) == 3 for row in idx)


# --- validity rule ----------------------------------------------------------------------------------------------


def test_validity_threshold_top_j_and_false_negative_filter():
    t = torch.tensor([[0.2, 0.9, 0.5, 0.95, 0.1]])
    t_pos = torch.tensor([0.92])
    # false-negative filter: 0.95 >= positive's 0.92 -> moved to the end and dropped from denominators
    order, n, keep = validity(t, t_pos, "threshold", delta=0.4)
    assert order.tolist() == [[1, 2, 0, 4, 3]]
    assert keep.tolist() == [[True, True, True, True, False]]
    assert n.tolist() == [2]  # 0.9 and 0.5 >= delta; the first invalid (0.2) ends the prefix
    order, n, keep = validity(t, t_pos, "top_j", top_j=3)
    assert n.tolist() == [3]
    order, n, _ = validity(t, t_pos, "none")
    assert n.tolist() == [4]
    # without the filter the "false negative" leads the list
    order, n, keep = validity(t, t_pos, "threshold", delta=0.4, false_negative_filter=False)
    assert order.tolist() == [[3, 1, 2, 0, 4]] and n.tolist() == [3] and bool(keep.all())
    # a teacher whose top item is a false negative would otherwise give J* = 1 under a rule on the positive
    order, n, _ = validity(torch.tensor([[0.99, 0.1]]), torch.tensor([0.5]), "threshold", delta=0.05)
    assert n.tolist() == [1]


def test_validity_depends_only_on_teacher_order_under_top_j():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(5, 8, generator=g)
    tp = torch.randn(5, generator=g) + 3
    a = validity(t, tp, "top_j", top_j=4)
    b = validity(torch.exp(2 * t), torch.exp(2 * tp), "top_j", top_j=4)  # strictly increasing transform
    for x, y in zip(a, b):
        assert torch.equal(x, y)


# --- the partial ranking loss, hand-checked ----------------------------------------------------------------------


def test_partial_ranking_loss_hand_checked_list_denominator():
    # one image anchor, 4 captions: column 0 is the positive; student logits s/tau
    logits = torch.tensor([[5.0, 1.0, 0.0, 3.0]], requires_grad=True)
    pos = torch.tensor([[True, False, False, False]])
    idx = mine_hard_negatives(logits, pos, 3)
    assert idx.tolist() == [[3, 1, 2]]
    t_list = torch.tensor([[0.2, 0.9, 0.5]])  # teacher: caption 1 > caption 2 > caption 3
    order, n, keep = validity(t_list, torch.tensor([1.0]), "threshold", delta=0.4)
    assert n.tolist() == [2]
    loss = partial_ranking_loss(logits, pos, idx, order, n, keep, "list", "valid")
    e = math.exp
    term1 = math.log(e(1) + e(0) + e(3)) - 1.0  # caption 1 above {2, 3}
    term2 = math.log(e(0) + e(3)) - 0.0  # caption 2 above {3}; caption 3 is invalid: no own term
    assert loss.item() == pytest.approx((term1 + term2) / 2, rel=1e-6)
    # normalise by K instead of the valid count
    loss_k = partial_ranking_loss(logits, pos, idx, order, n, keep, "list", "k")
    assert loss_k.item() == pytest.approx((term1 + term2) / 3, rel=1e-6)
    loss.backward()
    assert logits.grad[0, 0] == 0  # the positive is ITC's business, not CPRD's (list denominator)


def test_partial_ranking_loss_hand_checked_batch_denominator_and_fn():
    logits = torch.tensor([[4.0, 2.0, 1.0, 0.5, -1.0]])
    pos = torch.tensor([[True, False, False, False, False]])
    idx = torch.tensor([[1, 2, 3]])  # caption 4 is not mined
    t_list = torch.tensor([[0.3, 0.99, 0.6]])  # caption 2 scores above the positive: a suspected false negative
    order, n, keep = validity(t_list, torch.tensor([0.95]), "threshold", delta=0.2)
    assert order.tolist() == [[2, 0, 1]] and n.tolist() == [2] and keep.tolist() == [[True, True, False]]
    loss = partial_ranking_loss(logits, pos, idx, order, n, keep, "batch", "valid")
    e = math.exp
    # teacher order of the kept: caption 3 (0.6) > caption 1 (0.3); caption 2 removed; caption 4 (unmined) below all
    term1 = math.log(e(0.5) + e(2.0) + e(-1.0)) - 0.5
    term2 = math.log(e(2.0) + e(-1.0)) - 2.0
    assert loss.item() == pytest.approx((term1 + term2) / 2, rel=1e-6)


def test_anchor_without_valid_negative_contributes_zero():
    logits = torch.randn(2, 5)
    pos = torch.eye(2, 5, dtype=torch.bool)
    idx = mine_hard_negatives(logits, pos, 3)
    order, n, keep = validity(torch.full((2, 3), -5.0), torch.zeros(2), "threshold", delta=0.0)
    assert n.tolist() == [0, 0]
    assert partial_ranking_loss(logits, pos, idx, order, n, keep).item() == 0.0


def test_listmle_valid_counts_and_order_invariance():
    s = torch.tensor([[1.0, 0.0, 2.0], [0.5, 0.5, 0.0]])
    t = torch.tensor([[3.0, 2.0, 1.0], [0.0, 1.0, 2.0]])
    e = math.exp
    r0 = (math.log(e(1) + e(0) + e(2)) - 1) + (math.log(e(0) + e(2)) - 0)  # row 0: 2 ranked positions
    r1 = math.log(e(0) + e(0.5) + e(0.5)) - 0  # row 1: 1 ranked position (teacher order 2, 1, 0)
    got = L.listmle(s, t, valid=torch.tensor([2, 1]))
    assert got.item() == pytest.approx((r0 + r1) / 2, rel=1e-6)
    got_n = L.listmle(s, t, valid=torch.tensor([2, 1]), normalise=True)
    assert got_n.item() == pytest.approx((r0 / 2 + r1 / 1) / 2, rel=1e-6)
    assert L.listmle(s, t, valid=torch.tensor([0, 0]), normalise=True).item() == 0.0
    assert torch.allclose(L.listmle(s, t), L.listmle(s, torch.sigmoid(t) * 7 + 1))  # order only
    assert torch.allclose(L.listmle(s, t, prefix=2), L.listmle(s, t, valid=torch.tensor([2, 2])))


def test_distill_loss_every_method_runs_and_no_kd_is_zero():
    cfg = PRESETS["shapes-smoke"]
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(8, 8, generator=g).tanh().requires_grad_(True)
    teacher = torch.randn(8, 8, generator=g) + 4 * torch.eye(8)
    pos = torch.eye(8, dtype=torch.bool)
    import dataclasses

    for m in (
        "no_kd",
        "kl",
        "kl_hard",
        "listmle_all",
        "listnet_all",
        "ranknet_all",
        "ranknet_hard",
        "cprd",
        "cprd_easy",
    ):
        c = dataclasses.replace(cfg, method=m, delta=0.0, k=3)
        loss, diag = distill_loss(c, sim, torch.tensor(0.1), teacher, pos, g)
        assert torch.isfinite(loss)
        if m == "no_kd":
            assert loss.item() == 0.0
        else:
            (g_,) = torch.autograd.grad(loss, sim)
            assert g_.abs().sum() > 0
    # missing teacher scores for a needed pair fail loudly
    with pytest.raises(RuntimeError, match="missing"):
        distill_loss(dataclasses.replace(cfg, method="kl", delta=0.0), sim, torch.tensor(0.1),
                     torch.full((8, 8), float("nan")), pos)  # fmt: skip


def test_calibrate_delta_hits_the_target_fraction():
    g = torch.Generator().manual_seed(1)
    t = torch.randn(64, 64, generator=g)
    pos = torch.eye(64, dtype=torch.bool)
    d = calibrate_delta(t, pos, 8, 0.5)
    top = torch.sort(-t.masked_fill(pos, float("-inf")), dim=1).indices[:, :8]
    frac = (t.gather(1, top) >= d).float().mean()
    assert 0.4 < float(frac) < 0.6


# --- encoders' small pieces -------------------------------------------------------------------------------------


def test_itm_adapter_and_clamped_temperature():
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    assert itm_scores(logits, "match_logit").tolist() == [2.0, -1.0]
    assert itm_scores(logits, "logit_diff").tolist() == [2.0, -2.0]
    assert itm_scores(logits, "match_prob")[0].item() == pytest.approx(1 / (1 + math.exp(-2)))
    with pytest.raises(ValueError):
        itm_scores(torch.zeros(3), "match_logit")
    tau = ClampedTemperature(0.07, 0.01, 0.5)
    with torch.no_grad():
        tau.log_tau.fill_(math.log(1e-6))
    assert tau().item() == pytest.approx(0.01)


# --- metrics ----------------------------------------------------------------------------------------------------


def test_image_text_recall_five_captions_per_image():
    # 3 images, 2 captions each (image i owns captions 2i, 2i+1)
    owner = [0, 0, 1, 1, 2, 2]
    sim = torch.tensor(
        [
            [0.1, 0.9, 0.8, 0.0, 0.0, 0.0],  # image 0: top-1 caption 1 (own) -> TR@1 hit
            [0.9, 0.0, 0.1, 0.2, 0.0, 0.0],  # image 1: top-1 caption 0 (not own); own caption 3 at rank 2
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # image 2: all tied -> stable order: captions 0, 1, 2, ... own at 5, 6
        ]
    )
    m = image_text_recall(sim, owner, ks=(1, 2, 5))
    assert m["TR@1"] == pytest.approx(100 / 3)
    assert m["TR@2"] == pytest.approx(200 / 3)
    assert m["TR@5"] == pytest.approx(100.0)  # image 2's caption 4 is at rank 5
    # IR: caption j's image among 3 images; columns of sim
    # c0: [0.1, 0.9, 0] -> image 1 first (miss at 1, hit at 2); c1: image 0 first (hit); c2: image 0 first (miss@1)
    # c3: image 1 first (hit); c4, c5: tied -> image 0 first (miss@1, miss@2, hit@5)
    assert m["IR@1"] == pytest.approx(100 * 2 / 6)
    assert m["IR@2"] == pytest.approx(100 * 4 / 6)


def test_rank_correlations_and_distribution_stats():
    a = np.array([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    b = np.array([[10.0, 20.0, 30.0, 40.0], [1.0, 2.0, 3.0, 4.0]])
    r = rank_correlations(a, b)
    assert r["spearman"] == pytest.approx(0.0) and r["kendall"] == pytest.approx(0.0)  # +1 and -1
    assert rank_correlations(a[:1], b[:1])["kendall"] == pytest.approx(1.0)
    st = distribution_stats(np.r_[np.zeros(99), 10.0])
    assert st["skewness"] > 5 and st["iqr_over_range"] == 0.0


# --- Karpathy loader ----------------------------------------------------------------------------------------------


def test_karpathy_loaders(tmp_path):
    blip = [{"image": "a.jpg", "caption": [f"c{i}" for i in range(5)]}, {"image": "b.jpg", "caption": ["d"] * 5}]
    f = tmp_path / "coco_karpathy_test.json"
    f.write_text(json.dumps(blip))
    ims = load_karpathy_json(f, "test")
    caps, owner = flatten(ims, captions_per_image=5)
    assert len(ims) == 2 and caps[:2] == ["c0", "c1"] and owner == [0] * 5 + [1] * 5
    train = [{"image": "a.jpg", "caption": "x", "image_id": "1"}, {"image": "a.jpg", "caption": "y", "image_id": "1"}]
    f2 = tmp_path / "coco_karpathy_train.json"
    f2.write_text(json.dumps(train))
    assert [i.captions for i in load_karpathy_json(f2, "train")] == [["x", "y"]]
    orig = {"images": [{"filepath": "val2014", "filename": "z.jpg", "split": "restval", "sentences": [{"raw": "r "}]},
                       {"filename": "t.jpg", "split": "test", "sentences": [{"raw": "t"}]}]}  # fmt: skip
    f3 = tmp_path / "dataset_coco.json"
    f3.write_text(json.dumps(orig))
    tr = load_karpathy_json(f3, "train")
    assert [(i.image, i.captions) for i in tr] == [("val2014/z.jpg", ["r"])]
    assert [i.image for i in load_karpathy_json(f3, "test")] == ["t.jpg"]
    with pytest.raises(KarpathyFormatError, match="captions"):
        flatten(load_karpathy_json(f2, "train"), captions_per_image=5)
    (tmp_path / "bad.json").write_text(json.dumps([{"img": 1}]))
    with pytest.raises(KarpathyFormatError, match="entry 0"):
        load_karpathy_json(tmp_path / "bad.json", "test")


# --- the embedded benchmark -------------------------------------------------------------------------------------


def test_shapes_split_is_reserved_by_construction():
    d = S.build(0, n_train=512, max_test=0)
    test = {S.scene_key(d.scenes[i]) for i in d.test_scene}
    assert not test & {S.scene_key(d.scenes[i]) for i in d.train_scene}
    assert not set(d.test_captions) & set(d.train_captions)
    # the split is a function of the scene key alone: a different data seed reserves the same scenes
    d2 = S.build(3, n_train=64, max_test=0)
    assert d.split == d2.split and set(d.test_scene.tolist()) == set(d2.test_scene.tolist())
    assert len(d.test_captions) == 5 * len(d.test_images)
    # every training distractor used by the teacher is a training scene
    from papers.cprd.teacher import _hard_pairs

    caps, imgs = _hard_pairs(d, np.arange(64), np.random.default_rng(0), 0.05)
    assert not set(caps) & set(d.test_captions) and imgs.shape == (64, 3, 32, 32)


def test_captions_and_perturbations_are_consistent():
    s = (("small", "red", "circle"), "left of", ("large", "blue", "square"))
    caps = S.captions(s)
    assert caps[0] == "a small red circle left of a large blue square"
    assert caps[1] == "a large blue square right of a small red circle"
    pert = dict((S.scene_key(t), k) for k, t in S.perturbations(s))
    swapped = (("small", "blue", "circle"), "left of", ("large", "red", "square"))
    assert pert[S.scene_key(swapped)] == "swap_colours"
    assert S.scene_key(s) not in pert
    assert S.canonical(("large", "blue", "square"), "right of", ("small", "red", "circle")) == s
    assert all(S.matching_attributes(s, t) < 7 for _, t in S.perturbations(s))
    b = S.fixed_batches(np.array([0, 0, 1, 2, 3, 4, 5, 6]), 3, 0)
    for row in b:
        assert len(set(np.array([0, 0, 1, 2, 3, 4, 5, 6])[row])) == 3  # distinct scenes per batch


# --- smoke twins through the real entry points --------------------------------------------------------------------


def _smoke_args(tmp_path, preset, *sets):
    return ["--preset", preset, "--set", f"out_dir={tmp_path}/runs", f"results_dir={tmp_path}/results", *sets]


def test_shapes_smoke_through_entry_point_and_resume(tmp_path):
    from papers.cprd.train import main

    m = main(_smoke_args(tmp_path, "shapes-smoke", "eval_teacher=true"))
    for k in ("TR@1", "IR@10", "comp_acc", "topk_kendall", "teacher_neg_skewness", "student_queries_per_s"):
        assert k in m and math.isfinite(m[k])
    rec = json.loads(next((tmp_path / "results").rglob("cprd-seed0.json")).read_text())
    assert rec["paper"] == "cprd" and "teacher" in rec["extra"] and rec["protocol"]["cprd"].startswith("k=4")
    # re-running resumes from the final checkpoint and reproduces the evaluation
    m2 = main(_smoke_args(tmp_path, "shapes-smoke", "eval_teacher=true"))
    assert m2["TR@1"] == m["TR@1"] and m2["IR@1"] == m["IR@1"]


def test_claims_gates_on_smoke(tmp_path):
    from papers.cprd import claims

    claims.main(["--preset", "shapes-smoke", "--seeds", "0", "1", "--methods", "no_kd", "cprd",
                 "--set", f"out_dir={tmp_path}/runs", f"results_dir={tmp_path}/results"])  # fmt: skip
    names = {p.stem for p in (tmp_path / "results").rglob("*.json")}
    assert {"gate-disjoint-seed0", "gate-teacher-seed0", "gate-resolution-seed0"} <= names
    # later invocations for other seeds reuse the recorded gates (seed 0); they never turn their first seed into a
    # gate run. Here the tiny teacher fails its gate, so seed 1 is not run:
    args = ["--preset", "shapes-smoke", "--seeds", "1", "--methods", "no_kd",
            "--set", f"out_dir={tmp_path}/runs", f"results_dir={tmp_path}/results"]  # fmt: skip
    gates = sorted((tmp_path / "results").rglob("gate-*-seed0.json"))
    before = {p: p.read_bytes() for p in gates}
    claims.main(args)
    assert not list((tmp_path / "results").rglob("no_kd-seed1.json"))
    # with passing gate records, seed 1 runs as an ordinary run and leaves the gate records alone
    for p in gates:
        rec = json.loads(p.read_text())
        rec["metrics"]["passed"] = 1.0
        p.write_text(json.dumps(rec))
    before = {p: p.read_bytes() for p in gates}
    claims.main(args)
    rec = json.loads(next((tmp_path / "results").rglob("no_kd-seed1.json")).read_text())
    assert rec["config"]["eval_teacher"] is False and {p: p.read_bytes() for p in gates} == before
    with pytest.raises(SystemExit):  # no gates recorded at all: other seeds are refused
        claims.main([*args[:-2], f"out_dir={tmp_path}/runs2", f"results_dir={tmp_path}/results2"])


@pytest.mark.parametrize("preset", ["coco-smoke", "flickr30k-smoke"])
def test_fullscale_smoke_on_a_karpathy_fixture(tmp_path, preset):
    from PIL import Image

    from papers.cprd.train import main

    rng = np.random.default_rng(0)
    scenes = S.all_scenes()[:30]
    entries = {"train": [], "val": [], "test": []}
    for i, s in enumerate(scenes):
        name = f"img{i}.png"
        Image.fromarray((S.render(s, rng).transpose(1, 2, 0) * 255).astype(np.uint8)).save(tmp_path / name)
        split = "train" if i < 18 else ("val" if i < 22 else "test")
        entries[split].append({"filename": name, "split": split, "sentences": [{"raw": c} for c in S.captions(s)]})
    f = tmp_path / "dataset_coco.json"
    f.write_text(json.dumps({"images": entries["train"] + entries["val"] + entries["test"]}))
    m = main(_smoke_args(tmp_path, preset, f"karpathy_json={f}", f"image_root={tmp_path}", "global_batch=8",
                         "eval_teacher=true"))  # fmt: skip
    assert math.isfinite(m["TR@1"]) and math.isfinite(m["IR@5"])


def test_two_process_gloo_with_accumulation_through_entry_point(tmp_path):
    """torchrun, 2 CPU processes, gathered mining over 2 x 4 items per micro step, 2 accumulation steps."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(root / "papers" / "cprd" / "train.py"),
           *_smoke_args(tmp_path, "shapes-smoke", "per_device_batch=4", "global_batch=16", "k=3")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = next((tmp_path / "runs").rglob("env.json")).parent
    env_json = json.loads((run_dir / "env.json").read_text())
    assert env_json["world_size"] == 2 and env_json["grad_accum"] == 2
    rec = json.loads(next((tmp_path / "results").rglob("cprd-seed0.json")).read_text())
    assert math.isfinite(rec["metrics"]["TR@1"])
    logged = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged and all(math.isfinite(x["loss"]) for x in logged)
