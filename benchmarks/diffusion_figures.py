"""Figures of the diffusion benchmark, drawn from its records only (results/raw/*/bench-*/...):

- `bench_curves_<dataset>.png`: distance to data against generator step, every method, mean over seeds with the
  seeds' range shaded (each method's own validation distance, logged during training; `updates` budget);
- `bench_samples_toy2d.png`: scatter plots side by side (rows: datasets, columns: methods and the teacher), seed 0;
- `bench_samples_digits.png`: sample grids side by side (seed 0).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

ORDER = ("dmd2", "js", "rkl", "disback", "tdm")
TOY = ("ring", "imbalanced", "grid")


def _records(raw: Path, smoke: bool) -> list[dict]:
    out = []
    for p in sorted(raw.glob("*/bench-*/*.json")):
        rec = json.loads(p.read_text())
        if rec["preset"].endswith("-smoke") == smoke:
            out.append(rec)
    return out


def _dataset(rec) -> str:
    return (
        rec["preset"].removeprefix("bench-").removesuffix("-smoke").rsplit("-", 1)[0]
        if rec["paper"] != "teacher"
        else (rec["preset"].removeprefix("bench-").removesuffix("-smoke"))
    )


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves(recs, out: Path) -> list[Path]:
    plt = _plt()
    by = defaultdict(lambda: defaultdict(list))
    for r in recs:
        if r["paper"] != "teacher" and r["extra"]["bench"]["budget"] == "updates" and r["extra"].get("learning_curve"):
            by[_dataset(r)][r["method"]].append(r["extra"]["learning_curve"])
    paths = []
    for ds, methods in sorted(by.items()):
        fig, ax = plt.subplots(figsize=(5, 3.4))
        for i, m in enumerate(sorted(methods, key=lambda k: ORDER.index(k) if k in ORDER else 99)):
            cs = methods[m]
            steps = sorted(set.intersection(*[{int(p[0]) for p in c} for c in cs]))
            vals = [[dict((int(p[0]), p[1]) for p in c)[s] for c in cs] for s in steps]
            mean = [sum(v) / len(v) for v in vals]
            ax.plot(steps, mean, marker=".", color=f"C{i}", label=f"{m} (n={len(cs)})")
            ax.fill_between(steps, [min(v) for v in vals], [max(v) for v in vals], color=f"C{i}", alpha=0.15)
        ax.set_xlabel("generator update")
        ax.set_ylabel("validation FD-digitsCNN" if ds == "digits" else "validation SWD")
        ax.set_yscale("log")
        ax.set_title(f"{ds}: distance to data (mean, range over seeds)", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = out / f"bench_curves_{ds}.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        paths.append(p)
    return paths


def _panels(recs, ds):
    """(title, samples) of seed 0 under the `updates` budget: methods in ORDER, then the teacher rows."""
    rows = [r for r in recs if r["seed"] == 0 and _dataset(r) == ds and "samples" in r.get("extra", {})]
    st = [r for r in rows if r["paper"] != "teacher" and r["extra"]["bench"]["budget"] == "updates"]
    st.sort(key=lambda r: ORDER.index(r["method"]) if r["method"] in ORDER else 99)
    te = sorted((r for r in rows if r["paper"] == "teacher"), key=lambda r: -r["nfe"])
    main = "FD-digitsCNN" if ds == "digits" else "SWD"

    def title(r):
        name = r["method"] if r["paper"] == "teacher" else f"{r['method']} ({r['nfe']:g} NFE)"
        return f"{name}\n{main} {r['metrics'][main]:.3g}"

    return [(title(r), r["extra"]["samples"]) for r in st + te]


def toy_scatter(recs, out: Path) -> Path | None:
    import torch

    from common.diffusion.tasks import DistillConfig, toy_mixtures

    plt = _plt()
    grid = [(ds, _panels(recs, ds)) for ds in TOY]
    grid = [(ds, p) for ds, p in grid if p]
    if not grid:
        return None
    ncol = max(len(p) for _, p in grid)
    fig, axes = plt.subplots(len(grid), ncol, figsize=(2.1 * ncol, 2.2 * len(grid)), squeeze=False)
    from benchmarks.diffusion import DATASETS

    for i, (ds, panels) in enumerate(grid):
        data = toy_mixtures(DistillConfig(**DATASETS[ds].toy))[0]
        real = data.sample(600, torch.Generator().manual_seed(0))
        for j in range(ncol):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(panels):
                ax.axis("off")
                continue
            title, x = panels[j]
            x = torch.tensor(x)
            ax.scatter(real[:, 0], real[:, 1], s=1, c="lightgray")
            ax.scatter(x[:, 0], x[:, 1], s=1, c="C0")
            lim = 3.0 if ds != "grid" else 5.5
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.set_title(title, fontsize=6)
            if j == 0:
                ax.set_ylabel(ds, fontsize=8)
    fig.tight_layout()
    p = out / "bench_samples_toy2d.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p


def digit_grids(recs, out: Path) -> Path | None:
    import torch
    from torchvision.utils import make_grid

    plt = _plt()
    panels = _panels(recs, "digits")
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(2.0 * len(panels), 2.3), squeeze=False)
    for ax, (title, x) in zip(axes[0], panels):
        x = torch.tensor(x).reshape(-1, 1, 8, 8).clamp(-1, 1)
        g = make_grid((x + 1) / 2, nrow=8, padding=1, pad_value=1.0)[0]
        ax.imshow(g, cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=6)
        ax.axis("off")
    fig.tight_layout()
    p = out / "bench_samples_digits.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


def make_figures(raw: Path, out: Path, smoke: bool = False) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    recs = _records(raw, smoke)
    return [p for p in [*curves(recs, out), toy_scatter(recs, out), digit_grids(recs, out)] if p is not None]
