"""DisBack's convergence claim on the 2-D toy, over seeds: backtracking vs endpoint-only distillation.

    python -m papers.disback.claims                       # gates, then the runs, seeds 0 1 2 (records, figures)
    python -m papers.disback.claims --seeds 3 4           # more seeds (a run whose folder is finished resumes)
    python -m papers.disback.claims --summary --readme    # tables and figures from the finished runs only

Claim (paper Fig. 1, §5.2): with the same base distiller (DMD2's normalised DM loss, TTUR 5, no GAN), the same
generator, fake-score network and batch, DisBack converges faster early than distillation toward the fixed
teacher, and ends at a similar quality. Per seed (one teacher and one G^0 per seed):
- gates, recorded first: G^0 is far from the data (distance >= 10x the teacher's), the teacher is good (all modes,
  distance below the threshold), the teacher is poor where G^0 lives (the paper's premise: its x0 error on noised
  G^0 samples >= 3x that on noised data samples, against the exact mixture denoiser), and the curve's distance
  resolves the effect (sampling noise <= 5% of the range). A seed whose gates fail runs nothing.
- `disback`: the embedded default (stage 1: N = 8 nodes every 125 steps; stage 2: T = 3000 iterations, K = 200);
- `endpoint`: target = teacher from iteration 0, fake score a copy of the teacher (DMD2 style), run for
  T + stage-1 steps so that both comparisons come from one run;
- `endpoint, fake from s'_N` (ablation, with --ablation): the teacher as target, fake score from the last node.
Measured on each run's distance-to-data curve (papers/disback/curves.py): equal generator steps (first T/ttur
generator steps): AUC over the first `auc_window` generator steps, generator steps to the threshold, distance at
T; equal total compute (stage 1 counted as stage1_steps / ttur generator-step equivalents during which DisBack's
generator is G^0): AUC over the first auc_window + stage-1 equivalents, equivalents to the threshold, distance at
the end of the common budget. Variants share every setting but the ones named. Records go to
results/raw/disback/toy2d-claim*/; figures (one per comparison, all seeds) to papers/disback/figures/.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from papers.disback.curves import auc, plot_curves, shift_for_stage1, steps_to_threshold, value_at

HERE = Path(__file__).resolve().parent
FIGURES = HERE / "figures"
README = HERE / "README.md"
GATES_BENCH = "disback / toy2d claim: gates (precondition checks, per seed)"
STEPS_BENCH = "disback / toy2d claim: equal generator steps"
COMPUTE_BENCH = "disback / toy2d claim: equal total compute (stage 1 counted)"
RUNS_BENCH = "disback / toy2d claim runs: full evaluation at each run's end"
VARIANTS = {  # method -> overrides of the toy2d preset
    "disback": {},
    "endpoint": {"backtrack": "false", "fake_init": "teacher"},
    "endpoint, fake from s'_N": {"backtrack": "false", "fake_init": "last_node"},
}
GATE_LIMITS = {  # metric -> (min, max); pre-registered before any claim run
    "G0 distance / teacher distance": (10.0, None),
    "teacher mode coverage": (1.0, None),
    "teacher distance / threshold": (None, 1.0),
    "teacher x0 error at G0 / at data": (3.0, None),
    "distance noise / range": (None, 0.05),
}


PRESET = "toy2d"  # the claim's base preset (tests use its smoke twin)
CACHE_DIR = "runs/cache"


def _cfg(seed, **kw):
    import dataclasses

    from papers.disback.config import PRESETS

    return dataclasses.replace(PRESETS[PRESET], seed=seed, cache_dir=CACHE_DIR, **kw)


# ------------------------------------------------------------------ gates


def gate_metrics(cfg) -> dict:
    """The gates of one seed, from its teacher and G^0 alone (before any DisBack run)."""
    from papers.disback.model import build

    S = build(cfg, None)  # trains (or loads) this seed's teacher and makes its G^0
    with torch.no_grad():
        return _gates(cfg, S)


def _gates(cfg, S) -> dict:
    from common.diffusion.samplers import edm_sampler
    from common.metrics.toy import mode_stats
    from papers.disback.eval import CURVE_SEED, CurveProbe, sample_generator

    data = S.extra["data"]
    probe = CurveProbe(cfg, S, "cpu")
    d_g0 = probe(S.generator)
    g = torch.Generator().manual_seed(CURVE_SEED + 7)
    draws = []
    for _ in range(5):  # the curve's distance at the teacher's level, from 5 independent sample draws
        x, _ = edm_sampler(S.teacher, torch.randn(cfg.curve_samples, 2, generator=g), 18, cfg.sigma_min, cfg.sigma_max)
        draws.append(probe.distance(x.float()))
    d_t = float(torch.tensor(draws).mean())
    cover = mode_stats(x.float(), data)["mode_coverage"]
    # the premise: the learned teacher's x0 error (vs the exact mixture denoiser) on noised G^0 vs noised data
    errs = []
    for x0 in (sample_generator(S, S.generator, torch.randn(4096, 2, generator=g)), data.sample(4096, g)):
        idx = S.schedule.sample_index(4096, cfg.dm_t_lo, cfg.dm_t_hi, generator=g)
        _, s = S.schedule.alpha_sigma(idx)
        xt = x0 + s[:, None] * torch.randn(x0.shape, generator=g)
        errs.append(((S.teacher(xt, s) - data.denoise(xt, s).float()) ** 2).sum(1).mean().item())
    return {
        "G0 distance": d_g0,
        "teacher distance": d_t,
        "G0 distance / teacher distance": d_g0 / d_t,
        "teacher mode coverage": cover,
        "teacher distance / threshold": d_t / cfg.threshold,
        "teacher x0 error at G0": errs[0],
        "teacher x0 error at data": errs[1],
        "teacher x0 error at G0 / at data": errs[0] / errs[1],
        "distance noise / range": float(torch.tensor(draws).std()) / (d_g0 - d_t),
    }


def gates_pass(metrics) -> list[str]:
    failed = []
    for k, (lo, hi) in GATE_LIMITS.items():
        v = metrics[k]
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            failed.append(f"{k} = {v:.3g}")
    return failed


def write_gates(cfg, metrics, results_dir):
    from common.results import make_record, write_record

    rec = make_record(
        paper="disback",
        preset="toy2d-claim",
        method="gates",
        seed=cfg.seed,
        benchmark=GATES_BENCH,
        dataset=f"ring{cfg.num_modes} r={cfg.radius} std={cfg.mode_std}",
        metrics=metrics,
        protocol={"limits (min, max)": {k: list(v) for k, v in GATE_LIMITS.items()}, "teacher": "EDM Heun 18 steps"},
        config=cfg,
        wall_time_s=0.0,
    )
    write_record(rec, root=results_dir)


# ------------------------------------------------------------------ runs and derived records


def _run_name(method, seed):
    return f"toy2d-claim/{method.replace(' ', '_').replace(',', '').replace(chr(39), '')}-seed{seed}"


def run_variant(method, seed, out_dir, results_dir, steps_total):
    from papers.disback.train import main as train_main

    kv = {
        **VARIANTS[method],
        "seed": str(seed),
        "method": method,
        "preset": "toy2d-claim-runs",
        "benchmark": RUNS_BENCH,
        "run_name": _run_name(method, seed),
        "out_dir": out_dir,
        "results_dir": results_dir,
        "steps": str(steps_total),
        "cache_dir": CACHE_DIR,
    }
    train_main(["--preset", PRESET, "--set", *[f"{k}={v}" for k, v in kv.items()]])


def comparisons(cfg, curves: dict) -> dict:
    """{benchmark: {method: metrics}} from the curves of one seed ({method: (curve, stage1_steps)}).

    The budgets are T = steps / ttur generator steps (equal steps) and T + stage-1 equivalents (equal compute), cut
    to what every curve of the seed covers (a run stopped early is compared where all runs were measured); the
    budget used is recorded."""
    w, thr = cfg.auc_window, cfg.threshold
    off = cfg.num_nodes * cfg.stage1_interval / cfg.ttur_ratio
    T = min([cfg.gen_steps] + [c[-1][0] for c, _ in curves.values()])
    total = min([cfg.gen_steps + off] + [shift_for_stage1(c, s1 / cfg.ttur_ratio)[-1][0] for c, s1 in curves.values()])
    out = {STEPS_BENCH: {}, COMPUTE_BENCH: {}}
    for method, (curve, s1) in curves.items():
        within = [p for p in curve if p[0] <= T]
        s, reached = steps_to_threshold(within, thr)
        out[STEPS_BENCH][method] = {
            f"AUC distance, first {w} gen steps": auc(curve, w),
            f"gen steps to distance <= {thr:g}": min(s, T + 1),
            "threshold reached": float(reached),
            "distance at the end of the budget": value_at(curve, T),
            "budget (gen steps)": T,
        }
        shifted = shift_for_stage1(curve, s1 / cfg.ttur_ratio)
        within = [p for p in shifted if p[0] <= total]
        s, reached = steps_to_threshold(within, thr)
        cw = min(w + off, total)  # the equal-steps window plus stage 1, inside the common budget
        out[COMPUTE_BENCH][method] = {
            "AUC distance, early window (stage 1 counted)": auc(shifted, cw),
            "AUC window (gen-step equivalents)": cw,
            f"gen-step equivalents to distance <= {thr:g}": min(s, total + 1),
            "threshold reached": float(reached),
            "distance at the end of the budget": value_at(shifted, total),
            "budget (gen-step equivalents)": total,
            "stage-1 cost (gen-step equivalents)": s1 / cfg.ttur_ratio,
        }
    return out


def write_comparisons(cfg, comp, results_dir, run_configs: dict):
    """One record per (comparison, method) of this seed; its config is the run's own (from its run folder)."""
    from common.results import make_record, record_path, write_record

    for bench, rows in comp.items():
        for method, metrics in rows.items():
            rec = make_record(
                paper="disback",
                preset="toy2d-claim-steps" if bench == STEPS_BENCH else "toy2d-claim-compute",
                method=method,
                seed=cfg.seed,
                benchmark=bench,
                dataset=f"ring{cfg.num_modes} r={cfg.radius} std={cfg.mode_std}",
                metrics=metrics,
                protocol={
                    "curve": f"SWD (128 projections), {cfg.curve_samples} samples from fixed noise vs fixed data, "
                    f"every {cfg.curve_every} generator steps",
                    "AUC": "trapezoid / window",
                    "threshold": cfg.threshold,
                    "stage 1": "stage1_steps / ttur_ratio generator-step equivalents at G0's distance",
                },
                config=run_configs[method],
                wall_time_s=0.0,
            )
            record_path(rec, results_dir).unlink(missing_ok=True)  # derived data: rewritten from the curves
            write_record(rec, root=results_dir)


