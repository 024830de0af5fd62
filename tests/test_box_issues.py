"""Box label issues: planted class swaps and deleted boxes rank first with the right issue type, a
clean set yields no suspects, classification writes the outputs empty, the outputs land where
dvc.yaml declares them, and (slow) the stage scores a trained detector's val predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stages import box_issues
from stages.core.contracts import write_json
from stages.core.layout import Layout
from stages.core.params import parse_params
from stages.engine import box_issues as engine
from stages.reporting.inputs import ReportInputs
from stages.reporting.sections import label_issues as section
from tests.conftest import REPO_ROOT, DetectImage, detect_params, fast_params, make_classify_source, write_voc

CLASSES = ["bird", "cat"]


def scene(n_images: int = 30, seed: int = 0) -> tuple[pd.DataFrame, list[dict], list[dict]]:
    """Images of 1-3 separated 40 px boxes and a detector that finds each one, confidently."""
    rng = np.random.default_rng(seed)
    truths, predictions = [], []
    for _ in range(n_images):
        n = int(rng.integers(1, 4))
        boxes = np.array([[k * 60 + 5, 10, k * 60 + 45, 50] for k in range(n)], dtype=np.float64)
        labels = rng.integers(0, 2, n)
        truths.append({"boxes": boxes, "labels": labels})
        predictions.append(
            {
                "boxes": boxes + rng.normal(0, 1, boxes.shape),
                "scores": rng.uniform(0.8, 0.95, n),
                "labels": labels.copy(),
            }
        )
    images = pd.DataFrame({"image_id": [f"{i:03d}" for i in range(n_images)]})
    images["path"] = "img/" + images["image_id"] + ".png"
    return images, truths, predictions


def test_a_planted_swap_and_a_deleted_box_rank_first_with_their_issue_type() -> None:
    images, truths, predictions = scene()
    truths[3]["labels"][0] = 1 - truths[3]["labels"][0]  # swapped class
    deleted = truths[7]["boxes"][0].copy()
    truths[7] = {"boxes": truths[7]["boxes"][1:], "labels": truths[7]["labels"][1:]}  # a deleted box
    scores = engine.score_boxes(images, truths, predictions, CLASSES)
    top = scores.head(2).set_index("image_id")
    assert set(top.index) == {"003", "007"}
    assert top.loc["003", "issue"] == engine.SWAP
    assert top.loc["003", "suggested"] == CLASSES[int(predictions[3]["labels"][0])]
    assert str(top.loc["003", "given"]) != str(top.loc["003", "suggested"])
    assert top.loc["007", "issue"] == engine.MISSING and top.loc["007", "given"] == ""
    predicted = top.loc["007", engine.PRED_BOX].to_numpy(np.float64)
    assert engine.box_iou(predicted[None], deleted[None])[0, 0] > 0.8  # the missing box is where it was
    assert list(scores["rank"]) == list(range(1, len(scores) + 1))
    assert scores["quality"].is_monotonic_increasing
    listed = engine.suspects(scores)
    assert set(listed["image_id"]) == {"003", "007"}  # nothing else is below the default threshold


def test_a_given_box_no_prediction_supports_is_spurious_and_a_shifted_one_badly_placed() -> None:
    images, truths, predictions = scene(seed=1)
    extra = np.array([[200.0, 100.0, 240.0, 140.0]])
    truths[2] = {"boxes": np.vstack([truths[2]["boxes"], extra]), "labels": np.append(truths[2]["labels"], 0)}
    predictions[5]["boxes"][0] += [14, 14, 14, 14]  # the detector's box is off by a third of the box
    scores = engine.score_boxes(images, truths, predictions, CLASSES)
    spurious = scores[scores["issue"] == engine.SPURIOUS]
    assert list(spurious["image_id"]) == ["002"] and spurious["rank"].iloc[0] == 1
    birds = sum(int((t["labels"] == 0).sum()) for t in truths)
    assert spurious["quality"].iloc[0] == pytest.approx(1 / birds)  # 1 - recall: it sees every other bird
    assert spurious[engine.BOX].to_numpy().tolist() == extra.tolist()
    badloc = scores[(scores["image_id"] == "005")].iloc[0]
    assert badloc["issue"] == engine.BADLOC and badloc["quality"] < 0.7
    assert badloc["quality"] < scores[scores["image_id"] != "005"]["quality"].drop(spurious.index).min()


def test_a_weak_detectors_misses_are_not_called_spurious() -> None:
    """Scored by the detector's own recall of the class: when it misses most boxes, a miss says little."""
    images, truths, predictions = scene(seed=4)
    for pred in predictions[: len(predictions) * 3 // 4]:
        pred["scores"][:] = 0.05  # it barely sees three images in four
    scores = engine.score_boxes(images, truths, predictions, CLASSES)
    missed = scores[scores["issue"] == engine.SPURIOUS]
    assert len(missed) > 0 and missed["quality"].min() > 0.5
    assert engine.suspects(scores).empty


def test_a_clean_set_yields_no_suspects() -> None:
    images, truths, predictions = scene(n_images=40, seed=2)
    scores = engine.score_boxes(images, truths, predictions, CLASSES)
    assert len(scores) == sum(len(t["labels"]) for t in truths)  # one row per given box, none missing
    assert engine.suspects(scores).empty
    assert set(scores["issue"]) == {engine.BADLOC}  # judged by placement alone, all well placed


def test_unconfident_predictions_call_nothing() -> None:
    """Below ``confident``, a prediction of another class is no evidence of a swap."""
    images, truths, predictions = scene(seed=3)
    truths[0]["labels"][0] = 1 - truths[0]["labels"][0]
    predictions[0]["scores"][:] = 0.4
    loose = engine.score_boxes(images, truths, predictions, CLASSES, engine.Thresholds(confident=0.3))
    strict = engine.score_boxes(images, truths, predictions, CLASSES, engine.Thresholds(confident=0.5))
    assert loose.iloc[0]["image_id"] == "000" and loose.iloc[0]["issue"] == engine.SWAP
    assert not (strict["issue"] == engine.SWAP).any()
    assert "000" not in set(engine.suspects(strict)["image_id"])


def _dvc_outs(stage: str) -> list[str]:
    spec = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"][stage]
    return [next(iter(o)) if isinstance(o, dict) else o for o in spec["outs"]]


def test_classify_writes_both_outputs_empty_where_dvc_yaml_declares_them(tmp_path: Path) -> None:
    params = fast_params(tmp_path, make_classify_source(tmp_path / "src"))
    result = box_issues.run(params)  # no model, no split: it returns before reading anything
    layout = Layout(params.paths)
    assert result.suspects == 0 and "detect only" in str(result)
    assert list(pd.read_csv(layout.box_issues).columns) == engine.COLUMNS
    assert pd.read_csv(layout.box_issues).empty
    summary = yaml.safe_load(layout.box_issues_summary.read_text(encoding="utf-8"))
    assert summary["suspects"] == 0 and summary["note"]
    reports = params.paths.reports
    declared = {o.replace("${paths.reports}", str(reports)) for o in _dvc_outs("box_issues")}
    assert declared == {str(layout.box_issues), str(layout.box_issues_summary)}
    report_deps = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]["report"][
        "deps"
    ]
    assert {"${paths.reports}/box_issues.csv", "${paths.reports}/box_issues.json"} <= set(report_deps)


