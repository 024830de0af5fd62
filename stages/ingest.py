"""Stage ``ingest``: read the source annotations into one manifest, quarantining what cannot be used.

Reads only headers here (cheap); full decoding is ``validate``'s job.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from stages.cli import exit_with
from stages.errors import DataError
from stages.formats import SourceItem, reader_for
from stages.imaging import ImageReadError, read_header, sha256_file
from stages.layout import Layout
from stages.manifest import (
    QuarantineEntry,
    image_id_from_sha256,
    manifest_frame,
    quarantine_frame,
    write_json,
    write_parquet,
)
from stages.params import Params

log = logging.getLogger("stages.ingest")
STAGE = "ingest"


@dataclass(frozen=True)
class IngestResult:
    manifest: pd.DataFrame
    quarantine: pd.DataFrame
    classes: list[str]
    format: str
    ignored: list[str]

    def __str__(self) -> str:
        return (
            f"{len(self.manifest)} images in {len(self.classes)} classes ({self.format}), "
            f"{len(self.quarantine)} quarantined, {len(self.ignored)} non-image files ignored"
        )


def run(params: Params) -> IngestResult:
    """Import ``data.source`` into the manifest, classes and quarantine under ``paths.interim``."""
    root = params.data.source
    if not root.is_dir():
        raise DataError(f"{root}: data.source is not a folder; point data.source at your dataset root.")
    fmt, reader = reader_for(params.data.format, root)
    scan = reader(root, params.ingest)
    rows, quarantine = describe_items(scan.items)
    rows, duplicate_entries = resolve_duplicates(rows)
    quarantine = scan.quarantine + quarantine + duplicate_entries
    manifest = manifest_frame(rows)
    classes = class_list(manifest, params.data.task, root)
    for path in scan.ignored:
        log.info("ignored non-image file %s", path)

    layout = Layout(params.paths)
    write_parquet(manifest, layout.ingest_manifest)
    write_parquet(quarantine_frame(quarantine), layout.ingest_quarantine)
    write_json(classes, layout.classes)
    return IngestResult(manifest, quarantine_frame(quarantine), classes, fmt, scan.ignored)


def describe_items(items: list[SourceItem]) -> tuple[list[dict], list[QuarantineEntry]]:
    """Hash each file and read its header; unreadable files go to quarantine."""
    rows: list[dict] = []
    quarantine: list[QuarantineEntry] = []
    for item in tqdm(items, desc="ingest: reading headers", unit="img", leave=False):
        try:
            header = read_header(item.file)
        except ImageReadError as exc:
            quarantine.append(QuarantineEntry(item.rel_path, exc.reason, exc.detail, STAGE))
            continue
        sha = sha256_file(item.file)
        rows.append(
            {
                "image_id": image_id_from_sha256(sha),
                "path": item.rel_path,
                "sha256": sha,
                "width": header.width,
                "height": header.height,
                "label": item.label,
                "group": item.group,
                "split": item.split,
                "source": item.source,
            }
        )
    return rows, quarantine


def resolve_duplicates(rows: list[dict]) -> tuple[list[dict], list[QuarantineEntry]]:
    """Same bytes twice: keep the first path when labels agree, drop all when they conflict."""
    by_sha: dict[str, list[dict]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: r["path"]):
        by_sha[row["sha256"]].append(row)
    kept: list[dict] = []
    dropped: list[QuarantineEntry] = []
    for copies in by_sha.values():
        labels = {c["label"] for c in copies}
        if len(copies) == 1:
            kept.append(copies[0])
        elif len(labels) == 1:
            kept.append(copies[0])
            dropped.extend(
                QuarantineEntry(
                    c["path"],
                    "duplicate",
                    f"{c['path']} has the same bytes and label as {copies[0]['path']}, which is kept.",
                    STAGE,
                )
                for c in copies[1:]
            )
        else:
            names = ", ".join(sorted(str(label) for label in labels))
            others = ", ".join(c["path"] for c in copies)
            dropped.extend(
                QuarantineEntry(
                    c["path"],
                    "duplicate_conflicting_labels",
                    f"the same image appears with different labels ({names}): {others}.",
                    STAGE,
                )
                for c in copies
            )
    return kept, dropped


def class_list(manifest: pd.DataFrame, task: str, root: Path) -> list[str]:
    """Sorted class names; the index is the model's output index."""
    classes = sorted(manifest["label"].dropna().unique().tolist())
    if task == "classify" and len(classes) < 2:
        found = classes[0] if classes else "none"
        raise DataError(
            f"{root}: classification needs at least two classes with usable images, found {found}; "
            "add a folder of images for each class."
        )
    return classes


if __name__ == "__main__":
    exit_with(STAGE, run)
