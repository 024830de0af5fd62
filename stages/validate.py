"""Stage ``validate``: decode every image, quarantine what fails, then run the expectation gate.

Decode results are cached by content hash, so an unchanged image is decoded once. The
great-expectations suite (``stages/expectations.py``) then checks the manifest, the boxes
and the class counts; ``validate.blocking`` checks fail the stage, ``validate.warn`` checks
only warn. The Data Docs HTML lands in ``paths.reports/validation_docs/``.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from stages import expectations
from stages.cli import exit_with
from stages.errors import DataError
from stages.imaging import ImageReadError, load_rgb, read_header
from stages.layout import Layout
from stages.manifest import (
    QuarantineEntry,
    boxes_frame,
    quarantine_frame,
    read_classes,
    read_parquet,
    write_json,
    write_parquet,
)
from stages.params import Params, ValidateSection

log = logging.getLogger("stages.validate")
STAGE = "validate"


@dataclass(frozen=True)
class IntegrityFacts:
    """What decoding one file found; independent of params, so safe to cache by content hash."""

    ok: bool
    reason: str
    detail: str
    width: int
    height: int
    mode: str
    frames: int


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
    ingest = _read_summary(layout.ingest_summary)
    files = [params.data.source / p for p in manifest["path"]]
    facts = check_images(files, manifest["sha256"].tolist(), params.validate_, layout.integrity_cache)
    keep, quarantine = apply_policy(manifest, facts, params.validate_)
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
    for warning in report["warnings"]:
        log.warning(warning)
    log.info("Data Docs: %s", layout.validation_docs / "index.html")

    write_parquet(quarantine_frame(quarantine), layout.validate_quarantine)
    write_json(report, layout.validation_report)
    failed = [c.name for c in checks if c.severity == "blocking" and not c.success]
    if failed:
        for stale in (layout.manifest, layout.boxes):
            stale.unlink(missing_ok=True)  # nothing downstream may read data that failed the gate
        raise DataError(
            f"validation failed on blocking checks {', '.join(failed)} (see {layout.validation_report} and "
            f"{layout.validation_docs / 'index.html'}); fix the data, or move a check to validate.warn."
        )
    write_parquet(valid, layout.manifest)
    write_parquet(valid_boxes, layout.boxes)
    return ValidateResult(valid, quarantine_frame(quarantine), report, valid_boxes)


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


def inspect_image(path: Path, max_pixels: int) -> IntegrityFacts:
    """Header first (refuse oversized images before decoding), then a full decode."""
    try:
        header = read_header(path)
        pixels = header.width * header.height
        if pixels > max_pixels:
            return IntegrityFacts(
                False,
                "too_many_pixels",
                f"{path.name} declares {header.width}x{header.height} = {pixels:,} pixels, over "
                f"validate.max_pixels = {max_pixels:,}; it was not decoded (raise the limit if it is real).",
                header.width,
                header.height,
                header.mode,
                header.frames,
            )
        image = load_rgb(path)
    except ImageReadError as exc:
        return IntegrityFacts(False, exc.reason, exc.detail, 0, 0, "", 0)
    return IntegrityFacts(True, "", "", image.width, image.height, header.mode, header.frames)


def check_images(
    files: list[Path], hashes: list[str], params: ValidateSection, cache_dir: Path
) -> list[IntegrityFacts]:
    """Inspect files in parallel, reusing cached results for content already decoded."""
    results: dict[int, IntegrityFacts] = {}
    todo: list[int] = []
    for i, sha in enumerate(hashes):
        cached = _read_cache(cache_dir, sha, params.max_pixels)
        if cached is None:
            todo.append(i)
        else:
            results[i] = cached
    if todo:
        log.info("decoding %d images (%d cached)", len(todo), len(results))
    progress = tqdm(total=len(todo), desc="validate: decoding", unit="img", leave=False)
    if params.workers > 1 and len(todo) > 16:
        with ProcessPoolExecutor(max_workers=params.workers) as pool:
            limits = [params.max_pixels] * len(todo)
            for i, facts in zip(
                todo, pool.map(inspect_image, [files[i] for i in todo], limits, chunksize=8), strict=True
            ):
                results[i] = facts
                progress.update()
    else:
        for i in todo:
            results[i] = inspect_image(files[i], params.max_pixels)
            progress.update()
    progress.close()
    for i in todo:
        _write_cache(cache_dir, hashes[i], params.max_pixels, results[i])
    return [results[i] for i in range(len(files))]


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
    detect = task == "detect"
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
            f"class '{row.class_name}' has {row.images} valid images, fewer than "
            f"validate.min_images_per_class = {params.min_images_per_class}; collect more or merge it "
            "with another class."
            for row in counts.itertuples()
            if row.images < params.min_images_per_class
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


def _read_summary(path: Path) -> dict:
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def _cache_file(cache_dir: Path, sha: str, max_pixels: int) -> Path:
    return cache_dir / sha[:2] / f"{sha}-{max_pixels}.json"


def _read_cache(cache_dir: Path, sha: str, max_pixels: int) -> IntegrityFacts | None:
    file = _cache_file(cache_dir, sha, max_pixels)
    if not file.is_file():
        return None
    try:
        return IntegrityFacts(**json.loads(file.read_text(encoding="utf-8")))
    except (ValueError, TypeError):
        return None  # a damaged cache entry is simply recomputed


def _write_cache(cache_dir: Path, sha: str, max_pixels: int, facts: IntegrityFacts) -> None:
    file = _cache_file(cache_dir, sha, max_pixels)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(asdict(facts)), encoding="utf-8")


if __name__ == "__main__":
    exit_with(STAGE, run)
