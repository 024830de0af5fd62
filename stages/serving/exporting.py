"""The export stage's work: ONNX model + metadata, parity on the evaluated split, optional INT8.

Parity runs the ONNX model with onnxruntime on the images evaluate scored, preprocessed from the
model's own metadata (``stages.serving.preprocess``, no timm), and compares:

- classify: with the PyTorch probabilities computed as evaluate computes them
  (``stages.engine.inference.predict``): largest absolute difference, top-1 agreement, accuracy;
- detect: its mAP (same COCO matching as evaluate, confidence 0.001, NMS IoU 0.7) with the
  mAP evaluate wrote in ``metrics.json``;
- segment: its mIoU on the same images and truth masks with the mIoU evaluate wrote, and the
  share of pixels whose class matches PyTorch's (``predict_masks`` on the CPU).

The INT8 model is measured the same way; its change is recorded, not gated.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from stages.core.contracts import read_parquet
from stages.core.errors import DataError, UserError
from stages.core.layout import Layout
from stages.core.params import Params
from stages.dataprep.imaging import load_rgb
from stages.dataprep.segment_preprocess import segment_input
from stages.serving.metadata import ModelInfo, params_digest, write_metadata
from stages.serving.onnx_predictor import OnnxPredictor
from stages.serving.preprocess import classify_array, letterbox

log = logging.getLogger("stages.export")
BATCH = 16


@dataclass(frozen=True)
class ExportFiles:
    onnx: Path
    int8: Path
    report: Path

    @classmethod
    def of(cls, params: Params) -> ExportFiles:
        folder = params.paths.export
        return cls(folder / "model.onnx", folder / "model.int8.onnx", params.paths.reports / "export.json")


def split_rows(layout: Layout, split: str) -> pd.DataFrame:
    """The evaluated split's rows, in evaluate's order (by image id)."""
    frame = read_parquet(layout.manifest).merge(
        read_parquet(layout.splits), on="image_id", suffixes=("_source", "")
    )
    rows = frame[frame["split"] == split].sort_values("image_id").reset_index(drop=True)
    if rows.empty:
        raise UserError(f"the {split} split is empty; set split.fractions so it gets images.")
    return rows


def headline_with_intervals(metrics: dict[str, Any]) -> dict[str, Any]:
    """metrics.json's numbers (point values and their ``_ci_low``/``_ci_high``), for /model."""
    return {k: v for k, v in metrics.items() if isinstance(v, int | float | str)}


def model_info(params: Params, task: str, meta: dict, metrics: dict) -> ModelInfo:
    provenance = {
        "code_digest": meta.get("code_digest"),
        "train_params_digest": params_digest(params.train.model_dump(mode="json")),
        "weights": meta.get("weights_id") or meta.get("weights"),
        "backbone": meta.get("backbone"),
        "metrics": headline_with_intervals(metrics),
    }
    if task == "segment":
        return ModelInfo(
            task="segment",
            classes=list(meta["classes"]),
            preprocessing={k: meta["preprocessing"][k] for k in ("input_size", "mean", "std")},
            max_pixels=params.validate_.max_pixels,
            provenance=provenance,
        )
    if task == "classify":
        return ModelInfo(
            task="classify",
            classes=list(meta["classes"]),
            preprocessing=meta["preprocessing"],
            top_k=params.evaluate.top_k,
            max_pixels=params.validate_.max_pixels,
            provenance=provenance,
        )
    return ModelInfo(
        task="detect",
        classes=list(meta["classes"]),
        preprocessing={"image_size": int(meta.get("image_size", params.train.detector.image_size))},
        conf=float(meta.get("conf", params.train.detector.conf)),
        max_pixels=params.validate_.max_pixels,
        provenance=provenance,
    )


