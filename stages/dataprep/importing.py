"""From a format reader's scan to the manifest: image headers, box conversion, duplicates, classes."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from stages.core.contracts import (
    QuarantineEntry,
    image_id_from_sha256,
)
from stages.core.errors import DataError
from stages.core.hashing import sha256_file
from stages.core.params import IngestSection
from stages.core.params.base import uses_boxes
from stages.dataprep.file_facts import FileFacts, read_files
from stages.dataprep.formats import DETECTION_FORMATS, TAG_FORMATS, BoxRecord, SourceItem
from stages.dataprep.formats.base import orphaned_boxes
from stages.dataprep.imaging import ImageHeader, ImageReadError, allowed_formats, orient_box, read_header
from stages.dataprep.shape_import import convert_shapes, orphaned_shapes

STAGE = "ingest"
_CLIP_TOLERANCE = 1e-3  # px: float noise at the border is clipped without counting
_LOGGED_IGNORED = 20


@dataclass
class _Stats:
    clipped: int = 0
    size_mismatches: int = 0
    first_mismatch: str = ""


def check_task(fmt: str, task: str, root: Path, evidence: str = "") -> None:
    """Refuse a task the annotations cannot serve, before any image is read."""
    if task == "classify" and fmt in DETECTION_FORMATS and fmt not in TAG_FORMATS:
        found = f" ({evidence})" if evidence else ""
        raise DataError(
            f"{root}: data.task is classify but the source holds '{fmt}' detection annotations{found}; set "
            "data.task: detect, or point data.source at a folder-per-class dataset."
        )
    if task == "detect" and fmt == "folder":
        raise DataError(
            f"{root}: data.task is detect but the source is a folder-per-class layout with no boxes; set "
            "data.task: classify, or export the boxes as COCO, YOLO or Pascal VOC."
        )
    if task == "segment" and fmt in ("folder", "voc"):
        what = "a folder-per-class layout" if fmt == "folder" else "Pascal VOC XML, which holds boxes only"
        raise DataError(f"{root}: data.task is segment but data.source is {what}; {_SEGMENT_FIX}")


_SEGMENT_FIX = (
    "export the regions as polygons or masks (COCO segmentation, YOLO-seg, CVAT, Label Studio, or mask "
    "PNGs beside images/ with a classes.txt), or set data.task to detect or classify."
)


def require_shapes(items: list[SourceItem], task: str, fmt: str, root: Path) -> list[str]:
    """A segment source must hold regions: boxes alone cannot say which pixels are which class.

    Returns the warning for a source that mixes both: a box without a shape paints no pixel.
    """
    if task != "segment":
        return []
    if not any(item.shapes for item in items):
        raise DataError(
            f"{root}: data.task is segment but the '{fmt}' annotations in data.source hold no polygon, RLE "
            f"or mask, only boxes or none; {_SEGMENT_FIX}"
        )
    bare = sum(len(item.boxes or ()) - sum(s.has_box for s in item.shapes) for item in items)
    if bare <= 0:
        return []
    return [
        f"{bare} boxes in data.source have no polygon or mask; for data.task segment their pixels count as "
        "background, so draw their outlines in the labelling tool."
    ]


def describe_items(
    items: list[SourceItem], params: IngestSection | None = None
) -> tuple[list[dict], list[QuarantineEntry], _Stats]:
    """Hash each file and read its header; unreadable files go to quarantine, boxes become pixels."""
    params = params or IngestSection()
    rows: list[dict] = []
    quarantine: list[QuarantineEntry] = []
    stats = _Stats()
    formats = allowed_formats(params.image_extensions)
    facts = read_files(read_file, [item.file for item in items], formats, params.workers)
    progress = tqdm(facts, desc="ingest: reading headers", unit="img", leave=False, total=len(items))
    for item, fact in zip(items, progress, strict=True):
        try:
            header, sha = fact.unwrap()  # read in worker processes (ingest.workers)
        except ImageReadError as exc:
            quarantine.append(
                QuarantineEntry(item.rel_path, exc.reason, exc.detail, STAGE, "image", item.source)
            )
            quarantine.extend(orphaned_boxes(item.rel_path, item.boxes, f"{item.rel_path} is not usable"))
            quarantine.extend(orphaned_shapes(item, f"{item.rel_path} is not usable"))
            continue
        row = {
            "image_id": image_id_from_sha256(sha),
            "path": item.rel_path,
            "sha256": sha,
            "width": header.width,
            "height": header.height,
            "label": item.label,
            "group": item.group,
            "split": item.split,
            "source": item.source,
        }
        if item.boxes is not None:
            row["boxes"], dropped, clipped = convert_boxes(item, header, row["image_id"], params)
            quarantine.extend(dropped)
            stats.clipped += clipped
        if item.shapes:
            frame = box_frame(item, header, params.box_orientation)
            row["shapes"], derived, dropped, clipped = convert_shapes(item, header, row["image_id"], frame)
            if item.boxes is not None:
                row["boxes"] = row["boxes"] + derived  # a shape without a box of its own gives its tight box
            quarantine.extend(dropped)
            stats.clipped += clipped
        if item.boxes is not None and _size_disagrees(item.declared_size, header):
            stats.size_mismatches += 1
            if not stats.first_mismatch:
                w, h = item.declared_size or (0, 0)
                size = f"{header.width}x{header.height}"
                stats.first_mismatch = f"{item.rel_path}: {item.source} says {w}x{h}, the file is {size}"
        rows.append(row)
    return rows, quarantine, stats


def read_file(job: tuple[Path, tuple[str, ...]]) -> FileFacts:
    """One file's header, then its hash (an unreadable file is never hashed); runs in a worker."""
    file, formats = job
    try:
        header = read_header(file, formats)
    except ImageReadError as exc:
        return FileFacts(None, "", exc.reason, exc.detail)
    return FileFacts(header, sha256_file(file))


