"""Torch datasets over manifest rows: decode, augment (train only), preprocess.

The sampler hands out ``(index, epoch)`` pairs and each augmented sample's seed comes from
(seed, image sha256, epoch), so a sample is the same whichever (persistent) worker produces
it and whether or not the run was resumed.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from stages.dataprep.augmentation import augment_image
from stages.dataprep.imaging import load_rgb
from stages.models.backbones import Preprocessing


def sample_seed(seed: int, sha256: str, epoch: int) -> int:
    return int(hashlib.sha256(f"{seed}:{sha256}:{epoch}".encode()).hexdigest()[:8], 16)


class ImageDataset(Dataset):
    """(image tensor, class index) for manifest rows; augments only when given a policy."""

    def __init__(
        self,
        rows: pd.DataFrame,
        root: Path,
        classes: list[str],
        preprocessing: Preprocessing,
        policy: A.Compose | None = None,
        seed: int = 0,
    ) -> None:
        index = {name: i for i, name in enumerate(classes)}
        self.files = [root / p for p in rows["path"]]
        self.hashes = rows["sha256"].tolist()
        self.targets = rows["label"].map(index).to_numpy(dtype=np.int64)
        self.transform = preprocessing.transform()
        self.policy = policy
        self.seed = seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        image = load_rgb(self.files[i])
        if self.policy is not None:
            seed = sample_seed(self.seed, self.hashes[i], epoch)
            image = Image.fromarray(augment_image(self.policy, np.asarray(image), seed))
        return self.transform(image), int(self.targets[i])


class EpochSampler(Sampler):
    """Seeded order per epoch (a shuffle, or class-balanced draws with replacement).

    With ``world > 1`` every rank draws the same order and keeps its shard (``shard``): every
    ``world``-th position from ``rank``, padded with the first positions to equal counts.
    """

    def __init__(
        self, size: int, seed: int, weights: torch.Tensor | None = None, rank: int = 0, world: int = 1
    ) -> None:
        self.size = size
        self.seed = seed
        self.weights = weights
        self.rank = rank
        self.world = world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.size / self.world)

    def order(self) -> list[int]:
        """The whole epoch's order, the same on every rank."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is None:
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.multinomial(self.weights, self.size, replacement=True, generator=generator)
        return order.tolist()

    def __iter__(self):
        return iter([(i, self.epoch) for i in shard(self.order(), self.rank, self.world)])


def shard(order: list[int], rank: int, world: int) -> list[int]:
    """This rank's part of ``order`` (``DistributedSampler``'s rule): pad to a multiple of ``world``
    with the first items, then every ``world``-th item from ``rank``. Ranks get disjoint positions of
    equal count, and step k's per-rank batches together are the one-process batch k."""
    if world == 1:
        return order
    total = math.ceil(len(order) / world) * world
    padded = order + order[: total - len(order)]
    return padded[rank:total:world]
