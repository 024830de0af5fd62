"""The metric gate's power: the smallest drop it flags as a regression, by test-set size.

For each test-set size and base accuracy, a synthetic base run (two balanced classes, the
mistakes spread evenly) goes through the gate's own search (``pipelines.gate_stats.detectable_drops``:
the base loses k images it got right, the smallest k whose paired interval lies entirely below
``-tolerance``). The churn column asks the same when the new run also changes its mind in the
other direction: it fixes every mistake of the base and breaks as many other images on top of
the net loss, so more images disagree and the interval is wider. Defaults of params.yaml:
tolerance 0.01, 1000 resamples, 95 %, seed 42. Also times the gate's statistics on a
300-image detection pair. Prints Markdown (docs/gate.md has the table).

    uv run python bench/bench_gate_power.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

import stages  # noqa: F401  (offline environment)
from bench.common import markdown_table
from pipelines import gate_stats as stats
from stages.metrics import detection, paired

SIZES = (15, 50, 153, 500, 2000)
ACCURACIES = (1.0, 0.95)
TOLERANCE, RESAMPLES, CONFIDENCE, SEED = 0.01, 1000, 0.95, 42


def records(n: int, accuracy: float) -> paired.ClassifyRecords:
    label = np.arange(n) % 2
    prediction = label.copy()
    wrong = np.linspace(0, n - 1, round((1 - accuracy) * n)).round().astype(int)
    prediction[wrong] = 1 - label[wrong]
    ids = tuple(f"i{i}" for i in range(n))
    return paired.ClassifyRecords(
        ids, ("a", "b"), label, prediction, np.full(n, 0.9), np.full(n, 0.1), None, None, 15
    )


def churn_drop(base: paired.ClassifyRecords, boot: stats.Bootstrap) -> str:
    """Smallest net accuracy drop flagged when the new run fixes all base mistakes and breaks more."""
    mistakes = int((base.label != base.prediction).sum())
    if not mistakes:
        return "–"
    fixed = base.degrade(np.zeros(0, int))
    fixed = paired.ClassifyRecords(**{**fixed.__dict__, "prediction": base.label.copy()})
    order = base.candidates(SEED)
    for k in range(1, len(order) - mistakes + 1):
        new = fixed.degrade(order[: mistakes + k])
        result = boot.compare(new, ["accuracy"])["accuracy"]
        if stats.rule(result, TOLERANCE, True) == stats.REGRESSION:
            return f"{k / len(base.ids):.3f} ({k})"
    return "none"


def main() -> None:
    rows = []
    for n in SIZES:
        for accuracy in ACCURACIES:
            base = records(n, accuracy)
            boot = stats.Bootstrap(base, ["accuracy", "f1_macro"], RESAMPLES, CONFIDENCE, SEED)
            drops = stats.detectable_drops(
                boot, {"accuracy": (TOLERANCE, True), "f1_macro": (TOLERANCE, True)}, SEED
            )
            cells = [f"{d[0]:.3f} ({d[1]})" if d else "none" for d in (drops["accuracy"], drops["f1_macro"])]
            rows.append([n, f"{accuracy:.2f}", *cells, churn_drop(base, boot)])
    print(
        markdown_table(
            [
                "test images",
                "base accuracy",
                "accuracy: drop (images lost)",
                "f1_macro: drop (images)",
                "accuracy with churn: net drop (net images)",
            ],
            rows,
        )
    )
    # Speed of the statistics on a detection pair (300 images, 2 classes, ~1000 detections).
    rng = np.random.default_rng(0)
    truths, predictions = [], []
    for i in range(300):
        boxes = np.array([[10.0, 10.0, 50.0, 50.0], [60.0, 10.0, 90.0, 50.0]])
        truths.append({"boxes": boxes, "labels": np.array([i % 2, 1 - i % 2])})
        extra = rng.uniform(0, 100, size=(1, 4)).cumsum(1)
        labels = np.array([i % 2, 1 - i % 2, 0])
        boxes_out = np.vstack([boxes + rng.uniform(0, 6), extra])
        predictions.append({"boxes": boxes_out, "labels": labels, "scores": rng.uniform(0.1, 1.0, 3)})
    doc = paired.detect_document(
        [f"d{i}" for i in range(300)], detection.match_all(truths, predictions, ["a", "b"]), 0.25
    )
    base = paired.parse(paired.dumps(doc), "per_image.json")
    started = time.perf_counter()
    boot = stats.Bootstrap(base, ["map50_95", "map50"], RESAMPLES, CONFIDENCE, SEED)
    boot.compare(base.degrade(base.candidates(1)[:30]))
    drops = stats.detectable_drops(boot, {"map50_95": (TOLERANCE, True), "map50": (TOLERANCE, True)}, SEED)
    detections = sum(len(s) for s in base.matches.det_score)
    print(
        f"\ndetection, 300 images, {detections} detections: paired bootstrap and detectable-drop "
        f"search {time.perf_counter() - started:.1f} s; map50_95 drop {drops['map50_95']}"
    )


if __name__ == "__main__":
    main()
