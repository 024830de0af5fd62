"""The classifier checkpoint: tensors plus JSON metadata, loadable with ``weights_only=True``.

Written under a temporary name carrying the process id, then renamed, so a reader never sees
half a file; its digest is recorded beside it (``stages.core.trust``) like every checkpoint the
project writes, so the flow can tell a run-cache entry it wrote from a replaced one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from stages.core.trust import record_trusted
from stages.models.backbones import Backbone, create_classifier


def save_atomically(payload: object, path: Path) -> None:
    """``torch.save`` under a per-process temporary name, then a rename: readers never see half a file.

    Saved through a file object: given a path, torch names the zip's inner folder after the file,
    so the pid in the temporary name would make the bytes differ on every run.
    """
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as handle:
        torch.save(payload, handle)
    os.replace(tmp, path)


def save_checkpoint(model: nn.Module, meta: dict, path: Path) -> None:
    """Tensors plus JSON metadata only, so loading works with ``weights_only=True``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_atomically({"state_dict": state, "meta": json.dumps(meta, sort_keys=True)}, path)
    record_trusted(path)


def load_checkpoint(path: Path) -> tuple[Backbone, dict]:
    """Rebuild the trained classifier from ``save_checkpoint``'s file, offline."""
    from stages.models.backbones import Preprocessing

    payload = torch.load(path, map_location="cpu", weights_only=True)
    meta = json.loads(payload["meta"])
    built = create_classifier(meta["backbone"], "none", len(meta["classes"]))
    built.model.load_state_dict(payload["state_dict"])
    preprocessing = Preprocessing.from_dict(meta["preprocessing"])
    return Backbone(built.model.eval(), preprocessing, meta["weights_id"]), meta
