"""Reading one input image for prediction: a file or request bytes, with the pipeline's own rules.

The header is read first and an image above ``max_pixels`` (``validate.max_pixels``, the
decompression-bomb limit) is refused before any pixel is decoded; then EXIF orientation and RGB
conversion exactly as ``stages.dataprep.imaging.load_rgb`` (which the evaluate stage uses).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from stages.dataprep.imaging import ImageReadError, read_header, to_rgb


class TooManyPixels(ImageReadError):
    """The image is larger than the pixel limit."""


def _check_pixels(width: int, height: int, max_pixels: int, name: str) -> None:
    if width * height > max_pixels:
        raise TooManyPixels(
            "too_many_pixels",
            f"{name} has {width}x{height} pixels, more than the limit of {max_pixels} (validate.max_pixels).",
        )


def load_file(path: Path, max_pixels: int) -> Image.Image:
    """Decode ``path`` as evaluate does, after checking its declared size."""
    from stages.dataprep.imaging import load_rgb

    header = read_header(path)
    _check_pixels(header.width, header.height, max_pixels, path.name)
    return load_rgb(path)


def load_bytes(data: bytes, max_pixels: int, name: str = "the uploaded file") -> Image.Image:
    """Decode request bytes with the same rules; errors are ``ImageReadError`` with one sentence."""
    if not data:
        raise ImageReadError("empty_file", f"{name} is empty.")
    try:
        with Image.open(io.BytesIO(data)) as image, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _check_pixels(image.size[0], image.size[1], max_pixels, name)
            image.seek(0)
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError("not_an_image", f"{name} is not an image Pillow can identify.") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError("corrupt", f"{name} cannot be fully decoded ({exc}).") from None
