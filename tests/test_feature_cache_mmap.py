"""The feature cache hands back one memory-mapped array per request list, equal to the vectors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from stages.core.hashing import sha256_file
from stages.models.backbones import create_classifier
from stages.models.feature_cache import FeatureCache, FeatureRequest
from tests.conftest import make_classify_source

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def backbone():
    return create_classifier("efficientnet_lite0", "none", 2, image_size=32)


@pytest.fixture
def requests(tmp_path: Path) -> list[FeatureRequest]:
    source = make_classify_source(tmp_path / "source", per_class=3, size=(32, 32))
    return [FeatureRequest(f, sha256_file(f), 0) for f in sorted(source.rglob("*.png"))]


def _cache(root: Path, backbone) -> FeatureCache:
    return FeatureCache(root, backbone, "efficientnet_lite0", None, seed=0)


def test_get_returns_a_memory_map_equal_to_the_per_vector_files(tmp_path: Path, backbone, requests) -> None:
    cache = _cache(tmp_path / "features", backbone)
    features = cache.get(requests, CPU, 4, "test")
    assert isinstance(features, np.memmap) and not features.flags.writeable
    assert features.shape[0] == len(requests) and features.dtype == np.float32
    # The old read path: one .npy per vector, stacked in memory.
    stacked = np.stack([np.load(cache.path(r, CPU)) for r in requests])
    np.testing.assert_array_equal(np.asarray(features), stacked)
    assert cache.set_path(requests, CPU).parent.parent.name == "cpu"  # per device type, as before
    assert not list((tmp_path / "features").rglob("*.tmp.npy"))


def test_a_rerun_reads_the_set_file_and_another_order_is_another_set(
    tmp_path: Path, backbone, requests
) -> None:
    first = _cache(tmp_path / "features", backbone)
    expected = np.array(first.get(requests, CPU, 4, "test"))
    again = _cache(tmp_path / "features", backbone)
    np.testing.assert_array_equal(np.asarray(again.get(requests, CPU, 4, "test")), expected)
    assert again.computed == 0
    reordered = requests[::-1]
    assert again.set_path(reordered, CPU) != again.set_path(requests, CPU)
    np.testing.assert_array_equal(np.asarray(again.get(reordered, CPU, 4, "test")), expected[::-1])
    subset = requests[:2]  # another split or fold: built from the stored vectors, nothing recomputed
    np.testing.assert_array_equal(np.asarray(again.get(subset, CPU, 4, "test")), expected[:2])
    assert again.computed == 0


def test_the_set_name_follows_the_vectors_not_the_files(tmp_path: Path, backbone, requests) -> None:
    """Same content under another path is the same vector, so the same set."""
    cache = _cache(tmp_path / "features", backbone)
    moved = [FeatureRequest(tmp_path / "elsewhere" / r.file.name, r.sha256, r.view) for r in requests]
    assert cache.set_path(moved, CPU) == cache.set_path(requests, CPU)
    other = [
        FeatureRequest(r.file, hashlib.sha256(b"x" + r.sha256.encode()).hexdigest(), 0) for r in requests
    ]
    assert cache.set_path(other, CPU) != cache.set_path(requests, CPU)
