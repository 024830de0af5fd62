"""One prediction as JSON (the service's answer, a JSONL line) and as a flat CSV row."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from stages.serving.metadata import ModelInfo


def classify_result(probabilities: np.ndarray, info: ModelInfo) -> dict[str, Any]:
    order = np.argsort(-probabilities, kind="stable")[: min(info.top_k, len(info.classes))]
    return {
        "class": info.classes[int(order[0])],
        "probability": float(probabilities[order[0]]),
        "top_k": [{"class": info.classes[int(i)], "probability": float(probabilities[i])} for i in order],
        "probabilities": {name: float(p) for name, p in zip(info.classes, probabilities, strict=True)},
    }


def detect_result(found: dict[str, np.ndarray], info: ModelInfo) -> dict[str, Any]:
    boxes = [
        {
            "class": info.classes[int(label)],
            "score": round(float(score), 6),
            "x_min": round(float(b[0]), 2),
            "y_min": round(float(b[1]), 2),
            "x_max": round(float(b[2]), 2),
            "y_max": round(float(b[3]), 2),
        }
        for b, score, label in zip(found["boxes"], found["scores"], found["labels"], strict=True)
    ]
    return {"boxes": boxes, "count": len(boxes)}


def segment_result(mask: np.ndarray, info: ModelInfo) -> dict[str, Any]:
    """The class map as one region per class present: its pixel count, share of the image, and
    COCO compressed RLE (``pycocotools.mask.decode({"size": [height, width], "counts": rle})``)."""
    from stages.dataprep.shapes import rle_encode

    height, width = mask.shape
    counts = np.bincount(mask.reshape(-1), minlength=len(info.classes))
    regions = [
        {
            "class": info.classes[index],
            "pixels": int(counts[index]),
            "fraction": round(float(counts[index]) / mask.size, 6),
            "rle": rle_encode(mask == index),
        }
        for index in np.flatnonzero(counts)
        if index < len(info.classes)
    ]
    return {"width": int(width), "height": int(height), "regions": regions}


def csv_row(source: str, result: dict[str, Any] | None, error: str | None, task: str) -> dict[str, Any]:
    """Flat columns: classify keeps class/probability/top-k; detect keeps the boxes as JSON text."""
    row: dict[str, Any] = {"file": source, "error": error or ""}
    if task == "classify":
        row["class"] = result["class"] if result else ""
        row["probability"] = result["probability"] if result else ""
        row["top_k"] = json.dumps(result["top_k"]) if result else ""
    elif task == "segment":
        shares = {r["class"]: r["fraction"] for r in result["regions"]} if result else {}
        row["classes"] = json.dumps(shares) if result else ""
    else:
        row["count"] = result["count"] if result else ""
        row["boxes"] = json.dumps(result["boxes"]) if result else ""
    return row
