"""The diffusion benchmark (benchmarks/diffusion.py): its smoke path through every paper's real entry point, its
one evaluation protocol (which must reproduce each paper's own numbers on the same noise), resumption, the
wall-clock sizing, the figures, and the run plan."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import diffusion as bench

ROOT = Path(__file__).resolve().parent.parent


def _run(args, tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "BENCH_CACHE_DIR": str(tmp_path / "cache"),
    }
    cmd = [sys.executable, "-m", "benchmarks.diffusion", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)


def _records(raw: Path):
    return {str(p.relative_to(raw)): json.loads(p.read_text()) for p in sorted(raw.rglob("*.json"))}


@pytest.fixture(scope="module")
def smoke_ring(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    raw = tmp / "raw"
    args = ["run", "--smoke", "--datasets", "ring", "--seeds", "0", "--root", str(tmp / "root"), "--raw", str(raw)]
    p = _run(args, tmp)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return tmp, raw, args


def test_smoke_writes_one_record_per_method_and_teacher_rows(smoke_ring):
    _, raw, _ = smoke_ring
    recs = _records(raw)
    students = {r["method"]: r for r in recs.values() if r["paper"] != "teacher"}
    assert set(students) == set(bench.METHODS)
    for name, r in students.items():
        m = bench.METHODS[name]
        assert r["paper"] == m.paper and r["preset"] == "bench-ring-updates-smoke"
        assert r["metrics"]["generator updates"] == 2 and r["metrics"]["critic updates"] == 2 * m.ttur
        assert r["metrics"]["NFE"] == m.nfe
        for k in ("SWD", "MMD", "precision", "recall", "modes covered"):
            assert k in r["metrics"], (name, k)
        assert r["timing"]["train seconds per generator update"] > 0
        assert r["peak_memory_mb"] > 0
        assert r["config"]["toy_layout"] == "ring" and r["config"]["seed"] == 0
    assert len({r["benchmark"] for r in recs.values()}) == 1  # one table: students and teacher rows together
    nfes = sorted(r["nfe"] for r in recs.values() if r["paper"] == "teacher")
    assert nfes == [1, 4, 35]


def test_uniform_evaluation_reproduces_each_papers_own_numbers(smoke_ring):
    """Same test noise and reference as the papers' evaluations: the benchmark's SWD equals the paper's own."""
    _, raw, _ = smoke_ring
    for r in _records(raw).values():
        if r["paper"] == "teacher":
            continue
        own = r["extra"]["paper_record"]["metrics"]
        assert r["metrics"]["SWD"] == pytest.approx(own["SWD"], rel=1e-9), r["method"]
        if r["paper"] == "tdm":
            assert r["metrics"]["SWD @1 NFE"] == pytest.approx(own["SWD K=1"], rel=1e-9)


def test_rerun_skips_existing_records(smoke_ring):
    tmp, raw, args = smoke_ring
    before = {k: v["created"] for k, v in _records(raw).items()}
    p = _run(args, tmp)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.count("skip") == len(bench.METHODS)
    assert {k: v["created"] for k, v in _records(raw).items()} == before


def test_wallclock_budget_from_the_pilot_and_figures(smoke_ring):
    tmp, raw, args = smoke_ring
    budget, plan = bench.wallclock_updates(raw, bench.DATASETS["ring"], list(bench.METHODS.values()), smoke=True)
    recs = {r["method"]: r for r in _records(raw).values() if r["paper"] != "teacher"}
    assert budget == pytest.approx(recs["dmd2"]["timing"]["train seconds per generator update"] * 2)
    for name, n in plan.items():
        spu = recs[name]["timing"]["train seconds per generator update"]
        st1 = recs[name]["timing"]["stage-1 wall time (s)"]
        if name != "disback":
            assert n == max(1, int((budget - st1) / spu))
    assert plan["dmd2"] in (1, 2)  # its own pilot rate: the budget buys (about) the same updates
    from benchmarks.diffusion_figures import make_figures

    paths = make_figures(raw, tmp / "fig", smoke=True)
    assert {p.name for p in paths} >= {"bench_curves_ring.png", "bench_samples_toy2d.png"}


def test_wallclock_needs_the_pilot(tmp_path):
    with pytest.raises(SystemExit, match="run --budget updates"):
        bench.wallclock_updates(tmp_path, bench.DATASETS["ring"], [bench.METHODS["tdm"]], smoke=True)


