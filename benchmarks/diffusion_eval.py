"""The diffusion benchmark's one evaluation protocol: every method's last generator and the teacher, sampled on the
same test noise and scored against the same reference samples with common.diffusion.evaluation's metrics.

toy2d: sliced Wasserstein (256 projections) and RBF-MMD to `n` fresh samples of the true mixture, k-NN precision and
recall (k=5, 2048 samples), modes covered (a mode holds >= 1/4 of its expected samples within 3 stds), mode-weight
TV, off-mode fraction. digits: FD on the digits classifier's features (FD-digitsCNN, not Inception FID) against the
held-out test split, precision / recall (k=3) on the same features, class-histogram TV.
Students are sampled as their papers sample them: the 1-step generators at sigma_max (EDM), TDM's K-step student with
its deterministic DDIM over t_j = 899, 674, 449, 224 (common.diffusion.samplers.student_sample, rule "ddim"). The
teacher: EDM Heun with 18 steps (35 NFE) and EDM Euler with 1 and 4 steps (the students' NFE).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path

import torch

from common.results import make_record, write_record

TEST_SEED = 777
SAMPLES_KEPT = {"toy2d": 600, "digits": 64}  # samples stored in the record for the figures


def _mixture(cfg: dict):
    from common.diffusion.tasks import DistillConfig, toy_mixtures

    keys = {f.name for f in dataclasses.fields(DistillConfig)}
    c = DistillConfig(**{k: v for k, v in _tuples(cfg).items() if k in keys and k in _TOY_KEYS})
    return toy_mixtures(c)[0]


_TOY_KEYS = (
    "toy_layout",
    "num_modes",
    "radius",
    "grid_side",
    "grid_spacing",
    "mode_weights",
    "mode_std",
    "mode_stds",
    "mode_means",
)


def _tuples(cfg: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}


def _sigma_data(data) -> float:
    return float(data.sample(65536, torch.Generator().manual_seed(1234)).std(0).mean())  # as the toy builders


def _vp_schedule(cfg: dict):
    from common.diffusion.schedules import VPSchedule

    return VPSchedule(cfg["beta_schedule"], cfg["beta_start"], cfg["beta_end"], cfg["num_train_steps"])


def _edm_schedule(cfg: dict, sd: float):
    from common.diffusion.schedules import EDMSchedule

    return EDMSchedule(cfg["sigma_min"], cfg["sigma_max"], cfg["rho"], cfg["num_levels"], sd)


def _digits_teacher(cfg: dict):
    from types import SimpleNamespace

    from common.diffusion.tasks import digits_teacher

    ns = SimpleNamespace(
        teacher_path=cfg.get("teacher_path", ""),
        tiny_models=cfg["tiny_models"],
        teacher_steps=cfg["teacher_steps"],
        cache_dir=cfg["cache_dir"],
        resolution=cfg["resolution"],
        sigma_data=0.5,
    )
    return digits_teacher(ns)[0]


class Task:
    """The data, reference, metric function and teacher of one dataset and seed (identical for every method)."""

    def __init__(self, task: str, cfg: dict, seed: int, n: int):
        self.task, self.cfg, self.seed, self.n = task, cfg, seed, n
        if task == "toy2d":
            from common.diffusion.evaluation import toy_metrics
            from common.diffusion.teachers import AnalyticTeacher

            self.data = _mixture(cfg)
            self.sd = _sigma_data(self.data)
            self.real = self.data.sample(n, torch.Generator().manual_seed(TEST_SEED + 10_000 + seed))
            self.teacher = AnalyticTeacher(self.data)
            self.shape = (2,)
            self.sigma_max = 20.0
            self._fn = lambda x: toy_metrics(x, self.real, self.data)  # noqa: E731
        else:
            from common.diffusion.evaluation import _digits_ref, digits_metrics
            from common.metrics.fid import digits_feature_net

            feat = digits_feature_net()
            ref_x, ref_y = _digits_ref("test")
            self.teacher = _digits_teacher(cfg)
            self.sd = 0.5
            self.shape = (1, 8, 8)
            self.sigma_max = 80.0
            self._fn = lambda x: digits_metrics(x, feat, ref_x, ref_y)  # noqa: E731

    def noise(self) -> torch.Tensor:
        return torch.randn((self.n, *self.shape), generator=torch.Generator().manual_seed(TEST_SEED + self.seed))

    def metrics(self, x) -> dict:
        out = self._fn(x.float())
        if self.task == "toy2d":
            out["modes covered"] = out["mode coverage"] * self.data.num_modes
        return out

    def protocol(self) -> dict:
        common = {
            "samples": self.n,
            "noise": f"the same test noise for every method (seed {TEST_SEED} + seed)",
            "model": "the last generator (final checkpoint) of each run",
        }
        if self.task == "toy2d":
            return {
                **common,
                "reference": f"{self.n} fresh samples of the true mixture (seed {TEST_SEED + 10_000} + seed)",
                "SWD projections": 256,
                "MMD": "unbiased RBF, 2048 samples",
                "precision/recall": "k-NN, k=5, 2048 samples",
                "modes covered": "modes holding >= 1/4 of their expected samples within 3 stds",
            }
        return {
            **common,
            "reference": "digits held-out test split (360 images)",
            "metric": "FD-digitsCNN (common.metrics.fid.digits_feature_net; not Inception FID)",
            "precision/recall": "k=3 on the same features",
        }

    def kept(self, x) -> list:
        k = SAMPLES_KEPT[self.task]
        return [[round(float(v), 3) for v in row.flatten()] for row in x[:k]]


# ------------------------------------------------------------------------------------------------ generators


def load_generator(task: Task, m, cfg: dict, run_dir: Path):
    """The run's last generator (objects['generator'] of its final checkpoint) in the architecture it was trained in."""
    from common.diffusion.denoisers import MLPDenoiser, VPDenoiser

    ckpts = sorted((run_dir / "checkpoints").glob("ckpt-*.pt"))
    if not ckpts:
        raise FileNotFoundError(f"{run_dir}/checkpoints has no ckpt-*.pt; the run did not finish")
    state = torch.load(ckpts[-1], map_location="cpu", weights_only=False)["objects"]["generator"]
    if task.task == "toy2d":
        net = MLPDenoiser(2, cfg["width"], cfg["depth"], task.sd)
    else:
        net = copy.deepcopy(task.teacher)
    if m.paper == "tdm":
        net = VPDenoiser(net, _vp_schedule(cfg))
    net.load_state_dict(state, strict=True)
    return net.eval().requires_grad_(False)


