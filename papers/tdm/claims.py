"""The paper's claims on the 2-D toy over seeds, with their gates.

    python -m papers.tdm.claims                    # gates, then every variant for seeds 0 1 2 (records in results/raw/tdm/)
    python -m papers.tdm.claims --seeds 0 1 2 3 4
    python -m papers.tdm.claims --summary          # tables and verdicts from the records only

Claims (paper §5, Table 5 and appendix), each stated before running with fixed factors:
1. The 4-step student is close to the teacher at many steps and much better than the teacher at 4 steps:
   SWD(tdm, 4) <= 1.5 x SWD(teacher, 100) and SWD(tdm, 4) < 0.5 x SWD(teacher, 4).
2. Matching clean samples instead of the trajectory is worse: SWD(clean, 4) > SWD(tdm, 4) (paired 95% interval of
   the difference above 0).
3. TDM-unify stays good at 1 and 2 steps where the 4-step-only student degrades: SWD(unify, K) < SWD(tdm, K) for
   K = 1 and 2 (paired intervals above 0), while both are close at K = 4.
Ablations reported without a claim: no importance weights, MSE instead of pseudo-Huber, the demo's elementwise
pseudo-Huber. SWD is the mean over 4 test draws of 8192 samples (each draw: its own noise and reference; the same
draws for every variant of a seed); the other metrics are from the first draw. Every variant has the same iterations, batch, learning rates and seed (one regressed base network
per seed). Gates, recorded before any training: (a) room to gain -- SWD(teacher, 4) > 2 x SWD(teacher, 100) on
every seed; (b) resolution -- the spread of the 4-draw SWD(teacher, 100) (single-draw std over 8 independent draws
divided by 2) is below a tenth of the gap (a) measures. A failed gate stops the claims with the verdict "untestable". A run whose record exists is
skipped, so the command resumes.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

PRESET = "toy2d-claims"
BENCH = "tdm / toy2d claims: 4-step students vs analytic VP teacher (same sampler)"
BASE = {  # shared by every claim run: not in the paper, our 2-core budget
    "global_batch": "512",
    "steps": "1000",
    "log_every": "250",
    "ckpt_every": "0",
    "eval_samples": "8192",  # x 4 draws: one draw of 4096 or 16384 failed the resolution gate on 2 of 3 seeds
    "eval_draws": "4",
    "teacher_steps_eval": "4,100",
}
VARIANTS = {  # method -> overrides
    "tdm": {},
    "matching clean samples": {"match": "clean"},
    "tdm-unify": {"unify": "true"},
    "no importance weights": {"is_weights": "false"},
    "mse instead of pseudo-Huber": {"loss_form": "mse"},
    "elementwise pseudo-Huber (demo)": {"loss_form": "elementwise"},
}
GATE_SEEDS = 8  # independent single draws for the spread in the resolution gate


def _pairs(extra) -> dict:
    return dict(x.split("=", 1) for x in extra)


def _argv(method, seed, results_dir, out_dir, extra=()):
    kv = {
        **BASE,
        **VARIANTS[method],
        "seed": str(seed),
        "method": method,
        "preset": PRESET,
        "benchmark": BENCH,
        "results_dir": results_dir,
        "out_dir": out_dir,
        **_pairs(extra),
    }
    return ["--preset", "toy2d", "--set", *[f"{k}={v}" for k, v in kv.items()]]


def _record_path(results_dir, method, seed):
    from common.results import record_path

    return record_path({"paper": "tdm", "preset": PRESET, "method": method, "seed": seed}, results_dir)


GATES = ("gate (a): room to gain", "gate (b): resolution")


def _gate_records(results_dir, seed, cfg):
    """Whether both recorded gates of `seed` passed, or None when they are not recorded for this protocol."""
    from common.results import record_path

    keys = ("eval_samples", "eval_draws", "teacher_steps_eval", "total_steps", "num_modes", "radius", "mode_std")
    out = True
    for method in GATES:
        path = record_path({"paper": "tdm", "preset": PRESET, "method": method, "seed": seed}, results_dir)
        if not path.exists():
            return None
        rec = json.loads(path.read_text())
        if any(json.dumps(rec["config"].get(k)) != json.dumps(getattr(cfg, k), default=list) for k in keys):
            return None
        out &= bool(rec["metrics"]["passed"])
    return out


def gates(seeds, results_dir, extra=()) -> bool:
    """Gate records (a) room to gain and (b) resolution, from teacher samples only; returns whether both pass."""
    from common.config import override
    from common.metrics.toy import sliced_wasserstein
    from common.results import make_record, write_record
    from papers.tdm.config import PRESETS
    from papers.tdm.eval import _metric_fn, over_draws, sample
    from papers.tdm.model import build_toy

    kv = {**BASE, **_pairs(extra), "init_steps": "0"}
    cfg = override(PRESETS["toy2d"], [f"{k}={v}" for k, v in kv.items()])
    S = build_toy(cfg)
    data, n, r_draws = S.extra["data"], cfg.eval_samples, cfg.eval_draws
    ok = True
    for seed in seeds:
        prior = _gate_records(results_dir, seed, cfg)
        if prior is not None:  # recorded by an earlier invocation with the same protocol: reuse (resume)
            print(f"[claims] gates seed {seed}: recorded ({'pass' if prior else 'FAIL'})", flush=True)
            ok &= prior
            continue
        c = override(cfg, [f"seed={seed}"])
        fns = [_metric_fn(c, S, n, r)[0] for r in range(r_draws)]  # the claim runs' own test draws
        swd = {k: over_draws(c, S, S.teacher, k, "cpu", False, fns, "SWD")[0]["SWD"] for k in (4, 100)}
        rep = [  # single draws independent of the test draws, for the spread of the averaged metric
            sliced_wasserstein(
                sample(c, S, S.teacher, 100, n, "cpu", seed=5000 + 97 * r)[0],
                data.sample(n, torch.Generator().manual_seed(77_000 + r)),
                256,
                0,
            )
            for r in range(GATE_SEEDS)
        ]
        gap, spread = swd[4] - swd[100], statistics.stdev(rep) / r_draws**0.5
        a, b = swd[4] > 2 * swd[100], spread < 0.1 * gap
        ok &= a and b
        for method, metrics, passed, rule in [
            (
                "gate (a): room to gain",
                {"SWD teacher 4 steps": swd[4], "SWD teacher 100 steps": swd[100]},
                a,
                "SWD(teacher, 4) > 2 x SWD(teacher, 100)",
            ),
            (
                "gate (b): resolution",
                {"SWD spread over test draws": spread, "gap": gap},
                b,
                f"std of SWD(teacher, 100) averaged over {r_draws} test draws (single-draw std over {GATE_SEEDS} "
                f"independent draws / sqrt({r_draws})) < 0.1 x gap",
            ),
        ]:
            rec = make_record(
                paper="tdm",
                preset=PRESET,
                method=method,
                seed=seed,
                benchmark="tdm / toy2d claim gates",
                dataset=f"ring{cfg.num_modes} r={cfg.radius} std={cfg.mode_std}",
                metrics={**metrics, "passed": float(passed)},
                protocol={"rule": rule, "samples": n, "SWD projections": 256},
                config=cfg,
                wall_time_s=0.0,
            )
            write_record(rec, root=results_dir)
        print(
            f"[claims] gates seed {seed}: teacher SWD@4 {swd[4]:.4f} @100 {swd[100]:.4f}, spread {spread:.4f}: "
            f"(a) {'pass' if a else 'FAIL'} (b) {'pass' if b else 'FAIL'}",
            flush=True,
        )
    return ok


# ------------------------------------------------------------------ summary


def _paired(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean of a - b and its two-sided 95% t interval over paired seeds."""
    from scipy.stats import t

    d = [x - y for x, y in zip(a, b)]
    m = statistics.fmean(d)
    if len(d) < 2:
        return m, float("nan"), float("nan")
    h = t.ppf(0.975, len(d) - 1) * statistics.stdev(d) / len(d) ** 0.5
    return m, m - h, m + h


