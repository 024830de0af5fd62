"""A reader's shapes to contract rows: pixels of the displayed image, checked, with tight boxes.

Runs in ingest beside the box conversion and uses the same frame decision (stored or
displayed pixels, see ``importing.box_frame``). A bad shape is quarantined with its reason;
a shape whose annotation gave no box also yields its tight box, so a polygon-only dataset
trains a detector. An ``IGNORE_REGION`` shape (pixels a source marks "ignore") never does:
it is no object, only pixels a semantic model must not count.
"""

from __future__ import annotations

import numpy as np

from stages.core.contracts import QuarantineEntry
from stages.dataprep.formats.base import ShapeRecord, SourceItem
from stages.dataprep.imaging import ImageHeader
from stages.dataprep.shapes import (
    IGNORE_REGION,
    clip_points,
    mask_box,
    orient_mask,
    orient_points,
    polygon_box,
    polygon_problem,
    rle_decode,
    rle_encode,
    valid_polygons,
)

STAGE = "ingest"


def convert_shapes(
    item: SourceItem, header: ImageHeader, image_id: str, frame: str
) -> tuple[list[dict], list[dict], list[QuarantineEntry], int]:
    """Shape rows, derived box rows, quarantine entries and the count of clipped polygons."""
    rows: list[dict] = []
    boxes: list[dict] = []
    dropped: list[QuarantineEntry] = []
    clipped = 0
    pixels = [_pixels(shape, header, frame) for shape in item.shapes]
    checkable = [
        i
        for i, p in enumerate(pixels)
        if p is not None and len(p) >= 6 and len(p) % 2 == 0 and np.isfinite(p).all()
    ]
    verdicts = dict(zip(checkable, valid_polygons([pixels[i] or [] for i in checkable]), strict=True))
    for index, shape in enumerate(item.shapes):
        row, moved, problem = _convert(shape, header, frame, pixels[index], verdicts.get(index))
        if problem is not None:
            reason, detail = problem
            dropped.append(
                QuarantineEntry(item.rel_path, reason, f"{shape.where} {detail}", STAGE, "shape", shape.where)
            )
            continue
        clipped += moved
        row |= {"image_id": image_id}
        rows.append(row)
        if not shape.has_box and item.boxes is not None and shape.class_name != IGNORE_REGION:
            corners = {k: row[k] for k in ("x_min", "y_min", "x_max", "y_max")}
            boxes.append(
                {"image_id": image_id, "class_name": shape.class_name, **corners}
                | {"difficult": False, "truncated": False, "where": shape.where}
            )
    return rows, boxes, dropped, clipped


def _pixels(shape: ShapeRecord, header: ImageHeader, frame: str) -> list[float] | None:
    """A polygon's vertices in pixels of the displayed image (None for a mask)."""
    if shape.points is None:
        return None
    points = list(shape.points)
    if frame == "stored":
        if shape.normalized:
            points = _scale(points, header.stored_width, header.stored_height)
        return orient_points(points, header.orientation, header.stored_width, header.stored_height)
    return _scale(points, header.width, header.height) if shape.normalized else points


def _convert(
    shape: ShapeRecord, header: ImageHeader, frame: str, points: list[float] | None, valid: bool | None
) -> tuple[dict, bool, tuple[str, str] | None]:
    """The contract row and whether a vertex was clipped, or the problem that drops the shape."""
    width, height = header.width, header.height
    base = {
        "class_name": shape.class_name,
        "iscrowd": shape.iscrowd,
        "occluded": shape.occluded,
        "z_order": shape.z_order,
        "attributes": shape.attributes,
    }
    if points is not None:
        problem = polygon_problem(points, width, height, valid)
        if problem is not None:
            return {}, False, problem
        points, moved = clip_points(points, width, height)
        corners = polygon_box(points)
        return base | {"kind": "polygon", "points": points, "counts": None} | _corners(corners), moved, None
    assert shape.counts is not None and shape.mask_size is not None, "a shape is a polygon or a mask"
    mask = rle_decode(shape.counts, *shape.mask_size)
    counts = shape.counts
    if frame == "stored" and header.orientation not in (0, 1):
        mask = orient_mask(mask, header.orientation)
        counts = rle_encode(mask)
    if mask.shape != (height, width):
        mh, mw = mask.shape
        return {}, False, ("shape_size_mismatch", f"is a {mw}x{mh} mask but the image is {width}x{height}.")
    corners = mask_box(np.asarray(mask))
    if corners is None:
        return {}, False, ("shape_empty_mask", "is a mask with no pixel set.")
    return base | {"kind": "rle", "points": None, "counts": counts} | _corners(corners), False, None


def _scale(points: list[float], width: float, height: float) -> list[float]:
    return [v * (width if i % 2 == 0 else height) for i, v in enumerate(points)]


def _corners(box: tuple[float, float, float, float]) -> dict:
    return dict(zip(("x_min", "y_min", "x_max", "y_max"), box, strict=True))


def orphaned_shapes(item: SourceItem, why: str) -> list[QuarantineEntry]:
    """Quarantine entries for the shapes of an image that was dropped (nothing goes silently)."""
    return [
        QuarantineEntry(
            item.rel_path,
            "image_quarantined",
            f"{s.where} was dropped because {why}.",
            STAGE,
            "shape",
            s.where,
        )
        for s in item.shapes
    ]
