"""Polygon and mask geometry for the shapes contract: validity, tight boxes, RLE codecs.

Every shape ends up either as a polygon (flat ``[x0, y0, x1, y1, ...]`` in pixels of the
displayed image) or as a COCO compressed RLE over the whole image, so later stages need one
decoder (pycocotools). The vendor codecs (CVAT's and Label Studio's RLE) only decode here,
on import. Pure functions: no file is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
import shapely
from pycocotools import mask as coco_mask
from shapely.geometry import Polygon
from shapely.validation import explain_validity

Problem = tuple[str, str]  # (reason code, sentence tail)
Box = tuple[float, float, float, float]
_TOLERANCE = 1e-3  # px: float noise at the border is clipped without a word
# The class of a region a source marks "ignore" (mask PNG value 255): kept as a shape so the
# class map paints it IGNORE_INDEX; it is never a class, never yields a box, never an error.
IGNORE_REGION = "__ignore__"


def valid_polygons(polygons: Sequence[Sequence[float]]) -> list[bool]:
    """Shapely validity of many polygons in one vectorised call (each needs 3+ finite points)."""
    if not polygons:
        return []
    rings = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polygons]
    indices = np.repeat(np.arange(len(rings)), [len(r) for r in rings])
    polygons_ = shapely.polygons(shapely.linearrings(np.concatenate(rings), indices=indices))
    return [bool(v) for v in np.atleast_1d(shapely.is_valid(polygons_))]


def polygon_problem(
    points: Sequence[float], width: int, height: int, valid: bool | None = None
) -> Problem | None:
    """Why a polygon cannot be used as a region of a ``width`` x ``height`` image, or None.

    ``valid``: shapely's verdict when ``valid_polygons`` already computed it for a batch.
    """
    if len(points) % 2:
        return (
            "shape_malformed",
            f"has an odd number of coordinates ({len(points)}); points come as x, y pairs.",
        )
    if len(points) < 6:
        return "shape_too_few_points", f"has {len(points) // 2} points; a polygon needs at least 3."
    ring = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if not np.isfinite(ring).all():
        return "shape_not_finite", "has a coordinate that is not a finite number."
    (x0, y0), (x1, y1) = ring.min(axis=0), ring.max(axis=0)
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        return "shape_outside_image", f"lies wholly outside the {width}x{height} image."
    if valid:
        return None  # a valid polygon has a positive area
    polygon = Polygon(ring)
    if valid is None and shapely.is_valid(polygon):
        return None
    if shapely.area(shapely.convex_hull(polygon)) <= 0:
        return "shape_zero_area", "has zero area (all its points lie on one line)."
    return "shape_self_intersecting", f"is not a simple polygon ({explain_validity(polygon)})."


def clip_points(points: Sequence[float], width: int, height: int) -> tuple[list[float], bool]:
    """Vertices clamped into the image; True when one moved by more than float noise."""
    ring = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    clipped = np.clip(ring, 0.0, [float(width), float(height)])
    moved = bool(np.abs(clipped - ring).max() > _TOLERANCE)
    return clipped.reshape(-1).tolist(), moved


def polygon_box(points: Sequence[float]) -> Box:
    """The tight box of a polygon."""
    xs, ys = points[0::2], points[1::2]
    return (min(xs), min(ys), max(xs), max(ys))


def mask_box(mask: np.ndarray) -> Box | None:
    """The tight box (pixel edges) of a binary mask; None when the mask is empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def rle_encode(mask: np.ndarray) -> str:
    """COCO compressed RLE counts of a 2-D binary mask (size is the mask's shape)."""
    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return cast(bytes, encoded["counts"]).decode("ascii")


def rle_decode(counts: str, height: int, width: int) -> np.ndarray:
    """The binary mask (``uint8``, height x width) of COCO compressed RLE counts."""
    return coco_mask.decode({"counts": counts.encode("ascii"), "size": [height, width]})


def coco_rle(segmentation: dict, height: int, width: int) -> np.ndarray:
    """A COCO ``{"counts", "size"}`` segmentation (compressed or a list of runs) as a mask.

    Raises ``ValueError`` with a sentence when it does not describe a ``height`` x ``width`` mask.
    """
    size = segmentation.get("size")
    counts = segmentation.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)):
        raise ValueError(f"its RLE size {size!r} is not [height, width]")
    if list(size) != [height, width]:
        raise ValueError(f"its RLE size {size} is not the image's [{height}, {width}]")
    if isinstance(counts, list):
        if not all(isinstance(v, int) and v >= 0 for v in counts) or sum(counts) != height * width:
            raise ValueError(f"its RLE runs do not add up to {height} x {width} pixels")
        return runs_to_mask(counts, height, width, order="F")
    if not isinstance(counts, str) or not counts:
        raise ValueError("its RLE counts are neither a string nor a list of runs")
    try:
        mask = rle_decode(counts, height, width)
    except Exception as exc:  # pycocotools raises bare exceptions on a broken string
        raise ValueError(f"its RLE counts string cannot be decoded ({exc})") from None
    return mask


