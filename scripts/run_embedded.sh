#!/usr/bin/env bash
# The main job: every paper's embedded default once (train + evaluate + result record), then the results table.
# Each run folder lands under runs/<paper>/; re-running resumes finished or interrupted runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
for train in papers/*/train.py; do
  paper=$(basename "$(dirname "$train")")
  echo "=== $paper: embedded default ==="
  start=$(date +%s)
  .venv/bin/python -m "papers.$paper.train"
  echo "=== $paper: done in $(( $(date +%s) - start )) s ==="
done
.venv/bin/python -m results.build
