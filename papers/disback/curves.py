"""Convergence measures of a distance-to-data curve, on the generator-step axis and on the total-compute axis.

A curve is a list of (generator step, distance) pairs measured during stage 2, starting at step 0 (the initial
generator G^0). DisBack's claim is about early convergence (paper Fig. 1, §5.2); we measure it as
- the area under the curve over the first W generator steps, divided by W (the mean distance over the window,
  trapezoid rule on the measured points; the curve must cover the window);
- the first measured generator step at which the distance is at or below a threshold (censored at the last
  measured step + 1 when it is never reached: `reached` says which).
Equal total compute: DisBack's stage 1 costs `stage1_steps` denoising updates of a copy of the teacher on G^0's
samples, the same network work as one critic-only iteration of stage 2. We count it as stage1_steps / ttur_ratio
generator-step equivalents (a stage-2 iteration with a generator update costs more than a stage-1 step, so this
charges DisBack less than its true cost only by the generator's own forward/backward on 1 of `ttur_ratio`
iterations; the measured CPU times of both stages are recorded next to it). On that axis the generator is G^0
during stage 1, so DisBack's curve is the distance of G^0 until the offset, then its stage-2 curve shifted right.
"""

from __future__ import annotations

import math

__all__ = ["auc", "steps_to_threshold", "shift_for_stage1", "value_at", "plot_curves"]


def _check(curve):
    if not curve:
        raise ValueError("empty curve")
    steps = [s for s, _ in curve]
    if steps != sorted(steps) or len(set(steps)) != len(steps):
        raise ValueError("curve steps must be strictly increasing")


def value_at(curve, step: float) -> float:
    """Linear interpolation of the curve at `step` (inside its range)."""
    _check(curve)
    if step < curve[0][0] or step > curve[-1][0]:
        raise ValueError(f"step {step} is outside the measured range [{curve[0][0]}, {curve[-1][0]}]")
    for (s0, v0), (s1, v1) in zip(curve, curve[1:]):
        if s0 <= step <= s1:
            return v0 + (v1 - v0) * (step - s0) / (s1 - s0)
    return curve[-1][1]


def auc(curve, window: float, start: float = 0.0) -> float:
    """Mean distance over generator steps [start, start + window]: trapezoid integral / window."""
    _check(curve)
    end = start + window
    if curve[0][0] > start or curve[-1][0] < end:
        raise ValueError(f"curve covers [{curve[0][0]}, {curve[-1][0]}], not the window [{start}, {end}]")
    pts = [(start, value_at(curve, start))] + [p for p in curve if start < p[0] < end] + [(end, value_at(curve, end))]
    area = sum((s1 - s0) * (v0 + v1) / 2 for (s0, v0), (s1, v1) in zip(pts, pts[1:]))
    return area / window


def steps_to_threshold(curve, threshold: float) -> tuple[float, bool]:
    """(first measured step with distance <= threshold, reached); censored at last step + 1 when never reached."""
    _check(curve)
    for s, v in curve:
        if v <= threshold:
            return float(s), True
    return float(curve[-1][0] + 1), False


def shift_for_stage1(curve, offset: float) -> list[tuple[float, float]]:
    """The curve on the total-compute axis: G^0's distance (the curve's first value) during stage 1, then shifted."""
    _check(curve)
    if offset < 0 or not math.isfinite(offset):
        raise ValueError(f"offset must be finite and >= 0, got {offset}")
    if offset == 0:
        return [(float(s), v) for s, v in curve]
    return [(0.0, curve[0][1])] + [(s + offset, v) for s, v in curve]


def plot_curves(path, groups: dict, title: str, threshold: float | None = None, window: float | None = None):
    """One figure: a line per curve; groups = {label: [curve, ...]} (one colour per label, one line per seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for c, (label, curves) in enumerate(groups.items()):
        for j, curve in enumerate(curves):
            xs, ys = zip(*curve)
            ax.plot(xs, ys, color=f"C{c}", lw=1.2, alpha=0.85, label=label if j == 0 else None)
    if threshold is not None:
        ax.axhline(threshold, color="gray", ls=":", lw=1, label=f"threshold {threshold:g}")
    if window is not None:
        ax.axvline(window, color="gray", ls="--", lw=0.8, label=f"AUC window {window:g}")
    ax.set_yscale("log")
    ax.set_xlabel("generator steps")
    ax.set_ylabel("distance to data (sliced W2)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
