"""YOLO txt: one bad row drops one box; background images stay; orphan label files are listed."""

from __future__ import annotations

from pathlib import Path

import pytest

import stages.ingest
from stages.core.errors import DataError
from tests.conftest import DETECT_CLASSES, detect_params, guard_sources, write_yolo


@pytest.fixture(autouse=True)
def _source_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    guard_sources(monkeypatch)


def _run(tmp_path: Path, source: Path, **sections) -> stages.ingest.IngestResult:
    return stages.ingest.run(detect_params(tmp_path, source, **sections))


def _box_reasons(result: stages.ingest.IngestResult) -> dict[str, str]:
    boxes = result.quarantine[result.quarantine["item"] == "box"]
    return dict(zip(boxes["annotation"], boxes["reason"], strict=True))


def _labels(source: Path, name: str, *rows: str) -> None:
    (source / "labels" / name).write_text("\n".join(rows) + "\n", encoding="utf-8")


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("2 0.5 0.5 0.2 0.2", "unknown_class"),
        ("-1 0.5 0.5 0.2 0.2", "unknown_class"),
        ("0.5 0.5 0.5 0.2 0.2", "unknown_class"),
        ("0 0.5 0.5 0.2", "box_malformed"),
        ("0 0.5 0.5 0.2 0.2 0.1", "box_malformed"),  # 7+ odd fields: a YOLO-seg polygon (test_shapes)
        ("cat 0.5 0.5 0.2 0.2", "box_malformed"),
        ("0 0.5 half 0.2 0.2", "box_malformed"),
        ("0 32 24 10 10", "box_not_normalized"),
        ("0 0.5 0.5 0 0.2", "box_degenerate"),
        ("0 0.5 0.5 -0.1 0.2", "box_inverted"),
        ("0 nan 0.5 0.2 0.2", "box_not_finite"),
        ("0 0.5 0.5 inf 0.2", "box_not_finite"),
    ],
)
def test_a_bad_row_drops_that_box_only(tmp_path: Path, row: str, reason: str) -> None:
    source = write_yolo(tmp_path / "source")
    _labels(source, "b.txt", "1 0.3 0.375 0.5 0.5", row)
    result = _run(tmp_path, source)
    assert _box_reasons(result) == {"labels/b.txt line 2": reason}
    assert result.quarantine["path"].tolist() == ["images/b.png"]
    assert result.quarantine["detail"].iloc[0].startswith("labels/b.txt line 2 ")
    b = result.manifest.set_index("path").loc["images/b.png", "image_id"]
    assert (result.boxes["image_id"] == b).sum() == 1


def test_rows_are_converted_from_normalised_centres_to_pixel_corners(tmp_path: Path) -> None:
    source = write_yolo(tmp_path / "source")
    _labels(source, "a.txt", "1 0.5 0.25 0.25 0.5", "", "0   0.125 0.75 0.25 0.5  ")  # blank lines, spaces
    result = _run(tmp_path, source)
    a = result.manifest.set_index("path").loc["images/a.png", "image_id"]  # 64x48
    boxes = result.boxes[result.boxes["image_id"] == a]
    got = sorted(map(tuple, boxes[["class_name", "x_min", "y_min", "x_max", "y_max"]].values.tolist()))
    assert got == [("bird", 0.0, 24.0, 16.0, 48.0), ("cat", 24.0, 0.0, 40.0, 24.0)]


def test_box_past_the_edge_is_clipped(tmp_path: Path) -> None:
    source = write_yolo(tmp_path / "source")
    _labels(source, "a.txt", "0 0.9375 0.5 0.25 0.5")  # 64x48: x from 52 to 68
    result = _run(tmp_path, source)
    assert result.quarantine.empty and result.summary["clipped_boxes"] == 1
    a = result.manifest.set_index("path").loc["images/a.png", "image_id"]
    row = result.boxes[result.boxes["image_id"] == a].iloc[0]
    assert (row["x_min"], row["x_max"], row["y_min"], row["y_max"]) == (52.0, 64.0, 12.0, 36.0)


