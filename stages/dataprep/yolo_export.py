"""Export the validated manifest, boxes and splits into ultralytics' dataset layout.

::

    <paths.processed>/yolo/
        data.yaml                      path, train/val/test folders, names in our class order
        images/<split>/<image_id><ext> copies of the source images (never links: see below)
        labels/<split>/<image_id>.txt  "class cx cy w h" per box, normalised to the displayed image

Files are named by ``image_id`` (a content hash), so names are unique, ASCII and stable. The export
is incremental: an image already in place with the right size is not copied again, a label file
is rewritten only when its text changes, and files of images no longer in a split are removed.
Images are copied, not linked: ultralytics rewrites a JPEG it finds truncated in place, and a
link would carry that write into the user's source. No ultralytics import here.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from stages.core.contracts import SPLIT_NAMES
from stages.core.errors import UserError

log = logging.getLogger("stages.dataprep.yolo_export")


@dataclass(frozen=True)
class ExportResult:
    data_yaml: Path
    images: dict[str, int]  # per split
    copied: int
    labels_written: int
    removed: int

    def __str__(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.images.items())
        return (
            f"{counts} images; {self.copied} copied, {self.labels_written} label files written, "
            f"{self.removed} stale files removed -> {self.data_yaml}"
        )


def yolo_rows(boxes: pd.DataFrame, width: int, height: int, class_index: dict[str, int]) -> list[str]:
    """Boxes (absolute corners) as ultralytics label rows ``class cx cy w h`` in [0, 1]."""
    rows = []
    corners = boxes[["class_name", "x_min", "y_min", "x_max", "y_max"]]
    for class_name, x_min, y_min, x_max, y_max in corners.itertuples(index=False, name=None):
        if class_name not in class_index:
            raise UserError(f"box class '{class_name}' is not in classes.json; re-run ingest and validate.")
        x0, x1 = max(0.0, x_min), min(float(width), x_max)
        y0, y1 = max(0.0, y_min), min(float(height), y_max)
        cx, cy = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height
        w, h = (x1 - x0) / width, (y1 - y0) / height
        rows.append(f"{class_index[class_name]} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return rows


def export_dataset(
    frame: pd.DataFrame, boxes: pd.DataFrame, classes: list[str], source: Path, target: Path
) -> ExportResult:
    """Write (or update) the ultralytics dataset for ``frame`` (manifest rows with a ``split`` column).

    Args:
        frame: manifest rows merged with the splits (``image_id``, ``path``, ``width``, ``height``,
            ``split``).
        boxes: the validated boxes of those images (other images' boxes are ignored).
        classes: class names in model order; label class ``i`` is ``classes[i]``.
        source: ``data.source``, the root the manifest paths are relative to (only read).
        target: the export folder (``Layout.yolo_dataset``).
    """
    if frame["image_id"].duplicated().any():
        dup = frame.loc[frame["image_id"].duplicated(), "path"].iloc[0]
        raise UserError(f"image_id of '{dup}' appears twice in the manifest; re-run validate.")
    class_index = {name: i for i, name in enumerate(classes)}
    by_image = {key: group for key, group in boxes.groupby("image_id", sort=False)}
    empty = boxes.iloc[0:0]
    copied = written = 0
    counts: dict[str, int] = {}
    keep: set[Path] = set()
    for split in SPLIT_NAMES:
        rows = frame[frame["split"] == split].sort_values("image_id")
        counts[split] = len(rows)
        columns = rows[["image_id", "path", "width", "height"]]
        for image_id, path, width, height in columns.itertuples(index=False, name=None):
            ext = Path(str(path)).suffix.lower() or ".jpg"
            image = target / "images" / split / f"{image_id}{ext}"
            label = target / "labels" / split / f"{image_id}.txt"
            keep.update((image, label))
            original = source / str(path)
            if not image.is_file() or image.stat().st_size != original.stat().st_size:
                image.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(original, image)
                copied += 1
            lines = yolo_rows(by_image.get(image_id, empty), int(width), int(height), class_index)
            text = "".join(f"{line}\n" for line in lines)
            if not label.is_file() or label.read_text(encoding="utf-8") != text:
                label.parent.mkdir(parents=True, exist_ok=True)
                label.write_text(text, encoding="utf-8")
                written += 1
    removed = 0
    for sub in ("images", "labels"):
        folder = target / sub
        for file in sorted(folder.rglob("*")) if folder.is_dir() else []:
            # ultralytics' labels/<split>.cache checks its own hash of the files, so it stays.
            if file.is_file() and file not in keep and file.suffix != ".cache":
                file.unlink()
                removed += 1
    if not counts["val"]:
        log.warning("the val split is empty: ultralytics validates (and picks best.pt) on the train split")
    data = {
        "path": str(target.resolve()),
        "train": "images/train",
        "val": "images/val" if counts["val"] else "images/train",
        "names": dict(enumerate(classes)),
        "nc": len(classes),
    }
    if counts["test"]:
        data["test"] = "images/test"
    data_yaml = target / "data.yaml"
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    if not data_yaml.is_file() or data_yaml.read_text(encoding="utf-8") != text:
        target.mkdir(parents=True, exist_ok=True)
        data_yaml.write_text(text, encoding="utf-8")
    return ExportResult(data_yaml, counts, copied, written, removed)