def test_digits_smoke_through_the_shared_teacher(tmp_path):
    raw = tmp_path / "raw"
    args = ["run", "--smoke", "--datasets", "digits", "--methods", "dmd2", "tdm", "--seeds", "1"]
    p = _run([*args, "--root", str(tmp_path / "root"), "--raw", str(raw)], tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    recs = list(_records(raw).values())
    students = [r for r in recs if r["paper"] != "teacher"]
    assert {r["method"] for r in students} == {"dmd2", "tdm"}
    for r in students:
        assert r["metrics"]["FD-digitsCNN"] > 0 and "precision" in r["metrics"]
        assert r["config"]["cache_dir"] == str(tmp_path / "cache")  # one teacher, one cache
    assert sorted(r["nfe"] for r in recs if r["paper"] == "teacher") == [1, 4, 35]


def test_plan_is_the_same_for_every_method():
    """Same data fields, batch, seed and generator updates for every method; critic updates follow each ratio."""
    for ds in bench.DATASETS.values():
        sets = {m: bench.overrides(ds, bench.METHODS[m], 2, 100, "updates", Path("r"), False) for m in bench.METHODS}
        for m, s in sets.items():
            assert s["seed"] == 2 and s["global_batch"] == bench.SIZES[ds.task].batch
            assert s["steps"] == 100 * bench.METHODS[m].ttur
            for k, v in ds.toy.items():
                assert s[k] == v, (ds.name, m, k)
            if ds.task == "toy2d" and bench.METHODS[m].paper != "tdm":
                assert s["teacher"] == "analytic"


def test_bad_seeds_are_refused():
    with pytest.raises(SystemExit, match="distinct"):
        bench.main(["run", "--seeds", "0", "0", "--dry-run"])


# ---- the small hooks in the papers that the benchmark needs (same toy data and teacher everywhere) ----


def test_fdistill_toy_takes_the_shared_layouts():
    import dataclasses

    from papers.fdistill.config import PRESETS
    from papers.fdistill.model import build_toy

    cfg = dataclasses.replace(
        PRESETS["toy2d-smoke"], toy_layout="grid", grid_side=5, mode_weights=(), init_mode=-1, fake_init_steps=1
    )
    S = build_toy(cfg)
    assert S.extra["data"].num_modes == 25
    with pytest.raises(Exception, match="init_mode"):
        dataclasses.replace(cfg, init_mode=25)


def test_disback_toy_with_the_exact_teacher_is_the_shared_toy(tmp_path):
    import dataclasses

    import torch

    from common.diffusion.teachers import AnalyticTeacher
    from papers.disback.config import PRESETS
    from papers.disback.model import build

    cfg = dataclasses.replace(PRESETS["toy2d-smoke"], teacher="analytic", fake_init_steps=1, mode_weights=())
    S = build(cfg, tmp_path)
    assert isinstance(S.teacher, AnalyticTeacher) and S.extra["data"].num_modes == 8
    net = S.make_net()  # the fake score / path nodes: copies of the regressed teacher, which G0 also is
    for a, b in zip(net.state_dict().values(), S.generator.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(Exception, match="teacher"):
        dataclasses.replace(cfg, teacher="misspecified")


def test_tdm_toy_takes_grid_and_weights():
    import dataclasses

    from papers.tdm.config import PRESETS
    from papers.tdm.model import build_toy

    w = (0.5,) + (0.5 / 24,) * 24
    S = build_toy(dataclasses.replace(PRESETS["toy2d-smoke"], toy_layout="grid", grid_side=5, mode_weights=w))
    data = S.extra["data"]
    assert data.num_modes == 25 and abs(float(data.weights[0]) - 0.5) < 1e-9
    with pytest.raises(Exception, match="mode_weights"):
        dataclasses.replace(PRESETS["toy2d-smoke"], mode_weights=(1.0, 2.0))


def test_paired_table_pairs_seeds_within_a_preset():
    import math

    from scipy.stats import t

    from results.build import fmt, paired_table

    def rec(method, seed, v):
        return {"seed": seed, "metrics": {"SWD": v}}

    rows = {
        ("dmd2", "dmd2", "bench-ring-updates"): [rec("dmd2", s, v) for s, v in zip((0, 1, 2), (1.0, 2.0, 3.0))],
        ("tdm", "tdm", "bench-ring-updates"): [rec("tdm", s, v) for s, v in zip((0, 1, 2, 5), (2.0, 4.0, 6.0, 9.0))],
        ("tdm", "tdm", "bench-ring-wallclock"): [rec("tdm", 0, 1.0)],  # no baseline in this preset: no row
    }
    out = "\n".join(paired_table(rows, {"baseline": "dmd2", "metrics": ["SWD"]}))
    half = t.ppf(0.975, 2) * 1.0 / math.sqrt(3)  # deltas 1, 2, 3 (seed 5 has no pair)
    assert f"| bench-ring-updates | tdm | 2 ± 1 [{fmt(2 - half)}, {fmt(2 + half)}], 3 |" in out
    assert "wallclock" not in out
