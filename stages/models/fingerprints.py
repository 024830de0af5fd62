"""Run fingerprints: what identifies a training run, so a cache can resume or reuse it."""

from __future__ import annotations

import hashlib
import json

import pandas as pd

from stages.core.params import Params
from stages.dataprep.augmentation import VIEW_SEEDING_VERSION
from stages.models.backbones import Backbone


def run_fingerprint(params: Params, frame: pd.DataFrame, backbone: Backbone, policy) -> str:
    """Identifies a training run: same fingerprint, same run (resume it or reuse its result)."""
    import albumentations as A

    data = frame[frame["split"].isin(["train", "val"])].sort_values("image_id")
    spec = {
        "train": params.train.model_dump(
            mode="json", exclude={"device", "num_workers", "threads", "feature_batch_size"}
        ),
        "seed": params.base.seed,
        "weights": backbone.weights_id,
        "preprocessing": backbone.preprocessing.as_dict(),
        "policy": A.to_dict(policy),
        "view_seeding": VIEW_SEEDING_VERSION,
        "data": list(zip(data["sha256"], data["label"].astype(str), data["split"], strict=True)),
    }
    text = json.dumps(spec, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