def _ms(v):
    return f"{statistics.fmean(v):.3f} ± {statistics.stdev(v) if len(v) > 1 else 0:.3f}"


def verdicts(recs) -> list[str]:
    by = {}
    for r in recs:
        by.setdefault(r["method"], {})[r["seed"]] = {**r["metrics"], **r.get("timing", {})}
    gate = [r for r in recs if r["method"].startswith("gate")]
    if gate and not all(r["metrics"]["passed"] for r in gate):
        return ["**Verdict: untestable** -- a gate failed (see the gate records)."]
    need = ("tdm", "teacher, 4 steps", "teacher, 100 steps")
    if not all(m in by for m in need):
        return ["No claim records yet."]
    seeds = sorted(set(by["tdm"]) & set(by["teacher, 4 steps"]) & set(by["teacher, 100 steps"]))

    def col(method, key, ss=seeds):
        return [by[method][s][key] for s in ss]

    n = len(seeds)
    tdm, t4, t100 = col("tdm", "SWD"), col("teacher, 4 steps", "SWD"), col("teacher, 100 steps", "SWD")
    close = all(x <= 1.5 * y for x, y in zip(tdm, t100))
    better = all(x < 0.5 * y for x, y in zip(tdm, t4))
    out = [f"Claims over n = {n} seeds (mean ± sample std; paired differences with 95% t intervals):", ""]
    d1 = _paired(t4, tdm)
    out.append(
        f"1. SWD: tdm (4 steps) {_ms(tdm)}, teacher 100 steps {_ms(t100)}, teacher 4 steps {_ms(t4)}; "
        f"teacher@4 - tdm = {d1[0]:.3f} [{d1[1]:.3f}, {d1[2]:.3f}]. Close to teacher@100 (<= 1.5x on every seed): "
        f"**{'yes' if close else 'no'}**; much better than teacher@4 (< 0.5x on every seed): "
        f"**{'yes' if better else 'no'}**."
    )
    if "matching clean samples" in by:
        ss = sorted(set(seeds) & set(by["matching clean samples"]))
        c, t = col("matching clean samples", "SWD", ss), col("tdm", "SWD", ss)
        d = _paired(c, t)
        out.append(
            f"2. SWD at 4 steps: matching clean samples {_ms(c)} vs tdm {_ms(t)} (n = {len(ss)}); clean - tdm = "
            f"{d[0]:.3f} [{d[1]:.3f}, {d[2]:.3f}]: clean matching is worse: **{'yes' if d[1] > 0 else 'not shown'}**."
        )
    if "tdm-unify" in by:
        ss = sorted(set(seeds) & set(by["tdm-unify"]))
        parts, shown = [], True
        for k in (1, 2):
            u, t = col("tdm-unify", f"SWD K={k}", ss), col("tdm", f"SWD K={k}", ss)
            d = _paired(t, u)
            shown &= d[1] > 0
            parts.append(f"K={k}: unify {_ms(u)} vs 4-step-only {_ms(t)}, diff {d[0]:.3f} [{d[1]:.3f}, {d[2]:.3f}]")
        u4, t4s = col("tdm-unify", "SWD", ss), col("tdm", "SWD", ss)
        d4 = _paired(u4, t4s)
        parts.append(f"K=4: unify {_ms(u4)} vs 4-step-only {_ms(t4s)}, diff {d4[0]:.3f} [{d4[1]:.3f}, {d4[2]:.3f}]")
        out.append(
            f"3. SWD (n = {len(ss)}): "
            + "; ".join(parts)
            + f". Unify better at 1 and 2 steps: **{'yes' if shown else 'not shown'}**."
        )
    thr = [m.get("throughput vs teacher@100") for m in by["tdm"].values() if "throughput vs teacher@100" in m]
    if thr:
        out.append(f"Sampling throughput of the 4-step student over the teacher at 100 steps: {_ms(thr)}x.")
    return out


