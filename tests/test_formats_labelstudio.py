"""Label Studio JSON and JSON-MIN: regions in percent, brush RLE, choices, URLs, annotation choice."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

import stages.ingest
from stages.core.errors import DataError
from stages.dataprep import shapes
from stages.dataprep.formats import detect_format
from tests import annotation_writers as writers
from tests.conftest import detect_params, fast_params, guard_sources, write_image


@pytest.fixture(autouse=True)
def _source_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    guard_sources(monkeypatch)


def _run(tmp_path: Path, source: Path, task: str = "detect") -> stages.ingest.IngestResult:
    if task == "detect":
        return stages.ingest.run(detect_params(tmp_path / "run", source))
    return stages.ingest.run(fast_params(tmp_path / "run", source))


def _reasons(result: stages.ingest.IngestResult) -> dict[str, str]:
    return dict(zip(result.quarantine["annotation"], result.quarantine["reason"], strict=True))


def _tasks() -> list[dict]:
    return copy.deepcopy(writers.labelstudio_tasks())


def _region(task: dict, index: int = 0) -> dict:
    return task["annotations"][0]["result"][index]


@pytest.mark.parametrize("minimal", [False, True])
def test_both_export_flavours_are_detected(tmp_path: Path, minimal: bool) -> None:
    source = writers.write_labelstudio(tmp_path / "source", minimal=minimal)
    assert detect_format(source).format == "labelstudio"


def test_a_brush_decodes_to_its_pixels_and_gives_its_tight_box(tmp_path: Path) -> None:
    mask = shapes.polygon_mask([5.0, 4.0, 40.0, 6.0, 20.0, 30.0], 48, 48)
    tasks = _tasks()
    brush = {"format": "rle", "rle": writers.labelstudio_rle(mask), "brushlabels": ["cat"]}
    tasks[2]["annotations"][0]["result"] = [
        {"type": "brushlabels", "value": brush, "original_width": 48, "original_height": 48}
    ]
    result = _run(tmp_path, writers.write_labelstudio(tmp_path / "source", tasks=tasks))
    assert result.quarantine.empty
    assert result.shapes is not None
    rle = result.shapes[result.shapes["kind"] == "rle"]
    assert np.array_equal(shapes.rle_decode(str(rle["counts"].iloc[0]), 48, 48), mask)
    box = shapes.mask_box(mask)
    assert box is not None and tuple(rle[["x_min", "y_min", "x_max", "y_max"]].iloc[0]) == box


def test_bad_regions_are_quarantined_one_by_one(tmp_path: Path) -> None:
    tasks = _tasks()
    first = tasks[0]["annotations"][0]["result"]
    size = {"original_width": 64, "original_height": 48}
    first += [
        {
            "type": "rectanglelabels",
            "value": {"x": 90, "y": 10, "width": 30, "height": 5, "rectanglelabels": ["cat"]},
        }
        | size,  # 3: 120 %
        {
            "type": "rectanglelabels",
            "value": {"x": 10, "y": 10, "width": 30, "height": 5, "rotation": 15, "rectanglelabels": ["cat"]},
        }
        | size,  # 4
        {"type": "polygonlabels", "value": {"points": [], "polygonlabels": ["cat"]}} | size,  # 5
        {"type": "brushlabels", "value": {"format": "rle", "rle": [0, 0, 1], "brushlabels": ["cat"]}}
        | size,  # 6
        {"type": "rectanglelabels", "value": {"x": 1, "y": 1, "width": 3, "height": 3}} | size,  # 7: no label
        {
            "type": "polygonlabels",
            "value": {"points": [[1, 1], [50, 1], [20, 20]], "polygonlabels": ["cat"]},
        },  # 8
    ]
    result = _run(tmp_path, writers.write_labelstudio(tmp_path / "source", tasks=tasks))
    prefix = "export.json task 1 result"
    assert _reasons(result) == {
        f"{prefix} 3": "value_not_percent",
        f"{prefix} 4": "box_rotated",
        f"{prefix} 5": "shape_malformed",
        f"{prefix} 6": "shape_malformed",
        f"{prefix} 7": "unknown_class",
        f"{prefix} 8": "annotation_malformed",
    }
    assert len(result.boxes) == 4  # the good regions of SPEC are untouched


def test_cancelled_annotations_are_skipped_and_ground_truth_wins(tmp_path: Path) -> None:
    tasks = _tasks()
    good = tasks[0]["annotations"][0]
    later = copy.deepcopy(good) | {"id": 90, "updated_at": "2024-05-01T00:00:00Z"}
    later["result"] = later["result"][:1]  # the latest keeps only the box
    cancelled = copy.deepcopy(good) | {"id": 91, "was_cancelled": True, "updated_at": "2025-01-01T00:00:00Z"}
    tasks[0]["annotations"] = [good, later, cancelled]
    tasks[1]["annotations"] = [copy.deepcopy(tasks[1]["annotations"][0]) | {"was_cancelled": True}]
    truth = copy.deepcopy(tasks[2]["annotations"][0]) | {"id": 92, "ground_truth": True}
    newer = copy.deepcopy(truth) | {"id": 93, "ground_truth": False, "updated_at": "2025-01-01T00:00:00Z"}
    newer["result"] = []
    tasks[2]["annotations"] = [newer, truth]
    result = _run(tmp_path, writers.write_labelstudio(tmp_path / "source", tasks=tasks))
    assert sorted(result.manifest["path"]) == ["images/a (1).png", "images/d.png"]  # b c: only cancelled
    paths = dict(zip(result.manifest["image_id"], result.manifest["path"], strict=True))
    per_image = result.boxes["image_id"].map(paths).value_counts().to_dict()
    assert per_image == {"images/a (1).png": 1, "images/d.png": 1}
    assert any("2 tasks of export.json have several annotations" in w for w in result.summary["warnings"])
    assert any("1 tasks of export.json have no annotation" in w for w in result.summary["warnings"])


def test_choices_make_a_classification_manifest(tmp_path: Path) -> None:
    tasks = _tasks()
    for task, label in zip(tasks, ["cat", "bird", "cat"], strict=True):
        task["annotations"][0]["result"] = [{"type": "choices", "value": {"choices": [label]}}]
    result = _run(tmp_path, writers.write_labelstudio(tmp_path / "source", tasks=tasks), task="classify")
    assert sorted(zip(result.manifest["path"], result.manifest["label"], strict=True)) == [
        ("images/a (1).png", "cat"),
        ("images/b c.png", "bird"),
        ("images/d.png", "cat"),
    ]


def test_urls_map_to_files_and_ambiguous_or_missing_ones_are_named(tmp_path: Path) -> None:
    tasks = _tasks()
    tasks[0]["data"]["image"] = "http://example.org/static/a%20(1).png"
    tasks[1]["data"]["image"] = "/data/upload/7/deadbeef-same.png"
    tasks[2]["data"]["image"] = "/data/local-files/?d=elsewhere/missing.png"
    source = writers.write_labelstudio(tmp_path / "source", tasks=tasks)
    write_image(source / "one" / "same.png", seed=40)
    write_image(source / "two" / "same.png", seed=41)
    result = _run(tmp_path, source)
    assert result.manifest["path"].tolist() == ["images/a (1).png"]
    details = dict(zip(result.quarantine["annotation"], result.quarantine["detail"], strict=True))
    assert "matches several files (one/same.png, two/same.png)" in details["export.json task 2"]
    assert "is not under data.source" in details["export.json task 3"]


def test_a_file_that_is_not_a_label_studio_export_is_refused_in_one_sentence(tmp_path: Path) -> None:
    source = writers.write_labelstudio(tmp_path / "source")
    (source / "export.json").write_text(
        '[{"id": 1, "data": {"image": "a.png"}, "annotations": [', encoding="utf-8"
    )
    with pytest.raises(DataError, match=r"^export.json: invalid JSON at line 1"):
        stages.ingest.run(detect_params(tmp_path / "run", source, data={"format": "labelstudio"}))
    (source / "export.json").write_text('{"annotations": []}', encoding="utf-8")
    with pytest.raises(DataError, match=r"^export.json: not a Label Studio export"):
        stages.ingest.run(
            detect_params(
                tmp_path / "run", source, data={"format": "labelstudio", "annotations": "export.json"}
            )
        )
