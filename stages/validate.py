"""Stage ``validate``: decode every image, quarantine what fails, then run the expectation gate.

Decode results are cached by content hash, so an unchanged image is decoded once. The
great-expectations suite (``stages/dataprep/checks.py``) then checks the manifest, the boxes
and the class counts; ``validate.blocking`` checks fail the stage, ``validate.warn`` checks
only warn. The Data Docs HTML lands in ``paths.reports/validation_docs/``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from stages.core.cli import exit_with
from stages.core.contracts import (
    boxes_frame,
    quarantine_frame,
    read_classes,
    read_parquet,
    shapes_frame,
    write_json,
    write_parquet,
)
from stages.core.errors import DataError
from stages.core.layout import Layout
from stages.core.params import Params
from stages.dataprep import checks as expectations
from stages.dataprep.imaging import allowed_formats
from stages.dataprep.integrity import check_images
from stages.dataprep.validation import (
    add_checks,
    apply_policy,
    drop_boxes_of_quarantined,
    reconcile_sizes,
    shape_counts,
    shapes_of_valid,
    validation_report,
)

log = logging.getLogger("stages.validate")
STAGE = "validate"


@dataclass(frozen=True)
class ValidateResult:
    manifest: pd.DataFrame
    quarantine: pd.DataFrame
    report: dict
    boxes: pd.DataFrame | None = None

    def __str__(self) -> str:
        boxes = f", {len(self.boxes)} boxes" if self.boxes is not None and len(self.boxes) else ""
        return f"{len(self.manifest)} images valid{boxes}, {len(self.quarantine)} quarantined"


def run(params: Params) -> ValidateResult:
    """Check every manifest image and the expectation suite; write the validated data and the report."""
    layout = Layout(params.paths)
    manifest = read_parquet(layout.ingest_manifest)
    classes = read_classes(layout.classes)
    boxes = read_parquet(layout.ingest_boxes) if layout.ingest_boxes.is_file() else boxes_frame([])
    shapes = read_parquet(layout.ingest_shapes) if layout.ingest_shapes.is_file() else shapes_frame([])
    ingest = _read_summary(layout.ingest_summary)
    files = [params.data.source / p for p in manifest["path"]]
    formats = allowed_formats(params.ingest.image_extensions)
    facts = check_images(
        files, manifest["sha256"].tolist(), params.validate_, layout.integrity_cache, formats
    )
    keep, quarantine = apply_policy(manifest, facts, params.validate_)
    placed = pd.concat([boxes[["image_id"]], shapes[["image_id"]]])  # masks are sized too
    manifest, same_size, resized, fixed = reconcile_sizes(manifest, facts, placed)
    if fixed:
        log.info(
            "%d images without boxes decode to another size than their header said; sizes corrected", fixed
        )
    keep, quarantine = keep & same_size, quarantine + resized
    valid = manifest[keep].reset_index(drop=True)
    valid_boxes, box_entries = drop_boxes_of_quarantined(boxes, manifest, valid, quarantine)
    quarantine = quarantine + box_entries
    checks = expectations.run_suite(
        valid, valid_boxes, classes, params.validate_, params.data.task, layout.validation_docs
    )
    report = validation_report(
        manifest, valid, quarantine, classes, params.validate_, boxes, valid_boxes, params.data.task
    )
    report = add_checks(report, checks, ingest, valid, valid_boxes, classes, params)
    valid_shapes = shapes_of_valid(shapes, valid)
    if len(shapes):
        report |= {"shapes_in": len(shapes), "shapes_valid": len(valid_shapes)}
        report["shape_counts"] = shape_counts(valid_shapes, classes)
    for warning in report["warnings"]:
        log.warning(warning)
    log.info("Data Docs: %s", layout.validation_docs / "index.html")

    write_parquet(quarantine_frame(quarantine), layout.validate_quarantine)
    write_json(report, layout.validation_report)
    failed = [c.name for c in checks if c.severity == "blocking" and not c.success]
    if failed:
        for stale in (layout.manifest, layout.boxes, layout.shapes):
            stale.unlink(missing_ok=True)  # nothing downstream may read data that failed the gate
        raise DataError(
            f"validation failed on blocking checks {', '.join(failed)} (see {layout.validation_report} and "
            f"{layout.validation_docs / 'index.html'}); fix the data, or move a check to validate.warn."
        )
    write_parquet(valid, layout.manifest)
    write_parquet(valid_boxes, layout.boxes)
    write_parquet(valid_shapes, layout.shapes)
    return ValidateResult(valid, quarantine_frame(quarantine), report, valid_boxes)


def _read_summary(path: Path) -> dict:
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


if __name__ == "__main__":
    exit_with(STAGE, run)
