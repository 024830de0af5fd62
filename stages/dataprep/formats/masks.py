"""Mask PNG folders: ``images/`` + ``masks/`` with the same stem, pixel value = class index.

``classes.txt`` names the values, one per line from 0; a class called ``background`` (or
``_background_``) is not a region. Each class present in a mask becomes one RLE shape (a
semantic mask: touching objects of one class are one region); for ``data.task: detect`` its
tight box is the box. 255 is "ignore" (e.g. Pascal VOC's object borders), never an error: it
becomes one RLE shape of the reserved class ``IGNORE_REGION``, which ``data.task: segment``
paints 255 (neither loss nor metrics count it) and which is never a class and never a box.
``images/<split>/`` + ``masks/<split>/`` give a predefined split. An image without a mask is a
background image; a mask without an image is quarantined.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from stages.core.contracts import QuarantineEntry
from stages.core.errors import DataError
from stages.core.params import DataSection, IngestSection
from stages.dataprep.formats.base import (
    ShapeRecord,
    SourceItem,
    SourceScan,
    inside_root,
    is_split_folder,
    refuse_outside_folder,
    rel,
    split_of,
)
from stages.dataprep.shapes import IGNORE_REGION, rle_encode

STAGE = "ingest"
IGNORE = 255
_BACKGROUND = {"background", "_background_", "__background__"}


def image_mask_dirs(root: Path) -> list[tuple[Path, Path, str | None]]:
    """``(images folder, masks folder, split)`` for every part of a mask source."""
    images, masks = root / "images", root / "masks"
    if not (images.is_dir() and masks.is_dir()):
        return []
    parts = sorted(d for d in images.iterdir() if is_split_folder(d))
    if parts and not any(f.is_file() for f in images.iterdir()):
        return [(d, masks / d.name, split_of(d.name)) for d in parts]
    return [(images, masks, None)]


def detected(root: Path) -> str | None:
    """The marker for ``data.format: auto``: PNG masks beside images and a classes.txt."""
    parts = image_mask_dirs(root)
    count = sum(1 for _, m, _ in parts if m.is_dir() and inside_root(root, m) for _ in m.rglob("*.png"))
    if count and (root / "classes.txt").is_file():
        return f"{count} PNG masks in masks/ beside images/, classes.txt"
    return None


def scan(root: Path, data: DataSection, params: IngestSection) -> SourceScan:
    """Pair every image with its mask and cut the mask into one shape per class."""
    parts = image_mask_dirs(root)
    if not parts:
        raise DataError(
            f"{root}: no images/ and masks/ folders found; put the PNG masks in masks/ beside images/."
        )
    names = _classes(root)
    out = SourceScan(classes=[n for n in names if n.lower() not in _BACKGROUND])
    extensions = {e.lower() for e in params.image_extensions}
    for images_dir, masks_dir, split in parts:
        refuse_outside_folder(root, images_dir)
        refuse_outside_folder(root, masks_dir)
        matched: set[Path] = set()
        for file in sorted(images_dir.rglob("*")):
            if file.is_dir():
                continue
            image_rel = rel(root, file)
            if file.name in params.ignore_files or file.suffix.lower() not in extensions:
                out.ignored.append(image_rel)
                continue
            mask_file = (masks_dir / file.relative_to(images_dir)).with_suffix(".png")
            matched.add(mask_file)
            shapes, size = (
                _read_mask(root, mask_file, image_rel, names, out) if mask_file.is_file() else ((), None)
            )
            if shapes is None:
                continue  # the mask itself was refused; the image goes with it
            source = rel(root, mask_file) if mask_file.is_file() else "masks (no mask file)"
            out.items.append(
                SourceItem(
                    file, image_rel, None, split, None, source, boxes=(), shapes=shapes, declared_size=size
                )
            )
        for mask_file in sorted(masks_dir.rglob("*.png")):
            if mask_file not in matched:
                mask_rel = rel(root, mask_file)
                detail = f"{mask_rel} has no image with the same name in {rel(root, images_dir)}/."
                out.quarantine.append(
                    QuarantineEntry(mask_rel, "label_without_image", detail, STAGE, "annotation", mask_rel)
                )
    return out


def _classes(root: Path) -> list[str]:
    file = root / "classes.txt"
    if not file.is_file() or not inside_root(root, file):
        raise DataError(f"{root}: no classes.txt; write one class name per line, line 1 for pixel value 0.")
    try:
        names = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as exc:
        raise DataError(f"classes.txt: not UTF-8 text (byte {exc.start}); save it again as UTF-8.") from None
    if not names or len(names) > IGNORE:
        raise DataError(f"classes.txt lists {len(names)} names; a mask PNG can name 1 to 255 classes.")
    return names


def _read_mask(
    root: Path, mask_file: Path, image_rel: str, names: list[str], out: SourceScan
) -> tuple[tuple[ShapeRecord, ...] | None, tuple[int, int] | None]:
    mask_rel = rel(root, mask_file)

    def refuse(reason: str, detail: str) -> tuple[None, None]:
        out.quarantine.append(QuarantineEntry(image_rel, reason, detail, STAGE, "image", mask_rel))
        return None, None

    if not inside_root(root, mask_file):
        return refuse(
            "outside_source", f"the mask of {image_rel} ({mask_rel}) points outside the source folder."
        )
    try:
        with Image.open(mask_file) as image:
            if image.mode not in ("L", "P", "I", "I;16", "1"):
                return refuse(
                    "mask_not_indexed",
                    f"{mask_rel} is a {image.mode} image; a mask is one channel whose value is the class "
                    "index.",
                )
            values = np.asarray(image)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        return refuse("annotation_unreadable", f"{mask_rel} cannot be read as a PNG ({type(exc).__name__}).")
    present = [int(v) for v in np.unique(values) if int(v) != IGNORE]
    unknown = [v for v in present if v >= len(names)]
    if unknown:
        return refuse(
            "unknown_class",
            f"{mask_rel} has pixel values {unknown[:5]} but classes.txt names only 0..{len(names) - 1} "
            f"(255 = ignore).",
        )
    height, width = values.shape[:2]
    shapes = tuple(
        ShapeRecord(
            names[v], f"{mask_rel} value {v}", counts=rle_encode(values == v), mask_size=(height, width)
        )
        for v in present
        if names[v].lower() not in _BACKGROUND
    )
    ignored = values == IGNORE
    if ignored.any():  # read as it is: the pixels stay "ignore", not background
        where = f"{mask_rel} value {IGNORE} (ignore)"
        shapes += (ShapeRecord(IGNORE_REGION, where, counts=rle_encode(ignored), mask_size=(height, width)),)
    return shapes, (width, height)
