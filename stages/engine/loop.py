"""The end-to-end fine-tuning loop (every strategy except the cached linear probe).

Checkpoints after every epoch (atomically), so a killed run resumes where it stopped and
a finished run is not redone. Everything random is derived from (seed, epoch), which makes
a resumed run bit-identical to an uninterrupted one on CPU.

Under torchrun (``train.distributed``, ``stages/engine/distributed.py``) every rank runs this loop
on its shard with ``batch_size / nproc`` images per step and the model under DDP; validation is
sharded and summed over ranks, so every rank takes the same early-stopping decision; only rank 0
writes the checkpoint. A killed rank stops the group; all ranks resume from the last checkpoint.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable, Sized
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from stages.core.params import TrainSection
from stages.dataprep.torch_datasets import EpochSampler, ImageDataset
from stages.engine import distributed
from stages.engine.callbacks import EpochCallback
from stages.engine.schedule import lr_factor, set_lrs
from stages.engine.strategies import (
    apply_freeze,
    body_block_count,
    param_groups,
    set_train_mode,
    trainable_blocks,
    trainable_parameter_count,
)
from stages.models.checkpoints import save_atomically

log = logging.getLogger("stages.train")


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    phase: str
    train_loss: float
    val_loss: float | None
    val_accuracy: float | None
    lr: float
    trainable_params: int
    val_miou: float | None = None  # segment: mean IoU over the val pixels


@dataclass(frozen=True)
class ValScores:
    """One validation pass: what ``EpochRecord`` and ``train.monitor`` read."""

    loss: float | None
    accuracy: float | None  # classify: image accuracy; segment: pixel accuracy
    miou: float | None = None


# (model, val loader or None, device, autocast context) -> the epoch's validation scores
Validator = Callable[[nn.Module, DataLoader | None, torch.device, Any], ValScores]
LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class FitResult:
    history: list[EpochRecord]
    best_state: dict[str, torch.Tensor]
    best_epoch: int


def monitor_score(record: EpochRecord, monitor: str) -> float:
    """Lower is better; without a val split the latest epoch wins. ``auto``: val mIoU where the
    validator measures it (segment), else val loss."""
    if record.val_loss is None:
        return -record.epoch
    if monitor == "auto":
        monitor = "val_miou" if record.val_miou is not None else "val_loss"
    if monitor == "val_miou":
        return -(record.val_miou or 0.0)
    return record.val_loss if monitor == "val_loss" else -(record.val_accuracy or 0.0)


def make_optimizer(groups: list[dict], cfg: TrainSection) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def fine_tune(
    model: nn.Module,
    train_set: ImageDataset | Dataset,
    val_set: ImageDataset | Dataset | None,
    cfg: TrainSection,
    seed: int,
    device: torch.device,
    state_file: Path,
    class_weight: torch.Tensor | None = None,
    sample_weights: torch.Tensor | None = None,
    phase: str = "finetune",
    on_epoch: EpochCallback | None = None,
    loss_fn: LossFunction | None = None,
    validate: Validator | None = None,
    drop_last: bool = False,
) -> FitResult:
    """Train ``model`` with ``cfg.strategy``; resume from ``state_file`` when it exists.

    The defaults train a classifier (cross-entropy with ``class_weight`` and label smoothing,
    scored by ``evaluate_loader``); the segmenter passes its own ``loss_fn`` (model output,
    targets -> loss) and ``validate``, and ``drop_last`` (a batch of one cannot pass a
    BatchNorm over pooled features in training mode).

    ``on_epoch(epoch, metrics)`` runs after each epoch's checkpoint is written (epochs restored on
    resume are reported first), so an exception it raises (a pruned trial) stops training with a
    consistent, resumable state on disk; the exception propagates.
    """
    on_cuda = device.type == "cuda"
    model.to(device)
    if on_cuda:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(param_groups(model, cfg), cfg)
    if loss_fn is None:
        loss_fn = nn.CrossEntropyLoss(
            weight=class_weight.to(device) if class_weight is not None else None,
            label_smoothing=cfg.label_smoothing,
        )
    validate = validate or classifier_scores
    rank, world = distributed.rank(), distributed.world_size()
    main = rank == 0
    batch_size = cfg.batch_size // world  # the params refuse a batch_size nproc does not divide
    sampler = EpochSampler(len(cast(Sized, train_set)), seed, sample_weights, rank, world)
    loader_options = {
        "num_workers": cfg.num_workers,
        "pin_memory": on_cuda,
        "persistent_workers": cfg.num_workers > 0,
    }
    train_loader = DataLoader(
        train_set, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **loader_options
    )
    val_loader = (
        DataLoader(_val_shard(val_set, rank, world), batch_size=batch_size, shuffle=False, **loader_options)
        if val_set is not None and len(cast(Sized, val_set))
        else None
    )
    steps_per_epoch = len(train_loader)  # ceil(ceil(n / world) / (B / world)) = ceil(n / B)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    num_blocks = body_block_count(model)
    autocast = _autocast(device, cfg.amp)

    history: list[EpochRecord] = []
    best_state: dict[str, torch.Tensor] = _cpu_state(model)
    best_epoch, best_score, stale, start_epoch = 0, math.inf, 0, 0
    saved = _load_state_in_turn(state_file, model, optimizer)
    if saved is not None:
        history = [EpochRecord(**r) for r in saved["history"]]
        best_state, best_epoch, best_score = saved["best_state"], saved["best_epoch"], saved["best_score"]
        stale, start_epoch = saved["stale"], saved["epoch"]
        for restored in history:  # a resumed run reports the epochs it restored, in order
            _report(on_epoch, restored)
        if saved["finished"]:
            log.info("%s: finished run found in %s, not training again", phase, state_file)
            return FitResult(history, best_state, best_epoch)
        log.info("%s: resuming from epoch %d (%s)", phase, start_epoch + 1, state_file)

    finished = start_epoch >= cfg.epochs
    net, wrapped_for = model, None
    for epoch in range(start_epoch, cfg.epochs):
        started = time.perf_counter()
        # dropout / drop-path: same per epoch on resume; each rank draws its own masks
        torch.manual_seed(seed * 1000 + epoch + 1_000_003 * rank)
        frozen = apply_freeze(model, trainable_blocks(cfg, epoch, num_blocks))
        if frozen != wrapped_for:  # DDP covers the parameters that train when it is built
            net, wrapped_for = distributed.wrap(model, device), frozen
        set_train_mode(model, frozen)
        sampler.set_epoch(epoch)
        total_loss, seen = 0.0, 0
        bar = tqdm(
            train_loader,
            desc=f"{phase} epoch {epoch + 1}/{cfg.epochs}",
            unit="batch",
            leave=False,
            disable=not main,
        )
        for step, (images, targets) in enumerate(bar):
            set_lrs(
                optimizer, lr_factor(epoch * steps_per_epoch + step, total_steps, warmup_steps, cfg.schedule)
            )
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            if on_cuda:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast:
                loss = loss_fn(net(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(targets)
            seen += len(targets)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}")
        total_loss, seen = distributed.all_sum([total_loss, seen])
        scores = validate(model, val_loader, device, autocast)
        record = EpochRecord(
            epoch=len(history) + 1,
            phase=phase,
            train_loss=total_loss / max(seen, 1),
            val_loss=scores.loss,
            val_accuracy=scores.accuracy,
            lr=optimizer.param_groups[-1]["lr"],
            trainable_params=trainable_parameter_count(model),
            val_miou=scores.miou,
        )
        history.append(record)
        score = monitor_score(record, cfg.monitor)
        if score < best_score:
            best_score, best_epoch, stale = score, record.epoch, 0
            best_state = _cpu_state(model)
        else:
            stale += 1
        finished = distributed.agree(
            epoch + 1 == cfg.epochs or (val_loader is not None and stale >= cfg.patience)
        )
        if main:
            _save_state(
                state_file,
                model,
                optimizer,
                history,
                best_state,
                best_epoch,
                best_score,
                stale,
                epoch + 1,
                finished,
            )
        log.info(
            "%s epoch %d: train loss %.4f, val loss %s, val acc %s%s, %d trainable, %.1f s",
            phase,
            record.epoch,
            record.train_loss,
            _fmt(scores.loss),
            _fmt(scores.accuracy),
            "" if scores.miou is None else f", val mIoU {scores.miou:.4f}",
            record.trainable_params,
            time.perf_counter() - started,
        )
        _report(on_epoch, record)
        if finished:
            if stale >= cfg.patience:
                log.info("%s: early stopping at epoch %d (best %d)", phase, record.epoch, best_epoch)
            break
    if not finished and main:  # epochs already reached on resume
        _save_state(
            state_file, model, optimizer, history, best_state, best_epoch, best_score, stale, cfg.epochs, True
        )
    return FitResult(history, best_state, best_epoch)


RESUME_KEYS = ("history", "best_state", "best_epoch", "best_score", "stale", "epoch", "finished")


def load_state(state_file: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict | None:
    """The saved training state, loaded into ``model`` and ``optimizer``; None when there is none.

    A file that cannot be read or does not fit (cut short, corrupted, another model's) is moved
    aside as ``last.pt.corrupt-<pid>`` with a warning and the run starts over: resuming is an
    optimisation, never a reason to fail. ``weights_only=True``: the file holds tensors only.
    """
    if not state_file.is_file():
        return None
    fresh_model, fresh_optimizer = _cpu_state(model), copy.deepcopy(optimizer.state_dict())
    try:
        saved = torch.load(state_file, map_location="cpu", weights_only=True)
        missing = {"model", "optimizer", *RESUME_KEYS} - set(saved)
        if missing:
            raise KeyError(f"no {', '.join(sorted(missing))}")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        return saved
    except Exception as exc:  # any failure to read or apply it: the file is not a usable state
        model.load_state_dict(fresh_model)  # a half-applied state must not leak into the new run
        optimizer.load_state_dict(fresh_optimizer)
        aside = state_file.with_name(f"{state_file.name}.corrupt-{os.getpid()}")
        os.replace(state_file, aside)
        log.warning(
            "%s could not be resumed (%s: %s); moved aside to %s, training starts over",
            state_file,
            type(exc).__name__,
            str(exc).splitlines()[0][:200] if str(exc) else "",
            aside.name,
        )
        return None


def _load_state_in_turn(state_file: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict | None:
    """``load_state`` on rank 0 first (it may move a bad file aside), then on the other ranks."""
    if distributed.is_main():
        saved = load_state(state_file, model, optimizer)
        distributed.barrier()
        return saved
    distributed.barrier()
    return load_state(state_file, model, optimizer)


def _val_shard(val_set: ImageDataset | Dataset, rank: int, world: int) -> ImageDataset | Dataset | Subset:
    """Every ``world``-th val image from ``rank``, unpadded: the ranks' sums add up to the whole set."""
    return val_set if world == 1 else Subset(val_set, range(rank, len(cast(Sized, val_set)), world))


def epoch_metrics(record: EpochRecord) -> dict[str, float]:
    """What ``on_epoch`` receives: train loss, plus val loss, accuracy (mIoU) given a val split."""
    metrics = {"train_loss": record.train_loss}
    if record.val_loss is not None:
        metrics["val_loss"] = record.val_loss
    if record.val_accuracy is not None:
        metrics["val_accuracy"] = record.val_accuracy
    if record.val_miou is not None:
        metrics["val_miou"] = record.val_miou
    return metrics


def _report(on_epoch: EpochCallback | None, record: EpochRecord) -> None:
    if on_epoch is not None:
        on_epoch(record.epoch, epoch_metrics(record))


def classifier_scores(
    model: nn.Module, loader: DataLoader | None, device: torch.device, autocast
) -> ValScores:
    """The default ``Validator``: val loss and accuracy of a classifier."""
    loss, accuracy = evaluate_loader(model, loader, device, autocast)
    return ValScores(loss, accuracy)


@torch.inference_mode()
def evaluate_loader(
    model: nn.Module, loader: DataLoader | None, device: torch.device, autocast
) -> tuple[float | None, float | None]:
    if loader is None:
        return None, None
    was_training = model.training
    model.eval()
    total, correct, count = 0.0, 0, 0
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        with autocast:
            logits = model(images).float()
        total += nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        correct += int((logits.argmax(1) == targets).sum())
        count += len(targets)
    model.train(was_training)
    total, correct, count = distributed.all_sum([total, correct, count])
    return total / count, correct / count


def _autocast(device: torch.device, enabled: bool):
    """bf16 autocast on GPUs that support it (no loss scaling needed); fp32 elsewhere."""
    if device.type != "cuda" or not enabled or not torch.cuda.is_bf16_supported(including_emulation=False):
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _save_state(
    path: Path, model, optimizer, history, best_state, best_epoch, best_score, stale, epoch, finished
) -> None:
    """Write the training state atomically: a kill -9 leaves the previous file intact, and the
    temporary name carries the process id, so two writers never share (or rename) one file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": _cpu_state(model),
        "optimizer": optimizer.state_dict(),
        "history": [asdict(r) for r in history],
        "best_state": best_state,
        "best_epoch": best_epoch,
        "best_score": float(best_score),
        "stale": stale,
        "epoch": epoch,
        "finished": finished,
    }
    save_atomically(payload, path)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
