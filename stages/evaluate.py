"""Stage ``evaluate``: predict the held-out split and write metrics with bootstrap intervals.

Metrics come from scikit-learn and torchmetrics (``stages/metrics/classification.py``, with a
vectorised seeded bootstrap for the intervals); per-image predictions (scores and loss) are
saved so any metric can be recomputed without the model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from stages.core.cli import exit_with
from stages.core.contracts import read_parquet, split_hash, write_json, write_parquet
from stages.core.errors import UserError
from stages.core.layout import Layout
from stages.core.params import EvaluateSection, Params
from stages.metrics.classification import (
    Options,
    confusion_rows,
    curves,
    predictions_frame,
    reliability,
    summarise,
)
from stages.metrics.paired import classify_document, detect_document, per_image_path, write_per_image

log = logging.getLogger("stages.evaluate")
STAGE = "evaluate"


@dataclass(frozen=True)
class EvaluateResult:
    metrics: dict
    predictions: pd.DataFrame

    def __str__(self) -> str:
        m = self.metrics
        low, high = m.get("accuracy_ci_low"), m.get("accuracy_ci_high")
        interval = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
        return f"{m['split']} accuracy {m['accuracy']:.3f}{interval} on {m['images']} images"


def options(params: Params) -> Options:
    section: EvaluateSection = params.evaluate
    return Options(
        top_k=section.top_k,
        bins=section.calibration_bins,
        resamples=section.bootstrap,
        confidence=section.confidence,
        seed=params.base.seed,
    )


def run(params: Params) -> EvaluateResult | DetectEvaluateResult:
    """Score the model on ``evaluate.split``; write metrics, predictions and plot data."""
    if params.data.task == "detect":
        return _evaluate_detector(params)
    from stages.engine.device import resolve_device  # torch: imported when a model runs
    from stages.engine.inference import predict
    from stages.models.checkpoints import load_checkpoint

    layout = Layout(params.paths)
    model, meta = load_checkpoint(layout.classifier)
    classes: list[str] = meta["classes"]
    rows = split_rows(layout, params.evaluate.split)
    device = resolve_device(params.train.device)
    probabilities = predict(
        model, [params.data.source / p for p in rows["path"]], device, params.train.feature_batch_size
    )
    index = {name: i for i, name in enumerate(classes)}
    y_true = rows["label"].map(index).to_numpy(dtype=np.int64)
    return write_outputs(layout, rows, y_true, probabilities, classes, params)


def split_rows(layout: Layout, split: str) -> pd.DataFrame:
    """The validated manifest's rows of one split, sorted by image id."""
    frame = read_parquet(layout.manifest).merge(
        read_parquet(layout.splits), on="image_id", suffixes=("_source", "")
    )
    rows = frame[frame["split"] == split].sort_values("image_id")
    if rows.empty:
        raise UserError(f"the {split} split is empty; set split.fractions so it gets images.")
    return rows


def write_outputs(
    layout: Layout,
    rows: pd.DataFrame,
    y_true: np.ndarray,
    probabilities: np.ndarray,
    classes: list[str],
    params: Params,
) -> EvaluateResult:
    """Everything evaluate writes, from labels and probabilities alone (no model needed)."""
    opts = options(params)
    headline, per_class = summarise(y_true, probabilities, classes, opts)
    metrics = {"task": "classify", **headline}
    metrics["split"] = params.evaluate.split
    metrics["images"] = len(rows)
    metrics["split_hash"] = split_hash(rows)
    predictions = predictions_frame(rows, y_true, probabilities, classes)

    write_json(metrics, layout.metrics)
    write_per_image(  # the metric gate's paired input (git-tracked)
        classify_document(rows["image_id"].tolist(), y_true, probabilities, classes, opts),
        per_image_path(layout.metrics),
    )
    write_parquet(predictions, layout.predictions)
    write_json(confusion_rows(predictions), layout.plots_dir / "confusion.json")
    write_json(per_class, layout.plots_dir / "per_class.json")
    for name, points in curves(y_true, probabilities, classes).items():
        write_json(points, layout.plots_dir / f"{name}.json")
    write_json(reliability(y_true, probabilities, opts.bins), layout.plots_dir / "calibration.json")
    return EvaluateResult(metrics, predictions)


