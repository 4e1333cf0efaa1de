"""Margin-MSE claim experiments on the embedded benchmark: gates, equal LR grids on validation, seeds, intervals.

    python -m papers.margin_mse.claims                          # everything (gates, LR grids, 5 seeds, summary)
    python -m papers.margin_mse.claims --only dot-ranknet dot-margin_mse-T2 --seeds 0 1 2 3 4
    python -m papers.margin_mse.claims --summary-only           # intervals from the records already written

Order, top to bottom (one process: the benchmark is built and the teachers are loaded once):
1. **Gates** (recorded as ``gates`` before anything else): the oracle scores MRR@10 = 1 on dev; BM25 with random
   tie order; every teacher seed beats BM25 by >= 0.1; no dev (entity, attribute) pair among training or validation
   queries. A failed gate stops the runner with the verdict ``untestable: gate <name> failed``.
2. **Learning rate per variant**, chosen on the validation split (disjoint pairs) from the same grid ``LR_GRID`` for
   every loss, one student seed (recorded as ``lr-selection``).
3. **Capacity gate**: the labels-only DOT at its chosen LR stays >= 0.1 MRR@10 below the T1 teacher on validation
   (recorded in ``gates``); otherwise the claims are untestable.
4. **Claims** on dev, ``--seeds`` (one freshly initialised student per seed; the seed also fixes the data order),
   each student one epoch over the training queries, every variant with the same lists, batch and steps.
5. **Summary** (recorded as ``claim-*``): mean +- std over seeds, and a paired bootstrap 95% interval of each
   method's MRR@10 difference from labels-only (same student, same seeds, same queries; queries and seeds
   resampled), plus Margin-MSE vs pointwise MSE / KL and T2 vs T1.

Variants: DOT and ColBERT students with labels only (RankNet), pointwise MSE, KL over the list, and Margin-MSE (all
from the T2 ensemble), and DOT with Margin-MSE from T1. Records go to results/raw/margin_mse/embedded/; rebuild the
tables with ``python -m results.build``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from common.checkpoint import atomic_write_json
from common.results import make_record, write_record
from papers.margin_mse.benchmark import build_embedded_cached, ensemble, ensure_teachers, eval_rerank, gates, replace
from papers.margin_mse.config import PRESETS
from papers.margin_mse.train import PAPER, finalize, run_embedded

VARIANTS = {
    "dot-ranknet": dict(student="dot", loss="ranknet"),
    "dot-margin_mse-T2": dict(student="dot", loss="margin_mse", teacher="T2"),
    "dot-pointwise_mse-T2": dict(student="dot", loss="pointwise_mse", teacher="T2"),
    "dot-kl-T2": dict(student="dot", loss="kl", teacher="T2"),
    "dot-margin_mse-T1": dict(student="dot", loss="margin_mse", teacher="T1"),
    "colbert-ranknet": dict(student="colbert", loss="ranknet"),
    "colbert-margin_mse-T2": dict(student="colbert", loss="margin_mse", teacher="T2"),
    "colbert-pointwise_mse-T2": dict(student="colbert", loss="pointwise_mse", teacher="T2"),
    "colbert-kl-T2": dict(student="colbert", loss="kl", teacher="T2"),
}
LR_GRID = (3e-4, 1e-3, 3e-3, 1e-2)  # the same grid for every loss (not in the paper: our CPU scale)
MIN_GAP = 0.1
COMPARISONS = [  # (name, method, baseline)
    *[(f"{v}-vs-labels", v, f"{v.split('-')[0]}-ranknet") for v in VARIANTS if "ranknet" not in v],
    ("dot-margin_mse-vs-pointwise_mse", "dot-margin_mse-T2", "dot-pointwise_mse-T2"),
    ("dot-margin_mse-vs-kl", "dot-margin_mse-T2", "dot-kl-T2"),
    ("colbert-margin_mse-vs-pointwise_mse", "colbert-margin_mse-T2", "colbert-pointwise_mse-T2"),
    ("colbert-margin_mse-vs-kl", "colbert-margin_mse-T2", "colbert-kl-T2"),
    ("dot-T2-vs-T1", "dot-margin_mse-T2", "dot-margin_mse-T1"),
]


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean difference of a - b and its 95% percentile interval; a, b: (seeds, queries) per-query scores of two
    methods with matching seeds and queries. Seeds and queries are resampled independently (two-way bootstrap)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    s_n, q_n = d.shape
    stats = np.empty(n)
    for i in range(n):
        si = rng.integers(s_n, size=s_n)
        qi = rng.integers(q_n, size=q_n)
        stats[i] = d[si][:, qi].mean()
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi)


BENCHMARKS = {
    "gates": "gates (checked before the claims)",
    "lr-selection": "LR per variant (validation split)",
    "claim": "paired differences (dev MRR@10)",
}


def _write(cfg, method: str, metrics: dict, protocol: dict, extra: dict | None = None, wall: float = 0.0) -> None:
    kind = "claim" if method.startswith("claim-") else method
    rec = make_record(
        paper=PAPER, preset=cfg.preset, method=method, seed=0,
        benchmark=f"margin_mse / {cfg.preset}: {BENCHMARKS.get(kind, kind)}",
        dataset="paraphrased-facts", metrics=metrics, protocol=protocol, config=cfg, wall_time_s=wall, extra=extra,
    )  # fmt: skip
    write_record(rec, cfg.results_dir)


def _flat(metrics: dict) -> dict:
    """Numbers only (records keep lists in ``extra``)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and v is not None}


