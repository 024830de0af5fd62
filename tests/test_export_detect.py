"""Export of a tiny YOLO detector with ultralytics' own ONNX exporter, offline, and its parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stages.core.layout import Layout
from stages.core.params import Params, parse_params
from tests.conftest import detect_params, write_voc
from tests.test_yolo_train import network_blocked  # noqa: F401  (fixture: every non-local connection refused)

# Ten 64 px images, one box each (two classes), as in tests/test_yolo_train.py.
SPEC = [(f"img{i}.png", (64, 64), [("bird" if i % 2 else "cat", 8 + i, 8, 40 + i, 44)]) for i in range(10)]
TINY = {"epochs": 2, "image_size": 32, "batch": 4, "warmup_epochs": 0, "ultralytics": {"plots": False}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Params:
    from stages import augment, evaluate, ingest, split, train, validate

    root = tmp_path_factory.mktemp("export_detect")
    source = write_voc(root / "source", SPEC)
    params = detect_params(
        root,
        source,
        split={"fractions": {"train": 0.6, "val": 0.2, "test": 0.2}, "near_duplicates": {"enabled": False}},
        train={"device": "cpu", "num_workers": 0, "detector": TINY},
        evaluate={"bootstrap": 0},
        export={"calibration_images": 4},
    )
    raw = params.model_dump(mode="json", by_alias=True)
    params = parse_params({**raw, "paths": {**raw["paths"], "export": str(root / "out" / "export")}})
    for stage in (ingest, validate, split, augment, train, evaluate):
        stage.run(params)
    return params


def test_detector_exports_offline_and_matches_pytorch(trained: Params, network_blocked: list[str]) -> None:  # noqa: F811
    from stages import export
    from stages.dataprep.imaging import load_rgb
    from stages.serving.predictor import load_predictor

    params = trained
    before = sorted(p.name for p in params.paths.models.iterdir())
    report = export.run(params).report
    assert network_blocked == []  # ultralytics' exporter neither pip-installed nor downloaded anything
    assert sorted(p.name for p in params.paths.models.iterdir()) == before  # models/ is train's output
    assert report["passed"] and report["task"] == "detect"
    assert abs(report["map50_95_onnx"] - report["map50_95_pytorch"]) <= params.export.parity.max_map_drop
    metrics = json.loads(Layout(params.paths).metrics.read_text())
    assert report["map50_95_pytorch"] == metrics["map50_95"]

    onnx = load_predictor(params.paths.export / "model.onnx")
    assert onnx.info.classes == ["bird", "cat"] and onnx.info.preprocessing == {"image_size": 32}
    assert onnx.info.conf == params.train.detector.conf
    torch_model = load_predictor(Layout(params.paths).detector)
    images = [load_rgb(params.data.source / "JPEGImages" / name) for name, _, _ in SPEC[:4]]
    for ours, theirs in zip(
        onnx.boxes(images, conf=0.001), torch_model.boxes(images, conf=0.001), strict=True
    ):
        top = min(5, len(theirs["scores"]))
        assert top > 0 and len(ours["scores"]) >= top
        np.testing.assert_allclose(ours["scores"][:top], theirs["scores"][:top], atol=1e-3)
        np.testing.assert_allclose(ours["boxes"][:top], theirs["boxes"][:top], atol=0.5)

    import onnx as onnx_lib

    props = {p.key: p.value for p in onnx_lib.load(str(params.paths.export / "model.onnx")).metadata_props}
    assert "date" not in props and "trained on" not in props["description"]  # no clock, no local path
    assert str(params.paths.processed) not in " ".join(props.values())

    # INT8 keeps the scores: one 8-bit scale over pixels and scores together would zero them all
    int8 = load_predictor(params.paths.export / "model.int8.onnx")
    for fp32, q8 in zip(onnx.boxes(images, conf=0.001), int8.boxes(images, conf=0.001), strict=True):
        assert len(q8["scores"]) and abs(q8["scores"].max() - fp32["scores"].max()) < 0.1
    assert "map50_95_change" in report["int8"]


def test_predict_writes_boxes_with_the_models_threshold(trained: Params, tmp_path: Path) -> None:
    from pipelines.predict import main

    model = trained.paths.export / "model.onnx"
    if not model.is_file():
        from stages import export

        export.run(trained)
    out = tmp_path / "boxes.jsonl"
    assert (
        main(
            [
                str(model),
                str(trained.data.source / "JPEGImages"),
                "--out",
                str(out),
                "--conf",
                "0.001",
                "--save-images",
                str(tmp_path / "drawn"),
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(SPEC) and all(r["error"] is None for r in rows)
    assert all(b["score"] >= 0.001 and b["class"] in {"bird", "cat"} for r in rows for b in r["boxes"])
    assert any(r["count"] for r in rows) and len(list((tmp_path / "drawn").iterdir())) == len(SPEC)
