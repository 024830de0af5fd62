"""Errors: the confusion matrix, its most frequent confusions, then the task's worst images."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from stages.reporting import figures
from stages.reporting.inputs import ReportInputs
from stages.reporting.markdown import Section, esc, figure_lines
from stages.reporting.sections import mistakes

MOST_COMMON = 5


def render(inputs: ReportInputs) -> Section:
    section = Section("Errors")
    confusion_rows = inputs.plot_rows("confusion.json")
    if confusion_rows:
        section.lines += confusion(inputs, confusion_rows)
    if inputs.task == "detect":
        section.lines += mistakes.detection(inputs)
    else:
        section.lines += mistakes.classification(inputs)
    return section


def confusion(inputs: ReportInputs, rows: list[dict[str, Any]]) -> list[str]:
    frame = pd.DataFrame(rows)
    labels = confusion_labels(frame, inputs.per_class)
    matrix = (
        pd.crosstab(frame["actual"], frame["predicted"])
        .reindex(index=labels, columns=labels, fill_value=0)
        .to_numpy()
    )
    lines = ["Confusion matrix (rows: actual, columns: predicted; colour: share of the row):", ""]
    drawn = figures.confusion(matrix, labels, labels, inputs.fig_path("confusion_matrix.png"))
    lines += figure_lines([(drawn, "confusion matrix")], inputs.here)
    common = most_common_confusions(matrix, labels)
    if common:
        pairs = "; ".join(f"{esc(a)} as {esc(b)} ({n})" for n, a, b in common)
        lines += [f"Most frequent confusions: {pairs}.", ""]
    return lines


def confusion_labels(frame: pd.DataFrame, per_class: list[dict[str, Any]]) -> list[str]:
    """The per-class table's order, then classes only the confusion rows know, ``background`` last."""
    labels = [r["class"] for r in per_class]
    seen = list(dict.fromkeys([*frame["actual"], *frame["predicted"]]))
    extra = sorted(c for c in seen if c not in labels and c != "background")
    return labels + extra + (["background"] if "background" in seen else [])


def most_common_confusions(matrix: np.ndarray, labels: list[str]) -> list[tuple[int, str, str]]:
    """The off-diagonal cells with a count, most frequent first: (count, actual, predicted)."""
    off = [(int(matrix[i, j]), labels[i], labels[j]) for i, j in np.ndindex(matrix.shape) if i != j]
    return sorted((o for o in off if o[0] > 0), reverse=True)[:MOST_COMMON]
