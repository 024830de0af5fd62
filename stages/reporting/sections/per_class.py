"""Per class: the metrics of each class (with intervals for classification) and the weakest class."""

from __future__ import annotations

from typing import Any

from stages.reporting import figures
from stages.reporting.inputs import ReportInputs
from stages.reporting.markdown import Section, esc, figure_lines, num, with_ci


def render(inputs: ReportInputs) -> Section:
    section = Section("Per class")
    rows = inputs.per_class
    if not rows:
        section.lines.append("No per-class table was written.")
        return section
    if inputs.task == "detect":
        table, metrics, key = detection_table(rows), ("ap50", "ap50_95", "recall"), "ap50_95"
    elif inputs.task == "segment":
        table, metrics, key = segmentation_table(rows), ("iou", "dice"), "iou"
    else:
        table, metrics, key = classification_table(rows), ("precision", "recall", "f1"), "f1"
    section.lines += table
    weakest = weakest_class(rows, key)
    if weakest is not None:
        section.lines += ["", f"Weakest class by {key}: **{esc(weakest['class'])}** ({weakest[key]:.3f})."]
    section.lines.append("")
    drawn = figures.per_class(rows, metrics, inputs.fig_path("per_class.png"))
    section.lines += figure_lines([(drawn, "per-class metrics")], inputs.here)
    return section


def detection_table(rows: list[dict[str, Any]]) -> list[str]:
    return [
        "| class | boxes | AP50 | AP50-95 | precision | recall |",
        "|---|---|---|---|---|---|",
        *(
            f"| {esc(r['class'])} | {r.get('support', '')} | {num(r.get('ap50'))} "
            f"| {num(r.get('ap50_95'))} "
            f"| {num(r.get('precision'))} | {num(r.get('recall'))} |"
            for r in rows
        ),
    ]


def segmentation_table(rows: list[dict[str, Any]]) -> list[str]:
    """Pixels of each class: IoU and Dice with their intervals, precision and recall."""
    return [
        "| class | true pixels | images | IoU | Dice | precision | recall |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {esc(r['class'])} | {r.get('pixels', '')} | {r.get('images', '')} | {with_ci(r, 'iou')} "
            f"| {with_ci(r, 'dice')} | {with_ci(r, 'precision')} | {with_ci(r, 'recall')} |"
            for r in rows
        ),
        "",
        "In brackets: bootstrap intervals over test images. n/a: the class is neither true nor "
        "predicted anywhere in the split (its IoU is undefined and left out of the mIoU).",
    ]


def classification_table(rows: list[dict[str, Any]]) -> list[str]:
    return [
        "| class | images | precision | recall | F1 | ROC-AUC | PR-AUC |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {esc(r['class'])} | {r['support']} | {with_ci(r, 'precision')} "
            f"| {with_ci(r, 'recall')} "
            f"| {with_ci(r, 'f1')} | {num(r.get('roc_auc'))} | {num(r.get('pr_auc'))} |"
            for r in rows
        ),
    ]


def weakest_class(rows: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """The class lowest on ``key`` among classes with a score and support; None when fewer than two
    are scored or all score the same (no class stands out)."""
    scored = [r for r in rows if r.get(key) is not None and r.get("support", r.get("pixels", 1))]
    if len(scored) > 1 and len({r[key] for r in scored}) > 1:
        return min(scored, key=lambda r: r[key])
    return None
