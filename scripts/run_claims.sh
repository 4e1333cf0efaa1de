#!/usr/bin/env bash
# The claim experiments: every paper's seeds x variants (python -m papers.<name>.claims), then the results table.
# Slow on 2 CPU cores (see each paper's README for its time); records land under results/raw/<paper>/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
for claims in papers/*/claims.py; do
  paper=$(basename "$(dirname "$claims")")
  if [ "$paper" = stat ]; then  # stat's claim is papers/stat/experiment.py (claims.py holds the retired arith-long*)
    echo "=== stat: the arith-rare claim (pilot, five bases, gates, LR grids, endpoints) ==="
    for stage in pilot bases all; do .venv/bin/python -m papers.stat.experiment "$stage"; done
    .venv/bin/python -m papers.stat.experiment summary --figure papers/stat/figures/arith-rare.png
    continue
  fi
  echo "=== $paper: claim experiments ==="
  .venv/bin/python -m "papers.$paper.claims" "$@"
done
.venv/bin/python -m results.build
