"""The second opinion on a perceptual-hash pair: the backbone's own features.

On a fixed-camera export (one tripod, pieces moved between shots) every photo is within a few
hash bits of the next, so the hash clusters swallow the dataset. A re-encoded or resized copy
keeps its backbone features almost unchanged, while a moved piece changes them; with
``split.near_duplicates.confirm: embedding`` a hash pair stands only when the cosine similarity
of the two images' features reaches ``embedding_min_similarity`` (measured in
``docs/benchmarks.md``, "Fixed camera"). Features come from ``train.backbone`` through the
feature cache ``train`` shares (view 0, the clean image), so they are computed once per image.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pandas as pd

from stages.core.errors import UserError
from stages.core.layout import Layout
from stages.core.params import Params
from stages.dataprep.near_duplicates import pair_similarity

log = logging.getLogger("stages.split")

# rows (image_id, path, sha256) -> one feature vector per row, in order
Embed = Callable[[pd.DataFrame], np.ndarray]


def confirm_pairs(
    pairs: pd.DataFrame, manifest: pd.DataFrame, embed: Embed, min_similarity: float
) -> tuple[pd.DataFrame, dict]:
    """The hash pairs whose features are also near, with a ``similarity`` column, and a summary.

    Only images in some pair are embedded (sorted by image_id, so the request list and its cached
    set are the same on every run).
    """
    summary = {"hash_pairs": len(pairs), "confirmed": len(pairs), "min_similarity": min_similarity}
    if not len(pairs):
        return pairs.assign(similarity=pd.Series(dtype="float64")), summary | {"images_embedded": 0}
    ids = sorted(set(pairs["image_id_a"]) | set(pairs["image_id_b"]))
    rows = manifest.set_index(manifest["image_id"].astype("string")).loc[ids, ["path", "sha256"]]
    rows = rows.rename_axis("image_id").reset_index()
    features = np.asarray(embed(rows))
    position = pd.Series(np.arange(len(ids)), index=ids)
    similarity = pair_similarity(
        features, position[pairs["image_id_a"]].to_numpy(), position[pairs["image_id_b"]].to_numpy()
    )
    scored = pairs.assign(similarity=np.round(similarity, 6))
    kept = scored[similarity >= min_similarity].reset_index(drop=True)
    log.info(
        "embedding check: %d of %d hash pairs have feature similarity >= %g",
        len(kept),
        len(pairs),
        min_similarity,
    )
    return kept, summary | {"confirmed": len(kept), "images_embedded": len(ids)}


def backbone_embedder(params: Params) -> Embed:
    """Clean-view features of ``train.backbone`` (its weights and image size), from the feature cache."""

    def embed(rows: pd.DataFrame) -> np.ndarray:
        import torch

        from stages.models.backbones import create_classifier
        from stages.models.feature_cache import FeatureCache, FeatureRequest

        cfg = params.train
        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(
                f"train.device is '{cfg.device}' but no CUDA GPU is visible (split's embedding check "
                "uses it); use 'auto' or 'cpu'."
            )
        auto = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(auto if cfg.device == "auto" else cfg.device)
        backbone = create_classifier(cfg.backbone, cfg.weights, 2, cfg.image_size)
        root = Layout(params.paths).feature_cache
        cache = FeatureCache(root, backbone, cfg.backbone, None, params.base.seed)
        requests = [
            FeatureRequest(params.data.source / path, sha, 0)
            for path, sha in zip(rows["path"], rows["sha256"], strict=True)
        ]
        return np.asarray(cache.get(requests, device, cfg.feature_batch_size, "split: embedding check"))

    return embed
