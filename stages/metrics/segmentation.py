"""Semantic segmentation metrics for the ``evaluate`` stage (``data.task: segment``): pure NumPy.

Everything follows from one pixel confusion matrix per image (rows truth, columns prediction,
pixels whose truth is the ignore index left out). Metrics of any set of images come from the
sum of their matrices, so a bootstrap resample (a weight per image: how often it was drawn) is
one matrix product, ``weights @ confusions``, and the metric gate recomputes the same numbers
from the per-image matrices evaluate records (``stages/metrics/paired.py``).

Class averages run over the classes present in the scored set (in its truth or its predictions:
IoU and Dice have a non-zero denominator), as torchmetrics' ``multiclass_jaccard_index`` macro
average does; a class neither in the truth nor predicted is undefined, not 0 or 1, so a rare
class a resample does not draw neither drags the mean down nor lifts it. ``mean_accuracy``
averages recall over the classes in the truth. ``tests/test_segment_metrics.py`` checks the
point values against torchmetrics.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from stages.metrics.classification import resample_weights
from stages.metrics.names import SEGMENT_HEADLINE

IGNORE_INDEX = 255  # = stages.dataprep.semantic_masks.IGNORE_INDEX (metrics import no data code)
PER_CLASS = ("iou", "dice", "precision", "recall")
BLOCK = 250  # resamples per block (memory: BLOCK x classes^2 floats)
PREDICTION_COLUMNS = ["image_id", "path", "miou", "pixel_accuracy", "dice_macro", "pixels"]


# --- confusion matrices --------------------------------------------------------------------------


def confusion(
    truth: np.ndarray, prediction: np.ndarray, num_classes: int, ignore: int = IGNORE_INDEX
) -> np.ndarray:
    """``num_classes`` x ``num_classes`` pixel counts (int64; rows truth, columns prediction);
    pixels whose truth is ``ignore`` are skipped. A value outside the classes raises ValueError."""
    truth, prediction = np.asarray(truth), np.asarray(prediction)
    if truth.shape != prediction.shape:
        raise ValueError(f"truth {truth.shape} and prediction {prediction.shape} differ in shape")
    keep = truth != ignore
    t = truth[keep].astype(np.int64, copy=False)
    p = prediction[keep].astype(np.int64, copy=False)
    for name, values in (("truth", t), ("prediction", p)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} has class index {int(values.max())} outside 0..{num_classes - 1}")
    counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per class (last axis) of one or a stack of confusions (..., C, C): IoU, Dice, precision,
    recall (NaN where undefined), and ``pixels`` (truth), ``predicted``, ``union``."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    pixels, predicted = cm.sum(-1), cm.sum(-2)
    union = pixels + predicted - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "iou": np.where(union > 0, tp / union, np.nan),
            "dice": np.where(union > 0, 2 * tp / (pixels + predicted), np.nan),
            "precision": np.where(predicted > 0, tp / predicted, np.nan),
            "recall": np.where(pixels > 0, tp / pixels, np.nan),
            "pixels": pixels,
            "predicted": predicted,
            "union": union,
        }


def headline_values(cm: np.ndarray) -> dict[str, np.ndarray]:
    """The headline metrics of one or a stack of confusions (..., C, C); NaN where undefined
    (no scored pixel at all)."""
    cm = np.asarray(cm, dtype=np.float64)
    s = class_scores(cm)
    total = s["pixels"].sum(-1)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "miou": _nanmean(s["iou"]),
            "dice_macro": _nanmean(s["dice"]),
            "pixel_accuracy": np.where(total > 0, tp.sum(-1) / total, np.nan),
            "mean_accuracy": _nanmean(s["recall"]),
            "fw_iou": np.where(total > 0, (s["pixels"] * np.nan_to_num(s["iou"])).sum(-1) / total, np.nan),
        }


def _nanmean(values: np.ndarray) -> np.ndarray:
    defined = ~np.isnan(values)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(defined, values, 0.0).sum(-1) / defined.sum(-1)


def weighted(confusions: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(R, C, C): the summed confusion of each row of image ``weights`` (R x images)."""
    n, c, _ = confusions.shape
    flat = confusions.reshape(n, c * c).astype(np.float64)
    return (np.atleast_2d(np.asarray(weights, dtype=np.float64)) @ flat).reshape(-1, c, c)


