"""Classification metrics: point values from scikit-learn / torchmetrics, fast bootstrap intervals.

Point values come straight from the libraries. The bootstrap does not call them 1000 times:
a resample with replacement is the same as giving every image a weight (how often it was
drawn), and every metric here accepts such weights. ``batched_metrics`` computes all of them
for a whole block of weight vectors at once with numpy (confusion matrices by one matrix
product, ROC-AUC / average precision by cumulative sums over the sorted scores, ECE by the
same bins as torchmetrics). ``tests/test_evaluate_metrics.py`` checks it against the library
functions on resampled data, so both paths compute the same thing.

Macro averages run over the classes present in the data at hand (the test split, or one
bootstrap resample): precision, recall and F1 of a class with no images are undefined, not 0,
so a rare class that a resample happens not to draw does not drag ``f1_macro`` down (that
would bias its interval low and make the CI gate see regressions that are not there).
``recall_macro`` is then ``balanced_accuracy``. Threshold-free metrics (ROC-AUC, PR-AUC) are
likewise undefined for a class with no positives (or, for ROC-AUC, no negatives) and left out
of the macro average; a resample where no class is defined (possible only with tiny test sets)
is dropped from that metric's percentiles.

``label_metrics`` is the part computable from each image's label, prediction, confidence and
loss alone: the metric gate (``pipelines/gate.py``) recomputes it on the per-image records
evaluate writes (``stages/metrics/paired.py``), so both use one definition.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from stages.metrics.names import classify_headline

# scikit-learn, torch and torchmetrics are imported in the functions that call them, so importing
# this module (evaluate's --help, the numpy bootstrap) costs none of them.
PER_CLASS = ("precision", "recall", "f1")
BLOCK = 250  # resamples per vectorised block (memory: BLOCK x images floats per array)


@dataclass(frozen=True)
class Options:
    """What the metrics need besides the data (from ``params.evaluate``)."""

    top_k: int = 5
    bins: int = 15
    resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0


def normalise(probabilities: np.ndarray) -> np.ndarray:
    """float64 rows summing to 1 (softmax output in float32 is off by rounding)."""
    p = np.asarray(probabilities, dtype=np.float64)
    return p / p.sum(axis=1, keepdims=True)


def top_k_for(num_classes: int, top_k: int) -> int | None:
    """The k for top-k accuracy, or None when k >= classes (then it is trivially 1)."""
    return top_k if 1 < top_k < num_classes else None


def image_losses(y_true: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Per-image cross-entropy, clipped as ``sklearn.metrics.log_loss`` clips (mean = log loss)."""
    p = normalise(probabilities)
    eps = np.finfo(p.dtype).eps
    return -np.log(np.clip(p[np.arange(len(y_true)), y_true], eps, 1 - eps))


# --- point values (libraries) ---------------------------------------------------------------


def point_metrics(y_true: np.ndarray, probabilities: np.ndarray, options: Options) -> dict[str, float]:
    """Every headline metric on the whole split, from scikit-learn and torchmetrics."""
    import torch
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        log_loss,
        precision_recall_fscore_support,
        top_k_accuracy_score,
    )
    from torchmetrics.functional.classification import multiclass_calibration_error

    p = normalise(probabilities)
    num_classes = p.shape[1]
    labels = list(range(num_classes))
    y_pred = p.argmax(1)
    present = sorted(set(np.asarray(y_true).tolist()))  # macro over the classes in the split
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=present, average="macro", zero_division=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true" is expected here
        balanced = balanced_accuracy_score(y_true, y_pred)
    out = {"accuracy": accuracy_score(y_true, y_pred)}
    k = top_k_for(num_classes, options.top_k)
    if k is not None:
        out[f"top{k}_accuracy"] = top_k_accuracy_score(y_true, p, k=k, labels=labels)
    out |= {
        "balanced_accuracy": balanced,
        "precision_macro": precision,
        "recall_macro": recall,
        "f1_macro": f1,
        "roc_auc_macro": _nanmean(per_class_auc(y_true, p)["roc_auc"]),
        "pr_auc_macro": _nanmean(per_class_auc(y_true, p)["pr_auc"]),
        "log_loss": log_loss(y_true, p, labels=labels),
        "ece": float(
            multiclass_calibration_error(
                torch.tensor(p), torch.tensor(y_true), num_classes, n_bins=options.bins, norm="l1"
            )
        ),
    }
    return {name: float(value) for name, value in out.items()}


