"""What a format reader hands to ingest: items found, files ignored, items dropped.

Readers only parse annotations and resolve paths; they never open an image. Boxes stay in
the annotation's own units (pixels of the image the annotation refers to, or YOLO's
normalised fractions); ``stages.ingest`` reads each image header once and converts them to
pixels of the displayed image (see docs/architecture.md, "Import and validation").
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from stages.core.contracts import QuarantineEntry
from stages.core.errors import DataError

# Folder names that declare a predefined split: train/, val/, valid/, test/, train2017/...
_SPLIT_NAME = re.compile(r"^(train|val|valid|validation|test)(\d*)$", re.IGNORECASE)
_CANONICAL_SPLIT = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_NAME_MAX = 255  # bytes in one file name on Linux, macOS and Windows file systems


@dataclass(frozen=True)
class BoxRecord:
    """One box as the annotation states it: corners, in pixels or (``normalized``) fractions."""

    class_name: str
    x_min: float
    y_min: float
    x_max: float
    y_max: float
    where: str  # "labels/a.txt line 3", "annotations.json annotation id 17"
    normalized: bool = False
    difficult: bool = False
    truncated: bool = False


@dataclass(frozen=True)
class ShapeRecord:
    """One region as the annotation states it: a polygon or a whole-image COCO RLE mask.

    ``points`` is a flat ``x0, y0, x1, y1 ...`` in pixels or (``normalized``) fractions; a mask
    is COCO compressed RLE ``counts`` over ``mask_size`` (height, width) of the annotated
    image (vendor RLE is decoded by the reader). ``has_box``: the annotation also gave a box,
    so no tight box is derived from the shape for detection.
    """

    class_name: str
    where: str
    points: tuple[float, ...] | None = None
    counts: str | None = None
    mask_size: tuple[int, int] | None = None
    normalized: bool = False
    iscrowd: bool = False
    has_box: bool = False
    occluded: bool = False
    z_order: int = 0
    attributes: str = ""  # JSON object of the tool's per-shape attributes, "" when none


@dataclass(frozen=True)
class SourceItem:
    """One image named by the source, before any byte of it is read."""

    file: Path  # absolute, already checked to lie inside the source root
    rel_path: str  # posix path relative to the source root
    label: str | None
    split: str | None
    group: str | None
    source: str  # the annotation file or layout it came from
    # Detection only: the image's boxes (an empty tuple is a background image); None: no boxes.
    boxes: tuple[BoxRecord, ...] | None = None
    declared_size: tuple[int, int] | None = None  # width, height written in the annotation
    # The image the coordinates refer to when the file carries an EXIF rotation and nothing
    # else tells (ingest.box_orientation: auto): YOLO follows ultralytics (displayed).
    box_frame: Literal["stored", "displayed"] = "stored"
    shapes: tuple[ShapeRecord, ...] = ()  # polygons and masks, in the same units as the boxes


@dataclass
class SourceScan:
    items: list[SourceItem] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # non-image files, noted not quarantined
    quarantine: list[QuarantineEntry] = field(default_factory=list)
    classes: list[str] | None = None  # detection: class order defined by the format
    warnings: list[str] = field(default_factory=list)  # sentences for the validation report


def inside_root(root: Path, candidate: Path) -> bool:
    """True when ``candidate`` (after resolving symlinks and ``..``) stays under ``root``."""
    try:
        candidate.resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return False
    return True


def refuse_outside_folder(root: Path, folder: Path) -> None:
    """Refuse, before walking it, a folder the import needs that is a link out of the source."""
    if folder.is_dir() and not inside_root(root, folder):
        raise DataError(
            f"{rel(root, folder)}/ is a link to a folder outside the source folder; copy its files into "
            "data.source instead (nothing outside it is read)."
        )


def rel(root: Path, path: Path) -> str:
    """Posix path relative to the source root (the form every output uses)."""
    return path.relative_to(root).as_posix()


def split_of(folder_name: str) -> str | None:
    """``train``, ``val`` or ``test`` for a folder that declares a predefined split."""
    match = _SPLIT_NAME.match(folder_name)
    return _CANONICAL_SPLIT[match.group(1).lower()] if match else None


def is_split_folder(path: Path) -> bool:
    return path.is_dir() and split_of(path.name) is not None


def named_annotation_file(root: Path, annotations: Path, what: str) -> Path:
    """The file ``data.annotations`` names, or a one-sentence error saying it is not usable."""
    file, problem = locate(root, [root], annotations.as_posix())
    if file is None:
        shown = annotations.as_posix()
        shown = shown if len(shown) <= 80 else f"{shown[:60]}..."
        where = {
            "outside_source": "outside the source folder",
            "name_too_long": "a name longer than the 255 bytes a file name can have",
        }.get(problem or "", "not found")
        raise DataError(
            f"{root}: data.annotations = {shown} is {where}; name {what} inside the source folder, "
            "relative to it."
        )
    return file


def problem_detail(problem: str, annotation: str, name: str, looked: str) -> str:
    """The quarantine sentence for a name ``locate`` could not turn into a file (``annotation names ...``)."""
    shown = repr(name) if len(name) <= 80 else repr(name[:60] + "...")
    if problem == "outside_source":
        return f"{annotation} {shown}, which points outside the source folder; it was not opened."
    if problem == "name_too_long":
        return (
            f"{annotation} {shown}, a file name over 255 bytes, which no file system can hold; "
            "fix the name in the annotation."
        )
    return f"{annotation} {shown}, which is not in {looked}."


def locate(root: Path, bases: list[Path], name: str) -> tuple[Path | None, str | None]:
    """Find the file an annotation names under the first base folder that has it.

    Returns ``(file, None)``, or ``(None, "outside_source")`` when the name is absolute or
    only resolves outside the root (nothing outside is ever looked at), ``(None,
    "name_too_long")`` when a part of it is over 255 bytes, or ``(None, "missing_file")``.
    """
    clean = name.strip().replace("\\", "/")
    if not clean:
        return None, "missing_file"
    if "://" in clean or re.match(r"^[A-Za-z]:/", clean) or PurePosixPath(clean).is_absolute():
        return None, "outside_source"
    if any(len(part.encode("utf-8", "surrogateescape")) > _NAME_MAX for part in PurePosixPath(clean).parts):
        return None, "name_too_long"
    escaped = False
    for base in bases:
        candidate = base / PurePosixPath(clean)
        if not inside_root(root, candidate):
            escaped = True
            continue
        try:
            found = candidate.is_file()
        except OSError:  # a path over the file system's limits, a permission problem ...
            continue
        if found:
            return _tidy(root, candidate), None
    return None, "outside_source" if escaped else "missing_file"


def _tidy(root: Path, candidate: Path) -> Path:
    """``root/a/../b.jpg`` -> ``root/b.jpg`` when no link changes that; always spelt from ``root``.

    Only the part below ``root`` is normalised, so a ``data.source`` that itself holds ``..``
    keeps its spelling and every path stays relative to it.
    """
    below = os.path.normpath(candidate.relative_to(root))
    if below == ".." or below.startswith("../"):  # leaves and re-enters the root: spell it from inside
        below = os.path.relpath(os.path.realpath(candidate), os.path.realpath(root))
    tidy = root / below
    return tidy if tidy.resolve() == candidate.resolve() else candidate


def unique_dirs(dirs: list[Path]) -> list[Path]:
    """Existing folders in order, each once."""
    seen: list[Path] = []
    for d in dirs:
        if d not in seen and d.is_dir():
            seen.append(d)
    return seen


def orphaned_boxes(
    path: str, boxes: tuple[BoxRecord, ...] | list[BoxRecord] | None, why: str, stage: str = "ingest"
) -> list[QuarantineEntry]:
    """Quarantine entries for the boxes of an image that was dropped (nothing goes silently)."""
    return [
        QuarantineEntry(
            path, "image_quarantined", f"{b.where} was dropped because {why}.", stage, "box", b.where
        )
        for b in boxes or ()
    ]


def single_label(labels: list[str], noun: str, where: str, shown: str) -> str | QuarantineEntry:
    """A classification image's label from a tool's tags (CVAT ``<tag>``, Label Studio ``choices``):
    exactly one distinct ``noun``, else the quarantine row saying what was found."""
    if len(set(labels)) == 1:
        return labels[0]
    reason, what = (
        ("unlabeled", f"no {noun}") if not labels else ("several_labels", f"{noun}s {sorted(set(labels))}")
    )
    detail = f"{where} ({shown}) has {what}; classification needs exactly one {noun} per image."
    return QuarantineEntry(shown, reason, detail, "ingest", "image", where)


TOO_DEEP = (
    "{name}: JSON nested too deeply to read (lists or objects thousands of levels inside each other); "
    "export the annotations again."
)


def read_annotation_json(root: Path, file: Path, name: str) -> object:
    """An annotation JSON (COCO, Label Studio) under the source: each way it can be unreadable is one
    sentence naming ``name``; the caller checks the shape of what it got."""
    if not inside_root(root, file):
        raise DataError(f"{name} is a link that points outside the source folder; copy the file in instead.")
    try:
        return json.loads(file.read_bytes())
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{name}: invalid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg}); fix it there or "
            "export the annotations again."
        ) from None
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{name}: not UTF-8 text (byte {exc.start}); export the annotations again as UTF-8 JSON."
        ) from None
    except RecursionError:
        raise DataError(TOO_DEEP.format(name=name)) from None
