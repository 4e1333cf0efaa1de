#!/usr/bin/env bash
# The main job: every paper's embedded default once (train + evaluate + result record), then this machine's tables
# and the reproduction check against the committed records. Nothing under results/ is written: run folders land
# under runs/embedded/<paper>/, records under runs/embedded/raw/, tables in runs/embedded/RESULTS.md and the
# check (this machine | committed | paper, per headline metric) in runs/embedded/REPRO.md.
# Re-running resumes finished or interrupted runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
out=runs/embedded
for train in papers/*/train.py; do
  paper=$(basename "$(dirname "$train")")
  echo "=== $paper: embedded default ==="
  start=$(date +%s)
  .venv/bin/python -m "papers.$paper.train" --set out_dir=$out results_dir=$out/raw
  echo "=== $paper: done in $(( $(date +%s) - start )) s ==="
done
.venv/bin/python -m results.build --raw $out/raw --out $out/RESULTS.md
.venv/bin/python -m results.repro $out/raw