def _parse(v):
    return {"true": True, "false": False}.get(v, v)


def load_curves(out_dir, seed, methods) -> dict:
    """{method: (curve, stage-1 steps)} of the finished runs; a run stopped early gives the curve of its last
    checkpoint (the trainer checkpoints the curve with its state)."""
    from papers.disback.eval import load_curve

    got = {}
    for m in methods:
        d = Path(out_dir) / "disback" / _run_name(m, seed)
        if (d / "curve.json").is_file():
            c = load_curve(d)
            got[m] = ([tuple(p) for p in c["curve"]], c["stage1_steps"])
        elif (d / "checkpoints").is_dir() and (d / "config.json").is_file():
            ckpts = sorted((d / "checkpoints").glob("ckpt-*.pt"))
            if ckpts:
                state = torch.load(ckpts[-1], map_location="cpu", weights_only=False)["extra"]
                conf = json.loads((d / "config.json").read_text())
                s1 = conf["num_nodes"] * conf["stage1_interval"]
                s1 = s1 if (conf["backtrack"] or conf["fake_init"] == "last_node") else 0
                got[m] = ([tuple(p) for p in state["curve"]], s1)
    return got


def run_configs(out_dir, seed, methods) -> dict:
    return {
        m: json.loads((Path(out_dir) / "disback" / _run_name(m, seed) / "config.json").read_text()) for m in methods
    }


