"""Image I/O with the rules every stage shares: EXIF orientation, RGB, size limits.

Reading never writes: images are opened read-only and any conversion happens in memory.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

# We check declared sizes ourselves (validate.max_pixels) and want that one rule, not PIL's.
Image.MAX_IMAGE_PIXELS = None

_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_EXIF_ORIENTATION_TAG = 0x0112


class ImageReadError(Exception):
    """The file cannot be read as an image; ``reason`` is a quarantine code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageHeader:
    """What the header says, without decoding pixels."""

    width: int  # of the displayed image, after EXIF orientation
    height: int
    format: str
    mode: str
    frames: int


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def read_header(path: Path) -> ImageHeader:
    """Open the header only (cheap, safe against decompression bombs)."""
    if not path.is_file():
        raise ImageReadError("missing_file", f"{path.name} no longer exists in the source folder.")
    if path.stat().st_size == 0:
        raise ImageReadError("empty_file", f"{path.name} is an empty (zero-byte) file.")
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
            if orientation in _TRANSPOSING_ORIENTATIONS:
                width, height = height, width
            return ImageHeader(
                width=width,
                height=height,
                format=image.format or "unknown",
                mode=image.mode,
                frames=getattr(image, "n_frames", 1),
            )
    except UnidentifiedImageError:
        raise ImageReadError("not_an_image", f"{path.name} is not an image Pillow can identify.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError("corrupt_header", f"{path.name} has an unreadable header ({exc}).") from None


def load_rgb(path: Path) -> Image.Image:
    """Fully decode, apply EXIF orientation and convert to 8-bit RGB (first frame only)."""
    try:
        with Image.open(path) as image, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # palette-transparency notes are not errors
            image.seek(0)
            image.load()
            oriented = ImageOps.exif_transpose(image)
            return to_rgb(oriented)
    except UnidentifiedImageError:
        raise ImageReadError("not_an_image", f"{path.name} is not an image Pillow can identify.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError("corrupt", f"{path.name} cannot be fully decoded ({exc}).") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any mode (CMYK, L, I;16, P, RGBA...) to RGB; alpha is composited on white."""
    if image.mode == "RGB":
        return image.copy()
    if image.mode in {"I;16", "I;16B", "I;16L", "I"}:
        # 16-bit grayscale: map the full 0..65535 range to 0..255 (no per-image stretch,
        # which would turn a dark image white), clipping 32-bit values into that range.
        import numpy as np

        array = np.clip(np.asarray(image, dtype=np.float64), 0, 65535)
        return Image.fromarray(np.round(array / 65535 * 255).astype("uint8")).convert("RGB")
    if image.mode in {"RGBA", "LA", "PA"} or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
