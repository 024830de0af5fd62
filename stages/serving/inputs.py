"""Input expansion for batch prediction (files, folders, globs) and the annotated copies."""

from __future__ import annotations

import glob
import zlib
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from stages.core.errors import UserError
from stages.core.params import IngestSection

IMAGE_EXTENSIONS = frozenset(IngestSection().image_extensions)


def expand(inputs: list[str]) -> list[Path]:
    """Files as given (any name: a bad one becomes an error row), folders recursively (image
    extensions only), globs (``**`` allowed); sorted within each argument, duplicates dropped."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
        elif path.exists() or not glob.has_magic(item):
            found.append(path)
        else:
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            if not matches:
                raise UserError(
                    f"the pattern '{item}' matches no file; check the path or quote it for the shell."
                )
            found += [m for m in matches if m.is_file()]
    unique = list(dict.fromkeys(found))
    if not unique:
        raise UserError("no input images found; give files, folders or glob patterns of images.")
    return unique


def annotated(image: Image.Image, result: dict[str, Any], task: str) -> Image.Image:
    """A copy with the boxes (detect), the top class (classify) or the class regions (segment) drawn on it."""
    copy = image.copy()
    draw = ImageDraw.Draw(copy)
    if task == "segment":
        return _overlay(copy, result)
    if task == "classify":
        draw.rectangle((0, 0, copy.width, 14), fill=(0, 0, 0))
        draw.text((2, 1), f"{result['class']} {result['probability']:.2f}", fill=(255, 255, 255))
        return copy
    for box in result["boxes"]:
        xy = (box["x_min"], box["y_min"], box["x_max"], box["y_max"])
        draw.rectangle(xy, outline=(255, 0, 0), width=max(1, round(min(copy.size) / 200)))
        draw.text((xy[0] + 2, xy[1] + 1), f"{box['class']} {box['score']:.2f}", fill=(255, 0, 0))
    return copy


def _overlay(image: Image.Image, result: dict[str, Any]) -> Image.Image:
    """The regions blended over the image in fixed per-class colours, background left as it is."""
    import numpy as np

    from stages.dataprep.shapes import rle_decode

    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    for region in result["regions"]:
        if region["class"] == "background":
            continue
        # by name, so a class has one colour in every image whichever other classes are present
        colour = np.asarray(_PALETTE[zlib.crc32(region["class"].encode()) % len(_PALETTE)], dtype=np.float32)
        mask = rle_decode(region["rle"], result["height"], result["width"]).astype(bool)
        pixels[mask] = 0.5 * pixels[mask] + 0.5 * colour
    return Image.fromarray(pixels.round().astype("uint8"))


_PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
]


def copy_target(folder: Path, source: Path, taken: set[Path]) -> Path:
    """``folder/<name>`` not used yet in this run (``name_1``, ... on a clash); never the source."""
    target = folder / source.name
    n = 0
    while target in taken or target.resolve() == source.resolve():
        n += 1
        target = folder / f"{source.stem}_{n}{source.suffix}"
    taken.add(target)
    return target
