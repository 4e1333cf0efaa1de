"""Learning curves from any run's metrics.jsonl.

    python -m results.plot runs/dmd2/toy2d/dmd2-seed0                      # every numeric key, one panel each
    python -m results.plot RUN1 RUN2 --keys loss_dm val_score --x gen_step --out curves.png

Each argument is a run folder (or a metrics.jsonl file); runs are overlaid, one colour per run, labelled by their
folder name. Non-numeric values and keys missing from a line are skipped. Writes a PNG (default
``<first run>/curves.png``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.config import UserInputError

SKIP = {"step", "time_s"}


def read_metrics(path: Path) -> list[dict]:
    p = path / "metrics.jsonl" if path.is_dir() else path
    if not p.is_file():
        raise UserInputError(f"run: {path} has no metrics.jsonl")
    rows = []
    for line in p.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line of a killed run
            continue
    return rows


def series(rows: list[dict], key: str, x: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        v, s = r.get(key), r.get(x)
        if isinstance(v, (int, float)) and isinstance(s, (int, float)) and math.isfinite(v):
            xs.append(s)
            ys.append(v)
    return xs, ys


def plot(runs: list[Path], keys: list[str] | None, x: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {run: read_metrics(run) for run in runs}
    if keys is None:
        keys = list(
            dict.fromkeys(
                k
                for rows in data.values()
                for r in rows
                for k, v in r.items()
                if k not in SKIP and k != x and isinstance(v, (int, float))
            )
        )
    if not keys:
        raise UserInputError(f"keys: no numeric metrics in {', '.join(map(str, runs))}")
    cols = min(3, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for run, rows in data.items():
            xs, ys = series(rows, key, x)
            if xs:
                ax.plot(xs, ys, label=run.name if run.is_dir() else run.parent.name, lw=1.2)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel(x, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    if len(runs) > 1:
        axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run folders or metrics.jsonl files")
    ap.add_argument("--keys", nargs="+", default=None, help="metrics to plot (default: every numeric key)")
    ap.add_argument("--x", default="step", help="x axis key (default step; e.g. gen_step)")
    ap.add_argument("--out", default=None, help="PNG path (default <first run>/curves.png)")
    args = ap.parse_args(argv)
    runs = [Path(r) for r in args.runs]
    first = runs[0] if runs[0].is_dir() else runs[0].parent
    out = plot(runs, args.keys, args.x, Path(args.out) if args.out else first / "curves.png")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    from common.cli import entry

    raise SystemExit(entry(main))
