"""STAT under data parallelism (torchrun --standalone, gloo on CPU, loopback only): the training loop of the embedded
pipeline and the sharded generation of the full-scale one give what one process gives."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from loop_equivalence import assert_same, final_state, run_both  # noqa: E402

TORCHRUN = Path(sys.executable).with_name("torchrun")


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


def _answers(tmp: Path, nproc: int) -> list[dict]:
    out = tmp / f"gen{nproc}"
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", str(nproc), str(ROOT / "tests/stat_generate_worker.py")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([*cmd, str(out)], cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in range(nproc)]


def test_generation_is_split_between_processes_and_gathered_in_order_loopback(tmp_path):
    """Full-scale generation (pass@1 at T = 0.1 and k samples at T = 1): 2 processes each generate their share of the
    prompts, and both hold all answers in the original order, equal to what 1 process generates alone."""
    (one,) = _answers(tmp_path, 1)
    two = _answers(tmp_path, 2)
    assert one["prompts"] == 11 + 5 and len(one["pass1"]) == 11 and len(one["k"]) == 15
    assert len(set(one["pass1"])) > 1 and len(set(one["k"])) > 5  # sampled, distinct answers: the order is checked
    for rank in two:
        assert rank["world_size"] == 2
        assert rank["pass1"] == one["pass1"] and rank["k"] == one["k"]
    # batches of 3 questions: 4 batches -> 2 + 2; 5 single-question batches -> 3 + 2
    assert [r["prompts"] for r in two] == [6 + 3, 5 + 2]


def test_full_scale_frozen_weights_keep_the_configured_precision():
    """The frozen student base (and PRM) hold their weights in the dtype of ``mixed_precision``; only the LoRA
    parameters are fp32."""
    from dataclasses import replace

    from papers.stat.config import PRESETS
    from papers.stat.fullscale import add_lora, load_causal_lm

    for precision, frozen in (("bf16", torch.bfloat16), ("no", torch.float32)):
        cfg = replace(PRESETS["math-smoke"], mixed_precision=precision)
        model = add_lora(cfg, load_causal_lm(cfg, cfg.model_name, trainable=True)[0])
        dtypes = {(p.requires_grad, p.dtype) for p in model.parameters()}
        assert dtypes == {(False, frozen), (True, torch.float32)}, (precision, dtypes)
        prm = load_causal_lm(cfg, cfg.prm_model, trainable=False)[0]
        assert {p.dtype for p in prm.parameters()} == {frozen}


def test_full_scale_lora_loop_two_processes_with_accumulation_match_one_loopback(tmp_path):
    """The LoRA SFT loop of the full-scale pipeline through its entry point (math-smoke, MATH-Train baseline):
    2 processes x 2 micro-batches == 1 process x 4 (LoRA dropout off: its masks are drawn per process)."""
    sets = ["method=sft", "math_budget=16", "lora_dropout=0", "eval_sets=math500", "eval_limit=2"]
    one, two = run_both("papers.stat.train", "math-smoke", sets, tmp_path, global_batch=8)  # micro-batches of 2
    assert one["step"] == two["step"] == 2  # math_budget 16 / global batch 8
    assert assert_same(one, two, ["model"]) > 0
    for p in ("p1", "p2"):  # it trained on answer tokens (a finite loss), so the comparison is not of no-ops
        log = (tmp_path / p / "runs/stat/math-smoke/sft-seed0/metrics.jsonl").read_text().splitlines()
        losses = [json.loads(x)["lora-sft/loss"] for x in log if "lora-sft/loss" in x]
        assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses), losses


def _fake_run(world_size: int, rank: int, grad_accum: int):
    from types import SimpleNamespace

    return SimpleNamespace(
        world_size=world_size, grad_accum=grad_accum, accelerator=SimpleNamespace(process_index=rank)
    )


def test_process_micro_batches_are_the_global_micro_batches_for_any_layout():
    import pytest

    from papers.stat.sft import process_micro_batches

    for n in (8, 11):  # even, and a short last batch of an epoch
        items = list(range(n))
        one = process_micro_batches(items, _fake_run(1, 0, 4))
        two = [mb for r in (0, 1) for mb in process_micro_batches(items, _fake_run(2, r, 2))]
        assert one == two and len(one) == 4 and sum(one, []) == items  # nothing dropped, same grouping
        assert max(map(len, one)) - min(map(len, one)) <= 1
    with pytest.raises(ValueError, match="cannot fill 4 micro-batches"):
        process_micro_batches([1, 2, 3], _fake_run(2, 0, 2))


def test_map_sharded_in_one_process_keeps_the_order_and_rejects_a_bad_chunk():
    import pytest

    from common.launch import map_sharded

    run = _fake_run(1, 0, 1)
    out = map_sharded(run, list(range(7)), lambda part, i: [(i, x) for x in part], chunk=3)
    assert out == [(0, 0), (0, 1), (0, 2), (1, 3), (1, 4), (1, 5), (2, 6)]
    assert map_sharded(run, [], lambda part, i: part) == []
    with pytest.raises(ValueError, match="chunk"):
        map_sharded(run, [1], lambda part, i: part, chunk=0)
