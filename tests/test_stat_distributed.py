"""STAT under data parallelism (torchrun --standalone, gloo on CPU, loopback only): the training loop of the embedded
pipeline and the sharded generation of the full-scale one give what one process gives."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from loop_equivalence import assert_same, final_state, run_both  # noqa: E402


def test_arith_loop_two_processes_with_accumulation_match_one_loopback(tmp_path):
    """papers.stat.train on arith-smoke, base SFT then STAT-Sel fine-tuning: 2 processes x 2 micro-batches end where
    1 process x 4 micro-batches ends, in both stages (each process trains on its own share of one global batch; the
    base's fresh samples do not depend on the number of processes; the second stage runs in the same group)."""
    one, two = run_both("papers.stat.train", "arith-smoke", ["method=stat_sel"], tmp_path, global_batch=8)
    assert one["step"] == two["step"] == 6  # budget 48 / global batch 8, one epoch
    assert assert_same(one, two, ["model"]) > 0
    base = [final_state(tmp_path / p / "runs/stat/arith-smoke/base-seed0") for p in ("p1", "p2")]
    assert base[0]["step"] == base[1]["step"] == 3
    assert assert_same(*base, ["model"]) > 0
    # the fine-tuning moved the weights: the comparison above is not of the base twice
    moved = [k for k, v in one["objects"]["model"].items() if not torch.equal(v, base[0]["objects"]["model"][k])]
    assert moved
