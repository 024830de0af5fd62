"""Stage ``box_issues``: suspected box errors of the val split, from the detector's held-out predictions.

``data.task: detect`` only. The val split never trains the detector, so models/detector.pt's
predictions on it are held out; ``stages/engine/box_issues.py`` scores the given boxes against
them with cleanlab's ObjectLab (swapped class, badly placed box, missing box, spurious box).
Train images are not scored: an honest score there needs a detector that never saw them, K
YOLO trainings for K folds. Like ``label_issues`` it never edits the data: the list is for
review, and an image is left out through ``split.exclude``. For classification it writes the
same outputs empty, at once (no model is loaded).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from stages.core.cli import exit_with
from stages.core.contracts import read_parquet, write_json
from stages.core.layout import Layout
from stages.core.params import Params
from stages.engine.box_issues import COLUMNS, DESCRIPTIONS, ISSUE_TYPES, Thresholds, score_boxes, suspects

log = logging.getLogger("stages.box_issues")
STAGE = "box_issues"
SCORED_SPLIT = "val"  # held out from training; test stays for the model's score
TRAIN_NOTE = (
    "Only the val split is scored: its images never train the detector. Train images are not "
    "scored (an honest score there needs a detector that never saw them: K YOLO trainings)."
)


@dataclass(frozen=True)
class BoxIssuesResult:
    images: int
    boxes: int
    suspects: int
    note: str = ""

    def __str__(self) -> str:
        if self.note:
            return self.note
        return (
            f"{self.suspects} suspected box errors among {self.boxes} given boxes of {self.images} val images"
        )


def run(params: Params) -> BoxIssuesResult:
    """Write ``reports/box_issues.csv`` (suspect boxes, lowest quality first) and ``box_issues.json``."""
    layout = Layout(params.paths)
    note = _skip_reason(params)
    if note:
        return _write_empty(layout, params, note)
    from stages.dataprep.imaging import load_rgb
    from stages.engine.yolo.trainer import load_detector, predict_boxes
    from stages.metrics.detection import truth_arrays

    started = time.perf_counter()
    rows = val_rows(layout)
    if rows.empty:
        return _write_empty(layout, params, "the val split has no images: no boxes were scored.")
    model, meta = load_detector(layout.detector, layout.model_digest)
    classes: list[str] = meta.get("classes") or [model.names[i] for i in sorted(model.names)]
    boxes = read_parquet(layout.boxes)
    truths = truth_arrays(rows, boxes[boxes["image_id"].isin(set(rows["image_id"]))], classes)
    image_size, batch = int(meta.get("image_size", 640)), params.train.feature_batch_size
    predictions: list[dict[str, np.ndarray]] = []
    for start in range(0, len(rows), batch):  # streamed: one batch of decoded images at a time
        files = [params.data.source / p for p in rows["path"].iloc[start : start + batch]]
        images = [np.asarray(load_rgb(file)) for file in files]
        predictions += predict_boxes(model, images, image_size, params.train.device, batch=batch)
    log.info("predicted %d val images (%.1f s)", len(rows), time.perf_counter() - started)

    thresholds = thresholds_of(params)
    scores = score_boxes(rows[["image_id", "path"]], truths, predictions, classes, thresholds)
    listed = suspects(scores, thresholds)
    layout.box_issues.parent.mkdir(parents=True, exist_ok=True)
    listed.to_csv(layout.box_issues, index=False, float_format="%.6f")
    given = sum(len(t["labels"]) for t in truths)
    write_json(summary(params, len(rows), given, listed, thresholds, TRAIN_NOTE), layout.box_issues_summary)
    log.info("wrote %s and %s", layout.box_issues, layout.box_issues_summary)
    return BoxIssuesResult(len(rows), given, len(listed))


def val_rows(layout: Layout) -> pd.DataFrame:
    """The validated manifest's val rows, sorted by image id."""
    frame = read_parquet(layout.manifest).merge(
        read_parquet(layout.splits), on="image_id", suffixes=("_source", "")
    )
    return frame[frame["split"] == SCORED_SPLIT].sort_values("image_id").reset_index(drop=True)


def thresholds_of(params: Params) -> Thresholds:
    cfg = params.label_issues
    return Thresholds(confident=cfg.box_confident, low=cfg.box_low, suspect=cfg.box_threshold)


def summary(
    params: Params, images: int, given: int, listed: pd.DataFrame, thresholds: Thresholds, note: str
) -> dict:
    counts = listed["issue"].value_counts()
    return {
        "task": params.data.task,
        "note": note,
        "split": SCORED_SPLIT,
        "images": images,
        "boxes": given,
        "suspects": len(listed),
        "per_issue": {issue: int(counts.get(issue, 0)) for issue in ISSUE_TYPES},
        "descriptions": DESCRIPTIONS,
        "thresholds": {
            "confident": thresholds.confident,
            "low": thresholds.low,
            "suspect": thresholds.suspect,
        },
    }


def _skip_reason(params: Params) -> str:
    if params.data.task == "segment":
        return (
            "box issues are scored for data.task: detect only; segmentation masks are not scored for errors."
        )
    if params.data.task != "detect":
        return "box issues are scored for data.task: detect only (classification: see label_issues)."
    if not params.label_issues.enabled:
        return "label_issues.enabled is false: no boxes were scored."
    return ""


def _write_empty(layout: Layout, params: Params, note: str) -> BoxIssuesResult:
    """The same outputs with no rows, so dvc.yaml's outs and the report never depend on the task."""
    layout.box_issues.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(columns=COLUMNS).to_csv(layout.box_issues, index=False)
    write_json(
        {"task": params.data.task, "note": note, "images": 0, "boxes": 0, "suspects": 0},
        layout.box_issues_summary,
    )
    log.info("%s", note)
    return BoxIssuesResult(0, 0, 0, note)


if __name__ == "__main__":
    exit_with(STAGE, run)
