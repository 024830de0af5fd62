"""Stage ``ingest``: read the source annotations into one manifest, quarantining what cannot be used.

Reads only headers here (cheap); full decoding is ``validate``'s job. Detection boxes are
converted once, here, to float pixels of the displayed image (after EXIF orientation),
checked and clipped; see docs/architecture.md, "Import and validation".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

from stages.core.cli import exit_with
from stages.core.contracts import (
    boxes_frame,
    manifest_frame,
    quarantine_frame,
    shapes_frame,
    write_json,
    write_parquet,
)
from stages.core.errors import DataError
from stages.core.layout import Layout
from stages.core.params import Params
from stages.dataprep.formats import DETECTION_FORMATS, reader_for
from stages.dataprep.importing import (
    _LOGGED_IGNORED,
    check_task,
    class_list,
    describe_items,
    ingest_summary,
    require_shapes,
    resolve_duplicates,
)

log = logging.getLogger("stages.ingest")
STAGE = "ingest"


@dataclass(frozen=True)
class IngestResult:
    manifest: pd.DataFrame
    quarantine: pd.DataFrame
    classes: list[str]
    format: str
    ignored: list[str]
    boxes: pd.DataFrame
    summary: dict
    shapes: pd.DataFrame | None = None

    def __str__(self) -> str:
        boxes = f", {len(self.boxes)} boxes" if self.format in DETECTION_FORMATS else ""
        return (
            f"{len(self.manifest)} images{boxes} in {len(self.classes)} classes ({self.format}), "
            f"{len(self.quarantine)} quarantined, {len(self.ignored)} non-image files ignored"
        )


def run(params: Params) -> IngestResult:
    """Import ``data.source`` into the manifest, boxes, classes and quarantine under ``paths.interim``."""
    root = params.data.source
    if not root.is_dir():
        raise DataError(f"{root}: data.source is not a folder; point data.source at your dataset root.")
    detection, reader = reader_for(params.data.format, root, params.data)
    check_task(detection.format, params.data.task, root, detection.evidence)
    scan = reader(root, params.data, params.ingest)
    scan.warnings.extend(require_shapes(scan.items, params.data.task, detection.format, root))
    rows, quarantine, stats = describe_items(scan.items, params.ingest)
    rows, duplicate_entries = resolve_duplicates(rows)
    quarantine = quarantine_frame(scan.quarantine + quarantine + duplicate_entries)
    manifest = manifest_frame(rows)
    boxes = boxes_frame([box for row in rows for box in row.get("boxes", [])])
    shapes = shapes_frame([shape for row in rows for shape in row.get("shapes", [])])
    classes = class_list(manifest, params.data.task, root, scan.classes)
    _log_ignored(scan.ignored)
    summary = ingest_summary(detection.format, detection.evidence, manifest, boxes, quarantine, stats, scan)
    if len(shapes) or (quarantine["item"] == "shape").any():
        summary |= {
            "shapes": len(shapes),
            "shape_counts": {
                str(k): int(v) for k, v in shapes["class_name"].value_counts().sort_index().items()
            },
            "quarantined_shapes": int((quarantine["item"] == "shape").sum()),
        }
    for warning in summary["warnings"]:
        log.warning(warning)

    layout = Layout(params.paths)
    write_parquet(manifest, layout.ingest_manifest)
    write_parquet(boxes, layout.ingest_boxes)
    write_parquet(shapes, layout.ingest_shapes)
    write_parquet(quarantine, layout.ingest_quarantine)
    write_json(classes, layout.classes)
    write_json(summary, layout.ingest_summary)
    return IngestResult(manifest, quarantine, classes, detection.format, scan.ignored, boxes, summary, shapes)


def _log_ignored(ignored: list[str]) -> None:
    for path in ignored[:_LOGGED_IGNORED]:
        log.info("ignored non-image file %s", path)
    if len(ignored) > _LOGGED_IGNORED:
        log.info("... and %d more files ignored", len(ignored) - _LOGGED_IGNORED)


if __name__ == "__main__":
    exit_with(STAGE, run)
