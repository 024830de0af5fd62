"""Shapes to class maps for ``data.task: segment``: one uint8 class index per pixel, cached by content.

The shapes contract keeps regions as polygons and COCO RLE (``shapes.parquet``); a semantic
model needs one class per pixel. Where shapes overlap, the one drawn later wins, so the draw
order decides (``train.segmenter.draw_order``): ``area`` draws larger shapes first, so a
window stays on top of its facade; ``z_order`` follows the labelling tool's layer order
(ties: file order). Index 0 is background (no shape covers the pixel), ``IGNORE_INDEX``
marks pixels neither loss nor metrics may count: a shape whose class is not a model class,
and an ``IGNORE_REGION`` shape (pixels the source itself marks "ignore", e.g. value 255 of a
mask PNG), which is drawn last so no draw order can paint a class over it.

``MaskStore`` rasterises a mask once and keeps it as a PNG under ``paths.cache/masks``, keyed
by this module's code digest, the image's sha256, its shapes, the class list and the draw
order, so a change to any of them makes a new entry; nothing is written into the source.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from stages.dataprep.shapes import IGNORE_REGION, polygon_mask, rle_decode

IGNORE_INDEX = 255
BACKGROUND = "background"
DRAW_ORDERS = ("area", "z_order")
_KEY_COLUMNS = ("class_name", "kind", "points", "counts", "z_order")


def segment_classes(classes: list[str]) -> list[str]:
    """The model's classes: background first (index 0), then the dataset's classes in their order.

    Idempotent: a list that already starts with background comes back unchanged. The
    reserved ``IGNORE_REGION`` is never a model class.

    Examples:
        >>> segment_classes(["wall", "window"])
        ['background', 'wall', 'window']
    """
    return [BACKGROUND, *(c for c in classes if c not in (BACKGROUND, IGNORE_REGION))]


def shape_mask(row: dict, height: int, width: int) -> np.ndarray:
    """One shape row (polygon or RLE) as a binary ``height`` x ``width`` mask."""
    if row["kind"] == "polygon":
        return polygon_mask([float(v) for v in row["points"]], height, width)
    mask = rle_decode(str(row["counts"]), height, width)
    if mask.shape != (height, width):
        raise ValueError(f"an RLE shape of {row['class_name']} is {mask.shape}, not ({height}, {width})")
    return mask


def rasterise(
    shapes: pd.DataFrame, height: int, width: int, class_index: dict[str, int], draw_order: str
) -> np.ndarray:
    """One image's shapes as a uint8 class map: 0 background, later-drawn shapes on top.

    ``IGNORE_REGION`` shapes (pixels the source marks "ignore") paint ``IGNORE_INDEX`` and are
    drawn last, whatever ``draw_order`` says: the source's own "do not count" wins over any class.

    Args:
        shapes: that image's rows of ``shapes.parquet`` (polygon ``points`` or RLE ``counts``).
        height, width: the image's size (pixels of the displayed image, as the shapes).
        class_index: model class name -> index; a shape of another class (and ``IGNORE_REGION``)
            paints ``IGNORE_INDEX``.
        draw_order: ``area`` (larger first, smaller on top) or ``z_order`` (ascending; ties: row order).

    Examples:
        >>> rows = pd.DataFrame({"class_name": ["a", "b"], "kind": ["polygon"] * 2, "z_order": [0, 0],
        ...     "points": [[0, 0, 4, 0, 4, 4, 0, 4], [1, 1, 3, 1, 3, 3, 1, 3]], "counts": [None, None]})
        >>> rasterise(rows, 4, 4, {"background": 0, "a": 1, "b": 2}, "area")[1:3, 1:3].tolist()
        [[2, 2], [2, 2]]
    """
    if draw_order not in DRAW_ORDERS:
        raise ValueError(f"draw_order {draw_order!r} is not one of {', '.join(DRAW_ORDERS)}")
    out = np.zeros((height, width), dtype=np.uint8)
    if shapes.empty:
        return out
    records = shapes.to_dict("records")
    masks = [shape_mask(r, height, width).astype(bool) for r in records]
    by_area = draw_order == "area"
    keys = [-int(m.sum()) for m in masks] if by_area else [int(r["z_order"]) for r in records]
    names = [str(r["class_name"]) for r in records]
    last = [name == IGNORE_REGION for name in names]  # the source's "ignore" goes on top of everything
    for i in sorted(range(len(records)), key=lambda i: (last[i], keys[i], i)):  # stable: ties keep row order
        out[masks[i]] = IGNORE_INDEX if last[i] else class_index.get(names[i], IGNORE_INDEX)
    return out


def shapes_digest(shapes: pd.DataFrame) -> str:
    """A hash of one image's shape rows in row order (the columns the raster depends on)."""
    rows = [
        [
            None if _missing(r[c]) else (list(map(float, r[c])) if c == "points" else str(r[c]))
            for c in _KEY_COLUMNS
        ]
        for r in shapes.to_dict("records")
    ]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA


class MaskStore:
    """Class maps for the images of one dataset, rasterised once and cached as PNGs.

    Picklable (DataLoader workers get a copy): it holds the shapes grouped by image and the
    code digest computed once, in the parent. Concurrent writers are safe: each writes a
    temporary file and renames it into place (same bytes whoever wins).
    """

    def __init__(self, cache_dir: Path, shapes: pd.DataFrame, classes: list[str], draw_order: str) -> None:
        from stages.core.codebase import code_digest

        if draw_order not in DRAW_ORDERS:
            raise ValueError(f"draw_order {draw_order!r} is not one of {', '.join(DRAW_ORDERS)}")
        self.cache_dir = Path(cache_dir)
        self.classes = segment_classes(list(classes))
        self.class_index = {name: i for i, name in enumerate(self.classes)}
        self.draw_order = draw_order
        self._by_image = {
            str(image_id): rows.reset_index(drop=True)
            for image_id, rows in shapes.groupby("image_id", sort=False, observed=True)
        }
        self._empty = shapes.iloc[0:0]
        self._prefix = json.dumps([code_digest(__name__), self.classes, draw_order])

    def shapes_of(self, image_id: str) -> pd.DataFrame:
        return self._by_image.get(str(image_id), self._empty)

    def key(self, image_id: str, sha256: str, height: int, width: int) -> str:
        """The cache key of one image's mask (changes with code, pixels, shapes, classes, order, size)."""
        parts = [self._prefix, sha256, shapes_digest(self.shapes_of(image_id)), f"{height}x{width}"]
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.png"

    def mask(self, image_id: str, sha256: str, height: int, width: int) -> np.ndarray:
        """The uint8 (height, width) class map of one image, from the cache when it is there."""
        file = self.path(self.key(image_id, sha256, height, width))
        cached = _read_png(file, height, width)
        if cached is not None:
            return cached
        mask = rasterise(self.shapes_of(image_id), height, width, self.class_index, self.draw_order)
        _write_png(file, mask)
        return mask


def _read_png(file: Path, height: int, width: int) -> np.ndarray | None:
    try:
        with Image.open(file) as image:
            mask = np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError):
        return None  # missing or torn: rasterise again
    return mask if mask.shape == (height, width) else None


def _write_png(file: Path, mask: np.ndarray) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=file.parent, prefix=".", suffix=".png.tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            Image.fromarray(mask, "L").save(stream, format="PNG")
        os.replace(temp, file)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
