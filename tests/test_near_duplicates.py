"""Perceptual hashes (cached by content), the multi-index search against all pairs, and clusters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages.core.errors import DataError
from stages.core.hashing import sha256_file
from stages.dataprep.near_duplicates import (
    ChunkPlan,
    all_pairs,
    compute_hashes,
    connected_labels,
    edges_from_keys,
    find_pairs,
    hamming,
    near_duplicate_pairs,
    plan_chunks,
)
from tests.scenes import VARIANTS, save, scene

DEFAULT_MAX = {"phash": 10, "dhash": 10}


def _planted_hashes(n: int, copies: int, flips: int, seed: int) -> np.ndarray:
    """Random 64-bit hashes plus copies of some of them with up to ``flips`` bits changed."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, n).astype(np.uint64)
    source = rng.integers(0, n, copies)
    noise = np.zeros(copies, dtype=np.uint64)
    for _ in range(flips):
        noise |= np.uint64(1) << rng.integers(0, 64, copies).astype(np.uint64)
    return np.concatenate([base, base[source] ^ noise])


@pytest.mark.parametrize("max_distance", [0, 3, 8, 10, 16])
def test_multi_index_search_finds_exactly_the_pairs_all_pairs_finds(max_distance: int) -> None:
    hashes = _planted_hashes(3000, 600, flips=max_distance + 2, seed=max_distance)
    expected = all_pairs(hashes, max_distance)
    found = find_pairs(hashes, max_distance, progress=False)
    pd.testing.assert_frame_equal(found, expected)
    assert len(expected) > 0 or max_distance == 0


def test_wide_chunks_use_the_sorted_index_and_agree() -> None:
    hashes = _planted_hashes(1500, 300, flips=6, seed=7)
    wide = ChunkPlan(widths=(32, 32), radius=3)  # 32-bit chunks: searchsorted, not a bucket table
    pd.testing.assert_frame_equal(find_pairs(hashes, 6, plan=wide, progress=False), all_pairs(hashes, 6))


def test_chunk_plan_probes_far_fewer_buckets_than_there_are_hashes() -> None:
    plan = plan_chunks(100_000, 10)
    assert sum(plan.widths) == 64
    assert plan.radius * len(plan.widths) <= 10 < (plan.radius + 1) * len(plan.widths)  # pigeonhole holds
    assert plan.lookups < 2_000


def test_hamming_counts_differing_bits() -> None:
    a = np.array([0, 0b1011, 2**64 - 1], dtype=np.uint64)
    b = np.array([0, 0b0001, 0], dtype=np.uint64)
    assert hamming(a, b).tolist() == [0, 2, 64]


def test_planted_copies_are_near_duplicates_and_distinct_scenes_are_not(tmp_path: Path) -> None:
    files, origin = [], []
    for seed in range(8):
        files.append(save(scene(seed), tmp_path / f"scene{seed}.png"))
        origin.append(seed)
        for name, variant in VARIANTS.items():
            files.append(save(variant(scene(seed)), tmp_path / f"scene{seed}_{name}.jpg"))
            origin.append(seed)
    hashes = compute_hashes(files, [sha256_file(f) for f in files], sorted(DEFAULT_MAX), tmp_path / "cache")
    pairs = near_duplicate_pairs(hashes, DEFAULT_MAX)
    found = set(zip(pairs["i"], pairs["j"], strict=True))
    same_scene = {
        (i, j) for i in range(len(files)) for j in range(i + 1, len(files)) if origin[i] == origin[j]
    }
    assert found == same_scene
    assert (pairs[["phash", "dhash"]] <= 10).all().all()


def test_hashes_are_cached_by_content_and_damaged_entries_recomputed(tmp_path: Path) -> None:
    files = [save(scene(s), tmp_path / "img" / f"{s}.png") for s in range(3)]
    shas = [sha256_file(f) for f in files]
    cache = tmp_path / "cache"
    first = compute_hashes(files, shas, ["phash", "dhash"], cache)
    entries = sorted(cache.rglob("*.json"))
    assert [e.stem for e in entries] == sorted(shas)
    # Same content under other names: answered from the cache without opening any file.
    moved = [tmp_path / "gone" / f"{s}.png" for s in range(3)]
    again = compute_hashes(moved, shas, ["phash", "dhash"], cache)
    for kind in first:
        np.testing.assert_array_equal(first[kind], again[kind])
    entries[0].write_text("{not json", encoding="utf-8")
    position = shas.index(entries[0].stem)
    recomputed = compute_hashes(files, shas, ["phash"], cache)
    assert recomputed["phash"][position] == first["phash"][position]
    with pytest.raises(DataError, match="re-run validate"):
        compute_hashes(moved, shas, ["ahash"], cache)  # a kind not cached yet needs the files


def test_clusters_follow_chains_and_keys() -> None:
    labels = connected_labels(6, np.array([0, 1, 4]), np.array([1, 2, 5]))
    assert labels.tolist() == [0, 0, 0, 1, 2, 2]
    i, j = edges_from_keys(pd.Series(["b", "a", None, "b", "a", "c"], dtype="string"))
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == [(3, 0), (4, 1)]
