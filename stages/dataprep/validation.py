"""The validation policy: what gets quarantined, and the report that says why."""

from __future__ import annotations

import logging

import pandas as pd

from stages.core.contracts import (
    QuarantineEntry,
    boxes_frame,
)
from stages.core.layout import Layout
from stages.core.params import Params, ValidateSection
from stages.core.params.base import uses_boxes
from stages.dataprep import checks as expectations
from stages.dataprep.integrity import IntegrityFacts

log = logging.getLogger("stages.validate")

STAGE = "validate"


def drop_boxes_of_quarantined(
    boxes: pd.DataFrame, manifest: pd.DataFrame, valid: pd.DataFrame, quarantine: list[QuarantineEntry]
) -> tuple[pd.DataFrame, list[QuarantineEntry]]:
    """Boxes of an image quarantined here go too, each listed with its image's reason."""
    gone = boxes[~boxes["image_id"].isin(set(valid["image_id"]))]
    if gone.empty:
        return boxes.reset_index(drop=True), []
    paths = dict(zip(manifest["image_id"], manifest["path"], strict=True))
    sources = dict(zip(manifest["image_id"], manifest["source"], strict=True))
    reasons = {entry.path: entry.reason for entry in quarantine}
    entries = []
    for box in gone.itertuples():
        path = paths.get(box.image_id, str(box.image_id))
        coords = f"[{box.x_min:g}, {box.y_min:g}, {box.x_max:g}, {box.y_max:g}]"
        entries.append(
            QuarantineEntry(
                path,
                "image_quarantined",
                f"the '{box.class_name}' box {coords} was dropped because its image {path} was quarantined "
                f"({reasons.get(path, 'not in the manifest')}).",
                STAGE,
                "box",
                str(sources.get(box.image_id) or ""),
            )
        )
    kept = boxes[boxes["image_id"].isin(set(valid["image_id"]))]
    return kept.reset_index(drop=True), entries


def shapes_of_valid(shapes: pd.DataFrame, valid: pd.DataFrame) -> pd.DataFrame:
    """Shapes pass through validate unchanged; those of an image quarantined here go with it."""
    return shapes[shapes["image_id"].isin(set(valid["image_id"]))].reset_index(drop=True)


def shape_counts(shapes: pd.DataFrame, classes: list[str]) -> dict[str, int]:
    """Polygons and masks per class, for the report's data section."""
    counts = shapes["class_name"].value_counts().reindex(classes, fill_value=0)
    return {str(k): int(v) for k, v in counts.items()}


def apply_policy(
    manifest: pd.DataFrame, facts: list[IntegrityFacts], params: ValidateSection
) -> tuple[pd.Series, list[QuarantineEntry]]:
    """Decide per image from cached facts and params: keep, or quarantine with a reason."""
    keep = []
    quarantine: list[QuarantineEntry] = []
    for path, fact in zip(manifest["path"], facts, strict=True):
        if not fact.ok:
            quarantine.append(QuarantineEntry(path, fact.reason, fact.detail, STAGE))
            keep.append(False)
        elif min(fact.width, fact.height) < params.min_side:
            quarantine.append(
                QuarantineEntry(
                    path,
                    "too_small",
                    f"{path} is {fact.width}x{fact.height}, smaller than validate.min_side = "
                    f"{params.min_side} px on its shorter side.",
                    STAGE,
                )
            )
            keep.append(False)
        else:
            keep.append(True)
    return pd.Series(keep, index=manifest.index, dtype=bool), quarantine


def reconcile_sizes(
    manifest: pd.DataFrame, facts: list[IntegrityFacts], boxes: pd.DataFrame
) -> tuple[pd.DataFrame, pd.Series, list[QuarantineEntry], int]:
    """Compare the decoded (EXIF-oriented) size with what ingest read from the header.

    They differ when the header misleads, e.g. a PNG whose eXIf chunk (with a rotation) comes
    after the pixel data: ingest's header read does not see it, the decoder rotates. An image
    without boxes only needs its size corrected in the manifest; one with boxes is quarantined,
    since its boxes were placed on the other frame and would silently misalign.
    Returns the manifest (sizes corrected), the rows to keep, the entries and the count fixed.
    """
    with_boxes = set(boxes["image_id"])
    keep: list[bool] = []
    widths, heights = manifest["width"].tolist(), manifest["height"].tolist()
    entries: list[QuarantineEntry] = []
    fixed = 0
    rows = zip(manifest["image_id"], manifest["path"], widths, heights, strict=True)
    for position, ((image_id, path, width, height), fact) in enumerate(zip(rows, facts, strict=True)):
        keep.append(True)
        if not fact.ok or (fact.width, fact.height) == (width, height):
            continue
        if image_id in with_boxes:
            keep[-1] = False
            entries.append(
                QuarantineEntry(
                    path,
                    "size_mismatch",
                    f"{path} decodes to {fact.width}x{fact.height} but its header said {width}x{height} (an "
                    "EXIF rotation the header read did not see, such as a PNG eXIf chunk after the pixels), "
                    "so its boxes would not line up; save the image with the rotation applied and annotate "
                    "it again.",
                    STAGE,
                )
            )
        else:
            widths[position], heights[position] = fact.width, fact.height
            fixed += 1
    dtypes = {"width": manifest["width"].dtype, "height": manifest["height"].dtype}
    manifest = manifest.assign(width=widths, height=heights).astype(dtypes)
    keep_series = pd.Series(keep, index=manifest.index, dtype=bool)
    return manifest, keep_series, entries, fixed


