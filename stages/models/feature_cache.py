"""Backbone features computed once per (image, view) and cached on disk.

The key holds everything that changes a feature vector: backbone, weights, preprocessing,
the code that computes it (this module's import closure: decoding, augmentation, backbones,
plus the numeric libraries' versions), image content, and for augmented views the policy and
the view's seed. A rerun with another head learning rate therefore never touches the backbone,
and an edit to the augmentation code never hands back vectors the old code computed.

Each vector is computed once into its own small file (shared by every split, fold and trial that
asks for it); ``get`` then hands back one contiguous ``(n, dim)`` array per request list, written
once to ``sets/<key>.npy`` and opened memory-mapped, so memory does not grow with the dataset and
a rerun with the same list reads one file instead of one per image.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from stages.core import codebase
from stages.dataprep.augmentation import VIEW_SEEDING_VERSION, augment_image
from stages.dataprep.imaging import load_rgb
from stages.models.backbones import (
    INFERENCE_MEMORY_FORMAT,
    Backbone,
    inference_batch,
    inference_network,
    pooled_features,
)

# The code that decides a feature vector: this module and what it imports.
FEATURE_CODE = ("stages.models.feature_cache",)


@dataclass(frozen=True)
class FeatureRequest:
    """One feature vector to produce: view 0 is the clean image, view k > 0 augmented."""

    file: Path
    sha256: str
    view: int


def model_key(backbone: Backbone, name: str) -> str:
    """The cache folder of one backbone: every vector in it was computed by the same model and code."""
    spec = {
        "backbone": name,
        "weights": backbone.weights_id,
        "pre": backbone.preprocessing.as_dict(),
        "memory_format": str(INFERENCE_MEMORY_FORMAT),  # channels_last and NCHW differ by ~1e-5
        "code": codebase.code_digest(*FEATURE_CODE),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def policy_key(policy: A.Compose | None) -> str:
    if policy is None:
        return "none"
    # The seeding scheme is part of the key: the same policy seeded differently gives other views.
    spec = {"policy": A.to_dict(policy), "seeding": VIEW_SEEDING_VERSION}
    text = json.dumps(spec, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def view_seed(seed: int, sha256: str, view: int) -> int:
    """Seed of one augmented view: depends on the image and view, not on the order of work."""
    return int(hashlib.sha256(f"{seed}:{sha256}:{view}".encode()).hexdigest()[:8], 16)


class FeatureCache:
    def __init__(
        self, root: Path, backbone: Backbone, backbone_name: str, policy: A.Compose | None, seed: int
    ) -> None:
        # Randomly initialised weights differ per seed, so the seed joins their cache key.
        seed_part = f"-seed{seed}" if backbone.weights_id.endswith(":random") else ""
        self.dir = root / (model_key(backbone, backbone_name) + seed_part)
        self.backbone = backbone
        self.policy = policy
        self.policy_id = policy_key(policy)
        self.seed = seed
        self.computed = 0  # how many vectors this instance had to compute (tests read it)

    def path(self, request: FeatureRequest, device: torch.device) -> Path:
        """One vector's file; per device type, since GPU kernels (TF32, bf16) give other low bits."""
        if request.view == 0:
            name = f"{request.sha256}_v0.npy"
        else:
            name = f"{request.sha256}_{self.policy_id}_s{self.seed}_v{request.view}.npy"
        return self.dir / device.type / request.sha256[:2] / name

    def set_path(self, requests: Sequence[FeatureRequest], device: torch.device) -> Path:
        """The contiguous array of one request list: named by the hash of its vectors' names."""
        digest = hashlib.sha256()
        for request in requests:
            digest.update(self.path(request, device).name.encode() + b"\n")
        return self.dir / device.type / "sets" / f"{digest.hexdigest()[:24]}.npy"

    def get(
        self, requests: Sequence[FeatureRequest], device: torch.device, batch_size: int, desc: str
    ) -> np.ndarray:
        """Features for every request, in order, as a read-only memory-mapped ``(n, dim)`` array.

        Computes and stores only the vectors that are missing, then gathers them into the request
        list's set file (once); pages are read from disk as they are used.
        """
        if not requests:
            return np.zeros((0, 0))
        target = self.set_path(requests, device)
        if not target.is_file():
            missing = [r for r in requests if not self.path(r, device).is_file()]
            if missing:
                self._compute(missing, device, batch_size, desc)
            self._gather(requests, device, target)
        return np.load(target, mmap_mode="r")

    def _gather(self, requests: Sequence[FeatureRequest], device: torch.device, target: Path) -> None:
        """Write the vectors of ``requests`` into one ``.npy`` row by row (never all in memory)."""
        first = np.load(self.path(requests[0], device))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=first.dtype, shape=(len(requests), len(first)))
        try:
            for row, request in enumerate(requests):
                out[row] = np.load(self.path(request, device))
            out.flush()
            del out  # close the map before the rename (Windows needs it)
            tmp.replace(target)  # atomic, like every vector: a killed run leaves no half-written set
        finally:
            tmp.unlink(missing_ok=True)

    @torch.inference_mode()
    def _compute(
        self, requests: list[FeatureRequest], device: torch.device, batch_size: int, desc: str
    ) -> None:
        transform = self.backbone.preprocessing.transform()
        with inference_network(self.backbone.model, device) as model:
            for start in tqdm(range(0, len(requests), batch_size), desc=desc, unit="batch", leave=False):
                chunk = requests[start : start + batch_size]
                batch = inference_batch([transform(self._view(r)) for r in chunk], device)
                pooled = pooled_features(model, batch)
                for request, vector in zip(chunk, pooled.float().cpu().numpy(), strict=True):
                    self._store(request, vector, device)
                self.computed += len(chunk)

    def _store(self, request: FeatureRequest, vector: np.ndarray, device: torch.device) -> None:
        target = self.path(request, device)
        target.parent.mkdir(parents=True, exist_ok=True)
        # One temporary name per process: two tuning workers may compute the same vector.
        tmp = target.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, vector)
        tmp.replace(target)  # atomic: a killed run never leaves half a file

    def _view(self, request: FeatureRequest) -> Image.Image:
        image = load_rgb(request.file)
        if request.view == 0 or self.policy is None:
            return image
        seed = view_seed(self.seed, request.sha256, request.view)
        return Image.fromarray(augment_image(self.policy, np.asarray(image), seed))