def summary(results_dir) -> str:
    from common.results import load_records

    recs = [r for r in load_records(results_dir) if r["paper"] == "tdm" and r["preset"] == PRESET]
    rows = {}
    for r in recs:
        if not r["method"].startswith("gate"):
            rows.setdefault(r["method"], []).append({**r["metrics"], **r.get("timing", {})})
    keys = [
        "SWD",
        "SWD K=1",
        "SWD K=2",
        "MMD",
        "mode coverage",
        "off-mode fraction",
        "precision",
        "recall",
        "throughput vs teacher@100",
    ]
    order = ["teacher, 1 steps", "teacher, 2 steps", "teacher, 4 steps", "teacher, 100 steps", *VARIANTS]
    lines = [f"#### {BENCH}", "", "| method | n | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for m in [o for o in order if o in rows] + sorted(set(rows) - set(order)):
        ms = rows[m]
        cells = [_ms([x[k] for x in ms if k in x]) if any(k in x for x in ms) else "-" for k in keys]
        lines.append(f"| {m} | {len(ms)} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + verdicts(recs))


README = Path(__file__).with_name("README.md")


def write_readme(results_dir, readme=README) -> None:
    """Replace the generated block of papers/tdm/README.md with the tables from the records."""
    import tomllib

    from common.results import load_records
    from results.build import PAPER_NUMBERS, benchmark_table, paper_table

    recs = [r for r in load_records(results_dir) if r["paper"] == "tdm"]
    blocks = [summary(results_dir)]
    for bench in sorted({r["benchmark"] for r in recs} - {BENCH}):
        rows = {}
        for r in recs:
            if r["benchmark"] == bench:
                rows.setdefault((r["paper"], r["method"], r["preset"]), []).append(r)
        blocks.append("\n".join(benchmark_table(bench, rows)).replace("### ", "#### "))
    entries = tomllib.loads(PAPER_NUMBERS.read_text()).get("tdm", [])
    blocks.append("\n".join(paper_table("tdm", entries, load_records(results_dir))))
    text = readme.read_text()
    a, b = "<!-- tdm-results:start -->", "<!-- tdm-results:end -->"
    head, rest = text.split(a, 1)
    _, tail = rest.split(b, 1)
    readme.write_text(f"{head}{a}\n" + "\n\n".join(x.strip() for x in blocks) + f"\n{b}{tail}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--methods",
        nargs="+",
        default=list(VARIANTS),
        choices=list(VARIANTS),
        metavar="METHOD",
        help=f"variants to run (default all: {', '.join(VARIANTS)})",
    )
    p.add_argument("--results-dir", default="results/raw")
    p.add_argument("--out-dir", default="runs")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the claim runs are small)")
    p.add_argument("--summary", action="store_true", help="only print the tables from existing records")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="extra overrides of every run (tests)")
    p.add_argument("--readme", action="store_true", help="also regenerate the tables in papers/tdm/README.md")
    args = p.parse_args(argv)
    if not args.summary:
        torch.set_num_threads(args.threads)
        if not gates(args.seeds, args.results_dir, args.set):
            print("[claims] verdict: untestable -- a gate failed; no claim runs")
        else:
            from papers.tdm.train import main as train_main

            for seed in args.seeds:  # seeds outermost: every variant gets a complete seed before the next one
                for method in args.methods:
                    if _record_path(args.results_dir, method, seed).exists():
                        print(f"[claims] skip {method} seed {seed}: record exists")
                        continue
                    print(f"[claims] {method} seed {seed}", flush=True)
                    train_main(_argv(method, seed, args.results_dir, args.out_dir, args.set))
    text = summary(args.results_dir)
    if args.readme:
        write_readme(args.results_dir)
    print(text)
    out = Path(args.out_dir) / "tdm" / "claims_summary.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(json.dumps({"summary": str(out)}))


if __name__ == "__main__":
    main()
