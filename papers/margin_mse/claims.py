"""Margin-MSE claim experiments on the embedded benchmark, over seeds (margin_mse.md §6).

    python -m papers.margin_mse.claims                      # all variants, seeds 0 1 2
    python -m papers.margin_mse.claims --seeds 0 --only dot-margin_mse-T2

Variants (same steps, batch, training lists, LR and seeds; only the training signal differs):
* DOT student: labels only (RankNet), pointwise MSE (T2), KL over the list (T2), Margin-MSE (T2), Margin-MSE (T1)
  -> claims (b) Margin-MSE > labels, (c) Margin-MSE >= pointwise MSE and KL, (d) T2 >= T1 as teacher;
  re-ranking and dense retrieval.
* ColBERT student: labels only, pointwise MSE (T2), Margin-MSE (T2) -> claims (b), (c) for a second architecture.
* score ranges of teachers and students (claim a) and re-ranking latency are in every record.
The teachers are trained once (cached in the shared folder) and reused by every seed, as the paper's teacher
scores are computed once. Each run also records the precondition (teacher beats BM25 and the label-only student).
Records go to results/raw/margin_mse/embedded/; rebuild the tables with ``python -m results.build``.
"""

from __future__ import annotations

import argparse

from papers.margin_mse.train import main as train_main

VARIANTS = {
    "dot-ranknet": ["student=dot", "loss=ranknet"],
    "dot-pointwise_mse-T2": ["student=dot", "loss=pointwise_mse", "teacher=T2"],
    "dot-kl-T2": ["student=dot", "loss=kl", "teacher=T2"],
    "dot-margin_mse-T2": ["student=dot", "loss=margin_mse", "teacher=T2"],
    "dot-margin_mse-T1": ["student=dot", "loss=margin_mse", "teacher=T1"],
    "colbert-ranknet": ["student=colbert", "loss=ranknet"],
    "colbert-margin_mse-T2": ["student=colbert", "loss=margin_mse", "teacher=T2"],
}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="embedded")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="*", default=None, help="variant names to run (default: all)")
    ap.add_argument("--set", nargs="*", default=[], help="extra key=value overrides for every run")
    args = ap.parse_args(argv)
    names = args.only or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    # DOT variants over all seeds first, then ColBERT (a cut-short run still has complete DOT comparisons);
    # the teachers are trained by the first run that needs them and cached for all others
    for arch in ("dot", "colbert"):
        for seed in args.seeds:
            for name in [n for n in names if n.startswith(arch)]:
                print(f"=== {name} seed {seed}", flush=True)
                train_main(
                    ["--preset", args.preset, "--set", f"seed={seed}", f"method={name}", *VARIANTS[name], *args.set]
                )


if __name__ == "__main__":
    from common.cli import entry

    entry(main)