@dataclass(frozen=True)
class DetectEvaluateResult:
    metrics: dict
    predictions: pd.DataFrame

    def __str__(self) -> str:
        m = self.metrics
        return (
            f"{m['split']} mAP50 {m['map50']:.3f} [{m.get('map50_ci_low', float('nan')):.3f}, "
            f"{m.get('map50_ci_high', float('nan')):.3f}], mAP50-95 {m['map50_95']:.3f} "
            f"on {m['images']} images"
        )


def _evaluate_detector(params: Params) -> DetectEvaluateResult:
    """Predict the held-out split with models/detector.pt; write metrics, plot data and boxes."""
    from stages.dataprep.imaging import load_rgb
    from stages.engine.yolo.trainer import load_detector, predict_boxes
    from stages.metrics import detection

    started = time.perf_counter()
    layout = Layout(params.paths)
    model, meta = load_detector(layout.detector, layout.model_digest)  # the git-tracked record
    classes: list[str] = meta.get("classes") or [model.names[i] for i in sorted(model.names)]
    conf = float(meta.get("conf", params.train.detector.conf))
    split = params.evaluate.split
    rows = split_rows(layout, split).reset_index(drop=True)
    all_boxes = read_parquet(layout.boxes)
    boxes = all_boxes[all_boxes["image_id"].isin(set(rows["image_id"]))]
    truths = detection.truth_arrays(rows, boxes, classes)
    image_size, batch = int(meta.get("image_size", 640)), params.train.feature_batch_size
    predictions: list[dict[str, np.ndarray]] = []
    # Streamed: at most one batch of decoded images is held at once, whatever the split's size.
    for start in range(0, len(rows), batch):
        files = [params.data.source / p for p in rows["path"].iloc[start : start + batch]]
        images = [np.asarray(load_rgb(file)) for file in files]
        predictions += predict_boxes(model, images, image_size, params.train.device, batch=batch)
        del images
    log.info("phase predict: %d images (%.1f s)", len(rows), time.perf_counter() - started)

    phase = time.perf_counter()
    matches = detection.match_all(truths, predictions, classes)
    cfg = params.evaluate
    metrics: dict = {
        "task": "detect",
        **detection.headline_metrics(
            matches, truths, predictions, conf, cfg.bootstrap, cfg.confidence, params.base.seed
        ),
        "split": split,
        "images": len(rows),
        "split_hash": split_hash(rows, boxes),
        # precision, recall, the confusion matrix and the box outcomes are all at this score
        "confidence_threshold": conf,
    }
    log.info(
        "phase metrics: precision/recall at confidence %.2f, %d bootstrap resamples (%.1f s)",
        conf,
        cfg.bootstrap,
        time.perf_counter() - phase,
    )

    table = detection.predictions_table(rows, truths, predictions, classes, conf)
    write_json(metrics, layout.metrics)
    write_per_image(detect_document(rows["image_id"].tolist(), matches, conf), per_image_path(layout.metrics))
    write_parquet(table, layout.predictions)
    write_json(detection.per_class_rows(matches, conf), layout.plots_dir / "per_class.json")
    write_json(detection.pr_curve_rows(matches), layout.plots_dir / "pr_curve.json")
    write_json(detection.f1_confidence_rows(matches), layout.plots_dir / "f1_confidence.json")
    write_json(
        detection.confusion_rows(truths, predictions, classes, conf), layout.plots_dir / "confusion.json"
    )
    # dvc.yaml declares one plot set for both tasks; an empty ROC file keeps `dvc plots` quiet.
    write_json([], layout.plots_dir / "roc.json")
    return DetectEvaluateResult(metrics, table)


if __name__ == "__main__":
    exit_with(STAGE, run)
