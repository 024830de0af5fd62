"""Segmentation metrics (stages/metrics/segmentation.py) against torchmetrics, the bootstrap, the
per-image records, and the report of a segment evaluation (written here, no model)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_f1_score,
    multiclass_jaccard_index,
    multiclass_precision,
    multiclass_recall,
)
from torchmetrics.segmentation import MeanIoU

from stages.metrics import segmentation as seg
from stages.metrics.names import GATED, SEGMENT_HEADLINE, headline_names
from stages.metrics.paired import SegmentRecords, dumps, parse, segment_document

CLASSES = ["background", "wall", "window", "door"]


def random_masks(n: int, seed: int, size: int = 24, ignore: float = 0.1) -> tuple[list, list]:
    """Blobby truths (with ignore pixels), predictions right most of the time; ``door`` is rare
    and absent from some images, so per-image class sets differ."""
    rng = np.random.default_rng(seed)
    truths, predictions = [], []
    for i in range(n):
        truth = rng.choice(3, size=(size // 4, size // 4), p=[0.5, 0.3, 0.2]).repeat(4, 0).repeat(4, 1)
        if i % 3 == 0:
            truth[:4, :4] = 3
        prediction = np.where(rng.random(truth.shape) < 0.8, truth, rng.integers(0, 4, truth.shape))
        truth = np.where(rng.random(truth.shape) < ignore, seg.IGNORE_INDEX, truth)
        truths.append(truth.astype(np.uint8))
        predictions.append(prediction.astype(np.uint8))
    return truths, predictions


def stack(truths: list, predictions: list, k: int = len(CLASSES)) -> np.ndarray:
    return np.stack([seg.confusion(t, p, k) for t, p in zip(truths, predictions, strict=True)])


def torch_flat(masks: list) -> torch.Tensor:
    return torch.from_numpy(np.concatenate([m.ravel() for m in masks]).astype(np.int64))


# --- point values --------------------------------------------------------------------------------


def test_confusion_skips_ignore_pixels_and_refuses_unknown_classes() -> None:
    truth = np.array([[0, 1], [255, 2]], dtype=np.uint8)
    prediction = np.array([[0, 2], [1, 2]], dtype=np.uint8)
    cm = seg.confusion(truth, prediction, 3)
    assert cm.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 1]]
    assert cm.dtype == np.int64
    with pytest.raises(ValueError, match="outside"):
        seg.confusion(truth, np.full((2, 2), 3, np.uint8), 3)
    with pytest.raises(ValueError, match="shape"):
        seg.confusion(truth, prediction[:1], 3)


def test_metrics_equal_torchmetrics_with_ignore_pixels() -> None:
    truths, predictions = random_masks(9, seed=1)
    confusions = stack(truths, predictions)
    metrics, rows = seg.summarise(confusions, CLASSES, resamples=0, confidence=0.95, seed=0)
    t, p = torch_flat(truths), torch_flat(predictions)
    k, ignore = len(CLASSES), seg.IGNORE_INDEX

    def reference(fn: Callable[..., torch.Tensor], average: str) -> np.ndarray:
        return fn(p, t, num_classes=k, average=average, ignore_index=ignore).numpy()

    assert [r["iou"] for r in rows] == pytest.approx(reference(multiclass_jaccard_index, "none"), abs=1e-6)
    assert metrics["miou"] == pytest.approx(float(reference(multiclass_jaccard_index, "macro")))
    assert metrics["fw_iou"] == pytest.approx(float(reference(multiclass_jaccard_index, "weighted")))
    assert metrics["pixel_accuracy"] == pytest.approx(float(reference(multiclass_accuracy, "micro")))
    assert metrics["mean_accuracy"] == pytest.approx(float(reference(multiclass_accuracy, "macro")))
    dice = reference(multiclass_f1_score, "none")  # Dice of a class = its pixel F1
    assert [r["dice"] for r in rows] == pytest.approx(dice, abs=1e-6)
    assert metrics["dice_macro"] == pytest.approx(float(dice.mean()), abs=1e-6)
    assert [r["precision"] for r in rows] == pytest.approx(reference(multiclass_precision, "none"), abs=1e-6)
    assert [r["recall"] for r in rows] == pytest.approx(reference(multiclass_recall, "none"), abs=1e-6)
    kept = t != ignore
    assert sum(r["pixels"] for r in rows) == int(kept.sum())


def test_per_image_miou_equals_torchmetrics_segmentation_mean_iou() -> None:
    truths, predictions = random_masks(6, seed=2, ignore=0.0)  # MeanIoU has no ignore index
    own = seg.image_values(stack(truths, predictions))["miou"]
    metric = MeanIoU(num_classes=len(CLASSES), input_format="index", per_class=False)
    for i, (truth, prediction) in enumerate(zip(truths, predictions, strict=True)):
        reference = metric(torch.from_numpy(prediction[None].astype(np.int64)),
                           torch.from_numpy(truth[None].astype(np.int64)))  # fmt: skip
        metric.reset()
        assert own[i] == pytest.approx(float(reference), abs=1e-6)


def test_a_class_neither_true_nor_predicted_is_left_out_of_the_mean() -> None:
    truth = np.zeros((4, 4), np.uint8)
    truth[:2] = 1
    cm = seg.confusion(truth, truth, 4)  # classes 2 and 3 absent: undefined, not 0
    values = seg.headline_values(cm)
    assert values["miou"] == values["dice_macro"] == values["pixel_accuracy"] == 1.0
    scores = seg.class_scores(cm)
    assert np.isnan(scores["iou"][2]) and np.isnan(scores["recall"][3])
    predicted = truth.copy()
    predicted[0, 0] = 3  # a false pixel of an absent class makes it count, with IoU 0
    assert seg.headline_values(seg.confusion(truth, predicted, 4))["miou"] < 0.75 + 1e-9


def test_all_ignore_image_scores_nan_not_zero() -> None:
    cm = seg.confusion(np.full((3, 3), 255, np.uint8), np.zeros((3, 3), np.uint8), 2)
    assert not cm.any()
    assert np.isnan(seg.headline_values(cm)["miou"])


# --- bootstrap -----------------------------------------------------------------------------------


def test_bootstrap_is_seeded_and_brackets_the_point_value() -> None:
    truths, predictions = random_masks(30, seed=3)
    confusions = stack(truths, predictions)
    first, per_class = seg.bootstrap(confusions, 400, 0.95, seed=7)
    again, _ = seg.bootstrap(confusions, 400, 0.95, seed=7)
    other, _ = seg.bootstrap(confusions, 400, 0.95, seed=8)
    assert first == again and first != other
    metrics, rows = seg.summarise(confusions, CLASSES, 400, 0.95, seed=7)
    for name in SEGMENT_HEADLINE:
        low, high = first[name]
        value = metrics[name]
        assert value is not None and low < value < high, name
        assert (metrics[f"{name}_ci_low"], metrics[f"{name}_ci_high"]) == (round(low, 6), round(high, 6))
    for c, row in enumerate(rows):
        assert row["iou_ci_low"] <= row["iou"] <= row["iou_ci_high"]
        assert per_class["dice"][0, c] <= row["dice"] <= per_class["dice"][1, c]
    # Vectorised resampling is the same as summing the drawn images' matrices one by one.
    weights = seg.resample_weights(len(confusions), 3, 7)
    for w, cm in zip(weights, seg.weighted(confusions, weights), strict=True):
        drawn = np.repeat(np.arange(len(confusions)), w)
        assert np.array_equal(cm, confusions[drawn].sum(0))


# --- what evaluate writes ------------------------------------------------------------------------


def test_predictions_frame_ranks_the_worst_image_first() -> None:
    truths, predictions = random_masks(4, seed=4)
    predictions[2] = (truths[2] + 1) % 3  # all wrong
    confusions = stack(truths, predictions)
    rows = pd.DataFrame({"image_id": list("abcd"), "path": [f"{x}.png" for x in "abcd"]})
    frame = seg.predictions_frame(rows, confusions, CLASSES)
    assert list(frame.columns[:6]) == seg.PREDICTION_COLUMNS
    assert {f"iou_{c}" for c in CLASSES} <= set(frame.columns)
    assert seg.worst_order(frame)["image_id"].iloc[0] == "c"
    assert frame.loc[2, "miou"] == 0.0


def test_confusion_plot_rows_are_per_cent_of_each_true_class() -> None:
    total = np.array([[970, 30, 0], [1, 1, 1], [0, 0, 0]])
    rows = seg.confusion_plot_rows(total, ["a", "b", "c"])
    frame = pd.DataFrame(rows)
    counts = frame.groupby(["actual", "predicted"]).size().to_dict()
    assert counts == {("a", "a"): 97, ("a", "b"): 3, ("b", "a"): 34, ("b", "b"): 33, ("b", "c"): 33}
    assert seg.pixel_confusion(total, ["a", "b", "c"])["matrix"][0] == [970, 30, 0]


def test_segment_records_round_trip_and_recompute_the_metrics() -> None:
    truths, predictions = random_masks(8, seed=5)
    confusions = stack(truths, predictions)
    ids = [f"img{i}" for i in range(8)]
    text = dumps(segment_document(ids, confusions, CLASSES))
    assert len(text.splitlines()) == 8 + 7  # one image per line
    records = parse(text, "per_image.json")
    assert isinstance(records, SegmentRecords) and records.ids == tuple(ids)
    assert np.array_equal(records.confusions, confusions)
    metrics, _ = seg.summarise(confusions, CLASSES, 0, 0.95, 0)
    recomputed = records.values(np.ones((1, 8)), records.names())
    for name in SEGMENT_HEADLINE:
        assert recomputed[name][0] == pytest.approx(metrics[name], abs=1e-6)
    worse = records.degrade(records.candidates(0)[:3])
    assert worse.values(np.ones((1, 8)), ["miou"])["miou"][0] < metrics["miou"]
    assert np.array_equal(worse.truths(), records.truths())  # degrading changes predictions only
    reordered = records.reorder(np.arange(8)[::-1])
    assert reordered.ids[0] == "img7" and np.array_equal(reordered.confusions[0], confusions[7])


def test_segment_names_and_gate_defaults() -> None:
    assert GATED["segment"][0] == "miou"
    metrics = {"miou": 0.5, "fw_iou": 0.7, "images": 3, "dice_macro": 0.6}
    assert headline_names(metrics, "segment") == ["miou", "dice_macro", "fw_iou"]


def test_ignore_index_matches_the_mask_code() -> None:
    from stages.dataprep import semantic_masks

    assert semantic_masks.IGNORE_INDEX == seg.IGNORE_INDEX


# --- evaluate and the report, with a fake model ----------------------------------------------------

SHAPE_CLASSES = ["wall", "window"]
# (file, (width, height), [(class, polygon)]): a wall with a window on it (the window drawn on top).
SCENES = [
    ("a.png", (40, 32), [("wall", [2, 2, 38, 2, 38, 30, 2, 30]), ("window", [10, 8, 20, 8, 20, 18, 10, 18])]),
    ("b.png", (32, 40), [("wall", [0, 0, 32, 0, 32, 24, 0, 24])]),
    ("c.png", (36, 36), [("window", [4, 4, 30, 4, 30, 30, 4, 30])]),
    ("d.png", (32, 32), []),
]
BAD_IMAGE = "c.png"  # the fake model predicts background everywhere there


def _segment_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real: bool = False):
    """The data stages' outputs written directly, a fake segmenter (``real``: an untrained smp
    one, saved and loaded through the checkpoint contract); evaluate.run for real."""
    import hashlib
    import sys
    import types

    from stages import evaluate
    from stages.core.contracts import boxes_frame, manifest_frame, shapes_frame, write_json, write_parquet
    from stages.core.layout import Layout
    from stages.dataprep.semantic_masks import rasterise, segment_classes
    from tests.conftest import fast_params, write_image

    source = tmp_path / "source"
    params = fast_params(
        tmp_path, source, data={"task": "segment"}, evaluate={"bootstrap": 40}, report={"mistakes": 2}
    )
    layout = Layout(params.paths)
    manifest, shapes, boxes, splits = [], [], [], []
    for i, (name, (width, height), drawn) in enumerate(SCENES):
        write_image(source / name, seed=i, size=(width, height))
        sha = hashlib.sha256((source / name).read_bytes()).hexdigest()
        image_id = sha[:16]
        manifest.append({"image_id": image_id, "path": name, "sha256": sha, "width": width, "height": height,
                         "label": "", "group": "", "split": "", "source": "folder"})  # fmt: skip
        splits.append({"image_id": image_id, "split": "test"})
        for cls, points in drawn:
            xs, ys = points[0::2], points[1::2]
            box = {"x_min": min(xs), "y_min": min(ys), "x_max": max(xs), "y_max": max(ys)}
            shapes.append({"image_id": image_id, "class_name": cls, "kind": "polygon", "points": points,
                           "counts": None, "iscrowd": False, "occluded": False, "z_order": 0,
                           "attributes": "{}", **box})  # fmt: skip
            boxes.append(
                {"image_id": image_id, "class_name": cls, **box, "difficult": False, "truncated": False}
            )
    write_parquet(manifest_frame(manifest), layout.manifest)
    write_parquet(pd.DataFrame(splits), layout.splits)
    write_parquet(shapes_frame(shapes), layout.shapes)
    write_parquet(boxes_frame(boxes), layout.boxes)
    write_json(list(SHAPE_CLASSES), layout.classes)  # ingest's class list (no background)
    classes = segment_classes(SHAPE_CLASSES)
    index = {c: i for i, c in enumerate(classes)}
    frame = shapes_frame(shapes)
    by_path = {m["path"]: m for m in manifest}

    def predict_masks(model, meta, files, device, batch):
        assert meta["classes"] == classes
        for file in files:
            m = by_path[Path(file).name]
            truth = rasterise(
                frame[frame["image_id"] == m["image_id"]], m["height"], m["width"], index, "area"
            )
            yield np.zeros_like(truth) if Path(file).name == BAD_IMAGE else truth

    import stages.models.segmenters as segmenters

    if real:
        built = segmenters.create_segmenter("efficientnet_lite0", "none", "unet", len(classes), 32)
        meta = {"task": "segment", "backbone": "efficientnet_lite0", "decoder": "unet", "classes": classes,
                "preprocessing": built.preprocessing, "ignore_index": 255}  # fmt: skip
        segmenters.save_segmenter(built.model, meta, layout.segmenter)
        result = evaluate.run(params)
        return params, layout, result, {m["path"]: m["image_id"] for m in manifest}
    monkeypatch.setattr(segmenters, "load_segmenter", lambda path: (object(), {"classes": classes}))
    try:
        import stages.engine.segmentation.inference as inference

        monkeypatch.setattr(inference, "predict_masks", predict_masks)
    except ImportError:  # helper TRAIN's module not written yet: a stand-in with the contract's name
        package = types.ModuleType("stages.engine.segmentation")
        module = types.ModuleType("stages.engine.segmentation.inference")
        module.predict_masks = predict_masks  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "stages.engine.segmentation", package)
        monkeypatch.setitem(sys.modules, "stages.engine.segmentation.inference", module)
    result = evaluate.run(params)
    return params, layout, result, {m["path"]: m["image_id"] for m in manifest}


def test_evaluate_writes_the_segment_outputs_and_the_report_draws_the_overlays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stages import report
    from stages.core.contracts import read_parquet

    params, layout, result, ids = _segment_run(tmp_path, monkeypatch)
    metrics = json.loads(layout.metrics.read_text())
    assert metrics["task"] == "segment" and metrics["images"] == len(SCENES) and metrics["split_hash"]
    assert 0 < metrics["miou"] < 1 and metrics["miou_ci_low"] <= metrics["miou"] <= metrics["miou_ci_high"]
    assert "mIoU" in str(result)
    records = parse((layout.metrics.with_name("per_image.json")).read_text(), "per_image.json")
    assert isinstance(records, SegmentRecords)
    recomputed = records.values(np.ones((1, len(SCENES))), ["miou", "pixel_accuracy"])
    assert recomputed["miou"][0] == pytest.approx(metrics["miou"], abs=1e-6)
    predictions = read_parquet(layout.predictions)
    assert len(predictions) == len(SCENES) and "iou_window" in predictions
    worst = seg.worst_order(predictions)
    assert worst["path"].iloc[0] == BAD_IMAGE and worst["miou"].iloc[0] < 0.5  # background right only
    assert predictions.set_index("path").loc["a.png", "miou"] == 1.0
    written = sorted(p.name for p in layout.segment_masks.glob("*.png"))
    assert len(written) == 4  # report.mistakes = 2 images, truth and prediction each
    assert json.loads((layout.segment_masks / "index.json").read_text())[0] == ids[BAD_IMAGE]
    bad = ids[BAD_IMAGE]
    assert np.asarray(Image.open(layout.segment_masks / f"{bad}.pred.png")).max() == 0
    assert np.asarray(Image.open(layout.segment_masks / f"{bad}.truth.png")).max() == 2  # window
    rows = json.loads((layout.plots_dir / "confusion.json").read_text())
    assert pd.DataFrame(rows).groupby("actual").size().eq(100).all()
    per_class = json.loads((layout.plots_dir / "per_class.json").read_text())
    assert [r["class"] for r in per_class] == ["background", "wall", "window"]
    assert json.loads((layout.plots_dir / "roc.json").read_text()) == []

    history = layout.train_log_dir / "plots" / "metrics"
    for name, values in {"train/loss": [1.0, 0.5], "val/loss": [1.1, 0.7], "val/miou": [0.3, 0.6]}.items():
        path = history / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"step": range(len(values)), Path(name).name: values}).to_csv(
            path, sep="\t", index=False
        )
    done = report.run(params)
    text = done.report.read_text()
    assert "Curves" not in done.sections and {"Data", "Per class", "Errors", "Training"} <= set(done.sections)
    assert "**miou " in text and "| dice\\_macro |" in text, text[:1500]
    assert "| class | true pixels | images | IoU | Dice |" in text
    assert "figures/segment_overlays.png" in text and "figures/confusion_matrix.png" in text
    assert "c.png" in text.split("### Images with the lowest IoU")[1]
    for figure in ("segment_overlays", "confusion_matrix", "per_class", "headline", "training_curves"):
        assert (layout.figures_dir / f"{figure}.png").stat().st_size > 2000, figure
    card = (layout.paths.reports / "model_card.md").read_text()
    assert "Task: segment." in card and "semantic segmenter" in card and "miou" in card


def test_evaluate_runs_an_untrained_segmenter_through_the_checkpoint_contract(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, layout, result, _ = _segment_run(tmp_path, monkeypatch, real=True)
    assert result.metrics["images"] == len(SCENES)
    assert all(
        0 <= result.metrics[name] <= 1 for name in SEGMENT_HEADLINE if result.metrics[name] is not None
    )
    records = parse(layout.metrics.with_name("per_image.json").read_text(), "per_image.json")
    assert isinstance(records, SegmentRecords)
    true_pixels = records.truths().sum(1)  # every pixel scored at the image's own size
    assert sorted(true_pixels.tolist()) == sorted(w * h for _, (w, h), _ in SCENES)