def box_frame(item: SourceItem, header: ImageHeader, policy: str) -> str:
    """Which image the coordinates refer to: ``stored`` pixels or the ``displayed`` (rotated) image.

    Only matters for EXIF-rotated files. ``auto``: a declared size that matches only one of
    the two decides; otherwise the reader's convention (stored; YOLO: displayed, as ultralytics).
    """
    if policy != "auto":
        return policy
    displayed = (header.width, header.height)
    stored = (header.stored_width, header.stored_height)
    if item.declared_size is not None and displayed != stored:
        if item.declared_size == displayed:
            return "displayed"
        if item.declared_size == stored:
            return "stored"
    return item.box_frame


def convert_boxes(
    item: SourceItem, header: ImageHeader, image_id: str, params: IngestSection
) -> tuple[list[dict], list[QuarantineEntry], int]:
    """One image's boxes in pixels of the displayed image; bad ones quarantined, partial ones clipped."""
    frame = box_frame(item, header, params.box_orientation)
    width, height = header.width, header.height
    kept: list[dict] = []
    dropped: list[QuarantineEntry] = []
    clipped = 0

    def drop(box: BoxRecord, reason: str, detail: str) -> None:
        dropped.append(
            QuarantineEntry(item.rel_path, reason, f"{box.where} {detail}", STAGE, "box", box.where)
        )

    for box in item.boxes or ():
        raw = (box.x_min, box.y_min, box.x_max, box.y_max)
        shown = _fmt(raw)
        if not all(math.isfinite(v) for v in raw):
            drop(box, "box_not_finite", f"has a coordinate that is not a finite number ({shown}).")
            continue
        if box.x_max < box.x_min or box.y_max < box.y_min:
            drop(box, "box_inverted", f"has x_max < x_min or y_max < y_min ({shown}): a negative size.")
            continue
        if box.x_max == box.x_min or box.y_max == box.y_min:
            drop(box, "box_degenerate", f"has zero width or height ({shown}).")
            continue
        coords = raw
        if frame == "stored":
            if box.normalized:
                coords = _scale(coords, header.stored_width, header.stored_height)
            coords = orient_box(coords, header.orientation, header.stored_width, header.stored_height)
        elif box.normalized:
            coords = _scale(coords, width, height)
        inside = (max(coords[0], 0.0), max(coords[1], 0.0), min(coords[2], width), min(coords[3], height))
        if inside[2] <= inside[0] or inside[3] <= inside[1]:
            drop(
                box,
                "box_outside_image",
                f"lies wholly outside the {width}x{height} image ({_fmt(coords)} px).",
            )
            continue
        if max(abs(a - b) for a, b in zip(coords, inside, strict=True)) > _CLIP_TOLERANCE:
            if params.partial_boxes == "quarantine":
                drop(
                    box,
                    "box_partly_outside",
                    f"extends past the {width}x{height} image ({_fmt(coords)} px) and "
                    "ingest.partial_boxes is quarantine.",
                )
                continue
            clipped += 1
        kept.append(
            {
                "image_id": image_id,
                "class_name": box.class_name,
                "x_min": inside[0],
                "y_min": inside[1],
                "x_max": inside[2],
                "y_max": inside[3],
                "difficult": box.difficult,
                "truncated": box.truncated,
                "where": box.where,
            }
        )
    return kept, dropped, clipped


