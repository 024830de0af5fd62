"""Fine-tune a segmenter with a named strategy (the ``train`` stage's segment path).

The classifier's loop does the work (``stages/engine/loop.py``: warmup, schedules, early stopping,
per-epoch checkpoints, kill -9 resume); this module gives it a segmentation loss and a validation
pass that scores pixels. The strategies act on the encoder as on a classifier's body
(``stages/models/segmenters.py`` names decoder and segmentation head as the "head"):

- ``linear_probe``: encoder frozen, decoder and head train (end to end; no feature cache: the
  decoder reads every encoder level, not one pooled vector).
- ``partial`` / ``full`` / ``gradual`` / ``discriminative``: the encoder's top blocks, all of them,
  one more per ``unfreeze_every`` epochs, or all with layer-wise LR decay.
- ``lp_ft``: ``lp_epochs`` with the encoder frozen, then ``epochs`` of everything from the best of those.

Validation scores the val images at the training size: mIoU and pixel accuracy from their summed
pixel confusion (classes present in truth or prediction, as evaluate's metrics).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from stages.core import codebase, locks
from stages.core.contracts import read_classes, read_parquet
from stages.core.errors import UserError
from stages.core.layout import Layout
from stages.core.params import Params, SegmenterSection, TrainSection
from stages.dataprep.augmentation import load_policy
from stages.dataprep.segment_dataset import SegmentDataset
from stages.dataprep.semantic_masks import IGNORE_INDEX, MaskStore, segment_classes, shapes_digest
from stages.engine.callbacks import EpochCallback
from stages.engine.device import resolve_device, seed_everything
from stages.engine.history import log_history
from stages.engine.loop import EpochRecord, FitResult, LossFunction, ValScores, fine_tune
from stages.engine.strategies import group_table, param_groups
from stages.models.segmenters import create_segmenter, save_segmenter

log = logging.getLogger("stages.train")

SEGMENTER_CODE = ("stages.engine.segmentation.trainer",)


@dataclass(frozen=True)
class SegmentResult:
    checkpoint: Path
    best_epoch: int
    epochs_run: int
    best_val_miou: float | None
    trainable_params: int

    def __str__(self) -> str:
        miou = "n/a" if self.best_val_miou is None else f"{self.best_val_miou:.3f}"
        return (
            f"best epoch {self.best_epoch}/{self.epochs_run}, val mIoU {miou}, "
            f"{self.trainable_params:,} trainable parameters -> {self.checkpoint}"
        )


def segmenter_code_digest() -> str:
    """Digest of the segmentation-training code (its import closure) and the numeric libraries."""
    return codebase.code_digest(*SEGMENTER_CODE)


def train_segmenter(params: Params, on_epoch: EpochCallback | None = None) -> SegmentResult:
    """Train on the train split, select on val (``train.monitor``), save ``models/segmenter.pt``."""
    cfg, seg, seed = params.train, params.train.segmenter, params.base.seed
    seed_everything(seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    layout = Layout(params.paths)
    classes = segment_classes(read_classes(layout.classes))
    frame = read_parquet(layout.manifest).merge(
        read_parquet(layout.splits), on="image_id", suffixes=("_source", "")
    )
    train_rows = frame[frame["split"] == "train"].sort_values("image_id")
    val_rows = frame[frame["split"] == "val"].sort_values("image_id")
    if train_rows.empty:
        raise UserError("the train split is empty; check split.fractions and the split audit.")
    shapes = read_parquet(layout.shapes) if layout.shapes.is_file() else pd.DataFrame(columns=["image_id"])
    device = resolve_device(cfg.device)
    build = create_segmenter(cfg.backbone, cfg.weights, seg.decoder, len(classes), seg.image_size)
    model = build.model
    policy = load_policy(layout.augment_policy)
    store = MaskStore(layout.mask_cache, shapes, classes, seg.draw_order)
    mean, std = build.preprocessing["mean"], build.preprocessing["std"]
    root = params.data.source
    train_set = SegmentDataset(train_rows, root, store, seg.image_size, mean, std, policy, seed)
    val_set = SegmentDataset(val_rows, root, store, seg.image_size, mean, std) if len(val_rows) else None

    class_weight = sample_weights = None
    if cfg.imbalance != "none":
        counts, present = pixel_statistics(train_set, len(classes))
        weights = median_frequency_weights(counts)
        log.info("segment class weights: %s", dict(zip(classes, np.round(weights, 3).tolist(), strict=True)))
        if cfg.imbalance == "loss":
            class_weight = torch.from_numpy(weights)
        else:  # an image is drawn as often as its rarest class asks for
            sample_weights = torch.from_numpy((present * weights).max(axis=1).astype(np.float64))
    loss_fn = segmentation_loss(seg, cfg.label_smoothing, class_weight, device)
    validate = functools.partial(segment_scores, num_classes=len(classes))
    # DeepLabV3+'s image-pooling branch normalises one value per channel: a last batch of one fails.
    drop_last = seg.decoder == "deeplabv3plus" and len(train_set) % cfg.batch_size == 1
    if drop_last and len(train_set) == 1:
        raise UserError("train.segmenter.decoder deeplabv3plus needs at least 2 training images; use unet.")

    fingerprint = run_fingerprint(params, frame, store, build.weights_id, policy)
    run_dir = layout.paths.cache / "seg_runs" / fingerprint
    phases = [(cfg, "last.pt")]
    if cfg.strategy == "lp_ft":  # the decoder alone first, then everything from its best epoch
        probe = cfg.model_copy(update={"strategy": "linear_probe", "epochs": cfg.lp_epochs})
        phases.insert(0, (probe, "probe.pt"))
    history: list[EpochRecord] = []
    best_epoch = 0
    # One writer per fingerprint: a second process waits, then resumes or reuses the finished state.
    with locks.held(run_dir / "run.lock", None, f"segmentation run {run_dir.name}"):
        for phase_cfg, state_name in phases:
            offset = len(history)  # lp_ft: fine-tuning epochs continue the probe's numbering
            fit: FitResult = fine_tune(
                model,
                train_set,
                val_set,
                phase_cfg,
                seed,
                device,
                run_dir / state_name,
                sample_weights=sample_weights,
                phase=phase_cfg.strategy,
                on_epoch=None if on_epoch is None else _shifted(on_epoch, offset),
                loss_fn=loss_fn,
                validate=validate,
                drop_last=drop_last,
            )
            model.load_state_dict(fit.best_state)
            history += [EpochRecord(**{**asdict(r), "epoch": r.epoch + offset}) for r in fit.history]
            best_epoch = fit.best_epoch + offset

    model.cpu()
    log_history(history, layout.train_log_dir, _run_summary(model, cfg))
    meta = {
        "task": "segment",
        "backbone": cfg.backbone,
        "decoder": seg.decoder,
        "strategy": cfg.strategy,
        "classes": classes,
        "preprocessing": build.preprocessing,
        "weights_id": build.weights_id,
        "best_epoch": best_epoch,
        "seed": seed,
        "code_digest": segmenter_code_digest(),
        "draw_order": seg.draw_order,
        "ignore_index": IGNORE_INDEX,
    }
    save_segmenter(model, meta, layout.segmenter)
    best = history[best_epoch - 1]
    return SegmentResult(layout.segmenter, best_epoch, len(history), best.val_miou, best.trainable_params)


def _shifted(on_epoch: EpochCallback, offset: int) -> EpochCallback:
    return lambda epoch, metrics: on_epoch(epoch + offset, metrics)


def segmentation_loss(
    seg: SegmenterSection, label_smoothing: float, class_weight: torch.Tensor | None, device: torch.device
) -> LossFunction:
    """Pixel cross-entropy skipping ``IGNORE_INDEX`` (class-weighted when given), plus multiclass
    Dice x ``dice_weight`` for ``ce_dice``."""
    ce = nn.CrossEntropyLoss(
        weight=None if class_weight is None else class_weight.to(device),
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
    )
    if seg.loss == "ce":
        return lambda logits, targets: ce(logits.float(), targets)
    from segmentation_models_pytorch.losses import DiceLoss

    dice = DiceLoss("multiclass", ignore_index=IGNORE_INDEX)
    weight = seg.dice_weight
    return lambda logits, targets: ce(logits.float(), targets) + weight * dice(logits.float(), targets)


@torch.inference_mode()
def segment_scores(
    model: nn.Module, loader: DataLoader | None, device: torch.device, autocast: Any, num_classes: int
) -> ValScores:
    """Val loss (pixel cross-entropy, ignore skipped), pixel accuracy and mIoU at the training size."""
    if loader is None:
        return ValScores(None, None, None)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    cm = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        with autocast:
            logits = model(images).float()
        total += nn.functional.cross_entropy(
            logits, targets, ignore_index=IGNORE_INDEX, reduction="sum"
        ).item()
        keep = targets != IGNORE_INDEX
        count += int(keep.sum())
        cm += torch.bincount(targets[keep] * num_classes + logits.argmax(1)[keep], minlength=num_classes**2)
    model.train(was_training)
    if count == 0:
        return ValScores(None, None, None)
    miou, accuracy = miou_and_accuracy(cm.reshape(num_classes, num_classes).cpu().numpy())
    return ValScores(total / count, accuracy, miou)


def miou_and_accuracy(cm: np.ndarray) -> tuple[float | None, float]:
    """Mean IoU over the classes in truth or prediction, and pixel accuracy, of a pixel confusion
    (rows truth). The same definition as evaluate's (``stages.metrics.segmentation``), written out
    here so that editing the report's metrics does not change the trainer's code digest."""
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    present = union > 0
    miou = float((tp[present] / union[present]).mean()) if present.any() else None
    return miou, float(tp.sum() / max(cm.sum(), 1.0))


def pixel_statistics(dataset: SegmentDataset, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels per class over the (un-augmented) training masks, and per image which classes occur."""
    counts = np.zeros(num_classes, dtype=np.int64)
    present = np.zeros((len(dataset), num_classes), dtype=bool)
    for i in range(len(dataset)):
        target = dataset.target(i)
        labels = target[target != IGNORE_INDEX].ravel()
        image_counts = np.bincount(labels, minlength=num_classes)[:num_classes]
        counts += image_counts
        present[i] = image_counts > 0
    return counts, present


