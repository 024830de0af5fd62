"""Stage ingest: folder layouts become one manifest; unusable items are quarantined, not fatal."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

import stages.ingest
from stages.core.contracts import MANIFEST_COLUMNS, QUARANTINE_COLUMNS, read_parquet
from stages.core.errors import DataError, UserError
from stages.core.layout import Layout
from stages.dataprep import importing
from tests.conftest import fast_params, guard_sources, make_classify_source, tree_digest, write_image


@pytest.fixture(autouse=True)
def _source_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    guard_sources(monkeypatch)


def _ingest(tmp_path: Path, source: Path, **sections) -> stages.ingest.IngestResult:
    return stages.ingest.run(fast_params(tmp_path, source, **sections))


def _reasons(result: stages.ingest.IngestResult) -> dict[str, str]:
    return dict(zip(result.quarantine["path"], result.quarantine["reason"], strict=True))


def test_manifest_has_contract_columns_ids_sizes_and_labels(tmp_path: Path) -> None:
    source = make_classify_source(
        tmp_path / "source",
        per_class=3,
        size=(36, 28),
        classes={"zebra": (0, 90, 0), "ant": (90, 0, 0), "moth": (0, 0, 90)},
    )
    result = _ingest(tmp_path, source)
    manifest = result.manifest

    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert len(manifest) == 9 and result.quarantine.empty and result.format == "folder"
    assert manifest["path"].tolist() == sorted(manifest["path"].tolist())
    for row in manifest.itertuples():
        expected_sha = hashlib.sha256((source / row.path).read_bytes()).hexdigest()
        assert row.sha256 == expected_sha
        assert row.image_id == expected_sha[:16]
        assert row.label == row.path.split("/")[0]
        assert (row.width, row.height) == (36, 28)
        assert pd.isna(row.split)  # no predefined split folders here
    assert manifest["image_id"].is_unique

    layout = Layout(fast_params(tmp_path, source).paths)
    assert result.classes == ["ant", "moth", "zebra"]
    assert json.loads(layout.classes.read_text(encoding="utf-8")) == ["ant", "moth", "zebra"]
    pd.testing.assert_frame_equal(read_parquet(layout.ingest_manifest), manifest, check_dtype=False)
    assert list(read_parquet(layout.ingest_quarantine).columns) == QUARANTINE_COLUMNS


def test_manifest_records_display_size_of_exif_rotated_images(tmp_path: Path) -> None:
    source = make_classify_source(tmp_path / "source", per_class=2)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (60, 30), (200, 10, 10)).save(source / "cat" / "portrait.jpg", exif=exif)
    row = _ingest(tmp_path, source).manifest.set_index("path").loc["cat/portrait.jpg"]
    assert (row["width"], row["height"]) == (30, 60)


@pytest.mark.parametrize("val_folder", ["val", "valid"])
def test_predefined_split_folders_are_recorded(tmp_path: Path, val_folder: str) -> None:
    source = tmp_path / "source"
    make_classify_source(source / "train", per_class=3)
    for i, label in enumerate(["cat", "dog"]):
        write_image(source / val_folder / label / "v.png", seed=500 + i)
        write_image(source / "test" / label / "t.png", seed=600 + i)

    result = _ingest(tmp_path, source)
    manifest = result.manifest
    assert result.classes == ["cat", "dog"]  # split folders are not classes
    expected = {"train": "train", val_folder: "val", "test": "test"}
    for row in manifest.itertuples():
        top, label, _ = row.path.split("/")
        assert row.split == expected[top]
        assert row.label == label
    assert manifest["split"].value_counts().to_dict() == {"train": 6, "val": 2, "test": 2}


def test_non_image_files_are_ignored_not_quarantined(tmp_path: Path) -> None:
    source = make_classify_source(tmp_path / "source", per_class=2)
    junk = ["cat/.DS_Store", "cat/Thumbs.db", "dog/README.txt", "NOTES.txt"]
    for rel in junk:
        (source / rel).write_bytes(b"\x00\x01 not an image")

    result = _ingest(tmp_path, source)
    assert sorted(result.ignored) == sorted(junk)
    assert result.quarantine.empty
    assert len(result.manifest) == 4
    assert not set(junk) & set(result.manifest["path"])


def test_unreadable_images_are_quarantined_at_ingest(tmp_path: Path) -> None:
    source = make_classify_source(tmp_path / "source", per_class=2)
    (source / "cat" / "empty.jpg").write_bytes(b"")
    (source / "dog" / "text.jpg").write_text("hello, not a jpeg\n", encoding="utf-8")

    result = _ingest(tmp_path, source)
    assert _reasons(result) == {"cat/empty.jpg": "empty_file", "dog/text.jpg": "not_an_image"}
    assert (result.quarantine["stage"] == "ingest").all()
    assert result.quarantine["detail"].str.len().min() > 0
    assert set(result.manifest["path"]).isdisjoint(_reasons(result))
    assert len(result.manifest) == 4
    layout = Layout(fast_params(tmp_path, source).paths)
    assert read_parquet(layout.ingest_quarantine)["path"].tolist() == ["cat/empty.jpg", "dog/text.jpg"]


def test_unicode_and_spaces_in_names(tmp_path: Path) -> None:
    source = tmp_path / "source"
    write_image(source / "café au lait" / "ñandú 1.png", seed=1)
    write_image(source / "café au lait" / "日本 2.png", seed=2)
    write_image(source / "dog house" / "a b.png", seed=3)

    result = _ingest(tmp_path, source)
    assert result.classes == ["café au lait", "dog house"]
    assert set(result.manifest["path"]) == {
        "café au lait/ñandú 1.png",
        "café au lait/日本 2.png",
        "dog house/a b.png",
    }
    row = result.manifest.set_index("path").loc["café au lait/ñandú 1.png"]
    assert row["label"] == "café au lait"
    assert row["sha256"] == hashlib.sha256((source / "café au lait" / "ñandú 1.png").read_bytes()).hexdigest()
    layout = Layout(fast_params(tmp_path, source).paths)
    assert "café au lait/ñandú 1.png" in set(read_parquet(layout.ingest_manifest)["path"])


def test_duplicate_bytes_with_the_same_label_keep_one(tmp_path: Path) -> None:
    source = make_classify_source(tmp_path / "source", per_class=2)
    shutil.copyfile(source / "cat" / "img_000.png", source / "cat" / "copy.png")

    result = _ingest(tmp_path, source)
    paths = set(result.manifest["path"])
    assert ("cat/copy.png" in paths) != ("cat/img_000.png" in paths)  # exactly one kept
    dropped = "cat/img_000.png" if "cat/copy.png" in paths else "cat/copy.png"
    assert _reasons(result) == {dropped: "duplicate"}
    assert len(result.manifest) == 4
    assert result.manifest["sha256"].is_unique


def test_same_bytes_under_two_classes_drops_both(tmp_path: Path) -> None:
    source = make_classify_source(tmp_path / "source", per_class=2)
    shutil.copyfile(source / "cat" / "img_000.png", source / "dog" / "looks_like_a_cat.png")

    result = _ingest(tmp_path, source)
    assert _reasons(result) == {
        "cat/img_000.png": "duplicate_conflicting_labels",
        "dog/looks_like_a_cat.png": "duplicate_conflicting_labels",
    }
    assert len(result.manifest) == 3
    assert "cat/img_000.png" not in set(result.manifest["path"])


def test_a_single_class_is_a_data_error(tmp_path: Path) -> None:
    source = make_classify_source(tmp_path / "source", per_class=3, classes={"cat": (9, 9, 9)})
    with pytest.raises(DataError) as caught:
        _ingest(tmp_path, source)
    assert isinstance(caught.value, UserError)
    assert "at least two classes" in str(caught.value)
    assert str(source) in str(caught.value)


def test_a_class_with_only_unreadable_images_does_not_count(tmp_path: Path) -> None:
    source = make_classify_source(tmp_path / "source", per_class=3, classes={"cat": (9, 9, 9)})
    (source / "dog").mkdir()
    (source / "dog" / "broken.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="at least two classes"):
        _ingest(tmp_path, source)


def test_symlink_pointing_outside_the_source_is_quarantined_unopened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_classify_source(tmp_path / "source", per_class=2)
    secret = write_image(tmp_path / "elsewhere" / "secret.png", seed=99)
    try:
        os.symlink(secret, source / "cat" / "link.png")
    except OSError:
        pytest.skip("symlinks are not available here")

    opened: list[Path] = []
    real_header, real_sha = importing.read_header, importing.sha256_file
    monkeypatch.setattr(
        importing, "read_header", lambda p, *f: opened.append(Path(p).resolve()) or real_header(p, *f)
    )
    monkeypatch.setattr(importing, "sha256_file", lambda p: opened.append(Path(p).resolve()) or real_sha(p))

    result = _ingest(tmp_path, source)
    assert _reasons(result) == {"cat/link.png": "outside_source"}
    assert result.quarantine["stage"].tolist() == ["ingest"]
    assert "cat/link.png" not in set(result.manifest["path"])
    assert opened, "the patched readers were not used"
    assert secret.resolve() not in opened


def test_symlink_inside_the_source_is_followed(tmp_path: Path) -> None:
    source = make_classify_source(tmp_path / "source", per_class=2)
    target = write_image(source / ".shared" / "pic.png", seed=77)  # hidden: not a class
    try:
        os.symlink(target, source / "cat" / "alias.png")
    except OSError:
        pytest.skip("symlinks are not available here")
    result = _ingest(tmp_path, source)
    assert result.quarantine.empty
    row = result.manifest.set_index("path").loc["cat/alias.png"]
    assert row["label"] == "cat"
    assert row["sha256"] == hashlib.sha256(target.read_bytes()).hexdigest()
    assert not any(p.startswith(".shared") for p in result.manifest["path"])


def test_ingest_never_writes_into_the_source(tmp_path: Path) -> None:
    source = make_classify_source(tmp_path / "source", per_class=3)
    (source / "cat" / "empty.jpg").write_bytes(b"")
    (source / "cat" / ".DS_Store").write_bytes(b"junk")
    shutil.copyfile(source / "cat" / "img_000.png", source / "dog" / "dup.png")
    before = tree_digest(source)
    _ingest(tmp_path, source)
    assert tree_digest(source) == before


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_source_that_is_not_a_folder_is_a_data_error(tmp_path: Path, kind: str) -> None:
    source = tmp_path / "nowhere"
    if kind == "file":
        source.write_text("not a folder", encoding="utf-8")
    with pytest.raises(DataError, match="not a folder"):
        _ingest(tmp_path, source)


@pytest.mark.parametrize(
    ("marker", "content", "fmt"),
    [
        ("Annotations/img_000.xml", "<annotation/>", "voc"),
        ("annotations/img_000.xml", "<annotation/>", "voc"),
        ("labels/img_000.txt", "0 0.5 0.5 0.1 0.1", None),  # no images/ beside it: not YOLO
        ("data.yaml", "names: [cat, dog]", "yolo"),
        ("instances.json", '{"images": [], "annotations": [], "categories": []}', "coco"),
    ],
)
def test_annotation_markers_in_a_classification_source_are_named(
    tmp_path: Path, marker: str, content: str, fmt: str | None
) -> None:
    source = make_classify_source(tmp_path / "source", per_class=2)
    (source / marker).parent.mkdir(parents=True, exist_ok=True)
    (source / marker).write_text(content + "\n", encoding="utf-8")
    if fmt is None:
        assert _ingest(tmp_path, source).format == "folder"
        return
    with pytest.raises(DataError) as caught:
        _ingest(tmp_path, source)
    message = str(caught.value)
    assert f"holds '{fmt}' detection annotations" in message and "data.task: detect" in message
    assert not Layout(fast_params(tmp_path, source).paths).ingest_manifest.exists()


def test_standard_coco_layout_is_not_imported_as_folders(tmp_path: Path) -> None:
    source = tmp_path / "source"
    for i in range(2):
        write_image(source / "train2017" / f"{i:012d}.jpg", seed=i)
        write_image(source / "val2017" / f"{i + 10:012d}.jpg", seed=i + 10)
    (source / "annotations").mkdir()
    (source / "annotations" / "instances_train2017.json").write_text(
        json.dumps({"images": [], "annotations": [], "categories": []}), encoding="utf-8"
    )
    with pytest.raises(DataError, match="'coco'"):
        _ingest(tmp_path, source)


def test_explicit_folder_format_skips_auto_detection(tmp_path: Path) -> None:
    source = make_classify_source(tmp_path / "source", per_class=2)
    # A COCO-looking JSON makes auto pick coco (and refuse classify); data.format says otherwise.
    (source / "dataset-metadata.json").write_text('{"images": [], "annotations": []}', encoding="utf-8")
    with pytest.raises(DataError, match="'coco'"):
        _ingest(tmp_path, source)
    result = _ingest(tmp_path, source, data={"format": "folder"})
    assert result.format == "folder" and len(result.manifest) == 4
    assert result.ignored == ["dataset-metadata.json"]


def test_stray_json_without_coco_keys_keeps_a_folder_dataset_a_folder(tmp_path: Path) -> None:
    source = make_classify_source(tmp_path / "source", per_class=2)
    (source / "dataset-metadata.json").write_text('{"name": "pets", "images": 4}', encoding="utf-8")
    result = _ingest(tmp_path, source)
    assert result.format == "folder" and result.ignored == ["dataset-metadata.json"]
