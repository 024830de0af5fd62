"""Stage ``evaluate``: predict the held-out split and write metrics with bootstrap intervals.

Metrics come from scikit-learn; per-image predictions are saved so any metric can be
recomputed without the model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
)
from tqdm import tqdm

from stages.cli import exit_with
from stages.errors import UserError
from stages.imaging import load_rgb
from stages.layout import Layout
from stages.manifest import read_parquet, split_hash, write_json, write_parquet
from stages.params import EvaluateSection, Params
from stages.train import load_checkpoint, resolve_device

log = logging.getLogger("stages.evaluate")
STAGE = "evaluate"

Metric = Callable[[np.ndarray, np.ndarray], float]


def headline_metrics(num_classes: int) -> dict[str, Metric]:
    labels = list(range(num_classes))
    return {
        "accuracy": accuracy_score,
        "precision_macro": lambda t, p: precision_score(
            t, p, labels=labels, average="macro", zero_division=0
        ),
        "recall_macro": lambda t, p: recall_score(t, p, labels=labels, average="macro", zero_division=0),
        "f1_macro": lambda t, p: f1_score(t, p, labels=labels, average="macro", zero_division=0),
    }


@dataclass(frozen=True)
class EvaluateResult:
    metrics: dict
    predictions: pd.DataFrame

    def __str__(self) -> str:
        m = self.metrics
        return (
            f"{m['split']} accuracy {m['accuracy']:.3f} "
            f"[{m.get('accuracy_ci_low', float('nan')):.3f}, "
            f"{m.get('accuracy_ci_high', float('nan')):.3f}] on {m['images']} images"
        )


def run(params: Params) -> EvaluateResult:
    """Score the model on ``evaluate.split``; write metrics, predictions and plot data."""
    layout = Layout(params.paths)
    model, meta = load_checkpoint(layout.classifier)
    classes: list[str] = meta["classes"]
    frame = read_parquet(layout.manifest).merge(
        read_parquet(layout.splits), on="image_id", suffixes=("_source", "")
    )
    rows = frame[frame["split"] == params.evaluate.split].sort_values("image_id")
    if rows.empty:
        raise UserError(f"the {params.evaluate.split} split is empty; set split.fractions so it gets images.")
    device = resolve_device(params.train.device)
    probabilities = predict(
        model, [params.data.source / p for p in rows["path"]], device, params.train.feature_batch_size
    )
    index = {name: i for i, name in enumerate(classes)}
    y_true = rows["label"].map(index).to_numpy(dtype=np.int64)
    predictions = predictions_frame(rows, probabilities, classes)
    metrics = compute_metrics(
        y_true, probabilities.argmax(1), len(classes), params.evaluate, params.base.seed
    )
    metrics["split"] = params.evaluate.split
    metrics["images"] = len(rows)
    metrics["split_hash"] = split_hash(rows)

    write_json(metrics, layout.metrics)
    write_parquet(predictions, layout.predictions)
    write_confusion(predictions, layout.plots_dir / "confusion.json")
    write_json(per_class_table(y_true, probabilities.argmax(1), classes), layout.plots_dir / "per_class.json")
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


def predictions_frame(rows: pd.DataFrame, probabilities: np.ndarray, classes: list[str]) -> pd.DataFrame:
    predicted = probabilities.argmax(1)
    frame = pd.DataFrame(
        {
            "image_id": rows["image_id"].to_numpy(),
            "path": rows["path"].to_numpy(),
            "label": rows["label"].to_numpy(),
            "prediction": [classes[i] for i in predicted],
            "confidence": probabilities.max(1),
        }
    )
    for i, name in enumerate(classes):
        frame[f"score_{name}"] = probabilities[:, i]
    return frame


def compute_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, params: EvaluateSection, seed: int
) -> dict:
    """Point values plus percentile-bootstrap intervals over images (seeded)."""
    metrics: dict[str, float | int | str] = {}
    functions = headline_metrics(num_classes)
    for name, fn in functions.items():
        metrics[name] = round(float(fn(y_true, y_pred)), 6)
    if params.bootstrap:
        intervals = bootstrap_intervals(y_true, y_pred, functions, params.bootstrap, params.confidence, seed)
        for name, (low, high) in intervals.items():
            metrics[f"{name}_ci_low"] = round(low, 6)
            metrics[f"{name}_ci_high"] = round(high, 6)
    return metrics


def bootstrap_intervals(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    functions: dict[str, Metric],
    resamples: int,
    confidence: float,
    seed: int,
) -> dict[str, tuple[float, float]]:
    rng = np.random.default_rng(seed)
    n = len(y_true)
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(resamples):
        pick = rng.integers(0, n, size=n)
        for name, fn in functions.items():
            samples[name].append(float(fn(y_true[pick], y_pred[pick])))
    alpha = (1 - confidence) / 2
    return {
        name: (float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))) for name, v in samples.items()
    }


def per_class_table(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> list[dict]:
    labels = list(range(len(classes)))
    precision = precision_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    recall = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    f1 = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    support = np.bincount(y_true, minlength=len(classes))
    return [
        {
            "class": name,
            "precision": round(float(precision[i]), 6),
            "recall": round(float(recall[i]), 6),
            "f1": round(float(f1[i]), 6),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    ]


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