def sample_student(task: Task, m, cfg: dict, G, z, k: int | None = None):
    """(samples, samples per second, NFE) of a student: 1-step EDM, or TDM's K-step DDIM."""
    from common.diffusion.samplers import student_sample

    t0 = time.perf_counter()
    if m.paper == "tdm":
        total, k = cfg["total_steps"], k or cfg["student_k"]
        steps = [total - 1 - round(j * total / k) for j in range(k)]  # TDM's student times (papers/tdm/trajectory.py)
        x, nfe = student_sample(G, _vp_schedule(cfg), steps, z, rule="ddim")
    else:
        sch = _edm_schedule(cfg, task.sd)
        x, nfe = student_sample(G, sch, [sch.max_index()], z)
    return x.float(), len(z) / (time.perf_counter() - t0), nfe


def sample_teacher(task: Task, z, steps: int, heun: bool):
    from common.diffusion.samplers import edm_sampler

    t0 = time.perf_counter()
    with torch.no_grad():
        x, nfe = edm_sampler(task.teacher, z, steps, 0.002, task.sigma_max, 7.0, heun=heun)
    return x.float(), len(z) / (time.perf_counter() - t0), nfe


# ------------------------------------------------------------------------------------------------ records


def _curve(run_dir: Path, m) -> list:
    """[generator step, validation distance] from the run: the shared trainer's val_score lines, DisBack's curve."""
    if m.paper == "disback":
        p = run_dir / "curve.json"
        return [list(map(float, c)) for c in json.loads(p.read_text())["curve"]] if p.exists() else []
    from types import SimpleNamespace

    from common.diffusion.evaluation import learning_curve

    return learning_curve(SimpleNamespace(dir=run_dir))


def _paper_record(paper_records: Path, m, preset: str, seed: int) -> dict:
    p = paper_records / m.paper / preset / f"{m.name}-seed{seed}.json"
    return json.loads(p.read_text()) if p.exists() else {}


