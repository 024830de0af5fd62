"""CVAT for images 1.1 XML: boxes, polygons, masks, tags, subsets, and what is refused or quarantined."""

from __future__ import annotations

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


def _write(source: Path, images: list[str], **kwargs) -> Path:
    writers.write_images(source)
    (source / "annotations.xml").write_text(writers.cvat_xml(images, **kwargs), encoding="utf-8")
    return source


def _run(tmp_path: Path, source: Path, task: str = "detect") -> stages.ingest.IngestResult:
    if task == "detect":
        return stages.ingest.run(detect_params(tmp_path / "run", source))
    return stages.ingest.run(fast_params(tmp_path / "run", source))


def _reasons(result: stages.ingest.IngestResult) -> dict[str, str]:
    return dict(zip(result.quarantine["annotation"], result.quarantine["reason"], strict=True))


def test_auto_detects_cvat_and_keeps_the_meta_label_order(tmp_path: Path) -> None:
    source = _write(
        tmp_path / "source", [writers.cvat_image(0, writers.SPEC[0])], labels=["cat", "bird", "dog"]
    )
    assert detect_format(source).format == "cvat"
    result = _run(tmp_path, source)
    assert result.classes == ["cat", "bird", "dog"]
    assert result.manifest["path"].tolist() == ["images/a (1).png"]


def test_a_project_export_reads_labels_from_the_project_and_subsets_as_splits(tmp_path: Path) -> None:
    images = [
        writers.cvat_image(i, img, subset)
        for i, (img, subset) in enumerate(zip(writers.SPEC, ["Train", "Validation", "Test"], strict=True))
    ]
    source = _write(tmp_path / "source", images, project=True)
    (source / "images" / "Test").mkdir()
    (source / "images" / "d.png").rename(source / "images" / "Test" / "d.png")  # CVAT's images/<subset>/
    result = _run(tmp_path, source)
    assert result.classes == writers.CLASSES
    assert dict(zip(result.manifest["path"], result.manifest["split"], strict=True)) == {
        "images/a (1).png": "train",
        "images/b c.png": "val",
        "images/Test/d.png": "test",
    }


def test_a_mask_decodes_to_its_pixels_and_gives_its_tight_box(tmp_path: Path) -> None:
    mask = np.zeros((48, 48), dtype=np.uint8)
    mask[10:20, 5:9] = 1
    mask[14, 9:12] = 1
    runs, left, top, width, height = writers.cvat_rle(mask)
    rle = ", ".join(map(str, runs))
    element = (
        f'<mask label="cat" rle="{rle}" left="{left}" top="{top}" width="{width}" height="{height}" '
        'z_order="1"/>'
    )
    image = f'<image id="0" name="d.png" width="48" height="48">{element}</image>'
    result = _run(tmp_path, _write(tmp_path / "source", [image]))
    assert result.shapes is not None and result.shapes["kind"].tolist() == ["rle"]
    decoded = shapes.rle_decode(str(result.shapes["counts"].iloc[0]), 48, 48)
    assert np.array_equal(decoded, mask)
    assert result.boxes[["x_min", "y_min", "x_max", "y_max"]].values.tolist() == [[5.0, 10.0, 12.0, 20.0]]


def test_tags_make_a_classification_manifest(tmp_path: Path) -> None:
    tagged = [
        f'<image id="{i}" name="{img.name}" width="{img.size[0]}" height="{img.size[1]}">'
        f'<tag label="{label}"/></image>'
        for i, (img, label) in enumerate(zip(writers.SPEC, ["cat", "bird", "cat"], strict=True))
    ]
    result = _run(tmp_path, _write(tmp_path / "source", tagged), task="classify")
    assert dict(zip(result.manifest["path"], result.manifest["label"], strict=True)) == {
        "images/a (1).png": "cat",
        "images/b c.png": "bird",
        "images/d.png": "cat",
    }
    assert result.classes == ["bird", "cat"]


def test_bad_elements_are_quarantined_one_by_one(tmp_path: Path) -> None:
    body = "".join(
        [
            '<box label="dog" xtl="1" ytl="1" xbr="5" ybr="5"/>',  # 1: not in <labels>
            '<polyline label="cat" points="1,1;5,5"/>',  # 2
            '<points label="cat" points="1,1"/>',  # 3
            '<polygon label="cat" points=""/>',  # 4: empty points
            '<polygon label="cat" points="1,1;5,x;9,1"/>',  # 5
            '<mask label="cat" rle="3, 4" left="0" top="0" width="3" height="3"/>',  # 6: 7 of 9 pixels
            '<box label="cat" xtl="1" ytl="1" xbr="5" ybr="5" rotation="30"/>',  # 7
            '<box label="cat" xtl="1" ytl="1" xbr="20" ybr="30"/>',  # 8: kept
        ]
    )
    image = f'<image id="0" name="d.png" width="48" height="48">{body}</image>'
    result = _run(tmp_path, _write(tmp_path / "source", [image]))
    prefix = "annotations.xml image id 0"
    assert _reasons(result) == {
        f"{prefix} <box> 1": "unknown_class",
        f"{prefix} <polyline> 2": "shape_unsupported",
        f"{prefix} <points> 3": "shape_unsupported",
        f"{prefix} <polygon> 4": "shape_too_few_points",
        f"{prefix} <polygon> 5": "shape_malformed",
        f"{prefix} <mask> 6": "shape_malformed",
        f"{prefix} <box> 7": "box_rotated",
    }
    assert len(result.boxes) == 1


def test_a_missing_image_is_quarantined_with_where_it_was_looked_for(tmp_path: Path) -> None:
    image = (
        '<image id="4" name="gone (2).jpg" width="10" height="10">'
        '<box label="cat" xtl="1" ytl="1" xbr="5" ybr="5"/></image>'
    )
    result = _run(tmp_path, _write(tmp_path / "source", [writers.cvat_image(0, writers.SPEC[2]), image]))
    row = result.quarantine[result.quarantine["path"] == "gone (2).jpg"].iloc[0]
    assert row["reason"] == "missing_file" and "images" in row["detail"]
    assert result.manifest["path"].tolist() == ["images/d.png"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "<annotations><version>1.1</version><meta/><image id='0' name='d.png'",
            "not well-formed XML at line 1",
        ),
        ("<annotations><version>1.1</version><foo/></annotations>", "not CVAT's <annotations> with <meta>"),
        (
            "<annotations><version>1.1</version><meta/><track id='0' label='cat'/></annotations>",
            "holds <track> elements (CVAT for video)",
        ),
        (
            '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "y">]>'
            "<annotations><version>1.1</version></annotations>",
            "declares a DTD",
        ),
    ],
)
def test_a_file_that_is_not_cvat_for_images_is_refused_in_one_sentence(
    tmp_path: Path, text: str, expected: str
) -> None:
    source = tmp_path / "source"
    writers.write_images(source)
    (source / "annotations.xml").write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as caught:
        stages.ingest.run(detect_params(tmp_path / "run", source, data={"format": "cvat"}))
    assert str(caught.value).startswith("annotations.xml ") and expected in str(caught.value)


def test_a_name_that_leaves_the_source_is_quarantined_unopened(tmp_path: Path) -> None:
    write_image(tmp_path / "secret.png", seed=9)
    image = '<image id="1" name="../../secret.png" width="48" height="40"/>'
    result = _run(tmp_path, _write(tmp_path / "source", [writers.cvat_image(0, writers.SPEC[2]), image]))
    assert result.quarantine["reason"].tolist() == ["outside_source"]
    assert result.manifest["path"].tolist() == ["images/d.png"]
