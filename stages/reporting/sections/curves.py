"""Curves: per-class precision-recall and F1-confidence (detection), or ROC, precision-recall and
the reliability diagram (classification), side by side. Segmentation scores class maps, not
scores: no curves, no section."""

from __future__ import annotations

from pathlib import Path

from stages.reporting import figures
from stages.reporting.inputs import ReportInputs
from stages.reporting.markdown import Section, figure_lines


def render(inputs: ReportInputs) -> Section | None:
    if inputs.task == "segment":
        return None
    section = Section("Curves")
    if inputs.task == "detect":
        intro = (
            "Per class at IoU 0.5: precision against recall, and F1 at each confidence "
            "threshold (where the curves peak is the threshold to deploy with)."
        )
        row = detection_figures(inputs)
    else:
        intro = (
            "One-vs-rest per class: ROC, precision-recall, and the reliability diagram (is a 0.9 "
            "confidence right 90% of the time? a bar below its red mark: over-confident there)."
        )
        row = classification_figures(inputs)
    section.lines += [intro, "", *figure_lines(row, inputs.here)]
    return section


def _notes(inputs: ReportInputs, key: str, label: str) -> dict[str, str]:
    """Legend notes per class, e.g. ``{"cat": "AUC 0.93"}``, from the per-class rows that have ``key``."""
    return {r["class"]: f"{label} {r[key]:.2f}" for r in inputs.per_class if r.get(key) is not None}


def detection_figures(inputs: ReportInputs) -> list[tuple[Path | None, str]]:
    pr = figures.class_curves(
        inputs.plot_rows("pr_curve.json"),
        "recall",
        "precision",
        inputs.fig_path("pr_curves.png"),
        "precision-recall (IoU 0.5)",
        "recall",
        "precision",
        notes=_notes(inputs, "ap50", "AP50"),
    )
    f1 = figures.class_curves(
        inputs.plot_rows("f1_confidence.json"),
        "confidence",
        "f1",
        inputs.fig_path("f1_confidence.png"),
        "F1 against confidence threshold",
        "confidence",
        "F1",
    )
    return [(pr, "precision-recall curves"), (f1, "F1-confidence curves")]


def classification_figures(inputs: ReportInputs) -> list[tuple[Path | None, str]]:
    roc = figures.class_curves(
        inputs.plot_rows("roc.json"),
        "fpr",
        "tpr",
        inputs.fig_path("roc_curves.png"),
        "ROC (one-vs-rest)",
        "false positive rate",
        "true positive rate",
        diagonal=True,
        notes=_notes(inputs, "roc_auc", "AUC"),
    )
    pr = figures.class_curves(
        inputs.plot_rows("pr_curve.json"),
        "recall",
        "precision",
        inputs.fig_path("pr_curves.png"),
        "precision-recall (one-vs-rest)",
        "recall",
        "precision",
        notes=_notes(inputs, "pr_auc", "AP"),
    )
    reliability = figures.reliability(
        inputs.plot_rows("calibration.json"), inputs.fig_path("reliability.png"), inputs.metrics.get("ece")
    )
    return [(roc, "ROC curves"), (pr, "precision-recall curves"), (reliability, "reliability diagram")]