def validation_report(
    before: pd.DataFrame,
    after: pd.DataFrame,
    quarantine: list[QuarantineEntry],
    classes: list[str],
    params: ValidateSection,
    boxes_before: pd.DataFrame | None = None,
    boxes_after: pd.DataFrame | None = None,
    task: str = "classify",
) -> dict:
    """Counts of what came in, what passed and why the rest was dropped."""
    boxes_before = boxes_before if boxes_before is not None else boxes_frame([])
    boxes_after = boxes_after if boxes_after is not None else boxes_frame([])
    detect = uses_boxes(task)
    if detect:
        counts = boxes_after.groupby("class_name")["image_id"].nunique().reindex(classes, fill_value=0)
    else:
        counts = after["label"].value_counts().reindex(classes, fill_value=0)
    reasons: dict[str, int] = {}
    for entry in quarantine:
        reasons[entry.reason] = reasons.get(entry.reason, 0) + 1
    report = {
        "images_in": len(before),
        "images_valid": len(after),
        "quarantined": reasons,
        "class_counts": {str(k): int(v) for k, v in counts.items()},
        "warnings": [],
    }
    if detect:
        box_counts = boxes_after["class_name"].value_counts().reindex(classes, fill_value=0)
        report |= {
            "boxes_in": len(boxes_before),
            "boxes_valid": len(boxes_after),
            "box_counts": {str(k): int(v) for k, v in box_counts.items()},
        }
    return report


def add_checks(
    report: dict,
    checks: list[expectations.CheckResult],
    ingest: dict,
    valid: pd.DataFrame,
    boxes: pd.DataFrame,
    classes: list[str],
    params: Params,
) -> dict:
    """Fold the expectation results and ingest's summary into the report, with one sentence per problem."""
    layout = Layout(params.paths)
    warnings = list(ingest.get("warnings", []))
    counts = expectations.class_counts(valid, boxes, classes, params.data.task)
    for check in checks:
        if check.success:
            continue
        sentences = _sentences(check, counts, params.validate_)
        if check.severity == "warn":
            warnings += sentences
        else:
            log.error("blocking check %s failed: %s", check.name, " ".join(sentences))
    return report | {
        "warnings": warnings,
        "checks": {c.name: c.as_dict() for c in checks},
        "ingest": {k: v for k, v in ingest.items() if k != "warnings"},
        # Relative to paths.reports, so the report is the same wherever the project lives.
        "data_docs": (layout.validation_docs / "index.html").relative_to(layout.paths.reports).as_posix(),
    }


def _sentences(check: expectations.CheckResult, counts: pd.DataFrame, params: ValidateSection) -> list[str]:
    """What a failed check means, in words that name the class or the rows."""
    if check.name == "min_images_per_class":
        return [
            f"class '{class_name}' has {images} valid images, fewer than "
            f"validate.min_images_per_class = {params.min_images_per_class}; collect more or merge it "
            "with another class."
            for class_name, images in counts[["class_name", "images"]].itertuples(index=False, name=None)
            if images < params.min_images_per_class
        ]
    if check.name == "class_balance":
        present = counts[counts["images"] > 0].sort_values(["images", "class_name"])
        small, large = present.iloc[0], present.iloc[-1]
        return [
            f"classes are imbalanced: '{large.class_name}' has {large.images} images, '{small.class_name}' "
            f"{small.images} (ratio {large.images / small.images:.1f} > validate.max_class_ratio = "
            f"{params.max_class_ratio:g}); collect more of the small classes or set train.imbalance."
        ]
    examples = ", ".join(map(str, check.examples))
    return [
        f"check {check.name} failed on {check.unexpected} row{'s' * (check.unexpected != 1)} of the "
        f"{check.table} table (e.g. {examples}): "
        f"{expectations.CHECKS[check.name].description}"
    ]
