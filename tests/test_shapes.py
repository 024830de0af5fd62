"""The shapes contract: polygon checks, tight boxes, RLE codecs, and every reader agreeing on one dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import stages.ingest
import stages.validate
from stages.core.contracts import read_parquet
from stages.core.layout import Layout
from stages.dataprep import shapes
from stages.reporting.inputs import ReportInputs
from stages.reporting.sections import data as data_section
from tests import annotation_writers as writers
from tests.conftest import detect_params, guard_sources, write_image


@pytest.fixture(autouse=True)
def _source_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    guard_sources(monkeypatch)


def _ingest(tmp_path: Path, source: Path, **data) -> stages.ingest.IngestResult:
    return stages.ingest.run(detect_params(tmp_path / "run", source, data=data))


# --- geometry -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("points", "reason"),
    [
        ([1, 1, 5, 5], "shape_too_few_points"),
        ([1, 1, 5, 5, 9], "shape_malformed"),
        ([1, 1, 5, 5, 9, 9], "shape_zero_area"),
        ([0, 0, 10, 10, 10, 0, 0, 10], "shape_self_intersecting"),
        ([100, 100, 120, 100, 110, 120], "shape_outside_image"),
        ([1, 1, float("nan"), 5, 9, 1], "shape_not_finite"),
    ],
)
def test_bad_polygons_are_named(points: list[float], reason: str) -> None:
    problem = shapes.polygon_problem([float(v) for v in points], 64, 48)
    assert problem is not None and problem[0] == reason


def test_a_good_polygon_passes_and_gives_its_tight_box() -> None:
    points = [40.5, 5.0, 60.0, 8.25, 50.125, 30.0]
    assert shapes.polygon_problem(points, 64, 48) is None
    assert shapes.polygon_box(points) == (40.5, 5.0, 60.0, 30.0)


def test_clipping_moves_only_the_vertices_outside() -> None:
    clipped, moved = shapes.clip_points([-3.0, 2.0, 70.0, 2.0, 30.0, 50.0], 64, 48)
    assert clipped == [0.0, 2.0, 64.0, 2.0, 30.0, 48.0] and moved


def test_coco_rle_round_trips_and_matches_the_polygon_raster() -> None:
    points = [2.0, 2.0, 20.0, 2.0, 20.0, 18.0, 2.0, 18.0]
    mask = shapes.polygon_mask(points, 24, 32)
    assert mask.sum() == 18 * 16 and shapes.mask_box(mask) == (2.0, 2.0, 20.0, 18.0)  # the polygon's own box
    assert np.array_equal(shapes.rle_decode(shapes.rle_encode(mask), 24, 32), mask)
    runs = _column_runs(mask)
    uncompressed = shapes.coco_rle({"counts": runs, "size": [24, 32]}, 24, 32)
    assert np.array_equal(uncompressed, mask)


def _column_runs(mask: np.ndarray) -> list[int]:
    flat = mask.T.reshape(-1)
    runs, value, count = [], 0, 0
    for pixel in flat:
        if pixel == value:
            count += 1
        else:
            runs.append(count)
            value, count = int(pixel), 1
    return [*runs, count]


def test_cvat_rle_decodes_a_hand_made_mask() -> None:
    # 3x2 box at left=1, top=2 in a 5x4 image; rows "0 1 1" / "1 1 0": runs 1, 4, 1 (background first).
    mask = shapes.cvat_mask([1, 4, 1], 1, 2, 3, 2, 5, 4)
    expected = np.zeros((4, 5), dtype=np.uint8)
    expected[2, 2:4] = 1
    expected[3, 1:3] = 1
    assert np.array_equal(mask, expected)
    with pytest.raises(ValueError, match="runs cover 5 pixels"):
        shapes.cvat_mask([1, 4], 1, 2, 3, 2, 5, 4)
    with pytest.raises(ValueError, match="does not fit"):
        shapes.cvat_mask([1, 4, 1], 4, 2, 3, 2, 5, 4)


def test_labelstudio_rle_decodes_a_hand_made_stream() -> None:
    # 2x1 canvas (8 RGBA values): a literal chunk of 4 values, then a repeat chunk of 4 x 255.
    bits = f"{8:032b}{7:05b}" + f"{3:04b}" * 4  # 8 values, 8-bit words, run lengths in 4 bits
    bits += f"0{0:02b}{3:04b}" + "".join(f"{v:08b}" for v in (9, 9, 9, 0))  # pixel 0: alpha 0
    bits += f"1{0:02b}{3:04b}{255:08b}"  # pixel 1: alpha 255
    bits += "0" * (-len(bits) % 8)
    stream = [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]
    assert shapes.labelstudio_mask(stream, 2, 1).tolist() == [[0, 1]]
    with pytest.raises(ValueError, match="not the 3x1x4"):
        shapes.labelstudio_mask(stream, 3, 1)
    with pytest.raises(ValueError, match="ends in the middle"):
        shapes.labelstudio_mask(stream[:-2], 2, 1)


def test_labelstudio_encoder_and_decoder_agree_on_a_polygon_mask() -> None:
    mask = shapes.polygon_mask([3.0, 1.0, 15.0, 4.0, 8.0, 11.0], 12, 16)
    assert np.array_equal(shapes.labelstudio_mask(writers.labelstudio_rle(mask), 16, 12), mask)


@pytest.mark.parametrize("orientation", range(2, 9))
def test_oriented_points_land_on_the_oriented_mask(orientation: int) -> None:
    mask = np.zeros((5, 7), dtype=np.uint8)
    mask[1, 2] = mask[3, 5] = 1
    turned = shapes.orient_mask(mask, orientation)
    ys, xs = np.nonzero(mask)
    centres = [v for x, y in zip(xs + 0.5, ys + 0.5, strict=True) for v in (x, y)]
    moved = shapes.orient_points(centres, orientation, 7, 5)
    assert all(turned[int(y), int(x)] for x, y in zip(moved[0::2], moved[1::2], strict=True))
    assert turned.sum() == 2


# --- every reader, one dataset --------------------------------------------------------------


def _summary(result: stages.ingest.IngestResult) -> tuple[pd.DataFrame, list, list]:
    paths = dict(zip(result.manifest["image_id"], result.manifest["path"], strict=True))
    boxes = sorted(
        (paths[b.image_id], b.class_name, b.x_min, b.y_min, b.x_max, b.y_max)
        for b in result.boxes.itertuples()
    )
    assert result.shapes is not None
    polygons = sorted(
        (paths[image_id], name, tuple(points))
        for image_id, name, points in zip(
            result.shapes["image_id"], result.shapes["class_name"], result.shapes["points"], strict=True
        )
    )
    return result.manifest.drop(columns=["source"]), boxes, polygons


def _close(a: list, b: list) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        numbers_x = [v for v in x[2:] if isinstance(v, float)] + list(x[2] if isinstance(x[2], tuple) else ())
        numbers_y = [v for v in y[2:] if isinstance(v, float)] + list(y[2] if isinstance(y[2], tuple) else ())
        if x[:2] != y[:2] or len(numbers_x) != len(numbers_y):
            return False
        if any(abs(p - q) > 0.01 for p, q in zip(numbers_x, numbers_y, strict=True)):
            return False
    return True


def test_every_format_imports_the_same_manifest_boxes_and_shapes(tmp_path: Path) -> None:
    results = {}
    writer_of = {
        "coco": writers.write_coco,
        "yolo": writers.write_yolo,
        "cvat": writers.write_cvat,
        "labelstudio": writers.write_labelstudio,
        "labelstudio-min": lambda s: writers.write_labelstudio(s, minimal=True),
    }
    for name, write in writer_of.items():
        source = write(tmp_path / name)
        result = _ingest(tmp_path / f"run-{name}", source)
        assert result.format == name.split("-")[0], name
        assert result.quarantine.empty, (name, result.quarantine.to_dict("records"))
        results[name] = _summary(result)
    manifest, boxes, polygons = results["coco"]
    assert len(boxes) == 4 and len(polygons) == 2  # two boxes, two polygons and their two tight boxes
    assert ("images/a (1).png", "bird", 40.5, 5.0, 60.0, 30.0) in boxes
    for name, (other_manifest, other_boxes, other_polygons) in results.items():
        pd.testing.assert_frame_equal(other_manifest, manifest, obj=name)
        assert _close(other_boxes, boxes), (name, other_boxes, boxes)
        assert _close(other_polygons, polygons), (name, other_polygons, polygons)
    # Pascal VOC has no polygons: the same manifest and boxes (each polygon as its tight box).
    voc = _ingest(tmp_path / "run-voc", writers.write_voc(tmp_path / "voc"))
    assert voc.format == "voc" and voc.quarantine.empty and voc.shapes.empty
    voc_manifest, voc_boxes, _ = _summary(voc)
    pd.testing.assert_frame_equal(voc_manifest, manifest, obj="voc")
    assert _close(voc_boxes, boxes), (voc_boxes, boxes)


# --- COCO, YOLO-seg, Roboflow ---------------------------------------------------------------


def test_coco_rle_and_crowd_regions_are_kept_as_shapes(tmp_path: Path) -> None:
    source = writers.write_coco(tmp_path / "source")
    mask = shapes.polygon_mask([5.0, 5.0, 25.0, 5.0, 15.0, 20.0], 40, 56)
    doc = json.loads((source / "annotations.json").read_text(encoding="utf-8"))
    doc["annotations"] += [
        {
            "id": 50,
            "image_id": 2,
            "category_id": 1,
            "iscrowd": 1,
            "bbox": [5, 5, 20, 15],
            "segmentation": {"counts": _column_runs(mask), "size": [40, 56]},
        },
        {"id": 51, "image_id": 2, "category_id": 2, "segmentation": {"counts": "%%broken", "size": [40, 56]}},
        {"id": 52, "image_id": 2, "category_id": 2, "segmentation": [[1, 1, 3, 3]]},
    ]
    (source / "annotations.json").write_text(json.dumps(doc), encoding="utf-8")
    result = _ingest(tmp_path, source)
    assert result.shapes is not None
    crowd = result.shapes[result.shapes["kind"] == "rle"]
    assert len(crowd) == 1 and bool(crowd["iscrowd"].iloc[0])
    decoded = shapes.rle_decode(str(crowd["counts"].iloc[0]), 40, 56)
    assert np.array_equal(decoded, mask)
    reasons = dict(zip(result.quarantine["annotation"], result.quarantine["reason"], strict=True))
    assert reasons == {
        "annotations.json annotation id 50": "crowd_region",  # the box only: the mask is kept
        "annotations.json annotation id 51": "shape_malformed",
        "annotations.json annotation id 52": "shape_too_few_points",
    }
    assert "annotations.json annotation id 51 has a segmentation RLE" in " ".join(result.quarantine["detail"])
    assert len(result.boxes) == 4  # no box derived from the crowd mask


def test_yolo_seg_rows_become_polygons_and_boxes_and_bad_ones_are_named(tmp_path: Path) -> None:
    source = writers.write_yolo(tmp_path / "source")
    with (source / "labels" / "d.txt").open("a", encoding="utf-8") as handle:
        handle.write("0 0.1 0.1 0.5 0.1 0.5\n")  # 6 fields: neither a box nor a polygon
        handle.write("1 0.1 0.1 0.5 0.5 0.9 0.9\n")  # three points on one line
        handle.write("0 10 10 20 10 20 20\n")  # pixels, not fractions
        handle.write("5 0.1 0.1 0.5 0.1 0.5 0.5\n")  # class 5 of 2
    result = _ingest(tmp_path, source)
    reasons = dict(zip(result.quarantine["annotation"], result.quarantine["reason"], strict=True))
    assert reasons == {
        "labels/d.txt line 2": "box_malformed",
        "labels/d.txt line 3": "shape_zero_area",
        "labels/d.txt line 4": "shape_not_normalized",
        "labels/d.txt line 5": "unknown_class",
    }
    assert result.shapes is not None and len(result.shapes) == 2 and len(result.boxes) == 4


def test_shapes_pass_validate_and_the_report_counts_them_per_class(tmp_path: Path) -> None:
    source = writers.write_cvat(tmp_path / "source")
    params = detect_params(tmp_path / "run", source, validate={"min_images_per_class": 1})
    stages.ingest.run(params)
    result = stages.validate.run(params)
    valid_shapes = read_parquet(Layout(params.paths).shapes)
    assert len(valid_shapes) == 2 and sorted(valid_shapes["points"].map(len)) == [6, 8]
    assert result.report["shape_counts"] == {"bird": 1, "cat": 1}
    assert bool(valid_shapes["occluded"].all()) and set(valid_shapes["z_order"]) == {2}
    assert json.loads(valid_shapes["attributes"].iloc[0]) == {"colour": "red"}
    inputs = ReportInputs(params, Layout(params.paths), {}, "detect", [], pd.DataFrame())
    assert "- shapes (polygons and masks) per class: bird 1, cat 1." in data_section.render(inputs).lines


def test_roboflow_file_names_resolve_in_the_split_images_subfolder(tmp_path: Path) -> None:
    source = tmp_path / "source"
    for split, names in {"train": ["a.jpg", "b.jpg"], "valid": ["c.jpg"]}.items():
        images, annotations = [], []
        for index, name in enumerate(names, start=1):
            folder = source / split / ("images" if name == "b.jpg" else "")
            write_image(folder / name, seed=ord(name[0]), size=(40, 32))
            images.append({"id": index, "file_name": name, "width": 40, "height": 32})
            annotations.append(
                {
                    "id": index,
                    "image_id": index,
                    "category_id": 1,
                    "bbox": [],
                    "segmentation": [[2, 2, 30, 2, 30, 20]],
                }
            )
        categories = [
            {"id": 0, "name": "things", "supercategory": "none"},
            {"id": 1, "name": "door", "supercategory": "things"},
        ]
        doc = {"images": images, "annotations": annotations, "categories": categories}
        (source / split / "_annotations.coco.json").write_text(json.dumps(doc), encoding="utf-8")
    result = _ingest(tmp_path, source)
    assert result.classes == ["door"]
    assert sorted(result.manifest["path"]) == ["train/a.jpg", "train/images/b.jpg", "valid/c.jpg"]
    assert result.shapes is not None and len(result.shapes) == 3
    # An empty "bbox" beside a polygon counts as none: the polygon's tight box is the box.
    assert (
        result.quarantine.empty
        and result.boxes[["x_min", "y_min", "x_max", "y_max"]].values.tolist() == [[2.0, 2.0, 30.0, 20.0]] * 3
    )


# --- mask PNG folders -----------------------------------------------------------------------


def _mask_source(root: Path) -> tuple[Path, np.ndarray]:
    values = np.zeros((40, 48), dtype=np.uint8)
    values[5:15, 4:20] = 1
    values[20:30, 30:44] = 2
    values[0:3, :] = 255  # ignore
    for name, seed in (("a.png", 1), ("b.png", 2)):
        write_image(root / "images" / name, seed=seed, size=(48, 40))
    (root / "masks").mkdir()
    Image.fromarray(values, "L").save(root / "masks" / "a.png")
    Image.fromarray(np.full((40, 48), 7, dtype=np.uint8), "L").save(
        root / "masks" / "b.png"
    )  # value 7: unknown
    Image.fromarray(values, "L").save(root / "masks" / "orphan.png")
    (root / "classes.txt").write_text("background\ncat\nbird\n", encoding="utf-8")
    return root, values


def test_mask_folders_give_one_shape_per_class_and_its_tight_box(tmp_path: Path) -> None:
    source, values = _mask_source(tmp_path / "source")
    result = _ingest(tmp_path, source)
    assert result.format == "masks" and result.classes == ["cat", "bird"]
    assert result.shapes is not None
    by_class = {s.class_name: s for s in result.shapes.itertuples()}
    for value, name in ((1, "cat"), (2, "bird")):
        assert np.array_equal(shapes.rle_decode(str(by_class[name].counts), 40, 48), values == value)
    boxes = {b.class_name: (b.x_min, b.y_min, b.x_max, b.y_max) for b in result.boxes.itertuples()}
    assert boxes == {"cat": (4.0, 5.0, 20.0, 15.0), "bird": (30.0, 20.0, 44.0, 30.0)}
    assert dict(zip(result.quarantine["path"], result.quarantine["reason"], strict=True)) == {
        "images/b.png": "unknown_class",
        "masks/orphan.png": "label_without_image",
    }