def test_the_report_draws_the_suspect_boxes(tmp_path: Path) -> None:
    source = write_voc(tmp_path / "src", [("a.png", (64, 64), [("bird", 4, 4, 30, 30)])])
    params = detect_params(tmp_path, source)
    layout = Layout(params.paths)
    row = dict.fromkeys(engine.COLUMNS, "") | {
        "rank": 1,
        "path": "JPEGImages/a.png",
        "image_id": "a",
        "issue": engine.SWAP,
        "given": "bird",
        "suggested": "cat",
        "quality": 0.01,
        "image_quality": 0.2,
        "pred_score": 0.9,
    }
    row |= dict(zip(engine.BOX, [4, 4, 30, 30], strict=True)) | dict(
        zip(engine.PRED_BOX, [5, 5, 31, 29], strict=True)
    )
    layout.box_issues.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([row])[engine.COLUMNS].to_csv(layout.box_issues, index=False)
    summary = {"task": "detect", "note": box_issues.TRAIN_NOTE, "images": 1, "boxes": 1, "suspects": 1}
    summary["per_issue"] = {"swap": 1, "badloc": 0, "missing": 0, "spurious": 0}
    write_json(summary, layout.box_issues_summary)
    inputs = ReportInputs(params, layout, {}, "detect", [], pd.DataFrame())
    rendered = section.render(inputs)
    assert rendered is not None
    text = "\n".join(rendered.lines)
    assert "swapped class" in text and "val split" in text and "Train images are not scored" in text
    assert (inputs.fig_path("box_issues.png")).is_file()


@pytest.mark.slow
def test_the_stage_scores_a_trained_detectors_val_predictions(tmp_path: Path) -> None:
    from stages import augment, ingest, split, train, validate

    spec: list[DetectImage] = [
        (f"img{i}.png", (64, 64), [("bird" if i % 2 else "cat", 8 + i, 8, 40 + i, 44)]) for i in range(10)
    ]
    source = write_voc(tmp_path / "source", spec)
    raw = detect_params(
        tmp_path,
        source,
        split={"fractions": {"train": 0.6, "val": 0.2, "test": 0.2}, "near_duplicates": {"enabled": False}},
        train={
            "device": "cpu",
            "num_workers": 0,
            "detector": {
                "epochs": 1,
                "image_size": 32,
                "batch": 4,
                "warmup_epochs": 0,
                "ultralytics": {"plots": False},
            },
        },
        label_issues={"box_threshold": 1.0},
    )
    params = parse_params(raw.model_dump(mode="json", by_alias=True))
    for stage in (ingest, validate, split, augment, train):
        stage.run(params)
    result = box_issues.run(params)
    layout = Layout(params.paths)
    val = box_issues.val_rows(layout)
    assert result.images == len(val) > 0 and result.boxes == len(val)  # one box per image
    listed = pd.read_csv(layout.box_issues)
    assert list(listed.columns) == engine.COLUMNS
    assert set(listed["image_id"].astype(str)) <= set(val["image_id"].astype(str))  # val only, never train
    given = listed[listed["issue"] != engine.MISSING]
    assert len(given) == result.boxes  # threshold 1.0: every given box is listed once
    summary = yaml.safe_load(layout.box_issues_summary.read_text(encoding="utf-8"))
    assert summary["split"] == "val" and sum(summary["per_issue"].values()) == len(listed)
