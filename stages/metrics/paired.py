"""Per-image records for the metric gate: what each test image contributed, small enough for git.

The gate (``pipelines/gate.py``) compares two runs on the same images, so it needs each image's
outcome at both revisions, not only the totals in ``metrics.json``. ``evaluate`` writes them
next to the metrics as ``per_image.json`` (git-tracked, ``cache: false``, like
``metrics.json``), one image per line so a diff shows which images changed:

- classify: label and prediction (class indices), the prediction's confidence, the image's
  loss, and whether the label is in the top k (when top-k accuracy is reported);
- detect: the truth count per class and every detection's class, score and COCO match (a bit
  per IoU threshold 0.50:0.95, set where it is a true positive). mAP, precision and recall of
  any re-weighting of the images follow from these alone (``stages/metrics/detection.py``),
  so neither the boxes nor the model are needed;
- segment: the image's pixel confusion matrix as its non-zero cells ``[truth, prediction,
  pixels]``. Every segmentation metric of any re-weighting of the images follows from the
  weighted sum of these matrices (``stages/metrics/segmentation.py``).

``Records.values`` recomputes the headline metrics for rows of image weights (a bootstrap
resample is a weight vector); ``Records.degrade`` makes a copy where some images are lost
(the gate's "smallest detectable drop"). Numbers are rounded to 6 decimals, as in metrics.json.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from stages.core.errors import UserError
from stages.metrics import classification, detection, segmentation
from stages.metrics.names import CLASSIFY, DETECT, SEGMENT, SEGMENT_HEADLINE

PER_IMAGE_FILE = "per_image.json"
CHUNK = 4_000_000  # detection: floats per (resamples x detections x thresholds) block


def per_image_path(metrics_path: Path) -> Path:
    """Where evaluate writes the records: beside ``metrics.json``."""
    return metrics_path.with_name(PER_IMAGE_FILE)


# --- writing (evaluate) ---------------------------------------------------------------------------


def classify_document(
    image_ids: Sequence[str],
    y_true: np.ndarray,
    probabilities: np.ndarray,
    classes: list[str],
    options: classification.Options,
) -> dict[str, Any]:
    """The classification records of one evaluation (images in evaluate's order)."""
    p = classification.normalise(probabilities)
    predicted = p.argmax(1)
    losses = classification.image_losses(y_true, p)
    k = classification.top_k_for(len(classes), options.top_k)
    hits = classification.top_k_hits(y_true, p, k) if k is not None else None
    images = []
    for i, image_id in enumerate(image_ids):
        record: dict[str, Any] = {
            "id": str(image_id),
            "label": int(y_true[i]),
            "prediction": int(predicted[i]),
            "confidence": round(float(p[i].max()), 6),
            "loss": round(float(losses[i]), 6),
        }
        if hits is not None:
            record["in_top_k"] = bool(hits[i])
        images.append(record)
    return {
        "task": CLASSIFY,
        "classes": list(classes),
        "top_k": k,
        "calibration_bins": options.bins,
        "images": images,
    }


def detect_document(image_ids: Sequence[str], matches: detection.Matches, conf: float) -> dict[str, Any]:
    """The detection records: per image its truths per class and its matched detections."""
    bits = 1 << np.arange(len(detection.IOU_THRESHOLDS))
    detections: list[list[list]] = [[] for _ in image_ids]
    for c in range(len(matches.classes)):
        masks = (matches.det_tp[c] * bits).sum(1) if len(matches.det_tp[c]) else np.zeros(0, int)
        for image, score, mask in zip(matches.det_image[c], matches.det_score[c], masks, strict=True):
            detections[int(image)].append([c, round(float(score), 6), int(mask)])
    images = [
        {"id": str(image_id), "truths": matches.gt_count[i].tolist(), "detections": detections[i]}
        for i, image_id in enumerate(image_ids)
    ]
    return {
        "task": DETECT,
        "classes": list(matches.classes),
        "confidence_threshold": conf,
        "images": images,
    }


def segment_document(image_ids: Sequence[str], confusions: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """The segmentation records: per image its pixel confusion (non-zero cells only)."""
    images = [
        {"id": str(image_id), "confusion": segmentation.to_sparse(confusions[i])}
        for i, image_id in enumerate(image_ids)
    ]
    return {
        "task": SEGMENT,
        "classes": list(classes),
        "ignore_index": segmentation.IGNORE_INDEX,
        "images": images,
    }


def dumps(document: dict[str, Any]) -> str:
    """JSON with sorted header keys and one image per line (stable: same records, same bytes)."""
    head = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(document.items()) if k != "images"]
    images = ",\n".join(f"    {json.dumps(r, sort_keys=True)}" for r in document["images"])
    return "{\n" + ",\n".join([*head, f'  "images": [\n{images}\n  ]']) + "\n}\n"


def write_per_image(document: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(document), encoding="utf-8")


# --- reading and recomputing (the gate) -----------------------------------------------------------


@dataclass(frozen=True)
class ClassifyRecords:
    ids: tuple[str, ...]
    classes: tuple[str, ...]
    label: np.ndarray
    prediction: np.ndarray
    confidence: np.ndarray
    loss: np.ndarray
    top_k: int | None
    in_top_k: np.ndarray | None
    bins: int

    task = CLASSIFY

    def names(self) -> list[str]:
        """The metrics these records can recompute (the AUCs need every class score: not kept)."""
        top = [f"top{self.top_k}_accuracy"] if self.top_k is not None and self.in_top_k is not None else []
        return ["accuracy", *top, "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro",
                "log_loss", "ece"]  # fmt: skip

    def values(self, weights: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Each named metric for each row of ``weights`` (resamples x images)."""
        ece = "ece" in names  # binning imports torch (torchmetrics' exact bins): only when asked
        top = (self.top_k, self.in_top_k) if self.top_k is not None and self.in_top_k is not None else None
        out, _ = classification.label_metrics(
            np.atleast_2d(weights),
            self.label,
            self.prediction,
            len(self.classes),
            losses=self.loss,
            confidence=self.confidence if ece else None,
            bins=self.bins if ece else None,
            top_hits=top,
        )
        return {name: out[name] for name in names}

    def candidates(self, seed: int) -> np.ndarray:
        """Images that can get worse (predicted right), in a seeded order."""
        right = np.flatnonzero(self.label == self.prediction)
        return np.random.default_rng(seed).permutation(right)

    def degrade(self, images: np.ndarray) -> ClassifyRecords:
        """A copy where ``images`` are predicted as the next class (wrong; not in the top k)."""
        prediction = self.prediction.copy()
        prediction[images] = (self.label[images] + 1) % len(self.classes)
        hits = None if self.in_top_k is None else self.in_top_k.copy()
        if hits is not None:
            hits[images] = False
        return replace(self, prediction=prediction, in_top_k=hits)

    def reorder(self, order: np.ndarray) -> ClassifyRecords:
        pick = lambda a: None if a is None else a[order]  # noqa: E731
        return replace(
            self,
            ids=tuple(self.ids[i] for i in order),
            label=self.label[order],
            prediction=self.prediction[order],
            confidence=self.confidence[order],
            loss=self.loss[order],
            in_top_k=pick(self.in_top_k),
        )

    def truths(self) -> np.ndarray:
        return self.label


@dataclass(frozen=True)
class DetectRecords:
    ids: tuple[str, ...]
    classes: tuple[str, ...]
    matches: detection.Matches
    conf: float

    task = DETECT

    def names(self) -> list[str]:
        return ["map50", "map50_95", "precision", "recall"]

    def values(self, weights: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """mAP (COCO, as evaluate's bootstrap) and P/R at the confidence threshold per weight row."""
        weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        detections = max(1, max((len(s) for s in self.matches.det_score), default=1))
        chunk = max(1, CHUNK // (detections * len(detection.IOU_THRESHOLDS)))
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for start in range(0, len(weights), chunk):
            w = weights[start : start + chunk]
            found = {}
            if {"map50", "map50_95"} & set(names):
                found |= detection.numpy_map(self.matches, w)
            if {"precision", "recall"} & set(names):
                found |= detection.precision_recall_at(self.matches, self.conf, w)
            for name in names:
                parts[name].append(found[name])
        return {name: np.concatenate(v) for name, v in parts.items()}

    def candidates(self, seed: int) -> np.ndarray:
        """Images with at least one true positive (at IoU 0.5), in a seeded order."""
        hit = np.zeros(self.matches.n_images, dtype=bool)
        for image, tp in zip(self.matches.det_image, self.matches.det_tp, strict=True):
            hit[image[tp[:, 0]]] = True
        return np.random.default_rng(seed).permutation(np.flatnonzero(hit))

    def degrade(self, images: np.ndarray) -> DetectRecords:
        """A copy where every detection in ``images`` misses (their truths go undetected)."""
        lost = np.zeros(self.matches.n_images, dtype=bool)
        lost[images] = True
        tps = [tp & ~lost[image][:, None] for image, tp in zip(self.matches.det_image, self.matches.det_tp,
                                                                 strict=True)]  # fmt: skip
        return replace(self, matches=replace(self.matches, det_tp=tps))

    def reorder(self, order: np.ndarray) -> DetectRecords:
        where = np.empty_like(order)
        where[order] = np.arange(len(order))  # old image index -> new
        m = self.matches
        images, scores, tps = [], [], []
        for image, score, tp in zip(m.det_image, m.det_score, m.det_tp, strict=True):
            new = where[image]
            keep = np.lexsort((-score, new))  # COCO's order again: image, then score descending
            images.append(new[keep])
            scores.append(score[keep])
            tps.append(tp[keep])
        matches = detection.Matches(m.classes, m.n_images, images, scores, tps, m.gt_count[order])
        return replace(self, ids=tuple(self.ids[i] for i in order), matches=matches)

    def truths(self) -> np.ndarray:
        return self.matches.gt_count


@dataclass(frozen=True)
class SegmentRecords:
    ids: tuple[str, ...]
    classes: tuple[str, ...]
    confusions: np.ndarray  # (images, C, C) pixel counts, rows truth

    task = SEGMENT

    def names(self) -> list[str]:
        return list(SEGMENT_HEADLINE)

    def values(self, weights: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Each named metric of the weighted sum of the images' confusions, per weight row."""
        return segmentation.values(self.confusions, weights, names)

    def candidates(self, seed: int) -> np.ndarray:
        """Images with at least one pixel predicted right, in a seeded order."""
        right = np.trace(self.confusions, axis1=1, axis2=2) > 0
        return np.random.default_rng(seed).permutation(np.flatnonzero(right))

    def degrade(self, images: np.ndarray) -> SegmentRecords:
        """A copy where every right pixel of ``images`` is predicted as the next class instead."""
        confusions = self.confusions.copy()
        k = len(self.classes)
        for c in range(k):
            moved = confusions[images, c, c].copy()
            confusions[images, c, c] = 0
            confusions[images, c, (c + 1) % k] += moved
        return replace(self, confusions=confusions)

    def reorder(self, order: np.ndarray) -> SegmentRecords:
        return replace(self, ids=tuple(self.ids[i] for i in order), confusions=self.confusions[order])

    def truths(self) -> np.ndarray:
        """True pixels per image and class: equal on both sides when the masks are the same."""
        return self.confusions.sum(2)


Records = ClassifyRecords | DetectRecords | SegmentRecords


def parse(text: str, source: str) -> Records:
    """Records from a per_image.json text; ``UserError`` naming ``source`` when it is malformed."""
    try:
        doc = json.loads(text)
        if doc["task"] == DETECT:
            return _detect(doc)
        if doc["task"] == SEGMENT:
            return _segment(doc)
        return _classify(doc)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise UserError(
            f"{source} is not a per-image record file ({type(exc).__name__}: {exc}); "
            "re-run evaluate (dvc repro) to rewrite it."
        ) from exc


def _classify(doc: dict) -> ClassifyRecords:
    images = doc["images"]
    column = lambda key, kind: np.array([r[key] for r in images], dtype=kind)  # noqa: E731
    top_k = doc.get("top_k")
    hits = column("in_top_k", bool) if top_k is not None and images and "in_top_k" in images[0] else None
    return ClassifyRecords(
        ids=tuple(str(r["id"]) for r in images),
        classes=tuple(doc["classes"]),
        label=column("label", np.int64),
        prediction=column("prediction", np.int64),
        confidence=column("confidence", np.float64),
        loss=column("loss", np.float64),
        top_k=top_k,
        in_top_k=hits,
        bins=int(doc.get("calibration_bins", 15)),
    )


def _detect(doc: dict) -> DetectRecords:
    classes = list(doc["classes"])
    images = doc["images"]
    bits = 1 << np.arange(len(detection.IOU_THRESHOLDS))
    per_class: list[list[tuple[int, float, int]]] = [[] for _ in classes]
    for i, record in enumerate(images):
        for c, score, mask in record["detections"]:
            per_class[int(c)].append((i, float(score), int(mask)))
    det_image, det_score, det_tp = [], [], []
    for rows in per_class:
        det_image.append(np.array([r[0] for r in rows], dtype=np.int64))
        det_score.append(np.array([r[1] for r in rows], dtype=np.float64))
        masks = np.array([r[2] for r in rows], dtype=np.int64)
        det_tp.append((masks[:, None] & bits[None, :]) > 0)
    gt_count = np.array([r["truths"] for r in images], dtype=np.int64).reshape(len(images), len(classes))
    matches = detection.Matches(classes, len(images), det_image, det_score, det_tp, gt_count)
    return DetectRecords(
        tuple(str(r["id"]) for r in images), tuple(classes), matches, float(doc["confidence_threshold"])
    )


def _segment(doc: dict) -> SegmentRecords:
    classes = tuple(str(c) for c in doc["classes"])
    images = doc["images"]
    confusions = np.zeros((len(images), len(classes), len(classes)), dtype=np.int64)
    for i, record in enumerate(images):
        confusions[i] = segmentation.from_sparse(record["confusion"], len(classes))
    return SegmentRecords(tuple(str(r["id"]) for r in images), classes, confusions)
