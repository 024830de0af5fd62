"""The segmenter: a segmentation-models-pytorch decoder over a timm encoder, offline weights only.

The encoder is smp's timm universal encoder (``tu-<train.backbone>``) built with
``encoder_weights=None`` always: smp would otherwise download from the hub. ``offline`` copies
the package-bundled ImageNet state dict (the same file the classifier uses) into it by name.

The models group their parameters like a timm classifier (``group_matcher``: stem, then
``blocks.N``) and name their "head" (``head_parameter_names``: decoder and segmentation head), so
the fine-tuning strategies (``stages/engine/strategies.py``) freeze, unfreeze and set learning
rates on the encoder's blocks exactly as they do on a classifier's body.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch
from torch import nn

from stages.core.errors import UserError
from stages.models.backbones import OFFLINE_CHECKPOINTS, TORCHVISION_PREFIX, create_classifier
from stages.models.checkpoints import save_checkpoint

ENCODER_PREFIX = "encoder.model."


class _EncoderGroups:
    """timm-style layer grouping for an smp model whose encoder is a timm EfficientNet."""

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        # Unmatched names (decoder, segmentation head) fall into timm's last group: the "head".
        prefix = r"^encoder\.model\."
        return {
            "stem": prefix + r"(?:conv_stem|bn1)(?:\.|$)",
            "blocks": prefix + (r"blocks\.(\d+)" if coarse else r"blocks\.(\d+)\.(\d+)"),
        }

    def head_parameter_names(self) -> set[str]:
        """Everything outside the encoder trains as the new head (``linear_probe``: only these)."""
        assert isinstance(self, nn.Module)
        return {name for name, _ in self.named_parameters() if not name.startswith("encoder.")}


class UnetSegmenter(_EncoderGroups, smp.Unet):
    pass


class FpnSegmenter(_EncoderGroups, smp.FPN):
    pass


class DeepLabV3PlusSegmenter(_EncoderGroups, smp.DeepLabV3Plus):
    pass


DECODERS: dict[str, type[nn.Module]] = {
    "unet": UnetSegmenter,
    "fpn": FpnSegmenter,
    "deeplabv3plus": DeepLabV3PlusSegmenter,
}


@dataclass(frozen=True)
class SegmenterBuild:
    model: nn.Module
    preprocessing: dict[str, Any]  # {input_size, mean, std}: what segment_input needs
    weights_id: str  # identifies the encoder weights for run fingerprints


def create_segmenter(
    backbone: str, weights: str, decoder: str, num_classes: int, image_size: int
) -> SegmenterBuild:
    """Build ``decoder`` over the ``backbone`` encoder with ``num_classes`` outputs, offline.

    ``weights``: ``offline`` (the bundled ImageNet state dict into the encoder), ``none`` (random
    init), or a path: a state dict of the backbone (as for classifiers) or of a segmenter.
    """
    if backbone.startswith(TORCHVISION_PREFIX):
        raise UserError(
            f"train.backbone '{backbone}': segment needs a timm encoder (e.g. efficientnet_lite0); "
            "torchvision backbones are for classify."
        )
    if decoder not in DECODERS:
        raise UserError(f"train.segmenter.decoder '{decoder}' is not one of {', '.join(DECODERS)}.")
    if weights == "hub":
        raise UserError(
            "train.weights 'hub' is not offered for segment (smp would download); use offline, none or "
            "a local checkpoint path."
        )
    try:
        model = DECODERS[decoder](encoder_name=f"tu-{backbone}", encoder_weights=None, classes=num_classes)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise UserError(
                f"train.backbone '{backbone}' is not a timm model; list names with timm.list_models()."
            ) from None
        raise
    mean, std = _normalisation(backbone)
    if weights == "offline":
        if backbone not in OFFLINE_CHECKPOINTS:
            raise UserError(
                f"train.weights 'offline' has no bundled checkpoint for '{backbone}' (offline backbones: "
                f"{', '.join(sorted(OFFLINE_CHECKPOINTS))}); pick one of those, a local path, or none."
            )
        weights_id = _load_backbone_weights(model, backbone, "offline")
    elif weights == "none":
        weights_id = f"{backbone}:random"
    else:
        weights_id = _load_path(model, backbone, Path(weights))
    preprocessing = {"input_size": image_size, "mean": list(mean), "std": list(std)}
    return SegmenterBuild(model=model, preprocessing=preprocessing, weights_id=weights_id)


def encoder_of(model: nn.Module) -> nn.Module:
    """The timm feature network inside smp's universal encoder (keys as the classifier's body)."""
    return model.get_submodule(ENCODER_PREFIX.rstrip("."))


def _normalisation(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The offline checkpoints' own 0.5/0.5; timm's pretrained config for any other encoder."""
    if backbone in OFFLINE_CHECKPOINTS:
        checkpoint = OFFLINE_CHECKPOINTS[backbone]
        return checkpoint.mean, checkpoint.std
    import timm

    config = timm.get_pretrained_cfg(backbone)
    if config is None:
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    return tuple(config.mean), tuple(config.std)


