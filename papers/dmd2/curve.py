"""Learning curves of DMD2 runs: validation metrics against generator step.

    # every checkpoint of a run folder (run it with ckpt_every small and keep_ckpts large), generator and EMA copies
    python -m papers.dmd2.curve checkpoints --preset toy2d --set steps=20000 ckpt_every=500 keep_ckpts=100 ...
    # figure of the validation curves stored in the records of several seeds (extra.learning_curve)
    python -m papers.dmd2.curve records results/raw/dmd2/digits/dmd2-seed*.json --out papers/dmd2/figures/x.png

The training loop logs one validation score per evaluation (SWD for toy2d, FD-digitsCNN against the train split for
digits); `checkpoints` adds the other toy metrics (precision, recall, off-mode fraction, mode-weight TV) at every
saved checkpoint. Both use only validation draws (common.diffusion.evaluation.VAL_SEED, the train split), never the
test samples of the records.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch


def _ema_state(state: dict) -> dict:
    """An AveragedModel's state dict as the averaged network's own ("module." prefix off, counter dropped)."""
    return {k[len("module.") :]: v for k, v in state.items() if k.startswith("module.")}


def val_metrics(cfg, S, G) -> dict:
    """The toy's metrics (or the digits metrics against the train split) on validation samples."""
    from common.diffusion.evaluation import digits_metrics, toy_metrics, validation_samples

    x, ref = validation_samples(cfg, S, G, "cpu")  # the draws the loop's own validation score uses
    if cfg.task == "toy2d":
        return toy_metrics(x, ref, S.extra["data"])
    from common.metrics.fid import digits_feature_net

    return digits_metrics(x, digits_feature_net(), *ref)


def checkpoint_curve(argv) -> list[dict]:
    from common.config import parse_cli
    from common.diffusion.tasks import build
    from papers.dmd2.config import PRESETS, Config

    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--out", default="")
    ns, rest = ap.parse_known_args(argv)
    cfg = parse_cli(Config, PRESETS, rest, description=__doc__)
    torch.set_num_threads(cfg.num_threads or torch.get_num_threads())
    run_dir = Path(cfg.out_dir) / "dmd2" / cfg.resolved_run_name
    ckpts = sorted((run_dir / "checkpoints").glob("ckpt-*.pt"))
    if not ckpts:
        raise SystemExit(f"error: no checkpoint in {run_dir / 'checkpoints'}")
    S = build(cfg)
    rows = []
    for p in ckpts:
        payload = torch.load(p, map_location="cpu", weights_only=False)
        it = int(payload["step"])
        row = {"iteration": it, "gen_step": it // cfg.ttur_ratio}
        copies = {"last": payload["objects"]["generator"]}
        for i, rate in enumerate(cfg.ema_rates):
            copies[f"ema {rate}"] = _ema_state(payload["objects"][f"ema{i}"])
        for name, state in copies.items():
            G = copy.deepcopy(S.generator)
            G.load_state_dict(state)
            row[name] = val_metrics(cfg, S, G)
        rows.append(row)
        print(json.dumps(row))
    teacher = None
    if cfg.task == "toy2d":  # the teacher's ODE samples on a validation stream of their own, as a reference line
        from common.diffusion.evaluation import VAL_SEED, sample_teacher, toy_metrics

        x_t, _, _ = sample_teacher(cfg, S, 2048, torch.Generator().manual_seed(VAL_SEED + 2), "cpu", cfg.eval_batch)
        real = S.extra["data"].sample(2048, torch.Generator().manual_seed(VAL_SEED + 1))
        teacher = toy_metrics(x_t, real, S.extra["data"])
    out = Path(ns.out or run_dir / "curve.json")
    out.write_text(json.dumps({"run_dir": str(run_dir), "rows": rows, "teacher": teacher}, indent=1))
    return rows


def plot_checkpoint_curve(rows, path, metrics=("SWD", "precision", "off-mode fraction"), teacher=None) -> None:
    """One panel per metric, one line per copy (last iterate, EMA rates); dashed: the teacher's value if given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    copies = [k for k in rows[0] if k not in ("iteration", "gen_step")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3))
    for ax, m in zip(axes, metrics):
        for c in copies:
            ax.plot([r["gen_step"] for r in rows], [r[c][m] for r in rows], marker=".", label=c)
        if teacher and m in teacher:
            ax.axhline(teacher[m], ls="--", c="k", lw=1, label="teacher")
        ax.set_xlabel("generator step")
        ax.set_title(f"validation {m}", fontsize=9)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def records_figure(paths, out, ylabel, teacher_key=None) -> dict:
    """Mean ± std over seeds of the records' validation curves (extra.learning_curve), each seed as a thin line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {}
    for p in paths:
        r = json.loads(Path(p).read_text())
        curves[r["seed"]] = {int(s): v for s, v in r["extra"]["learning_curve"]}
    steps = sorted(set.intersection(*(set(c) for c in curves.values())))
    vals = torch.tensor([[c[s] for s in steps] for c in curves.values()], dtype=torch.float64)
    mean, std = vals.mean(0), vals.std(0) if len(vals) > 1 else torch.zeros(len(steps))
    fig, ax = plt.subplots(figsize=(4.8, 3.2))
    for seed, c in sorted(curves.items()):
        ax.plot(steps, [c[s] for s in steps], lw=0.7, alpha=0.5, label=f"seed {seed}")
    ax.plot(steps, mean, c="k", lw=1.5, label=f"mean (n={len(vals)})")
    ax.fill_between(steps, mean - std, mean + std, color="k", alpha=0.12)
    if teacher_key is not None:
        ax.axhline(teacher_key[1], ls="--", c="C3", lw=1, label=teacher_key[0])
    ax.set_yscale("log")
    ax.set_xlabel("generator step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return {"steps": steps, "mean": mean.tolist(), "std": std.tolist(), "n": len(vals)}


def main(argv=None):
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("checkpoints", "records", "plot"):
        raise SystemExit("usage: python -m papers.dmd2.curve {checkpoints|records|plot} ... (see the module docstring)")
    cmd, rest = argv[0], argv[1:]
    if cmd == "checkpoints":
        return checkpoint_curve(rest)
    ap = argparse.ArgumentParser()
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--ylabel", default="validation FD-digitsCNN (train split)")
    ap.add_argument("--teacher", type=float, default=None, help="a horizontal reference line (e.g. the teacher)")
    ap.add_argument("--teacher-label", default="teacher")
    ns = ap.parse_args(rest)
    if cmd == "records":
        ref = (ns.teacher_label, ns.teacher) if ns.teacher is not None else None
        return records_figure(ns.inputs, ns.out, ns.ylabel, ref)
    data = json.loads(Path(ns.inputs[0]).read_text())
    plot_checkpoint_curve(data["rows"], ns.out, teacher=data.get("teacher"))
    return data


if __name__ == "__main__":
    main()
