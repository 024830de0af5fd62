"""What a segmentation model answers once exported: the regions' JSON, the CSV row, the drawn copy,
and the parity rule that fails an export (the ONNX round trip itself: tests/test_segment_pipeline.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from stages.serving.exporting import parity_failures
from stages.serving.inputs import annotated
from stages.serving.metadata import ModelInfo
from stages.serving.rows import csv_row, segment_result
from tests.conftest import fast_params

CLASSES = ["background", "window", "door"]
INFO = ModelInfo(
    task="segment", classes=CLASSES, preprocessing={"input_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}
)


def class_map() -> np.ndarray:
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[2:8, 3:12] = 1  # window: 54 pixels
    mask[10:20, 20:25] = 2  # door: 50 pixels
    return mask


def test_regions_cover_the_image_and_their_rle_decodes_to_the_class_map() -> None:
    mask = class_map()
    result = segment_result(mask, INFO)
    assert (result["width"], result["height"]) == (30, 20)
    by_class = {r["class"]: r for r in result["regions"]}
    assert {name: r["pixels"] for name, r in by_class.items()} == {
        "background": 496,
        "window": 54,
        "door": 50,
    }
    assert sum(r["fraction"] for r in result["regions"]) == 1.0
    for index, name in enumerate(CLASSES):
        decoded = coco_mask.decode({"size": [20, 30], "counts": by_class[name]["rle"].encode()})
        assert np.array_equal(decoded.astype(bool), mask == index), name


def test_a_class_absent_from_the_image_has_no_region() -> None:
    mask = np.zeros((4, 4), dtype=np.uint8)
    assert [r["class"] for r in segment_result(mask, INFO)["regions"]] == ["background"]


def test_the_csv_row_keeps_each_class_share() -> None:
    row = csv_row("a.jpg", segment_result(class_map(), INFO), None, "segment")
    assert row["file"] == "a.jpg" and row["error"] == ""
    assert '"window": 0.09' in row["classes"] and '"door": 0.083333' in row["classes"]
    failed = csv_row("b.jpg", None, "cannot be decoded", "segment")
    assert failed["classes"] == "" and failed["error"] == "cannot be decoded"


def test_the_drawn_copy_tints_the_regions_and_leaves_the_background() -> None:
    image = Image.new("RGB", (30, 20), (100, 100, 100))
    drawn = np.asarray(annotated(image, segment_result(class_map(), INFO), "segment"))
    assert (drawn[0, 0] == 100).all()  # background untouched
    assert not (drawn[4, 5] == 100).all() and not (drawn[15, 22] == 100).all()
    assert not np.array_equal(drawn[4, 5], drawn[15, 22])  # one colour per class
    assert np.asarray(image).max() == 100  # the input image is not drawn on


def test_parity_fails_on_an_miou_drop_or_on_pixels_that_disagree(tmp_path: Path) -> None:
    params = fast_params(tmp_path, tmp_path / "source", data={"task": "segment"})
    good = {"task": "segment", "miou_drop": 0.0, "pixel_agreement": 1.0}
    assert parity_failures(good, params) == []
    assert parity_failures(good | {"miou_drop": 0.002}, params) == ["mIoU drop 0.0020 > 0.001"]
    assert parity_failures(good | {"pixel_agreement": 0.99}, params) == ["pixel agreement 0.9900 < 0.999"]
