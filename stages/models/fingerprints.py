"""Run fingerprints: what identifies a training run, so a cache can resume or reuse it.

A fingerprint holds the params, data, weights, augmentation policy and the digest of the
code that trains (``stages.core.codebase.code_digest``): edit the training loop and the next
``train`` trains again instead of handing back the model the old code made.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from stages.core import codebase
from stages.core.params import Params
from stages.dataprep.augmentation import VIEW_SEEDING_VERSION

if TYPE_CHECKING:
    import pandas as pd

    from stages.models.backbones import Backbone

# The module that trains a classifier; its import closure (loop, strategies, schedules, datasets,
# augmentation, backbones, feature cache...) is the code a finished run's weights depend on.
CLASSIFIER_CODE = ("stages.engine.classifier",)


def classifier_code_digest() -> str:
    """Digest of the classifier-training code and the numeric libraries' versions."""
    return codebase.code_digest(*CLASSIFIER_CODE)


def run_fingerprint(params: Params, frame: pd.DataFrame, backbone: Backbone, policy) -> str:
    """Identifies a training run: same fingerprint, same run (resume it or reuse its result)."""
    import albumentations as A

    data = frame[frame["split"].isin(["train", "val"])].sort_values("image_id")
    spec = {
        # How the run executes, not what it computes: device, workers, threads, and the DDP process
        # count (the global batch is the same; a 1-process checkpoint resumes under 2 and back).
        "train": params.train.model_dump(
            mode="json",
            exclude={"device", "num_workers", "threads", "feature_batch_size", "distributed"},
        ),
        "seed": params.base.seed,
        "weights": backbone.weights_id,
        "preprocessing": backbone.preprocessing.as_dict(),
        "policy": A.to_dict(policy),
        "view_seeding": VIEW_SEEDING_VERSION,
        "data": list(zip(data["sha256"], data["label"].astype(str), data["split"], strict=True)),
        "code": classifier_code_digest(),
    }
    text = json.dumps(spec, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
