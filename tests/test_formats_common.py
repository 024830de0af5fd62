"""What every detection format shares: one manifest and boxes, EXIF, duplicates, paths, auto-detection."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import stages.ingest
import stages.validate
from stages.core.contracts import BOX_COLUMNS, QUARANTINE_COLUMNS, read_parquet
from stages.core.errors import DataError
from stages.core.layout import Layout
from stages.dataprep import importing
from tests.conftest import (
    DETECT_CLASSES,
    DETECT_SPEC,
    detect_params,
    fast_params,
    make_classify_source,
    tree_digest,
    voc_xml,
    write_coco,
    write_image,
    write_voc,
    write_yolo,
    yolo_row,
)

WRITERS = {"coco": write_coco, "yolo": write_yolo, "voc": write_voc}


def _expected_boxes() -> set[tuple]:
    return {(name, cls, x0, y0, x1, y1) for name, _, boxes in DETECT_SPEC for cls, x0, y0, x1, y1 in boxes}


def _boxes_by_name(result: stages.ingest.IngestResult) -> set[tuple]:
    names = {row.image_id: row.path.rsplit("/", 1)[-1] for row in result.manifest.itertuples()}
    return {
        (
            names[b.image_id],
            b.class_name,
            round(b.x_min, 6),
            round(b.y_min, 6),
            round(b.x_max, 6),
            round(b.y_max, 6),
        )
        for b in result.boxes.itertuples()
    }


@pytest.mark.parametrize("fmt", ["coco", "yolo", "voc"])
def test_each_format_imports_the_spec_exactly(tmp_path: Path, fmt: str) -> None:
    source = tmp_path / "source"
    WRITERS[fmt](source)
    before = tree_digest(source)
    result = stages.ingest.run(detect_params(tmp_path, source))

    assert result.format == fmt and result.quarantine.empty, result.quarantine.to_dict("records")
    assert result.classes == DETECT_CLASSES
    assert _boxes_by_name(result) == _expected_boxes()
    assert list(result.boxes.columns) == BOX_COLUMNS
    assert result.manifest["label"].isna().all()
    sizes = {row.path.rsplit("/", 1)[-1]: (row.width, row.height) for row in result.manifest.itertuples()}
    assert sizes == {name: size for name, size, _ in DETECT_SPEC}
    assert result.summary["background_images"] == 1  # c.png: no boxes, still imported
    layout = Layout(detect_params(tmp_path, source).paths)
    pd.testing.assert_frame_equal(read_parquet(layout.ingest_boxes), result.boxes, check_dtype=False)
    assert json.loads(layout.classes.read_text(encoding="utf-8")) == DETECT_CLASSES
    assert tree_digest(source) == before


def test_round_trip_all_formats_give_the_same_manifest_and_boxes(tmp_path: Path) -> None:
    results = {}
    for fmt, writer in WRITERS.items():
        writer(tmp_path / fmt / "source")
        params = detect_params(tmp_path / fmt, tmp_path / fmt / "source")
        stages.ingest.run(params)
        results[fmt] = stages.validate.run(params)
    columns = ["image_id", "sha256", "width", "height", "label", "group", "split"]
    reference = results["coco"]
    for fmt, result in results.items():
        assert result.quarantine.empty, (fmt, result.quarantine.to_dict("records"))
        left = reference.manifest[columns].sort_values("image_id").reset_index(drop=True)
        right = result.manifest[columns].sort_values("image_id").reset_index(drop=True)
        pd.testing.assert_frame_equal(left, right, obj=fmt)
        pd.testing.assert_frame_equal(reference.boxes, result.boxes, check_exact=False, atol=1e-6, obj=fmt)
    assert len(reference.boxes) == sum(len(b) for _, _, b in DETECT_SPEC)


def _exif_image(
    path: Path, stored: tuple[int, int], orientation: int, box: tuple[int, int, int, int]
) -> None:
    """A black image with a white block at ``box`` on the stored pixels."""
    pixels = np.zeros((stored[1], stored[0], 3), dtype="uint8")
    pixels[box[1] : box[3], box[0] : box[2]] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, exif=exif)


def _white_block(path: Path) -> tuple[int, int, int, int]:
    """Where the white block is in the displayed (EXIF-transposed) image."""
    from stages.dataprep.imaging import load_rgb

    ys, xs = np.nonzero(np.asarray(load_rgb(path))[..., 0] > 128)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_image_boxes_follow_the_displayed_pixels(tmp_path: Path, orientation: int) -> None:
    stored, box = (60, 40), (10, 5, 25, 30)
    source = tmp_path / "source"
    _exif_image(source / "JPEGImages" / "r.png", stored, orientation, box)
    (source / "Annotations").mkdir(parents=True)
    (source / "Annotations" / "r.xml").write_text(voc_xml("r.png", stored, [("cat", *box)]), encoding="utf-8")

    result = stages.ingest.run(detect_params(tmp_path, source))
    row = result.manifest.iloc[0]
    displayed = (40, 60) if orientation in (6, 8) else (60, 40)
    assert (row["width"], row["height"]) == displayed
    got = tuple(result.boxes.iloc[0][["x_min", "y_min", "x_max", "y_max"]])
    assert got == _white_block(source / "JPEGImages" / "r.png")  # the box still frames the block


def test_declared_size_of_the_displayed_image_means_boxes_are_already_displayed(tmp_path: Path) -> None:
    source = tmp_path / "source"
    _exif_image(source / "images" / "r.png", (60, 40), 6, (10, 5, 25, 30))
    displayed_box = _white_block(source / "images" / "r.png")
    write_coco(
        source, spec=[("r.png", (40, 60), [("cat", *displayed_box)])], classes=["cat"], write_images=False
    )
    auto = stages.ingest.run(detect_params(tmp_path / "auto", source))
    assert tuple(auto.boxes.iloc[0][["x_min", "y_min", "x_max", "y_max"]]) == displayed_box
    forced = stages.ingest.run(
        detect_params(tmp_path / "forced", source, ingest={"box_orientation": "stored"})
    )
    assert tuple(forced.boxes.iloc[0][["x_min", "y_min", "x_max", "y_max"]]) != displayed_box


def test_yolo_rows_on_an_exif_rotated_image_follow_ultralytics(tmp_path: Path) -> None:
    """ultralytics reads YOLO labels against the displayed image, so ``auto`` does too."""
    source = tmp_path / "source"
    _exif_image(source / "images" / "r.png", (60, 40), 6, (10, 5, 25, 30))
    displayed_box = _white_block(source / "images" / "r.png")
    (source / "labels").mkdir()
    (source / "labels" / "r.txt").write_text(yolo_row(0, displayed_box, (40, 60)) + "\n", encoding="utf-8")
    (source / "classes.txt").write_text("cat\n", encoding="utf-8")
    result = stages.ingest.run(detect_params(tmp_path, source))
    got = tuple(round(v, 6) for v in result.boxes.iloc[0][["x_min", "y_min", "x_max", "y_max"]])
    assert got == displayed_box


@pytest.mark.parametrize("fmt", ["coco", "yolo", "voc"])
def test_same_bytes_same_boxes_keep_one_conflicting_boxes_drop_both(tmp_path: Path, fmt: str) -> None:
    spec = [
        ("a.png", (64, 48), [("cat", 8, 6, 40, 30)]),
        ("a_copy.png", (64, 48), [("cat", 8, 6, 40, 30)]),
        ("b.png", (64, 48), [("bird", 1, 2, 30, 40)]),
        ("b_copy.png", (64, 48), [("bird", 1, 2, 31, 40)]),
        ("c.png", (64, 48), [("cat", 3, 3, 20, 20)]),
    ]
    source = tmp_path / "source"
    kwargs = {} if fmt == "voc" else {"classes": ["bird", "cat"]}
    WRITERS[fmt](source, spec=spec, **kwargs)
    folder = {"coco": "images", "yolo": "images", "voc": "JPEGImages"}[fmt]
    shutil.copyfile(source / folder / "a.png", source / folder / "a_copy.png")
    shutil.copyfile(source / folder / "b.png", source / folder / "b_copy.png")

    result = stages.ingest.run(detect_params(tmp_path, source))
    images = result.quarantine[result.quarantine["item"] == "image"]
    reasons = dict(zip(images["path"].str.rsplit("/", n=1).str[-1], images["reason"], strict=True))
    assert reasons == {
        "a_copy.png": "duplicate",
        "b.png": "duplicate_conflicting_boxes",
        "b_copy.png": "duplicate_conflicting_boxes",
    }
    kept = {p.rsplit("/", 1)[-1] for p in result.manifest["path"]}
    assert kept == {"a.png", "c.png"}
    dropped_boxes = result.quarantine[result.quarantine["item"] == "box"]
    assert sorted(dropped_boxes["reason"]) == ["image_quarantined"] * 3  # a_copy, b, b_copy: one box each
    assert len(result.boxes) == 2


@pytest.mark.parametrize("fmt", ["coco", "voc"])
def test_annotation_paths_that_leave_the_source_are_never_opened(
    tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = write_image(tmp_path / "elsewhere" / "secret.png", seed=5, size=(64, 48))
    spec = [
        ("ok.png", (64, 48), [("cat", 1, 1, 20, 20)]),
        ("../../elsewhere/secret.png", (64, 48), [("cat", 1, 1, 20, 20)]),
        (str(outside), (64, 48), [("cat", 1, 1, 20, 20)]),
    ]
    source = tmp_path / "source"
    folder = {"coco": "images", "voc": "JPEGImages"}[fmt]
    write_image(source / folder / "ok.png", seed=1, size=(64, 48))
    if fmt == "coco":
        write_coco(source, spec=spec, classes=["cat"], write_images=False)
    else:
        (source / "Annotations").mkdir(parents=True)
        for i, (name, size, boxes) in enumerate(spec):
            (source / "Annotations" / f"{i}.xml").write_text(voc_xml(name, size, boxes), encoding="utf-8")
    opened: list[Path] = []
    real = importing.read_header
    monkeypatch.setattr(
        importing, "read_header", lambda p, *f: opened.append(Path(p).resolve()) or real(p, *f)
    )

    result = stages.ingest.run(detect_params(tmp_path, source))
    assert [p.rsplit("/", 1)[-1] for p in result.manifest["path"]] == ["ok.png"]
    escaped = result.quarantine[result.quarantine["reason"] == "outside_source"]
    assert len(escaped) == 2
    assert escaped["detail"].str.contains("outside the source folder").all()
    assert outside.resolve() not in opened and opened


def test_symlinked_label_file_pointing_outside_is_not_read(tmp_path: Path) -> None:
    source = write_yolo(tmp_path / "source")
    secret = tmp_path / "secret.txt"
    secret.write_text("0 0.5 0.5 0.2 0.2\n", encoding="utf-8")
    target = source / "labels" / "c.txt"  # c.png is a background image: no label of its own
    try:
        os.symlink(secret, target)
    except OSError:
        pytest.skip("symlinks are not available here")
    result = stages.ingest.run(detect_params(tmp_path, source))
    outside = result.quarantine[result.quarantine["reason"] == "outside_source"]
    assert outside["path"].tolist() == ["labels/c.txt"]
    assert "images/c.png" not in set(result.manifest["path"])  # its labels are unknown: not a background
    assert len(result.boxes) == 5


def test_quarantine_files_have_the_contract_columns(tmp_path: Path) -> None:
    source = write_voc(tmp_path / "source")
    (source / "Annotations" / "ghost.xml").write_text(
        voc_xml("ghost.png", (10, 10), [("cat", 1, 1, 5, 5)]), encoding="utf-8"
    )
    params = detect_params(tmp_path, source)
    stages.ingest.run(params)
    stages.validate.run(params)
    layout = Layout(params.paths)
    for file in (layout.ingest_quarantine, layout.validate_quarantine):
        assert "quarantine" in file.name
        frame = read_parquet(file)
        assert list(frame.columns) == QUARANTINE_COLUMNS
    ingest_q = read_parquet(layout.ingest_quarantine)
    assert ingest_q.to_dict("records") == [
        {
            "path": "Annotations/ghost.xml",
            "reason": "missing_file",
            "detail": ingest_q["detail"].iloc[0],
            "stage": "ingest",
            "item": "annotation",
            "annotation": "Annotations/ghost.xml",
        }
    ]
    assert "ghost.png" in ingest_q["detail"].iloc[0]


# --- auto-detection ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "fmt"),
    [
        ("voc", "voc"),
        ("voc_lower", "voc"),
        ("coco_root", "coco"),
        ("coco_standard", "coco"),
        ("coco_roboflow", "coco"),
        ("yolo", "yolo"),
        ("yolo_split", "yolo"),
        ("yolo_roboflow", "yolo"),
    ],
)
def test_auto_detection_finds_every_layout(tmp_path: Path, layout: str, fmt: str, caplog) -> None:
    source = tmp_path / "source"
    if layout == "voc":
        write_voc(source)
    elif layout == "voc_lower":
        write_voc(source, annotations="annotations", images="images")
    elif layout == "coco_root":
        write_coco(source, json_name="_annotations.coco.json", image_dir=".")
    elif layout == "coco_standard":
        write_coco(source, json_name="annotations/instances_val2017.json", image_dir="val2017")
    elif layout == "coco_roboflow":
        for split, part in (("train", DETECT_SPEC[:2]), ("valid", DETECT_SPEC[2:])):
            write_coco(source / split, spec=part, json_name="_annotations.coco.json", image_dir=".")
    elif layout == "yolo":
        write_yolo(source, names_file="classes.txt")
    elif layout == "yolo_split":
        write_yolo(source, split="train")
    else:  # Roboflow: <split>/images + <split>/labels, data.yaml at the root
        for split, part in (("train", DETECT_SPEC[:2]), ("valid", DETECT_SPEC[2:])):
            write_yolo(source / split, spec=part, names_file="classes.txt")
            (source / split / "classes.txt").unlink()
        (source / "data.yaml").write_text("names: [bird, cat]\nnc: 2\n", encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="stages.dataprep.formats"):
        result = stages.ingest.run(detect_params(tmp_path, source))
    assert result.format == fmt
    assert f"as '{fmt}'" in caplog.text  # the choice and its evidence are logged
    assert result.quarantine.empty, result.quarantine.to_dict("records")
    assert result.classes == DETECT_CLASSES
    assert _boxes_by_name(result) == _expected_boxes()
    expected_split = {
        "coco_standard": {"val"},
        "yolo_split": {"train"},
        "coco_roboflow": {"train", "val"},
        "yolo_roboflow": {"train", "val"},
    }.get(layout)
    if expected_split:
        assert set(result.manifest["split"]) == expected_split
    else:
        assert result.manifest["split"].isna().all()


def test_two_annotation_formats_in_one_source_are_refused_by_name(tmp_path: Path) -> None:
    source = tmp_path / "source"
    write_yolo(source)
    write_coco(source, json_name="annotations/instances_train.json", image_dir="images", write_images=False)
    with pytest.raises(DataError) as caught:
        stages.ingest.run(detect_params(tmp_path, source))
    message = str(caught.value)
    assert "coco" in message and "yolo" in message and "set data.format" in message
    result = stages.ingest.run(detect_params(tmp_path, source, data={"format": "coco"}))
    assert result.format == "coco" and len(result.boxes) == 5


def test_empty_annotations_folder_is_not_voc(tmp_path: Path) -> None:
    """``A or B and C``: an Annotations/ folder without XML used to count as VOC."""
    source = make_classify_source(tmp_path / "source", per_class=2)
    (source / "Annotations").mkdir()
    (source / "Annotations" / "README.txt").write_text("notes\n", encoding="utf-8")
    result = stages.ingest.run(fast_params(tmp_path, source))
    assert result.format == "folder"
    assert result.classes == ["cat", "dog"]


@pytest.mark.parametrize("fmt", ["coco", "yolo", "voc"])
def test_detection_annotations_with_task_classify_say_how_to_fix(tmp_path: Path, fmt: str) -> None:
    source = tmp_path / "source"
    WRITERS[fmt](source)
    with pytest.raises(
        DataError, match=rf"data.task is classify but the source holds '{fmt}'.*data.task: detect"
    ):
        stages.ingest.run(fast_params(tmp_path, source))


def test_folder_layout_with_task_detect_says_how_to_fix(tmp_path: Path) -> None:
    source = make_classify_source(tmp_path / "source", per_class=2)
    with pytest.raises(DataError, match=r"no boxes.*data.task: classify"):
        stages.ingest.run(detect_params(tmp_path, source))


def test_cli_rejects_bad_detection_data_with_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    import yaml

    from tests.conftest import REPO_ROOT

    source = tmp_path / "source"
    write_coco(source)
    (source / "annotations.json").write_text('{"images": [1, 2,', encoding="utf-8")
    params = {
        "data": {"source": str(source), "task": "detect"},
        "paths": {"interim": str(tmp_path / "interim"), "cache": str(tmp_path / "cache")},
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "stages.ingest", "--params", str(tmp_path / "p.yaml")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "annotations.json: invalid JSON at line 1" in lines[0]


IMAGE_DIR = {"coco": "images", "yolo": "images", "voc": "JPEGImages"}


@pytest.mark.parametrize("fmt", ["coco", "yolo", "voc"])
@pytest.mark.parametrize(("damage", "reason"), [("empty", "empty_file"), ("text", "not_an_image")])
def test_unreadable_images_are_quarantined_with_their_boxes(
    tmp_path: Path, fmt: str, damage: str, reason: str
) -> None:
    source = tmp_path / "source"
    WRITERS[fmt](source)
    image = source / IMAGE_DIR[fmt] / "a.png"  # two boxes
    image.write_bytes(b"" if damage == "empty" else b"these are not pixels\n")
    result = stages.ingest.run(detect_params(tmp_path, source))
    rows = result.quarantine[["path", "reason", "item"]].values.tolist()
    path = f"{IMAGE_DIR[fmt]}/a.png"
    assert rows == [[path, "image_quarantined", "box"]] * 2 + [[path, reason, "image"]]
    assert len(result.manifest) == 3 and len(result.boxes) == 3


def test_images_over_the_pixel_limit_are_refused_with_their_boxes(tmp_path: Path) -> None:
    source = write_voc(tmp_path / "source")
    params = detect_params(tmp_path, source, validate={"max_pixels": 2000})  # only d é.png (32x48) fits
    stages.ingest.run(params)
    result = stages.validate.run(params)
    images = result.quarantine[result.quarantine["item"] == "image"]
    assert set(images["reason"]) == {"too_many_pixels"} and len(images) == 3
    assert (result.quarantine["item"] == "box").sum() == 3  # a.png's two boxes, b.png's one
    assert result.manifest["path"].tolist() == ["JPEGImages/d é.png"] and len(result.boxes) == 2


def test_symlinked_image_pointing_outside_is_quarantined_unopened(tmp_path: Path) -> None:
    source = write_yolo(tmp_path / "source")
    secret = write_image(tmp_path / "secret.png", seed=3)
    try:
        os.symlink(secret, source / "images" / "link.png")
    except OSError:
        pytest.skip("symlinks are not available here")
    result = stages.ingest.run(detect_params(tmp_path, source))
    assert result.quarantine[["path", "reason"]].values.tolist() == [["images/link.png", "outside_source"]]
    assert "images/link.png" not in set(result.manifest["path"])


@pytest.mark.parametrize("fmt", ["coco", "yolo", "voc"])
def test_two_runs_write_identical_outputs(tmp_path: Path, fmt: str) -> None:
    source = tmp_path / "source"
    WRITERS[fmt](source)
    (source / IMAGE_DIR[fmt] / "b.png").write_bytes(b"")  # some quarantine too
    outputs = []
    for run in ("one", "two"):
        params = detect_params(tmp_path / run, source)
        stages.ingest.run(params)
        layout = Layout(params.paths)
        outputs.append(
            [
                layout.ingest_manifest.read_bytes(),
                layout.ingest_boxes.read_bytes(),
                layout.ingest_quarantine.read_bytes(),
                layout.classes.read_bytes(),
                layout.ingest_summary.read_bytes(),
            ]
        )
    assert outputs[0] == outputs[1]
