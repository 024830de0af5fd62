"""Annotation-format readers: each turns a source folder into ``SourceScan`` items.

A new format is one module with a ``scan(root, params) -> SourceScan`` function and
one entry in ``READERS``; everything after the scan (hashing, headers, duplicates,
the manifest) is shared in ``stages.ingest``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from stages.errors import DataError
from stages.formats.base import SourceItem, SourceScan
from stages.formats.folder import scan as scan_folder
from stages.params import IngestSection

Reader = Callable[[Path, IngestSection], SourceScan]

READERS: dict[str, Reader] = {"folder": scan_folder}

__all__ = ["READERS", "SourceItem", "SourceScan", "detect_format", "reader_for"]


def detect_format(root: Path) -> str:
    """Guess the layout from marker files; the cheapest unambiguous rule wins."""
    if (root / "Annotations").is_dir() or (
        (root / "annotations").is_dir() and any((root / "annotations").glob("*.xml"))
    ):
        return "voc"
    if (root / "labels").is_dir() or (root / "data.yaml").is_file():
        return "yolo"
    if any(root.glob("*.json")):
        return "coco"
    return "folder"


def reader_for(fmt: str, root: Path) -> tuple[str, Reader]:
    """Resolve ``auto`` and return the reader, or say plainly which formats this version reads."""
    resolved = detect_format(root) if fmt == "auto" else fmt
    reader = READERS.get(resolved)
    if reader is None:
        supported = ", ".join(sorted(READERS))
        raise DataError(
            f"{root}: the '{resolved}' annotation format is not implemented yet (this version "
            f"imports: {supported}); convert the data to one of those or set data.format."
        )
    return resolved, reader
