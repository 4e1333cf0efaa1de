"""The paper's three claims on the 2-D toy, over seeds (paper App. C / Table 3, Table 1, §4.5 / Table 4).

    python -m papers.dmd2.claims                       # all claims, seeds 0 1 2 (records in results/raw/dmd2/)
    python -m papers.dmd2.claims --claims 2 --seeds 0 1 2 3 4
    python -m papers.dmd2.claims --summary             # print mean ± std tables from the records only

1. TTUR (paper App. C, Table 3): DM only, no GAN, high generator LR; critic:generator updates 1 vs 5 vs 10 at the
   same number of generator updates. Measured: oscillation of the generator's batch mean / second moment over the
   last 1000 generator steps, SWD to the data, mode-weight TV.
2. Student beats an imperfect teacher (Table 1: 1.51 < 2.32): a mis-specified analytic teacher (component stds x1.5,
   weights tilted); DM only vs DM + diffusion-GAN on true data. The GAN weight follows the authors' recipe (w_G =
   multiplier x |grad DM| / |grad GAN|, measured once) and the sweep over the multiplier {0.3, 1, 3} is reported
   in full. The teacher's own distance is measured on its ODE samples.
3. Backward simulation (§4.5, Table 4): a 4-step student on grid indices [999, 749, 499, 249]; intermediate
   training inputs from the student's own no-grad rollout vs forward-noised real samples; a 1-step student with the
   same budget and initialisation as the reference.
Every variant of a claim has the same iterations, batch, learning rates and seeds. A run whose record exists is
skipped, so the command resumes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

BASE = {  # shared by every claim run: not in the paper, our 2-core budget
    "global_batch": "256",
    "eval_every": "50",
    "eval_samples": "4096",
    "log_every": "250",
    "warmup": "0",
}
GEN_STEPS = 600

# claim -> (preset label, benchmark, {method: overrides})
CLAIMS = {
    1: (
        "toy2d-claim1-ttur",
        "dmd2 / toy2d claim 1: TTUR without regression loss (DM only, lr 1e-3)",
        {
            f"dm-only ttur{r}": {
                "ttur_ratio": str(r),
                "steps": str(GEN_STEPS * r),
                "gan": "false",
                "gen_lr": "1e-3",
                "fake_lr": "1e-3",
            }
            for r in (1, 5, 10)
        },
    ),
    2: (
        "toy2d-claim2-misspecified",
        "dmd2 / toy2d claim 2: mis-specified teacher (stds x1.5, tilted weights)",
        {
            "dm-only": {"gan": "false"},
            **{f"dm+gan wG={m}x": {"gan": "true", "w_g": str(m), "w_g_calibrate": "true"} for m in (0.3, 1, 3)},
        },
    ),
    3: (
        "toy2d-claim3-multistep",
        "dmd2 / toy2d claim 3: 4-step student, backward simulation vs forward-noised real inputs",
        {
            "4-step backward-sim": {"multistep_input": "backward"},
            "4-step forward-real": {"multistep_input": "forward_real"},
            "1-step (same budget)": {"student_steps": "999"},
        },
    ),
}
CLAIM_SETS = {
    1: {},
    2: {
        "teacher": "misspecified",
        "teacher_std_scale": "1.5",
        "teacher_weight_tilt": "0.5",
        "ttur_ratio": "5",
        "steps": str(GEN_STEPS * 5),
        "gen_lr": "1e-3",
        "fake_lr": "1e-3",
    },
    3: {
        "student_steps": "999,749,499,249",
        # the generator starts as a copy of the teacher: the regression copy must also agree with the teacher where
        # the 4-step rollouts go (re-noised early outputs near the ring's centre), not only on noised data
        "fake_init_steps": "1000",
        "fake_init_cover": "0.5",
        "gan": "false",
        "ttur_ratio": "5",
        "steps": str(GEN_STEPS * 5),
        "gen_lr": "1e-3",
        "fake_lr": "1e-3",
    },
}


def _argv(claim, method, seed, results_dir, out_dir):
    preset, bench, variants = CLAIMS[claim]
    kv = {
        **BASE,
        **CLAIM_SETS[claim],
        **variants[method],
        "seed": str(seed),
        "method": method,
        "preset": preset,
        "benchmark": bench,
        "results_dir": results_dir,
        "out_dir": out_dir,
    }
    return ["--preset", "toy2d", "--set", *[f"{k}={v}" for k, v in kv.items()]]


def _record_path(results_dir, claim, method, seed):
    from common.results import record_path

    return record_path({"paper": "dmd2", "preset": CLAIMS[claim][0], "method": method, "seed": seed}, results_dir)


KEYS = [
    "SWD",
    "SWD (best)",
    "MMD",
    "mode weight TV",
    "mode weight TV (best)",
    "off-mode fraction",
    "precision",
    "recall",
    "oscillation (mean)",
    "oscillation (2nd moment)",
]


def _table(recs, preset, title, keys) -> list[str]:
    rows = {}
    for r in recs:
        if r["preset"] == preset:
            rows.setdefault(r["method"], []).append(r["metrics"])
    if not rows:
        return []
    keys = [k for k in keys if any(k in m for ms in rows.values() for m in ms)]
    out = [f"\n#### {title}\n", "| method | n | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for m, ms in sorted(rows.items()):
        cells = []
        for k in keys:
            v = torch.tensor([x[k] for x in ms if k in x], dtype=torch.float64)
            sd = v.std(unbiased=True).item() if len(v) > 1 else 0.0
            cells.append("-" if len(v) == 0 else f"{v.mean():.3f} ± {sd:.3f}")
        out.append(f"| {m} | {len(ms)} | " + " | ".join(cells) + " |")
    return out


def summary(results_dir, claims, embedded=False) -> str:
    from common.results import load_records

    recs = [r for r in load_records(results_dir) if r["paper"] == "dmd2"]
    lines = []
    if embedded:
        lines += _table(recs, "toy2d", "toy2d (embedded default): 1-step student vs exact teacher", KEYS)
        lines += _table(
            recs,
            "digits",
            "digits 8x8: 1-step student vs EDM teacher",
            [
                "FD-digitsCNN",
                "FD-digitsCNN (ema 0.99)",
                "FD-digitsCNN (best)",
                "precision",
                "recall",
                "class histogram TV",
                "throughput vs teacher",
            ],
        )
    for c in claims:
        preset, bench, _ = CLAIMS[c]
        lines += _table(recs, preset, bench, KEYS)
    return "\n".join(lines)


README = Path(__file__).with_name("README.md")


def write_readme(results_dir, readme=README) -> None:
    """Replace the generated block of papers/dmd2/README.md with the tables from the records."""
    import tomllib

    from common.results import load_records
    from results.build import PAPER_NUMBERS, paper_table

    text = readme.read_text()
    a, b = "<!-- dmd2-results:start -->", "<!-- dmd2-results:end -->"
    entries = tomllib.loads(PAPER_NUMBERS.read_text()).get("dmd2", [])
    block = (
        summary(results_dir, [1, 2, 3], embedded=True)
        + "\n\n"
        + "\n".join(paper_table("dmd2", entries, load_records(results_dir)))
    )
    head, rest = text.split(a, 1)
    _, tail = rest.split(b, 1)
    readme.write_text(f"{head}{a}\n{block.strip()}\n{b}{tail}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--claims", type=int, nargs="+", default=[1, 2, 3], choices=[1, 2, 3])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--results-dir", default="results/raw")
    p.add_argument("--out-dir", default="runs")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the claim runs are small)")
    p.add_argument("--summary", action="store_true", help="only print the tables from existing records")
    p.add_argument("--readme", action="store_true", help="also regenerate the tables in papers/dmd2/README.md")
    args = p.parse_args(argv)
    if not args.summary:
        torch.set_num_threads(args.threads)
        from papers.dmd2.train import main as train_main

        for seed in args.seeds:  # seeds outermost: every claim gets a complete seed before the next one
            for c in args.claims:
                for method in CLAIMS[c][2]:
                    if _record_path(args.results_dir, c, method, seed).exists():
                        print(f"[claims] skip claim {c} {method} seed {seed}: record exists")
                        continue
                    print(f"[claims] claim {c} {method} seed {seed}", flush=True)
                    train_main(_argv(c, method, seed, args.results_dir, args.out_dir))
    text = summary(args.results_dir, args.claims)
    if args.readme:
        write_readme(args.results_dir)
    print(text)
    out = Path(args.out_dir) / "dmd2" / "claims_summary.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(json.dumps({"summary": str(out)}))


if __name__ == "__main__":
    from common.cli import entry

    entry(main)