def export(params: Params) -> dict[str, Any]:
    """Write the ONNX model(s) and ``reports/export.json``; raise when parity breaks a threshold."""
    started = time.perf_counter()
    layout = Layout(params.paths)
    files = ExportFiles.of(params)
    task = params.data.task
    if not layout.metrics.is_file():
        raise UserError(f"{layout.metrics} not found; run the evaluate stage before export.")
    metrics = json.loads(layout.metrics.read_text(encoding="utf-8"))
    for old in (files.onnx, files.int8):
        old.unlink(missing_ok=True)
    if task == "classify":
        from stages.serving.classifier_export import export_classifier

        if not layout.classifier.is_file():
            raise UserError(f"{layout.classifier} not found; run the train stage first.")
        meta = export_classifier(layout.classifier, files.onnx, params.export.opset)
        exporter = "torch.onnx.export(dynamo=True)"
    elif task == "segment":
        from stages.serving.segmenter_export import export_segmenter

        if not layout.segmenter.is_file():
            raise UserError(
                f"{layout.segmenter} not found; run the train stage with data.task: segment first."
            )
        meta = export_segmenter(layout.segmenter, files.onnx, params.export.opset)
        exporter = "torch.onnx.export(dynamo=True)"
    else:
        from stages.engine.yolo.serving import export_onnx

        if not layout.detector.is_file():
            raise UserError(f"{layout.detector} not found; run the train stage with data.task: detect first.")
        meta = export_onnx(layout.detector, files.onnx, params.train.detector.image_size, params.export.opset)
        exporter = "ultralytics YOLO.export(format='onnx', simplify=True)"
    info = model_info(params, task, meta, metrics)
    write_metadata(files.onnx, info)
    log.info(
        "phase onnx: %s with %s, opset %d (%.1f s)",
        files.onnx,
        exporter,
        params.export.opset,
        time.perf_counter() - started,
    )

    rows = split_rows(layout, params.evaluate.split)
    images = [
        load_rgb(params.data.source / p) for p in tqdm(rows["path"], desc="export: decoding", leave=False)
    ]
    onnx_model = OnnxPredictor(files.onnx, info=info)
    report: dict[str, Any] = {
        "task": task,
        "split": params.evaluate.split,
        "images": len(rows),
        "exporter": exporter,
        "opset": params.export.opset,
        "onnx": str(files.onnx),
        "onnx_bytes": files.onnx.stat().st_size,
        "thresholds": params.export.parity.model_dump(mode="json"),
    }
    truths: list[np.ndarray] = []  # segment: evaluate's class maps of these images
    if task == "classify":
        report |= classify_parity(params, layout, rows, images, onnx_model)
    elif task == "segment":
        truths = _truths(params, layout, rows, info.classes)  # also scores the INT8 model below
        report |= segment_parity(layout, images, truths, onnx_model, metrics)
    else:
        report |= detect_parity(params, layout, rows, images, onnx_model, metrics)

    if params.export.int8:
        from stages.serving.quantize import quantize_int8

        phase = time.perf_counter()
        calibration = calibration_arrays(params, layout, info)
        op_types = ("Conv",) if task == "detect" else None  # why: stages/serving/quantize.py
        quantize_int8(files.onnx, files.int8, onnx_model.input_name, calibration, op_types)
        write_metadata(files.int8, info)
        int8_model = OnnxPredictor(files.int8, info=info)
        report["int8"] = {
            "onnx": str(files.int8),
            "onnx_bytes": files.int8.stat().st_size,
            "calibration_images": len(calibration),
        }
        if task == "classify":
            report["int8"] |= classify_int8(rows, images, int8_model, info, report)
        elif task == "segment":
            found = _miou(truths, _onnx_masks(int8_model, images), len(info.classes))
            report["int8"] |= {"miou": found, "miou_change": found - report["miou_onnx"]}
        else:
            report["int8"] |= detect_int8(params, layout, rows, images, int8_model, report)
        log.info("phase int8: %s (%.1f s)", files.int8, time.perf_counter() - phase)
    failures = parity_failures(report, params)
    report["passed"] = not failures
    report["failures"] = failures
    files.report.parent.mkdir(parents=True, exist_ok=True)
    files.report.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if failures:
        raise DataError(
            f"the ONNX model in {files.onnx} breaks export.parity ({'; '.join(failures)}); see "
            f"{files.report}, and check the exporter or raise the threshold."
        )
    return report


