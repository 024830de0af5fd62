"""The data contracts between stages (see docs/architecture.md): columns and parquet I/O."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

MANIFEST_COLUMNS = ["image_id", "path", "sha256", "width", "height", "label", "group", "split", "source"]
QUARANTINE_COLUMNS = ["path", "reason", "detail", "stage", "item", "annotation"]
BOX_COLUMNS = ["image_id", "class_name", "x_min", "y_min", "x_max", "y_max", "difficult", "truncated"]
# Polygons (``points``: flat x, y pixels of the displayed image) and masks (``counts``: COCO
# compressed RLE over the whole displayed image, manifest width x height); x_min..y_max: tight box.
SHAPE_COLUMNS = [
    "image_id", "class_name", "kind", "points", "counts", "iscrowd", "occluded", "z_order", "attributes",
    "x_min", "y_min", "x_max", "y_max",
]  # fmt: skip
SPLIT_NAMES = ("train", "val", "test")
# reports/predictions.parquet for detection: one row per box, predicted ("prediction", with a
# score; outcome tp/fp) or true ("truth"; outcome matched/missed), pixels of the original image.
DETECTION_PREDICTION_COLUMNS = [
    "image_id", "path", "kind", "class_name", "score", "x_min", "y_min", "x_max", "y_max", "outcome"
]  # fmt: skip


@dataclass(frozen=True)
class QuarantineEntry:
    """One dropped item: ``reason`` is a stable code, ``detail`` one sentence for people.

    ``path`` is relative to the source root: the image for an image or one of its boxes, the
    annotation file when no image is involved. ``item`` says what was dropped (``image``,
    ``box`` or ``annotation``: a whole annotation file), ``annotation`` where it was declared
    (``labels/a.txt line 3``, ``annotations.json annotation id 17``).
    """

    path: str
    reason: str
    detail: str
    stage: str
    item: str = "image"
    annotation: str = ""


def image_id_from_sha256(sha256: str) -> str:
    """Stable id from content: the same bytes get the same id in every run and on every machine."""
    return sha256[:16]


def manifest_frame(rows: list[dict]) -> pd.DataFrame:
    """A manifest with the contract's columns and dtypes, sorted by path for stable output."""
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    frame = frame.astype(
        {
            "image_id": "string",
            "path": "string",
            "sha256": "string",
            "width": "int64",
            "height": "int64",
            "label": "string",
            "group": "string",
            "split": "string",
            "source": "string",
        }
    )
    return frame.sort_values("path", kind="stable").reset_index(drop=True)


def quarantine_frame(entries: list[QuarantineEntry]) -> pd.DataFrame:
    frame = pd.DataFrame([asdict(e) for e in entries], columns=QUARANTINE_COLUMNS).astype("string")
    order = ["path", "item", "reason", "annotation", "detail"]
    return frame.sort_values(order, kind="stable").reset_index(drop=True)


def boxes_frame(rows: list[dict]) -> pd.DataFrame:
    """Boxes with the contract's columns (float pixels of the displayed image), in a stable order."""
    frame = pd.DataFrame(rows, columns=BOX_COLUMNS)
    frame = frame.astype(
        {
            "image_id": "string",
            "class_name": "string",
            "x_min": "float64",
            "y_min": "float64",
            "x_max": "float64",
            "y_max": "float64",
            "difficult": "bool",
            "truncated": "bool",
        }
    )
    order = ["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
    return frame.sort_values(order, kind="stable").reset_index(drop=True)


def shapes_frame(rows: list[dict]) -> pd.DataFrame:
    """Shapes with the contract's columns, in a stable order (``points`` is a list column)."""
    frame = pd.DataFrame(rows, columns=SHAPE_COLUMNS)
    frame["points"] = pd.Series(
        [list(p) if isinstance(p, list | tuple) else None for p in frame["points"]],
        index=frame.index,
        dtype=object,
    )
    frame = frame.astype(
        {
            "image_id": "string",
            "class_name": "string",
            "kind": "string",
            "counts": "string",
            "iscrowd": "bool",
            "occluded": "bool",
            "z_order": "int64",
            "attributes": "string",
            "x_min": "float64",
            "y_min": "float64",
            "x_max": "float64",
            "y_max": "float64",
        }
    )
    order = ["image_id", "class_name", "x_min", "y_min", "x_max", "y_max", "kind"]
    return frame.sort_values(order, kind="stable").reset_index(drop=True)


def split_hash(images: pd.DataFrame, boxes: pd.DataFrame | None = None) -> str:
    """Fingerprint of an evaluation set: image contents and labels (and boxes, for detection).

    Recorded with the metrics so a comparison between two runs (the metric gate) can tell that
    they were scored on the same images with the same answers; paths and order do not matter.
    """
    digest = hashlib.sha256()
    for sha, label in sorted(zip(images["sha256"].astype(str), images["label"].astype(str), strict=True)):
        digest.update(f"{sha}\t{label}\n".encode())
    if boxes is not None and len(boxes):
        sha_of = dict(zip(images["image_id"].astype(str), images["sha256"].astype(str), strict=True))
        rows = sorted(
            f"{sha_of.get(str(r.image_id), r.image_id)}\t{r.class_name}\t"
            f"{r.x_min:.2f}\t{r.y_min:.2f}\t{r.x_max:.2f}\t{r.y_max:.2f}"
            for r in boxes.itertuples()
        )
        digest.update("\n".join(rows).encode())
    return digest.hexdigest()[:16]


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)


def read_parquet(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


def write_json(data: object, path: Path) -> None:
    """Stable JSON (sorted keys, trailing newline) so DVC sees no change when nothing changed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_classes(path: Path) -> list[str]:
    return list(json.loads(path.read_text(encoding="utf-8")))