def resolve_duplicates(rows: list[dict]) -> tuple[list[dict], list[QuarantineEntry]]:
    """Same bytes twice: keep the first path when labels (and boxes) agree, drop all when they conflict."""
    by_sha: dict[str, list[dict]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: (r["path"], r["source"])):
        by_sha[row["sha256"]].append(row)
    kept: list[dict] = []
    dropped: list[QuarantineEntry] = []
    for copies in by_sha.values():
        signatures = {_signature(c) for c in copies}
        if len(copies) == 1:
            kept.append(copies[0])
        elif len(signatures) == 1:
            kept.append(copies[0])
            for c in copies[1:]:
                what = "label" if c.get("boxes") is None else "boxes"
                dropped.append(
                    QuarantineEntry(
                        c["path"],
                        "duplicate",
                        f"{c['path']} has the same bytes and {what} as {copies[0]['path']}, which is kept.",
                        STAGE,
                        "image",
                        c["source"],
                    )
                )
                dropped.extend(orphaned_boxes_of(c, "it duplicates a kept image"))
        else:
            others = ", ".join(c["path"] for c in copies)
            if copies[0].get("boxes") is None:
                names = ", ".join(sorted(str(c["label"]) for c in {c["label"]: c for c in copies}.values()))
                reason, detail = (
                    "duplicate_conflicting_labels",
                    f"the same image appears with different labels ({names}): {others}.",
                )
            else:
                reason, detail = (
                    "duplicate_conflicting_boxes",
                    f"the same image appears with different boxes: {others}; fix the annotations of one.",
                )
            for c in copies:
                dropped.append(QuarantineEntry(c["path"], reason, detail, STAGE, "image", c["source"]))
                dropped.extend(orphaned_boxes_of(c, "its image has conflicting duplicates"))
    return kept, dropped


def orphaned_boxes_of(row: dict, why: str) -> list[QuarantineEntry]:
    return [
        QuarantineEntry(
            row["path"],
            "image_quarantined",
            f"{b['where']} was dropped because {why}.",
            STAGE,
            "box",
            b["where"],
        )
        for b in row.get("boxes") or []
    ]


def class_list(manifest: pd.DataFrame, task: str, root: Path, declared: list[str] | None = None) -> list[str]:
    """Class names in model-output order: sorted labels, or the detection format's own order."""
    if uses_boxes(task):
        if not declared:
            raise DataError(
                f"{root}: no box classes found in the annotations; label at least one object, or check "
                "data.source."
            )
        return list(declared)
    classes = sorted(manifest["label"].dropna().unique().tolist())
    if len(classes) < 2:
        found = classes[0] if classes else "none"
        raise DataError(
            f"{root}: classification needs at least two classes with usable images, found {found}; "
            "add a folder of images for each class."
        )
    return classes


def ingest_summary(
    fmt: str,
    evidence: str,
    manifest: pd.DataFrame,
    boxes: pd.DataFrame,
    quarantine: pd.DataFrame,
    stats: _Stats,
    scan,
) -> dict:
    """Counts and warnings for the validation report (``validate`` folds this in)."""
    warnings = list(scan.warnings)
    if stats.size_mismatches:
        warnings.append(
            f"{stats.size_mismatches} images have a width/height in their annotations that differs from the "
            f"file ({stats.first_mismatch}); the file's size was used."
        )
    summary = {
        "format": fmt,
        "detected_by": evidence,
        "images": len(manifest),
        "quarantined": {str(k): int(v) for k, v in Counter(quarantine["reason"]).items()},
        "ignored_files": len(scan.ignored),
        "warnings": warnings,
    }
    if fmt in DETECTION_FORMATS:
        with_boxes = set(boxes["image_id"])
        summary |= {
            "boxes": len(boxes),
            "background_images": int((~manifest["image_id"].isin(with_boxes)).sum()),
            "clipped_boxes": stats.clipped,
            "size_mismatches": stats.size_mismatches,
            "quarantined_boxes": int((quarantine["item"] == "box").sum()),
        }
    return summary


def _signature(row: dict) -> tuple:
    boxes = row.get("boxes")
    if boxes is None:
        return (row["label"],)
    return tuple(
        sorted(
            (b["class_name"], *(round(b[k], 2) for k in ("x_min", "y_min", "x_max", "y_max"))) for b in boxes
        )
    )


def _size_disagrees(declared: tuple[int, int] | None, header: ImageHeader) -> bool:
    """The annotation's width/height matches neither the displayed nor the stored image."""
    if declared is None:
        return False
    return declared not in {(header.width, header.height), (header.stored_width, header.stored_height)}


def _scale(box: tuple[float, ...], width: float, height: float) -> tuple[float, float, float, float]:
    return (box[0] * width, box[1] * height, box[2] * width, box[3] * height)


def _fmt(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"
