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