def run_gates(cfg, bench, teachers, log) -> dict:
    g = gates(cfg, bench, teachers, min_gap=MIN_GAP)
    log(f"gates: {json.dumps(g, default=str)}")
    return g


def _take(lock: Path) -> bool:
    """Claim a unit of work shared by parallel runners: True if this process created the lock (or took over the
    lock of a runner that is no longer alive)."""
    import os

    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            pid = int(lock.read_text() or "0")
            os.kill(pid, 0)
            return False  # held by a live runner
        except (ValueError, ProcessLookupError, PermissionError):
            lock.write_text(str(os.getpid()))
            return True
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def select_lrs(cfg, bench, teachers, names, log, grid=LR_GRID) -> dict:
    """Best validation MRR@10 per variant over the LR grid (student seed 0). Every (variant, LR) result and each
    variant's choice are cached in the shared folder, and parallel runners split the grid between them."""
    out = {}
    for name in names:
        f = _lr_cache(cfg) / f"{name}.json"
        if f.is_file() and json.loads(f.read_text()).get("grid") == list(grid):
            out[name] = json.loads(f.read_text())
            continue
        res_f = {lr: _lr_cache(cfg) / "runs" / f"{name}-lr{lr:g}.json" for lr in grid}
        while True:
            for lr in grid:
                if res_f[lr].is_file() or not _take(res_f[lr].with_suffix(".lock")):
                    continue
                c = replace(cfg, **VARIANTS[name], lr=lr, seed=0, eval_split="val", method=f"{name}-lr{lr:g}-val")
                c = replace(c, run_name=f"{cfg.preset}/lr-selection/{name}-lr{lr:g}")
                m = run_embedded(finalize(c, bench), bench, teachers, write=False)
                atomic_write_json({"val_MRR@10": m["rerank_MRR@10"]}, res_f[lr])
            if all(p.is_file() for p in res_f.values()):
                break
            time.sleep(15)  # grid points other runners are training (a dead runner's point is taken over)
        res = {lr: json.loads(res_f[lr].read_text())["val_MRR@10"] for lr in grid}
        best = max(res, key=res.get)
        log(f"lr selection {name}: {res} -> {best:g}")
        out[name] = {"lr": best, "val_MRR@10": {f"{k:g}": v for k, v in res.items()}, "grid": list(grid)}
        atomic_write_json(out[name], f)
    return out


