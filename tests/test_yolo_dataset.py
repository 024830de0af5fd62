"""Export to ultralytics' layout: normalised rows, our class order, incremental, source untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stages.core.contracts import boxes_frame
from stages.core.errors import UserError
from stages.dataprep.yolo_export import export_dataset, yolo_rows
from tests.conftest import tree_digest, write_image

CLASSES = ["cat", "bird"]  # deliberately not sorted: the label index must follow this order


def _source(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    specs = [("a.png", (64, 48), "train"), ("b.jpg", (32, 32), "train"), ("c.png", (40, 40), "val"),
             ("sub/d é.png", (48, 64), "test")]  # fmt: skip
    rows = []
    for i, (name, size, split) in enumerate(specs):
        write_image(root / name, seed=i, size=size)
        rows.append(
            {"image_id": f"id{i:014d}", "path": name, "width": size[0], "height": size[1], "split": split}
        )
    boxes = boxes_frame(
        [
            {"image_id": "id00000000000000", "class_name": "bird", "x_min": 8, "y_min": 6, "x_max": 40,
             "y_max": 30, "difficult": False, "truncated": False},
            {"image_id": "id00000000000000", "class_name": "cat", "x_min": 32, "y_min": 12, "x_max": 64,
             "y_max": 48, "difficult": False, "truncated": False},
            {"image_id": "id00000000000003", "class_name": "cat", "x_min": 0, "y_min": 0, "x_max": 48,
             "y_max": 32, "difficult": False, "truncated": False},
        ]
    )  # fmt: skip
    return pd.DataFrame(rows), boxes


def _label(target: Path, split: str, image_id: str) -> list[list[float]]:
    text = (target / "labels" / split / f"{image_id}.txt").read_text(encoding="utf-8")
    return [[float(v) for v in line.split()] for line in text.splitlines()]


def test_rows_are_normalised_centre_boxes_in_our_class_order(tmp_path: Path) -> None:
    frame, boxes = _source(tmp_path / "src")
    result = export_dataset(frame, boxes, CLASSES, tmp_path / "src", tmp_path / "yolo")
    assert result.images == {"train": 2, "val": 1, "test": 1}
    rows = sorted(_label(tmp_path / "yolo", "train", "id00000000000000"))
    expected = [[0, 48 / 64, 30 / 48, 32 / 64, 36 / 48], [1, 24 / 64, 18 / 48, 32 / 64, 24 / 48]]
    np.testing.assert_allclose(rows, expected, atol=1e-6)
    np.testing.assert_allclose(
        _label(tmp_path / "yolo", "test", "id00000000000003"), [[0, 0.5, 0.25, 1.0, 0.5]]
    )
    assert _label(tmp_path / "yolo", "train", "id00000000000001") == []  # a background image
    data = yaml.safe_load((tmp_path / "yolo" / "data.yaml").read_text(encoding="utf-8"))
    assert data["names"] == {0: "cat", 1: "bird"} and data["nc"] == 2
    assert (data["train"], data["val"], data["test"]) == ("images/train", "images/val", "images/test")
    assert Path(data["path"]).is_absolute()
    assert (tmp_path / "yolo" / "images" / "test" / "id00000000000003.png").is_file()  # ASCII names


def test_export_is_incremental_and_never_writes_into_the_source(tmp_path: Path) -> None:
    frame, boxes = _source(tmp_path / "src")
    before = tree_digest(tmp_path / "src")
    target = tmp_path / "yolo"
    export_dataset(frame, boxes, CLASSES, tmp_path / "src", target)
    image = target / "images" / "train" / "id00000000000000.png"
    stamps = {p: p.stat().st_mtime_ns for p in target.rglob("*") if p.is_file()}

    again = export_dataset(frame, boxes, CLASSES, tmp_path / "src", target)
    assert (again.copied, again.labels_written, again.removed) == (0, 0, 0)
    assert {p: p.stat().st_mtime_ns for p in target.rglob("*") if p.is_file()} == stamps

    moved = boxes.copy()
    moved.loc[moved["class_name"] == "bird", "x_max"] = 36.0
    fewer = frame[frame["path"] != "c.png"]
    third = export_dataset(fewer, moved, CLASSES, tmp_path / "src", target)
    assert (third.copied, third.labels_written, third.removed) == (0, 1, 2)  # one label; c's image+label
    assert image.stat().st_mtime_ns == stamps[image]
    assert not (target / "images" / "val").exists() or not any((target / "images" / "val").iterdir())
    data = yaml.safe_load((target / "data.yaml").read_text(encoding="utf-8"))
    assert data["val"] == "images/train"  # no val images left: ultralytics validates on train
    assert tree_digest(tmp_path / "src") == before


def test_a_box_class_missing_from_classes_is_one_sentence(tmp_path: Path) -> None:
    frame, boxes = _source(tmp_path / "src")
    with pytest.raises(UserError, match=r"not in classes\.json"):
        export_dataset(frame, boxes, ["cat"], tmp_path / "src", tmp_path / "yolo")


def test_rows_clip_to_the_image() -> None:
    boxes = pd.DataFrame([{"class_name": "a", "x_min": -4.0, "y_min": 0.0, "x_max": 10.0, "y_max": 12.0}])
    assert yolo_rows(boxes, 10, 10, {"a": 0}) == ["0 0.500000 0.500000 1.000000 1.000000"]
