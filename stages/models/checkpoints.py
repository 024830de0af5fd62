"""The classifier checkpoint: tensors plus JSON metadata, loadable with ``weights_only=True``."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from stages.models.backbones import Backbone, create_classifier


def save_checkpoint(model: nn.Module, meta: dict, path: Path) -> None:
    """Tensors plus JSON metadata only, so loading works with ``weights_only=True``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "meta": json.dumps(meta, sort_keys=True)}, path)


def load_checkpoint(path: Path) -> tuple[Backbone, dict]:
    """Rebuild the trained classifier from ``save_checkpoint``'s file, offline."""
    from stages.models.backbones import Preprocessing

    payload = torch.load(path, map_location="cpu", weights_only=True)
    meta = json.loads(payload["meta"])
    built = create_classifier(meta["backbone"], "none", len(meta["classes"]))
    built.model.load_state_dict(payload["state_dict"])
    preprocessing = Preprocessing.from_dict(meta["preprocessing"])
    return Backbone(built.model.eval(), preprocessing, meta["weights_id"]), meta
