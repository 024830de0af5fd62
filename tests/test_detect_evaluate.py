"""Detection metrics: torchmetrics vs ultralytics on a known case, our fast bootstrap vs torchmetrics,
and the metrics contract from a whole pipeline run on the committed demo (``python -m stages.*``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stages.core.contracts import DETECTION_PREDICTION_COLUMNS
from stages.metrics.detection import (
    bootstrap,
    confusion_rows,
    match_all,
    numpy_map,
    per_class_rows,
    precision_recall_at,
    predictions_table,
    torchmetrics_map,
)
from tests.conftest import REPO_ROOT


def _item(boxes, labels, scores=None) -> dict[str, np.ndarray]:
    out = {
        "boxes": np.array(boxes, dtype=np.float64).reshape(-1, 4),
        "labels": np.array(labels, dtype=np.int64),
    }
    if scores is not None:
        out["scores"] = np.array(scores, dtype=np.float64)
    return out


# Image 1: a class-0 box found with IoU 0.72 (a hit at IoU 0.50..0.70: 5 of 10 thresholds).
# Image 2: a class-1 box found exactly. Known answer: mAP50 = 1, mAP50-95 = (0.5 + 1) / 2 = 0.75.
KNOWN_TRUTHS = [_item([[0, 0, 10, 10]], [0]), _item([[20, 20, 40, 40]], [1])]
KNOWN_PREDICTIONS = [_item([[0, 0, 10, 7.2]], [0], [0.9]), _item([[20, 20, 40, 40]], [1], [0.8])]


def _ultralytics_map(truths, predictions) -> dict[str, float]:
    """The same case through ultralytics' validator matching and its ap_per_class."""
    import torch
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.utils.metrics import ap_per_class, box_iou

    validator = DetectionValidator()
    validator.iouv = torch.linspace(0.5, 0.95, 10)
    tps, confs, pred_cls, target_cls = [], [], [], []
    for truth, pred in zip(truths, predictions, strict=True):
        order = np.argsort(-pred["scores"])
        boxes, labels = torch.tensor(pred["boxes"][order]), torch.tensor(pred["labels"][order])
        iou = box_iou(torch.tensor(truth["boxes"]), boxes)
        tps.append(validator.match_predictions(labels, torch.tensor(truth["labels"]), iou).numpy())
        confs.append(pred["scores"][order])
        pred_cls.append(pred["labels"][order])
        target_cls.append(truth["labels"])
    ap = ap_per_class(
        np.concatenate(tps), np.concatenate(confs), np.concatenate(pred_cls), np.concatenate(target_cls)
    )[5]
    return {"map50": float(ap[:, 0].mean()), "map50_95": float(ap.mean())}


def test_torchmetrics_and_ultralytics_agree_on_a_known_case() -> None:
    reference = torchmetrics_map(KNOWN_TRUTHS, KNOWN_PREDICTIONS)
    assert reference == pytest.approx({"map50": 1.0, "map50_95": 0.75}, abs=1e-6)
    assert _ultralytics_map(KNOWN_TRUTHS, KNOWN_PREDICTIONS) == pytest.approx(reference, abs=0.01)
    matches = match_all(KNOWN_TRUTHS, KNOWN_PREDICTIONS, ["a", "b"])
    ours = {k: float(v[0]) for k, v in numpy_map(matches).items()}
    assert ours == pytest.approx(reference, abs=1e-6)  # torchmetrics returns float32
    rows = per_class_rows(matches, conf=0.5)
    assert [(r["class"], r["ap50"], r["ap50_95"], r["support"]) for r in rows] == [
        ("a", 1.0, 0.5, 1),
        ("b", 1.0, 1.0, 1),
    ]


def _random_case(seed: int, n_images: int = 12, n_classes: int = 3):
    rng = np.random.default_rng(seed)
    truths, predictions = [], []
    for i in range(n_images):
        k = int(rng.integers(0, 4)) if i else 0  # image 0 has no truths
        xy = rng.uniform(0, 80, (k, 2))
        gt = np.concatenate([xy, xy + rng.uniform(8, 40, (k, 2))], axis=1)
        gt_labels = rng.integers(0, n_classes - 1, k)  # the last class never has truths
        jitter = gt + rng.normal(0, 4, gt.shape)  # near-hits of every truth, plus random false boxes
        m = int(rng.integers(0, 5))
        xy = rng.uniform(0, 80, (m, 2))
        false = np.concatenate([xy, xy + rng.uniform(8, 40, (m, 2))], axis=1)
        boxes = np.concatenate([jitter, false])
        boxes = np.concatenate(
            [np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])], 1
        )
        labels = np.concatenate([gt_labels, rng.integers(0, n_classes, m)])
        scores = np.round(rng.uniform(0.01, 1, len(boxes)), 2)  # rounded: ties happen
        truths.append(_item(gt, gt_labels))
        predictions.append(_item(boxes, labels, scores))
    return truths, predictions


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_map_equals_torchmetrics(seed: int) -> None:
    truths, predictions = _random_case(seed)
    ours = {k: float(v[0]) for k, v in numpy_map(match_all(truths, predictions, ["a", "b", "c"])).items()}
    assert ours == pytest.approx(
        torchmetrics_map(truths, predictions), abs=1e-6
    )  # torchmetrics returns float32


