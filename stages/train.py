"""Stage ``train``: fine-tune a pretrained classifier with a named strategy.

``linear_probe`` trains a new head on cached backbone features (clean view plus
``train.aug_views`` augmented views of each training image), with early stopping on the
validation loss. Other strategies (partial, full, gradual, discriminative, LP-FT) extend
``TrainSection.strategy`` and ``run``; the YOLO detector trainer joins at ``data.task: detect``.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from stages.augment import load_policy
from stages.backbones import Backbone, create_classifier
from stages.cli import exit_with
from stages.errors import UserError
from stages.features import FeatureCache, FeatureRequest
from stages.layout import Layout
from stages.manifest import read_classes, read_parquet
from stages.params import Params, TrainSection

log = logging.getLogger("stages.train")
STAGE = "train"


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    val_loss: float | None
    val_accuracy: float | None
    lr: float


@dataclass(frozen=True)
class HeadFit:
    weight: torch.Tensor
    bias: torch.Tensor
    history: list[EpochRecord]
    best_epoch: int


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path
    best_epoch: int
    epochs_run: int
    best_val_accuracy: float | None
    features_computed: int

    def __str__(self) -> str:
        acc = "n/a" if self.best_val_accuracy is None else f"{self.best_val_accuracy:.3f}"
        return (
            f"best epoch {self.best_epoch}/{self.epochs_run}, val accuracy {acc}, "
            f"{self.features_computed} feature vectors computed -> {self.checkpoint}"
        )


def run(params: Params) -> TrainResult:
    """Train on the train split, select on val, and save ``models/classifier.pt``."""
    if params.data.task != "classify":
        raise UserError(
            "data.task 'detect' needs the YOLO detector trainer, which this version does not have "
            "yet; set data.task: classify."
        )
    seed_everything(params.base.seed)
    layout = Layout(params.paths)
    classes = read_classes(layout.classes)
    frame = read_parquet(layout.manifest).merge(
        read_parquet(layout.splits), on="image_id", suffixes=("_source", "")
    )
    cfg = params.train
    device = resolve_device(cfg.device)
    backbone = create_classifier(cfg.backbone, cfg.weights, len(classes), cfg.image_size)
    policy = load_policy(layout.augment_policy) if cfg.aug_views else None
    cache = FeatureCache(layout.feature_cache, backbone, cfg.backbone, policy, params.base.seed)

    train_rows = frame[frame["split"] == "train"].sort_values("image_id")
    val_rows = frame[frame["split"] == "val"].sort_values("image_id")
    if train_rows.empty:
        raise UserError("the train split is empty; check split.fractions and the split audit.")
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

    weights = class_weights(y_train, len(classes), cfg.class_weights)
    fit = fit_linear_head(x_train, y_train, x_val, y_val, len(classes), cfg, weights, params.base.seed)
    head = backbone.model.get_classifier()
    with torch.no_grad():
        head.weight.copy_(fit.weight)
        head.bias.copy_(fit.bias)

    log_history(fit.history, layout.train_log_dir)
    meta = {
        "task": "classify",
        "backbone": cfg.backbone,
        "strategy": cfg.strategy,
        "classes": classes,
        "preprocessing": backbone.preprocessing.as_dict(),
        "weights_id": backbone.weights_id,
        "best_epoch": fit.best_epoch,
        "seed": params.base.seed,
    }
    save_checkpoint(backbone.model, meta, layout.classifier)
    best = fit.history[fit.best_epoch - 1].val_accuracy
    return TrainResult(layout.classifier, fit.best_epoch, len(fit.history), best, cache.computed)


def _requests(rows: pd.DataFrame, root: Path, views) -> list[FeatureRequest]:
    return [
        FeatureRequest(root / path, sha, view)
        for path, sha in zip(rows["path"], rows["sha256"], strict=True)
        for view in views
    ]


def _targets(rows: pd.DataFrame, classes: list[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(classes)}
    return rows["label"].map(index).to_numpy(dtype=np.int64)


def class_weights(y: np.ndarray, num_classes: int, mode: str) -> torch.Tensor | None:
    """``balanced``: weight each class by n_samples / (n_classes * n_class_samples) (sklearn)."""
    if mode == "none":
        return None
    present = np.unique(y)
    weights = np.ones(num_classes, dtype=np.float32)
    weights[present] = compute_class_weight("balanced", classes=present, y=y)
    return torch.from_numpy(weights)


def fit_linear_head(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray | None,
    y_val: np.ndarray | None,
    num_classes: int,
    cfg: TrainSection,
    class_weight: torch.Tensor | None,
    seed: int,
) -> HeadFit:
    """Minibatch AdamW on a linear layer with a cosine schedule; keep the best val-loss epoch."""
    generator = torch.Generator().manual_seed(seed)
    head = nn.Linear(x_train.shape[1], num_classes)
    with torch.no_grad():  # seeded init, independent of any global RNG state
        nn.init.normal_(head.weight, std=0.01, generator=generator)
        head.bias.zero_()
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    loss_fn = nn.CrossEntropyLoss(weight=class_weight, label_smoothing=cfg.label_smoothing)
    xt, yt = torch.tensor(x_train, dtype=torch.float32), torch.tensor(y_train)
    xv = torch.tensor(x_val, dtype=torch.float32) if x_val is not None else None
    yv = torch.tensor(y_val) if y_val is not None else None

    history: list[EpochRecord] = []
    best_loss, best_epoch, best_state, stale = float("inf"), 0, None, 0
    for epoch in range(1, cfg.epochs + 1):
        head.train()
        order = torch.randperm(len(xt), generator=generator)
        total = 0.0
        for start in range(0, len(order), cfg.batch_size):
            batch = order[start : start + cfg.batch_size]
            loss = loss_fn(head(xt[batch]), yt[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        val_loss = val_acc = None
        if xv is not None:
            head.eval()
            with torch.no_grad():
                logits = head(xv)
                val_loss = float(nn.functional.cross_entropy(logits, yv))
                val_acc = float((logits.argmax(1) == yv).float().mean())
        history.append(EpochRecord(epoch, total / len(order), val_loss, val_acc, lr))
        score = val_loss if val_loss is not None else -epoch  # no val: keep the last epoch
        if score < best_loss:
            best_loss, best_epoch, stale = score, epoch, 0
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        else:
            stale += 1
            if xv is not None and stale >= cfg.patience:
                log.info("early stopping at epoch %d (best %d)", epoch, best_epoch)
                break
    assert best_state is not None
    return HeadFit(best_state["weight"], best_state["bias"], history, best_epoch)


def log_history(history: list[EpochRecord], directory: Path) -> None:
    """Per-epoch curves through DVCLive (plots are declared in dvc.yaml, hence dvcyaml=None)."""
    from dvclive import Live

    with Live(dir=str(directory), save_dvc_exp=False, dvcyaml=None) as live:
        for record in history:
            live.log_metric("train/loss", record.train_loss)
            live.log_metric("lr", record.lr, plot=True)
            if record.val_loss is not None:
                live.log_metric("val/loss", record.val_loss)
                live.log_metric("val/accuracy", record.val_accuracy)
            live.next_step()


def save_checkpoint(model: nn.Module, meta: dict, path: Path) -> None:
    """Tensors plus JSON metadata only, so loading works with ``weights_only=True``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "meta": json.dumps(meta, sort_keys=True)}, path)


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
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device is 'cuda' but no CUDA GPU is visible; use 'auto' or 'cpu'.")
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
