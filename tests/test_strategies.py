"""Fine-tuning strategies do what they promise: which parameters move, which LR each group
gets, when blocks unfreeze, that frozen BatchNorm statistics stay put, and resume."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from stages import augment, evaluate, ingest, split, train, validate
from stages.core.errors import UserError
from stages.core.layout import Layout
from stages.core.params import TrainSection
from stages.dataprep.torch_datasets import EpochSampler
from stages.engine import classifier, device, loop
from stages.engine.schedule import lr_factor, set_lrs
from stages.engine.strategies import (
    apply_freeze,
    body_block_count,
    param_groups,
    set_train_mode,
    trainable_blocks,
)
from stages.models.backbones import create_classifier, head_parameter_names, layer_ids
from tests.conftest import REPO_ROOT, fast_params


def _prepare(params) -> None:
    for stage in (ingest, validate, split, augment):
        stage.run(params)


def _state(params) -> dict[str, torch.Tensor]:
    return torch.load(Layout(params.paths).classifier, weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def pretrained() -> dict[str, torch.Tensor]:
    """The offline backbone's weights before any training (head excluded)."""
    return create_classifier("efficientnet_lite0", "offline", 2).model.state_dict()


def test_param_groups_give_head_body_and_layer_decay_lrs() -> None:
    model = create_classifier("efficientnet_lite0", "none", 3).model
    cfg = TrainSection(strategy="discriminative", lr=0.01, backbone_lr_mult=0.1, layer_decay=0.5)
    groups = param_groups(model, cfg)
    fine = layer_ids(model, coarse=False)
    head = head_parameter_names(model)
    top_body = max(fine[n] for n in fine if n not in head)
    for group in groups:
        for name in group["param_names"]:
            expected = 0.01 if name in head else 0.01 * 0.1 * 0.5 ** (top_body - fine[name])
            assert group["lr"] == pytest.approx(expected), name
        decays = {p.ndim <= 1 for p in group["params"]}
        assert len(decays) == 1  # a group never mixes decayed and non-decayed tensors
        assert group["weight_decay"] == (0.0 if decays.pop() else cfg.weight_decay)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_discriminative_defaults_to_a_decay_and_full_has_none() -> None:
    model = create_classifier("efficientnet_lite0", "none", 2).model
    lrs = {
        s: sorted({g["lr"] for g in param_groups(model, TrainSection(strategy=s, lr=0.01))})
        for s in ("discriminative", "full")
    }
    assert len(lrs["full"]) == 2  # head lr and one body lr
    assert len(lrs["discriminative"]) > 10 and min(lrs["discriminative"]) < 0.001 * 0.7**10


def test_each_group_really_steps_with_its_own_lr() -> None:
    """A plain SGD step moves every parameter by exactly (its group's lr x factor) x grad."""
    model = create_classifier("efficientnet_lite0", "none", 2).model
    cfg = TrainSection(strategy="discriminative", lr=0.1, layer_decay=0.5, weight_decay=0.0)
    groups = param_groups(model, cfg)
    optimizer = torch.optim.SGD(groups, lr=123.0)  # the default must be ignored
    set_lrs(optimizer, 0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    optimizer.step()
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(group["initial_lr"] * 0.5)
        for name, parameter in zip(group["param_names"], group["params"], strict=True):
            if parameter.grad is None:
                continue
            expected = before[name] - group["lr"] * parameter.grad
            torch.testing.assert_close(parameter.detach(), expected, rtol=1e-5, atol=1e-7)


def test_schedule_warms_up_then_decays() -> None:
    factors = [lr_factor(s, 100, 10, "cosine") for s in range(100)]
    assert factors[0] < factors[5] < factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))
    assert factors[-1] < 0.05
    assert {lr_factor(s, 100, 0, "constant") for s in range(100)} == {1.0}
    onecycle = [lr_factor(s, 100, 0, "onecycle") for s in range(100)]
    assert max(range(100), key=onecycle.__getitem__) == 29  # peak after 30% warmup


