"""Detection metrics for the ``evaluate`` stage (``data.task: detect``).

- Point values of mAP50 and mAP50-95 come from torchmetrics' ``MeanAveragePrecision``
  (pycocotools backend: COCO's 101-point interpolated AP, greedy matching by score, 100
  detections per image).
- Everything else (per-class AP, precision/recall at the chosen confidence, curves, the bootstrap)
  comes from ``Matches``: the same COCO matching done once per image in NumPy. An image's matches
  do not depend on other images, so a bootstrap resample only re-weights images, and AP per
  resample is a weighted cumulative sum (vectorised over resamples). ``numpy_map`` equals
  torchmetrics on the full set (checked on every run and in tests/test_detect_evaluate.py).

Predictions come from ``stages.engine.yolo.trainer.predict_boxes`` (ultralytics stays behind that module).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from stages.core.contracts import (
    DETECTION_PREDICTION_COLUMNS,
)
from stages.metrics.names import DETECT_HEADLINE

log = logging.getLogger("stages.metrics.detection")

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # COCO
RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCO's 101-point interpolation
MAX_DETECTIONS = 100
BACKGROUND = "background"


# --- matching ---------------------------------------------------------------------------------


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of xyxy boxes (no +1 pixel convention, as pycocotools)."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def coco_match(ious: np.ndarray, thresholds: np.ndarray = IOU_THRESHOLDS) -> np.ndarray:
    """``tp[d, t]`` for detections sorted by score (rows of ``ious``) against one image's truths.

    pycocotools' rule: each detection in turn takes the unmatched truth with the highest IoU at or
    above the threshold.
    """
    n_det, n_gt = ious.shape
    tp = np.zeros((n_det, len(thresholds)), dtype=bool)
    for t, threshold in enumerate(thresholds):
        taken = np.zeros(n_gt, dtype=bool)
        for d in range(n_det):
            best, best_iou = -1, min(threshold, 1 - 1e-10)
            for g in range(n_gt):
                if not taken[g] and ious[d, g] >= best_iou:
                    best, best_iou = g, ious[d, g]
            if best >= 0:
                taken[best] = True
                tp[d, t] = True
    return tp


@dataclass
class Matches:
    """Per-class detections (image index, score, TP per IoU threshold) and truth counts per image."""

    classes: list[str]
    n_images: int
    det_image: list[np.ndarray]  # per class, in COCO's order (image, then score descending)
    det_score: list[np.ndarray]
    det_tp: list[np.ndarray]  # (n, 10) bool
    gt_count: np.ndarray  # (n_images, n_classes)


def match_all(
    truths: list[dict[str, np.ndarray]], predictions: list[dict[str, np.ndarray]], classes: list[str]
) -> Matches:
    """COCO matching per image and class (``boxes`` xyxy, ``labels`` class index, ``scores``)."""
    n_classes = len(classes)
    images, scores, tps = ([[] for _ in range(n_classes)] for _ in range(3))
    gt_count = np.zeros((len(truths), n_classes), dtype=np.int64)
    for i, (truth, pred) in enumerate(zip(truths, predictions, strict=True)):
        gt_count[i] = np.bincount(truth["labels"], minlength=n_classes)[:n_classes]
        for c in np.unique(pred["labels"]):
            mask = pred["labels"] == c
            order = np.argsort(-pred["scores"][mask], kind="mergesort")[:MAX_DETECTIONS]
            boxes, score = pred["boxes"][mask][order], pred["scores"][mask][order]
            gt = truth["boxes"][truth["labels"] == c]
            tps[c].append(coco_match(box_iou(boxes, gt)))
            scores[c].append(score)
            images[c].append(np.full(len(score), i))
    empty_tp = np.zeros((0, len(IOU_THRESHOLDS)), dtype=bool)
    return Matches(
        classes,
        len(truths),
        [np.concatenate(x) if x else np.zeros(0, np.int64) for x in images],
        [np.concatenate(x) if x else np.zeros(0) for x in scores],
        [np.concatenate(x) if x else empty_tp for x in tps],
        gt_count,
    )


def class_ap(matches: Matches, c: int, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCO AP of class ``c`` per IoU threshold, for each row of image ``weights`` (resamples x images).

    Returns ``(ap, valid)``: ``ap`` is (resamples, 10); ``valid`` marks resamples where the class
    has truths (others are left out of the mean, as in COCO).
    """
    weights = np.atleast_2d(weights).astype(np.float64)
    n_gt = weights @ matches.gt_count[:, c]
    valid = n_gt > 0
    order = np.argsort(-matches.det_score[c], kind="mergesort")
    image, tp = matches.det_image[c][order], matches.det_tp[c][order]
    if not len(order):
        return np.zeros((len(weights), len(IOU_THRESHOLDS))), valid
    w = weights[:, image]  # (R, D)
    tp_cum = np.cumsum(w[:, :, None] * tp[None], axis=1)  # (R, D, T)
    fp_cum = np.cumsum(w[:, :, None] * ~tp[None], axis=1)
    recall = tp_cum / np.where(valid, n_gt, 1)[:, None, None]
    precision = np.where(tp_cum + fp_cum > 0, tp_cum / (tp_cum + fp_cum + np.spacing(1)), 0.0)
    precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]  # envelope
    # first index with recall >= each recall point, per (resample, threshold), in one searchsorted:
    r, d, t = recall.shape
    rows = np.moveaxis(recall, 1, 2).reshape(r * t, d) + 2.0 * np.arange(r * t)[:, None]
    points = RECALL_POINTS[None, :] + 2.0 * np.arange(r * t)[:, None]
    index = np.searchsorted(rows.ravel(), points.ravel(), side="left").reshape(r * t, -1)
    index -= d * np.arange(r * t)[:, None]
    prec_rows = np.moveaxis(precision, 1, 2).reshape(r * t, d)
    inside = index < d
    q = np.where(inside, np.take_along_axis(prec_rows, np.minimum(index, d - 1), axis=1), 0.0)
    return q.mean(axis=1).reshape(r, t), valid


