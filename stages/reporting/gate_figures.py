"""The metric gate's figures (``pipelines.gate --plots``): this change against the base.

The gate reads and checks the numbers (from git or the DVC cache); these functions only draw
plain data they are handed, like every figure under ``stages/reporting``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

DPI = 110
BASE_COLOUR, NEW_COLOUR = "#888888", "#1f77b4"
# A metric's point value and its interval ends (None where it has no interval).
Point = tuple[float, float | None, float | None]


def metric_comparison(
    base: Mapping[str, Point], new: Mapping[str, Point], names: Sequence[str], path: Path, base_name: str
) -> Path:
    """Base and new point values with their intervals, one row per metric (a metric missing on a
    side has no dot there)."""
    fig, ax = plt.subplots(figsize=(7, 0.55 * len(names) + 1.5))
    sides = ((base, base_name, BASE_COLOUR, -0.15), (new, "this change", NEW_COLOUR, 0.15))
    for points, label, colour, shift in sides:
        for i, name in enumerate(names):
            if name not in points:
                continue
            value, low, high = points[name]
            y = i + shift
            if low is not None and high is not None:
                ax.plot([low, high], [y, y], color=colour, linewidth=2, alpha=0.6)
            ax.plot([value], [y], "o", color=colour, label=label if i == 0 else None)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, fontsize=8, frameon=False)
    ax.set_title("Metrics with bootstrap intervals: base vs this change", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


# A watched metric's change (new - base), its paired interval ends (None without) and its limit.
Change = tuple[float, float | None, float | None, float]


def change_intervals(changes: Mapping[str, Change], path: Path, base_name: str) -> Path:
    """One row per watched metric: the change against the base with its paired interval, zero,
    and the metric's limit (the worst change tolerated) as a red tick."""
    names = list(changes)
    fig, ax = plt.subplots(figsize=(7, 0.55 * len(names) + 1.5))
    ax.axvline(0.0, color=BASE_COLOUR, linewidth=1)
    for i, name in enumerate(names):
        change, low, high, limit = changes[name]
        if low is not None and high is not None:
            ax.plot([low, high], [i, i], color=NEW_COLOUR, linewidth=3, alpha=0.6)
        ax.plot([change], [i], "o", color=NEW_COLOUR, label="change, paired interval" if i == 0 else None)
        ax.plot([limit, limit], [i - 0.3, i + 0.3], color="#d62728", linewidth=2,
                label="limit (tolerance)" if i == 0 else None)  # fmt: skip
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel(f"this change - {base_name}, on the same images")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2, fontsize=8, frameon=False)
    ax.set_title("Watched metrics: change against the base", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def confusion_pair(
    old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]], path: Path, base_name: str
) -> Path:
    """The base's and this change's confusion matrices side by side, from DVC confusion rows
    (``{actual, predicted}`` per image), over the union of their classes."""
    rows = [*old, *new]
    classes = sorted({r["actual"] for r in rows} | {r["predicted"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.8))
    for ax, side, title in ((axes[0], old, base_name), (axes[1], new, "this change")):
        matrix = np.zeros((len(classes), len(classes)), dtype=int)
        for r in side:
            matrix[classes.index(r["actual"]), classes.index(r["predicted"])] += 1
        ax.imshow(matrix, cmap="Blues")
        for (i, j), count in np.ndenumerate(matrix):
            colour = "white" if count > matrix.max() / 2 else "black"
            ax.text(j, i, str(count), ha="center", va="center", fontsize=9, color=colour)
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