def runs_to_mask(runs: Sequence[int], height: int, width: int, order: str = "C") -> np.ndarray:
    """Alternating runs (background first) over ``height * width`` pixels, row- (C) or column-major (F)."""
    values = np.zeros(len(runs), dtype=np.uint8)
    values[1::2] = 1
    flat = np.repeat(values, np.asarray(runs, dtype=np.int64))
    if flat.size != height * width:
        raise ValueError(f"its runs cover {flat.size} pixels, not {height} x {width}")
    if order == "F":
        return np.ascontiguousarray(flat.reshape(width, height).T)
    return flat.reshape(height, width)


def polygon_mask(points: Sequence[float], height: int, width: int) -> np.ndarray:
    """Rasterise a polygon as COCO does (pycocotools), for comparing with masks."""
    rles = coco_mask.frPyObjects([list(points)], height, width)  # pyright: ignore[reportCallIssue, reportArgumentType]
    return coco_mask.decode(coco_mask.merge(rles))


def cvat_mask(
    runs: Sequence[int], left: int, top: int, box_width: int, box_height: int, width: int, height: int
) -> np.ndarray:
    """CVAT for images 1.1 ``<mask rle left top width height>`` as a whole-image mask.

    CVAT's runs alternate background/foreground (background first) row by row over the
    mask's own ``box_width`` x ``box_height`` rectangle placed at ``left``, ``top``.
    """
    if box_width <= 0 or box_height <= 0:
        raise ValueError(f"its mask box is {box_width}x{box_height}")
    if left < 0 or top < 0 or left + box_width > width or top + box_height > height:
        raise ValueError(
            f"its mask box ({left}, {top}, {box_width}x{box_height}) does not fit the {width}x{height} image"
        )
    local = runs_to_mask(runs, box_height, box_width)
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[top : top + box_height, left : left + box_width] = local
    return mask


def labelstudio_mask(rle: Sequence[int], width: int, height: int) -> np.ndarray:
    """Label Studio's brush RLE (thi.ng rle-pack of the RGBA canvas) as a binary mask (alpha > 0).

    Stream: 32 bits value count, 5 bits word size - 1, four 4-bit run-length sizes - 1, then
    chunks: 1 flag bit (1: one repeated value, 0: literal values), 2 bits choosing a size,
    that many bits run length - 1, and the word(s). Raises ``ValueError`` on a broken stream.
    """
    if not all(isinstance(v, int) and 0 <= v < 256 for v in rle):
        raise ValueError("its rle is not a list of bytes")
    bits = np.unpackbits(np.asarray(rle, dtype=np.uint8))
    reader = _Bits(bits)
    count = reader.read(32)
    if count != width * height * 4:
        raise ValueError(f"its rle holds {count} values, not the {width}x{height}x4 of the canvas")
    word = reader.read(5) + 1
    sizes = [reader.read(4) + 1 for _ in range(4)]
    out = np.zeros(count, dtype=np.uint32)
    i = 0
    while i < count:
        repeat = reader.read(1)
        end = i + 1 + reader.read(sizes[reader.read(2)])
        if end > count:
            raise ValueError("its rle runs past the end of the canvas")
        if repeat:
            out[i:end] = reader.read(word)
        else:
            for j in range(i, end):
                out[j] = reader.read(word)
        i = end
    return (out.reshape(height, width, 4)[:, :, 3] > 0).astype(np.uint8)


class _Bits:
    """Big-endian bit reader over an unpacked bit array."""

    def __init__(self, bits: np.ndarray) -> None:
        self.bits = bits
        self.at = 0

    def read(self, size: int) -> int:
        end = self.at + size
        if end > self.bits.size:
            raise ValueError("its rle ends in the middle of a value")
        value = 0
        for bit in self.bits[self.at : end]:
            value = (value << 1) | int(bit)
        self.at = end
        return value


def orient_points(points: Sequence[float], orientation: int, width: float, height: float) -> list[float]:
    """Map vertices on the stored pixels (``width`` x ``height``) onto the displayed image (EXIF)."""
    w, h = width, height
    maps = {
        2: lambda x, y: (w - x, y),
        3: lambda x, y: (w - x, h - y),
        4: lambda x, y: (x, h - y),
        5: lambda x, y: (y, x),
        6: lambda x, y: (h - y, x),
        7: lambda x, y: (h - y, w - x),
        8: lambda x, y: (y, w - x),
    }
    point = maps.get(orientation)
    if point is None:
        return list(points)
    out: list[float] = []
    for x, y in zip(points[0::2], points[1::2], strict=True):
        out.extend(point(x, y))
    return out


def orient_mask(mask: np.ndarray, orientation: int) -> np.ndarray:
    """A stored-frame mask as displayed, as ``ImageOps.exif_transpose`` turns the pixels."""
    ops = {
        2: lambda m: m[:, ::-1],
        3: lambda m: m[::-1, ::-1],
        4: lambda m: m[::-1, :],
        5: lambda m: m.T,
        6: lambda m: np.rot90(m, -1),
        7: lambda m: m[::-1, ::-1].T,
        8: lambda m: np.rot90(m, 1),
    }
    op = ops.get(orientation)
    return np.ascontiguousarray(op(mask)) if op else mask
