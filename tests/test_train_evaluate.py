"""Linear probe on the offline backbone, evaluation and the report, in-process on tiny data."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stages import augment, evaluate, ingest, report, split, train, validate
from stages.core.errors import UserError
from stages.core.layout import Layout
from stages.core.params import EvaluateSection
from stages.engine.inference import predict
from stages.metrics import classification
from stages.models import checkpoints, feature_cache
from stages.models.backbones import create_classifier, head_module
from tests.conftest import fast_params, tree_digest


def _prepare(params) -> None:
    for stage in (ingest, validate, split, augment):
        stage.run(params)


@pytest.fixture
def trained(tmp_path: Path, classify_source: Path):
    params = fast_params(tmp_path, classify_source)
    _prepare(params)
    result = train.run(params)
    return params, result


def test_linear_probe_learns_and_checkpoint_reloads(trained) -> None:
    params, result = trained
    layout = Layout(params.paths)
    assert result.best_val_accuracy is not None and result.best_val_accuracy >= 0.75
    model, meta = checkpoints.load_checkpoint(layout.classifier)
    assert meta["classes"] == ["cat", "dog"]
    assert meta["preprocessing"]["mean"] == [0.5, 0.5, 0.5]  # the offline weights' normalisation
    assert model.preprocessing.input_size == 64
    metrics = layout.train_log_dir / "metrics.json"
    assert metrics.is_file()


def test_features_are_cached_and_a_new_head_lr_does_not_touch_the_backbone(trained, tmp_path):
    params, first = trained
    # 2 classes x 12 images: train images x (1 clean + 1 augmented) + val images x 1.
    assert first.features_computed > 0
    again = train.run(params.model_copy(update={"train": params.train.model_copy(update={"lr": 0.003})}))
    assert again.features_computed == 0


def test_training_is_deterministic(trained, tmp_path: Path) -> None:
    params, _ = trained
    layout = Layout(params.paths)
    first = torch.load(layout.classifier, weights_only=True)["state_dict"]["classifier.weight"]
    train.run(params)
    second = torch.load(layout.classifier, weights_only=True)["state_dict"]["classifier.weight"]
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_evaluate_and_report(trained, classify_source: Path) -> None:
    params, _ = trained
    before = tree_digest(classify_source)
    result = evaluate.run(params)
    layout = Layout(params.paths)
    metrics = json.loads(layout.metrics.read_text())
    for name in ("accuracy", "precision_macro", "recall_macro", "f1_macro"):
        assert metrics[f"{name}_ci_low"] <= metrics[name] <= metrics[f"{name}_ci_high"]
    assert metrics["images"] == len(result.predictions) > 0
    assert set(result.predictions.columns) >= {"image_id", "label", "prediction", "score_cat"}
    np.testing.assert_allclose(result.predictions[["score_cat", "score_dog"]].sum(axis=1), 1, atol=1e-5)
    confusion = json.loads((layout.plots_dir / "confusion.json").read_text())
    assert len(confusion) == metrics["images"]

    report.run(params)
    text = layout.report.read_text()
    assert f"{metrics['accuracy']:.3f}" in text and "![confusion matrix]" in text
    assert (layout.figures_dir / "confusion_matrix.png").stat().st_size > 1000
    assert layout.report_html.is_file() and "data:image/png;base64," in layout.report_html.read_text()
    assert tree_digest(classify_source) == before


def test_bootstrap_interval_is_seeded_and_narrows_with_more_data() -> None:
    rng = np.random.default_rng(0)
    section = EvaluateSection(bootstrap=200)
    small_true = rng.integers(0, 2, 40)
    small_pred = np.where(rng.random(40) < 0.8, small_true, 1 - small_true)
    big_true = np.tile(small_true, 10)
    big_pred = np.tile(small_pred, 10)
    options = classification.Options(resamples=section.bootstrap, confidence=section.confidence, seed=3)
    small_scores, big_scores = np.eye(2)[small_pred] * 0.8 + 0.1, np.eye(2)[big_pred] * 0.8 + 0.1
    first = classification.compute_metrics(small_true, small_scores, options)
    assert first == classification.compute_metrics(small_true, small_scores, options)
    big = classification.compute_metrics(big_true, big_scores, options)
    width = lambda m: m["accuracy_ci_high"] - m["accuracy_ci_low"]  # noqa: E731
    assert width(big) < width(first)


def test_detection_task_before_its_inputs_exist_names_them(tmp_path, classify_source) -> None:
    """``data.task: detect`` goes to the detector trainer, which names the stages to run first."""
    params = fast_params(tmp_path, classify_source, data={"task": "detect"})
    with pytest.raises(UserError, match="the detector trainer reads the ingest, validate, split"):
        train.run(params)


def test_unknown_backbone_and_missing_offline_weights(tmp_path: Path) -> None:
    from stages.models.backbones import create_classifier

    with pytest.raises(UserError, match="not a timm model"):
        create_classifier("resnet_nonexistent", "none", 2)
    with pytest.raises(UserError, match="no bundled checkpoint"):
        create_classifier("resnet18", "offline", 2)
    with pytest.raises(UserError, match="existing file"):
        create_classifier("efficientnet_lite0", str(tmp_path / "missing.pt"), 2)


def test_predict_scores_what_the_head_sees_in_the_feature_cache(tmp_path, classify_source) -> None:
    """Evaluate must run the network exactly as the cache did (preprocessing and memory format),
    or a linear-probe head is scored on features it was not trained on."""
    backbone = create_classifier("efficientnet_lite0", "offline", 2, image_size=64)
    files = sorted(classify_source.rglob("*.png"))[:6]
    requests = [feature_cache.FeatureRequest(f, hashlib.sha256(f.read_bytes()).hexdigest(), 0) for f in files]
    cache = feature_cache.FeatureCache(tmp_path / "features", backbone, "efficientnet_lite0", None, 0)
    features = torch.from_numpy(
        np.array(cache.get(requests, torch.device("cpu"), 4, "test"))
    )  # a read-only memmap
    head = head_module(backbone.model)
    with torch.no_grad():  # a head with large weights, so a ~1e-5 change of the features shows
        head.weight.copy_(torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(0)))
        from_cache = torch.softmax(head(features), dim=1).numpy()
    served = predict(backbone, files, torch.device("cpu"), 4)
    # Measured: 0 when both run alike, 3e-6 when predict runs NCHW against channels_last features.
    np.testing.assert_allclose(served, from_cache, rtol=0, atol=5e-7)
    # The weights go back to the default layout, so fine-tuning after the probe trains as before.
    assert all(p.is_contiguous() for p in backbone.model.parameters())


def test_feature_cache_key_records_the_memory_format(monkeypatch) -> None:
    backbone = create_classifier("efficientnet_lite0", "offline", 2, image_size=64)
    key = feature_cache.model_key(backbone, "efficientnet_lite0")
    monkeypatch.setattr(feature_cache, "INFERENCE_MEMORY_FORMAT", torch.contiguous_format)
    assert feature_cache.model_key(backbone, "efficientnet_lite0") != key


def test_feature_cache_keeps_each_device_type_apart(tmp_path) -> None:
    """GPU kernels (TF32, bf16) change the low bits: a CUDA run must not reuse CPU vectors."""
    backbone = create_classifier("efficientnet_lite0", "offline", 2, image_size=64)
    cache = feature_cache.FeatureCache(tmp_path / "features", backbone, "efficientnet_lite0", None, 0)
    request = feature_cache.FeatureRequest(tmp_path / "x.png", "ab" * 32, 0)
    on_cpu, on_gpu = cache.path(request, torch.device("cpu")), cache.path(request, torch.device("cuda"))
    assert on_cpu != on_gpu and on_cpu.name == on_gpu.name
