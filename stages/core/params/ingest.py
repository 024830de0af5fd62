"""The ``ingest`` section: which files are images, and how boxes that leave their image are handled."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from stages.core.params.base import Section
from stages.core.params.workers import Workers, workers_field

DEFAULT_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class IngestSection(Section):
    image_extensions: tuple[str, ...] = Field(
        default=DEFAULT_IMAGE_EXTENSIONS,
        description="Files imported as images; also the only Pillow formats ever opened (.jpg: JPEG), "
        "so a PNG named .jpg is read but an EPS, PSD or FITS file is quarantined unopened.",
    )
    ignore_files: tuple[str, ...] = Field(
        default=(".DS_Store", "Thumbs.db", "desktop.ini"), description="File names ignored without a note."
    )
    partial_boxes: Literal["clip", "quarantine"] = Field(
        default="clip",
        description="Boxes partly outside their image: clip them to it (counted in the report) or "
        "quarantine them; boxes with no area inside the image are always quarantined.",
    )
    box_orientation: Literal["auto", "stored", "displayed"] = Field(
        default="auto",
        description="Which image the annotation coordinates refer to when the file has an EXIF rotation: "
        "the stored pixels, the displayed (rotated) image, or auto (see docs/architecture.md).",
    )
    workers: Workers = workers_field("hashing files and reading their headers")
