"""The strategy study's figure: the headline metric per fine-tuning strategy, and what it cost."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

DPI = 100


def strategy_comparison(
    summary: Mapping[str, Mapping[str, Any]],
    seeds: Mapping[str, Sequence[float]],
    metric: str,
    path: Path,
) -> Path:
    """Left: ``metric`` per strategy (mean ± sd bar, each seed a dot); right: median train wall
    time. ``summary`` holds each strategy's ``mean``, ``sd`` and ``wall_median`` in drawing order
    (``pipelines.strategy_study.summarise``); ``seeds`` its per-seed values."""
    names = list(summary)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    x = range(len(names))
    left.bar(
        x,
        [summary[n]["mean"] for n in names],
        yerr=[summary[n]["sd"] for n in names],
        color="#9ecae1",
        capsize=4,
    )
    for i, name in enumerate(names):
        left.scatter([i] * len(seeds[name]), seeds[name], color="#08519c", s=14, zorder=3)
    values = [v for name in names for v in seeds[name]]
    low, high = min(values), max(values)
    if low >= 0 and high <= 1:  # a rate: zoom in on the range the strategies span
        left.set_ylim(max(0.0, low - 0.1), min(1.0, high + 0.05))
    left.set_xticks(list(x), names, rotation=20)
    left.set_ylabel(metric)
    left.set_title(f"{metric}: mean ± sd over seeds (dots: single seeds)")
    right.bar(x, [summary[n]["wall_median"] for n in names], color="#fdae6b")
    right.set_xticks(list(x), names, rotation=20)
    right.set_ylabel("train wall time, median (s)")
    right.set_title("cost")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
