"""Image-integrity checks (decode, size, bombs), cached by content hash and decoding code.

An entry lives under ``<cache>/<code digest>/<sha[:2]>/<sha>-<max_pixels>-<formats>.json``: the
digest covers this module and the decoding it imports (``stages.dataprep.imaging``) plus Pillow's
version, so a change to how images are decoded decodes them again; ``formats`` names the Pillow
plugins ``ingest.image_extensions`` allows. Params arrive as a protocol rather than the params
model, so editing an unrelated params section keeps the cache.

One file must never stop the stage: a ``MemoryError`` while decoding it, or a worker process
killed under it (the kernel's out-of-memory killer: ``BrokenProcessPool``), quarantines that
file and the rest are decoded again one per process.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from stages.core import codebase
from stages.core.workers import resolve_workers
from stages.dataprep.imaging import ImageReadError, allowed_formats, load_rgb, read_header

log = logging.getLogger("stages.validate")

# The code that decides what decoding finds: this module and what it imports.
INTEGRITY_CODE = ("stages.dataprep.integrity",)


class DecodeLimits(Protocol):
    """What ``check_images`` reads of ``validate`` params (``ValidateSection`` satisfies it)."""

    @property
    def max_pixels(self) -> int: ...

    @property
    def workers(self) -> int | str: ...  # "auto": one process per usable core


@dataclass(frozen=True)
class IntegrityFacts:
    """What decoding one file found; independent of params, so safe to cache by content hash."""

    ok: bool
    reason: str
    detail: str
    width: int
    height: int
    mode: str
    frames: int


def inspect_image(path: Path, max_pixels: int, formats: tuple[str, ...] | None = None) -> IntegrityFacts:
    """Header first (refuse oversized images before decoding), then a full decode.

    ``width``/``height`` of a good file are those of the decoded, EXIF-oriented image, which
    validate compares with what ingest measured from the header.
    """
    formats = formats if formats is not None else allowed_formats()
    try:
        header = read_header(path, formats)
        pixels = header.width * header.height
        if pixels > max_pixels:
            return IntegrityFacts(
                False,
                "too_many_pixels",
                f"{path.name} declares {header.width}x{header.height} = {pixels:,} pixels, over "
                f"validate.max_pixels = {max_pixels:,}; it was not decoded (raise the limit if it is real).",
                header.width,
                header.height,
                header.mode,
                header.frames,
            )
        image = load_rgb(path, formats)
    except ImageReadError as exc:
        return IntegrityFacts(False, exc.reason, exc.detail, 0, 0, "", 0)
    except MemoryError:
        return IntegrityFacts(
            False,
            "out_of_memory",
            f"{path.name} ran out of memory while decoding; shrink the image, or lower validate.max_pixels "
            "so such files are refused from their header.",
            0,
            0,
            "",
            0,
        )
    return IntegrityFacts(True, "", "", image.width, image.height, header.mode, header.frames)


def check_images(
    files: list[Path],
    hashes: list[str],
    params: DecodeLimits,
    cache_dir: Path,
    formats: tuple[str, ...] | None = None,
) -> list[IntegrityFacts]:
    """Inspect files in parallel, reusing cached results for content already decoded by this code.

    Work goes to the pool in chunks, and each chunk reads and writes its own cache entries: at
    50,000 small images one future and one cache file per image in the parent process was most
    of the stage's time, so a second worker added nothing (bench/bench_scale.py).
    """
    formats = formats if formats is not None else allowed_formats()
    cache_dir = code_cache_dir(cache_dir)
    jobs = list(zip(files, hashes, strict=True))
    progress = tqdm(total=len(jobs), desc="validate: decoding", unit="img", leave=False)
    workers = resolve_workers(params.workers)
    if workers > 1 and len(jobs) > 16:
        results = _inspect_in_pool(jobs, workers, params.max_pixels, formats, cache_dir, progress)
    else:
        results = []
        for start in range(0, len(jobs), CHUNK):
            results += inspect_chunk(jobs[start : start + CHUNK], params.max_pixels, formats, cache_dir)
            progress.update(min(CHUNK, len(jobs) - start))
    progress.close()
    return results


CHUNK = 64  # images per pool task: few enough futures, small enough that the progress bar moves


def inspect_chunk(
    jobs: list[tuple[Path, str]], max_pixels: int, formats: tuple[str, ...], cache_dir: Path
) -> list[IntegrityFacts]:
    """Each ``(file, sha256)``: its cached facts, else decode it and cache what was found."""
    found = []
    for path, sha in jobs:
        facts = _read_cache(cache_dir, sha, max_pixels, formats)
        if facts is None:
            facts = inspect_image(path, max_pixels, formats)
            _write_cache(cache_dir, sha, max_pixels, formats, facts)
        found.append(facts)
    return found


def _inspect_in_pool(
    jobs: list[tuple[Path, str]],
    workers: int,
    max_pixels: int,
    formats: tuple[str, ...],
    cache_dir: Path,
    progress: tqdm,
) -> list[IntegrityFacts]:
    """Inspect chunks in worker processes; after a worker dies, each unfinished file gets its own.

    When a worker is killed (out of memory, a crashing decoder) the pool breaks and every
    unfinished chunk fails with it; re-running those files one per process finds the file that
    kills its process, which is quarantined, while every other file is decoded normally.
    """
    chunk = max(1, min(CHUNK, len(jobs) // (workers * 4)))
    starts = range(0, len(jobs), chunk)
    results: dict[int, IntegrityFacts] = {}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures: dict[int, Future[list[IntegrityFacts]]] = {
            start: pool.submit(inspect_chunk, jobs[start : start + chunk], max_pixels, formats, cache_dir)
            for start in starts
        }
        for start, future in futures.items():
            try:
                facts = future.result()
            except BrokenProcessPool:
                continue  # re-run below, one file per process
            results.update(enumerate(facts, start))
            progress.update(len(facts))
    remaining = [i for i in range(len(jobs)) if i not in results]
    if remaining:
        log.warning(
            "a decoding worker died; decoding the %d unfinished images one per process", len(remaining)
        )
    for i in remaining:
        path, sha = jobs[i]
        results[i] = _decode_alone(path, max_pixels, formats)
        _write_cache(cache_dir, sha, max_pixels, formats, results[i])
        progress.update()
    return [results[i] for i in range(len(jobs))]


def _decode_alone(path: Path, max_pixels: int, formats: tuple[str, ...]) -> IntegrityFacts:
    """Decode one file in a process of its own, so that a crash there takes only this file down."""
    try:
        with ProcessPoolExecutor(max_workers=1) as pool:
            return pool.submit(inspect_image, path, max_pixels, formats).result()
    except BrokenProcessPool:
        return IntegrityFacts(
            False,
            "decoder_crashed",
            f"{path.name} killed the process decoding it (most likely out of memory); shrink the image, or "
            "lower validate.max_pixels so such files are refused from their header.",
            0,
            0,
            "",
            0,
        )


def code_cache_dir(cache_dir: Path) -> Path:
    """The part of the cache written by the current decoding code."""
    return cache_dir / codebase.code_digest(*INTEGRITY_CODE)


def _cache_file(cache_dir: Path, sha: str, max_pixels: int, formats: tuple[str, ...]) -> Path:
    return cache_dir / sha[:2] / f"{sha}-{max_pixels}-{'.'.join(formats).lower()}.json"


def _read_cache(
    cache_dir: Path, sha: str, max_pixels: int, formats: tuple[str, ...]
) -> IntegrityFacts | None:
    file = _cache_file(cache_dir, sha, max_pixels, formats)
    if not file.is_file():
        return None
    try:
        return IntegrityFacts(**json.loads(file.read_text(encoding="utf-8")))
    except (ValueError, TypeError):
        return None  # a damaged cache entry is simply recomputed


def _write_cache(
    cache_dir: Path, sha: str, max_pixels: int, formats: tuple[str, ...], facts: IntegrityFacts
) -> None:
    """Written under a per-process name, then renamed: workers (and tuning runs) write side by side."""
    file = _cache_file(cache_dir, sha, max_pixels, formats)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(facts)), encoding="utf-8")
    tmp.replace(file)
