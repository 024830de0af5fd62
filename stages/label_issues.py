"""Stage ``label_issues``: suspected label errors in train and val, from out-of-fold scores.

How the folds, heads and ranking work: ``stages/engine/label_issues.py``. It never edits the
data: ``reports/label_issues.csv`` is a list to review, and a suspect is left out by adding its
path to the ``split.exclude`` file. Detection boxes are scored after training, by the
``box_issues`` stage (``stages/box_issues.py``); here detect writes an empty list and says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

from stages.core.cli import exit_with
from stages.core.contracts import read_classes, read_parquet, write_json
from stages.core.layout import Layout
from stages.core.params import Params
from stages.engine.label_issues import COLUMNS, CONFLICT, noise_rates, score_labels

log = logging.getLogger("stages.label_issues")
STAGE = "label_issues"
SCORED_SPLITS = ("train", "val")  # the test split stays untouched: it scores the model


@dataclass(frozen=True)
class LabelIssuesResult:
    scored: int
    suspects: int
    conflicts: int
    note: str = ""

    def __str__(self) -> str:
        if self.note:
            return self.note
        return (
            f"{self.suspects} suspected label errors among {self.scored} train and val images "
            f"({self.conflicts} in near-duplicate clusters with differing labels)"
        )


def run(params: Params) -> LabelIssuesResult:
    """Write ``reports/label_issues.csv`` (suspects, certain conflicts first) and ``label_issues.json``."""
    layout = Layout(params.paths)
    note = _skip_reason(params)
    if note:
        return _write_empty(layout, params, note)
    classes = read_classes(layout.classes)
    frame = (
        read_parquet(layout.manifest)
        .merge(read_parquet(layout.splits), on="image_id", suffixes=("_source", ""))
        .merge(read_parquet(layout.split_units), on="image_id")
    )
    rows = frame[frame["split"].isin(SCORED_SPLITS) & frame["label"].notna()]
    if rows["unit"].nunique() < 2:
        return _write_empty(layout, params, "fewer than 2 independent train/val images: nothing scored.")
    issues = score_labels(params, rows, classes)
    suspects = issues.suspects
    layout.label_issues.parent.mkdir(parents=True, exist_ok=True)
    suspects.to_csv(layout.label_issues, index=False, float_format="%.6f")
    conflicts = int((suspects["reason"] == CONFLICT).sum())
    summary = {
        "task": params.data.task,
        "note": "",
        "scored": len(issues.scores),
        "suspects": len(suspects),
        "conflicts": conflicts,
        "folds": issues.folds,
        "classes": issues.classes,
        "flagged_per_class": {
            c: int(((issues.scores["given"] == c) & issues.scores["issue"]).sum()) for c in issues.classes
        },
        "joint": [[round(float(v), 6) for v in row] for row in issues.joint],
        "noise_rates": [p | {"rate": round(p["rate"], 6)} for p in noise_rates(issues)],
    }
    write_json(summary, layout.label_issues_summary)
    log.info("wrote %s and %s", layout.label_issues, layout.label_issues_summary)
    return LabelIssuesResult(len(issues.scores), len(suspects), conflicts)


def _skip_reason(params: Params) -> str:
    if not params.label_issues.enabled:
        return "label_issues.enabled is false: no labels were scored."
    if params.data.task == "detect":
        return (
            "images are scored for classification only; detection boxes are scored by the box_issues "
            "stage (reports/box_issues.csv)."
        )
    if params.data.task == "segment":
        return (
            "images are scored for classification only; segmentation masks are not scored for label errors."
        )
    return ""


def _write_empty(layout: Layout, params: Params, note: str) -> LabelIssuesResult:
    """The same outputs with no rows, so dvc.yaml's outs and the report never depend on the task."""
    layout.label_issues.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(columns=COLUMNS).to_csv(layout.label_issues, index=False)
    write_json(
        {"task": params.data.task, "note": note, "scored": 0, "suspects": 0}, layout.label_issues_summary
    )
    log.info("%s", note)
    return LabelIssuesResult(0, 0, 0, note)


if __name__ == "__main__":
    exit_with(STAGE, run)
