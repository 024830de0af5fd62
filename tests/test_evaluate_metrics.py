"""Classification metrics: hand-checked values, the vectorised bootstrap against the libraries,
interval behaviour. No model, no images: labels and probabilities only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss

from stages.metrics import classification as cm
from stages.metrics.names import classify_headline

# 4 images, 2 classes: predictions [0, 1, 1, 1] against labels [0, 0, 1, 1].
Y4 = np.array([0, 0, 1, 1])
P4 = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])


def _noisy(n: int, k: int, seed: int, signal: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += signal
    logits[: n // 10] = logits[: n // 10].round(0)  # tied scores
    return y, torch.softmax(torch.tensor(logits), 1).numpy().astype(np.float32)


def test_hand_checked_binary_case() -> None:
    m = cm.point_metrics(Y4, P4, cm.Options())
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["balanced_accuracy"] == pytest.approx(0.75)  # recalls 0.5 and 1
    assert m["precision_macro"] == pytest.approx((1 + 2 / 3) / 2)  # 1/1 and 2/3
    assert m["recall_macro"] == pytest.approx(0.75)
    assert m["f1_macro"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["roc_auc_macro"] == pytest.approx(1.0)  # every positive outscores every negative
    assert m["pr_auc_macro"] == pytest.approx(1.0)
    assert m["log_loss"] == pytest.approx(
        -(math.log(0.9) + math.log(0.4) + math.log(0.8) + math.log(0.7)) / 4
    )
    # Confidences 0.9, 0.6, 0.8, 0.7 fall in four different of the 15 bins; correct 1, 0, 1, 1.
    assert m["ece"] == pytest.approx((0.1 + 0.6 + 0.2 + 0.3) / 4, abs=1e-6)
    assert "top5_accuracy" not in m  # k >= classes: trivially 1, not reported


def test_top_k_and_per_image_loss() -> None:
    y = np.array([0, 1, 2])
    p = np.array([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2], [0.2, 0.5, 0.3]])
    m = cm.point_metrics(y, p, cm.Options(top_k=2))
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["top2_accuracy"] == pytest.approx(1.0)
    assert list(classify_headline(m))[:2] == ["accuracy", "top2_accuracy"]
    losses = cm.image_losses(y, p)
    np.testing.assert_allclose(losses, -np.log([0.5, 0.3, 0.3]))
    assert losses.mean() == pytest.approx(log_loss(y, p))


@pytest.mark.parametrize("k", [2, 4])
def test_vectorised_bootstrap_equals_the_libraries_on_resamples(k: int) -> None:
    y, p = _noisy(90, k, seed=k)
    options = cm.Options(top_k=2)
    weights = cm.resample_weights(len(y), 12, seed=5)
    batched, per_class = cm.batched_metrics(weights, y, p, options)
    for b in range(len(weights)):
        pick = np.repeat(np.arange(len(y)), weights[b])
        reference = cm.point_metrics(y[pick], p[pick], options)
        assert set(reference) == set(batched)
        for name, value in reference.items():
            # torchmetrics computes ECE in float32
            assert batched[name][b] == pytest.approx(value, abs=1e-6 if name == "ece" else 1e-9), name
        table = cm.per_class_table(y[pick], p[pick], [str(c) for c in range(k)], options, intervals={})
        for name in cm.PER_CLASS:
            np.testing.assert_allclose(per_class[name][b], [r[name] for r in table], atol=1e-6)


def test_intervals_contain_the_point_are_seeded_and_shrink_with_more_images() -> None:
    y, p = _noisy(60, 3, seed=1, signal=1.0)
    options = cm.Options(top_k=2, resamples=400, seed=7)
    small = cm.compute_metrics(y, p, options)
    assert small == cm.compute_metrics(y, p, options)
    assert small != cm.compute_metrics(y, p, cm.Options(top_k=2, resamples=400, seed=8))
    big = cm.compute_metrics(np.tile(y, 8), np.tile(p, (8, 1)), options)
    for name in ("accuracy", "top2_accuracy", "balanced_accuracy", "f1_macro", "roc_auc_macro", "log_loss"):
        assert small[f"{name}_ci_low"] <= small[name] <= small[f"{name}_ci_high"], name
        assert big[f"{name}_ci_low"] <= big[name] <= big[f"{name}_ci_high"], name
        width = lambda m, n=name: m[f"{n}_ci_high"] - m[f"{n}_ci_low"]  # noqa: E731
        assert width(big) < 0.6 * width(small), name


def test_threshold_free_metrics_with_one_class_resamples() -> None:
    # 2 positives in 12 images: many resamples draw no positive at all.
    y = np.array([0] * 10 + [1] * 2)
    p = np.column_stack([np.linspace(0.9, 0.4, 12), np.linspace(0.1, 0.6, 12)])
    weights = cm.resample_weights(len(y), 300, seed=0)
    values, _ = cm.batched_metrics(weights, y, p, cm.Options())
    one_class = (weights[:, y == 1].sum(1) == 0) | (weights[:, y == 0].sum(1) == 0)
    assert one_class.any()
    assert np.isnan(values["roc_auc_macro"][one_class]).all()  # undefined, not 0 or 0.5
    assert not np.isnan(values["roc_auc_macro"][~one_class]).any()
    metrics = cm.compute_metrics(y, p, cm.Options(resamples=300))
    assert metrics["roc_auc_macro_ci_low"] <= metrics["roc_auc_macro"] <= metrics["roc_auc_macro_ci_high"]
    # A split without one class: that class's AUC is undefined and left out of the macro mean.
    only = cm.point_metrics(np.zeros(4, dtype=int), P4, cm.Options())
    assert math.isnan(only["roc_auc_macro"])
    assert cm.compute_metrics(np.zeros(4, dtype=int), P4, cm.Options(resamples=20))["roc_auc_macro"] is None


def test_a_thousand_resamples_give_intervals_for_every_metric() -> None:
    """Speed of this 150-image x 1000-resample case is measured by bench/bench_evaluate.py."""
    y, p = _noisy(150, 5, seed=2)
    metrics, per_class = cm.summarise(y, p, list("abcde"), cm.Options(top_k=3, resamples=1000))
    assert "top3_accuracy_ci_high" in metrics and "recall_ci_low" in per_class[0]
    for row in (metrics, *per_class):
        for name in [k.removesuffix("_ci_low") for k in row if k.endswith("_ci_low")]:
            assert row[f"{name}_ci_low"] <= row[name] <= row[f"{name}_ci_high"], name


def test_curves_and_reliability_rows() -> None:
    y, p = _noisy(80, 3, seed=4)
    rows = cm.curves(y, p, ["a", "b", "c"], max_points=50)
    assert {r["class"] for r in rows["roc"]} == {"a", "b", "c"}
    assert all(set(r) == {"class", "fpr", "tpr"} for r in rows["roc"])
    assert all(set(r) == {"class", "recall", "precision"} for r in rows["pr_curve"])
    assert all(set(r) == {"class", "confidence", "f1"} for r in rows["f1_confidence"])
    assert max(sum(r["class"] == c for r in rows["pr_curve"]) for c in "abc") <= 50
    bins = cm.reliability(y, p, 10)
    assert sum(b["images"] for b in bins) == len(y)
    assert all(0 <= b["accuracy"] <= 1 and b["bin_low"] <= b["confidence"] <= b["bin_high"] for b in bins)


def test_no_resamples_gives_point_values_only() -> None:
    y, p = _noisy(30, 3, seed=6)
    metrics, per_class = cm.summarise(y, p, ["a", "b", "c"], cm.Options(resamples=0, top_k=2))
    assert metrics["accuracy"] == pytest.approx(cm.point_metrics(y, p, cm.Options())["accuracy"], abs=1e-6)
    assert not any(k.endswith(("_ci_low", "_ci_high")) for k in metrics)
    assert not any(k.endswith("_ci_low") for row in per_class for k in row)


def test_macro_metrics_average_over_the_classes_present_with_a_rare_class() -> None:
    """A rare class absent from a resample is left out of the macro mean, not counted as 0."""
    # 40 images of class 0, 40 of class 1, 2 of the rare class 2; a perfect classifier.
    y = np.array([0] * 40 + [1] * 40 + [2] * 2)
    p = np.full((len(y), 3), 0.05)
    p[np.arange(len(y)), y] = 0.9
    weights = cm.resample_weights(len(y), 400, seed=3)
    values, _ = cm.batched_metrics(weights, y, p, cm.Options())
    no_rare = weights[:, y == 2].sum(1) == 0
    assert no_rare.any() and (~no_rare).any()  # some resamples draw no image of class 2
    for name in ("precision_macro", "recall_macro", "f1_macro", "balanced_accuracy"):
        np.testing.assert_allclose(values[name], 1.0, err_msg=name)  # perfect in every resample
    metrics = cm.compute_metrics(y, p, cm.Options(resamples=400, seed=3))
    assert metrics["f1_macro_ci_low"] == metrics["f1_macro"] == 1.0  # the interval is not biased low
    # The point value drops a class absent from the split too (labels 0 and 1 only, 3 columns).
    two = cm.point_metrics(y[:80], p[:80], cm.Options())
    assert two["f1_macro"] == pytest.approx(1.0) and two["precision_macro"] == pytest.approx(1.0)
    # A mistake on the rare class still counts fully: its recall is 1/2 of one of three classes.
    wrong = p.copy()
    wrong[-1] = [0.9, 0.05, 0.05]
    m = cm.point_metrics(y, wrong, cm.Options())
    assert m["recall_macro"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["recall_macro"] == pytest.approx(m["balanced_accuracy"])
