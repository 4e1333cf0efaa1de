"""Sharded generation of STAT's full-scale pipeline on the tiny random Llama of ``math-smoke``; run by
tests/test_stat_distributed.py under 1 or 2 processes. Every process writes ``OUT.rank<r>.json``: the answers it
holds after the gather and how many prompts it generated itself."""

import json
import sys
from dataclasses import replace

from common.launch import start
from papers.stat.config import PRESETS
from papers.stat.fullscale import generate, load_causal_lm, smoke_items


def main(out: str) -> None:
    cfg = replace(PRESETS["math-smoke"], out_dir=out + ".runs", max_new_tokens=12, per_device_batch=0)
    run = start(cfg, "stat")
    model, tok = load_causal_lm(cfg, cfg.model_name, trainable=True)
    model.to(run.device)
    prompts = []
    generate_all = model.generate

    def counting(**kw):
        prompts.append(kw["input_ids"].shape[0])
        return generate_all(**kw)

    model.generate = counting
    questions = [r["problem"] for r in smoke_items(11, 0)]
    pass1 = generate(cfg, model, tok, questions, run, batch_size=3)  # 4 batches, uneven over 2 processes
    k = generate(cfg, model, tok, questions[:5], run, batch_size=1, temperature=1.0, n=3)  # avg@k-style samples
    rank = run.accelerator.process_index
    with open(f"{out}.rank{rank}.json", "w") as f:
        json.dump({"pass1": pass1, "k": k, "prompts": sum(prompts), "world_size": run.world_size}, f)
    run.finish()


if __name__ == "__main__":
    main(sys.argv[1])
