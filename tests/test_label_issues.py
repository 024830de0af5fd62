"""Label-issue detection: planted flips rank first, a clean set yields few suspects, every score is
out of fold (an image and its near-duplicates never train the head that scores it), and
``split.exclude`` leaves out exactly the images it names and is a DVC dep of split."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stages import ingest, label_issues, split, validate
from stages.core.contracts import read_parquet
from stages.core.errors import DataError
from stages.core.layout import Layout
from stages.core.params import LabelIssuesSection
from stages.dataprep.splitting import apply_exclude, read_exclude
from stages.engine import label_issues as engine
from stages.reporting.inputs import ReportInputs
from stages.reporting.sections import label_issues as section
from tests.conftest import fast_params, make_classify_source

REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["a", "b", "c"]


def blobs(per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic backbone features: one well separated Gaussian blob per class (no backbone needed)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (len(CLASSES), 16)) * 4
    y = np.repeat(np.arange(len(CLASSES)), per_class)
    return (centres[y] + rng.normal(0, 1, (len(y), 16))).astype(np.float32), y


def score(x: np.ndarray, given: np.ndarray, units: np.ndarray, clusters: np.ndarray | None = None):
    cfg = LabelIssuesSection()
    folds = engine.grouped_folds(given, units, cfg.folds, seed=0)
    probs = engine.out_of_fold_probabilities(x, given, folds, len(CLASSES), cfg, seed=0)
    frame = pd.DataFrame(
        {
            "image_id": [f"{i:04d}" for i in range(len(given))],
            "path": [f"img/{i:04d}.png" for i in range(len(given))],
            "split": "train",
            "given": [CLASSES[i] for i in given],
            "cluster": np.arange(len(given)) if clusters is None else clusters,
            "fold": folds,
        }
    )
    return engine.rank_issues(frame, probs, CLASSES, int(folds.max()) + 1)


def test_planted_flips_rank_first_and_the_suggestion_is_the_true_class() -> None:
    x, truth = blobs(per_class=40)
    rng = np.random.default_rng(1)
    planted = rng.choice(len(truth), size=6, replace=False)
    given = truth.copy()
    given[planted] = (truth[planted] + 1) % len(CLASSES)
    issues = score(x, given, units=np.arange(len(given)))
    ids = sorted(f"{i:04d}" for i in planted)
    # By label quality, the planted flips are the lowest six, each suggesting its true class.
    lowest = issues.scores.sort_values("quality").head(len(planted))
    assert sorted(lowest["image_id"]) == ids
    assert all(lowest["suggested"].to_numpy() == [CLASSES[truth[int(i)]] for i in lowest["image_id"]])
    # cleanlab's confident learning flags most of them, nothing else, and they lead the list.
    listed = issues.suspects
    assert set(listed["image_id"]) <= set(ids) and len(listed) >= len(planted) - 1
    assert list(listed["rank"]) == list(range(1, len(listed) + 1))
    assert listed["quality"].is_monotonic_increasing
    # The confident joint sees the flips: a class pair carries an estimated noise rate.
    assert max(p["rate"] for p in engine.noise_rates(issues)) > 0.02


def test_a_clean_set_yields_few_suspects() -> None:
    x, y = blobs(per_class=40, seed=3)
    issues = score(x, y, units=np.arange(len(y)))
    assert len(issues.suspects) <= 0.03 * len(y)


def test_scores_are_out_of_fold_and_units_share_a_fold(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = blobs(per_class=20)
    units = np.arange(len(y)) // 3  # near-duplicate triples (and groups) must share a fold
    folds = engine.grouped_folds(y, units, 5, seed=0)
    assert len(np.unique(folds)) == 5
    for unit in np.unique(units):
        assert len(np.unique(folds[units == unit])) == 1

    from stages.engine import linear_probe

    seen: list[np.ndarray] = []
    original = linear_probe.fit_linear_head

    def recording(x_train, *args, **kwargs):
        seen.append(x_train.copy())
        return original(x_train, *args, **kwargs)

    monkeypatch.setattr(linear_probe, "fit_linear_head", recording)
    engine.out_of_fold_probabilities(x, y, folds, len(CLASSES), LabelIssuesSection(epochs=2), seed=0)
    assert len(seen) == 5
    rows = {row.tobytes(): i for i, row in enumerate(x)}
    for fold, trained_on in zip(np.unique(folds), seen, strict=True):
        used = {rows[r.tobytes()] for r in trained_on}
        held = set(np.flatnonzero(folds == fold))
        assert used.isdisjoint(held)  # no image trains the head that scores it
        assert used.isdisjoint(set(np.flatnonzero(np.isin(units, units[list(held)]))))
        assert used | held == set(range(len(y)))


def test_near_duplicates_with_different_labels_are_listed_first_as_conflicts() -> None:
    x, y = blobs(per_class=30)
    clusters = np.arange(len(y))
    clusters[[5, 50]] = 5  # image 50 is a near-duplicate of image 5 and carries another label
    x[50] = x[5]
    issues = score(x, y, units=clusters, clusters=clusters)
    top = issues.suspects.head(2)
    assert set(top["image_id"]) == {"0005", "0050"}
    assert set(top["reason"]) == {engine.CONFLICT}


def test_exclude_file_entries_by_path_or_id_with_comments(tmp_path: Path) -> None:
    manifest = pd.DataFrame(
        {"image_id": ["id0", "id1", "id2", "id3"], "path": ["a/0.png", "a/1.png", "b/2.png", "b/3.png"]}
    )
    file = tmp_path / "exclude.txt"
    file.write_text("# reviewed\n\na/1.png  # wrong label\nid3\nnot/there.png\n", encoding="utf-8")
    kept, exclusion = apply_exclude(manifest, read_exclude(file), "exclude.txt")
    assert list(kept["image_id"]) == ["id0", "id2"]
    assert exclusion.audit() == {
        "file": "exclude.txt",
        "images": 2,
        "paths": ["a/1.png", "b/3.png"],
        "unmatched": ["not/there.png"],
    }
    with pytest.raises(DataError, match="does not exist"):
        read_exclude(tmp_path / "missing.txt")


def test_stage_finds_a_moved_image_and_exclude_removes_exactly_it(tmp_path: Path) -> None:
    source = make_classify_source(tmp_path / "source", per_class=12)
    moved = "dog/from_cat.png"  # a cat-coloured image filed under dog: a planted label flip
    shutil.move(source / "cat" / "img_005.png", source / moved)
    params = fast_params(tmp_path, source, split={"fractions": {"train": 0.8, "val": 0.1, "test": 0.1}})
    ingest.run(params)
    validate.run(params)
    split.run(params)
    result = label_issues.run(params)
    layout = Layout(params.paths)
    suspects = pd.read_csv(layout.label_issues)
    splits = assigned(layout)
    assert splits.loc[splits["path"] == moved, "split"].item() != "test"  # (test is never scored)
    assert suspects.iloc[0]["path"] == moved and suspects.iloc[0]["suggested"] == "cat"
    assert result.scored == int(splits["split"].isin(["train", "val"]).sum())

    exclude = tmp_path / "exclude.txt"
    exclude.write_text(f"# reviewed\n{moved}\n", encoding="utf-8")
    excluded = fast_params(
        tmp_path,
        source,
        split={"fractions": {"train": 0.8, "val": 0.1, "test": 0.1}, "exclude": str(exclude)},
    )
    split.run(excluded)
    after = assigned(layout)
    assert set(splits["path"]) - set(after["path"]) == {moved}
    audit = yaml.safe_load(layout.split_audit.read_text(encoding="utf-8"))
    assert audit["excluded"]["images"] == 1

    inputs = ReportInputs(excluded, layout, {}, "classify", [], pd.DataFrame())
    rendered = section.render(inputs)
    assert rendered is not None
    text = "\n".join(rendered.lines)
    assert "left out 1 images" in text and "look mislabelled" in text


def assigned(layout: Layout) -> pd.DataFrame:
    manifest = read_parquet(layout.manifest)
    return manifest.merge(read_parquet(layout.splits), on="image_id", suffixes=("_source", ""))


def test_detection_writes_an_empty_list_with_a_note(tmp_path: Path) -> None:
    params = fast_params(tmp_path, tmp_path / "source", data={"task": "detect"})
    result = label_issues.run(params)
    layout = Layout(params.paths)
    assert pd.read_csv(layout.label_issues).empty
    assert "classification only" in result.note


def test_exclude_file_is_a_dvc_dep_of_split_and_exists_in_the_project() -> None:
    dvc = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))
    assert "${split.exclude}" in dvc["stages"]["split"]["deps"]
    configured = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))["split"]["exclude"]
    assert (REPO_ROOT / configured).is_file()
    assert read_exclude(REPO_ROOT / configured) == []  # the shipped file excludes nothing
    assert "${paths.reports}/label_issues.csv" in dvc["stages"]["report"]["deps"]