# --- classification ------------------------------------------------------------------------------


def _labels(rows: pd.DataFrame, classes: list[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(classes)}
    return rows["label"].map(index).to_numpy(dtype=np.int64)


def _onnx_probabilities(model: OnnxPredictor, images: list) -> np.ndarray:
    return np.concatenate([model.probabilities(images[i : i + BATCH]) for i in range(0, len(images), BATCH)])


def classify_parity(
    params: Params, layout: Layout, rows: pd.DataFrame, images: list, model: OnnxPredictor
) -> dict:
    import torch

    from stages.engine.inference import predict
    from stages.models.checkpoints import load_checkpoint

    backbone, _ = load_checkpoint(layout.classifier)
    reference = predict(backbone, [params.data.source / p for p in rows["path"]], torch.device("cpu"), BATCH)
    onnx = _onnx_probabilities(model, images)
    y_true = _labels(rows, model.info.classes)
    return {
        "max_abs_diff": float(np.abs(onnx - reference).max()),
        "top1_agreement": float((onnx.argmax(1) == reference.argmax(1)).mean()),
        "accuracy_pytorch": float((reference.argmax(1) == y_true).mean()),
        "accuracy_onnx": float((onnx.argmax(1) == y_true).mean()),
    }


def classify_int8(
    rows: pd.DataFrame, images: list, model: OnnxPredictor, info: ModelInfo, report: dict
) -> dict:
    probabilities = _onnx_probabilities(model, images)
    accuracy = float((probabilities.argmax(1) == _labels(rows, info.classes)).mean())
    return {"accuracy": accuracy, "accuracy_change": accuracy - report["accuracy_onnx"]}


# --- detection ----------------------------------------------------------------------------------


def _onnx_map(params: Params, layout: Layout, rows: pd.DataFrame, images: list, model: OnnxPredictor) -> dict:
    from stages.metrics import detection

    boxes = read_parquet(layout.boxes)
    truths = detection.truth_arrays(
        rows, boxes[boxes["image_id"].isin(set(rows["image_id"]))], model.info.classes
    )
    predictions = []
    for i in range(0, len(images), BATCH):
        predictions += model.boxes(images[i : i + BATCH], conf=0.001, iou=0.7)
    matches = detection.match_all(truths, predictions, model.info.classes)
    return {k: float(v[0]) for k, v in detection.numpy_map(matches).items()}


def detect_parity(
    params: Params, layout: Layout, rows: pd.DataFrame, images: list, model: OnnxPredictor, metrics: dict
) -> dict:
    onnx = _onnx_map(params, layout, rows, images, model)
    return {
        "map50_pytorch": float(metrics["map50"]),
        "map50_95_pytorch": float(metrics["map50_95"]),
        "map50_onnx": onnx["map50"],
        "map50_95_onnx": onnx["map50_95"],
        "map50_95_drop": float(metrics["map50_95"]) - onnx["map50_95"],
    }


def detect_int8(
    params: Params, layout: Layout, rows: pd.DataFrame, images: list, model: OnnxPredictor, report: dict
) -> dict:
    found = _onnx_map(params, layout, rows, images, model)
    return {
        "map50": found["map50"],
        "map50_95": found["map50_95"],
        "map50_95_change": found["map50_95"] - report["map50_95_onnx"],
    }


# --- segmentation --------------------------------------------------------------------------------


def _onnx_masks(model: OnnxPredictor, images: list) -> list[np.ndarray]:
    return [mask for i in range(0, len(images), BATCH) for mask in model.masks(images[i : i + BATCH])]


def _truths(params: Params, layout: Layout, rows: pd.DataFrame, classes: list[str]) -> list[np.ndarray]:
    """The class maps evaluate scored ``rows`` against (the model's classes, background first; read
    from the mask cache), drawn once for every model export compares."""
    from stages.dataprep.semantic_masks import MaskStore

    store = MaskStore(
        layout.mask_cache, read_parquet(layout.shapes), classes, params.train.segmenter.draw_order
    )
    keys = zip(rows["image_id"], rows["sha256"], rows["height"], rows["width"], strict=True)
    return [store.mask(str(i), str(s), int(h), int(w)) for i, s, h, w in keys]


def _miou(truths: list[np.ndarray], masks: list[np.ndarray], num_classes: int) -> float:
    """The mIoU of ``masks`` with evaluate's metric."""
    from stages.metrics import segmentation

    confusions = [segmentation.confusion(t, m, num_classes) for t, m in zip(truths, masks, strict=True)]
    return float(segmentation.headline_values(np.sum(confusions, axis=0))["miou"])


def segment_parity(
    layout: Layout, images: list, truths: list[np.ndarray], model: OnnxPredictor, metrics: dict
) -> dict:
    import torch

    from stages.engine.segmentation.inference import predict_arrays
    from stages.models.segmenters import load_segmenter

    network, meta = load_segmenter(layout.segmenter)
    cpu = torch.device("cpu")
    reference = [
        mask
        for i in range(0, len(images), BATCH)
        for mask in predict_arrays(network, meta, [np.asarray(im) for im in images[i : i + BATCH]], cpu)
    ]
    onnx = _onnx_masks(model, images)
    same = sum(int((a == b).sum()) for a, b in zip(onnx, reference, strict=True))
    pixels = sum(a.size for a in onnx)
    classes = len(model.info.classes)
    miou_onnx = _miou(truths, onnx, classes)
    # PyTorch on the CPU, like onnxruntime: evaluate's number may come from a GPU, whose kernels
    # can flip a boundary pixel; it is recorded beside them.
    miou_pytorch = _miou(truths, reference, classes)
    return {
        "miou_evaluate": float(metrics["miou"]),
        "miou_pytorch": miou_pytorch,
        "miou_onnx": miou_onnx,
        "miou_drop": miou_pytorch - miou_onnx,
        "pixel_agreement": same / max(pixels, 1),
    }


# --- shared --------------------------------------------------------------------------------------


def calibration_arrays(params: Params, layout: Layout, info: ModelInfo) -> list[np.ndarray]:
    """The first ``export.calibration_images`` train images (by image id), preprocessed for the model."""
    rows = split_rows(layout, "train").head(params.export.calibration_images)
    arrays = []
    for path in rows["path"]:
        image = load_rgb(params.data.source / path)
        if info.task == "classify":
            arrays.append(classify_array(image, info.classify_preprocessing()))
        elif info.task == "segment":
            spec = info.segment_preprocessing()
            arrays.append(segment_input(np.asarray(image), spec.input_size, spec.mean, spec.std))
        else:
            arrays.append(letterbox(np.asarray(image), info.detect_preprocessing())[0])
    return arrays


def parity_failures(report: dict, params: Params) -> list[str]:
    limits = params.export.parity
    failures = []
    if report["task"] == "classify":
        if report["max_abs_diff"] > limits.max_abs_diff:
            failures.append(
                f"max abs probability difference {report['max_abs_diff']:.2e} > {limits.max_abs_diff}"
            )
        if report["top1_agreement"] < limits.min_top1_agreement:
            failures.append(f"top-1 agreement {report['top1_agreement']:.3f} < {limits.min_top1_agreement}")
    elif report["task"] == "segment":
        if report["miou_drop"] > limits.max_miou_drop:
            failures.append(f"mIoU drop {report['miou_drop']:.4f} > {limits.max_miou_drop}")
        if report["pixel_agreement"] < limits.min_pixel_agreement:
            failures.append(f"pixel agreement {report['pixel_agreement']:.4f} < {limits.min_pixel_agreement}")
    elif report["map50_95_drop"] > limits.max_map_drop:
        failures.append(f"mAP50-95 drop {report['map50_95_drop']:.4f} > {limits.max_map_drop}")
    return failures