def run_seeds(cfg, bench, teachers, lrs, order, seeds, log, write: bool = True) -> None:
    """Dev runs of every (variant, seed); parallel runners take different ones (the records are per run)."""
    for name in order:
        for seed in seeds:
            lock = _lr_cache(cfg).parent / "locks" / f"{name}-seed{seed}{'' if write else '-train'}.lock"
            if not _take(lock):
                continue
            c = finalize(
                replace(cfg, **VARIANTS[name], lr=lrs[name]["lr"], seed=seed, eval_split="dev", method=name), bench
            )
            if write and recorded(c):
                log(f"=== {name} seed {seed}: recorded with this config, skipped")
                continue
            log(f"=== {name} seed {seed}")
            run_embedded(c, bench, teachers, write=write)


def recorded(cfg) -> bool:
    """A run whose record exists with the same config (re-running the runner resumes)."""
    import dataclasses

    from common.results import config_differences, record_path

    conf = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    path = record_path({"paper": PAPER, "preset": cfg.preset, "method": cfg.method, "seed": cfg.seed, "config": conf},
                       cfg.results_dir)  # fmt: skip
    if not path.is_file():
        return False
    return not config_differences(json.loads(path.read_text()).get("config", {}), conf)


def _lr_cache(cfg) -> Path:
    return Path(cfg.out_dir) / PAPER / cfg.preset / "shared" / "lr-selection"


def wait_for_lr(cfg, name: str, grid, log, timeout_s: float = 5400.0) -> dict:
    """The LR choice of a variant that another runner selects (the capacity gate needs the labels-only DOT)."""
    f = _lr_cache(cfg) / f"{name}.json"
    t0 = time.time()
    while not (f.is_file() and json.loads(f.read_text()).get("grid") == list(grid)):
        if time.time() - t0 > timeout_s:
            raise SystemExit(f"error: no LR selection for {name} after {timeout_s:.0f}s (run it with --only {name})")
        log(f"waiting for the LR selection of {name} ...")
        time.sleep(30)
    return json.loads(f.read_text())


def capacity_gate(g: dict, teachers, bench, lab: dict) -> None:
    """The labels-only DOT (at its chosen LR, validation) must stay >= MIN_GAP below the T1 teacher."""
    t1_val = eval_rerank(ensemble(teachers, "T1")["val"], bench.val)["rerank_MRR@10"]
    g["teacher_T1_val_MRR@10"] = t1_val
    g["dot_labels_only_val_MRR@10"] = lab["val_MRR@10"][f"{lab['lr']:g}"]
    g["teacher_minus_dot_labels_only_val"] = t1_val - g["dot_labels_only_val_MRR@10"]
    g["pass"]["dot_labels_only_below_teacher_by_min_gap"] = g["teacher_minus_dot_labels_only_val"] >= MIN_GAP


def write_lr_record(cfg, grid) -> None:
    """One record of every LR choice made so far (all runners)."""
    lrs = {f.stem: json.loads(f.read_text()) for f in sorted(_lr_cache(cfg).glob("*.json"))}
    lrs = {k: v for k, v in lrs.items() if v.get("grid") == list(grid)}
    _write(cfg, "lr-selection", {f"{n}_lr": v["lr"] for n, v in lrs.items()},
           {"grid": list(grid), "split": "val", "student_seed": 0}, extra=lrs)  # fmt: skip


