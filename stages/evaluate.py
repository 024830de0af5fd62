"""Stage ``evaluate``: predict the held-out split and write metrics with bootstrap intervals.

Metrics come from scikit-learn and torchmetrics (``stages/metrics/classification.py``, with a
vectorised seeded bootstrap for the intervals); per-image predictions (scores and loss) are
saved so any metric can be recomputed without the model. Detection scores boxes
(``stages/metrics/detection.py``), segmentation pixels (``stages/metrics/segmentation.py``: one
confusion matrix per image, at the image's own size).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from stages.core.cli import exit_with
from stages.core.contracts import read_classes, read_parquet, split_hash, write_json, write_parquet
from stages.core.errors import UserError
from stages.core.layout import Layout
from stages.core.params import EvaluateSection, Params
from stages.metrics import segmentation
from stages.metrics.classification import (
    Options,
    confusion_rows,
    curves,
    predictions_frame,
    reliability,
    summarise,
)
from stages.metrics.paired import (
    classify_document,
    detect_document,
    per_image_path,
    segment_document,
    write_per_image,
)

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


def run(params: Params) -> EvaluateResult | DetectEvaluateResult | SegmentEvaluateResult:
    """Score the model on ``evaluate.split``; write metrics, predictions and plot data."""
    if params.data.task == "detect":
        return _evaluate_detector(params)
    if params.data.task == "segment":
        return _evaluate_segmenter(params)
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
    reset_segment_masks(layout)
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
    reset_segment_masks(layout)
    return DetectEvaluateResult(metrics, table)


@dataclass(frozen=True)
class SegmentEvaluateResult:
    metrics: dict
    predictions: pd.DataFrame

    def __str__(self) -> str:
        m = self.metrics
        low, high = m.get("miou_ci_low"), m.get("miou_ci_high")
        interval = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
        miou = "n/a" if m.get("miou") is None else f"{m['miou']:.3f}"
        return f"{m['split']} mIoU {miou}{interval} on {m['images']} images"


def _evaluate_segmenter(params: Params) -> SegmentEvaluateResult:
    """Predict the held-out split with models/segmenter.pt; score every image's pixels against its
    rasterised shapes, streamed (one image's masks at a time, plus the worst few kept for the report)."""
    from stages.dataprep.semantic_masks import MaskStore, segment_classes
    from stages.engine.device import resolve_device
    from stages.engine.segmentation.inference import predict_masks
    from stages.models.segmenters import load_segmenter

    started = time.perf_counter()
    layout = Layout(params.paths)
    model, meta = load_segmenter(layout.segmenter)
    classes: list[str] = list(meta["classes"])
    split = params.evaluate.split
    rows = split_rows(layout, split).reset_index(drop=True)
    ids = set(rows["image_id"].astype(str))
    shapes = read_parquet(layout.shapes)
    shapes = shapes[shapes["image_id"].astype(str).isin(ids)]
    data_classes = segment_classes(read_classes(layout.classes))
    if data_classes != classes:
        raise UserError(
            f"{layout.segmenter} was trained on classes {classes}, the data has {data_classes}; "
            "re-run train (dvc repro)."
        )
    store = MaskStore(layout.mask_cache, shapes, classes, params.train.segmenter.draw_order)
    device = resolve_device(params.train.device)
    files = [params.data.source / p for p in rows["path"]]
    keep = max(0, params.report.mistakes)
    worst = WorstImages(keep)
    confusions = np.zeros((len(rows), len(classes), len(classes)), dtype=np.int64)
    predicted = predict_masks(model, meta, files, device, params.train.feature_batch_size)
    facts = zip(
        rows["image_id"].astype(str).tolist(),
        rows["path"].astype(str).tolist(),
        rows["sha256"].astype(str).tolist(),
        rows["height"].astype(int).tolist(),
        rows["width"].astype(int).tolist(),
        strict=True,
    )
    for i, ((image_id, path, sha256, height, width), prediction) in enumerate(
        zip(facts, predicted, strict=True)
    ):
        truth = store.mask(image_id, sha256, height, width)
        if prediction.shape != truth.shape:
            raise UserError(
                f"the segmenter predicted a {prediction.shape} mask for {path} of {truth.shape} "
                "pixels; re-run train and evaluate."
            )
        confusions[i] = segmentation.confusion(truth, prediction, len(classes))
        worst.offer(i, float(segmentation.headline_values(confusions[i])["miou"]), truth, prediction)
    log.info("phase predict: %d images (%.1f s)", len(rows), time.perf_counter() - started)

    phase = time.perf_counter()
    cfg = params.evaluate
    headline, per_class = segmentation.summarise(
        confusions, classes, cfg.bootstrap, cfg.confidence, params.base.seed
    )
    boxes = read_parquet(layout.boxes)
    metrics: dict = {
        "task": "segment",
        **headline,
        "split": split,
        "images": len(rows),
        "split_hash": split_hash(rows, boxes[boxes["image_id"].astype(str).isin(ids)]),
        "ignore_index": segmentation.IGNORE_INDEX,
    }
    log.info("phase metrics: %d bootstrap resamples (%.1f s)", cfg.bootstrap, time.perf_counter() - phase)
    predictions = segmentation.predictions_frame(rows, confusions, classes)
    write_segment_outputs(layout, rows, confusions, classes, metrics, per_class, predictions, worst)
    return SegmentEvaluateResult(metrics, predictions)


class WorstImages:
    """The ``keep`` images with the lowest mIoU seen so far, with their masks (a bounded heap:
    memory stays at ``keep`` images whatever the split's size). Ties keep the earlier image."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.heap: list[tuple[float, int, np.ndarray, np.ndarray]] = []  # (-miou, -index, truth, pred)

    def offer(self, index: int, miou: float, truth: np.ndarray, prediction: np.ndarray) -> None:
        import heapq

        if not self.keep:
            return
        score = -1.0 if np.isnan(miou) else miou  # nothing scored: shown first
        item = (-score, -index, truth, prediction)
        if len(self.heap) < self.keep:
            heapq.heappush(self.heap, item)
        elif item[:2] > self.heap[0][:2]:
            heapq.heapreplace(self.heap, item)

    def items(self) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(image index, truth, prediction), worst first."""
        return [(-i, t, p) for _, i, t, p in sorted(self.heap, key=lambda x: x[:2], reverse=True)]


def write_segment_outputs(
    layout: Layout,
    rows: pd.DataFrame,
    confusions: np.ndarray,
    classes: list[str],
    metrics: dict,
    per_class: list[dict],
    predictions: pd.DataFrame,
    worst: WorstImages,
) -> None:
    """metrics.json, per_image.json, predictions.parquet, the plot data and the worst images' masks."""
    from PIL import Image

    total = confusions.sum(0)
    write_json(metrics, layout.metrics)
    write_per_image(
        segment_document(rows["image_id"].astype(str).tolist(), confusions, classes),
        per_image_path(layout.metrics),
    )
    write_parquet(predictions, layout.predictions)
    write_json(per_class, layout.plots_dir / "per_class.json")
    write_json(segmentation.confusion_plot_rows(total, classes), layout.plots_dir / "confusion.json")
    write_json(segmentation.pixel_confusion(total, classes), layout.plots_dir / "pixel_confusion.json")
    # dvc.yaml declares one plot set for every task; empty curve files keep `dvc plots` quiet.
    for name in ("roc", "pr_curve", "f1_confidence"):
        write_json([], layout.plots_dir / f"{name}.json")
    masks = reset_segment_masks(layout)
    shown = []
    for index, truth, prediction in worst.items():
        image_id = str(rows["image_id"].iloc[index])
        Image.fromarray(truth, "L").save(masks / f"{image_id}.truth.png")
        Image.fromarray(prediction, "L").save(masks / f"{image_id}.pred.png")
        shown.append(image_id)
    write_json(shown, masks / "index.json")


def reset_segment_masks(layout: Layout) -> Path:
    """An empty ``reports/segment_masks`` (every task writes it, so dvc.yaml can declare it once):
    segment fills it with the worst images' class maps (uint8 indices, ``<image_id>.truth.png`` and
    ``.pred.png``) for the report's overlays, so the report needs neither the shapes nor the model;
    ``index.json`` lists those images, worst first."""
    masks = layout.segment_masks
    masks.mkdir(parents=True, exist_ok=True)
    for old in [*masks.glob("*.png"), masks / "index.json"]:  # an earlier run's images must not linger
        old.unlink(missing_ok=True)
    write_json([], masks / "index.json")
    return masks


if __name__ == "__main__":
    exit_with(STAGE, run)