def values(confusions: np.ndarray, weights: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Each named headline metric for each row of ``weights`` (resamples x images)."""
    found = headline_values(weighted(confusions, weights))
    return {name: found[name] for name in names}


def image_values(confusions: np.ndarray) -> dict[str, np.ndarray]:
    """Per image (n,): mIoU, pixel accuracy and Dice of its own pixels (to rank the worst)."""
    return headline_values(confusions)


# --- bootstrap -----------------------------------------------------------------------------------


def bootstrap(
    confusions: np.ndarray, resamples: int, confidence: float, seed: int
) -> tuple[dict[str, tuple[float, float]], dict[str, np.ndarray]]:
    """Percentile intervals over images resampled with replacement (seeded, the same draws as
    classification's ``resample_weights``): headline name -> (low, high), and per-class name
    -> (2, C) with NaN where a class is undefined in every resample."""
    n = len(confusions)
    weights = resample_weights(n, resamples, seed)
    headline: dict[str, list[np.ndarray]] = {name: [] for name in SEGMENT_HEADLINE}
    per_class: dict[str, list[np.ndarray]] = {name: [] for name in PER_CLASS}
    for start in range(0, resamples, BLOCK):
        cm = weighted(confusions, weights[start : start + BLOCK])
        for name, v in headline_values(cm).items():
            headline[name].append(v)
        scores = class_scores(cm)
        for name in PER_CLASS:
            per_class[name].append(scores[name])
    alpha = (1 - confidence) / 2
    intervals = {}
    for name, blocks in headline.items():
        samples = np.concatenate(blocks) if blocks else np.zeros(0)
        samples = samples[~np.isnan(samples)]
        if len(samples):
            intervals[name] = (float(np.quantile(samples, alpha)), float(np.quantile(samples, 1 - alpha)))
    class_intervals = {}
    for name, blocks in per_class.items():
        samples = np.concatenate(blocks) if blocks else np.zeros((0, confusions.shape[1]))
        class_intervals[name] = _nanquantile(samples, alpha)
    return intervals, class_intervals


def _nanquantile(samples: np.ndarray, alpha: float) -> np.ndarray:
    """(2, C) percentiles per column over its defined values; NaN for a column with none."""
    out = np.full((2, samples.shape[1]), np.nan)
    for c in range(samples.shape[1]):
        column = samples[:, c][~np.isnan(samples[:, c])]
        if len(column):
            out[:, c] = np.quantile(column, [alpha, 1 - alpha])
    return out


# --- everything evaluate writes ------------------------------------------------------------------


def _round(value: float) -> float | None:
    value = float(value)
    return None if np.isnan(value) else round(value, 6)


def summarise(
    confusions: np.ndarray, classes: list[str], resamples: int, confidence: float, seed: int
) -> tuple[dict[str, float | None], list[dict]]:
    """Headline metrics (``<name>_ci_low`` / ``_ci_high`` when ``resamples`` > 0) and the per-class
    rows (class, iou, dice, precision, recall with intervals, pixels, predicted), from one bootstrap."""
    total = confusions.sum(0)
    intervals, class_intervals = bootstrap(confusions, resamples, confidence, seed) if resamples else ({}, {})
    point = headline_values(total)
    metrics: dict[str, float | None] = {}
    for name in SEGMENT_HEADLINE:
        metrics[name] = _round(float(point[name]))
        if name in intervals:
            metrics[f"{name}_ci_low"], metrics[f"{name}_ci_high"] = map(_round, intervals[name])
    scores = class_scores(total)
    rows = []
    for c, name in enumerate(classes):
        row: dict = {"class": name}
        for metric in PER_CLASS:
            row[metric] = _round(scores[metric][c])
            if metric in class_intervals:
                row[f"{metric}_ci_low"] = _round(class_intervals[metric][0, c])
                row[f"{metric}_ci_high"] = _round(class_intervals[metric][1, c])
        row["pixels"] = int(scores["pixels"][c])
        row["predicted"] = int(scores["predicted"][c])
        row["images"] = int((confusions[:, c, :].sum(1) > 0).sum())  # images where the class is true
        rows.append(row)
    return metrics, rows


def predictions_frame(rows: pd.DataFrame, confusions: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """One row per image: image_id, path, its own mIoU / pixel accuracy / Dice, scored pixels and
    the IoU of each class (``iou_<class>``, NaN where the class is neither true nor predicted)."""
    own = image_values(confusions)
    iou = class_scores(confusions)["iou"]
    frame = pd.DataFrame(
        {
            "image_id": rows["image_id"].astype(str).to_numpy(),
            "path": rows["path"].astype(str).to_numpy(),
            "miou": own["miou"],
            "pixel_accuracy": own["pixel_accuracy"],
            "dice_macro": own["dice_macro"],
            "pixels": confusions.sum((1, 2)).astype(np.int64),
        }
    )
    for c, name in enumerate(classes):
        frame[f"iou_{name}"] = iou[:, c]
    return frame.astype({"image_id": "string", "path": "string"})


def worst_order(frame: pd.DataFrame) -> pd.DataFrame:
    """Images by mIoU, worst first (ties: lower pixel accuracy first, then image id)."""
    return frame.sort_values(["miou", "pixel_accuracy", "image_id"], na_position="first", kind="mergesort")


def confusion_plot_rows(total: np.ndarray, classes: list[str]) -> list[dict]:
    """Rows for DVC's ``confusion`` template, which counts rows: per true class 100 rows split
    over the predicted classes in proportion to its pixels (largest-remainder rounding), so a cell
    reads as the per cent of that class's pixels. Pixel counts themselves would be millions of
    rows; the exact counts are in ``pixel_confusion.json``. Classes with no true pixel: no rows."""
    rows = []
    for t, name in enumerate(classes):
        counts = np.asarray(total[t], dtype=np.float64)
        if counts.sum() <= 0:
            continue
        share = 100 * counts / counts.sum()
        whole = np.floor(share).astype(int)
        rest = 100 - whole.sum()
        whole[np.argsort(-(share - whole), kind="mergesort")[:rest]] += 1
        for p, times in enumerate(whole):
            rows += [{"actual": name, "predicted": classes[p]}] * int(times)
    return rows


def pixel_confusion(total: np.ndarray, classes: list[str]) -> dict:
    """The summed confusion in pixels, for the report's figure: {classes, matrix} (rows truth)."""
    return {"classes": list(classes), "matrix": np.asarray(total, dtype=np.int64).tolist()}


# --- sparse per-image matrices (the gate's records) ----------------------------------------------


def to_sparse(cm: np.ndarray) -> list[list[int]]:
    """The non-zero cells of one confusion as ``[truth, prediction, pixels]``."""
    t, p = np.nonzero(cm)
    return [[int(a), int(b), int(cm[a, b])] for a, b in zip(t, p, strict=True)]


def from_sparse(entries: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    for t, p, count in entries:
        cm[int(t), int(p)] += int(count)
    return cm
