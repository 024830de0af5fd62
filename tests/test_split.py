"""Seeded, stratified splits that honour predefined folders, and their audit."""

from __future__ import annotations

import pandas as pd
import pytest

from stages.errors import DataError
from stages.params import SplitSection
from stages.split import assign_splits, audit_splits


def _manifest(counts: dict[str, int], split: str | None = None) -> pd.DataFrame:
    rows = []
    for label, n in counts.items():
        for i in range(n):
            sha = f"{label}{i:04d}".ljust(64, "0")
            rows.append(
                {
                    "image_id": sha[:16],
                    "path": f"{label}/{i}.png",
                    "sha256": sha,
                    "label": label,
                    "split": split,
                }
            )
    return pd.DataFrame(rows).astype({"split": "string"})


def test_same_seed_same_split_and_other_seed_differs() -> None:
    manifest = _manifest({"a": 40, "b": 40})
    first = assign_splits(manifest, SplitSection(), seed=1)
    again = assign_splits(manifest.sample(frac=1, random_state=3), SplitSection(), seed=1)
    other = assign_splits(manifest, SplitSection(), seed=2)
    pd.testing.assert_frame_equal(first, again)  # row order of the input does not matter
    assert not first.equals(other)


def test_fractions_and_stratification_hold() -> None:
    manifest = _manifest({"a": 60, "b": 20})
    splits = assign_splits(manifest, SplitSection(), seed=0)
    counts = splits["split"].value_counts()
    assert counts["train"] == 56 and counts["val"] == 12 and counts["test"] == 12
    audit = audit_splits(manifest, splits)
    assert audit["max_class_share_deviation"] <= 0.05
    assert audit["splits"]["test"]["class_counts"] == {"a": 9, "b": 3}


def test_predefined_splits_are_kept_and_missing_test_is_carved_from_train() -> None:
    val = _manifest({"a": 5, "b": 5}, "val")
    val["image_id"] = "v" + val["image_id"].str[1:]
    manifest = pd.concat([_manifest({"a": 30, "b": 30}, "train"), val], ignore_index=True)
    splits = assign_splits(manifest, SplitSection(), seed=0).merge(
        manifest[["image_id", "split"]], on="image_id", suffixes=("", "_source")
    )
    kept_val = splits[splits["split_source"] == "val"]
    assert (kept_val["split"] == "val").all()
    assert set(splits.loc[splits["split_source"] == "train", "split"]) == {"train", "test"}
    assert (splits["split"] == "test").sum() == round(0.15 * 70)


def test_predefined_splits_can_be_ignored() -> None:
    manifest = _manifest({"a": 20, "b": 20}, "train")
    splits = assign_splits(manifest, SplitSection(honour_predefined=False), seed=0)
    assert set(splits["split"]) == {"train", "val", "test"}


def test_too_few_images_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="at least 3"):
        assign_splits(_manifest({"a": 1, "b": 1}), SplitSection(), seed=0)


def test_audit_flags_identical_images_in_two_splits() -> None:
    manifest = _manifest({"a": 4})
    manifest.loc[1, "sha256"] = manifest.loc[0, "sha256"]
    splits = pd.DataFrame({"image_id": manifest["image_id"], "split": ["train", "test", "train", "val"]})
    audit = audit_splits(manifest, splits)
    assert audit["exact_duplicates_across_splits"] == 1
    assert audit["warnings"]
