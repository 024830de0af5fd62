"""Export the validated manifest, boxes and splits into ultralytics' dataset layout.

::

    <paths.processed>/yolo/
        data.yaml                      path, train/val/test folders, names in our class order
        images/<split>/<image_id><ext> hard links to the source images where safe, else copies
        labels/<split>/<image_id>.txt  "class cx cy w h" per box, normalised to the displayed image

Files are named by ``image_id`` (a content hash), so names are unique, ASCII and stable. The export
is incremental: an image already in place with the right size is not placed again, a label file
is rewritten only when its text changes, and files of images no longer in a split are removed.

Hard links save a second copy of the dataset (100 GB of images no longer need another 100 GB),
but a link shares the file with the user's source, so one is made only when nothing can write to
it: ``frame`` holds only images validate accepted (they decode cleanly), and ``rewrite_risk``
mirrors the one check by which ultralytics' dataset scan rewrites an image (a JPEG that does not
end with the EOI marker ``FF D9``: ``ultralytics.data.utils.check_image``). Any image at risk is
copied, as is every image when linking fails (another file system, no permission). An existing
file is always unlinked before it is replaced, never opened for writing, so an earlier export's
links can never carry a write into the source. No ultralytics import here.
"""

from __future__ import annotations

import errno
import logging
import os
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
    copied: int  # images placed as copies (at risk of an ultralytics rewrite, or linking failed)
    labels_written: int
    removed: int
    linked: int = 0  # images placed as hard links to the source

    def __str__(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.images.items())
        return (
            f"{counts} images; {self.linked} hard-linked, {self.copied} copied, {self.labels_written} "
            f"label files written, {self.removed} stale files removed -> {self.data_yaml}"
        )


_JPEG_MAGIC = b"\xff\xd8\xff"  # what Pillow's JPEG (and MPO) plugin accepts as a JPEG
_JPEG_EOI = b"\xff\xd9"


def rewrite_risk(file: Path) -> bool:
    """Would ultralytics' dataset check rewrite this file? Mirrors ``check_image``: a file Pillow
    opens as JPEG whose last two bytes are not the EOI marker is re-saved over itself.

    Judged on the bytes, conservatively: any file that starts like a JPEG (whatever its name or
    extension, MPO included) and does not end with ``FF D9`` is at risk; other formats are only
    read by ultralytics.
    """
    with file.open("rb") as handle:
        head = handle.read(len(_JPEG_MAGIC))
        if head != _JPEG_MAGIC:
            return False
        handle.seek(0, os.SEEK_END)
        if handle.tell() < len(_JPEG_MAGIC) + len(_JPEG_EOI):
            return True
        handle.seek(-len(_JPEG_EOI), os.SEEK_END)
        return handle.read(len(_JPEG_EOI)) != _JPEG_EOI


def place_image(original: Path, image: Path) -> str:
    """Put ``original`` at ``image``: ``"linked"``, ``"copied"`` or ``"kept"`` (already in place).

    A link only when ``rewrite_risk`` is false; a copy otherwise or when the link fails. The new
    file is made under a temporary name and renamed over ``image``, so an existing ``image`` (maybe
    a link to the source from an earlier export) is replaced, never written into.
    """
    risky = rewrite_risk(original)
    if image.is_file():
        if os.path.samefile(original, image):
            if not risky:
                return "kept"  # already a link, and nothing will write to it
        elif image.stat().st_size == original.stat().st_size:
            return "kept"  # a copy from an earlier export (or DVC's checkout of one): safe as it is
    image.parent.mkdir(parents=True, exist_ok=True)
    tmp = image.with_name(f".{image.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        how = "copied"
        if not risky:
            try:
                os.link(original, tmp)
                how = "linked"
            except OSError as exc:
                if exc.errno not in _LINK_REFUSED:
                    log.debug("hard link of %s failed (%s); copying", original, exc)
        if how == "copied":
            shutil.copyfile(original, tmp)
        os.replace(tmp, image)
    finally:
        tmp.unlink(missing_ok=True)
    return how


# Errors that only mean "no hard link here": another file system, no permission, not supported.
_LINK_REFUSED = {errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}


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
    placed = {"linked": 0, "copied": 0, "kept": 0}
    written = 0
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
            placed[place_image(source / str(path), image)] += 1
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
    if placed["linked"] or placed["copied"]:
        log.info(
            "export: %d images hard-linked, %d copied (at risk of an ultralytics rewrite, or linking "
            "failed), %d already in place",
            placed["linked"],
            placed["copied"],
            placed["kept"],
        )
    return ExportResult(data_yaml, counts, placed["copied"], written, removed, placed["linked"])
