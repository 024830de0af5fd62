"""Folder-per-class layout: ``<root>/<class>/*.jpg``, optionally under train/val/test."""

from __future__ import annotations

from pathlib import Path

from stages.core.contracts import QuarantineEntry
from stages.core.errors import DataError
from stages.core.params import DataSection, IngestSection
from stages.dataprep.formats.base import SourceItem, SourceScan, inside_root, split_of


def scan(root: Path, data: DataSection, params: IngestSection) -> SourceScan:
    """Find class folders (and predefined split folders) and the images inside them."""
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise DataError(f"{root}: no class folders found; put each class's images in <source>/<class>/.")
    split_dirs = [d for d in subdirs if split_of(d.name)]
    scan_result = SourceScan()
    if split_dirs and len(split_dirs) == len(subdirs):
        for split_dir in split_dirs:
            if _outside(root, split_dir, scan_result):
                continue
            _scan_classes(root, split_dir, split_of(split_dir.name), params, scan_result)
    else:
        _scan_classes(root, root, None, params, scan_result)
    return scan_result


def _scan_classes(
    root: Path, parent: Path, split: str | None, params: IngestSection, out: SourceScan
) -> None:
    extensions = {e.lower() for e in params.image_extensions}
    for entry in sorted(parent.iterdir()):
        if entry.is_file():
            out.ignored.append(_rel(root, entry))  # stray files beside the class folders
            continue
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        if _outside(root, entry, out):
            continue  # checked before descending: a link to / would otherwise walk the whole disk
        for file in sorted(entry.rglob("*")):
            if file.is_dir():
                continue
            rel = _rel(root, file)
            if not inside_root(root, file):
                out.quarantine.append(
                    QuarantineEntry(
                        rel,
                        "outside_source",
                        f"{rel} is a link that points outside the source folder; it was not opened.",
                        "ingest",
                    )
                )
                continue
            if file.name in params.ignore_files or file.suffix.lower() not in extensions:
                out.ignored.append(rel)
                continue
            out.items.append(
                SourceItem(
                    file=file, rel_path=rel, label=entry.name, split=split, group=None, source="folder"
                )
            )


def _outside(root: Path, folder: Path, out: SourceScan) -> bool:
    """Quarantine (once, unopened) a folder that is a link out of the source; True when it was."""
    if inside_root(root, folder):
        return False
    rel = _rel(root, folder)
    out.quarantine.append(
        QuarantineEntry(
            rel,
            "outside_source",
            f"{rel}/ is a link to a folder outside the source folder; it was not opened: copy the images in.",
            "ingest",
        )
    )
    return True


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()
