"""One benchmark for the four diffusion-distillation papers: DMD2, f-distill (JS and reverse KL), DisBack and TDM on
the same teachers and data, at equal generator-update budgets and, separately, at equal wall-clock budgets.

    python -m benchmarks.diffusion run --budget updates                 # all datasets, methods, seeds 0-2
    python -m benchmarks.diffusion run --budget wallclock               # needs the `updates` records (pilot)
    python -m benchmarks.diffusion run --budget updates --datasets ring --methods dmd2 tdm --seeds 0
    python -m benchmarks.diffusion figures                              # results/figures/bench_*.png from records
    python -m benchmarks.diffusion run --smoke --root /tmp/b            # smoke twins, tiny budget (tests)

Every run goes through the paper's own entry point (`python -m papers.<p>.train --preset ... --set ...`, one
subprocess per run, so that peak memory is the run's own); nothing here trains. After a run the benchmark
evaluates the run's last generator (its final checkpoint) with ONE protocol for all methods (common.diffusion
.evaluation's toy and digits metrics, the same test noise and the same reference samples per seed) and writes one
record per run to results/raw/<paper>/bench-<dataset>-<budget>/<method>-seed<s>.json; the paper's own record
(its own metrics and protocol) is kept inside it under extra.paper_record. The teacher is evaluated the same way
at its evaluation NFE (EDM Heun, 18 steps = 35 NFE) and at the students' NFE (1 and 4; EDM Euler) and written as
reference rows (paper "teacher"). A run whose record exists is skipped, so re-running resumes.

Datasets (same teacher for every method): toy2d `ring` (8 balanced modes, radius 2, std 0.1), `imbalanced` (the
same ring with f-distill's weights 0.45 ... 0.005), `grid` (25 modes, spacing 2, std 0.1), each with the exact
mixture denoiser as teacher; `digits` (sklearn 8x8) with the shared cached UNet teacher
(common.diffusion.tasks.digits_teacher, 1200 steps). TDM's teacher is the same exact mixture (digits: the same UNet)
read in VP time, as in its paper; the other three use it in VE/EDM time.

Budgets: `updates` gives every method the same number of generator updates (DMD2, f-distill and DisBack update the
critic 5 times per generator update, TDM once: their papers' ratios). DisBack's stage 1 (degradation recording)
makes no generator update and is not counted there; its steps are recorded. `wallclock` gives every method the
training wall time DMD2 took in the `updates` runs of that dataset: each method's seconds per generator update are
measured in its `updates` runs (the pilot), its generator-update count is set from the budget (DisBack: after its
stage-1 time), and the wall time each run then took is recorded next to the target.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_RAW = ROOT / "results" / "raw"
FIGURES = ROOT / "results" / "figures"
TEST_SEED = 777  # the evaluation seed of common.diffusion.evaluation: test noise TEST_SEED + seed, reference + 10000
IMBALANCED = (0.45, 0.25, 0.12, 0.08, 0.05, 0.03, 0.015, 0.005)  # f-distill's toy weights (papers/fdistill/config.py)
BUDGETS = ("updates", "wallclock")
TDM_K = 4  # TDM's 4-step student (its paper's setting); the others are 1-step students


@dataclass(frozen=True)
class Dataset:
    name: str
    label: str
    task: str
    toy: dict = field(default_factory=dict)  # the mixture fields, for every paper's config


DATASETS = {
    "ring": Dataset("ring", "balanced 8-mode ring", "toy2d", dict(toy_layout="ring", num_modes=8, mode_weights=())),
    "imbalanced": Dataset(
        "imbalanced", "imbalanced 8-mode ring", "toy2d", dict(toy_layout="ring", num_modes=8, mode_weights=IMBALANCED)
    ),
    "grid": Dataset(
        "grid", "25-mode grid", "toy2d", dict(toy_layout="grid", grid_side=5, grid_spacing=2.0, mode_weights=())
    ),
    "digits": Dataset("digits", "digits 8x8", "digits"),
}


@dataclass(frozen=True)
class Method:
    name: str
    paper: str
    ttur: int  # critic updates per generator update
    nfe: int
    fixed: dict = field(default_factory=dict)  # --set values of the method itself


METHODS = {
    "dmd2": Method("dmd2", "dmd2", 5, 1),
    # f-distill from the teacher copy (init_mode=-1), as the others; the skewed start belongs to its own claim
    "js": Method(
        "js", "fdistill", 5, 1, dict(divergence="js", init_mode=-1, ratio_check_kde=256, ratio_check_sigmas=(1.0,))
    ),
    "rkl": Method(
        "rkl", "fdistill", 5, 1, dict(divergence="rkl", init_mode=-1, ratio_check_kde=256, ratio_check_sigmas=(1.0,))
    ),
    "disback": Method("disback", "disback", 5, 1),
    "tdm": Method("tdm", "tdm", 1, TDM_K, dict(student_k=TDM_K, eval_ks=(1, TDM_K))),
}


@dataclass(frozen=True)
class Sizes:
    """The budget of one tier: generator updates, batch, evaluation samples (not in any paper: our 2-core budget)."""

    updates: int
    batch: int
    eval_samples: int
    curve_points: int = 10


SIZES = {"toy2d": Sizes(100, 256, 4096), "digits": Sizes(20, 32, 1000)}
SMOKE_SIZES = {"toy2d": Sizes(2, 64, 128, 2), "digits": Sizes(2, 8, 32, 2)}


def bench_label(ds: Dataset) -> str:
    return f"diffusion bench / {ds.label}: dmd2, f-distill, disback, tdm (same teacher, data and budget)"


def _fmt(v) -> str:
    if isinstance(v, (tuple, list)):
        return ",".join(_fmt(x) for x in v) if v else "()"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def overrides(ds: Dataset, m: Method, seed: int, updates: int, budget: str, root: Path, smoke: bool) -> dict:
    """The --set values of one run (everything the benchmark changes relative to the paper's preset)."""
    sz = (SMOKE_SIZES if smoke else SIZES)[ds.task]
    every = max(1, updates // sz.curve_points)
    iters = updates * m.ttur
    preset = f"bench-{ds.name}-{budget}" + ("-smoke" if smoke else "")
    s = dict(
        preset=preset,
        method=m.name,
        seed=seed,
        steps=iters,
        global_batch=sz.batch,
        out_dir=str(root / "runs"),
        results_dir=str(root / "paper-records"),
        benchmark=bench_label(ds),
        num_threads=1,
        log_every=max(1, iters // 10),
        ckpt_every=0,
        eval_samples=min(sz.eval_samples, 500),  # the paper's own evaluation (kept for reference only)
    )
    if ds.task == "digits":
        s.update(cache_dir=os.environ.get("BENCH_CACHE_DIR", "runs/cache"))
    if m.paper != "tdm":
        s.update(ttur_ratio=m.ttur, warmup=0)
        if ds.task == "toy2d":
            s.update(ds.toy, teacher="analytic", teacher_eval_steps=2, fake_init_steps=2 if smoke else 300)
        else:
            s.update(teacher_eval_steps=2)
    else:
        s.update(teacher_steps_eval=(TDM_K,))
        if ds.task == "toy2d":
            s.update(ds.toy)
    if m.paper == "disback":  # curve every `every` generator steps; the path walked over the first half of stage 2
        nodes = 2 if smoke else 4
        s.update(
            curve_every=every,
            auc_window=every * max(1, updates // every),
            curve_samples=64 if smoke else (2048 if ds.task == "toy2d" else 500),
            num_nodes=nodes,
            stage1_interval=1 if smoke else (125 if ds.task == "toy2d" else 25),
            switch_every=max(1, iters // (2 * nodes)),
        )
    else:
        s.update(eval_every=every)
    s.update(m.fixed)
    if ds.task != "toy2d":
        s = {k: v for k, v in s.items() if k not in ("ratio_check_kde", "ratio_check_sigmas")}
    return s


def command(ds: Dataset, m: Method, sets: dict, smoke: bool) -> list[str]:
    preset = ds.task + ("-smoke" if smoke else "")
    return [sys.executable, "-m", f"papers.{m.paper}.train", "--preset", preset, "--set"] + [
        f"{k}={_fmt(v)}" for k, v in sets.items()
    ]


def record_path(raw: Path, m: Method, preset: str, seed: int) -> Path:
    return raw / m.paper / preset / f"{m.name}-seed{seed}.json"


# ------------------------------------------------------------------------------------------------ wall-clock sizing


def seconds_per_update(raw: Path, ds: Dataset, m: Method, smoke: bool) -> tuple[float, float]:
    """(training seconds per generator update, stage-1 seconds) measured in the `updates` runs (mean over seeds)."""
    preset = f"bench-{ds.name}-updates" + ("-smoke" if smoke else "")
    recs = [json.loads(p.read_text()) for p in sorted((raw / m.paper / preset).glob(f"{m.name}-seed*.json"))]
    if not recs:
        raise SystemExit(
            f"error: no `updates` records of {m.name} on {ds.name} under {raw / m.paper / preset}; "
            "run `python -m benchmarks.diffusion run --budget updates` first (the wall-clock pilot)"
        )
    spu = statistics.fmean(r["timing"]["train seconds per generator update"] for r in recs)
    st1 = statistics.fmean(r["timing"].get("stage-1 wall time (s)", 0.0) for r in recs)
    return spu, st1


def wallclock_updates(raw: Path, ds: Dataset, methods, smoke: bool) -> tuple[float, dict]:
    """(budget seconds, generator updates per method): the budget is DMD2's mean training wall time (stage 2 loop)."""
    spu = {m.name: seconds_per_update(raw, ds, m, smoke) for m in methods}
    ref_spu, _ = spu.get("dmd2") or seconds_per_update(raw, ds, METHODS["dmd2"], smoke)
    sz = (SMOKE_SIZES if smoke else SIZES)[ds.task]
    budget = ref_spu * sz.updates
    out = {}
    for m in methods:
        per, st1 = spu[m.name]
        n = max(1, int((budget - st1) / per))
        if m.paper == "disback":  # the curve needs a multiple of its spacing
            n = max(sz.curve_points, n - n % sz.curve_points)
        out[m.name] = n
    return budget, out


# ------------------------------------------------------------------------------------------------ one run


def run_one(ds, m, seed, budget, args, updates: int, wall_target: float | None) -> Path | None:
    raw = Path(args.raw)
    preset = f"bench-{ds.name}-{budget}" + ("-smoke" if args.smoke else "")
    out = record_path(raw, m, preset, seed)
    if out.exists():
        print(f"[bench] skip {out} (exists)")
        return out
    root = Path(args.root)
    sets = overrides(ds, m, seed, updates, budget, root, args.smoke)
    cmd = command(ds, m, sets, args.smoke)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    print(f"[bench] {ds.name} {m.name} seed {seed} {budget}: {updates} generator updates", flush=True)
    if args.dry_run:
        print(" ".join(cmd))
        return None
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    log = root / "logs" / f"{preset}-{m.name}-seed{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        raise SystemExit(f"error: {m.name} on {ds.name} seed {seed} failed (exit {proc.returncode}); see {log}")
    from benchmarks.diffusion_eval import write_run_record

    run_dir = root / "runs" / m.paper / preset / f"{m.name}-seed{seed}"
    return write_run_record(
        ds=ds,
        m=m,
        seed=seed,
        budget=budget,
        preset=preset,
        run_dir=run_dir,
        paper_records=root / "paper-records",
        raw=raw,
        sets=sets,
        cmd=cmd,
        run_wall_s=wall,
        updates=updates,
        wall_target=wall_target,
        label=bench_label(ds),
        eval_samples=(SMOKE_SIZES if args.smoke else SIZES)[ds.task].eval_samples,
    )


def run(args) -> None:
    import torch

    torch.set_num_threads(1)
    datasets = [DATASETS[d] for d in args.datasets]
    methods = [METHODS[m] for m in args.methods]
    from benchmarks.diffusion_eval import write_teacher_records

    for ds in datasets:
        sz = (SMOKE_SIZES if args.smoke else SIZES)[ds.task]
        if args.budget == "updates":
            plan = {m.name: sz.updates for m in methods}
            budget_s = None
        else:
            budget_s, plan = wallclock_updates(Path(args.raw), ds, methods, args.smoke)
            print(f"[bench] {ds.name}: wall-clock budget {budget_s:.1f} s; generator updates {plan}", flush=True)
        for seed in args.seeds:
            if not args.dry_run:
                write_teacher_records(ds, seed, Path(args.raw), bench_label(ds), sz.eval_samples, args.smoke, args.root)
            for m in methods:
                run_one(ds, m, seed, args.budget, args, plan[m.name], budget_s)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train and evaluate (resumes: runs with a record are skipped)")
    r.add_argument("--budget", choices=BUDGETS, default="updates")
    r.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    r.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    r.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    r.add_argument("--smoke", action="store_true", help="the presets' smoke twins and a tiny budget (tests)")
    r.add_argument("--root", default="runs/bench", help="run folders, logs and the papers' own records")
    r.add_argument("--raw", default=str(RESULTS_RAW), help="where the benchmark's records go (default results/raw)")
    r.add_argument("--dry-run", action="store_true", help="print the commands only")
    f = sub.add_parser("figures", help="learning curves and sample panels from the records")
    f.add_argument("--raw", default=str(RESULTS_RAW))
    f.add_argument("--out", default=str(FIGURES))
    f.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    if args.cmd == "run":
        if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
            raise SystemExit(f"error: --seeds {args.seeds} must be distinct non-negative integers")
        run(args)
    else:
        from benchmarks.diffusion_figures import make_figures

        for p in make_figures(Path(args.raw), Path(args.out), args.smoke):
            print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["DATASETS", "METHODS", "SIZES", "overrides", "command", "wallclock_updates", "main"]