def median_frequency_weights(counts: np.ndarray) -> np.ndarray:
    """median(frequency) / frequency per class present (Eigen & Fergus); 1 for absent classes.

    Pixel counts span orders of magnitude (background against a small defect), so the
    'balanced' rule of the classifier would give a rare class weights in the hundreds; the
    median keeps the typical class at about 1.
    """
    weights = np.ones(len(counts), dtype=np.float32)
    present = counts > 0
    if present.any():
        frequency = counts[present] / counts[present].sum()
        weights[present] = np.median(frequency) / frequency
    return weights


def run_fingerprint(params: Params, frame: pd.DataFrame, store: MaskStore, weights_id: str, policy) -> str:
    """Identifies a training run: same fingerprint, same run (resume it or reuse its result)."""
    import albumentations as A

    data = frame[frame["split"].isin(["train", "val"])].sort_values("image_id")
    spec = {
        "train": params.train.model_dump(
            mode="json",
            exclude={"device", "num_workers", "threads", "feature_batch_size", "distributed", "detector"},
        ),
        "seed": params.base.seed,
        "weights": weights_id,
        "policy": A.to_dict(policy),
        "classes": store.classes,
        "data": [
            [sha, split, shapes_digest(store.shapes_of(image_id))]
            for image_id, sha, split in zip(data["image_id"], data["sha256"], data["split"], strict=True)
        ],
        "code": segmenter_code_digest(),
        "smp": metadata.version("segmentation-models-pytorch"),
    }
    text = json.dumps(spec, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _run_summary(model: nn.Module, cfg: TrainSection) -> dict:
    return {
        "task": "segment",
        "strategy": cfg.strategy,
        "decoder": cfg.segmenter.decoder,
        "total_params": sum(p.numel() for p in model.parameters()),
        "param_groups": [asdict(g) for g in group_table(param_groups(model, cfg))],
    }