def test_gradual_unfreezes_one_block_every_k_epochs() -> None:
    cfg = TrainSection(strategy="gradual", unfreeze_every=2)
    assert [trainable_blocks(cfg, e, 9) for e in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert trainable_blocks(TrainSection(strategy="partial", unfreeze_blocks=3), 0, 9) == 3
    assert trainable_blocks(TrainSection(strategy="full"), 0, 9) == 9
    assert trainable_blocks(TrainSection(strategy="linear_probe"), 5, 9) == 0


def test_freezing_keeps_frozen_batchnorm_statistics() -> None:
    model = create_classifier("efficientnet_lite0", "none", 2).model
    frozen = apply_freeze(model, 1)
    coarse = layer_ids(model, coarse=True)
    head = head_parameter_names(model)
    top = max(coarse[n] for n in coarse if n not in head)
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad == (name in head or coarse[name] == top), name
    set_train_mode(model, frozen)
    stem_bn = model.bn1
    assert not stem_bn.training and model.bn2.training
    mean = stem_bn.running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(stem_bn.running_mean, mean, rtol=0, atol=0)


def test_torchvision_models_get_the_same_surgery() -> None:
    backbone = create_classifier("torchvision/resnet18", "none", 3)
    model = backbone.model
    assert model.fc.out_features == 3 and head_parameter_names(model) == {"fc.weight", "fc.bias"}
    assert body_block_count(model) == 6  # conv1, bn1, layer1..layer4 (fc is the head)
    apply_freeze(model, 2)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"layer3", "layer4", "fc"}


def test_class_weights_match_scikit_learn_balanced_and_leave_absent_classes_at_one() -> None:
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0] * 7 + [2] * 3 + [3] * 1)
    weights = classifier.class_weights(y, 5)
    expected = compute_class_weight("balanced", classes=np.array([0, 2, 3]), y=y)
    assert weights.dtype == torch.float32
    np.testing.assert_array_equal(weights.numpy()[[0, 2, 3]], expected.astype(np.float32))
    assert weights[1] == 1 and weights[4] == 1  # classes without training images


def test_class_balanced_sampler_draws_minority_as_often() -> None:
    targets = torch.tensor([0] * 90 + [1] * 10)
    weights = classifier.class_weights(targets.numpy(), 2)[targets]
    sampler = EpochSampler(100, seed=0, weights=weights)
    drawn = torch.tensor([targets[i] for i, _ in sampler])
    assert 0.35 < drawn.float().mean() < 0.65
    sampler.set_epoch(1)
    assert [i for i, _ in sampler] != [i for i, _ in EpochSampler(100, seed=0, weights=weights)]


@pytest.mark.parametrize(
    ("strategy", "extra"),
    [("partial", {"unfreeze_blocks": 1}), ("full", {}), ("linear_probe", {})],
)
def test_which_parameters_move(tmp_path, classify_source, pretrained, strategy, extra) -> None:
    params = fast_params(
        tmp_path, classify_source, train={"strategy": strategy, "epochs": 2, "batch_size": 8, **extra}
    )
    _prepare(params)
    result = train.run(params)
    trained = _state(params)
    model = create_classifier("efficientnet_lite0", "none", 2).model
    coarse = layer_ids(model, coarse=True)
    head = head_parameter_names(model)
    top = max(coarse[n] for n in coarse if n not in head)
    moved = set()
    for name, _ in model.named_parameters():
        if name in head:
            continue
        should_train = strategy == "full" or (strategy == "partial" and coarse[name] == top)
        if not should_train:
            assert torch.equal(trained[name], pretrained[name]), f"frozen {name} moved"
        elif not torch.equal(trained[name], pretrained[name]):
            moved.add(coarse[name])
    expected_blocks = {"full": set(coarse[n] for n in coarse if n not in head), "partial": {top}}
    assert moved == expected_blocks.get(strategy, set())
    # frozen BatchNorm statistics (stem) never move; trained ones do under "full"
    stem_mean_changed = not torch.equal(trained["bn1.running_mean"], pretrained["bn1.running_mean"])
    assert stem_mean_changed == (strategy == "full")
    expected_trainable = {"linear_probe": 1280 * 2 + 2}.get(strategy)
    if expected_trainable:
        assert result.trainable_params == expected_trainable


