"""What a format reader hands to ingest: items found, files ignored, items dropped."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from stages.manifest import QuarantineEntry


@dataclass(frozen=True)
class SourceItem:
    """One image named by the source, before any byte of it is read."""

    file: Path  # absolute, already checked to lie inside the source root
    rel_path: str  # posix path relative to the source root
    label: str | None
    split: str | None
    group: str | None
    source: str  # the annotation file or layout it came from


@dataclass
class SourceScan:
    items: list[SourceItem] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # non-image files, noted not quarantined
    quarantine: list[QuarantineEntry] = field(default_factory=list)


def inside_root(root: Path, candidate: Path) -> bool:
    """True when ``candidate`` (after resolving symlinks and ``..``) stays under ``root``."""
    try:
        candidate.resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return False
    return True
