"""The mode-coverage claim on the imbalanced 2-D mixture, over seeds, with its gates (paper §3 and Fig. 8).

    python -m papers.fdistill.claims                    # gates, then every divergence, seeds 0 1 2
    python -m papers.fdistill.claims --seeds 0 1 2 3 4 --divergences rkl js kl
    python -m papers.fdistill.claims --summary --readme # tables and verdicts from the records only

Claim: with everything else fixed, less mode-seeking divergences (Jensen-Shannon, forward KL) cover the modes of an
imbalanced mixture better than reverse KL (= DMD2): higher recall, more modes covered and a lower mode-weight error,
at similar precision. Every run is the `toy2d` preset (8-mode ring with weights 0.45 ... 0.005, generator first
fitted to the largest mode) with only `divergence` changed: same iterations, batch, learning rates, discriminator
and seeds (one initial generator per seed, shared by the divergences).

Gates (recorded before the claim is judged; a failed gate makes the verdict "untestable"):
1. the teacher covers every mode (its own ODE samples, every seed);
2. the initial generator is skewed: it covers fewer modes than the teacher (there is something to recover);
3. room to gain: the reverse-KL baseline, trained in full, still misses modes (mean modes covered below the
   teacher's) -- run first, and the other divergences only run when it passes;
4. the test metrics resolve differences of 0.05: the std of the teacher's recall across the seeds' independent test
   sets is below 0.02.
Verdict per divergence d (fixed before any run): paired differences d - rkl over seeds, mean and 95% t-interval;
"supported" when the intervals of recall and modes covered lie above 0, the one of mode-weight TV below 0, and mean
precision is not lower by more than 0.05; "contradicted" when recall's interval lies below 0; else "inconclusive".
A run whose record exists is skipped, so the command resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

PAPER, PRESET = "fdistill", "toy2d"
CLAIM_BENCH = "fdistill / toy2d claim: gates and paired differences against reverse KL"
ORDER = ["rkl", "js", "kl", "sf", "sh", "jf"]  # baseline first, then the claim's two, then the rest of Table 1
CLAIMED = ("js", "kl")
TEACHER = "teacher (analytic, ODE)"
INIT = "initial generator"
# t_{0.975, n-1} for the paired 95% interval (n = 2 ... 10)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
METRICS = ["recall", "modes covered", "mode weight TV", "precision", "SWD", "off-mode fraction", "h var (norm.)"]
HIGHER = {"recall": True, "modes covered": True, "mode weight TV": False, "precision": True}


def _argv(div, seed, results_dir, out_dir, preset=PRESET):
    kv = {"divergence": div, "method": div, "seed": str(seed), "results_dir": results_dir, "out_dir": out_dir}
    return ["--preset", preset, "--set", *[f"{k}={v}" for k, v in kv.items()]]


def _records(results_dir, preset=PRESET):
    from common.results import load_records

    root = Path(results_dir)
    return [r for r in load_records(root) if r["paper"] == PAPER and r["preset"] == preset] if root.exists() else []


def _by(recs, method):
    return {r["seed"]: r["metrics"] for r in recs if r["method"] == method}


def paired(a: dict, b: dict, key: str) -> dict | None:
    """Paired difference a - b over the seeds both have: mean, sample std, 95% t-interval, n."""
    seeds = sorted(set(a) & set(b))
    d = [a[s][key] - b[s][key] for s in seeds if key in a[s] and key in b[s]]
    if len(d) < 2:
        return None
    m, sd = statistics.fmean(d), statistics.stdev(d)
    half = T975.get(len(d) - 1, 1.96) * sd / math.sqrt(len(d))
    return {"mean": m, "std": sd, "lo": m - half, "hi": m + half, "n": len(d)}


def gates(recs, seeds) -> dict:
    """The four gates from the records; missing records make a gate fail with 'not measured'."""
    teacher, init, rkl = _by(recs, TEACHER), _by(recs, INIT), _by(recs, "rkl")
    out = {}
    k_all = [teacher[s]["modes covered"] for s in seeds if s in teacher]
    out["teacher covers all modes"] = (
        len(k_all) == len(seeds) and all(teacher[s]["mode coverage"] == 1.0 for s in seeds),
        f"teacher modes covered per seed {k_all}",
    )
    k_init = [init[s]["modes covered"] for s in seeds if s in init]
    out["initial generator is skewed"] = (
        len(k_init) == len(seeds) and max(k_init) < min(k_all or [0]),
        f"initial generator modes covered per seed {k_init}",
    )
    k_rkl = [rkl[s]["modes covered"] for s in seeds if s in rkl]
    out["room to gain (reverse KL misses modes)"] = (
        len(k_rkl) == len(seeds) and statistics.fmean(k_rkl) < statistics.fmean(k_all or [0]),
        f"reverse-KL modes covered per seed {k_rkl}",
    )
    rec_t = [teacher[s]["recall"] for s in seeds if s in teacher]
    sd = statistics.stdev(rec_t) if len(rec_t) > 1 else float("inf")
    out["test sets resolve 0.05"] = (sd < 0.02, f"std of the teacher's recall over test sets {sd:.4f}")
    return out


def verdict(recs, div) -> tuple[str, dict]:
    a, b = _by(recs, div), _by(recs, "rkl")
    diffs = {k: paired(a, b, k) for k in HIGHER}
    if any(v is None for v in diffs.values()):
        return "not measured (fewer than 2 paired seeds)", diffs
    better = {k: (v["lo"] > 0) if HIGHER[k] else (v["hi"] < 0) for k, v in diffs.items()}
    if (
        better["recall"]
        and better["modes covered"]
        and better["mode weight TV"]
        and diffs["precision"]["mean"] >= -0.05
    ):
        return "supported", diffs
    if diffs["recall"]["hi"] < 0:
        return "contradicted (recall lower)", diffs
    resolved = [k for k in ("recall", "modes covered", "mode weight TV") if better[k]]
    return f"inconclusive (resolved better: {', '.join(resolved) or 'none'})", diffs


def write_claim_records(results_dir, seeds, preset=PRESET) -> dict:
    """Gate record and one verdict record per claimed divergence (benchmark CLAIM_BENCH)."""
    from common.results import make_record, write_record

    recs = _records(results_dir, preset)
    g = gates(recs, seeds)
    passed = all(ok for ok, _ in g.values())
    failed = [k for k, (ok, _) in g.items() if not ok]
    common = dict(paper=PAPER, preset=f"{preset}-claim", benchmark=CLAIM_BENCH, dataset="imbalanced 8-mode ring")
    protocol = {"seeds": seeds, "gates": {k: why for k, (_, why) in g.items()}, "rule": "see papers/fdistill/claims.py"}
    cfg = {"seeds": seeds, "divergences": ORDER}
    write_record(
        make_record(
            **common,
            method="gates",
            seed=0,
            metrics={k: float(ok) for k, (ok, _) in g.items()},
            protocol=protocol,
            config=cfg,
            wall_time_s=0.0,
            extra={"passed": passed, "failed": failed},
        ),
        root=results_dir,
    )
    out = {"gates": g, "passed": passed}
    for div in CLAIMED:
        if not passed:
            text, diffs = f"untestable: gate {', '.join(failed)} failed", {}
        else:
            text, diffs = verdict(recs, div)
        metrics = {f"{k} diff": v["mean"] for k, v in diffs.items() if v}
        metrics.update({f"{k} diff 95% lo": v["lo"] for k, v in diffs.items() if v})
        metrics.update({f"{k} diff 95% hi": v["hi"] for k, v in diffs.items() if v})
        write_record(
            make_record(
                **common,
                method=f"{div} - rkl (paired)",
                seed=0,
                metrics=metrics or {"measured": 0.0},
                protocol=protocol,
                config=cfg,
                wall_time_s=0.0,
                extra={"verdict": text, "diffs": diffs},
            ),
            root=results_dir,
        )
        out[div] = (text, diffs)
    return out


# ----------------------------------------------------------------------------- tables


def _cell(vals):
    if not vals:
        return "-"
    if len(vals) == 1:  # one seed: no spread to show
        return f"{vals[0]:.3f}"
    return f"{statistics.fmean(vals):.3f} ± {statistics.stdev(vals):.3f}"


def divergence_table(recs, keys, title) -> list[str]:
    rows = {}
    for r in recs:
        rows.setdefault(r["method"], []).append(r["metrics"])
    if not rows:
        return []
    keys = [k for k in keys if any(k in m for ms in rows.values() for m in ms)]
    order = [m for m in ORDER if m in rows] + sorted(m for m in rows if m not in ORDER)
    out = [f"\n#### {title}\n", "| divergence | n | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for m in order:
        ms = rows[m]
        cells = [_cell([x[k] for x in ms if k in x]) for k in keys]
        out.append(f"| {m} | {len(ms)} | " + " | ".join(cells) + " |")
    return out


def ratio_table(recs) -> list[str]:
    keys = sorted({k for r in recs for k in r["metrics"] if k.startswith("log r corr @")}, key=lambda k: float(k[12:]))
    if not keys:
        return []
    runs = [r for r in recs if r["method"] in ORDER]
    control = [
        {"method": "control: untrained head", "metrics": {k: r["metrics"][f"init head {k}"] for k in keys}}
        for r in runs
        if all(f"init head {k}" in r["metrics"] for k in keys)
    ]
    title = "Ratio check: correlation of the discriminator's log r with the exact log p/q, per sigma (columns)"
    return divergence_table(runs + control, keys, title)


def verdict_lines(results_dir, preset=PRESET) -> list[str]:
    recs = _records(results_dir, f"{preset}-claim")
    gate = next((r for r in recs if r["method"] == "gates"), None)
    if gate is None:
        return []
    out = ["\n#### Gates and verdicts\n", "| gate | passed | measured |", "|---|---|---|"]
    for k, why in gate["protocol"]["gates"].items():
        out.append(f"| {k} | {'yes' if gate['metrics'][k] else 'no'} | {why} |")
    out += [
        "",
        "| comparison | verdict | recall | modes covered | mode weight TV | precision |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(recs, key=lambda r: r["method"]):
        if r["method"] == "gates":
            continue
        d = r["extra"]["diffs"]
        cells = [
            f"{d[k]['mean']:+.3f} [{d[k]['lo']:+.3f}, {d[k]['hi']:+.3f}]" if d.get(k) else "-"
            for k in ("recall", "modes covered", "mode weight TV", "precision")
        ]
        out.append(f"| {r['method']} | {r['extra']['verdict']} | " + " | ".join(cells) + " |")
    out.append("\nDifferences: mean over seeds [paired 95% t-interval].")
    return out


def summary(results_dir, preset=PRESET) -> str:
    recs = _records(results_dir, preset)
    lines = divergence_table(
        recs, METRICS, "toy2d: imbalanced 8-mode ring, skewed start (divergences; teacher; initial generator)"
    )
    lines += ratio_table(recs)
    lines += verdict_lines(results_dir, preset)
    digits = _records(results_dir, "digits")
    lines += divergence_table(
        digits,
        ["FD-digitsCNN", "precision", "recall", "class histogram TV", "h var (norm.)"],
        "digits 8x8: divergences and the EDM teacher",
    )
    return "\n".join(lines)


README = Path(__file__).with_name("README.md")
START, END = "<!-- fdistill-results:start -->", "<!-- fdistill-results:end -->"


def readme_text(results_dir, readme=README) -> str:
    """README.md with its generated block replaced by the tables from the records and the paper-vs-ours table."""
    import tomllib

    from common.results import load_records
    from results.build import PAPER_NUMBERS, paper_table

    text = readme.read_text()
    entries = tomllib.loads(PAPER_NUMBERS.read_text()).get(PAPER, [])
    root = Path(results_dir)
    block = summary(results_dir) + "\n\n" + "\n".join(paper_table(PAPER, entries, load_records(root)))
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{block.strip()}\n{END}{tail}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--preset", default=PRESET, help="toy preset of every run (toy2d-smoke for a quick check)")
    p.add_argument("--divergences", nargs="+", default=ORDER, choices=ORDER)
    p.add_argument("--results-dir", default="results/raw")
    p.add_argument("--out-dir", default="runs")
    p.add_argument("--summary", action="store_true", help="only the tables and verdicts from existing records")
    p.add_argument("--readme", action="store_true", help="also regenerate the tables in papers/fdistill/README.md")
    args = p.parse_args(argv)
    if not args.summary:
        import torch

        from common.results import record_path
        from papers.fdistill.train import main as train_main

        torch.set_num_threads(1)

        def run(div, seed):
            rec = {"paper": PAPER, "preset": args.preset, "method": div, "seed": seed}
            if record_path(rec, args.results_dir).exists():
                print(f"[claims] skip {div} seed {seed}: record exists", flush=True)
                return
            print(f"[claims] {div} seed {seed}", flush=True)
            train_main(_argv(div, seed, args.results_dir, args.out_dir, args.preset))

        for seed in args.seeds:  # the baseline first: gates 1-4 need only its runs
            run("rkl", seed)
        g = gates(_records(args.results_dir, args.preset), args.seeds)
        failed = [k for k, (ok, _) in g.items() if not ok]
        if failed:
            print(f"[claims] untestable: gate {', '.join(failed)} failed; the other divergences are not run")
        else:
            claimed = [d for d in CLAIMED if d in args.divergences]
            for seed in args.seeds:  # the claim's divergences, then the rest of Table 1 for the comparison table
                for div in claimed:
                    run(div, seed)
            write_claim_records(args.results_dir, args.seeds, args.preset)
            for seed in args.seeds:
                for div in [d for d in args.divergences if d not in ("rkl", *CLAIMED)]:
                    run(div, seed)
        out = write_claim_records(args.results_dir, args.seeds, args.preset)
        print(json.dumps({k: v[0] if isinstance(v, tuple) else v for k, v in out.items() if k != "gates"}))
    text = summary(args.results_dir, args.preset)
    if args.readme:
        README.write_text(readme_text(args.results_dir))
    print(text)


if __name__ == "__main__":
    from common.cli import entry

    entry(main)