def test_missing_and_empty_label_files_are_background_images(tmp_path: Path) -> None:
    source = write_yolo(tmp_path / "source")  # c.png has no label file
    _labels(source, "b.txt", "")  # an empty file
    result = _run(tmp_path, source)
    assert result.quarantine.empty
    assert len(result.manifest) == 4
    assert result.summary["background_images"] == 2
    sources = result.manifest.set_index("path")["source"]
    assert sources["images/c.png"] == "yolo (no label file)" and sources["images/b.png"] == "labels/b.txt"


def test_label_file_without_an_image_is_quarantined(tmp_path: Path) -> None:
    source = write_yolo(tmp_path / "source")
    _labels(source, "ghost.txt", "0 0.5 0.5 0.1 0.1", "1 0.5 0.5 0.2 0.2")
    (source / "labels" / "labels.cache").write_bytes(b"ultralytics cache")
    result = _run(tmp_path, source)
    assert result.quarantine[["path", "reason", "item"]].values.tolist() == [
        ["labels/ghost.txt", "label_without_image", "annotation"]
    ]
    assert "2 label rows" in result.quarantine["detail"].iloc[0]
    assert "labels/labels.cache" in result.ignored
    assert len(result.boxes) == 5


def test_non_image_files_in_images_are_ignored_with_a_note(tmp_path: Path) -> None:
    source = write_yolo(tmp_path / "source")
    (source / "images" / "notes.txt").write_text("shot on a phone\n", encoding="utf-8")
    (source / "images" / ".DS_Store").write_bytes(b"\0")
    result = _run(tmp_path, source)
    assert result.quarantine.empty
    assert "images/notes.txt" in result.ignored and len(result.manifest) == 4


def test_names_as_an_index_mapping_and_classes_txt(tmp_path: Path) -> None:
    source = write_yolo(tmp_path / "yaml")
    (source / "data.yaml").write_text("names:\n  1: cat\n  0: bird\n", encoding="utf-8")
    assert _run(tmp_path / "a", source).classes == DETECT_CLASSES
    txt = write_yolo(tmp_path / "txt", names_file="classes.txt")
    assert _run(tmp_path / "b", txt).classes == DETECT_CLASSES


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("names: [bird, cat]\nnc: 3\n", r"data.yaml: nc is 3 but 'names' lists 2 classes"),
        ("names: [bird, cat\n", r"data.yaml: invalid YAML at line 2, column 1"),
        ("path: .\n", r"data.yaml: no 'names' list of class names"),
        ("names: {0: bird, 2: cat}\n", r"data.yaml: 'names' must map the indices 0..1"),
    ],
)
def test_unusable_dataset_yaml_is_rejected(tmp_path: Path, text: str, message: str) -> None:
    source = write_yolo(tmp_path / "source")
    (source / "data.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        _run(tmp_path, source, data={"format": "yolo"})


def test_no_class_names_at_all_is_rejected_with_the_fix(tmp_path: Path) -> None:
    source = write_yolo(tmp_path / "source")
    (source / "data.yaml").unlink()
    with pytest.raises(DataError, match=r"no class names for the YOLO labels; add data.yaml"):
        _run(tmp_path, source)


def test_data_annotations_names_another_yaml(tmp_path: Path) -> None:
    source = write_yolo(tmp_path / "source")
    (source / "data.yaml").rename(source / "config.yaml")
    (source / "other.yaml").write_text("names: [x, y]\n", encoding="utf-8")  # two candidates: ambiguous
    with pytest.raises(DataError, match="no class names"):
        _run(tmp_path / "a", source, data={"format": "yolo"})
    result = _run(tmp_path / "b", source, data={"annotations": "config.yaml"})
    assert result.format == "yolo" and result.classes == DETECT_CLASSES