def summary(cfg, names: list[str], seeds: list[int], results_dir: Path, log) -> dict:
    """Mean +- std per variant and paired intervals, from the per-run records on disk."""
    recs: dict[str, dict[int, dict]] = {}
    for f in sorted((results_dir / PAPER / cfg.preset).glob("*.json")):
        r = json.loads(f.read_text())
        if r["method"] in names and r["seed"] in seeds and "per_query_rr" in (r.get("extra") or {}):
            recs.setdefault(r["method"], {})[r["seed"]] = r
    out = {}
    for name, m, b in COMPARISONS:
        if m not in recs or b not in recs:
            continue
        common = sorted(set(recs[m]) & set(recs[b]))
        if len(common) < 2:
            continue
        a = np.array([recs[m][s]["extra"]["per_query_rr"] for s in common])
        bb = np.array([recs[b][s]["extra"]["per_query_rr"] for s in common])
        diff, lo, hi = paired_bootstrap(a, bb)
        ma, mb = a.mean(1), bb.mean(1)
        verdict = "better" if lo > 0 else ("worse" if hi < 0 else "no significant difference")
        res = {
            "diff_MRR@10": diff, "ci95_lo": lo, "ci95_hi": hi, "n_seeds": len(common), "n_queries": a.shape[1],
            "method_MRR@10_mean": float(ma.mean()), "method_MRR@10_std": float(ma.std(ddof=1)),
            "baseline_MRR@10_mean": float(mb.mean()), "baseline_MRR@10_std": float(mb.std(ddof=1)),
        }  # fmt: skip
        log(f"{name}: {m} {ma.mean():.4f}+-{ma.std(ddof=1):.4f} vs {b} {mb.mean():.4f}+-{mb.std(ddof=1):.4f}: "
            f"diff {diff:+.4f} [{lo:+.4f}, {hi:+.4f}] -> {verdict}")  # fmt: skip
        protocol = {
            "comparison": f"{m} minus {b}, dev MRR@10 re-ranking BM25 top-{cfg.candidates}",
            "interval": "paired two-way bootstrap (seeds and queries resampled), 2000 resamples, 95% percentile",
            "seeds": common,
            "verdict": verdict,
        }
        _write(cfg, f"claim-{name}", res, protocol)
        out[name] = {**res, "verdict": verdict}
    return out


START, END = "<!-- claims:start -->", "<!-- claims:end -->"


