"""Pascal VOC XML: defused parsing, float boxes and flags, images resolved by <filename> only."""

from __future__ import annotations

from pathlib import Path

import pytest

import stages.ingest
import stages.validate
from stages.core.contracts import read_parquet
from stages.core.layout import Layout
from tests.conftest import detect_params, guard_sources, voc_xml, write_image, write_voc


@pytest.fixture(autouse=True)
def _source_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    guard_sources(monkeypatch)


def _run(tmp_path: Path, source: Path, **sections) -> stages.ingest.IngestResult:
    return stages.ingest.run(detect_params(tmp_path, source, **sections))


def _reasons(result: stages.ingest.IngestResult) -> dict[str, str]:
    return dict(zip(result.quarantine["annotation"], result.quarantine["reason"], strict=True))


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<annotation><filename>a.png</filename><object><name>&lol9;</name>
<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>
"""


def test_entity_bombs_and_external_entities_are_quarantined_unexpanded(tmp_path: Path) -> None:
    source = write_voc(tmp_path / "source")
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CLASS", encoding="utf-8")
    (source / "Annotations" / "a.xml").write_text(BILLION_LAUGHS, encoding="utf-8")
    (source / "Annotations" / "b.xml").write_text(
        f'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file://{secret}">]>'
        "<annotation><filename>b.png</filename><object><name>&x;</name><bndbox><xmin>1</xmin>"
        "<ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>",
        encoding="utf-8",
    )
    params = detect_params(tmp_path, source)
    result = stages.ingest.run(params)
    assert _reasons(result) == {"Annotations/a.xml": "unsafe_xml", "Annotations/b.xml": "unsafe_xml"}
    assert "lol" not in result.classes and "TOP-SECRET-CLASS" not in result.classes
    assert set(result.classes) == {"bird"}  # only d é.png's boxes remain
    written = b"".join(p.read_bytes() for p in Layout(params.paths).ingest_dir.iterdir())
    assert b"TOP-SECRET" not in written and b"lollol" not in written


def test_malformed_xml_and_foreign_xml_are_quarantined_with_position(tmp_path: Path) -> None:
    source = write_voc(tmp_path / "source")
    (source / "Annotations" / "a.xml").write_text(
        "<annotation>\n<filename>a.png</filename>\n<object>", "utf-8"
    )
    (source / "Annotations" / "b.xml").write_text("<svg><rect/></svg>", encoding="utf-8")
    result = _run(tmp_path, source)
    assert _reasons(result) == {
        "Annotations/a.xml": "annotation_unreadable",
        "Annotations/b.xml": "not_voc_annotation",
    }
    details = result.quarantine.set_index("annotation")["detail"]
    assert "at line 3, column" in details["Annotations/a.xml"]
    assert len(result.manifest) == 2  # c and d; a.png and b.png have no usable XML: not imported
    assert any("have no XML" in w for w in result.summary["warnings"])


@pytest.mark.parametrize(
    ("box", "reason"),
    [
        ((30, 5, 10, 20), "box_inverted"),
        ((10, 20, 30, 5), "box_inverted"),
        ((10, 5, 10, 20), "box_degenerate"),
    ],
)
def test_inverted_and_degenerate_boxes_are_quarantined(tmp_path: Path, box: tuple, reason: str) -> None:
    source = write_voc(tmp_path / "source")
    (source / "Annotations" / "b.xml").write_text(
        voc_xml("b.png", (48, 64), [("cat", *box)]), encoding="utf-8"
    )
    result = _run(tmp_path, source)
    assert _reasons(result) == {"Annotations/b.xml object 1": reason}
    assert result.quarantine["path"].tolist() == ["JPEGImages/b.png"]
    assert "images/b.png" not in result.quarantine["path"].tolist()
    assert len(result.manifest) == 4  # b.png stays, as a background image


def test_float_coordinates_and_flags_are_kept(tmp_path: Path) -> None:
    source = write_voc(tmp_path / "source")
    xml = voc_xml("b.png", (48, 64), [("cat", 4.5, 8.25, 28.75, 40.0)], flags=(1, 1))
    (source / "Annotations" / "b.xml").write_text(xml, encoding="utf-8")
    result = _run(tmp_path, source)
    b = result.manifest.set_index("path").loc["JPEGImages/b.png", "image_id"]
    row = result.boxes[result.boxes["image_id"] == b].iloc[0]
    assert (row["x_min"], row["y_min"], row["x_max"], row["y_max"]) == (4.5, 8.25, 28.75, 40.0)
    assert bool(row["difficult"]) and bool(row["truncated"])
    assert not result.boxes[result.boxes["image_id"] != b][["difficult", "truncated"]].any().any()


def test_missing_images_unknown_files_and_stale_paths(tmp_path: Path) -> None:
    source = write_voc(tmp_path / "source")
    (source / "JPEGImages" / "c.png").unlink()
    (source / "Annotations" / "README.txt").write_text("exported by a tool\n", encoding="utf-8")
    (source / "Annotations" / ".DS_Store").write_bytes(b"\0")
    result = _run(tmp_path, source)
    assert _reasons(result) == {"Annotations/c.xml": "missing_file"}
    assert "names image 'c.png', which is not in JPEGImages" in result.quarantine["detail"].iloc[0]
    assert "Annotations/README.txt" in result.ignored
    assert len(result.manifest) == 3  # the stale /Users/someone/Desktop/<path> was never used


def test_malformed_objects_drop_only_that_object(tmp_path: Path) -> None:
    source = write_voc(tmp_path / "source")
    xml = voc_xml("a.png", (64, 48), [("bird", 8, 6, 40, 30), ("cat", 1, 1, "ten", 9)])
    xml = xml.replace(
        "</annotation>", "<object><name>cat</name></object><object><bndbox/></object></annotation>"
    )
    (source / "Annotations" / "a.xml").write_text(xml, encoding="utf-8")
    result = _run(tmp_path, source)
    assert _reasons(result) == {
        "Annotations/a.xml object 2": "box_malformed",
        "Annotations/a.xml object 3": "box_malformed",
        "Annotations/a.xml object 4": "box_malformed",
    }
    assert len(result.boxes) == 4


def test_filename_without_extension_and_image_sets_split(tmp_path: Path) -> None:
    source = write_voc(tmp_path / "source")
    xml = voc_xml("a", (64, 48), [("bird", 8, 6, 40, 30)])
    (source / "Annotations" / "a.xml").write_text(xml, encoding="utf-8")
    sets = source / "ImageSets" / "Main"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("a\nb\n", encoding="utf-8")
    (sets / "val.txt").write_text("c\n", encoding="utf-8")
    (sets / "test.txt").write_text("d é\n", encoding="utf-8")
    (sets / "trainval.txt").write_text("a\nb\nc\n", encoding="utf-8")
    result = _run(tmp_path, source)
    splits = result.manifest.set_index("path")["split"].to_dict()
    assert splits == {
        "JPEGImages/a.png": "train",
        "JPEGImages/b.png": "train",
        "JPEGImages/c.png": "val",
        "JPEGImages/d é.png": "test",
    }


def test_boxes_of_an_image_that_fails_to_decode_are_dropped_at_validate(tmp_path: Path) -> None:
    source = write_voc(tmp_path / "source")
    write_image(source / "JPEGImages" / "a.png", seed=1, size=(64, 48))
    data = (source / "JPEGImages" / "a.png").read_bytes()
    (source / "JPEGImages" / "a.png").write_bytes(data[: len(data) // 2])  # the header survives
    params = detect_params(tmp_path, source)
    assert len(stages.ingest.run(params).boxes) == 5
    result = stages.validate.run(params)
    assert result.quarantine[["path", "reason", "item", "stage"]].values.tolist() == [
        ["JPEGImages/a.png", "image_quarantined", "box", "validate"],
        ["JPEGImages/a.png", "image_quarantined", "box", "validate"],
        ["JPEGImages/a.png", "corrupt", "image", "validate"],
    ]
    assert len(result.boxes) == 3 and len(result.manifest) == 3
    assert result.report["boxes_in"] == 5 and result.report["boxes_valid"] == 3
    assert len(read_parquet(Layout(params.paths).boxes)) == 3
