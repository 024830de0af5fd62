"""Which boxes look wrong: the given boxes of held-out images scored against a detector's predictions.

Pure scoring, no model: the ``box_issues`` stage predicts the val split with the trained detector
(``stages.engine.yolo.trainer.predict_boxes``) and hands the boxes here. The val split never
trains the detector, so its predictions are held out (ultralytics still picks the best epoch on
val: its labels choose among checkpoints, they never move a weight).

cleanlab's ObjectLab (``cleanlab.object_detection.rank``) gives one score per box and issue type,
lower = more suspicious, in [0, 1]:

- **swap** (per given box): a confident prediction of another class sits on it;
- **badloc** (per given box): the best same-class prediction overlaps it only partly;
- **missing** (per confident prediction, cleanlab's "overlooked"): no given box of its class near it.

cleanlab has no score for a given box that no prediction supports at all; **spurious** is ours:
a box whose best overlapping prediction (any class, IoU >= ``SUPPORT_IOU``) stays below ``low``,
scored by how surprising the miss is: ``1 - recall x (1 - support / low)``, with the detector's
own recall of that class on the scored set (``spurious_scores``).
badloc is weighted the same way, by the share of the class's boxes the detector places well
(``placing_recall``): both fire on the detector's failures, so a weak detector (measured: val
mAP50 0.18) would otherwise fill the list with its own misplaced boxes. swap and missing need
a confident prediction and are left as cleanlab scores them. Each given box keeps its
lowest-scoring type; the suspects are every box scoring at most ``box_threshold``, lowest
first, with cleanlab's image score (its three types pooled, unweighted) alongside.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from stages.metrics.detection import box_iou

SWAP, BADLOC, MISSING, SPURIOUS = "swap", "badloc", "missing", "spurious"
ISSUE_TYPES = (SWAP, BADLOC, MISSING, SPURIOUS)
TIE_ORDER = (BADLOC, SPURIOUS, SWAP)  # a box no prediction speaks about scores 1.0 everywhere: badloc
DESCRIPTIONS = {
    SWAP: "swapped class: a confident prediction of another class covers the box",
    BADLOC: "badly placed: the best prediction of its class overlaps it only partly",
    MISSING: "missing box: a confident prediction with no given box of its class",
    SPURIOUS: "spurious box: no prediction of any class supports it",
}
SUPPORT_IOU = 0.1  # a prediction "supports" a given box from this IoU on (below: another object)
PREDICTION_FLOOR = 0.01  # predictions below this confidence are dropped before scoring (speed only)
BOX = ["x_min", "y_min", "x_max", "y_max"]
PRED_BOX = ["pred_x_min", "pred_y_min", "pred_x_max", "pred_y_max"]
COLUMNS = [
    "rank",
    "path",
    "image_id",
    "issue",
    "given",
    "suggested",
    "quality",
    "image_quality",
    *BOX,
    *PRED_BOX,
    "pred_score",
]


@dataclass(frozen=True)
class Thresholds:
    """cleanlab's probability thresholds, lowered for a fine-tuned detector's confidences."""

    confident: float = 0.5  # high_probability_threshold: predictions that may call a swap or a missing box
    low: float = 0.25  # low_probability_threshold: predictions that may place a box
    suspect: float = 0.5  # boxes scoring at most this are listed


def to_cleanlab(
    truths: list[dict[str, np.ndarray]], predictions: list[dict[str, np.ndarray]], num_classes: int
) -> tuple[list[dict], list[list[np.ndarray]]]:
    """Our per-image dicts (``boxes`` xyxy, ``labels``, ``scores``) in cleanlab's layout: labels as
    ``{"bboxes", "labels"}``, predictions as one ``(n, 5)`` array ``[x1, y1, x2, y2, score]`` per class."""
    labels = [
        {
            "bboxes": np.asarray(t["boxes"], np.float64).reshape(-1, 4),
            "labels": np.asarray(t["labels"], np.int64),
        }
        for t in truths
    ]
    preds = []
    for p in predictions:
        keep = p["scores"] >= PREDICTION_FLOOR
        boxes, scores, cls = p["boxes"][keep], p["scores"][keep], p["labels"][keep]
        preds.append(
            [
                np.column_stack([boxes[cls == c].reshape(-1, 4), scores[cls == c]]).astype(np.float64)
                for c in range(num_classes)
            ]
        )
    return labels, preds


def score_boxes(
    images: pd.DataFrame,
    truths: list[dict[str, np.ndarray]],
    predictions: list[dict[str, np.ndarray]],
    classes: list[str],
    thresholds: Thresholds = Thresholds(),
) -> pd.DataFrame:
    """One row per candidate (``COLUMNS``; every given box and every confident unmatched prediction),
    lowest quality first. ``images`` (image_id, path) is aligned with ``truths`` and ``predictions``."""
    from cleanlab.object_detection.rank import (
        compute_badloc_box_scores,
        compute_overlooked_box_scores,
        compute_swap_box_scores,
        pool_box_scores_per_image,
    )

    labels, preds = to_cleanlab(truths, predictions, len(classes))
    if not any(len(label["labels"]) for label in labels):
        return pd.DataFrame(columns=COLUMNS)
    swap = compute_swap_box_scores(
        labels=labels, predictions=preds, high_probability_threshold=thresholds.confident
    )
    badloc = compute_badloc_box_scores(
        labels=labels, predictions=preds, low_probability_threshold=thresholds.low
    )
    missing = compute_overlooked_box_scores(
        labels=labels, predictions=preds, high_probability_threshold=thresholds.confident
    )
    pooled = [pool_box_scores_per_image(s) for s in (swap, badloc, missing)]
    # cleanlab's image score: the geometric mean of the three pooled subtype scores (equal weights)
    image_quality = np.exp(sum(np.log(1e-100 + p) for p in pooled) / 3)
    supports = [support(t, p) for t, p in zip(truths, predictions, strict=True)]
    recall = class_recall(truths, supports, len(classes), thresholds.low)
    placed = placing_recall(truths, predictions, len(classes), thresholds.low)
    rows: list[dict] = []
    for i, (truth, pred) in enumerate(zip(truths, predictions, strict=True)):
        base = {"path": images["path"].iloc[i], "image_id": images["image_id"].iloc[i]}
        base["image_quality"] = float(image_quality[i])
        spurious = spurious_scores(truth["labels"], supports[i], recall, thresholds.low)
        badly = trusted(badloc[i], truth["labels"], placed)
        rows += _given_box_rows(base, truth, pred, (swap[i], badly, spurious), classes, thresholds)
        rows += _missing_rows(base, pred, missing[i], classes)
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    frame = (
        pd.DataFrame(rows).sort_values(["quality", "image_id", "issue"], kind="stable").reset_index(drop=True)
    )
    frame["rank"] = np.arange(1, len(frame) + 1)
    return frame[COLUMNS]


def suspects(scores: pd.DataFrame, thresholds: Thresholds = Thresholds()) -> pd.DataFrame:
    """The candidates at or below ``thresholds.suspect``, ranked again from 1."""
    chosen = scores[scores["quality"] <= thresholds.suspect].copy()
    chosen["rank"] = np.arange(1, len(chosen) + 1)
    return chosen.reset_index(drop=True)


def support(truth: dict[str, np.ndarray], pred: dict[str, np.ndarray]) -> np.ndarray:
    """Per given box: the highest confidence of any prediction overlapping it (IoU >= ``SUPPORT_IOU``)."""
    ious = box_iou(np.asarray(truth["boxes"], np.float64).reshape(-1, 4), pred["boxes"])
    scores = np.where(ious >= SUPPORT_IOU, pred["scores"][None, :], 0.0)
    return scores.max(axis=1) if scores.size else np.zeros(len(ious))


def class_recall(
    truths: list[dict[str, np.ndarray]], supports: list[np.ndarray], num_classes: int, low: float
) -> np.ndarray:
    """Per class: the share of given boxes some prediction above ``low`` supports (the detector's recall)."""
    labels = np.concatenate([np.asarray(t["labels"], np.int64) for t in truths])
    found = np.concatenate(supports) >= low
    total = np.bincount(labels, minlength=num_classes)
    return np.bincount(labels, weights=found, minlength=num_classes) / np.maximum(total, 1)


def placing_recall(
    truths: list[dict[str, np.ndarray]],
    predictions: list[dict[str, np.ndarray]],
    num_classes: int,
    low: float,
) -> np.ndarray:
    """Per class: the share of given boxes a same-class prediction above ``low`` matches at IoU >= 0.5."""
    labels, hit = [], []
    for truth, pred in zip(truths, predictions, strict=True):
        given = np.asarray(truth["labels"], np.int64)
        ious = box_iou(np.asarray(truth["boxes"], np.float64).reshape(-1, 4), pred["boxes"])
        same = (pred["labels"][None, :] == given[:, None]) & (pred["scores"][None, :] > low)
        labels.append(given)
        hit.append(((ious >= 0.5) & same).any(axis=1) if ious.size else np.zeros(len(given), bool))
    flat = np.concatenate(labels)
    total = np.bincount(flat, minlength=num_classes)
    return np.bincount(flat, weights=np.concatenate(hit), minlength=num_classes) / np.maximum(total, 1)


def trusted(scores: np.ndarray, labels: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """``1 - recall[class] x (1 - score)``: a badly placed box only counts as much as the detector
    places boxes of that class well (a detector that places few well disagrees with every box)."""
    return 1.0 - recall[np.asarray(labels, np.int64)] * (1.0 - np.asarray(scores, np.float64))


def spurious_scores(labels: np.ndarray, support: np.ndarray, recall: np.ndarray, low: float) -> np.ndarray:
    """``1 - recall[class] x (1 - support / low)`` below ``low``, else 1.

    A box the detector does not see is only suspicious when it sees most boxes of that class: with
    recall 0.95, an unsupported box scores 0.05; with recall 0.2 (a weak detector) it scores 0.8,
    and its misses do not crowd out the swaps and missing boxes.
    """
    labels = np.asarray(labels, np.int64)
    scores = 1.0 - recall[labels] * (1.0 - np.clip(support / low, 0.0, 1.0))
    return np.where(support < low, scores, 1.0)


def _given_box_rows(
    base: dict,
    truth: dict[str, np.ndarray],
    pred: dict[str, np.ndarray],
    scores: tuple[np.ndarray, np.ndarray, np.ndarray],
    classes: list[str],
    thresholds: Thresholds,
) -> list[dict]:
    """Each given box once, under its lowest-scoring issue type, with the prediction that decided it."""
    boxes = np.asarray(truth["boxes"], np.float64).reshape(-1, 4)
    ious = box_iou(boxes, pred["boxes"])
    swap, badloc, spurious = scores
    rows = []
    for j, (box, label) in enumerate(zip(boxes, truth["labels"], strict=True)):
        overlapping = ious[j] >= SUPPORT_IOU
        candidates = {SWAP: float(swap[j]), BADLOC: float(badloc[j]), SPURIOUS: float(spurious[j])}
        issue = min(candidates, key=lambda k: (candidates[k], TIE_ORDER.index(k)))
        if issue == SWAP:
            mask = (pred["labels"] != label) & (pred["scores"] > thresholds.confident)
        elif issue == BADLOC:
            mask = (pred["labels"] == label) & (pred["scores"] > thresholds.low) & (ious[j] > 0)
        else:
            mask = overlapping
        match = _best(ious[j], mask)
        rows.append(
            base
            | {
                "issue": issue,
                "given": classes[int(label)],
                "suggested": classes[int(pred["labels"][match])] if issue == SWAP and match >= 0 else "",
                "quality": candidates[issue],
            }
            | dict(zip(BOX, map(float, box), strict=True))
            | _prediction(pred, match)
        )
    return rows


def _missing_rows(
    base: dict, pred: dict[str, np.ndarray], missing: np.ndarray, classes: list[str]
) -> list[dict]:
    """Confident predictions no given box of its class accounts for (cleanlab: NaN = not one)."""
    kept = np.flatnonzero(pred["scores"] >= PREDICTION_FLOOR)  # the order cleanlab saw, class by class
    order = (
        np.concatenate([kept[pred["labels"][kept] == c] for c in range(len(classes))]) if len(kept) else kept
    )
    rows = []
    for index, score in zip(order, missing, strict=True):
        if np.isnan(score):
            continue
        rows.append(
            base
            | {
                "issue": MISSING,
                "given": "",
                "suggested": classes[int(pred["labels"][index])],
                "quality": float(score),
            }
            | dict.fromkeys(BOX, np.nan)
            | _prediction(pred, int(index))
        )
    return rows


def _best(ious: np.ndarray, mask: np.ndarray) -> int:
    """Index of the highest-IoU prediction among ``mask`` (-1: none)."""
    if not mask.any():
        return -1
    return int(np.flatnonzero(mask)[np.argmax(ious[mask])])


def _prediction(pred: dict[str, np.ndarray], index: int) -> dict:
    if index < 0:
        return dict.fromkeys([*PRED_BOX, "pred_score"], np.nan)
    return dict(zip(PRED_BOX, map(float, pred["boxes"][index]), strict=True)) | {
        "pred_score": float(pred["scores"][index])
    }
