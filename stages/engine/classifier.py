"""Fine-tune a pretrained classifier with a named strategy (the ``train`` stage's classify path).

- ``linear_probe``: the backbone stays frozen; its features are computed once per image
  (clean view plus ``aug_views`` augmented views of each training image), cached on disk,
  and a new head trains on the cache.
- ``partial`` / ``full`` / ``gradual`` / ``discriminative``: end-to-end training with the
  augmentation policy applied on the fly to training images only (``stages/engine/loop.py``).
- ``lp_ft``: a linear probe from the cache, then full fine-tuning from that head.
``data.task: detect`` goes to the YOLO detector trainer (``stages/engine/yolo/trainer.py``).

As one rank of several (``train.distributed``): rank 0 fills the feature cache and fits the probe
while the others wait (DDP then hands its head to them), and only rank 0 writes anything.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from stages.core import locks
from stages.core.contracts import read_classes, read_parquet
from stages.core.errors import UserError
from stages.core.layout import Layout
from stages.core.params import Params, TrainSection
from stages.dataprep.augmentation import load_policy
from stages.dataprep.torch_datasets import ImageDataset
from stages.engine import distributed
from stages.engine.callbacks import EpochCallback
from stages.engine.device import resolve_device, seed_everything
from stages.engine.history import log_history
from stages.engine.linear_probe import fit_linear_head
from stages.engine.loop import EpochRecord, fine_tune
from stages.engine.strategies import group_table, param_groups
from stages.models.backbones import create_classifier, head_module
from stages.models.checkpoints import save_checkpoint
from stages.models.feature_cache import FeatureCache, FeatureRequest
from stages.models.fingerprints import classifier_code_digest, run_fingerprint

FEATURE_STRATEGIES = {"linear_probe", "lp_ft"}

log = logging.getLogger("stages.train")


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path
    best_epoch: int
    epochs_run: int
    best_val_accuracy: float | None
    features_computed: int
    trainable_params: int

    def __str__(self) -> str:
        acc = "n/a" if self.best_val_accuracy is None else f"{self.best_val_accuracy:.3f}"
        return (
            f"best epoch {self.best_epoch}/{self.epochs_run}, val accuracy {acc}, "
            f"{self.trainable_params:,} trainable parameters, "
            f"{self.features_computed} feature vectors computed -> {self.checkpoint}"
        )


def train_classifier(params: Params, on_epoch: EpochCallback | None = None) -> TrainResult:
    """Train on the train split, select on val, and save ``models/classifier.pt``."""
    result = train_rank(params, on_epoch)
    if result is None:
        raise RuntimeError("train_classifier ran as a rank other than 0; use train_rank")
    return result


def train_rank(params: Params, on_epoch: EpochCallback | None = None) -> TrainResult | None:
    """``train_classifier`` as one rank of a process group (or alone); None on ranks other than 0,
    which train their shard but write nothing."""
    main = distributed.is_main()
    cfg, seed = params.train, params.base.seed
    seed_everything(seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    layout = Layout(params.paths)
    classes = read_classes(layout.classes)
    frame = read_parquet(layout.manifest).merge(
        read_parquet(layout.splits), on="image_id", suffixes=("_source", "")
    )
    train_rows = frame[frame["split"] == "train"].sort_values("image_id")
    val_rows = frame[frame["split"] == "val"].sort_values("image_id")
    if train_rows.empty:
        raise UserError("the train split is empty; check split.fractions and the split audit.")
    device = distributed.rank_device(resolve_device(cfg.device))
    backbone = create_classifier(cfg.backbone, cfg.weights, len(classes), cfg.image_size)
    policy = load_policy(layout.augment_policy)
    y_train = _targets(train_rows, classes)
    class_weight = class_weights(y_train, len(classes)) if cfg.imbalance == "loss" else None

    history: list[EpochRecord] = []
    features_computed = 0
    best_epoch = 0  # set by the probe, the fine-tuning, or both (every strategy runs at least one)
    if cfg.strategy in FEATURE_STRATEGIES and main:
        if distributed.world_size() > 1:
            log.info("lp_ft: rank 0 fills the feature cache and fits the probe; the other ranks wait")
        cache = FeatureCache(
            layout.feature_cache, backbone, cfg.backbone, policy if cfg.aug_views else None, seed
        )
        epochs = cfg.epochs if cfg.strategy == "linear_probe" else cfg.lp_epochs
        probe = _linear_probe(
            cache, train_rows, val_rows, classes, params, device, class_weight, epochs, on_epoch
        )
        features_computed = cache.computed
        head = head_module(backbone.model)
        with torch.no_grad():
            head.weight.copy_(probe.best_state["weight"])
            head.bias.copy_(probe.best_state["bias"])
        history += probe.history
        best_epoch = probe.best_epoch
    distributed.barrier()  # the other ranks wait for the probe (DDP copies rank 0's head to them)
    if cfg.strategy != "linear_probe":
        root = params.data.source
        train_set = ImageDataset(train_rows, root, classes, backbone.preprocessing, policy, seed)
        val_set = ImageDataset(val_rows, root, classes, backbone.preprocessing) if len(val_rows) else None
        sample_weights = None
        if cfg.imbalance == "sampler":
            sample_weights = class_weights(y_train, len(classes))[torch.from_numpy(y_train)]
        state_file = (
            layout.paths.cache / "runs" / run_fingerprint(params, frame, backbone, policy) / "last.pt"
        )
        offset = len(history)  # lp_ft: fine-tuning epochs continue the probe's numbering
        # One writer per fingerprint: a second process (an Optuna worker, tune next to `dvc repro`)
        # waits, then resumes or reuses the finished state instead of interleaving its epochs.
        # Under DDP rank 0 holds it for the whole group (the others would wait for it forever).
        run_lock = state_file.parent / "run.lock"
        hold = locks.held(run_lock, None, f"training run {state_file.parent.name}") if main else nullcontext()
        with hold:
            fit = fine_tune(
                backbone.model,
                train_set,
                val_set,
                cfg,
                seed,
                device,
                state_file,
                class_weight,
                sample_weights,
                phase=cfg.strategy,
                on_epoch=None if on_epoch is None else lambda epoch, m: on_epoch(epoch + offset, m),
            )
        backbone.model.load_state_dict(fit.best_state)
        history += [EpochRecord(**{**asdict(r), "epoch": r.epoch + offset}) for r in fit.history]
        best_epoch = fit.best_epoch + offset
    if not main:
        return None

    backbone.model.cpu()
    log_history(history, layout.train_log_dir, _run_summary(backbone.model, cfg))
    meta = {
        "task": "classify",
        "backbone": cfg.backbone,
        "strategy": cfg.strategy,
        "classes": classes,
        "preprocessing": backbone.preprocessing.as_dict(),
        "weights_id": backbone.weights_id,
        "best_epoch": best_epoch,
        "seed": seed,
        "code_digest": classifier_code_digest(),  # the training code (and library versions) behind it
    }
    save_checkpoint(backbone.model, meta, layout.classifier)
    best = history[best_epoch - 1]
    trainable = best.trainable_params
    return TrainResult(
        layout.classifier, best_epoch, len(history), best.val_accuracy, features_computed, trainable
    )


def _linear_probe(
    cache: FeatureCache,
    train_rows: pd.DataFrame,
    val_rows: pd.DataFrame,
    classes: list[str],
    params: Params,
    device: torch.device,
    class_weight: torch.Tensor | None,
    epochs: int,
    on_epoch: EpochCallback | None = None,
):
    cfg = params.train
    views = range(cfg.aug_views + 1)
    x_train = cache.get(
        _requests(train_rows, params.data.source, views),
        device,
        cfg.feature_batch_size,
        "train: train features",
    )
    y_train = np.repeat(_targets(train_rows, classes), len(views))
    x_val = y_val = None
    if not val_rows.empty:
        x_val = cache.get(
            _requests(val_rows, params.data.source, [0]),
            device,
            cfg.feature_batch_size,
            "train: val features",
        )
        y_val = _targets(val_rows, classes)
    if cfg.imbalance == "sampler":  # a linear probe has no sampler: weight the loss instead
        class_weight = class_weights(y_train, len(classes))
    return fit_linear_head(
        x_train, y_train, x_val, y_val, len(classes), cfg, epochs, class_weight, params.base.seed, on_epoch
    )


def _requests(rows: pd.DataFrame, root: Path, views) -> list[FeatureRequest]:
    return [
        FeatureRequest(root / path, sha, view)
        for path, sha in zip(rows["path"], rows["sha256"], strict=True)
        for view in views
    ]


def _targets(rows: pd.DataFrame, classes: list[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(classes)}
    return rows["label"].map(index).to_numpy(dtype=np.int64)


def class_weights(y: np.ndarray, num_classes: int) -> torch.Tensor:
    """n_samples / (n_classes * n_class_samples) per class present (scikit-learn's 'balanced').

    Written out in NumPy: importing scikit-learn for one line cost the train stage seconds.
    """
    counts = np.bincount(y, minlength=num_classes)
    present = np.flatnonzero(counts)
    weights = np.ones(num_classes, dtype=np.float32)
    weights[present] = len(y) / (len(present) * counts[present].astype(np.float64))
    return torch.from_numpy(weights)


def _run_summary(model: nn.Module, cfg: TrainSection) -> dict:
    groups = group_table(param_groups(model, cfg)) if cfg.strategy not in ("linear_probe",) else []
    return {
        "strategy": cfg.strategy,
        "total_params": sum(p.numel() for p in model.parameters()),
        "param_groups": [asdict(g) for g in groups],
    }
