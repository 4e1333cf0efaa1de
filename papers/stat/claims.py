"""STAT claim experiments on the embedded benchmark: every method x seed at an equal training budget.

    python -m papers.stat.claims                                   # arith, seeds 0 1 2, all methods
    python -m papers.stat.claims --seeds 0 1 2 --methods sft stat_sel stat_syn
    python -m papers.stat.claims --summary-only                    # only re-read the records

Claim tested (paper Sec. 4): a student that plain SFT has saturated barely moves under continued
SFT on its own distribution (``sft``), while STAT-Sel and STAT-Syn, at the same number of QA pairs, epochs and
learning rate, raise accuracy, most on the skills in the Missing-Skill-Profile. Baselines: ``hard`` (longest
chains; MATH-Hard) and ``embed_sel`` (TF-IDF nearest neighbours; Embed-Sel).

Each (method, seed) runs ``python -m papers.stat.train`` in a subprocess, skipped when its record exists; the base
student of a seed is trained once and shared. The summary (mean ± std over seeds, per-skill gains over the base)
is printed and written to ``runs/stat/<preset>/claims_summary.md``; the records feed results/README.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from papers.stat.arith import SKILLS
from papers.stat.config import PRESETS

METHODS = ("sft", "stat_sel", "stat_syn", "embed_sel", "hard")


def run_all(preset: str, seeds, methods, results_dir: str, extra: list[str]) -> None:
    for method in methods:  # method-major: the key comparison completes first
        for seed in seeds:
            path = Path(results_dir) / "stat" / preset / f"{method}-seed{seed}.json"
            if path.exists():
                print(f"[claims] {path} exists, skipped", flush=True)
                continue
            cmd = [
                sys.executable,
                "-m",
                "papers.stat.train",
                "--preset",
                preset,
                "--set",
                f"seed={seed}",
                f"method={method}",
                f"results_dir={results_dir}",
                *extra,
            ]
            t = time.time()
            print("[claims] " + " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
            print(f"[claims] {method} seed {seed}: {time.time() - t:.0f}s", flush=True)


def ms(xs: list[float]) -> str:
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.1f}"
    return f"{statistics.fmean(xs):.1f} ± {statistics.stdev(xs):.1f}"


def summarize(preset: str, seeds, results_dir: str) -> str:
    recs: dict[str, dict[int, dict]] = {}
    for path in sorted((Path(results_dir) / "stat" / preset).glob("*-seed*.json")):
        r = json.loads(path.read_text())
        if r["seed"] in seeds:
            recs.setdefault(r["method"], {})[r["seed"]] = r
    base = recs.get("base", {})
    order = [m for m in ("base", *METHODS) if m in recs]
    lines = [f"# STAT claims on `{preset}` (seeds {list(seeds)}; mean ± std over seeds)", ""]
    lines.append(
        "| method | n | P-test acc | Δ vs base | rare-skill acc | Δ | profiled top-3 acc | Δ | other-skill acc | Δ "
        "| OOD 5-step | Δ |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for m in order:
        row = [m, str(len(recs[m]))]
        for key in ("acc_test", "acc_rare_skills", "acc_missing_skills", "acc_other_skills", "acc_ood_5step"):
            vals = [r["metrics"].get(key) for r in recs[m].values() if key in r["metrics"]]
            deltas = [
                r["metrics"][key] - base[s]["metrics"][key]
                for s, r in recs[m].items()
                if s in base and key in r["metrics"] and key in base[s]["metrics"]
            ]
            row += [ms(vals), ms(deltas) if m != "base" else "-"]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Per-skill accuracy gain over the base (points; mean ± std over seeds):", ""]
    lines.append("| skill | base acc | " + " | ".join(m for m in order if m != "base") + " |")
    lines.append("|---|---|" + "---|" * (len(order) - 1))
    for s in SKILLS:
        key = f"acc_skill/{s}"
        row = [s, ms([r["metrics"][key] for r in base.values()])]
        for m in order:
            if m == "base":
                continue
            row.append(ms([r["metrics"][key] - base[sd]["metrics"][key] for sd, r in recs[m].items() if sd in base]))
        lines.append("| " + " | ".join(row) + " |")
    prof = [r.get("extra", {}).get("profile", {}) for r in base.values()]
    lines += ["", "Missing-Skill-Profile f(s) per seed: " + "; ".join(json.dumps(p) for p in prof)]
    if "sft" in recs and base:
        d = [recs["sft"][s]["metrics"]["acc_test"] - base[s]["metrics"]["acc_test"] for s in recs["sft"] if s in base]
        ok = all(abs(x) <= 1.0 for x in d)
        lines.append(
            f"Saturation check (|continued SFT - base| <= 1 point on P-test for every seed): "
            f"{'passed' if ok else 'FAILED'} ({', '.join(f'{x:+.1f}' for x in d)})"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="arith", choices=[p for p in PRESETS if PRESETS[p].task == "arith"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--results-dir", default="results/raw")
    ap.add_argument("--out-dir", default="runs")
    ap.add_argument("--summary-only", action="store_true")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="extra overrides for every run")
    args = ap.parse_args(argv)
    if not args.summary_only:
        run_all(args.preset, args.seeds, args.methods, args.results_dir, [f"out_dir={args.out_dir}", *args.set])
    text = summarize(args.preset, args.seeds, args.results_dir)
    out = Path(args.out_dir) / "stat" / args.preset / "claims_summary.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    from common.cli import entry

    entry(main)