def _load_backbone_weights(model: nn.Module, backbone: str, weights: str) -> str:
    """Build the classifier with ``weights`` (no head) and copy its body into the encoder by name."""
    source = create_classifier(backbone, weights, 0)
    encoder = encoder_of(model)
    missing, _unused = encoder.load_state_dict(source.model.state_dict(), strict=False)
    if missing:  # conv_head, bn2 (the classifier's top) are unused; nothing of the encoder may be missing
        raise UserError(
            f"the weights of '{backbone}' ({weights}) do not cover its segmentation encoder "
            f"({len(missing)} tensors missing, e.g. {missing[0]}); check train.backbone."
        )
    return source.weights_id


def _load_path(model: nn.Module, backbone: str, file: Path) -> str:
    """A segmenter's state dict (``encoder.model.*`` keys: every tensor whose shape fits), else a
    backbone checkpoint as the classifier loads it."""
    if not file.is_file():
        raise UserError(
            f"train.weights '{file}' is neither offline/none nor an existing file; give the path of a "
            "state-dict checkpoint."
        )
    source = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(source, dict) and "state_dict" in source:
        source = source["state_dict"]
    if not (isinstance(source, dict) and any(str(k).startswith(ENCODER_PREFIX) for k in source)):
        return _load_backbone_weights(model, backbone, str(file))
    target = model.state_dict()
    fitting = {k: v for k, v in source.items() if k in target and v.shape == target[k].shape}
    encoder_keys = {k for k in target if k.startswith(ENCODER_PREFIX)}
    if not encoder_keys <= set(fitting):
        raise UserError(
            f"{file}: its encoder tensors do not fit '{backbone}' ({len(encoder_keys - set(fitting))} "
            "missing or of another shape); check train.backbone."
        )
    model.load_state_dict(fitting, strict=False)
    from stages.core.hashing import sha256_file

    return f"{backbone}:{sha256_file(file)[:16]}"


def save_segmenter(model: nn.Module, meta: dict[str, Any], path: Path) -> None:
    """``models/segmenter.pt``: tensors plus JSON meta (``task: segment``), weights_only-loadable."""
    save_checkpoint(model, meta, path)


def load_segmenter(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained segmenter from its checkpoint, offline, in eval mode."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    meta = json.loads(payload["meta"])
    if meta.get("task") != "segment":
        raise UserError(f"{path} is not a segmenter checkpoint (task {meta.get('task')!r}); run train.")
    built = create_segmenter(
        meta["backbone"], "none", meta["decoder"], len(meta["classes"]), meta["preprocessing"]["input_size"]
    )
    built.model.load_state_dict(payload["state_dict"])
    return built.model.eval(), meta
