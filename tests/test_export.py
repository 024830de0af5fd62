"""Export, parity, batch prediction and the HTTP service on a tiny classifier (and the preprocessing
the ONNX path re-implements without torch, checked against timm's transform)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stages.core.errors import DataError
from stages.core.layout import Layout
from stages.core.params import Params
from tests.conftest import REPO_ROOT, fast_params, make_classify_source, write_image


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Params, dict]:
    """ingest -> ... -> evaluate -> export once for the module (tiny images, 3 epochs)."""
    from stages import augment, evaluate, export, ingest, split, train, validate

    root = tmp_path_factory.mktemp("export")
    source = make_classify_source(root / "source")
    params = fast_params(root, source, paths={"export": str(root / "out" / "export")}, train={"epochs": 3})
    for stage in (ingest, validate, split, augment, train, evaluate):
        stage.run(params)
    return params, export.run(params).report


def _onnx(params: Params) -> Path:
    return params.paths.export / "model.onnx"


def _test_files(params: Params) -> tuple[list[Path], pd.DataFrame]:
    predictions = pd.read_parquet(Layout(params.paths).predictions).sort_values("image_id")
    return [params.data.source / p for p in predictions["path"]], predictions


# --- preprocessing without torch -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "crop_pct", "interpolation"),
    [(64, 0.875, "bilinear"), (60, 0.89, "bicubic"), (32, 1.0, "bilinear")],
)
def test_numpy_preprocessing_equals_timms_eval_transform(
    size: int, crop_pct: float, interpolation: str
) -> None:
    from stages.models.backbones import Preprocessing
    from stages.serving.metadata import ClassifyPreprocessing
    from stages.serving.preprocess import classify_array

    spec = Preprocessing(size, interpolation, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), crop_pct)
    ours = ClassifyPreprocessing(size, interpolation, spec.mean, spec.std, crop_pct)
    rng = np.random.default_rng(0)
    for width, height in [(97, 53), (40, 120), (64, 64), (31, 29)]:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        expected = spec.transform()(image).numpy()
        np.testing.assert_allclose(classify_array(image, ours), expected, rtol=0, atol=1e-6)


def test_numpy_nms_keeps_what_torchvision_keeps() -> None:
    import torch
    import torchvision

    from stages.serving.preprocess import nms

    rng = np.random.default_rng(1)
    n = 300
    centres = rng.uniform(20, 80, (n, 2)).astype(np.float32)
    sizes = rng.uniform(5, 30, (n, 2)).astype(np.float32)
    scores = rng.uniform(0, 1, (n, 2)).astype(np.float32)
    output = np.concatenate([centres, sizes, scores], axis=1).astype(np.float32).T  # (4 + 2, n)
    boxes, kept_scores, labels = nms(output, conf=0.2, iou=0.5, max_det=1000)
    best, label = scores.max(1), scores.argmax(1)
    keep = best > 0.2
    xyxy = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)[keep].astype(np.float32)
    index = torchvision.ops.batched_nms(
        torch.from_numpy(xyxy), torch.from_numpy(best[keep]), torch.from_numpy(label[keep]), 0.5
    ).numpy()
    np.testing.assert_allclose(np.sort(kept_scores), np.sort(best[keep][index]))
    assert len(boxes) == len(index) and set(labels) <= {0, 1}


# --- export and parity ---------------------------------------------------------------------------


def test_export_writes_onnx_with_its_preprocessing_and_passes_parity(exported) -> None:
    import onnx

    from stages.models.checkpoints import load_checkpoint
    from stages.serving.metadata import METADATA_KEY, ModelInfo

    params, report = exported
    assert report["passed"] and report["failures"] == []
    assert report["images"] == len(_test_files(params)[0]) > 0
    assert report["max_abs_diff"] < params.export.parity.max_abs_diff and report["top1_agreement"] == 1.0
    written = json.loads((params.paths.reports / "export.json").read_text())
    assert written["max_abs_diff"] == report["max_abs_diff"]
    model = onnx.load(str(_onnx(params)))
    assert model.opset_import[0].version == params.export.opset
    info = ModelInfo.from_json({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    _, meta = load_checkpoint(Layout(params.paths).classifier)
    assert info.classes == ["cat", "dog"] and info.preprocessing == meta["preprocessing"]
    assert info.provenance["code_digest"] == meta["code_digest"] and "accuracy" in info.provenance["metrics"]
    assert info.max_pixels == params.validate_.max_pixels
    assert report["int8"]["accuracy_change"] == pytest.approx(
        report["int8"]["accuracy"] - report["accuracy_onnx"]
    )
    assert (params.paths.export / "model.int8.onnx").is_file()


def test_broken_parity_fails_the_stage_after_writing_the_report(
    exported, tmp_path: Path, monkeypatch
) -> None:
    from stages import export
    from stages.serving import classifier_export, exporting

    params, _ = exported
    reports = tmp_path / "reports"
    reports.mkdir()
    shutil.copy(params.paths.reports / "metrics.json", reports / "metrics.json")
    paths = params.paths.model_copy(update={"export": tmp_path / "export", "reports": reports})
    broken = params.model_copy(
        update={"paths": paths, "export": params.export.model_copy(update={"int8": False})}
    )
    real = exporting.classify_parity

    def exported_again(checkpoint: Path, target: Path, opset: int) -> dict:  # the module's file: no re-export
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(_onnx(params), target)
        from stages.models.checkpoints import load_checkpoint

        return load_checkpoint(checkpoint)[1]

    def drifted(*args, **kwargs):
        return real(*args, **kwargs) | {"max_abs_diff": 0.2, "top1_agreement": 0.5}

    monkeypatch.setattr(classifier_export, "export_classifier", exported_again)
    monkeypatch.setattr(exporting, "classify_parity", drifted)
    with pytest.raises(DataError, match=r"breaks export\.parity .*max abs probability difference 2\.00e-01"):
        export.run(broken)
    written = json.loads((reports / "export.json").read_text())
    assert written["passed"] is False and len(written["failures"]) == 2


# --- predict ---------------------------------------------------------------------------------------


def test_predict_equals_evaluate_on_the_test_split(exported) -> None:
    from pipelines.predict import predict_files
    from stages.serving.predictor import load_predictor

    params, _ = exported
    files, evaluated = _test_files(params)
    expected = evaluated[["score_cat", "score_dog"]].to_numpy()
    checkpoint = load_predictor(Layout(params.paths).classifier)
    records = list(predict_files(checkpoint, files, batch=2))  # other batches than evaluate's
    got = np.array([[r["probabilities"]["cat"], r["probabilities"]["dog"]] for r in records])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    onnx = np.array(
        [
            [r["probabilities"]["cat"], r["probabilities"]["dog"]]
            for r in predict_files(load_predictor(_onnx(params)), files)
        ]
    )
    np.testing.assert_allclose(onnx, expected, rtol=0, atol=params.export.parity.max_abs_diff)
    assert [r["class"] for r in records] == list(evaluated["prediction"])


def test_predict_a_folder_with_a_corrupt_file(exported, tmp_path: Path, capsys) -> None:
    from pipelines.predict import main

    params, _ = exported
    folder = tmp_path / "new"
    for i, file in enumerate(_test_files(params)[0][:3]):
        shutil.copy(file, folder / f"{i}.png" if folder.exists() else (folder.mkdir() or folder / f"{i}.png"))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("ignored: not an image extension")
    out = tmp_path / "predictions.csv"
    assert (
        main([str(_onnx(params)), str(folder), "--out", str(out), "--save-images", str(tmp_path / "drawn")])
        == 0
    )
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [Path(r["file"]).name for r in rows] == ["0.png", "1.png", "2.png", "broken.png"]
    assert "broken.png" in rows[3]["error"] and rows[3]["class"] == ""
    assert all(r["error"] == "" and r["class"] in {"cat", "dog"} for r in rows[:3])
    assert len(json.loads(rows[0]["top_k"])) == 2
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["0.png", "1.png", "2.png"]
    assert "predicted 3 of 4 images" in capsys.readouterr().err

    jsonl = tmp_path / "p.jsonl"
    assert main([str(_onnx(params)), str(folder / "*.png"), "--out", str(jsonl)]) == 0
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(lines) == 4 and lines[3]["error"] and lines[0]["probabilities"].keys() == {"cat", "dog"}


def test_the_onnx_path_never_imports_torch(exported, tmp_path: Path) -> None:
    params, _ = exported
    image = _test_files(params)[0][0]
    script = (
        "import sys\nfrom pipelines.predict import main\n"
        f"out = {str(tmp_path / 'o.jsonl')!r}\n"
        f"assert main([{str(_onnx(params))!r}, {str(image)!r}, '--out', out]) == 0\n"
        "from stages.serving.app import create_app\n"
        "heavy = sorted(m for m in ('torch', 'timm', 'torchvision', 'ultralytics') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "o.jsonl").read_text())["class"] in {"cat", "dog"}


# --- serve -------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_good_bad_and_oversized_requests(exported, tmp_path: Path) -> None:
    import httpx

    from stages.serving.metadata import write_metadata
    from stages.serving.onnx_predictor import OnnxPredictor

    params, _ = exported
    model = tmp_path / "model.onnx"
    shutil.copy(_onnx(params), model)
    info = OnnxPredictor(model).info
    write_metadata(model, replace(info, max_pixels=100 * 100))  # the pixel limit travels in the model
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines.serve",
            str(model),
            "--port",
            str(port),
            "--max-request-bytes",
            "50000",
            "--log-level",
            "warning",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            for _ in range(300):
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            else:
                pytest.fail("the service did not start")
            good = write_image(tmp_path / "good.png", seed=1, size=(48, 40), tint=(130, 0, 0)).read_bytes()
            answer = client.post("/predict", files={"file": ("good.png", good, "image/png")})
            assert answer.status_code == 200 and answer.json()["class"] in {"cat", "dog"}
            raw = client.post("/predict", content=good, headers={"content-type": "application/octet-stream"})
            assert raw.status_code == 200 and raw.json()["probabilities"] == answer.json()["probabilities"]

            corrupt = client.post(
                "/predict", files={"file": ("bad.png", b"\x89PNG\r\n\x1a\nnot", "image/png")}
            )
            assert corrupt.status_code == 422 and "'bad.png'" in corrupt.json()["detail"]
            empty = client.post("/predict", content=b"")
            assert empty.status_code == 422
            no_file = client.post("/predict", data={"name": "x"}, files={"other": ("", b"", "text/plain")})
            assert 400 <= no_file.status_code < 500

            big = client.post("/predict", content=os.urandom(60000), headers={"content-type": "image/png"})
            assert big.status_code == 413 and "50000" in big.json()["detail"]
            streamed = client.post(
                "/predict", content=iter([b"x" * 30000, b"y" * 30000])
            )  # no Content-Length
            assert streamed.status_code == 413
            wide = tmp_path / "wide.png"
            Image.new("RGB", (200, 200)).save(wide)
            pixels = client.post("/predict", files={"file": ("wide.png", wide.read_bytes(), "image/png")})
            assert pixels.status_code == 413 and "10000" in pixels.json()["detail"]

            card = client.get("/model").json()
            assert card["classes"] == ["cat", "dog"] and card["task"] == "classify"
            assert card["code_digest"] and card["train_params_digest"]
            assert "accuracy_ci_low" in card["metrics"] and card["limits"]["max_request_bytes"] == 50000
            assert client.get("/health").json() == {"status": "ok"}
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert "Traceback" not in output, output[-3000:]


# --- the model card ---------------------------------------------------------------------------------


def test_model_card_reports_data_parity_and_escapes_class_names(exported, tmp_path: Path) -> None:
    from stages.reporting.model_card import error_rate_bound, render_model_card

    params, report = exported
    reports = tmp_path / "reports"
    shutil.copytree(params.paths.reports, reports)
    rows = json.loads((reports / "plots" / "per_class.json").read_text())
    rows[0]["class"] = "![x](http://e.test/a.png)|<b>cat</b>"
    (reports / "plots" / "per_class.json").write_text(json.dumps(rows))
    local = params.model_copy(update={"paths": params.paths.model_copy(update={"reports": reports})})
    card = render_model_card(local, Layout(local.paths))
    assert "![x](" not in card and "<b>" not in card and "\\!\\[x\\]" in card
    assert f"has **{report['images']} images**" in card and "| cat |" in card  # counts per class and split
    assert f"{report['max_abs_diff']:.2e}" in card and "**passed**" in card
    assert "efficientnet\\_lite0" in card and "licence" in card
    (reports / "export.json").unlink()
    assert "The export stage has not run" in render_model_card(local, Layout(local.paths))
    assert error_rate_bound(0, 15) == pytest.approx(1 - 0.05 ** (1 / 15))  # the rule of three's exact form


def test_the_model_card_lists_upstream_hashes_not_the_reports_own(tmp_path: Path) -> None:
    """The report's own outputs in dvc.lock are the previous run's: listing them never converges."""
    from stages.reporting.model_card import lock_lines

    lock = tmp_path / "dvc.lock"
    lock.write_text(
        "schema: '2.0'\nstages:\n"
        "  train:\n    outs:\n    - path: models\n      md5: aaa.dir\n"
        "  report:\n    outs:\n    - path: reports/model_card.md\n      md5: bbb\n",
        encoding="utf-8",
    )
    text = "\n".join(lock_lines(lock))
    assert "aaa" in text and "model" in text
    assert "bbb" not in text and "model\\_card" not in text


def test_exported_models_carry_no_path_of_the_machine_that_built_them(tmp_path: Path) -> None:
    """The dynamo exporter writes Python stack traces (absolute paths) into every node."""
    import onnx
    from onnx import helper

    from stages.serving.metadata import strip_trace_metadata

    node = helper.make_node("Relu", ["x"], ["y"])
    for key, value in (("pkg.torch.onnx.stack_trace", 'File "/home/me/project/x.py"'), ("namespace", "m")):
        entry = node.metadata_props.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph)
    strip_trace_metadata(model)
    assert [p.key for p in model.graph.node[0].metadata_props] == ["namespace"]
    assert b"/home/me" not in model.SerializeToString()
