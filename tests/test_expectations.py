"""The validation gate: each great-expectations check catches its own problem; params decide block or warn."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

import stages.ingest
import stages.validate
from stages.core.contracts import boxes_frame, manifest_frame
from stages.core.errors import DataError, ParamsError
from stages.core.layout import Layout
from stages.core.params import ValidateSection, parse_params
from stages.dataprep import checks as expectations
from tests.conftest import (
    detect_params,
    fast_params,
    guard_sources,
    make_classify_source,
    voc_xml,
    write_voc,
)


@pytest.fixture(autouse=True)
def _source_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    guard_sources(monkeypatch)


def _manifest(labels: list[str | None]) -> pd.DataFrame:
    return manifest_frame(
        [
            {
                "image_id": f"id{i:02d}",
                "path": f"img_{i:02d}.png",
                "sha256": f"{i:064d}",
                "width": 64,
                "height": 48,
                "label": label,
                "group": None,
                "split": "train" if i % 2 else None,
                "source": "test",
            }
            for i, label in enumerate(labels)
        ]
    )


def _boxes(rows: list[tuple]) -> pd.DataFrame:
    keys = ["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
    return boxes_frame(
        [dict(zip(keys, r, strict=True)) | {"difficult": False, "truncated": False} for r in rows]
    )


CLASSIFY = (_manifest(["cat"] * 3 + ["dog"] * 3), _boxes([]), ["cat", "dog"], "classify")
DETECT = (
    _manifest([None] * 3),
    _boxes([("id00", "cat", 1, 1, 30, 30), ("id01", "dog", 0, 0, 64, 48), ("id02", "cat", 5, 6, 7, 8)]),
    ["cat", "dog"],
    "detect",
)
PARAMS = ValidateSection(min_images_per_class=1, max_class_ratio=3)


def _set(frame: pd.DataFrame, row: int, column: str, value) -> pd.DataFrame:
    frame = frame.copy()
    frame.loc[row, column] = value
    return frame


# check -> (base data, how to break exactly that property)
BREAKS: dict[str, tuple[tuple, Callable[[pd.DataFrame, pd.DataFrame], tuple]]] = {
    "image_ids_unique": (CLASSIFY, lambda m, b: (_set(m, 1, "image_id", "id00"), b)),
    "paths_unique": (CLASSIFY, lambda m, b: (_set(m, 2, "path", "img_00.png"), b)),
    "sizes_positive": (CLASSIFY, lambda m, b: (_set(m, 0, "height", 0), b)),
    "labels_in_classes": (CLASSIFY, lambda m, b: (_set(m, 4, "label", "cow"), b)),
    "splits_known": (CLASSIFY, lambda m, b: (_set(m, 0, "split", "dev"), b)),
    "enough_classes": (CLASSIFY, lambda m, b: (m.assign(label="cat"), b)),
    "boxes_reference_images": (DETECT, lambda m, b: (m, _set(b, 0, "image_id", "gone"))),
    "box_classes_in_classes": (DETECT, lambda m, b: (m, _set(b, 1, "class_name", "cow"))),
    "boxes_have_area": (DETECT, lambda m, b: (m, _set(b, 2, "x_max", 5.0))),
    "boxes_inside_images": (DETECT, lambda m, b: (m, _set(b, 1, "y_max", 48.5))),
    "min_images_per_class": (CLASSIFY, lambda m, b: (m.iloc[:3], b)),  # no dog left
    "class_balance": (CLASSIFY, lambda m, b: (pd.concat([m] + [m.iloc[:3]] * 3, ignore_index=True), b)),
}


def _results(manifest, boxes, classes, task, params=PARAMS) -> dict[str, expectations.CheckResult]:
    return {c.name: c for c in expectations.run_suite(manifest, boxes, classes, params, task, docs_dir=None)}


def test_every_check_is_named_in_params_and_covered_here() -> None:
    assert set(BREAKS) == set(expectations.CHECKS)
    defaults = ValidateSection()
    assert set(defaults.blocking) | set(defaults.warn) == set(expectations.CHECKS)


@pytest.mark.parametrize("task", ["classify", "detect"])
def test_clean_data_passes_every_check(task: str) -> None:
    data = CLASSIFY if task == "classify" else DETECT
    results = _results(*data)
    assert all(r.success for r in results.values()), {
        n: r.examples for n, r in results.items() if not r.success
    }
    box_checks = {n for n, c in expectations.CHECKS.items() if c.detection_only}
    assert (box_checks <= set(results)) == (task == "detect")


@pytest.mark.parametrize("name", sorted(BREAKS))
def test_each_check_catches_its_own_problem(name: str) -> None:
    (manifest, boxes, classes, task), breaker = BREAKS[name]
    broken_manifest, broken_boxes = breaker(manifest, boxes)
    result = _results(broken_manifest, broken_boxes, classes, task)[name]
    assert not result.success
    assert result.unexpected >= 1 and result.examples


def test_examples_name_the_offending_rows() -> None:
    manifest, boxes, classes, task = CLASSIFY
    results = _results(_set(manifest, 4, "label", "cow"), boxes, classes, task)
    assert results["labels_in_classes"].examples == ["img_04.png"]
    manifest, boxes, classes, task = DETECT
    results = _results(manifest, _set(boxes, 1, "y_max", 48.5), classes, task)
    assert results["boxes_inside_images"].examples == ["img_01.png"]


def test_class_balance_ignores_empty_classes_which_min_images_reports() -> None:
    manifest, boxes, _, task = CLASSIFY
    results = _results(manifest, boxes, ["bird", "cat", "dog"], task)  # 'bird' has no images
    assert results["class_balance"].success
    assert not results["min_images_per_class"].success and results["min_images_per_class"].examples == [
        "bird"
    ]


def test_checks_in_neither_list_are_off() -> None:
    params = ValidateSection(blocking=["paths_unique"], warn=["class_balance"])
    results = _results(*CLASSIFY, params=params)
    assert set(results) == {"paths_unique", "class_balance"}
    assert results["paths_unique"].severity == "blocking" and results["class_balance"].severity == "warn"


def test_a_check_in_both_lists_is_a_params_error() -> None:
    raw = {"data": {"source": "x"}, "validate": {"blocking": ["paths_unique"], "warn": ["paths_unique"]}}
    with pytest.raises(
        ParamsError, match=r"\['paths_unique'\] are in both validate.blocking and validate.warn"
    ):
        parse_params(raw)


def test_naming_a_check_in_warn_takes_it_out_of_the_blocking_default() -> None:
    params = parse_params({"data": {"source": "x"}, "validate": {"warn": ["labels_in_classes"]}}).validate_
    assert "labels_in_classes" not in params.blocking and params.warn == ("labels_in_classes",)


def test_a_failed_blocking_check_stops_validate_but_leaves_the_report(tmp_path: Path) -> None:
    colours = {"cat": (90, 0, 0), "dog": (0, 0, 90), "owl": (0, 90, 0)}
    source = make_classify_source(tmp_path / "source", per_class=3, classes=colours)
    params = fast_params(tmp_path, source)
    stages.ingest.run(params)
    stages.validate.run(params)
    layout = Layout(params.paths)
    assert layout.manifest.is_file()
    layout.classes.write_text(json.dumps(["cat", "dog"]), encoding="utf-8")  # a stale class list

    with pytest.raises(DataError) as caught:
        stages.validate.run(params)
    message = str(caught.value)
    assert message.startswith("validation failed on blocking checks labels_in_classes (see ")
    assert "move a check to validate.warn" in message
    assert not layout.manifest.exists()  # downstream cannot read data that failed the gate
    report = json.loads(layout.validation_report.read_text(encoding="utf-8"))
    assert report["checks"]["labels_in_classes"]["success"] is False
    assert report["checks"]["labels_in_classes"]["unexpected"] == 3
    assert report["checks"]["labels_in_classes"]["examples"] == [
        "owl/img_000.png",
        "owl/img_001.png",
        "owl/img_002.png",
    ]
    assert (layout.validation_docs / "index.html").is_file()

    relaxed = fast_params(tmp_path, source, validate={"warn": ["labels_in_classes", "min_images_per_class"]})
    result = stages.validate.run(relaxed)
    assert any(w.startswith("check labels_in_classes failed on 3 rows") for w in result.report["warnings"])
    assert layout.manifest.is_file()


def test_report_warns_about_imbalance_and_renders_data_docs(tmp_path: Path) -> None:
    source = make_classify_source(tmp_path / "source", per_class=2)
    make_classify_source(source, per_class=8, classes={"cat": (130, 0, 0)})
    params = fast_params(tmp_path, source, validate={"max_class_ratio": 3, "min_images_per_class": 1})
    stages.ingest.run(params)
    report = stages.validate.run(params).report
    assert report["warnings"] == [
        "classes are imbalanced: 'cat' has 8 images, 'dog' 2 (ratio 4.0 > validate.max_class_ratio = 3); "
        "collect more of the small classes or set train.imbalance."
    ]
    assert report["checks"]["class_balance"]["severity"] == "warn"
    assert report["data_docs"] == "validation_docs/index.html"
    docs = Layout(params.paths).validation_docs
    assert {p.name for p in (docs / "expectations").iterdir()} == {"manifest.html", "classes.html"}
    pages = list((docs / "validations").rglob("*.html"))
    assert len(pages) == 2
    assert "ratio_to_largest" in "".join(p.read_text(encoding="utf-8") for p in pages)


def test_data_docs_are_byte_identical_on_a_rerun_with_the_same_data(tmp_path: Path) -> None:
    """GX stamps pages with the clock and uuid4: without the rewrite dvc.lock changes on every run."""
    source = make_classify_source(tmp_path / "source", per_class=3)
    params = fast_params(tmp_path, source)
    stages.ingest.run(params)
    docs = Layout(params.paths).validation_docs

    def pages() -> dict[str, bytes]:
        stages.validate.run(params)
        return {p.relative_to(docs).as_posix(): p.read_bytes() for p in sorted(docs.rglob("*.html"))}

    first, second = pages(), pages()
    assert len(first) == 5 and first == second
    text = b"".join(first.values())
    assert b"logo-long.png?d=" not in text  # the clock in GX's logo URL (a request per page view)


def test_detection_with_every_box_dropped_fails_the_gate(tmp_path: Path) -> None:
    source = write_voc(tmp_path / "source")
    for name in ("a", "b", "d é"):
        (source / "Annotations" / f"{name}.xml").write_text(
            voc_xml(f"{name}.png", (64, 48), [("cat", 500, 500, 600, 600)]), encoding="utf-8"
        )
    params = detect_params(tmp_path, source)
    ingested = stages.ingest.run(params)
    assert ingested.boxes.empty and set(ingested.quarantine["reason"]) == {"box_outside_image"}
    with pytest.raises(DataError, match="blocking checks enough_classes"):
        stages.validate.run(params)


def test_relative_output_paths_work_as_in_dvc_repro(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """dvc.yaml runs the stages with params.yaml's relative paths; GX wants absolute ones."""
    make_classify_source(tmp_path / "raw", per_class=5)
    monkeypatch.chdir(tmp_path)
    paths = {k: f"out/{k}" for k in ("interim", "processed", "models", "reports", "cache")}
    params = parse_params({"data": {"source": "raw"}, "paths": paths, "validate": {"workers": 1}})
    stages.ingest.run(params)
    result = stages.validate.run(params)
    assert len(result.manifest) == 10
    assert (tmp_path / "out" / "reports" / "validation_docs" / "index.html").is_file()
