"""Stage ``validate``: decode every image, quarantine what fails, warn about thin classes.

Decode results are cached by content hash, so an unchanged image is decoded once.
great-expectations suites on the manifest plug in here (see docs/architecture.md).
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from stages.cli import exit_with
from stages.imaging import ImageReadError, load_rgb, read_header
from stages.layout import Layout
from stages.manifest import (
    QuarantineEntry,
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

    def __str__(self) -> str:
        return f"{len(self.manifest)} images valid, {len(self.quarantine)} quarantined"


def run(params: Params) -> ValidateResult:
    """Check every manifest image; write the validated manifest, quarantine and report."""
    layout = Layout(params.paths)
    manifest = read_parquet(layout.ingest_manifest)
    classes = read_classes(layout.classes)
    files = [params.data.source / p for p in manifest["path"]]
    facts = check_images(files, manifest["sha256"].tolist(), params.validate_, layout.integrity_cache)
    keep, quarantine = apply_policy(manifest, facts, params.validate_)
    valid = manifest[keep].reset_index(drop=True)
    report = validation_report(manifest, valid, quarantine, classes, params.validate_)
    for warning in report["warnings"]:
        log.warning(warning)

    write_parquet(valid, layout.manifest)
    write_parquet(quarantine_frame(quarantine), layout.validate_quarantine)
    write_json(report, layout.validation_report)
    return ValidateResult(valid, quarantine_frame(quarantine), report)


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
) -> dict:
    counts = after["label"].value_counts().reindex(classes, fill_value=0)
    warnings = [
        f"class '{name}' has {count} valid images, fewer than validate.min_images_per_class = "
        f"{params.min_images_per_class}; collect more or merge it with another class."
        for name, count in counts.items()
        if count < params.min_images_per_class
    ]
    reasons: dict[str, int] = {}
    for entry in quarantine:
        reasons[entry.reason] = reasons.get(entry.reason, 0) + 1
    return {
        "images_in": len(before),
        "images_valid": len(after),
        "quarantined": reasons,
        "class_counts": {str(k): int(v) for k, v in counts.items()},
        "warnings": warnings,
    }


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
