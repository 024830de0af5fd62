"""Mask PNGs are read as they are: value 255 ("ignore", e.g. Pascal VOC's object borders) stays
ignored in a segment class map, and is never a class, a box or a quarantine entry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages import ingest, validate
from stages.core.contracts import read_classes, read_parquet
from stages.core.layout import Layout
from stages.dataprep.semantic_masks import IGNORE_INDEX, MaskStore, rasterise, segment_classes
from stages.dataprep.shapes import IGNORE_REGION, rle_encode
from tests import annotation_writers as writers
from tests.conftest import fast_params, guard_sources

CLASSES = ["cat", "bird"]
SIZE = (48, 32)  # width, height


@pytest.fixture(autouse=True)
def _source_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    guard_sources(monkeypatch)


def _mask(index: int) -> np.ndarray:
    """A cat and a bird, each with a one-pixel 255 border (VOC style); image 3 is border only."""
    values = np.zeros((SIZE[1], SIZE[0]), np.uint8)
    if index == 3:
        values[10:20, 10:20] = 255  # an object nobody named: ignore pixels only
        return values
    values[3:15, 3 + index : 20 + index] = 255
    values[4:14, 4 + index : 19 + index] = 1
    values[17:30, 24:46] = 255
    values[18:29, 25:45] = 2
    return values


def _source(root: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, np.ndarray]]:
    masks = {f"m{i}.png": _mask(i) for i in range(4)}
    monkeypatch.setattr(writers, "SPEC", [writers.Img(name, SIZE, ()) for name in masks])
    return writers.write_mask_pngs(root, masks, ["background", *CLASSES]), masks


def _params(tmp_path: Path, source: Path, task: str):
    return fast_params(tmp_path / task, source, data={"task": task}, validate={"min_images_per_class": 1})


def test_segment_keeps_255_as_ignore_exactly_where_the_mask_has_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, masks = _source(tmp_path / "source", monkeypatch)
    params = _params(tmp_path, source, "segment")
    imported = ingest.run(params)
    assert imported.format == "masks" and imported.classes == CLASSES
    assert imported.quarantine.empty, imported.quarantine.to_dict("records")
    assert IGNORE_REGION not in set(imported.boxes["class_name"])  # no box for the ignore region
    validated = validate.run(params)
    assert validated.quarantine.empty and len(validated.manifest) == len(masks)
    assert not validated.report["warnings"], validated.report["warnings"]
    layout = Layout(params.paths)
    assert read_classes(layout.classes) == CLASSES
    assert validated.report["class_counts"] == {"cat": 3, "bird": 3}

    store = MaskStore(layout.mask_cache, read_parquet(layout.shapes), read_classes(layout.classes), "area")
    assert IGNORE_REGION not in store.classes
    for row in validated.manifest.itertuples():
        want = masks[Path(str(row.path)).name]
        got = store.mask(str(row.image_id), str(row.sha256), SIZE[1], SIZE[0])
        assert np.array_equal(got, want), (row.path, np.argwhere(got != want)[:5])
        assert np.array_equal(got == IGNORE_INDEX, want == 255)


def test_detect_of_the_same_source_has_no_box_and_no_class_for_the_ignore_region(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, _ = _source(tmp_path / "source", monkeypatch)
    params = _params(tmp_path, source, "detect")
    imported = ingest.run(params)
    assert imported.classes == CLASSES and imported.quarantine.empty
    paths = imported.manifest.set_index("image_id")["path"].map(lambda p: Path(str(p)).name)
    frame = imported.boxes.assign(path=imported.boxes["image_id"].map(paths))
    boxes = set(
        frame[["path", "class_name", "x_min", "y_min", "x_max", "y_max"]].itertuples(index=False, name=None)
    )
    assert boxes == {
        (f"m{i}.png", name, *box)
        for i in range(3)
        for name, box in (("cat", (4.0 + i, 4.0, 19.0 + i, 14.0)), ("bird", (25.0, 18.0, 45.0, 29.0)))
    }
    validated = validate.run(params)
    assert validated.quarantine.empty and not validated.report["warnings"]
    assert validated.boxes is not None and set(validated.boxes["class_name"]) == set(CLASSES)
    assert validated.report["class_counts"] == {"cat": 3, "bird": 3}


@pytest.mark.parametrize("order", ["area", "z_order"])
def test_the_ignore_region_is_drawn_last_whatever_the_order(order: str) -> None:
    ignore = np.zeros((8, 8), np.uint8)
    ignore[0:6, 0:6] = 1  # larger than the cat (area draws it first) and below it in z
    rows = pd.DataFrame(
        [
            {"class_name": IGNORE_REGION, "kind": "rle", "points": None, "counts": rle_encode(ignore)},
            {"class_name": "cat", "kind": "polygon", "points": [2, 2, 8, 2, 8, 8, 2, 8], "counts": None},
        ]
    ).assign(z_order=[0, 5])
    out = rasterise(rows, 8, 8, {name: i for i, name in enumerate(segment_classes(["cat"]))}, order)
    expected = np.zeros((8, 8), np.uint8)
    expected[2:8, 2:8] = 1
    expected[0:6, 0:6] = IGNORE_INDEX
    assert np.array_equal(out, expected)
    assert segment_classes([IGNORE_REGION, "cat"]) == ["background", "cat"]