def test_a_bootstrap_weight_is_the_same_as_repeating_the_image() -> None:
    truths, predictions = _random_case(3, n_images=6)
    matches = match_all(truths, predictions, ["a", "b", "c"])
    weights = np.array([[2, 0, 1, 3, 0, 1]], dtype=float)
    picks = np.repeat(np.arange(6), weights[0].astype(int))
    repeated = torchmetrics_map([truths[i] for i in picks], [predictions[i] for i in picks])
    ours = {k: float(v[0]) for k, v in numpy_map(matches, weights).items()}
    assert ours == pytest.approx(repeated, abs=1e-6)  # torchmetrics returns float32


def test_bootstrap_is_seeded_and_brackets_the_point_estimate() -> None:
    """Speed of this 300-image x 1000-resample case is measured by bench/bench_evaluate.py."""
    truths, predictions = _random_case(4, n_images=300)
    matches = match_all(truths, predictions, ["a", "b", "c"])
    first = bootstrap(matches, 0.25, 1000, 0.95, seed=42)
    assert bootstrap(matches, 0.25, 1000, 0.95, seed=42) == first
    full = numpy_map(matches)
    for name in ("map50", "map50_95"):
        assert first[name][0] <= float(full[name][0]) <= first[name][1]
    at = precision_recall_at(matches, 0.25)
    assert first["precision"][0] <= float(at["precision"][0]) <= first["precision"][1]


def test_confusion_and_box_outcomes_at_the_chosen_confidence() -> None:
    truths = [_item([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 1])]
    predictions = [_item([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60], [0, 0, 10, 9]], [0, 0, 1, 0],
                         [0.9, 0.8, 0.7, 0.1])]  # fmt: skip
    rows = confusion_rows(truths, predictions, ["a", "b"], conf=0.5)
    pairs = sorted((r["actual"], r["predicted"]) for r in rows)
    assert pairs == [("a", "a"), ("b", "a"), ("background", "b")]
    table = predictions_table(
        pd.DataFrame({"image_id": ["i"], "path": ["p.png"]}), truths, predictions, ["a", "b"], 0.5
    )
    kinds = sorted(zip(table["kind"], table["class_name"], table["outcome"], strict=True))
    assert kinds == [("prediction", "a", "fp"), ("prediction", "a", "tp"), ("prediction", "b", "fp"),
                     ("truth", "a", "matched"), ("truth", "b", "missed")]  # fmt: skip
    assert table.loc[table["kind"] == "truth", "score"].isna().all()


# --- the whole pipeline on the committed demo, from the command line ----------------------------


@pytest.mark.slow
def test_detection_pipeline_on_the_demo_from_the_command_line(tmp_path: Path) -> None:
    for name in ("stages",):
        shutil.copytree(REPO_ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO_ROOT / "data" / "demo" / "detect", tmp_path / "data" / "demo" / "detect")
    shutil.copy(REPO_ROOT / "data" / "exclude.txt", tmp_path / "data" / "exclude.txt")  # split.exclude
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["data"] = {"source": "data/demo/detect", "format": "voc", "task": "detect"}
    params["validate"]["workers"] = 1
    params["split"]["near_duplicates"]["workers"] = 1
    params["augment"]["preview"] = {"images": 2, "views": 1}
    params["train"]["device"] = "cpu"
    params["train"]["detector"] = {
        "epochs": 1, "image_size": 64, "batch": 8, "conf": 0.3, "ultralytics": {"plots": False}
    }  # fmt: skip
    params["evaluate"]["bootstrap"] = 200
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    for stage in ("ingest", "validate", "split", "augment", "train", "evaluate", "report"):
        done = subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, f"{stage}:\n{done.stderr[-3000:]}"
    reports = tmp_path / "reports"
    metrics = json.loads((reports / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["task"] == "detect" and metrics["split"] == "test" and metrics["images"] > 0
    for name in ("map50", "map50_95", "precision", "recall"):
        assert metrics[f"{name}_ci_low"] <= metrics[name] <= metrics[f"{name}_ci_high"], name
    assert len(metrics["split_hash"]) == 16
    assert metrics["confidence_threshold"] == 0.3  # train.detector.conf, through the model's metadata
    page = (reports / "report.html").read_text(encoding="utf-8")
    for heading in ("Headline", "Data", "Model", "Per class", "Errors", "Curves", "Training"):
        assert f">{heading}" in page, heading
    assert "confidence &gt;= 0.30" in page  # the mistakes grid uses evaluate's threshold
    per_class = json.loads((reports / "plots" / "per_class.json").read_text(encoding="utf-8"))
    assert [r["class"] for r in per_class] == ["raccoon"]
    assert set(per_class[0]) == {"class", "ap50", "ap50_95", "precision", "recall", "support"}
    assert {"class", "recall", "precision"} == set(
        json.loads((reports / "plots" / "pr_curve.json").read_text())[0]
    )
    assert {"class", "confidence", "f1"} == set(
        json.loads((reports / "plots" / "f1_confidence.json").read_text())[0]
    )
    confusion = json.loads((reports / "plots" / "confusion.json").read_text(encoding="utf-8"))
    assert {"raccoon", "background"} >= {r["actual"] for r in confusion} | {r["predicted"] for r in confusion}
    boxes = pd.read_parquet(reports / "predictions.parquet")
    assert list(boxes.columns) == DETECTION_PREDICTION_COLUMNS
    assert (boxes["kind"] == "truth").sum() == per_class[0]["support"]
    assert set(boxes["outcome"]) <= {"tp", "fp", "matched", "missed"}
    assert (tmp_path / "models" / "detector.pt").is_file()
    assert (reports / "train" / "plots" / "metrics" / "val" / "map50.tsv").is_file()
    assert not (tmp_path / "runs").exists()