def _f(x, nd: int = 3) -> str:
    return "—" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def render_block(cfg, results_dir: Path) -> str:
    """Markdown of the gates, the per-variant results and the paired intervals, from the records."""
    recs = [json.loads(f.read_text()) for f in sorted((results_dir / PAPER / cfg.preset).glob("*.json"))]
    by = {}
    for r in recs:
        by.setdefault(r["method"], []).append(r)
    lines = [
        f"Generated by `python -m papers.margin_mse.claims --readme` from `results/raw/{PAPER}/{cfg.preset}/`.",
        "",
    ]
    g = by.get("gates", [None])[0]
    if g is None:
        return "\n".join(lines + ["No gate record yet: the claims have not been run."])
    m, x = g["metrics"], g.get("extra") or {}
    lines += [f"**Gates** — verdict: **{g['protocol']['verdict']}**", "", "| gate | value | required | pass |",
              "|---|---|---|---|"]  # fmt: skip
    passes = x.get("pass", {})
    tm = x.get("teacher_MRR@10") or []
    rows = [
        ("oracle MRR@10 (dev)", _f(m.get("oracle_MRR@10")), "= 1", passes.get("oracle_is_1")),
        ("BM25 MRR@10, random tie order (mean ± std over orders)",
         f"{_f(m.get('bm25_MRR@10'))} ± {_f(m.get('bm25_MRR@10_std_over_tie_orders'))}", "reference", None),
        ("no-binding heuristic MRR@10 (entity + attribute, any fact)", _f(m.get("no_binding_heuristic_MRR@10")),
         "reference", None),
        ("teacher MRR@10 per teacher seed", ", ".join(_f(v) for v in tm), "", None),
        ("min teacher − BM25", _f(m.get("min_teacher_minus_bm25")), ">= 0.1", passes.get("teacher_beats_bm25_by_min_gap")),
        ("T2 (mean of the teachers) MRR@10", _f(m.get("teacher_T2_MRR@10")), "reference", None),
        ("validation MRR@10: teacher T1 / labels-only DOT (chosen LR)",
         f"{_f(m.get('teacher_T1_val_MRR@10'))} / {_f(m.get('dot_labels_only_val_MRR@10'))}", "", None),
        ("teacher T1 − labels-only DOT (validation)", _f(m.get("teacher_minus_dot_labels_only_val")),
         ">= 0.1", passes.get("dot_labels_only_below_teacher_by_min_gap")),
        ("dev pairs among training / validation queries",
         f"{int(m.get('dev_pairs_in_train', -1))} / {int(m.get('dev_pairs_in_val', -1))}", "0 / 0",
         passes.get("no_dev_pair_in_training")),
        ("dev / val / train queries", f"{int(m['dev_queries'])} / {int(m['val_queries'])} / {int(m['train_queries'])}",
         ">= 1000 dev", None),
    ]  # fmt: skip
    for name, val, req, ok in rows:
        lines.append(f"| {name} | {val} | {req} | {'—' if ok is None else ('yes' if ok else '**no**')} |")
    lr = by.get("lr-selection", [None])[0]
    if lr is not None:
        lines += ["", f"**LR selection** (validation MRR@10, student seed 0, grid {lr['protocol']['grid']})", ""]
        for name, v in (lr.get("extra") or {}).items():
            vals = ", ".join(f"{k}: {val:.3f}" for k, val in v["val_MRR@10"].items())
            lines.append(f"- {name}: {vals} -> {v['lr']:g}")
    runs = {k: v for k, v in by.items() if k in VARIANTS}
    if runs:
        lines += ["", "**Students on dev** (mean ± sample std over seeds; re-ranking of BM25 top-"
                  f"{cfg.candidates}; dense = all passages)", "",
                  "| variant | LR (val) | n | MRR@10 | nDCG@10 | dense MRR@10 | score mean | score std |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for name in VARIANTS:
            if name not in runs:
                continue
            rs = runs[name]

            def ms(key, rs=rs):
                v = [r["metrics"][key] for r in rs if key in r["metrics"]]
                if not v:
                    return "—"
                return f"{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f}" if len(v) > 1 else f"{v[0]:.3f}"

            lrv = (lr or {}).get("metrics", {}).get(f"{name}_lr")
            lines.append(f"| {name} | {lrv:g} | {len(rs)} | {ms('rerank_MRR@10')} | {ms('rerank_nDCG@10')} | "
                         f"{ms('dense_MRR@10')} | {ms('score_mean')} | {ms('score_std')} |")  # fmt: skip
    claims = [r for k, v in by.items() if k.startswith("claim-") for r in v]
    if claims:
        lines += ["", "**Comparisons** (difference of dev MRR@10, paired two-way bootstrap 95% interval over seeds and "
                  "queries)", "", "| comparison | difference | 95% interval | seeds x queries | verdict |",
                  "|---|---|---|---|---|"]  # fmt: skip
        order = {n: i for i, (n, _, _) in enumerate(COMPARISONS)}
        for r in sorted(claims, key=lambda r: order.get(r["method"][6:], 99)):
            c = r["metrics"]
            lines.append(f"| {r['method'][6:]} | {c['diff_MRR@10']:+.4f} | [{c['ci95_lo']:+.4f}, {c['ci95_hi']:+.4f}] |"
                         f" {int(c['n_seeds'])} x {int(c['n_queries'])} | {r['protocol']['verdict']} |")  # fmt: skip
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{block}\n{END}{tail}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="embedded")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--only", nargs="*", default=None, help=f"variants to run (default: all of {list(VARIANTS)})")
    ap.add_argument("--set", nargs="*", default=[], help="extra key=value overrides for every run")
    ap.add_argument("--summary-only", action="store_true", help="only recompute the intervals from the records")
    ap.add_argument("--readme", action="store_true", help="rewrite the results block of papers/margin_mse/README.md")
    ap.add_argument(
        "--teacher-index",
        type=int,
        nargs="*",
        default=None,
        help="only train and cache these teachers (e.g. one per process), then stop",
    )
    ap.add_argument(
        "--baselines",
        action="store_true",
        help="only train the labels-only students (LR grid and seeds; no teacher, no records)",
    )
    ap.add_argument("--lr-grid", type=float, nargs="+", default=list(LR_GRID), help="LR grid, the same for every loss")
    args = ap.parse_args(argv)
    names = args.only or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    from common.config import parse_cli
    from papers.margin_mse.config import Config

    cfg = parse_cli(Config, PRESETS, argv=["--preset", args.preset, *(["--set", *args.set] if args.set else [])])
    log = lambda m: print(m, flush=True)  # noqa: E731
    if args.summary_only:
        write_lr_record(cfg, tuple(args.lr_grid))
        summary(cfg, list(VARIANTS), args.seeds, Path(cfg.results_dir), log)
    if args.readme:
        readme = Path(__file__).with_name("README.md")
        readme.write_text(replace_block(readme.read_text(), render_block(cfg, Path(cfg.results_dir))))
    if args.summary_only or args.readme:
        return
    t0 = time.time()
    bench = build_embedded_cached(cfg)
    cache = Path(cfg.out_dir) / PAPER / cfg.preset / "shared" / "teachers"
    if args.teacher_index is not None:
        ensure_teachers(cfg, bench, cfg.n_teachers, cache, log=log, only=args.teacher_index)
        return
    if args.baselines:  # labels-only students need no teacher: train them while the teachers train (no records)
        base = [n for n in names if VARIANTS[n]["loss"] == "ranknet"]
        lrs = select_lrs(cfg, bench, [], base, log, grid=tuple(args.lr_grid))
        run_seeds(cfg, bench, [], lrs, base, args.seeds, log, write=False)
        return
    teachers = ensure_teachers(cfg, bench, cfg.n_teachers, cache, log=log)
    g = run_gates(cfg, bench, teachers, log)
    protocol = {
        "split": "dev (gates 1-3); capacity gate on validation",
        "bm25": f"random tie order, mean over {cfg.bm25_tie_seeds} orders",
        "min_gap": MIN_GAP,
        "teachers": f"{cfg.n_teachers} CATs (seeds 1000..), {cfg.teacher_base} {cfg.teacher_layers} layers",
    }
    extra = {k: v for k, v in g.items() if not isinstance(v, int | float) or k == "pass"}
    failed = [k for k, ok in g["pass"].items() if not ok]
    if failed:
        lab_f = _lr_cache(cfg) / "dot-ranknet.json"
        if lab_f.is_file() and json.loads(lab_f.read_text()).get("grid") == list(args.lr_grid):
            capacity_gate(g, teachers, bench, json.loads(lab_f.read_text()))  # measured already: record it too
        failed = [k for k, ok in g["pass"].items() if not ok]
        protocol["verdict"] = "untestable: gate " + " and ".join(failed) + " failed"
        _write(cfg, "gates", _flat(g), protocol, extra=extra, wall=time.time() - t0)
        log(protocol["verdict"] + " -- the claims are not run")
        return
    grid = tuple(args.lr_grid)
    names = sorted(names, key=lambda n: n != "dot-ranknet")  # the capacity gate needs the labels-only DOT first
    lrs = {}
    for name in names:
        lrs.update(select_lrs(cfg, bench, teachers, [name], log, grid=grid))
        if name == "dot-ranknet" or "dot-ranknet" in lrs:
            break
    capacity_gate(g, teachers, bench, lrs.get("dot-ranknet") or wait_for_lr(cfg, "dot-ranknet", grid, log))
    failed = [k for k, ok in g["pass"].items() if not ok]
    protocol["verdict"] = ("untestable: gate " + " and ".join(failed) + " failed") if failed else "all gates pass"
    extra = {k: v for k, v in g.items() if not isinstance(v, int | float) or k == "pass"}
    _write(cfg, "gates", _flat(g), protocol, extra=extra, wall=time.time() - t0)
    log(f"gates: {protocol['verdict']}")
    if failed:
        log("the claims are not run")
        return
    lrs.update(select_lrs(cfg, bench, teachers, names, log, grid=grid))
    write_lr_record(cfg, grid)
    # claims: DOT (labels vs Margin-MSE first over all seeds), then the other DOT variants, then ColBERT
    order = [n for n in ("dot-ranknet", "dot-margin_mse-T2") if n in names]
    order += [n for n in names if n.startswith("dot") and n not in order]
    order += [n for n in names if n.startswith("colbert")]
    run_seeds(cfg, bench, teachers, lrs, order, args.seeds, log)
    summary(cfg, names, args.seeds, Path(cfg.results_dir), log)


if __name__ == "__main__":
    from common.cli import entry

    entry(main)
