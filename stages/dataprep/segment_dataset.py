"""The segmentation training dataset: image and class map, augmented together, at the model's size.

The image is decoded as everywhere else (``load_rgb``: EXIF orientation applied, so it matches
the shapes' pixels), its class map comes from the ``MaskStore`` cache, the augment policy moves
both with one per-(seed, image, epoch) random stream (albumentations resizes and warps ``mask``
nearest-neighbour), and only then are both brought to ``image_size``: the image bilinear, the
mask nearest (``stages.dataprep.segment_preprocess``, the same functions evaluate and serving use).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from stages.dataprep.augmentation import reseed
from stages.dataprep.imaging import load_rgb
from stages.dataprep.segment_preprocess import resize_mask, segment_input
from stages.dataprep.semantic_masks import MaskStore
from stages.dataprep.torch_datasets import sample_seed


class SegmentDataset(Dataset):
    """(float image (3, size, size), int64 class map (size, size)) per manifest row; augments
    only when given a policy. Keys are indices or the ``EpochSampler``'s (index, epoch) pairs."""

    def __init__(
        self,
        rows: pd.DataFrame,
        root: Path,
        masks: MaskStore,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        policy: A.Compose | None = None,
        seed: int = 0,
    ) -> None:
        self.files = [root / p for p in rows["path"]]
        self.image_ids = rows["image_id"].astype(str).tolist()
        self.hashes = rows["sha256"].astype(str).tolist()
        # the displayed image's size (after EXIF orientation), as the shapes' pixels
        self.sizes = list(zip(rows["height"].astype(int), rows["width"].astype(int), strict=True))
        self.masks = masks
        self.size = size
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.policy = policy
        self.seed = seed

    def __len__(self) -> int:
        return len(self.files)

    def sample(self, i: int, epoch: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The (augmented) image and class map at the image's own resolution."""
        image = np.asarray(load_rgb(self.files[i]))
        height, width = image.shape[:2]
        mask = self.masks.mask(self.image_ids[i], self.hashes[i], height, width)
        if self.policy is not None:
            reseed(self.policy, sample_seed(self.seed, self.hashes[i], epoch))
            out = self.policy(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return image, mask

    def target(self, i: int) -> np.ndarray:
        """The un-augmented class map at the training size (class weights, samplers)."""
        height, width = self.sizes[i]
        return resize_mask(self.masks.mask(self.image_ids[i], self.hashes[i], height, width), self.size)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        image, mask = self.sample(i, epoch)
        x = segment_input(np.asarray(image, dtype=np.uint8), self.size, self.mean, self.std)
        y = resize_mask(np.asarray(mask, dtype=np.uint8), self.size)
        return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
