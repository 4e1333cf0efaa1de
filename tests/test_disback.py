"""DisBack through its real entry point: both stages, the run folder, resuming each stage mid-way, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _run(tmp_path, *sets, preset="toy2d-smoke", check=True, name="a"):
    cmd = [
        sys.executable,
        "-m",
        "papers.disback.train",
        "--preset",
        preset,
        "--set",
        f"out_dir={tmp_path}/runs",
        f"results_dir={tmp_path}/res",
        f"cache_dir={tmp_path}/cache",
        f"run_name={name}",
        *sets,
    ]
    p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    if check:
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def _dir(tmp_path, name="a"):
    return tmp_path / "runs" / "disback" / name


def _final_generator(tmp_path, name):
    ckpts = sorted((_dir(tmp_path, name) / "checkpoints").glob("ckpt-*.pt"))
    return torch.load(ckpts[-1], map_location="cpu", weights_only=False)["objects"]["generator"]


def test_toy2d_smoke_writes_path_curve_record_and_pictures(tmp_path):
    _run(tmp_path, "num_nodes=3", "steps=8", "switch_every=2")
    d = _dir(tmp_path)
    manifest = json.loads((d / "path" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["recorded"] == [1, 2, 3]
    assert sorted(p.name for p in (d / "path").glob("node_*.safetensors")) == [
        f"node_00{i}.safetensors" for i in (1, 2, 3)
    ]
    for f in ("initial_generator.safetensors", "curve.json", "curve.png", "samples.png", "path.png"):
        assert (d / f).is_file(), f
    curve = json.loads((d / "curve.json").read_text())["curve"]
    assert [p[0] for p in curve] == [0, 1, 2, 3, 4]  # G^0 first, then every generator step, the last at steps/ttur
    rec = json.loads(next((tmp_path / "res" / "disback" / "toy2d-smoke").glob("disback-seed0*.json")).read_text())
    assert rec["metrics"]["stage-1 cost (gen-step equivalents)"] == 3 * 1 / 2
    assert "path end: distance to G0 / distance to data" in rec["metrics"] and rec["timing"]["stage1_cpu_s"] >= 0
    # the node in use at each iteration, from the log of the run: N-1 = 2 for iterations 0-1, 1 for 2-3, then 0
    from papers.disback.path import target_node

    assert [target_node(i, 3, 2) for i in range(8)] == [2, 2, 1, 1, 0, 0, 0, 0]


def test_endpoint_baseline_runs_no_stage1(tmp_path):
    _run(tmp_path, "backtrack=false", "fake_init=teacher", "method=endpoint", name="e")
    d = _dir(tmp_path, "e")
    assert not (d / "path").exists() and not (d / "stage1").exists()
    rec = json.loads(next((tmp_path / "res" / "disback" / "toy2d-smoke").glob("endpoint-seed0*.json")).read_text())
    assert rec["metrics"]["stage-1 cost (gen-step equivalents)"] == 0


def test_stage1_resumed_mid_path_records_the_same_nodes_and_student(tmp_path):
    sets = ["num_nodes=4", "stage1_interval=2", "steps=6", "switch_every=2", "ckpt_every=1", "keep_ckpts=20"]
    _run(tmp_path, *sets, name="straight")
    _run(tmp_path, *sets, name="killed")
    d = _dir(tmp_path, "killed")
    # emulate a kill after node 2 of stage 1 (stage-1 step 4): later nodes, stage-1 checkpoints and stage 2 are gone
    for i in (3, 4):
        (d / "path" / f"node_00{i}.safetensors").unlink()
    for p in (d / "stage1").glob("ckpt-*.pt"):
        if int(p.stem.split("-")[1]) > 4:
            p.unlink()
    m = json.loads((d / "path" / "manifest.json").read_text())
    (d / "path" / "manifest.json").write_text(json.dumps({**m, "complete": False, "recorded": [1, 2]}))
    for p in (d / "checkpoints").glob("*.pt"):
        p.unlink()
    (d / "initial_generator.safetensors").touch()  # must not matter: G^0 is reloaded strictly ...
    (d / "initial_generator.safetensors").unlink()  # ... or rebuilt identically from the seed when missing
    _run(tmp_path, *sets, name="killed")
    from safetensors.torch import load_file

    for i in range(1, 5):
        a = load_file(str(_dir(tmp_path, "straight") / "path" / f"node_00{i}.safetensors"))
        b = load_file(str(d / "path" / f"node_00{i}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), f"node {i} differs after resuming stage 1"
    a, b = _final_generator(tmp_path, "straight"), _final_generator(tmp_path, "killed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stage2_resumed_mid_path_ends_where_an_uninterrupted_run_ends(tmp_path):
    sets = ["num_nodes=3", "steps=8", "switch_every=2", "ckpt_every=1", "keep_ckpts=20"]
    _run(tmp_path, *sets, name="straight")
    _run(tmp_path, *sets, name="killed")
    d = _dir(tmp_path, "killed")
    for p in (d / "checkpoints").glob("ckpt-*.pt"):  # killed after iteration 3: node 1 is the target, mid-path
        if int(p.stem.split("-")[1]) > 3:
            p.unlink()
    p = _run(tmp_path, *sets, name="killed")
    a, b = _final_generator(tmp_path, "straight"), _final_generator(tmp_path, "killed")
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed student differs from the uninterrupted one"
    ca = json.loads((_dir(tmp_path, "straight") / "curve.json").read_text())["curve"]
    cb = json.loads((d / "curve.json").read_text())["curve"]
    assert ca == cb


@pytest.mark.parametrize(
    "sets, message",
    [
        (["num_nodes=0"], "num_nodes"),
        (["fake_init=random"], "fake_init"),
        (["base=diff_instruct", "gan=true"], "gan"),
        (["init_from=/no/such/file.safetensors"], "does not exist"),
    ],
)
def test_bad_input_fails_in_one_line(tmp_path, sets, message):
    p = _run(tmp_path, *sets, check=False)
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]


def test_a_path_of_another_shape_in_the_run_folder_is_refused(tmp_path):
    _run(tmp_path, "num_nodes=2")
    p = _run(tmp_path, "num_nodes=3", check=False)
    assert p.returncode == 2 and "differ" in p.stderr  # the run folder's config check names num_nodes


def test_init_from_loads_weights_only_and_strictly(tmp_path):
    _run(tmp_path, name="src")
    g0 = _dir(tmp_path, "src") / "initial_generator.safetensors"
    _run(tmp_path, f"init_from={g0}", name="dst")
    from safetensors.torch import load_file

    a, b = load_file(str(g0)), load_file(str(_dir(tmp_path, "dst") / "initial_generator.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    from safetensors.torch import save_file

    save_file({"other.weight": torch.zeros(2, 2)}, str(tmp_path / "bad.safetensors"))
    p = _run(tmp_path, f"init_from={tmp_path / 'bad.safetensors'}", name="bad", check=False)
    assert p.returncode == 2 and "does not fit the generator" in p.stderr


def test_claim_variants_share_the_budget():
    from papers.disback.claims import VARIANTS, comparisons
    from papers.disback.config import PRESETS

    assert set(VARIANTS) == {"disback", "endpoint", "endpoint, fake from s'_N"}
    assert VARIANTS["disback"] == {}  # the claim's DisBack is the embedded default
    cfg = PRESETS["toy2d"]
    T, off = cfg.gen_steps, cfg.num_nodes * cfg.stage1_interval / cfg.ttur_ratio
    flat = [(s, 1.0) for s in range(0, int(T + off) + 1, cfg.curve_every)]
    comp = comparisons(cfg, {"disback": (flat[: T // cfg.curve_every + 1], 1000), "endpoint": (flat, 0)})
    steps = comp["disback / toy2d claim: equal generator steps"]
    assert set(steps["disback"]) == set(steps["endpoint"])
    compute = comp["disback / toy2d claim: equal total compute (stage 1 counted)"]
    assert compute["disback"]["stage-1 cost (gen-step equivalents)"] == off
    assert compute["endpoint"]["stage-1 cost (gen-step equivalents)"] == 0


@pytest.mark.parametrize("preset", ["digits-smoke", "ffhq64-smoke", "afhq64-smoke", "imagenet64-smoke", "sdxl-smoke"])
def test_image_presets_smoke_both_stages(tmp_path, preset):
    _run(tmp_path, preset=preset, name=preset)
    d = _dir(tmp_path, preset)
    assert json.loads((d / "path" / "manifest.json").read_text())["complete"]
    assert (d / "samples.png").is_file() and (d / "generator.safetensors").is_file()


def test_edm_preset_without_teacher_names_the_converter(tmp_path):
    p = _run(tmp_path, "tiny_models=false", preset="ffhq64-smoke", check=False)
    assert p.returncode == 2 and "edm_convert" in p.stderr


def test_claims_pipeline_on_the_smoke_twin(tmp_path):
    """Gates, the three variants, derived records of both comparisons and the figures (gates ignored: tiny nets)."""
    cmd = [
        sys.executable,
        "-m",
        "papers.disback.claims",
        "--preset",
        "toy2d-smoke",
        "--seeds",
        "0",
        "--ablation",
        "--ignore-gates",
        "--out-dir",
        f"{tmp_path}/runs",
        "--results-dir",
        f"{tmp_path}/res",
        "--figures-dir",
        f"{tmp_path}/fig",
        "--cache-dir",
        f"{tmp_path}/cache",
    ]
    p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    recs = [json.loads(f.read_text()) for f in (tmp_path / "res").rglob("*.json")]
    by = {(r["benchmark"], r["method"]) for r in recs}
    for bench in ("equal generator steps", "equal total compute (stage 1 counted)"):
        for m in ("disback", "endpoint", "endpoint, fake from s'_N"):
            assert (f"disback / toy2d claim: {bench}", m) in by
    assert ("disback / toy2d claim: gates (precondition checks, per seed)", "gates") in by
    assert (tmp_path / "fig" / "toy2d_equal_steps.png").is_file() and (
        tmp_path / "fig" / "toy2d_equal_compute.png"
    ).is_file()
    endpoint = next(r for r in recs if r["method"] == "endpoint" and "runs" in r["benchmark"])
    assert endpoint["config"]["steps"] == 4 + 2  # T + stage-1 steps: both comparisons from one endpoint run


def test_sdxl_starts_from_a_given_generator(tmp_path):
    """The SDXL preset starts from a trained (DMD2) generator given by init_from, weights only."""
    _run(tmp_path, preset="sdxl-smoke", name="first")
    weights = _dir(tmp_path, "first") / "generator.safetensors"
    _run(tmp_path, f"init_from={weights}", preset="sdxl-smoke", name="second")
    from safetensors.torch import load_file

    a, b = load_file(str(weights)), load_file(str(_dir(tmp_path, "second") / "initial_generator.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_both_stages_two_processes_with_accumulation_match_one_loopback(tmp_path):
    """DisBack through its entry point: 2 gloo processes x 2 micro-batches end where 1 process x 4 micro-batches ends,
    in stage 1 (the degrading copy and the nodes it records: every step draws the whole global batch, one RNG stream
    per global micro-batch) and in stage 2 (generator and fake score on the shared loop). The teacher and G^0 come
    from one shared cache, so both runs start from the same networks."""
    sys.path.insert(0, str(ROOT / "tests"))
    from loop_equivalence import assert_same, final_state, run_both

    sets = [f"cache_dir={tmp_path}/cache", "run_name=eq"]
    one, two = run_both("papers.disback.train", "toy2d-smoke", sets, tmp_path, global_batch=16)
    runs = [tmp_path / p / "runs/disback/eq" for p in ("p1", "p2")]
    stage2 = [final_state(r / "checkpoints") for r in runs]
    assert stage2[0]["step"] == stage2[1]["step"] == 4
    assert assert_same(*stage2, ["generator", "fake"]) > 0
    stage1 = [final_state(r / "stage1") for r in runs]
    assert stage1[0]["step"] == stage1[1]["step"] == 2
    assert assert_same(*stage1, ["aux"]) > 0
    from safetensors.torch import load_file

    nodes = sorted((runs[0] / "path").glob("node_*.safetensors"))
    assert len(nodes) == 2
    for node in nodes:
        a, b = (load_file(r / "path" / node.name) for r in runs)
        assert a.keys() == b.keys()
        for k, v in a.items():
            torch.testing.assert_close(b[k], v, rtol=1e-4, atol=1e-5, msg=f"{node.name}: {k} differs")
