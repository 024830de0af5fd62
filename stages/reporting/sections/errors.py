"""Errors: the confusion matrix (of pixels, for segmentation), its most frequent confusions, then
the task's worst images."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from stages.reporting import figures
from stages.reporting.inputs import ReportInputs, read_json
from stages.reporting.markdown import Section, esc, figure_lines
from stages.reporting.sections import mistakes, segment_overlays

MOST_COMMON = 5


def render(inputs: ReportInputs) -> Section:
    section = Section("Errors")
    if inputs.task == "segment":
        section.lines += pixel_confusion(inputs)
        section.lines += segment_overlays.lines(inputs)
        return section
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


def pixel_confusion(inputs: ReportInputs) -> list[str]:
    """Segmentation: the confusion of every scored pixel (``plots/pixel_confusion.json``)."""
    found = read_json(inputs.layout.plots_dir / "pixel_confusion.json", {})
    if not isinstance(found, dict) or not found.get("classes"):
        return []
    labels = [str(c) for c in found["classes"]]
    matrix = np.asarray(found["matrix"], dtype=np.int64)
    lines = [
        "Confusion matrix of pixels (rows: true class, columns: predicted; each cell the per cent of "
        "the row's pixels; pixels marked ignore are not scored):",
        "",
    ]
    drawn = figures.confusion(matrix, labels, labels, inputs.fig_path("confusion_matrix.png"), as_share=True)
    lines += figure_lines([(drawn, "pixel confusion matrix")], inputs.here)
    common = most_common_confusions(matrix, labels)
    if common:
        total = max(int(matrix.sum()), 1)
        pairs = "; ".join(f"{esc(a)} as {esc(b)} ({n / total:.1%} of pixels)" for n, a, b in common)
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
