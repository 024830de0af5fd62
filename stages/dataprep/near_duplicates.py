"""Near-duplicate images: perceptual hashes (cached by content), a sub-quadratic search, clusters.

Hashes are imagehash's 64-bit pHash / dHash / aHash / wHash, stored per image as 16 hex
digits under ``paths.cache/phash/<code>/<sha256[:2]>/<sha256>.json`` so an image is decoded once
whatever its path; ``<code>`` digests this module's code closure and the versions of imagehash
and the numeric libraries, so changed hashing code never reads hashes the old code wrote.
The search is multi-index hashing (Norouzi et al., "Fast search in
Hamming space with multi-index hashing", CVPR 2012): cut each hash into ``m`` chunks; two
hashes within distance ``r`` agree within ``r // m`` bits on at least one chunk
(pigeonhole), so every candidate pair is found by looking up, per chunk, each key with at
most ``r // m`` bits flipped in a bucket table. Candidates are verified on the full hash.
Everything is vectorised NumPy: no Python loop over images or pairs. Clusters are the
connected components of the pair graph (``scipy.sparse.csgraph``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from PIL import Image, ImageOps
from tqdm import tqdm

from stages.core import codebase
from stages.core.errors import DataError
from stages.core.workers import resolve_workers
from stages.dataprep.imaging import allowed_formats, to_rgb

_Kind = TypeVar("_Kind", bound=str)  # a hash kind: params give a Literal, tests a plain str

log = logging.getLogger("stages.dataprep.near_duplicates")

HASH_BITS = 64
# Hash name -> imagehash function name (imagehash is imported where the hashing runs).
HASH_FUNCTIONS = {"phash": "phash", "dhash": "dhash", "ahash": "average_hash", "whash": "whash"}
CACHE_VERSION = 1
# The code that decides a hash: this module and what it imports (decoding).
HASH_CODE = ("stages.dataprep.near_duplicates",)
_DRAFT_SIZE = (256, 256)  # JPEGs decode at 1/2..1/8 scale when that still covers this (hashes use 32 px)
_MAX_TABLE_BITS = 22  # chunks up to this width use a direct bucket table (2**22 int32 = 16 MiB)


# --- hashing ---------------------------------------------------------------------------------


def hash_image(path: Path, kinds: Sequence[str]) -> dict[str, str]:
    """The requested 64-bit perceptual hashes of one image, as 16 hex digits each.

    The image is decoded as every stage sees it (EXIF orientation applied, RGB); JPEGs use
    Pillow's draft mode, which is deterministic and changes a hash by a bit or two at most.
    """
    try:
        with Image.open(path, formats=list(allowed_formats())) as image:
            image.draft("RGB", _DRAFT_SIZE)
            image.load()
            rgb = to_rgb(ImageOps.exif_transpose(image))
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(
            f"{path}: cannot be decoded for near-duplicate hashing ({exc}); re-run validate, which "
            "quarantines unreadable images."
        ) from None
    import imagehash

    return {kind: str(getattr(imagehash, HASH_FUNCTIONS[kind])(rgb)) for kind in kinds}


def _cached_hash_job(args: tuple[Path, str, tuple[str, ...], Path]) -> tuple[dict[str, Any], bool]:
    """One image's cache entry with every kind in it, and whether anything had to be computed."""
    path, sha, kinds, cache_dir = args
    entry = _read_cache(cache_dir, sha)
    if entry is not None and all(k in entry for k in kinds):
        return entry, False
    return _merge_cache(cache_dir, sha, hash_image(path, kinds)), True