def per_class_auc(y_true: np.ndarray, probabilities: np.ndarray) -> dict[str, np.ndarray]:
    """One-vs-rest ROC-AUC and average precision per class (NaN where undefined)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    p = normalise(probabilities)
    roc, ap = np.full(p.shape[1], np.nan), np.full(p.shape[1], np.nan)
    for c in range(p.shape[1]):
        positive = y_true == c
        if positive.any():
            ap[c] = average_precision_score(positive, p[:, c])
            if not positive.all():
                roc[c] = roc_auc_score(positive, p[:, c])
    return {"roc_auc": roc, "pr_auc": ap}


# --- bootstrap (vectorised) -----------------------------------------------------------------


def resample_weights(n: int, resamples: int, seed: int) -> np.ndarray:
    """``resamples`` x ``n`` counts: how often each image is drawn in each resample (seeded)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(resamples, n))
    offsets = (np.arange(resamples) * n)[:, None]
    return np.bincount((picks + offsets).ravel(), minlength=resamples * n).reshape(resamples, n)


def batched_confusion(weights: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """B x k x k weighted confusion matrices (rows actual, columns predicted)."""
    pair = np.zeros((len(y_true), k * k))
    pair[np.arange(len(y_true)), y_true * k + y_pred] = 1
    return (weights @ pair).reshape(len(weights), k, k)


def batched_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """B x k precision, recall, F1 (0 where undefined, as ``zero_division=0``) and support."""
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support, predicted = cm.sum(2), cm.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        denominator = support + predicted
        f1 = np.where(denominator > 0, 2 * tp / denominator, 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def _grouped(weights: np.ndarray, scores: np.ndarray, descending: bool) -> tuple[np.ndarray, np.ndarray]:
    """Images sorted by score, then weights summed over tied scores: (order, group starts)."""
    order = np.argsort(-scores if descending else scores, kind="mergesort")
    ranked = scores[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    return order, starts


def batched_auc(weights: np.ndarray, positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Weighted ROC-AUC per weight row (ties count half), NaN without positives or negatives."""
    order, starts = _grouped(weights, scores, descending=False)
    w = weights[:, order]
    pos = np.add.reduceat(w * positive[order], starts, axis=1)
    neg = np.add.reduceat(w * ~positive[order], starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    total_pos, total_neg = pos.sum(1), neg.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (pos * (below + 0.5 * neg)).sum(1) / (total_pos * total_neg)
    return np.where((total_pos > 0) & (total_neg > 0), auc, np.nan)


def batched_average_precision(weights: np.ndarray, positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Weighted average precision (sklearn's step-wise sum), NaN without positives."""
    order, starts = _grouped(weights, scores, descending=True)
    w = weights[:, order]
    pos = np.add.reduceat(w * positive[order], starts, axis=1)
    neg = np.add.reduceat(w * ~positive[order], starts, axis=1)
    tp, fp = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    total = pos.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        ap = (pos * precision).sum(1) / total
    return np.where(total > 0, ap, np.nan)


def calibration_bins(confidence: np.ndarray, bins: int) -> np.ndarray:
    """Bin index per image, exactly as torchmetrics bins it (``bucketize(..., right=True) - 1``)."""
    import torch

    boundaries = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    return (torch.bucketize(torch.from_numpy(confidence), boundaries, right=True) - 1).numpy()


def top_k_hits(y_true: np.ndarray, probabilities: np.ndarray, k: int) -> np.ndarray:
    """Per image: is the label among the ``k`` highest scores (ties broken as top_k_accuracy_score)."""
    ranked = np.argsort(normalise(probabilities), axis=1, kind="mergesort")[:, ::-1][:, :k]
    return (ranked == y_true[:, None]).any(1)


def label_metrics(
    weights: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    num_classes: int,
    losses: np.ndarray | None = None,
    confidence: np.ndarray | None = None,
    bins: int | None = None,
    top_hits: tuple[int, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The metrics of each row of ``weights`` (B x images) that need no class scores: accuracy,
    ``top{k}_accuracy`` (from ``top_hits`` = (k, hit per image)), balanced accuracy, macro
    precision / recall / F1 over the classes present, and with ``losses`` log loss, with
    ``confidence`` and ``bins`` ECE. Returns name -> B values, and per-class P / R / F1 (B x k)."""
    weights = np.asarray(weights, dtype=np.float64)
    total = weights.sum(1)
    cm = batched_confusion(weights, y_true, y_pred, num_classes)
    scores = batched_class_scores(cm)
    present = scores["support"] > 0
    tp = np.diagonal(cm, axis1=1, axis2=2)
    out = {"accuracy": tp.sum(1) / total}
    if top_hits is not None:
        out[f"top{top_hits[0]}_accuracy"] = weights @ top_hits[1].astype(np.float64) / total
    recall = _present_mean(scores["recall"], present)
    out |= {
        "balanced_accuracy": recall,
        "precision_macro": _present_mean(scores["precision"], present),
        "recall_macro": recall,
        "f1_macro": _present_mean(scores["f1"], present),
    }
    if losses is not None:
        out["log_loss"] = weights @ losses / total
    if confidence is not None and bins is not None:
        onehot = np.zeros((len(y_true), bins + 1))
        onehot[np.arange(len(y_true)), calibration_bins(confidence, bins)] = 1
        correct = (y_pred == y_true).astype(np.float64)
        gap = weights @ (onehot * correct[:, None]) - weights @ (onehot * confidence[:, None])
        out["ece"] = np.abs(gap).sum(1) / total
    return out, {name: scores[name] for name in PER_CLASS}


def batched_metrics(weights: np.ndarray, y_true: np.ndarray, probabilities: np.ndarray, options: Options):
    """Every headline metric for each row of ``weights`` (B x images); returns name -> B values
    and the per-class precision / recall / F1 (B x classes)."""
    p = normalise(probabilities)
    k = p.shape[1]
    weights = np.asarray(weights, dtype=np.float64)
    y_pred = p.argmax(1)
    top = top_k_for(k, options.top_k)
    values, per_class = label_metrics(
        weights,
        y_true,
        y_pred,
        k,
        losses=image_losses(y_true, p),
        confidence=p.max(1),
        bins=options.bins,
        top_hits=None if top is None else (top, top_k_hits(y_true, p, top)),
    )
    roc = np.stack([batched_auc(weights, y_true == c, p[:, c]) for c in range(k)], axis=1)
    ap = np.stack([batched_average_precision(weights, y_true == c, p[:, c]) for c in range(k)], axis=1)
    values |= {"roc_auc_macro": _nanmean_rows(roc), "pr_auc_macro": _nanmean_rows(ap)}
    return values, per_class


def _present_mean(values: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Row means over the classes present in each resample (NaN when none is)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(present, values, 0.0).sum(1) / present.sum(1)


def bootstrap(
    y_true: np.ndarray, probabilities: np.ndarray, options: Options
) -> tuple[dict[str, tuple[float, float]], dict[str, np.ndarray]]:
    """Percentile intervals: headline name -> (low, high); per-class name -> (2 x classes)."""
    weights = resample_weights(len(y_true), options.resamples, options.seed)
    headline: dict[str, list[np.ndarray]] = {}
    per_class: dict[str, list[np.ndarray]] = {}
    for start in range(0, options.resamples, BLOCK):
        values, classes = batched_metrics(weights[start : start + BLOCK], y_true, probabilities, options)
        for name, v in values.items():
            headline.setdefault(name, []).append(v)
        for name, v in classes.items():
            per_class.setdefault(name, []).append(v)
    alpha = (1 - options.confidence) / 2
    intervals = {}
    for name, blocks in headline.items():
        values = np.concatenate(blocks)
        values = values[~np.isnan(values)]
        if len(values):
            intervals[name] = (float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha)))
    class_intervals = {
        name: np.quantile(np.concatenate(blocks), [alpha, 1 - alpha], axis=0)
        for name, blocks in per_class.items()
    }
    return intervals, class_intervals


# --- everything evaluate writes ---------------------------------------------------------------


def summarise(
    y_true: np.ndarray, probabilities: np.ndarray, classes: list[str], options: Options
) -> tuple[dict, list[dict]]:
    """Headline metrics and the per-class table, from one bootstrap."""
    intervals, class_intervals = bootstrap(y_true, probabilities, options) if options.resamples else ({}, {})
    return (
        compute_metrics(y_true, probabilities, options, intervals),
        per_class_table(y_true, probabilities, classes, options, class_intervals),
    )


def compute_metrics(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    options: Options,
    intervals: dict[str, tuple[float, float]] | None = None,
) -> dict:
    """Point values plus ``<name>_ci_low`` / ``<name>_ci_high`` (when resamples > 0), rounded."""
    points = point_metrics(y_true, probabilities, options)
    metrics: dict[str, float | None] = {}
    if intervals is None:
        intervals = bootstrap(y_true, probabilities, options)[0] if options.resamples else {}
    for name in classify_headline(points):
        metrics[name] = _round(points[name])
        if name in intervals:
            low, high = intervals[name]
            metrics[f"{name}_ci_low"], metrics[f"{name}_ci_high"] = _round(low), _round(high)
    return metrics


def per_class_table(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    classes: list[str],
    options: Options,
    intervals: dict[str, np.ndarray] | None = None,
) -> list[dict]:
    """One row per class: precision / recall / F1 with intervals, ROC-AUC, AP, support."""
    from sklearn.metrics import precision_recall_fscore_support

    p = normalise(probabilities)
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, p.argmax(1), labels=labels, average=None, zero_division=0
    )
    auc = per_class_auc(y_true, p)
    if intervals is None:
        intervals = bootstrap(y_true, p, options)[1] if options.resamples else {}
    rows = []
    for i, name in enumerate(classes):
        row: dict = {"class": name}
        for metric, values in (("precision", precision), ("recall", recall), ("f1", f1)):
            row[metric] = _round(values[i])
            if metric in intervals:
                row[f"{metric}_ci_low"] = _round(intervals[metric][0, i])
                row[f"{metric}_ci_high"] = _round(intervals[metric][1, i])
        row["roc_auc"] = _round(auc["roc_auc"][i])
        row["pr_auc"] = _round(auc["pr_auc"][i])
        row["support"] = int(support[i])
        rows.append(row)
    return rows


def curves(
    y_true: np.ndarray, probabilities: np.ndarray, classes: list[str], max_points: int = 200
) -> dict[str, list[dict]]:
    """DVC plot rows per class (one-vs-rest): ``roc`` {class, fpr, tpr}, ``pr_curve`` {class,
    recall, precision}, ``f1_confidence`` {class, confidence, f1}; at most ``max_points`` each."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    p = normalise(probabilities)
    roc, pr, f1 = [], [], []
    for c, name in enumerate(classes):
        positive = y_true == c
        if positive.any() and not positive.all():
            fpr, tpr, _ = roc_curve(positive, p[:, c])
            roc += [
                {"class": name, "fpr": _round(a), "tpr": _round(b)} for a, b in _thin(fpr, tpr, max_points)
            ]
        if positive.any():
            precision, recall, thresholds = precision_recall_curve(positive, p[:, c])
            pr += [
                {"class": name, "recall": _round(r), "precision": _round(q)}
                for r, q in _thin(recall, precision, max_points)
            ]
            with np.errstate(divide="ignore", invalid="ignore"):
                f = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
            f1 += [
                {"class": name, "confidence": _round(t), "f1": _round(v)}
                for t, v in _thin(thresholds, f[:-1], max_points)
            ]
    return {"roc": roc, "pr_curve": pr, "f1_confidence": f1}


def reliability(y_true: np.ndarray, probabilities: np.ndarray, bins: int) -> list[dict]:
    """Per confidence bin (torchmetrics' bins): mean confidence, accuracy and image count."""
    p = normalise(probabilities)
    confidence, correct = p.max(1), p.argmax(1) == y_true
    index = np.minimum(calibration_bins(confidence, bins), bins - 1)  # 1.0 joins the top bin for display
    rows = []
    for b in range(bins):
        inside = index == b
        if inside.any():
            rows.append(
                {
                    "bin_low": round(b / bins, 6),
                    "bin_high": round((b + 1) / bins, 6),
                    "confidence": _round(confidence[inside].mean()),
                    "accuracy": _round(correct[inside].mean()),
                    "images": int(inside.sum()),
                }
            )
    return rows


def _thin(x: np.ndarray, y: np.ndarray, max_points: int):
    if len(x) > max_points:
        keep = np.unique(np.linspace(0, len(x) - 1, max_points).round().astype(int))
        x, y = x[keep], y[keep]
    return zip(x, y, strict=True)


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(values[~np.isnan(values)].mean()) if (~np.isnan(values)).any() else float("nan")


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    defined = ~np.isnan(values)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(defined, values, 0).sum(1) / defined.sum(1)


def _round(value) -> float | None:
    value = float(value)
    return None if np.isnan(value) else round(value, 6)


def predictions_frame(
    rows: pd.DataFrame, y_true: np.ndarray, probabilities: np.ndarray, classes: list[str]
) -> pd.DataFrame:
    """One row per image: label, prediction, its confidence, the image's loss and every score."""
    p = normalise(probabilities)
    predicted = p.argmax(1)
    frame = pd.DataFrame(
        {
            "image_id": rows["image_id"].to_numpy(),
            "path": rows["path"].to_numpy(),
            "label": rows["label"].to_numpy(),
            "prediction": [classes[i] for i in predicted],
            "confidence": p.max(1),
            "loss": image_losses(y_true, p),
        }
    )
    for i, name in enumerate(classes):
        frame[f"score_{name}"] = p[:, i]
    return frame


def confusion_rows(predictions: pd.DataFrame) -> list[dict]:
    """Rows of {actual, predicted} for DVC's ``confusion`` plot template."""
    return [
        {"actual": a, "predicted": p}
        for a, p in zip(predictions["label"], predictions["prediction"], strict=True)
    ]