def numpy_map(matches: Matches, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """mAP50 and mAP50-95 (mean over classes with truths) per weight row; all ones = the full set."""
    weights = np.ones((1, matches.n_images)) if weights is None else np.atleast_2d(weights)
    aps, valids = [], []
    for c in range(len(matches.classes)):
        ap, valid = class_ap(matches, c, weights)
        aps.append(ap)
        valids.append(valid)
    ap = np.stack(aps, axis=1)  # (R, C, T)
    valid = np.stack(valids, axis=1)  # (R, C)
    count = np.maximum(valid.sum(1), 1)
    map50 = np.where(valid, ap[:, :, 0], 0).sum(1) / count
    map50_95 = np.where(valid, ap.mean(2), 0).sum(1) / count
    return {"map50": map50, "map50_95": map50_95}


def precision_recall_at(matches: Matches, conf: float, weights: np.ndarray | None = None) -> dict:
    """Per-class and mean (over classes with truths) precision/recall at IoU 0.5 and score >= conf."""
    weights = np.ones((1, matches.n_images)) if weights is None else np.atleast_2d(weights)
    n_classes = len(matches.classes)
    precision = np.zeros((len(weights), n_classes))
    recall = np.zeros((len(weights), n_classes))
    valid = np.zeros((len(weights), n_classes), dtype=bool)
    for c in range(n_classes):
        n_gt = weights @ matches.gt_count[:, c]
        keep = matches.det_score[c] >= conf
        w = weights[:, matches.det_image[c][keep]]
        tp = (w * matches.det_tp[c][keep, 0]).sum(1)
        n_det = w.sum(1)
        precision[:, c] = np.where(n_det > 0, tp / np.where(n_det > 0, n_det, 1), 0.0)
        recall[:, c] = np.where(n_gt > 0, tp / np.where(n_gt > 0, n_gt, 1), 0.0)
        valid[:, c] = n_gt > 0
    count = np.maximum(valid.sum(1), 1)
    return {
        "precision": np.where(valid, precision, 0).sum(1) / count,
        "recall": np.where(valid, recall, 0).sum(1) / count,
        "per_class_precision": precision,
        "per_class_recall": recall,
    }


def torchmetrics_map(
    truths: list[dict[str, np.ndarray]], predictions: list[dict[str, np.ndarray]]
) -> dict[str, float]:
    """mAP50 / mAP50-95 from torchmetrics' MeanAveragePrecision (pycocotools backend)."""
    import torch
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(iou_type="bbox", box_format="xyxy", backend="pycocotools")

    def tensors(item: dict[str, np.ndarray], scores: bool) -> dict:
        out = {
            "boxes": torch.tensor(np.array(item["boxes"]), dtype=torch.float64).reshape(-1, 4),
            "labels": torch.tensor(np.array(item["labels"]), dtype=torch.int64),
        }
        if scores:
            out["scores"] = torch.tensor(np.array(item["scores"]), dtype=torch.float64)
        return out

    metric.update([tensors(p, True) for p in predictions], [tensors(t, False) for t in truths])
    result = metric.compute()
    return {"map50": float(result["map_50"]), "map50_95": float(result["map"])}


def bootstrap(matches: Matches, conf: float, resamples: int, confidence: float, seed: int) -> dict:
    """Percentile intervals of the headline metrics over resampled test images (seeded)."""
    rng = np.random.default_rng(seed)
    n = matches.n_images
    picks = rng.integers(0, n, size=(resamples, n))
    weights = np.zeros((resamples, n))
    np.add.at(weights, (np.repeat(np.arange(resamples), n), picks.ravel()), 1.0)
    samples: dict[str, list[np.ndarray]] = {k: [] for k in DETECT_HEADLINE}
    detections = max(1, max((len(s) for s in matches.det_score), default=1))
    chunk = max(1, int(4_000_000 // (detections * len(IOU_THRESHOLDS))))
    for start in range(0, resamples, chunk):
        w = weights[start : start + chunk]
        for name, values in {**numpy_map(matches, w), **precision_recall_at(matches, conf, w)}.items():
            if name in samples:
                samples[name].append(values)
    alpha = (1 - confidence) / 2
    out = {}
    for name, parts in samples.items():
        values = np.concatenate(parts)
        out[name] = (float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha)))
    return out


# --- curves and tables --------------------------------------------------------------------------


def per_class_rows(matches: Matches, conf: float) -> list[dict]:
    ones = np.ones((1, matches.n_images))
    at = precision_recall_at(matches, conf)
    rows = []
    for c, name in enumerate(matches.classes):
        ap, _ = class_ap(matches, c, ones)
        rows.append(
            {
                "class": name,
                "ap50": round(float(ap[0, 0]), 6),
                "ap50_95": round(float(ap[0].mean()), 6),
                "precision": round(float(at["per_class_precision"][0, c]), 6),
                "recall": round(float(at["per_class_recall"][0, c]), 6),
                "support": int(matches.gt_count[:, c].sum()),
            }
        )
    return rows


def pr_curve_rows(matches: Matches) -> list[dict]:
    """Interpolated precision at COCO's 101 recall points, IoU 0.5, per class with truths."""
    rows = []
    for c, name in enumerate(matches.classes):
        n_gt = matches.gt_count[:, c].sum()
        if not n_gt:
            continue
        order = np.argsort(-matches.det_score[c], kind="mergesort")
        tp = matches.det_tp[c][order, 0]
        tp_cum, fp_cum = np.cumsum(tp), np.cumsum(~tp)
        recall = tp_cum / n_gt
        precision = tp_cum / np.maximum(tp_cum + fp_cum, 1)
        precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
        index = np.searchsorted(recall, RECALL_POINTS, side="left")
        for point, i in zip(RECALL_POINTS, index, strict=True):
            value = float(precision[i]) if i < len(precision) else 0.0
            rows.append({"class": name, "recall": round(float(point), 4), "precision": round(value, 6)})
    return rows


def f1_confidence_rows(matches: Matches, steps: int = 101) -> list[dict]:
    rows = []
    grid = np.linspace(0, 1, steps)
    for c, name in enumerate(matches.classes):
        n_gt = matches.gt_count[:, c].sum()
        score, tp = matches.det_score[c], matches.det_tp[c][:, 0]
        for conf in grid:
            keep = score >= conf
            hits, n_det = tp[keep].sum(), keep.sum()
            p = hits / n_det if n_det else 0.0
            r = hits / n_gt if n_gt else 0.0
            f1 = 2 * p * r / (p + r) if p + r else 0.0
            rows.append({"class": name, "confidence": round(float(conf), 4), "f1": round(float(f1), 6)})
    return rows


def confusion_rows(
    truths: list[dict[str, np.ndarray]],
    predictions: list[dict[str, np.ndarray]],
    classes: list[str],
    conf: float,
) -> list[dict]:
    """Class-agnostic greedy matching at IoU 0.5 (score >= conf): confusions between classes show."""
    rows = []
    for truth, pred in zip(truths, predictions, strict=True):
        keep = pred["scores"] >= conf
        order = np.argsort(-pred["scores"][keep], kind="mergesort")
        boxes, labels = pred["boxes"][keep][order], pred["labels"][keep][order]
        tp = coco_match(box_iou(boxes, truth["boxes"]), np.array([0.5]))
        matched_gt = np.zeros(len(truth["boxes"]), dtype=bool)
        ious = box_iou(boxes, truth["boxes"])
        for d in range(len(boxes)):
            if tp[d, 0]:
                candidates = np.where(~matched_gt & (ious[d] >= 0.5), ious[d], -1)
                g = int(np.argmax(candidates))
                matched_gt[g] = True
                rows.append({"actual": classes[truth["labels"][g]], "predicted": classes[labels[d]]})
            else:
                rows.append({"actual": BACKGROUND, "predicted": classes[labels[d]]})
        for g in np.flatnonzero(~matched_gt):
            rows.append({"actual": classes[truth["labels"][g]], "predicted": BACKGROUND})
    return rows


def predictions_table(
    rows: pd.DataFrame,
    truths: list[dict[str, np.ndarray]],
    predictions: list[dict[str, np.ndarray]],
    classes: list[str],
    conf: float,
) -> pd.DataFrame:
    """One row per box at score >= conf: predictions (tp | fp) and truths (matched | missed), IoU 0.5."""
    records = []
    for (image_id, path), truth, pred in zip(
        zip(rows["image_id"], rows["path"], strict=True), truths, predictions, strict=True
    ):
        matched = np.zeros(len(truth["boxes"]), dtype=bool)
        keep = pred["scores"] >= conf
        for c in np.unique(np.concatenate([pred["labels"][keep], truth["labels"]])):
            mask = keep & (pred["labels"] == c)
            order = np.argsort(-pred["scores"][mask], kind="mergesort")
            boxes, scores = pred["boxes"][mask][order], pred["scores"][mask][order]
            gt_index = np.flatnonzero(truth["labels"] == c)
            ious = box_iou(boxes, truth["boxes"][gt_index])
            taken = np.zeros(len(gt_index), dtype=bool)
            for d in range(len(boxes)):
                candidates = np.where(~taken & (ious[d] >= 0.5), ious[d], -1.0)
                hit = len(gt_index) > 0 and candidates.max() >= 0.5
                if hit:
                    g = int(np.argmax(candidates))
                    taken[g] = True
                    matched[gt_index[g]] = True
                records.append(
                    (
                        image_id,
                        path,
                        "prediction",
                        classes[c],
                        float(scores[d]),
                        *boxes[d],
                        "tp" if hit else "fp",
                    )
                )
        for g, box in enumerate(truth["boxes"]):
            outcome = "matched" if matched[g] else "missed"
            records.append((image_id, path, "truth", classes[truth["labels"][g]], np.nan, *box, outcome))
    frame = pd.DataFrame.from_records(records, columns=DETECTION_PREDICTION_COLUMNS)
    return frame.astype({"image_id": "string", "path": "string", "kind": "string", "class_name": "string",
                         "outcome": "string", "score": "float64"})  # fmt: skip


def truth_arrays(rows: pd.DataFrame, boxes: pd.DataFrame, classes: list[str]) -> list[dict[str, np.ndarray]]:
    index = {name: i for i, name in enumerate(classes)}
    by_image = {k: g for k, g in boxes.groupby("image_id", sort=False)}
    out = []
    for image_id in rows["image_id"]:
        group = by_image.get(image_id)
        if group is None:
            out.append({"boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64)})
            continue
        out.append(
            {
                "boxes": group[["x_min", "y_min", "x_max", "y_max"]].to_numpy(np.float64),
                "labels": group["class_name"].map(index).to_numpy(np.int64),
            }
        )
    return out


def headline_metrics(
    matches: Matches,
    truths: list[dict[str, np.ndarray]],
    predictions: list[dict[str, np.ndarray]],
    conf: float,
    resamples: int,
    confidence: float,
    seed: int,
) -> dict[str, float]:
    """mAP from torchmetrics (checked against the bootstrap's matching), P/R at ``conf``, intervals."""
    reference = torchmetrics_map(truths, predictions)
    ours = {k: float(v[0]) for k, v in numpy_map(matches).items()}
    if any(abs(reference[k] - ours[k]) > 1e-4 for k in reference):
        log.warning("mAP from the bootstrap code %s differs from torchmetrics %s", ours, reference)
    at = precision_recall_at(matches, conf)
    metrics = {
        "map50": round(reference["map50"], 6),
        "map50_95": round(reference["map50_95"], 6),
        "precision": round(float(at["precision"][0]), 6),
        "recall": round(float(at["recall"][0]), 6),
    }
    if resamples:
        for name, (low, high) in bootstrap(matches, conf, resamples, confidence, seed).items():
            metrics[f"{name}_ci_low"] = round(low, 6)
            metrics[f"{name}_ci_high"] = round(high, 6)
    return metrics
