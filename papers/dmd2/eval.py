"""DMD2 evaluation: re-evaluate a finished run folder (common/diffusion/evaluation.py does the work).

    python -m papers.dmd2.eval --preset toy2d        # re-evaluate the finished run folder of the preset

Metrics, protocol and pictures are those of common.diffusion.evaluation.evaluate (train.py calls it at the end).
"""

from __future__ import annotations

import torch

from common.diffusion.evaluation import evaluate


def main(argv=None):
    """Rebuild the preset's networks, load the last checkpoint of its run folder, evaluate."""
    from common.checkpoint import Checkpointer
    from common.config import parse_cli
    from common.diffusion.tasks import build
    from common.launch import start
    from papers.dmd2.config import PRESETS, Config

    cfg = parse_cli(Config, PRESETS, argv, description=__doc__)
    run = start(cfg, paper="dmd2")
    S = build(cfg)
    ckpt = Checkpointer(run.dir / "checkpoints", accelerator=run.accelerator)
    if ckpt.latest() is None:
        raise SystemExit(f"error: no checkpoint in {run.dir / 'checkpoints'}; run python -m papers.dmd2.train first")
    payload = torch.load(ckpt.latest(), map_location="cpu", weights_only=False)
    S.generator.load_state_dict(payload["objects"]["generator"])
    out = evaluate(cfg, run, S, S.generator.to(run.device), payload["extra"], "dmd2")
    run.finish()
    return out


if __name__ == "__main__":
    from common.cli import entry

    entry(main)