def test_lp_ft_runs_the_probe_from_the_cache_then_fine_tunes(tmp_path, classify_source, monkeypatch) -> None:
    params = fast_params(
        tmp_path, classify_source, train={"strategy": "lp_ft", "lp_epochs": 3, "epochs": 2, "batch_size": 8}
    )
    _prepare(params)
    first = train.run(params)
    history = json.loads((Layout(params.paths).train_log_dir / "metrics.json").read_text())
    assert first.features_computed > 0 and first.epochs_run == 5
    assert history["step"] == 4
    trained = _state(params)
    saved_epochs: list[int] = []
    real_save = loop._save_state
    monkeypatch.setattr(loop, "_save_state", lambda *a: saved_epochs.append(a[8]) or real_save(*a))
    again = train.run(params)  # finished run is reused, features come from the cache
    assert again.features_computed == 0
    assert saved_epochs == []  # no fine-tuning epoch ran again
    assert again.epochs_run == first.epochs_run and again.best_epoch == first.best_epoch
    rerun = _state(params)
    assert rerun.keys() == trained.keys()
    for name in trained:
        assert torch.equal(rerun[name], trained[name]), name


def test_cuda_device_without_gpu_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(UserError, match="no CUDA GPU"):
        device.resolve_device("cuda:0")


def _write_params(tmp_path: Path, source: Path, **train_overrides) -> Path:
    params = fast_params(
        tmp_path,
        source,
        train={"strategy": "full", "epochs": 4, "batch_size": 4, "patience": 10, **train_overrides},
    )
    file = tmp_path / "params.yaml"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(yaml.safe_dump(params.model_dump(mode="json", by_alias=True)), encoding="utf-8")
    _prepare(params)
    return file


def _train_cli(params_file: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "stages.train", "--params", str(params_file)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@pytest.mark.slow
def test_kill_9_then_rerun_resumes_and_matches_an_uninterrupted_run(tmp_path, classify_source) -> None:
    interrupted = _write_params(tmp_path / "a", classify_source)
    process = _train_cli(interrupted)
    runs = Path(yaml.safe_load(interrupted.read_text())["paths"]["cache"]) / "runs"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # wait until at least one epoch is checkpointed
        states = list(runs.glob("*/last.pt"))
        if states and torch.load(states[0], weights_only=True)["epoch"] >= 1:
            break
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    saved_epoch = torch.load(states[0], weights_only=True)["epoch"]
    assert 1 <= saved_epoch < 4, "the run finished before it could be killed"

    resumed = _train_cli(interrupted)
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    assert f"resuming from epoch {saved_epoch + 1}" in output

    uninterrupted = _write_params(tmp_path / "b", classify_source)
    reference = _train_cli(uninterrupted)
    reference.communicate(timeout=600)
    a = torch.load(
        Path(yaml.safe_load(interrupted.read_text())["paths"]["models"]) / "classifier.pt", weights_only=True
    )["state_dict"]
    b = torch.load(
        Path(yaml.safe_load(uninterrupted.read_text())["paths"]["models"]) / "classifier.pt",
        weights_only=True,
    )["state_dict"]
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_two_cpu_runs_give_bit_identical_metrics(tmp_path, classify_source) -> None:
    metrics = []
    for run_dir in ("one", "two"):
        params = fast_params(
            tmp_path / run_dir, classify_source, train={"strategy": "gradual", "epochs": 2, "batch_size": 8}
        )
        _prepare(params)
        train.run(params)
        evaluate.run(params)
        metrics.append(Layout(params.paths).metrics.read_bytes())
    assert metrics[0] == metrics[1]
