"""COCO JSON: rejects for unreadable files, quarantine for bad annotations, the file wins on sizes."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

import stages.ingest
import stages.validate
from stages.core.errors import DataError
from tests.conftest import (
    DETECT_SPEC,
    detect_params,
    guard_sources,
    make_classify_source,
    write_coco,
    write_image,
)


@pytest.fixture(autouse=True)
def _source_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    guard_sources(monkeypatch)


def _run(tmp_path: Path, source: Path, **sections) -> stages.ingest.IngestResult:
    return stages.ingest.run(detect_params(tmp_path, source, **sections))


def _rewrite(source: Path, edit) -> None:
    """Load annotations.json, let ``edit`` change the dict, write it back."""
    file = source / "annotations.json"
    doc = json.loads(file.read_text(encoding="utf-8"))
    edit(doc)
    file.write_text(json.dumps(doc), encoding="utf-8")


def _box_reasons(result: stages.ingest.IngestResult) -> dict[str, str]:
    boxes = result.quarantine[result.quarantine["item"] == "box"]
    return dict(zip(boxes["annotation"], boxes["reason"], strict=True))


def test_truncated_json_is_rejected_with_its_position(tmp_path: Path) -> None:
    source = tmp_path / "source"
    write_coco(source)
    text = (source / "annotations.json").read_text(encoding="utf-8")
    (source / "annotations.json").write_text(text[: len(text) // 2], encoding="utf-8")
    with pytest.raises(DataError) as caught:
        _run(tmp_path, source)
    message = str(caught.value)
    assert message.startswith("annotations.json: invalid JSON at line 1, column ")
    assert "export the annotations again" in message


def test_json_that_is_not_coco_is_rejected(tmp_path: Path) -> None:
    source = tmp_path / "source"
    write_coco(source)
    (source / "annotations.json").write_text('{"info": {}, "licenses": []}', encoding="utf-8")
    with pytest.raises(DataError, match=r"annotations.json: not a COCO file .*'images'"):
        _run(tmp_path, source)


def test_duplicate_image_ids_are_rejected_naming_both_entries(tmp_path: Path) -> None:
    source = tmp_path / "source"
    write_coco(source)
    _rewrite(source, lambda doc: doc["images"][3].update(id=2))
    with pytest.raises(DataError) as caught:
        _run(tmp_path, source)
    assert str(caught.value) == (
        "annotations.json: image id 2 appears twice (images[1] and images[3]); give each image a unique id "
        "and export again."
    )


def test_an_entry_missing_a_required_field_is_rejected_with_index_and_id(tmp_path: Path) -> None:
    source = tmp_path / "source"
    write_coco(source)
    _rewrite(source, lambda doc: doc["images"][2].pop("file_name"))
    with pytest.raises(
        DataError, match=r"annotations.json: images\[2\] \(id 3\): 'file_name' field required"
    ):
        _run(tmp_path, source)


def test_one_category_id_with_two_names_across_splits_is_rejected(tmp_path: Path) -> None:
    source = tmp_path / "source"
    write_coco(source / "train", spec=DETECT_SPEC[:2], json_name="_annotations.coco.json", image_dir=".")
    write_coco(
        source / "valid",
        spec=DETECT_SPEC[2:],
        classes=["bird", "dog"],
        json_name="_annotations.coco.json",
        image_dir=".",
    )
    with pytest.raises(
        DataError, match=r"category id 2 is 'dog' here but 'cat' in train/_annotations\.coco\.json"
    ):
        _run(tmp_path, source)


def test_missing_image_files_are_quarantined_with_their_boxes(tmp_path: Path) -> None:
    source = tmp_path / "source"
    write_coco(source)
    (source / "images" / "a.png").unlink()
    result = _run(tmp_path, source)
    images = result.quarantine[result.quarantine["item"] == "image"]
    assert images[["path", "reason"]].values.tolist() == [["a.png", "missing_file"]]
    assert "annotations.json image id 1 names 'a.png'" in images["detail"].iloc[0]
    assert sorted(_box_reasons(result).values()) == ["image_quarantined", "image_quarantined"]
    assert len(result.manifest) == 3 and len(result.boxes) == 3


def test_unknown_ids_crowd_regions_and_malformed_boxes_drop_only_that_box(tmp_path: Path) -> None:
    source = tmp_path / "source"
    write_coco(source)

    def edit(doc: dict) -> None:
        doc["annotations"][0]["category_id"] = 99
        doc["annotations"][1]["image_id"] = 42
        doc["annotations"][2]["iscrowd"] = 1
        doc["annotations"][3]["bbox"] = [1, 2, 3]

    _rewrite(source, edit)
    result = _run(tmp_path, source)
    assert _box_reasons(result) == {
        "annotations.json annotation id 1": "unknown_class",
        "annotations.json annotation id 2": "unknown_image_id",
        "annotations.json annotation id 3": "crowd_region",
        "annotations.json annotation id 4": "box_malformed",
    }
    assert len(result.boxes) == 1 and len(result.manifest) == 4  # images stay (as background if need be)
    unknown_image = result.quarantine[result.quarantine["reason"] == "unknown_image_id"]
    assert unknown_image["path"].tolist() == ["annotations.json"]  # no image to name


@pytest.mark.parametrize(
    ("bbox", "reason"),
    [
        ([10, 10, -5, 8], "box_inverted"),
        ([10, 10, 0, 8], "box_degenerate"),
        ([10, 10, 8, 0], "box_degenerate"),
        ([10, math.nan, 8, 8], "box_not_finite"),
        ([10, 10, math.inf, 8], "box_not_finite"),
        ([100, 100, 8, 8], "box_outside_image"),
        ([-30, 4, 20, 8], "box_outside_image"),
    ],
)
def test_bad_box_geometry_is_quarantined(tmp_path: Path, bbox: list, reason: str) -> None:
    source = tmp_path / "source"
    write_coco(source)
    _rewrite(source, lambda doc: doc["annotations"][0].update(bbox=bbox))
    result = _run(tmp_path, source)
    assert _box_reasons(result) == {"annotations.json annotation id 1": reason}
    assert len(result.boxes) == 4
    assert result.quarantine["detail"].iloc[0].startswith("annotations.json annotation id 1 ")


def test_boxes_partly_outside_are_clipped_and_counted(tmp_path: Path) -> None:
    source = tmp_path / "source"
    write_coco(source)
    # a.png is 64x48: this box runs 10 px past the right edge and 4 px above the top.
    _rewrite(source, lambda doc: doc["annotations"][0].update(bbox=[44, -4, 30, 20]))
    params = detect_params(tmp_path, source)
    result = stages.ingest.run(params)
    assert result.quarantine.empty
    a = result.manifest.set_index("path").loc["images/a.png", "image_id"]
    boxes = result.boxes[(result.boxes["image_id"] == a) & (result.boxes["class_name"] == "bird")]
    assert boxes[["x_min", "y_min", "x_max", "y_max"]].values.tolist() == [[44.0, 0.0, 64.0, 16.0]]
    assert result.summary["clipped_boxes"] == 1
    report = stages.validate.run(params).report
    assert report["ingest"]["clipped_boxes"] == 1
    assert report["checks"]["boxes_inside_images"]["success"] is True

    strict = _run(tmp_path / "strict", source, ingest={"partial_boxes": "quarantine"})
    assert _box_reasons(strict) == {"annotations.json annotation id 1": "box_partly_outside"}
    assert strict.summary["clipped_boxes"] == 0


def test_json_sizes_that_disagree_with_the_file_lose_with_a_warning(tmp_path: Path) -> None:
    source = tmp_path / "source"
    write_coco(source)
    _rewrite(source, lambda doc: doc["images"][1].update(width=480, height=640))  # b.png is 48x64
    params = detect_params(tmp_path, source)
    result = stages.ingest.run(params)
    row = result.manifest.set_index("path").loc["images/b.png"]
    assert (row["width"], row["height"]) == (48, 64)
    assert result.summary["size_mismatches"] == 1
    report = stages.validate.run(params).report
    warned = [w for w in report["warnings"] if "differs from the file" in w]
    assert len(warned) == 1 and "images/b.png" in warned[0] and "480x640" in warned[0]


def test_images_without_annotations_are_kept_as_background(tmp_path: Path) -> None:
    source = tmp_path / "source"
    write_coco(source)
    _rewrite(
        source, lambda doc: doc.update(annotations=[a for a in doc["annotations"] if a["image_id"] != 1])
    )
    result = _run(tmp_path, source)
    assert len(result.manifest) == 4
    assert result.summary["background_images"] == 2  # a.png (now) and c.png
    a = result.manifest.set_index("path").loc["images/a.png", "image_id"]
    assert a not in set(result.boxes["image_id"])


def test_class_order_follows_category_ids_and_skips_roboflow_parent(tmp_path: Path) -> None:
    source = tmp_path / "source"
    spec = [("a.png", (64, 48), [("zebra", 1, 1, 9, 9), ("ant", 2, 2, 8, 8)])]
    write_coco(source, spec=spec, classes=["zebra", "ant"], json_name="_annotations.coco.json")

    def edit(doc: dict) -> None:
        doc["categories"] = [{"id": 0, "name": "animals", "supercategory": "none"}] + [
            {**c, "supercategory": "animals"} for c in doc["categories"]
        ]

    file = source / "_annotations.coco.json"
    doc = json.loads(file.read_text(encoding="utf-8"))
    edit(doc)
    file.write_text(json.dumps(doc), encoding="utf-8")
    result = _run(tmp_path, source)
    assert result.classes == ["zebra", "ant"]  # ids 1, 2; not alphabetical, no 'animals'


def test_data_annotations_picks_one_of_several_files(tmp_path: Path) -> None:
    source = tmp_path / "source"
    write_coco(source, json_name="first.json")
    write_coco(source, spec=DETECT_SPEC[:1], json_name="second.json", write_images=False)
    with pytest.raises(DataError, match=r"several COCO files at the root \(first.json, second.json\)"):
        _run(tmp_path, source, data={"format": "coco"})
    result = _run(tmp_path, source, data={"annotations": "second.json"})
    assert result.format == "coco" and len(result.manifest) == 1
    assert result.manifest["source"].tolist() == ["second.json"]


def test_data_annotations_outside_the_source_is_rejected(tmp_path: Path) -> None:
    source = tmp_path / "source"
    write_coco(source)
    write_coco(tmp_path, json_name="outside.json", write_images=False)
    with pytest.raises(DataError, match=r"data.annotations = ../outside.json is outside the source folder"):
        _run(tmp_path, source, data={"annotations": "../outside.json", "format": "coco"})


def test_windows_separators_lying_extensions_and_unlisted_images(tmp_path: Path) -> None:
    source = tmp_path / "source"
    spec = [("a.png", (64, 48), [("cat", 1, 1, 30, 30)]), ("b.jpg", (40, 40), [("cat", 2, 2, 20, 20)])]
    write_coco(source, spec=spec, classes=["cat"], image_dir=".", json_name="annotations.json")
    write_image(source / "b.jpg", seed=9, size=(40, 40), fmt="PNG")  # a PNG named .jpg
    (source / "sub").mkdir()
    shutil.move(source / "a.png", source / "sub" / "a.png")
    write_image(source / "extra.png", seed=10)
    _rewrite(source, lambda doc: doc["images"][0].update(file_name="sub\\a.png"))
    result = _run(tmp_path, source)
    assert sorted(result.manifest["path"]) == ["b.jpg", "sub/a.png"]
    assert "extra.png" in result.ignored
    assert any("not listed" in w for w in result.summary["warnings"])


def test_stray_metadata_json_does_not_make_a_folder_dataset_coco(tmp_path: Path) -> None:
    source = make_classify_source(tmp_path / "source", per_class=2)
    (source / "metadata.json").write_text('{"description": "images and annotations"}', encoding="utf-8")
    result = stages.ingest.run(detect_params(tmp_path, source, data={"task": "classify"}))
    assert result.format == "folder" and result.ignored == ["metadata.json"]
