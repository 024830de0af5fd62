"""The per-image records evaluate writes for the metric gate (stages/metrics/paired.py): written
by evaluate's own output function, they give back the metrics of metrics.json, and the paired
statistics built on them (pipelines/gate_stats.py) behave as stated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines import gate_stats as stats
from stages.core.layout import Layout
from stages.evaluate import write_outputs
from stages.metrics import paired
from tests.conftest import fast_params


def _rows(n: int, classes: list[str]) -> pd.DataFrame:
    labels = [classes[i % len(classes)] for i in range(n)]
    return pd.DataFrame(
        {
            "image_id": [f"{i:04x}" for i in range(n)],
            "path": [f"{label}/{i}.png" for i, label in enumerate(labels)],
            "label": labels,
            "sha256": [f"{i:064x}" for i in range(n)],
        }
    )


def test_evaluate_writes_records_that_give_back_its_metrics(tmp_path: Path) -> None:
    classes = ["a", "b", "c", "d", "e", "f"]  # more than top_k = 5 classes: top5_accuracy is reported
    rng = np.random.default_rng(0)
    rows = _rows(90, classes)
    y = np.arange(90) % 6
    logits = rng.normal(size=(90, 6))
    logits[np.arange(90), y] += 1.2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    params = fast_params(tmp_path, tmp_path / "source", evaluate={"bootstrap": 0})
    layout = Layout(params.paths)
    write_outputs(layout, rows, y, p, classes, params)
    metrics = json.loads(layout.metrics.read_text(encoding="utf-8"))
    text = paired.per_image_path(layout.metrics).read_text(encoding="utf-8")
    assert len(text.splitlines()) == 90 + 8  # one line per image, so a diff names the images that changed
    records = paired.parse(text, "per_image.json")
    assert isinstance(records, paired.ClassifyRecords) and records.ids == tuple(rows["image_id"])
    names = records.names()
    assert "top5_accuracy" in names and "roc_auc_macro" not in names
    values = records.values(np.ones((1, 90)), names)
    for name in names:  # confidences and losses are rounded to 6 decimals in the file
        assert values[name][0] == pytest.approx(metrics[name], abs=2e-6), name
    # Same records, same bytes: a rerun changes nothing git sees.
    write_outputs(layout, rows, y, p, classes, params)
    assert paired.per_image_path(layout.metrics).read_text(encoding="utf-8") == text


def test_a_malformed_records_file_is_one_sentence() -> None:
    with pytest.raises(Exception, match=r"^reports/per_image.json is not a per-image record file \(KeyError"):
        paired.parse('{"task": "classify"}', "reports/per_image.json")


def test_paired_interval_is_narrower_than_either_runs_own() -> None:
    """Two runs that agree on most images: the difference's interval is far tighter than the
    interval of either run's accuracy (what the unpaired gate compared)."""
    n = 200
    y = np.arange(n) % 2
    p = np.full((n, 2), 0.2)
    p[np.arange(n), y] = 0.8
    wrong = np.arange(0, n, 5)  # 80 % accuracy
    p[wrong] = p[wrong][:, ::-1]
    options = paired.classification.Options()
    document = paired.classify_document([str(i) for i in range(n)], y, p, ["a", "b"], options)
    base = paired.parse(paired.dumps(document), "per_image.json")
    assert isinstance(base, paired.ClassifyRecords)
    new = base.degrade(base.candidates(0)[:2])  # 2 more mistakes
    boot = stats.Bootstrap(base, ["accuracy"], 1000, 0.95, 0)
    result = boot.compare(new)["accuracy"]
    assert result.change == pytest.approx(-2 / n)
    assert result.low is not None and result.high is not None
    own = np.quantile(boot.base_samples["accuracy"], [0.025, 0.975])
    assert result.high - result.low < 0.3 * (own[1] - own[0])
    assert result.high <= 0.0  # no resample can make the new run better: it only lost images
    test = stats.mcnemar(base, new)
    assert (test.newly_wrong, test.newly_right) == (2, 0) and test.p_value == pytest.approx(0.5)
