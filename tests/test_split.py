"""Leakage-free splits: clusters and groups stay whole, proportions hold, the audit fails on leaks."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stages import ingest, split, validate
from stages.core.errors import DataError
from stages.core.layout import Layout
from stages.core.params import SplitSection
from stages.dataprep.leakage import audit_leakage, audit_splits
from stages.dataprep.splitting import (
    allocate_folds,
    assign_splits,
    class_membership,
    fold_count,
    stratum_labels,
)
from tests.conftest import fast_params
from tests.scenes import VARIANTS, save, scene

MAX_DISTANCE = {"phash": 10, "dhash": 10}


def _manifest(counts: dict[str, int], split_name: str | None = None, prefix: str = "") -> pd.DataFrame:
    rows = []
    for label, n in counts.items():
        for i in range(n):
            sha = f"{prefix}{label}{i:04d}".ljust(64, "0")
            rows.append(
                {
                    "image_id": sha[:16],
                    "path": f"{label}/{prefix}{i}.png",
                    "sha256": sha,
                    "label": label,
                    "group": None,
                    "split": split_name,
                }
            )
    return pd.DataFrame(rows).astype({"group": "string", "split": "string"})


def _side(splits: pd.DataFrame) -> dict[str, str]:
    return dict(zip(splits["image_id"], splits["split"], strict=True))


# --- the pure splitter -----------------------------------------------------------------------


def test_same_seed_same_split_and_other_seed_differs() -> None:
    manifest = _manifest({"a": 40, "b": 40})
    manifest["group"] = pd.array([f"g{i // 3}" for i in range(len(manifest))], dtype="string")
    first = assign_splits(manifest, SplitSection(), seed=1).splits
    again = assign_splits(manifest.sample(frac=1, random_state=3), SplitSection(), seed=1).splits
    other = assign_splits(manifest, SplitSection(), seed=2).splits
    pd.testing.assert_frame_equal(first, again)  # row order of the input does not matter
    assert not first.equals(other)


def test_groups_and_clusters_never_cross_and_imbalanced_classes_stay_stratified() -> None:
    manifest = _manifest({"common": 240, "middle": 90, "rare": 30})
    rng = np.random.default_rng(0)
    # groups of 1-6 images within a class, and near-duplicate chains joining a few of them
    sizes = rng.integers(1, 7, 200)
    labels_of_group = np.repeat(np.arange(len(sizes)), sizes)[: len(manifest)]
    manifest["group"] = pd.array(
        [f"{lab}-{g}" for lab, g in zip(manifest["label"], labels_of_group, strict=True)], dtype="string"
    )
    ids = manifest["image_id"].to_numpy()
    a = rng.integers(0, len(ids), 40)
    b = rng.integers(0, len(ids), 40)
    pairs = pd.DataFrame({"image_id_a": ids[np.minimum(a, b)], "image_id_b": ids[np.maximum(a, b)]})
    pairs = pairs[pairs["image_id_a"] != pairs["image_id_b"]]

    plan = assign_splits(manifest, SplitSection(), seed=0, pairs=pairs)
    side = _side(plan.splits)
    for _, rows in manifest.groupby("group"):
        assert len({side[i] for i in rows["image_id"]}) == 1
    assert all(side[x] == side[y] for x, y in zip(pairs["image_id_a"], pairs["image_id_b"], strict=True))
    audit = audit_splits(manifest, plan.splits)
    fractions = {name: info["fraction"] for name, info in audit["splits"].items()}
    assert fractions == pytest.approx({"train": 0.7, "val": 0.15, "test": 0.15}, abs=0.03)
    assert audit["max_class_share_deviation"] <= 0.04
    assert audit["splits"]["test"]["class_counts"]["rare"] >= 3


def test_without_groups_the_fractions_are_met_to_the_image() -> None:
    splits = assign_splits(_manifest({"a": 60, "b": 20}), SplitSection(), seed=0).splits
    counts = splits["split"].value_counts()
    assert (counts["train"], counts["val"], counts["test"]) == (56, 12, 12)
    audit = audit_splits(_manifest({"a": 60, "b": 20}), splits)
    assert audit["max_class_share_deviation"] <= 0.05


def test_identical_bytes_stay_together_even_without_a_hash_search() -> None:
    manifest = _manifest({"a": 30, "b": 30})
    manifest.loc[5:9, "sha256"] = manifest.loc[4, "sha256"]
    splits = assign_splits(manifest, SplitSection(), seed=3).splits
    assert splits.set_index("image_id").loc[manifest.loc[4:9, "image_id"], "split"].nunique() == 1


def test_fold_count_and_allocation() -> None:
    assert fold_count([0.7, 0.15, 0.15], 1000) == 20
    assert fold_count([0.8, 0.1, 0.1], 1000) == 10
    assert fold_count([0.7, 0.15, 0.15], 4) == 4  # never more folds than units
    targets = {"train": 0.7, "val": 0.15, "test": 0.15}
    sizes = [5] * 6 + [40] + [5] * 6  # one fold holds a huge cluster
    allocation = allocate_folds(np.array(sizes)[:, None], targets)
    assert allocation[6] == "train"
    got = {name: sum(s for s, a in zip(sizes, allocation, strict=True) if a == name) for name in targets}
    assert got == {"train": 70, "val": 15, "test": 15}
    assert sorted(allocate_folds(np.ones((3, 1)), targets)) == ["test", "train", "val"]  # one each
    # two classes: the two folds of the minority class go to different splits
    folds = np.array([[6, 0], [6, 0], [6, 0], [6, 0], [6, 0], [6, 0], [0, 3], [0, 3]])
    allocation = allocate_folds(folds, {"train": 0.5, "test": 0.5})
    assert allocation[6] != allocation[7]


def test_too_few_images_or_units_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="at least 3"):
        assign_splits(_manifest({"a": 1, "b": 1}), SplitSection(), seed=0)
    manifest = _manifest({"a": 10, "b": 10})
    manifest["group"] = pd.array(["x"] * 10 + ["y"] * 10, dtype="string")
    with pytest.raises(DataError, match="only 2 independent groups"):
        assign_splits(manifest, SplitSection(), seed=0)


def test_detection_stratifies_on_class_sets_with_rare_sets_on_their_rarest_class() -> None:
    manifest = _manifest({"img": 120})
    manifest["label"] = pd.array([None] * 120, dtype="string")
    ids = manifest["image_id"].tolist()
    rows = []
    for k, image_id in enumerate(ids):
        classes = ["car"] if k % 3 else ["car", "person"]
        if k % 40 == 0:
            classes = ["car", "dog"]  # 3 images: too rare to be its own stratum
        if k == 7:
            classes = []  # a background image
        rows += [{"image_id": image_id, "class_name": c} for c in classes for _ in range(2)]
    boxes = pd.DataFrame(rows)
    strata = stratum_labels(manifest, boxes)
    assert strata[ids[3]] == "car|person" and strata[ids[1]] == "car"
    assert strata[ids[40]] == "dog" and strata[ids[7]] == "(no boxes)"
    plan = assign_splits(manifest, SplitSection(), seed=0, strata=strata)
    audit = audit_splits(manifest, plan.splits, class_membership(manifest, boxes))
    assert audit["splits"]["train"]["class_counts"]["car"] > 0
    assert audit["max_class_share_deviation"] <= 0.06


def test_predefined_train_and_val_become_train_val_and_test() -> None:
    val = _manifest({"a": 10, "b": 10}, "val", prefix="v")
    manifest = pd.concat([_manifest({"a": 40, "b": 40}, "train"), val], ignore_index=True)
    plan = assign_splits(manifest, SplitSection(), seed=0)
    joined = plan.splits.merge(manifest[["image_id", "split"]], on="image_id", suffixes=("", "_source"))
    assert (joined.loc[joined["split_source"] == "val", "split"] == "test").all()
    from_train = joined.loc[joined["split_source"] == "train", "split"].value_counts()
    assert set(from_train.index) == {"train", "val"}
    assert from_train["val"] == pytest.approx(80 * 0.15 / 0.85, abs=2)
    assert any("used as the test set" in note for note in plan.notes)


def test_predefined_train_and_test_get_val_carved_and_train_only_gets_both() -> None:
    test = _manifest({"a": 10, "b": 10}, "test", prefix="t")
    plan = assign_splits(pd.concat([_manifest({"a": 40, "b": 40}, "train"), test]), SplitSection(), 0)
    counts = plan.splits["split"].value_counts()
    assert counts["test"] == 20 and counts["val"] == pytest.approx(80 * 0.15 / 0.85, abs=2)
    only_train = assign_splits(_manifest({"a": 40, "b": 40}, "train"), SplitSection(), 0)
    assert set(only_train.splits["split"]) == {"train", "val", "test"}
    ignored = assign_splits(
        pd.concat([_manifest({"a": 40, "b": 40}, "train"), test]), SplitSection(honour_predefined=False), 0
    )
    assert ignored.splits["split"].value_counts()["test"] == 15


def test_a_predefined_split_without_train_is_refused() -> None:
    with pytest.raises(DataError, match="no train split"):
        assign_splits(_manifest({"a": 5, "b": 5}, "val"), SplitSection(), seed=0)


def test_audit_lists_identical_images_and_groups_across_splits() -> None:
    manifest = _manifest({"a": 4})
    manifest.loc[1, "sha256"] = manifest.loc[0, "sha256"]
    manifest["group"] = pd.array(["g", "h", "g", None], dtype="string")
    splits = pd.DataFrame({"image_id": manifest["image_id"], "split": ["train", "test", "val", "train"]})
    leakage = audit_leakage(manifest, splits, None, SplitSection())
    assert leakage["counts"] == {"exact_pairs": 1, "near_pairs": 0, "groups": 1, "name_twins": 0}
    pair = leakage["pairs"][0]
    assert {pair["a"], pair["b"]} == {"a/0.png", "a/1.png"} and pair["kind"] == "exact"
    assert leakage["groups"] == [{"group": "g", "splits": {"train": 1, "val": 1}}]
    assert audit_splits(manifest, splits)["exact_duplicates_across_splits"] == 1


# --- the stage, on generated photo-like images -----------------------------------------------


def _planted_source(root: Path) -> dict[str, list[str]]:
    """Two imbalanced classes of 'objects' (folders), 2-3 views each, plus planted copies.

    Returns origin scene -> the relative paths of it and its copies (which may sit in other groups).
    """
    copies: dict[str, list[str]] = {}
    seed = 0
    for label, objects in (("cat", 9), ("dog", 4)):
        for obj in range(objects):
            for view in range(2 + obj % 2):
                seed += 1
                rel = f"{label}/obj{obj}/view{view}.png"
                save(scene(seed), root / rel)
                copies[rel] = [rel]
    # copies of a few images under other objects, one per kind of edit
    planted = [
        ("cat/obj0/view0.png", "cat/obj5/copy.jpg"),
        ("cat/obj1/view1.png", "cat/obj6/copy.png"),
        ("dog/obj0/view0.png", "dog/obj2/copy.png"),
        ("dog/obj1/view1.png", "dog/obj3/copy.png"),
    ]
    for (original, target), variant in zip(planted, VARIANTS.values(), strict=True):
        save(variant(Image.open(root / original).convert("RGB")), root / target)
        copies[original].append(target)
    return copies


def _brute_force_pairs(source: Path, paths: list[str]) -> list[tuple[str, str]]:
    """Near-duplicate pairs by plain imagehash over all pairs: the check the stage must agree with."""
    hashes = {}
    for rel in paths:
        with Image.open(source / rel) as image:
            rgb = image.convert("RGB")
            hashes[rel] = (imagehash.phash(rgb), imagehash.dhash(rgb))
    return [
        (x, y)
        for x, y in combinations(paths, 2)
        if hashes[x][0] - hashes[y][0] <= MAX_DISTANCE["phash"]
        and hashes[x][1] - hashes[y][1] <= MAX_DISTANCE["dhash"]
    ]


@pytest.fixture
def planted(tmp_path: Path):
    source = tmp_path / "source"
    copies = _planted_source(source)
    params = fast_params(tmp_path, source, split={"groups": {"rule": "parent"}})
    ingest.run(params)
    validate.run(params)
    return params, copies


def test_stage_keeps_copies_and_groups_together_and_writes_the_reports(planted) -> None:
    params, copies = planted
    result = split.run(params)
    layout = Layout(params.paths)
    manifest = pd.read_parquet(layout.manifest).merge(result.splits, on="image_id", suffixes=("_src", ""))
    side = dict(zip(manifest["path"], manifest["split"], strict=True))
    for original, paths in copies.items():
        assert len({side[p] for p in paths}) == 1, original
    for pair in _brute_force_pairs(params.data.source, sorted(side)):
        assert side[pair[0]] == side[pair[1]], pair
    for folder in {str(Path(p).parent) for p in side}:
        assert len({s for p, s in side.items() if str(Path(p).parent) == folder}) == 1, folder
    assert set(side.values()) == {"train", "val", "test"}

    audit = json.loads(layout.split_audit.read_text())
    assert layout.boxes.is_file()  # validate writes (empty) boxes; a classify run stratifies on labels
    assert set(audit["splits"]["train"]["class_counts"]) == {"cat", "dog"}
    assert audit["near_duplicates"]["clusters"] >= 4 and audit["groups"]["groups"] == 13
    assert audit["units"]["count"] < audit["groups"]["groups"]  # copies joined some objects
    metrics = json.loads(layout.split_metrics.read_text())
    assert metrics["leaks"] == {"exact_pairs": 0, "near_pairs": 0, "groups": 0, "name_twins": 0}
    assert sum(metrics["images"].values()) == len(side)
    assert json.loads(layout.leakage_report.read_text())["pairs"] == []
    assert Image.open(layout.leakage_sheet).size[0] > 100


def test_stage_output_is_byte_identical_on_a_rerun_and_other_seed_differs(planted, tmp_path: Path) -> None:
    params, _ = planted
    layout = Layout(params.paths)
    split.run(params)
    first = layout.splits.read_bytes()
    split.run(params)
    assert layout.splits.read_bytes() == first
    split.run(params.model_copy(update={"base": params.base.model_copy(update={"seed": 7})}))
    assert layout.splits.read_bytes() != first


def test_near_duplicate_search_can_be_turned_off(planted) -> None:
    params, _ = planted
    off = params.split.model_copy(
        update={"near_duplicates": params.split.near_duplicates.model_copy(update={"enabled": False})}
    )
    result = split.run(params.model_copy(update={"split": off}))
    assert not Layout(params.paths).hash_cache.exists()  # nothing was hashed
    assert result.audit["near_duplicates"]["pairs"] == 0
    assert result.audit["units"]["count"] == result.audit["groups"]["groups"]  # only groups join images


def _predefined_source(root: Path, leak: bool) -> None:
    seed = 100
    for split_name, per_class in (("train", 14), ("val", 5)):
        for label in ("cat", "dog"):
            for i in range(per_class):
                seed += 1
                save(scene(seed), root / split_name / label / f"{i}.png")
    if leak:  # a brightened copy of a train image hidden in val
        original = Image.open(root / "train" / "cat" / "3.png").convert("RGB")
        save(VARIANTS["brightened"](original), root / "val" / "cat" / "copy_of_train_3.png")


def test_audit_fails_the_stage_on_a_leak_planted_in_a_predefined_split(tmp_path: Path) -> None:
    source = tmp_path / "source"
    _predefined_source(source, leak=True)
    params = fast_params(tmp_path, source)
    ingest.run(params)
    validate.run(params)
    layout = Layout(params.paths)
    with pytest.raises(DataError) as failure:
        split.run(params)
    message = str(failure.value)
    assert "1 near-duplicate pairs" in message and str(layout.leakage_report) in message
    leakage = json.loads(layout.leakage_report.read_text())
    assert leakage["counts"]["near_pairs"] == 1
    pair = leakage["pairs"][0]
    assert {pair["a"], pair["b"]} == {"train/cat/3.png", "val/cat/copy_of_train_3.png"}
    assert pair["split_a"] != pair["split_b"] and "test" in {pair["split_a"], pair["split_b"]}
    assert pair["distance"]["phash"] <= 10
    assert layout.leakage_sheet.is_file()

    tolerant = params.split.model_copy(
        update={"leakage": params.split.leakage.model_copy(update={"max_near_pairs": 1})}
    )
    result = split.run(params.model_copy(update={"split": tolerant}))
    assert any("used as the test set" in n for n in result.audit["notes"])
    test_paths = set(
        pd.read_parquet(layout.manifest)
        .merge(result.splits, on="image_id")
        .query("split_y == 'test'")["path"]
    )
    assert test_paths == {p.relative_to(source).as_posix() for p in (source / "val").rglob("*.png")}


def test_a_clean_predefined_split_passes_and_a_file_can_predefine_it(tmp_path: Path) -> None:
    source = tmp_path / "source"
    _predefined_source(source, leak=False)
    params = fast_params(tmp_path, source)
    ingest.run(params)
    validate.run(params)
    assert split.run(params).leakage["counts"] == {
        "exact_pairs": 0,
        "near_pairs": 0,
        "groups": 0,
        "name_twins": 0,
    }

    files = sorted(p.relative_to(source).as_posix() for p in source.rglob("*.png"))
    mapping = pd.DataFrame(
        {"path": files, "split": ["test" if f.endswith("0.png") else "train" for f in files]}
    )
    mapping.to_csv(tmp_path / "splits.csv", index=False)
    by_file = split.run(
        params.model_copy(
            update={"split": params.split.model_copy(update={"predefined_file": tmp_path / "splits.csv"})}
        )
    )
    joined = pd.read_parquet(Layout(params.paths).manifest).merge(by_file.splits, on="image_id")
    assert set(joined.loc[joined["path"].str.endswith("0.png"), "split_y"]) == {"test"}
    assert set(joined.loc[~joined["path"].str.endswith("0.png"), "split_y"]) == {"train", "val"}