def figures(cfg, per_seed: dict, fig_dir: Path = FIGURES) -> list[Path]:
    """One figure per comparison with every seed's curves (colour = method)."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    T = cfg.gen_steps
    off = cfg.num_nodes * cfg.stage1_interval / cfg.ttur_ratio
    seeds = sorted(per_seed)
    methods = list(dict.fromkeys(m for c in per_seed.values() for m in c))
    steps = {m: [[p for p in per_seed[s][m][0] if p[0] <= T] for s in seeds if m in per_seed[s]] for m in methods}
    comp = {
        m: [
            [p for p in shift_for_stage1(*_c(per_seed[s][m], cfg)) if p[0] <= T + off]
            for s in seeds
            if m in per_seed[s]
        ]
        for m in methods
    }
    tag = f"seeds {','.join(map(str, seeds))}"
    a = fig_dir / "toy2d_equal_steps.png"
    plot_curves(a, steps, f"toy2d, equal generator steps ({tag})", cfg.threshold, cfg.auc_window)
    b = fig_dir / "toy2d_equal_compute.png"
    plot_curves(b, comp, f"toy2d, equal total compute, stage 1 counted ({tag})", cfg.threshold, cfg.auc_window + off)
    return [a, b]


def _c(entry, cfg):
    curve, s1 = entry
    return curve, s1 / cfg.ttur_ratio


# ------------------------------------------------------------------ summary


def summary(results_dir) -> str:
    import statistics

    from common.results import load_records
    from results.build import fmt

    benches = (GATES_BENCH, STEPS_BENCH, COMPUTE_BENCH)
    recs = [r for r in load_records(results_dir) if r["paper"] == "disback" and r["benchmark"] in benches]
    lines = []
    for bench in (GATES_BENCH, STEPS_BENCH, COMPUTE_BENCH):
        rows = {}
        for r in recs:
            if r["benchmark"] == bench:
                rows.setdefault(r["method"], []).append(r)
        if not rows:
            continue
        keys = list(dict.fromkeys(k for rs in rows.values() for r in rs for k in r["metrics"]))
        lines += [f"\n#### {bench}\n", "| method | n | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
        for m in VARIANTS if bench != GATES_BENCH else ["gates"]:
            if m not in rows:
                continue
            cells = []
            for k in keys:
                v = [r["metrics"][k] for r in rows[m] if k in r["metrics"]]
                sd = statistics.stdev(v) if len(v) > 1 else 0.0
                cells.append("-" if not v else f"{fmt(statistics.fmean(v))} ± {fmt(sd)}")
            lines.append(f"| {m} | {len(rows[m])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_readme(results_dir, readme=README) -> None:
    """Replace the generated block of papers/disback/README.md with the tables from the records."""
    import tomllib

    from common.results import load_records
    from results.build import CLAIMS, PAPER_NUMBERS, claims_section, paper_table

    text = readme.read_text()
    a, b = "<!-- disback-results:start -->", "<!-- disback-results:end -->"
    records = load_records(results_dir)
    claims = {"disback": tomllib.loads(CLAIMS.read_text()).get("disback", [])}
    numbers = tomllib.loads(PAPER_NUMBERS.read_text()).get("disback", [])
    block = (
        "\n".join(claims_section(claims, records))
        + "\n"
        + summary(results_dir)
        + "\n\n"
        + "\n".join(paper_table("disback", numbers, records))
    )
    head, rest = text.split(a, 1)
    _, tail = rest.split(b, 1)
    readme.write_text(f"{head}{a}\n{block.strip()}\n{b}{tail}")


def main(argv=None):
    global PRESET, CACHE_DIR
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--ablation", action="store_true", help="also run the endpoint with the fake score from s'_N")
    p.add_argument("--results-dir", default="results/raw")
    p.add_argument("--out-dir", default="runs")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--preset", default="toy2d", help="base preset (toy2d; toy2d-smoke checks the pipeline)")
    p.add_argument("--figures-dir", default=str(FIGURES))
    p.add_argument("--cache-dir", default=CACHE_DIR, help="where the per-seed teachers are cached")
    p.add_argument("--ignore-gates", action="store_true", help="run even when a gate fails (pipeline checks only)")
    p.add_argument("--summary", action="store_true", help="only derive records, figures and tables from finished runs")
    p.add_argument("--readme", action="store_true", help="regenerate the tables in papers/disback/README.md")
    args = p.parse_args(argv)
    PRESET, CACHE_DIR = args.preset, args.cache_dir
    torch.set_num_threads(args.threads)
    methods = [m for m in VARIANTS if args.ablation or m != "endpoint, fake from s'_N"]
    if args.summary:  # every seed with finished runs
        methods = list(VARIANTS)
        args.seeds = [s for s in range(100) if load_curves(args.out_dir, s, ["disback"])]
    for seed in args.seeds:
        cfg = _cfg(seed)
        if not args.summary:
            gm = gate_metrics(cfg)
            write_gates(cfg, gm, args.results_dir)
            failed = gates_pass(gm)
            if failed and not args.ignore_gates:
                print(f"[claims] seed {seed}: untestable, gate failed: {'; '.join(failed)}; no runs", flush=True)
                continue
            for m in methods:
                steps = cfg.steps + (cfg.num_nodes * cfg.stage1_interval if m != "disback" else 0)
                print(f"[claims] seed {seed}: {m} ({steps} iterations)", flush=True)
                run_variant(m, seed, args.out_dir, args.results_dir, steps)
        curves = load_curves(args.out_dir, seed, methods)
        if "disback" in curves and "endpoint" in curves:
            write_comparisons(cfg, comparisons(cfg, curves), args.results_dir, run_configs(args.out_dir, seed, curves))
    per_seed = {}
    for seed in range(0, 100):
        c = load_curves(args.out_dir, seed, methods)
        if "disback" in c and "endpoint" in c:
            per_seed[seed] = c
    if per_seed:
        print(json.dumps({"figures": [str(f) for f in figures(_cfg(0), per_seed, Path(args.figures_dir))]}))
    if args.readme:
        write_readme(args.results_dir)
    print(summary(args.results_dir))


if __name__ == "__main__":
    main()
