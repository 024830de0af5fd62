"""Image I/O with the rules every stage shares: EXIF orientation, RGB, size limits.

Reading never writes: images are opened read-only and any conversion happens in memory.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

# We check declared sizes ourselves (validate.max_pixels) and want that one rule, not PIL's.
Image.MAX_IMAGE_PIXELS = None

_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_ORIENTATIONS = {1, 2, 3, 4, 5, 6, 7, 8}
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
    orientation: int = 1  # EXIF orientation tag (1: none)
    stored_width: int = 0  # of the pixels as stored, before orientation
    stored_height: int = 0


# The default of ``ingest.image_extensions`` (a test keeps them equal). Not imported from the params
# package: the decode cache is keyed by this module's import closure, which params edits must not touch.
DEFAULT_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@cache
def _formats_for(extensions: tuple[str, ...]) -> tuple[str, ...]:
    registered = Image.registered_extensions()  # loads every plugin once: extension -> format
    found = {registered[e.lower()] for e in extensions if e.lower() in registered}
    return tuple(sorted(found))


def allowed_formats(extensions: Iterable[str] = DEFAULT_IMAGE_EXTENSIONS) -> tuple[str, ...]:
    """The Pillow formats the image extensions name (``.jpg`` -> JPEG): the only plugins ever run.

    Opening by content alone would reach every Pillow plugin (EPS runs Ghostscript, and PSD,
    SGI, FITS ... parsers); a PNG named ``.jpg`` is still opened, since PNG is allowed too.
    """
    return _formats_for(tuple(sorted({e.lower() for e in extensions})))


def sniff_format(path: Path) -> str | None:
    """Which Pillow format the file's first bytes claim, by the plugins' byte checks alone.

    Only each plugin's ``accept(prefix)`` runs (a comparison of magic bytes), never its parser,
    so this is safe on a file of a format we refuse to open.
    """
    try:
        with path.open("rb") as handle:
            prefix = handle.read(16)
    except OSError:
        return None
    Image.init()
    for name, (_, accept) in Image.OPEN.items():
        try:
            claimed = accept is not None and accept(prefix)
        except Exception:  # a plugin's byte check failing only means "not this format"
            continue
        if claimed and not isinstance(claimed, str):  # a str is a warning, not a match
            return name
    return None


def _open(path: Path, formats: tuple[str, ...]) -> Image.Image:
    """``Image.open`` limited to ``formats``, without ultralytics' patch of it when that is loaded.

    The patch answers every file Pillow cannot identify by installing a HEIF plugin: pip when
    online, an ImportError offline, either way not the ``not_an_image`` we report.
    """
    patches = sys.modules.get("ultralytics.utils.patches")
    opener = getattr(patches, "_image_open", None) or Image.open
    return opener(path, formats=list(formats))


def _unidentified(path: Path, formats: tuple[str, ...]) -> ImageReadError:
    """``format_not_allowed`` when the bytes are an image Pillow knows but the list excludes."""
    found = sniff_format(path)
    if found is not None and found not in formats:
        return ImageReadError(
            "format_not_allowed",
            f"{path.name} is in the {found} format, which ingest.image_extensions does not allow (allowed: "
            f"{', '.join(formats)}); it was not opened: convert it, or remove it from the source.",
        )
    return ImageReadError("not_an_image", f"{path.name} is not an image Pillow can identify.")


def read_header(path: Path, formats: tuple[str, ...] | None = None) -> ImageHeader:
    """Open the header only (cheap, safe against decompression bombs), with the allowed plugins only."""
    formats = formats if formats is not None else allowed_formats()
    try:
        if not path.is_file():
            raise ImageReadError("missing_file", f"{path.name} no longer exists in the source folder.")
        if path.stat().st_size == 0:
            raise ImageReadError("empty_file", f"{path.name} is an empty (zero-byte) file.")
    except OSError as exc:  # e.g. a name over the file system's 255-byte limit
        name = path.name if len(path.name) <= 80 else f"{path.name[:60]}..."
        raise ImageReadError("unreadable_path", f"{name} cannot be opened ({exc.strerror}).") from None
    try:
        with _open(path, formats) as image:
            width, height = stored = image.size
            if image.format == "PNG" and "exif" not in image.info:
                # Pillow's PNG getexif() decodes the whole image to look for an eXIf chunk after
                # the pixels; conforming files put it before them, where open() already saw it.
                orientation = 1
            else:
                orientation = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
            if orientation not in _ORIENTATIONS:
                orientation = 1  # exif_transpose ignores unknown values too
            if orientation in _TRANSPOSING_ORIENTATIONS:
                width, height = height, width
            return ImageHeader(
                width=width,
                height=height,
                format=image.format or "unknown",
                mode=image.mode,
                frames=getattr(image, "n_frames", 1),
                orientation=orientation,
                stored_width=stored[0],
                stored_height=stored[1],
            )
    except UnidentifiedImageError:
        raise _unidentified(path, formats) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError("corrupt_header", f"{path.name} has an unreadable header ({exc}).") from None


def load_rgb(path: Path, formats: tuple[str, ...] | None = None) -> Image.Image:
    """Fully decode, apply EXIF orientation and convert to 8-bit RGB (first frame only).

    Only the plugins of ``formats`` (default: those of the default ``ingest.image_extensions``) run.
    """
    formats = formats if formats is not None else allowed_formats()
    try:
        with _open(path, formats) as image, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # palette-transparency notes are not errors
            image.seek(0)
            image.load()
            oriented = ImageOps.exif_transpose(image)
            return to_rgb(oriented)
    except UnidentifiedImageError:
        raise _unidentified(path, formats) from None
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


Box = tuple[float, float, float, float]  # x_min, y_min, x_max, y_max


def orient_box(box: Box, orientation: int, stored_width: float, stored_height: float) -> Box:
    """Map a box on the stored pixels onto the displayed image, as ``ImageOps.exif_transpose`` does.

    Corners are mapped point by point (2, 4: mirror; 3: 180 degrees; 6: 90 clockwise; 8: 90
    counter-clockwise; 5, 7: transpose, transverse), then re-ordered into min/max.
    """
    w, h = stored_width, stored_height
    maps = {
        1: lambda x, y: (x, y),
        2: lambda x, y: (w - x, y),
        3: lambda x, y: (w - x, h - y),
        4: lambda x, y: (x, h - y),
        5: lambda x, y: (y, x),
        6: lambda x, y: (h - y, x),
        7: lambda x, y: (h - y, w - x),
        8: lambda x, y: (y, w - x),
    }
    point = maps.get(orientation, maps[1])
    (ax, ay), (bx, by) = point(box[0], box[1]), point(box[2], box[3])
    return (min(ax, bx), min(ay, by), max(ax, bx), max(ay, by))
