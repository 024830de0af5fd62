"""Stage ``split``: assign every validated image to train, val or test, seeded and stratified.

Predefined splits from the source are honoured; what is missing is carved out of train.
Group- and near-duplicate-aware splitting plugs in at ``assign_splits`` (docs/architecture.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from stages.cli import exit_with
from stages.errors import DataError
from stages.layout import Layout
from stages.manifest import SPLIT_NAMES, read_parquet, write_json, write_parquet
from stages.params import Params, SplitSection

log = logging.getLogger("stages.split")
STAGE = "split"


@dataclass(frozen=True)
class SplitResult:
    splits: pd.DataFrame
    audit: dict

    def __str__(self) -> str:
        counts = self.splits["split"].value_counts()
        return ", ".join(f"{name} {int(counts.get(name, 0))}" for name in SPLIT_NAMES)


def run(params: Params) -> SplitResult:
    """Write ``splits.parquet`` (image_id -> split) and the split audit."""
    layout = Layout(params.paths)
    manifest = read_parquet(layout.manifest)
    splits = assign_splits(manifest, params.split, params.base.seed)
    audit = audit_splits(manifest, splits)
    for warning in audit["warnings"]:
        log.warning(warning)
    write_parquet(splits, layout.splits)
    write_json(audit, layout.split_audit)
    return SplitResult(splits, audit)


def assign_splits(manifest: pd.DataFrame, params: SplitSection, seed: int) -> pd.DataFrame:
    """Return image_id -> split; same manifest, params and seed give the same frame."""
    if len(manifest) < 3:
        raise DataError(f"only {len(manifest)} valid images; splitting into train/val/test needs at least 3.")
    frame = manifest[["image_id", "label", "split"]].sort_values("image_id").reset_index(drop=True)
    assigned = frame["split"].astype("string")
    if not params.honour_predefined:
        assigned[:] = pd.NA
    fractions = params.fractions
    unassigned = assigned.isna()
    if unassigned.any():
        assigned[unassigned] = _stratified_three_way(
            frame[unassigned], fractions.train, fractions.val, fractions.test, seed
        )
    # A predefined layout often lacks test (or val): carve it from train, stratified.
    for name, fraction in (("test", fractions.test), ("val", fractions.val)):
        if fraction > 0 and not (assigned == name).any():
            train_rows = frame[assigned == "train"]
            size = max(1, round(fraction * len(frame)))
            _, carved = _stratified_take(train_rows, size, seed)
            assigned[carved.index] = name
            log.info("source has no %s split: carved %d images from train", name, len(carved))
    return pd.DataFrame({"image_id": frame["image_id"], "split": assigned.astype("string")})


def _stratified_three_way(rows: pd.DataFrame, train: float, val: float, test: float, seed: int) -> np.ndarray:
    labels = pd.Series("train", index=rows.index, dtype="string")
    rest, test_rows = _stratified_take(rows, max(1, round(test * len(rows))), seed)
    labels[test_rows.index] = "test"
    if val > 0:
        val_size = max(1, round(val * len(rows)))
        _, val_rows = _stratified_take(rest, val_size, seed + 1)
        labels[val_rows.index] = "val"
    return labels.to_numpy()


def _stratified_take(rows: pd.DataFrame, size: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``size`` rows off, stratified by label when every class can spare one."""
    if size >= len(rows):
        raise DataError(
            f"cannot take {size} of {len(rows)} images for a split; lower split.fractions or add data."
        )
    counts = rows["label"].value_counts(dropna=False)
    stratify = rows["label"].fillna("") if counts.min() >= 2 and size >= counts.size else None
    if stratify is None and rows["label"].notna().any():
        log.warning("a class has fewer than 2 images here: this split is not stratified")
    kept, taken = train_test_split(rows, test_size=size, random_state=seed, stratify=stratify)
    return kept, taken


def audit_splits(manifest: pd.DataFrame, splits: pd.DataFrame) -> dict:
    """Counts per split and class, class-proportion deviation, and exact-duplicate leakage."""
    joined = manifest.merge(splits, on="image_id", suffixes=("_source", ""))
    overall = joined["label"].value_counts(normalize=True)
    per_split: dict[str, dict] = {}
    max_deviation = 0.0
    for name in SPLIT_NAMES:
        part = joined[joined["split"] == name]
        if part.empty:
            continue
        share = part["label"].value_counts(normalize=True).reindex(overall.index, fill_value=0.0)
        deviation = float((share - overall).abs().max()) if len(overall) else 0.0
        max_deviation = max(max_deviation, deviation)
        per_split[name] = {
            "images": len(part),
            "class_counts": {str(k): int(v) for k, v in part["label"].value_counts().items()},
            "max_class_share_deviation": round(deviation, 4),
        }
    crossing = joined.groupby("sha256")["split"].nunique()
    leaked = int((crossing > 1).sum())
    warnings = []
    if leaked:
        warnings.append(f"{leaked} identical images appear in more than one split.")
    return {
        "splits": per_split,
        "max_class_share_deviation": round(max_deviation, 4),
        "exact_duplicates_across_splits": leaked,
        "warnings": warnings,
    }


if __name__ == "__main__":
    exit_with(STAGE, run)