def compute_hashes(
    files: Sequence[Path],
    sha256s: Sequence[str],
    kinds: Sequence[str],
    cache_dir: Path,
    workers: int | str = 1,
) -> dict[str, np.ndarray]:
    """Hashes of every file as ``uint64`` arrays (one per kind, in file order), cached by sha256.

    Args:
        files: image files to hash.
        sha256s: their content hashes (the cache key), same order.
        kinds: hash names from ``HASH_FUNCTIONS``.
        cache_dir: where ``<code>/<sha[:2]>/<sha>.json`` entries live.
        workers: processes decoding images in parallel (1: in this process; "auto": one per core).

    Returns:
        ``{kind: np.ndarray[uint64]}``, one value per file.
    """
    kinds = tuple(kinds)
    cache_dir = code_cache_dir(cache_dir)
    # Each job reads and writes its own cache entry, in chunks: with one cache file per image read
    # and written in this process, a second worker added nothing at 50,000 images.
    jobs = [(Path(f), sha, kinds, cache_dir) for f, sha in zip(files, sha256s, strict=True)]
    progress = tqdm(total=len(jobs), desc="split: perceptual hashes", unit="img", leave=False)
    workers = resolve_workers(workers)
    cached: dict[int, dict[str, Any]] = {}
    computed = 0
    if workers > 1 and len(jobs) > 32:
        chunk = max(1, min(64, len(jobs) // (workers * 4)))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for i, (entry, fresh) in enumerate(pool.map(_cached_hash_job, jobs, chunksize=chunk)):
                cached[i], computed = entry, computed + fresh
                progress.update()
    else:
        for i, job in enumerate(jobs):
            cached[i], fresh = _cached_hash_job(job)
            computed += fresh
            progress.update()
    progress.close()
    if computed:
        log.info("hashed %d images (%d cached)", computed, len(jobs) - computed)
    return {
        kind: np.array([int(cached[i][kind], 16) for i in range(len(files))], dtype=np.uint64)
        for kind in kinds
    }


def code_cache_dir(cache_dir: Path) -> Path:
    """The part of the cache written by the current hashing code and imagehash version."""
    imagehash_version = codebase.library_versions(("imagehash",))["imagehash"]
    return cache_dir / f"{codebase.code_digest(*HASH_CODE)}-imagehash{imagehash_version}"


def _cache_file(cache_dir: Path, sha: str) -> Path:
    return cache_dir / sha[:2] / f"{sha}.json"


def _read_cache(cache_dir: Path, sha: str) -> dict[str, Any] | None:
    """The JSON entry for one image: ``version`` (an int) and one hex string per hash kind."""
    file = _cache_file(cache_dir, sha)
    if not file.is_file():
        return None
    try:
        entry = json.loads(file.read_text(encoding="utf-8"))
    except ValueError:
        return None  # a damaged entry is recomputed
    if not isinstance(entry, dict) or entry.get("version") != CACHE_VERSION:
        return None
    return entry


def _merge_cache(cache_dir: Path, sha: str, hashes: dict[str, str]) -> dict[str, Any]:
    entry = (_read_cache(cache_dir, sha) or {"version": CACHE_VERSION}) | hashes
    file = _cache_file(cache_dir, sha)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp")  # workers and tuning runs write side by side
    tmp.write_text(json.dumps(entry, sort_keys=True), encoding="utf-8")
    tmp.replace(file)  # atomic: a killed run never leaves half an entry
    return entry


# --- search ----------------------------------------------------------------------------------


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distance between ``uint64`` hashes (broadcasting)."""
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int64)


@dataclass(frozen=True)
class ChunkPlan:
    """How multi-index hashing cuts a 64-bit hash: chunk widths and the radius searched in each."""

    widths: tuple[int, ...]
    radius: int  # bits flipped per chunk lookup: max_distance // len(widths)

    @property
    def lookups(self) -> int:
        return sum(sum(math.comb(w, k) for k in range(self.radius + 1)) for w in self.widths)


def plan_chunks(n: int, max_distance: int) -> ChunkPlan:
    """Pick the number of chunks with the lowest expected cost for ``n`` random hashes.

    Cost per query = lookups (bucket probes) + expected candidates (bucket occupancy
    ``n / 2**width`` per probe), the standard multi-index hashing trade-off.
    """
    best: tuple[float, ChunkPlan] | None = None
    for m in range(1, HASH_BITS + 1):
        widths = tuple(HASH_BITS // m + (1 if i < HASH_BITS % m else 0) for i in range(m))
        if max(widths) > 32:
            continue
        plan = ChunkPlan(widths, max_distance // m)
        probes = [sum(math.comb(w, k) for k in range(plan.radius + 1)) for w in widths]
        candidates = sum(p * n / 2.0**w for p, w in zip(probes, widths, strict=True))
        cost = plan.lookups + 4.0 * candidates  # a verified candidate costs a few probes
        if best is None or cost < best[0]:
            best = (cost, plan)
    assert best is not None
    return best[1]


def _flip_masks(width: int, radius: int) -> np.ndarray:
    masks = [0]
    for k in range(1, radius + 1):
        masks += [sum(1 << b for b in bits) for bits in combinations(range(width), k)]
    return np.array(masks, dtype=np.uint64)


def find_pairs(
    hashes: np.ndarray, max_distance: int, plan: ChunkPlan | None = None, progress: bool = True
) -> pd.DataFrame:
    """Every pair ``i < j`` with ``hamming(hashes[i], hashes[j]) <= max_distance``, without all pairs.

    Args:
        hashes: ``uint64`` array, one hash per image.
        max_distance: the largest Hamming distance that counts as a near-duplicate (0..32).
        plan: the chunking (default: ``plan_chunks``).
        progress: show a progress bar over the chunk lookups.

    Returns:
        Columns ``i``, ``j`` (positions, ``i < j``) and ``distance``, sorted by ``(i, j)``.

    Examples:
        >>> find_pairs(np.array([0, 1, 2**63], dtype=np.uint64), 1)[["i", "j"]].values.tolist()
        [[0, 1]]
    """
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(hashes)
    if not 0 <= max_distance <= 32:
        raise ValueError(f"max_distance must be in 0..32, got {max_distance}")
    if n < 2:
        return _pair_frame(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    plan = plan or plan_chunks(n, max_distance)
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    positions = np.arange(n, dtype=np.int64)
    bar = tqdm(
        total=plan.lookups,
        desc="split: near-duplicate search",
        unit="probe",
        leave=False,
        disable=None if progress else True,
    )
    shift = 0
    for width in plan.widths:
        keys = ((hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64)
        shift += width
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        table = None
        if width <= _MAX_TABLE_BITS:
            counts_table = np.bincount(keys, minlength=1 << width)
            table = (np.cumsum(counts_table) - counts_table, counts_table)
        # A pair whose chunks differ by a mask with top bit t is probed only from the side whose
        # chunk has bit t clear, so it is met once (mask 0: within a bucket, keep i < j).
        clear = [np.flatnonzero(((keys >> t) & 1) == 0) for t in range(width)] if plan.radius else []
        for mask in _flip_masks(width, plan.radius).astype(np.int64):
            rows_from = positions if mask == 0 else clear[int(mask).bit_length() - 1]
            query = keys[rows_from] ^ mask
            if table is not None:
                starts, counts = table[0][query], table[1][query]
            else:
                starts = np.searchsorted(sorted_keys, query, side="left")
                counts = np.searchsorted(sorted_keys, query, side="right") - starts
            total = int(counts.sum())
            bar.update()
            if total == 0:
                continue
            rows = np.repeat(rows_from, counts)
            cols = order[np.arange(total) + np.repeat(starts - (np.cumsum(counts) - counts), counts)]
            if mask == 0:
                keep = rows < cols  # met from both ends within a bucket; self-matches dropped
                rows, cols = rows[keep], cols[keep]
            close = hamming(hashes[rows], hashes[cols]) <= max_distance
            rows, cols = rows[close], cols[close]
            found_i.append(np.minimum(rows, cols))
            found_j.append(np.maximum(rows, cols))
    bar.close()
    if not found_i:
        return _pair_frame(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    codes = np.unique(np.concatenate(found_i) * n + np.concatenate(found_j))  # also sorts by (i, j)
    i, j = codes // n, codes % n
    return _pair_frame(i, j, hamming(hashes[i], hashes[j]))


def all_pairs(hashes: np.ndarray, max_distance: int, block: int = 2048) -> pd.DataFrame:
    """The quadratic reference: every pair compared (blocked, vectorised). For tests and the benchmark."""
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(hashes)
    found_i, found_j = [], []
    for start in range(0, n, block):
        rows = hashes[start : start + block]
        distances = hamming(rows[:, None], hashes[None, :])
        r, c = np.nonzero(distances <= max_distance)
        r = r + start
        keep = r < c
        found_i.append(r[keep])
        found_j.append(c[keep])
    i = np.concatenate(found_i) if found_i else np.zeros(0, np.int64)
    j = np.concatenate(found_j) if found_j else np.zeros(0, np.int64)
    order = np.lexsort((j, i))
    i, j = i[order].astype(np.int64), j[order].astype(np.int64)
    return _pair_frame(i, j, hamming(hashes[i], hashes[j]))


def _pair_frame(i: np.ndarray, j: np.ndarray, distance: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"i": i.astype(np.int64), "j": j.astype(np.int64), "distance": distance})


def near_duplicate_pairs(hashes: Mapping[str, np.ndarray], max_distance: Mapping[_Kind, int]) -> pd.DataFrame:
    """Pairs within ``max_distance[kind]`` on every listed hash kind.

    The search runs on the kind with the smallest threshold (the cheapest index); the other
    kinds only filter its candidates. Returns columns ``i``, ``j`` and one distance column per kind.
    """
    if not max_distance:
        return pd.DataFrame({"i": pd.Series(dtype=np.int64), "j": pd.Series(dtype=np.int64)})
    primary = min(sorted(max_distance), key=lambda kind: max_distance[kind])
    pairs = find_pairs(hashes[primary], max_distance[primary]).rename(columns={"distance": primary})
    i, j = pairs["i"].to_numpy(), pairs["j"].to_numpy()
    keep = np.ones(len(pairs), dtype=bool)
    for kind in sorted(max_distance):
        if kind == primary:
            continue
        distance = hamming(hashes[kind][i], hashes[kind][j])
        pairs[kind] = distance
        keep &= distance <= max_distance[kind]
    return pairs[keep].reset_index(drop=True)[["i", "j", *sorted(max_distance)]]


# --- clusters --------------------------------------------------------------------------------


def connected_labels(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Component label of each of ``n`` nodes given undirected edges ``(i, j)``.

    Labels are numbered in order of each component's smallest node, so the same graph
    always gets the same labels.
    """
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n)).tocsr()
    _, labels = connected_components(graph, directed=True, connection="weak")
    return labels.astype(np.int64)


def edges_from_keys(keys: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Edges joining every row to the first row with the same non-null key (a star per key)."""
    codes, _ = pd.factorize(keys, use_na_sentinel=True)
    rows = np.arange(len(codes), dtype=np.int64)
    present = codes >= 0
    if not present.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    _, first = np.unique(codes[present], return_index=True)  # first row of each key, by code
    i, j = rows[present], rows[present][first][codes[present]]
    keep = i != j
    return i[keep], j[keep]


# --- confirmation by features ----------------------------------------------------------------


def pair_similarity(features: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Cosine similarity of feature rows ``i[k]`` and ``j[k]`` (a zero vector is similar to nothing).

    Examples:
        >>> features = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
        >>> pair_similarity(features, np.array([0, 0]), np.array([1, 2])).tolist()
        [1.0, 0.0]
    """
    vectors = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    return np.einsum("kd,kd->k", unit[np.asarray(i, dtype=np.int64)], unit[np.asarray(j, dtype=np.int64)])
