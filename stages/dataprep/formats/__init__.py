"""Annotation-format readers: each turns a source folder into ``SourceScan`` items.

A new format is one module with a ``scan(root, data, ingest) -> SourceScan`` function, one
entry in ``READERS`` and one marker rule in ``detect_format``; everything after the scan
(hashing, headers, boxes to pixels, duplicates, the manifest) is shared in ``stages.ingest``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stages.core.errors import DataError
from stages.core.params import DataSection, IngestSection
from stages.dataprep.formats import coco, cvat, folder, labelstudio, masks, voc, yolo
from stages.dataprep.formats.base import BoxRecord, ShapeRecord, SourceItem, SourceScan, inside_root, rel

Reader = Callable[[Path, DataSection, IngestSection], SourceScan]

READERS: dict[str, Reader] = {
    "folder": folder.scan,
    "coco": coco.scan,
    "yolo": yolo.scan,
    "voc": voc.scan,
    "cvat": cvat.scan,
    "labelstudio": labelstudio.scan,
    "masks": masks.scan,
}
DETECTION_FORMATS = ("coco", "yolo", "voc", "cvat", "labelstudio", "masks")
TAG_FORMATS = ("cvat", "labelstudio")  # also carry image-level labels: they serve classification too

__all__ = [
    "DETECTION_FORMATS",
    "READERS",
    "TAG_FORMATS",
    "BoxRecord",
    "Detection",
    "ShapeRecord",
    "SourceItem",
    "SourceScan",
    "detect_format",
    "reader_for",
]

log = logging.getLogger("stages.dataprep.formats")


@dataclass(frozen=True)
class Detection:
    format: str
    evidence: str  # what was found, for the log and the report


def detect_format(root: Path, data: DataSection | None = None) -> Detection:
    """Find which annotation formats the source holds; exactly one detection format, or folder.

    Marker rules (each must see real annotation files, not just a folder name):
    voc: ``Annotations/`` or ``annotations/`` with ``.xml`` files; coco: a JSON with
    ``"images"`` and ``"annotations"`` keys at the root, in ``annotations/`` or in Roboflow
    split folders; yolo: ``labels/`` (or ``<split>/labels``) with ``.txt`` files beside
    ``images/``, or a dataset YAML with ``names``; cvat: an ``annotations.xml`` with CVAT's
    ``<annotations>``/``<version>`` at the root or one folder down; labelstudio: a root JSON
    list that reads like a Label Studio export (full or JSON-MIN); masks: PNG files in ``masks/``
    beside ``images/`` and a ``classes.txt``. Two matches are refused (which one is
    right is the user's call); none is the folder-per-class layout.
    """
    named = data.annotations if data is not None else None
    if named is not None and named.suffix.lower() in (".json", ".yaml", ".yml", ".xml"):
        suffix = named.suffix.lower()
        fmt = {".json": "coco", ".xml": "cvat"}.get(suffix, "yolo")
        if suffix == ".json" and labelstudio.looks_like_labelstudio(root / named):
            fmt = "labelstudio"
        return Detection(fmt, f"data.annotations names {named.as_posix()}")
    rules = (
        ("voc", _voc(root)),
        ("coco", _coco(root)),
        ("yolo", _yolo(root)),
        ("cvat", _cvat(root)),
        ("labelstudio", _labelstudio(root)),
        ("masks", masks.detected(root)),
    )
    found = {fmt: why for fmt, why in rules if why}
    if len(found) > 1:
        listed = "; ".join(f"{fmt}: {why}" for fmt, why in found.items())
        raise DataError(
            f"{root}: data.format is auto but the source holds {len(found)} annotation formats ({listed}); "
            f"set data.format to one of {', '.join(found)}."
        )
    if found:
        fmt, why = next(iter(found.items()))
        return Detection(fmt, why)
    return Detection(
        "folder",
        "no VOC XML, COCO JSON, YOLO labels, CVAT XML, Label Studio JSON or mask PNGs found: one folder per "
        "class",
    )


def reader_for(fmt: str, root: Path, data: DataSection | None = None) -> tuple[Detection, Reader]:
    """Resolve ``auto`` (logging what decided it) and return the reader."""
    if fmt == "auto":
        detection = detect_format(root, data)
        log.info("data.format auto: reading %s as '%s' (%s)", root, detection.format, detection.evidence)
    else:
        detection = Detection(fmt, "set by data.format")
    reader = READERS.get(detection.format)
    if reader is None:
        supported = ", ".join(sorted(READERS))
        raise DataError(
            f"{root}: the '{detection.format}' annotation format is not implemented (this version imports: "
            f"{supported}); convert the data to one of those or set data.format."
        )
    return detection, reader


def _voc(root: Path) -> str | None:
    folder = voc.annotation_dir(root)
    if folder is None:
        return None
    return f"{folder.name}/ holds {sum(1 for _ in folder.glob('*.xml'))} .xml files"


def _coco(root: Path) -> str | None:
    try:
        files = coco.find_files(root)
    except DataError:
        return "several COCO JSON files at the root"  # the reader says which to pick
    if not files:
        return None
    return f"COCO JSON {', '.join(path.relative_to(root).as_posix() for path, _ in files)}"


def _yolo(root: Path) -> str | None:
    parts = [
        (images, labels)
        for images, labels, _ in yolo.image_label_dirs(root)
        if labels.is_dir() and inside_root(root, labels)  # never walk a link out of the source
    ]
    labels = sum(1 for _, folder in parts for _ in folder.rglob("*.txt"))
    if labels:
        return f"{labels} .txt label files in {', '.join(f.relative_to(root).as_posix() for _, f in parts)}"
    yaml_file = yolo.find_yaml(root)
    if yaml_file is not None:
        return f"dataset YAML {yaml_file.name} with class names"
    return None


def _cvat(root: Path) -> str | None:
    files = cvat.find_files(root)
    return f"CVAT XML {', '.join(rel(root, f) for f in files)}" if files else None


def _labelstudio(root: Path) -> str | None:
    try:
        file = labelstudio.find_file(root)
    except DataError:
        return "several Label Studio JSON exports at the root"  # the reader says which to pick
    return f"Label Studio JSON {file.name}" if file is not None else None
