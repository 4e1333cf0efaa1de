"""CPRD claim experiments on the embedded shapes benchmark: gates first, then every method over seeds, then paired
intervals.

    python -m papers.cprd.claims                                   # gates, main comparison, seeds 0-4
    python -m papers.cprd.claims --seeds 0 1 2 --methods no_kd cprd
    python -m papers.cprd.claims --summary-only                    # recompute the paired intervals from records

Gates (written as records before any claim run; a failed gate stops the claims with "untestable: gate X failed"):
* ``gate-disjoint``: no test scene (hence no test image or caption) is in the training stream or among the training
  distractors; checked on the built data, and reserved by construction (a hash of the scene key, shapes.py);
* ``gate-teacher``: the teacher (re-ranking the labels-only student's top-k) beats that labels-only dual encoder by
  >= 10 R@1 points in both directions (seed 0);
* ``gate-resolution``: the 95% bootstrap half-width of the labels-only student's R@1 over test queries is < 3 points
  in both directions, so a 3-point difference is outside the gallery's sampling noise.

Methods run seed-major in priority order (the main comparison first), each with the same batches, steps, LR and
seeds. The summary record ``paired-<a>-vs-<b>`` holds, per metric, the mean paired difference over seeds and its 95%
t-interval (one base model per seed; the difference is taken within a seed).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from common.config import override
from common.results import load_records, make_record, write_record
from papers.cprd.config import PRESETS
from papers.cprd.train import PAPER, prepare_shapes, run_shapes

GATE_SEED = 0  # the gates are measured on the labels-only student of this seed
MAIN = ("no_kd", "kl", "kl_hard", "listmle_all", "cprd")
EXTRA = ("ranknet_all", "listnet_all", "ranknet_hard", "cprd_easy")
METRICS = ("TR@1", "TR@5", "TR@10", "IR@1", "IR@5", "IR@10", "RSUM", "comp_acc", "topk_kendall")
PAIRS = [("cprd", b) for b in ("no_kd", "kl", "kl_hard", "listmle_all", "ranknet_all", "listnet_all", "ranknet_hard",
                                "cprd_easy")] + [("kl", "no_kd"), ("listmle_all", "no_kd"), ("kl_hard", "kl")]  # fmt: skip
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def _bench(preset: str) -> str:
    return f"cprd / {preset}: gates"


def _gate_record(cfg, name: str, metrics: dict, passed: bool, protocol: dict) -> None:
    rec = make_record(paper=PAPER, preset=cfg.preset, method=name, seed=0, benchmark=_bench(cfg.preset),
                      dataset="shapes", metrics={**metrics, "passed": float(passed)}, protocol=protocol,
                      config=cfg, wall_time_s=0.0)  # fmt: skip
    write_record(rec, cfg.results_dir)


def gate_disjoint(cfg, log=print) -> bool:
    from papers.cprd import shapes as S

    prep = prepare_shapes(cfg, log=log)
    d = prep.data
    test = {S.scene_key(d.scenes[i]) for i in d.test_scene}
    train = {S.scene_key(d.scenes[i]) for i in d.train_scene}
    distract = set()
    for i in set(d.train_scene.tolist()):
        for _, t in S.perturbations(d.scenes[i]):
            if d.split[d.scenes_index[t]] == "train":
                distract.add(S.scene_key(t))
    cap_overlap = len(set(d.test_captions) & set(d.train_captions))
    m = {"test_scenes": len(test), "train_scenes_used": len(train), "overlap_train": len(test & train),
         "overlap_distractors": len(test & distract), "caption_overlap": cap_overlap}  # fmt: skip
    ok = m["overlap_train"] == 0 and m["overlap_distractors"] == 0 and cap_overlap == 0
    _gate_record(
        cfg,
        "gate-disjoint",
        m,
        ok,
        {
            "rule": "test scenes reserved by a hash of the scene key; counted on "
            "the built training stream and teacher distractors"
        },
    )
    log(f"gate-disjoint: {m} -> {'pass' if ok else 'FAIL'}")
    return ok


def gates_from_labels_only(cfg, metrics: dict, extra: dict, log=print) -> tuple[bool, bool]:
    t = extra["teacher"]
    m = {"teacher_TR@1": t["TR@1"], "student_TR@1": metrics["TR@1"], "teacher_IR@1": t["IR@1"],
         "student_IR@1": metrics["IR@1"], "margin_TR@1": t["TR@1"] - metrics["TR@1"],
         "margin_IR@1": t["IR@1"] - metrics["IR@1"]}  # fmt: skip
    ok_t = m["margin_TR@1"] >= 10 and m["margin_IR@1"] >= 10
    _gate_record(
        cfg,
        "gate-teacher",
        m,
        ok_t,
        {
            "rule": f"teacher re-ranks the labels-only student's top-"
            f"{cfg.rerank_k}; margin >= 10 R@1 points both directions"
        },
    )
    r = {"TR@1_halfwidth": metrics["TR@1_ci95_halfwidth"], "IR@1_halfwidth": metrics["IR@1_ci95_halfwidth"]}
    ok_r = max(r.values()) < 3.0
    _gate_record(
        cfg,
        "gate-resolution",
        r,
        ok_r,
        {
            "rule": "95% percentile-bootstrap half-width over test queries "
            "(1000 resamples) of the labels-only student's R@1 < 3"
        },
    )
    log(f"gate-teacher: {m} -> {'pass' if ok_t else 'FAIL'}; gate-resolution: {r} -> {'pass' if ok_r else 'FAIL'}")
    return ok_t, ok_r


def paired(a: list[float], b: list[float]) -> tuple[float, float, float, float]:
    d = np.asarray(a) - np.asarray(b)
    n = len(d)
    mean = float(d.mean())
    if n < 2:
        return mean, float("nan"), float("nan"), float("nan")
    sd = float(d.std(ddof=1))
    hw = T975.get(n - 1, 1.96) * sd / math.sqrt(n)
    return mean, sd, mean - hw, mean + hw


def summary(preset: str, results_dir: str, log=print) -> dict:
    recs = [r for r in load_records(results_dir) if r["paper"] == PAPER and r["preset"] == preset
            and r["benchmark"].endswith("teacher")]  # fmt: skip
    by = {}
    for r in recs:
        by.setdefault(r["method"], {})[r["seed"]] = r["metrics"]
    cfg = PRESETS[preset]
    out = {}
    for a, b in PAIRS:
        if a not in by or b not in by:
            continue
        seeds = sorted(set(by[a]) & set(by[b]))
        if len(seeds) < 2:
            continue
        m = {}
        for k in METRICS:
            if all(k in by[a][s] and k in by[b][s] for s in seeds):
                mean, sd, lo, hi = paired([by[a][s][k] for s in seeds], [by[b][s][k] for s in seeds])
                m.update({f"{k}_diff": mean, f"{k}_diff_sd": sd, f"{k}_ci_lo": lo, f"{k}_ci_hi": hi})
        rec = make_record(paper=PAPER, preset=preset, method=f"paired-{a}-vs-{b}", seed=0,
                          benchmark=f"cprd / {preset}: paired differences over seeds (95% t-interval)",
                          dataset="shapes", metrics=m, protocol={"seeds": seeds, "difference": f"{a} - {b}, within seed"},
                          config=cfg, wall_time_s=0.0)  # fmt: skip
        write_record(rec, results_dir)
        out[f"{a}-vs-{b}"] = m
        log(f"{a} - {b} over seeds {seeds}: " + ", ".join(
            f"{k} {m[k + '_diff']:+.2f} [{m[k + '_ci_lo']:+.2f}, {m[k + '_ci_hi']:+.2f}]" for k in METRICS[:6]
            if k + "_diff" in m))  # fmt: skip
    return out


def report(preset: str, results_dir: str) -> str:
    """Markdown tables for the README: R@K per method (mean +- std over seeds) and the paired differences."""
    recs = [r for r in load_records(results_dir) if r["paper"] == PAPER and r["preset"] == preset]
    runs = [r for r in recs if r["benchmark"].endswith("teacher")]
    by: dict = {}
    for r in runs:
        by.setdefault(r["method"], []).append(r)
    cols = ("TR@1", "TR@5", "TR@10", "IR@1", "IR@5", "IR@10", "comp_acc", "topk_kendall")
    lines = ["| method | n | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    order = [m for m in (*MAIN, *EXTRA) if m in by]
    for m in order:
        cells = []
        for c in cols:
            v = [r["metrics"][c] for r in by[m] if c in r["metrics"]]
            cells.append(f"{np.mean(v):.1f} ± {np.std(v, ddof=1) if len(v) > 1 else 0:.1f}" if c != "topk_kendall"
                         else f"{np.mean(v):.3f} ± {np.std(v, ddof=1) if len(v) > 1 else 0:.3f}")  # fmt: skip
        lines.append(f"| {m} | {len(by[m])} | " + " | ".join(cells) + " |")
    teach = [r["extra"]["teacher"] for r in runs if "teacher" in r.get("extra", {})]
    if teach:
        t = teach[0]
        t = {**t, "comp_acc": next(r["extra"]["teacher_comp"]["comp_acc"] for r in runs if "teacher" in r["extra"])}
        lines.append("| teacher (re-ranks the no_kd student's top-16) | 1 | " + " | ".join(
            f"{t[c]:.1f}" if c in t else "—" for c in cols) + " |")  # fmt: skip
    lines += ["", "| difference (within seed) | n | " + " | ".join(cols[:6]) + " |", "|---|---|" + "---|" * 6]
    for r in sorted((r for r in recs if r["method"].startswith("paired-")), key=lambda r: r["method"]):
        m = r["metrics"]
        cells = [f"{m[c + '_diff']:+.1f} [{m[c + '_ci_lo']:+.1f}, {m[c + '_ci_hi']:+.1f}]" if c + "_diff" in m else "—"
                 for c in cols[:6]]  # fmt: skip
        lines.append(f"| {r['method'][7:]} | {len(r['protocol']['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="shapes")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--methods", nargs="+", default=list(MAIN), help=f"main: {MAIN}; more: {EXTRA}")
    ap.add_argument("--set", nargs="*", default=[], help="extra key=value overrides for every run")
    ap.add_argument("--summary-only", action="store_true", help="recompute the paired records, print the tables")
    ap.add_argument("--wait-for-gates", action="store_true",
                    help="a second worker: wait until the first has recorded the gates; stop unless all passed")  # fmt: skip
    args = ap.parse_args(argv)
    base = override(PRESETS[args.preset], args.set)
    if args.summary_only:
        summary(args.preset, base.results_dir)
        print(report(args.preset, base.results_dir))
        return
    t0 = time.time()
    if args.wait_for_gates:
        if not wait_for_gates(base):
            print("verdict: untestable: a gate failed (see the gate records)")
            return
    elif GATE_SEED in args.seeds and not gate_disjoint(base):  # other seeds read the recorded gates below
        print("verdict: untestable: gate-disjoint failed")
        return
    # the labels-only student runs first: its seed-0 run provides the gates (a waiting worker runs what it is given)
    methods = list(args.methods) if args.wait_for_gates else ["no_kd"] + [m for m in args.methods if m != "no_kd"]
    seeds = sorted(args.seeds, key=lambda s: s != GATE_SEED)  # the gate seed first
    if not args.wait_for_gates and GATE_SEED not in seeds:  # other seeds only: the recorded gates must have passed
        passed = gates_recorded(base)
        if passed is None:
            print(f"error: the gates are not recorded yet; run seed {GATE_SEED} first", file=sys.stderr)
            raise SystemExit(2)
        if not passed:
            print("verdict: untestable: a gate failed (see the gate records)")
            return
    for seed in seeds:
        for method in methods:
            cfg = override(base, [f"seed={seed}", f"method={method}"])
            gate_run = seed == GATE_SEED and method == "no_kd" and not args.wait_for_gates
            if gate_run:
                cfg = override(cfg, ["eval_teacher=true"])
            rec = Path(cfg.results_dir) / PAPER / cfg.preset / f"{method}-seed{seed}.json"
            if rec.is_file() and not gate_run:  # already recorded (e.g. by another worker)
                print(f"=== {method} seed {seed}: recorded, skipped", flush=True)
                continue
            print(f"=== {method} seed {seed} ({time.time() - t0:.0f}s)", flush=True)
            metrics = run_shapes(cfg)
            if gate_run:
                ev = json.loads((_run_dir(cfg) / "eval.json").read_text())
                ok_t, ok_r = gates_from_labels_only(cfg, metrics, ev["extra"])
                if not (ok_t and ok_r):
                    print(f"verdict: untestable: gate {'teacher' if not ok_t else 'resolution'} failed")
                    return
        summary(args.preset, base.results_dir)


def gates_recorded(cfg) -> bool | None:
    """Whether the gate records (of the gate seed) all passed; False as soon as one failed; None while any is missing."""
    from pathlib import Path

    root = Path(cfg.results_dir) / PAPER / cfg.preset
    recs = [root / f"{n}-seed{GATE_SEED}.json" for n in ("gate-disjoint", "gate-teacher", "gate-resolution")]
    passed = [json.loads(p.read_text())["metrics"]["passed"] == 1.0 for p in recs if p.is_file()]
    if not all(passed):
        return False
    return True if len(passed) == len(recs) else None


def wait_for_gates(cfg, poll_s: float = 30.0) -> bool:
    while (passed := gates_recorded(cfg)) is None:
        time.sleep(poll_s)
    return passed


def _run_dir(cfg):
    from pathlib import Path

    return Path(cfg.out_dir) / PAPER / cfg.resolved_run_name


if __name__ == "__main__":
    main()
