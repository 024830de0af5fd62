"""Stage ``train``: fine-tune a pretrained classifier with a named strategy.

- ``linear_probe``: the backbone stays frozen; its features are computed once per image
  (clean view plus ``aug_views`` augmented views of each training image), cached on disk,
  and a new head trains on the cache.
- ``partial`` / ``full`` / ``gradual`` / ``discriminative``: end-to-end training with the
  augmentation policy applied on the fly to training images only (``stages/loop.py``).
- ``lp_ft``: a linear probe from the cache, then full fine-tuning from that head.
``data.task: detect`` goes to the YOLO detector trainer (``stages/yolo_train.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from stages.augment import VIEW_SEEDING_VERSION, load_policy
from stages.backbones import Backbone, create_classifier, head_module
from stages.cli import exit_with
from stages.datasets import ImageDataset
from stages.errors import UserError
from stages.features import FeatureCache, FeatureRequest
from stages.finetune import group_table, param_groups
from stages.layout import Layout
from stages.linear_probe import fit_linear_head
from stages.loop import EpochCallback, EpochRecord, fine_tune
from stages.manifest import read_classes, read_parquet
from stages.params import Params, TrainSection

log = logging.getLogger("stages.train")
STAGE = "train"
FEATURE_STRATEGIES = {"linear_probe", "lp_ft"}


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


def run(params: Params, on_epoch: EpochCallback | None = None) -> TrainResult:
    """Train on the train split, select on val, and save ``models/classifier.pt``."""
    if params.data.task == "detect":  # the YOLO trainer (ultralytics stays behind stages/yolo_*.py)
        from stages.yolo_train import run_detector

        return run_detector(params, on_epoch)
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
    device = resolve_device(cfg.device)
    backbone = create_classifier(cfg.backbone, cfg.weights, len(classes), cfg.image_size)
    policy = load_policy(layout.augment_policy)
    y_train = _targets(train_rows, classes)
    class_weight = class_weights(y_train, len(classes)) if cfg.imbalance == "loss" else None

    history: list[EpochRecord] = []
    features_computed = 0
    if cfg.strategy in FEATURE_STRATEGIES:
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
            on_epoch=None if on_epoch is None else lambda epoch, metrics: on_epoch(epoch + offset, metrics),
        )
        backbone.model.load_state_dict(fit.best_state)
        history += [EpochRecord(**{**asdict(r), "epoch": r.epoch + offset}) for r in fit.history]
        best_epoch = fit.best_epoch + offset

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


def run_fingerprint(params: Params, frame: pd.DataFrame, backbone: Backbone, policy) -> str:
    """Identifies a training run: same fingerprint, same run (resume it or reuse its result)."""
    import albumentations as A

    data = frame[frame["split"].isin(["train", "val"])].sort_values("image_id")
    spec = {
        "train": params.train.model_dump(
            mode="json", exclude={"device", "num_workers", "threads", "feature_batch_size"}
        ),
        "seed": params.base.seed,
        "weights": backbone.weights_id,
        "preprocessing": backbone.preprocessing.as_dict(),
        "policy": A.to_dict(policy),
        "view_seeding": VIEW_SEEDING_VERSION,
        "data": list(zip(data["sha256"], data["label"].astype(str), data["split"], strict=True)),
    }
    text = json.dumps(spec, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
    """n_samples / (n_classes * n_class_samples) per class (scikit-learn's 'balanced')."""
    present = np.unique(y)
    weights = np.ones(num_classes, dtype=np.float32)
    weights[present] = compute_class_weight("balanced", classes=present, y=y)
    return torch.from_numpy(weights)


def _run_summary(model: nn.Module, cfg: TrainSection) -> dict:
    groups = group_table(param_groups(model, cfg)) if cfg.strategy not in ("linear_probe",) else []
    return {
        "strategy": cfg.strategy,
        "total_params": sum(p.numel() for p in model.parameters()),
        "param_groups": [asdict(g) for g in groups],
    }


def log_history(history: list[EpochRecord], directory: Path, summary: dict) -> None:
    """Per-epoch curves through DVCLive (plots are declared in dvc.yaml, hence dvcyaml=None)."""
    from dvclive import Live

    with Live(dir=str(directory), save_dvc_exp=False, dvcyaml=None) as live:
        for record in history:
            live.log_metric("train/loss", record.train_loss)
            live.log_metric("lr", record.lr)
            live.log_metric("trainable_params", record.trainable_params)
            if record.val_loss is not None:
                live.log_metric("val/loss", record.val_loss)
                live.log_metric("val/accuracy", record.val_accuracy)
            live.next_step()
    (directory / "run.json").write_text(
        json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )


def save_checkpoint(model: nn.Module, meta: dict, path: Path) -> None:
    """Tensors plus JSON metadata only, so loading works with ``weights_only=True``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "meta": json.dumps(meta, sort_keys=True)}, path)


def load_checkpoint(path: Path) -> tuple[Backbone, dict]:
    """Rebuild the trained classifier from ``save_checkpoint``'s file, offline."""
    from stages.backbones import Preprocessing

    payload = torch.load(path, map_location="cpu", weights_only=True)
    meta = json.loads(payload["meta"])
    built = create_classifier(meta["backbone"], "none", len(meta["classes"]))
    built.model.load_state_dict(payload["state_dict"])
    preprocessing = Preprocessing.from_dict(meta["preprocessing"])
    return Backbone(built.model.eval(), preprocessing, meta["weights_id"]), meta


def resolve_device(choice: str) -> torch.device:
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device is '{choice}' but no CUDA GPU is visible; use 'auto' or 'cpu'.")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch seeds; cuDNN benchmark off (its kernel choice is not seeded)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False


if __name__ == "__main__":
    exit_with(STAGE, run)