def write_run_record(
    *,
    ds,
    m,
    seed,
    budget,
    preset,
    run_dir,
    paper_records,
    raw,
    sets,
    cmd,
    run_wall_s,
    updates,
    wall_target,
    label,
    eval_samples,
) -> Path:
    cfg = json.loads((run_dir / "config.json").read_text())
    task = Task(ds.task, cfg, seed, eval_samples)
    G = load_generator(task, m, cfg, run_dir)
    z = task.noise()
    x, thr, nfe = sample_student(task, m, cfg, G, z)
    metrics = task.metrics(x)
    if m.paper == "tdm" and nfe != 1:  # TDM's student at 1 step too (same network; its paper's K=1 row)
        x1, _, _ = sample_student(task, m, cfg, G, z, k=1)
        metrics.update({f"{k} @1 NFE": v for k, v in task.metrics(x1).items() if k in _MAIN[ds.task]})
    paper = _paper_record(paper_records, m, preset, seed)
    train_s = float(paper.get("train_wall_time_s") or 0.0)
    stage1_s = float((paper.get("timing") or {}).get("stage1_wall_s", 0.0))
    stage1 = cfg.get("num_nodes", 0) * cfg.get("stage1_interval", 0) if m.paper == "disback" else 0
    iters = cfg["steps"]
    metrics.update({"NFE": float(nfe), "generator updates": float(updates), "critic updates": float(iters)})
    if stage1:
        metrics["stage-1 updates (critic only)"] = float(stage1)
    timing = {
        "train seconds per generator update": train_s / max(updates, 1),
        "train wall time (s)": train_s,
        "stage-1 wall time (s)": stage1_s,
        "train + stage-1 wall time (s)": train_s + stage1_s,
        "run wall time (s)": run_wall_s,
        "sampling throughput (samples/s)": thr,
        "peak memory (MB, process RSS)": float(paper.get("peak_memory_mb") or 0.0),
    }
    if wall_target is not None:
        timing["wall-clock budget (s)"] = wall_target
    extra = {
        "bench": {
            "dataset": ds.name,
            "budget": budget,
            "generator_updates": updates,
            "iterations": iters,
            "critic_per_generator_update": m.ttur,
            "stage1_steps": stage1,
            "stage1_counted_in_updates": False,
            "wallclock_rule": None
            if wall_target is None
            else "updates = (budget - measured stage-1 s) / measured s per generator update of the `updates` runs",
            "set": {k: v if not isinstance(v, tuple) else list(v) for k, v in sets.items()},
            "command": " ".join(cmd[1:]),
            "run_dir": str(run_dir),
        },
        "learning_curve": _curve(run_dir, m),
        "learning_curve_metric": "each method's own validation distance (toy: SWD 128 projections on separate noise; "
        "digits: FD-digitsCNN on 500 samples)",
        "paper_record": {k: paper.get(k) for k in ("metrics", "protocol", "nfe", "timing") if k in paper},
        "samples": task.kept(x),
    }
    rec = make_record(
        paper=m.paper,
        preset=preset,
        method=m.name,
        seed=seed,
        benchmark=label,
        dataset=ds.label,
        metrics=metrics,
        protocol=task.protocol(),
        config=cfg,
        wall_time_s=run_wall_s,
        nfe=nfe,
        sampling_throughput=thr,
        peak_memory_mb=timing["peak memory (MB, process RSS)"],
        train_wall_time_s=train_s,
        timing=timing,
        extra=extra,
    )
    path = write_record(rec, root=raw)
    main = ", ".join(f"{k}={metrics[k]:.4g}" for k in _MAIN[ds.task] if k in metrics)
    print(f"[bench] {ds.name} {m.name} seed {seed} {budget}: {main}; {train_s:.1f} s training -> {path}", flush=True)
    return path


_MAIN = {
    "toy2d": ("SWD", "MMD", "precision", "recall", "modes covered"),
    "digits": ("FD-digitsCNN", "precision", "recall"),
}


def _teacher_cfg(ds, smoke: bool, root) -> dict:
    """The teacher's config fields (the same values every method's run gets)."""
    import os

    if ds.task == "toy2d":
        return {**ds.toy}
    return {
        "tiny_models": smoke,
        "teacher_steps": 2 if smoke else 1200,
        "cache_dir": os.environ.get("BENCH_CACHE_DIR", "runs/cache"),
        "resolution": 8,
        "teacher_path": "",
    }


def write_teacher_records(ds, seed: int, raw: Path, label: str, n: int, smoke: bool, root) -> list[Path]:
    """Teacher reference rows at its evaluation NFE (Heun 18 steps = 35) and at the students' NFE (Euler 1 and 4)."""
    preset = f"bench-{ds.name}" + ("-smoke" if smoke else "")
    cfg = _teacher_cfg(ds, smoke, root)
    out, task = [], None
    for steps, heun in ((18, True), (1, False), (4, False)):
        nfe = 2 * steps - 1 if heun else steps
        method = f"teacher {nfe} NFE ({'Heun' if heun else 'Euler'})"
        path = raw / "teacher" / preset / f"{method.replace(' ', '_')}-seed{seed}.json"
        if path.exists():
            out.append(path)
            continue
        task = task or Task(ds.task, cfg, seed, n)
        x, thr, nfe = sample_teacher(task, task.noise(), steps, heun)
        rec = make_record(
            paper="teacher",
            preset=preset,
            method=method,
            seed=seed,
            benchmark=label,
            dataset=ds.label,
            metrics={**task.metrics(x), "NFE": float(nfe)},
            protocol={**task.protocol(), "sampler": f"EDM {'Heun' if heun else 'Euler'}, {steps} steps"},
            config=cfg,
            wall_time_s=n / thr,
            nfe=nfe,
            sampling_throughput=thr,
            timing={"sampling throughput (samples/s)": thr},
            extra={"samples": task.kept(x)},
        )
        out.append(write_record(rec, root=raw))
    return out
