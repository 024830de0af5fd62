"""Generated photo-like images and planted near-duplicate copies, for the split and hashing tests.

Noise images (conftest's ``write_image``) are useless here: cropping noise changes every
perceptual hash bit. These scenes are smooth colour fields with a few ellipses, so a copy
that is resized, re-encoded, slightly cropped or brightened stays close, as a photo would.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance


def scene(seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, size=(4, 5, 3)).astype("uint8")
    image = Image.fromarray(grid, "RGB").resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, size[0] - 20)), int(rng.integers(0, size[1] - 20))
        w, h = (int(v) for v in rng.integers(12, 40, 2))
        draw.ellipse((x0, y0, x0 + w, y0 + h), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image


def _reencoded(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=60)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


VARIANTS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "resized": lambda im: im.resize((im.width * 2 // 3, im.height * 2 // 3), Image.Resampling.LANCZOS),
    "reencoded": _reencoded,
    "cropped": lambda im: im.crop((1, 1, im.width - 2, im.height - 1)),
    "brightened": lambda im: ImageEnhance.Brightness(im).enhance(1.15),
}


def save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
