"""Stage ``evaluate``: predict the held-out split and write metrics with bootstrap intervals.

Metrics come from scikit-learn and torchmetrics (``stages/classify_metrics.py``, with a
vectorised seeded bootstrap for the intervals); per-image predictions (scores and loss) are
saved so any metric can be recomputed without the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import confusion_matrix
from tqdm import tqdm

from stages.classify_metrics import (
    Options,
    compute_metrics,
    curves,
    image_losses,
    normalise,
    reliability,
    summarise,
)
from stages.cli import exit_with
from stages.errors import UserError
from stages.imaging import load_rgb
from stages.layout import Layout
from stages.manifest import read_parquet, split_hash, write_json, write_parquet
from stages.params import EvaluateSection, Params
from stages.train import load_checkpoint, resolve_device

__all__ = ["EvaluateResult", "Options", "compute_metrics", "run", "split_rows", "write_outputs"]

log = logging.getLogger("stages.evaluate")
STAGE = "evaluate"


@dataclass(frozen=True)
class EvaluateResult:
    metrics: dict
    predictions: pd.DataFrame

    def __str__(self) -> str:
        m = self.metrics
        low, high = m.get("accuracy_ci_low"), m.get("accuracy_ci_high")
        interval = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
        return f"{m['split']} accuracy {m['accuracy']:.3f}{interval} on {m['images']} images"


def options(params: Params) -> Options:
    section: EvaluateSection = params.evaluate
    return Options(
        top_k=section.top_k,
        bins=section.calibration_bins,
        resamples=section.bootstrap,
        confidence=section.confidence,
        seed=params.base.seed,
    )


def run(params: Params) -> EvaluateResult:
    """Score the model on ``evaluate.split``; write metrics, predictions and plot data."""
    if params.data.task == "detect":  # mAP and friends: stages/detect_evaluate.py
        from stages.detect_evaluate import run as run_detect

        return run_detect(params)
    layout = Layout(params.paths)
    model, meta = load_checkpoint(layout.classifier)
    classes: list[str] = meta["classes"]
    rows = split_rows(layout, params.evaluate.split)
    device = resolve_device(params.train.device)
    probabilities = predict(
        model, [params.data.source / p for p in rows["path"]], device, params.train.feature_batch_size
    )
    index = {name: i for i, name in enumerate(classes)}
    y_true = rows["label"].map(index).to_numpy(dtype=np.int64)
    return write_outputs(layout, rows, y_true, probabilities, classes, params)


def split_rows(layout: Layout, split: str) -> pd.DataFrame:
    """The validated manifest's rows of one split, sorted by image id."""
    frame = read_parquet(layout.manifest).merge(
        read_parquet(layout.splits), on="image_id", suffixes=("_source", "")
    )
    rows = frame[frame["split"] == split].sort_values("image_id")
    if rows.empty:
        raise UserError(f"the {split} split is empty; set split.fractions so it gets images.")
    return rows


def write_outputs(
    layout: Layout,
    rows: pd.DataFrame,
    y_true: np.ndarray,
    probabilities: np.ndarray,
    classes: list[str],
    params: Params,
) -> EvaluateResult:
    """Everything evaluate writes, from labels and probabilities alone (no model needed)."""
    opts = options(params)
    headline, per_class = summarise(y_true, probabilities, classes, opts)
    metrics = {"task": "classify", **headline}
    metrics["split"] = params.evaluate.split
    metrics["images"] = len(rows)
    metrics["split_hash"] = split_hash(rows)
    predictions = predictions_frame(rows, y_true, probabilities, classes)

    write_json(metrics, layout.metrics)
    write_parquet(predictions, layout.predictions)
    write_confusion(predictions, layout.plots_dir / "confusion.json")
    write_json(per_class, layout.plots_dir / "per_class.json")
    for name, points in curves(y_true, probabilities, classes).items():
        write_json(points, layout.plots_dir / f"{name}.json")
    write_json(reliability(y_true, probabilities, opts.bins), layout.plots_dir / "calibration.json")
    return EvaluateResult(metrics, predictions)


@torch.inference_mode()
def predict(model, files: list[Path], device: torch.device, batch_size: int) -> np.ndarray:
    """Softmax probabilities for each file, preprocessed as in training."""
    network = model.model.to(device).eval()
    transform = model.preprocessing.transform()
    outputs = []
    for start in tqdm(
        range(0, len(files), batch_size), desc="evaluate: predicting", unit="batch", leave=False
    ):
        batch = torch.stack([transform(load_rgb(f)) for f in files[start : start + batch_size]])
        outputs.append(torch.softmax(network(batch.to(device)).float(), dim=1).cpu().numpy())
    return np.concatenate(outputs)


def predictions_frame(
    rows: pd.DataFrame, y_true: np.ndarray, probabilities: np.ndarray, classes: list[str]
) -> pd.DataFrame:
    """One row per image: label, prediction, its confidence, the image's loss and every score."""
    p = normalise(probabilities)
    predicted = p.argmax(1)
    frame = pd.DataFrame(
        {
            "image_id": rows["image_id"].to_numpy(),
            "path": rows["path"].to_numpy(),
            "label": rows["label"].to_numpy(),
            "prediction": [classes[i] for i in predicted],
            "confidence": p.max(1),
            "loss": image_losses(y_true, p),
        }
    )
    for i, name in enumerate(classes):
        frame[f"score_{name}"] = p[:, i]
    return frame


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    return confusion_matrix(y_true, y_pred, labels=list(range(num_classes)))


def write_confusion(predictions: pd.DataFrame, path: Path) -> None:
    """Rows of {actual, predicted} for DVC's ``confusion`` plot template."""
    rows = [
        {"actual": a, "predicted": p}
        for a, p in zip(predictions["label"], predictions["prediction"], strict=True)
    ]
    write_json(rows, path)


if __name__ == "__main__":
    exit_with(STAGE, run)
