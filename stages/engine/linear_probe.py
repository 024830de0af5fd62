"""A linear head trained on cached backbone features (``linear_probe`` and LP-FT's first phase)."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import nn

from stages.core.params import TrainSection
from stages.engine.callbacks import EpochCallback
from stages.engine.loop import EpochRecord, FitResult, epoch_metrics, monitor_score
from stages.engine.schedule import lr_factor

log = logging.getLogger("stages.train")


def fit_linear_head(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray | None,
    y_val: np.ndarray | None,
    num_classes: int,
    cfg: TrainSection,
    epochs: int,
    class_weight: torch.Tensor | None,
    seed: int,
    on_epoch: EpochCallback | None = None,
) -> FitResult:
    """Minibatch AdamW/SGD on a linear layer with the configured schedule; keep the best epoch.

    ``best_state`` holds ``weight`` and ``bias`` of the best epoch by ``cfg.monitor``.
    ``on_epoch(epoch, metrics)`` runs after every epoch; an exception it raises propagates.
    """
    generator = torch.Generator().manual_seed(seed)
    head = nn.Linear(x_train.shape[1], num_classes)
    with torch.no_grad():  # seeded init, independent of any global RNG state
        nn.init.normal_(head.weight, std=0.01, generator=generator)
        head.bias.zero_()
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(
            head.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay
        )
    else:
        optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss(weight=class_weight, label_smoothing=cfg.label_smoothing)
    # x_train stays where it is (the feature cache hands back a memory-mapped array): each step
    # gathers its rows, so memory holds one batch, not the whole training set.
    yt = torch.tensor(y_train)
    xv = torch.tensor(x_val, dtype=torch.float32) if x_val is not None and len(x_val) else None
    yv = torch.tensor(y_val) if xv is not None else None
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size)
    total_steps = epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)

    history: list[EpochRecord] = []
    best_score, best_epoch, best_state, stale = math.inf, 0, None, 0
    for epoch in range(epochs):
        head.train()
        order = torch.randperm(len(x_train), generator=generator)
        total = 0.0
        for step, start in enumerate(range(0, len(order), cfg.batch_size)):
            factor = lr_factor(epoch * steps_per_epoch + step, total_steps, warmup_steps, cfg.schedule)
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * factor
            batch = order[start : start + cfg.batch_size]
            rows = torch.from_numpy(np.asarray(x_train[batch.numpy()], dtype=np.float32))
            loss = loss_fn(head(rows), yt[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        val_loss = val_acc = None
        if xv is not None and yv is not None:
            head.eval()
            with torch.no_grad():
                logits = head(xv)
                val_loss = float(nn.functional.cross_entropy(logits, yv))
                val_acc = float((logits.argmax(1) == yv).float().mean())
        record = EpochRecord(
            epoch + 1,
            "linear_probe",
            total / len(order),
            val_loss,
            val_acc,
            optimizer.param_groups[0]["lr"],
            head.weight.numel() + head.bias.numel(),
        )
        history.append(record)
        score = monitor_score(record, cfg.monitor)
        if score < best_score:
            best_score, best_epoch, stale = score, epoch + 1, 0
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        else:
            stale += 1
        if on_epoch is not None:
            on_epoch(record.epoch, epoch_metrics(record))
        if xv is not None and stale >= cfg.patience:
            log.info("linear probe: early stopping at epoch %d (best %d)", epoch + 1, best_epoch)
            break
    assert best_state is not None
    return FitResult(history, best_state, best_epoch)
