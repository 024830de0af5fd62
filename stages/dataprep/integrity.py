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
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from stages.core import codebase
from stages.dataprep.imaging import ImageReadError, allowed_formats, load_rgb, read_header

log = logging.getLogger("stages.validate")

# The code that decides what decoding finds: this module and what it imports.
INTEGRITY_CODE = ("stages.dataprep.integrity",)


class DecodeLimits(Protocol):
    """What ``check_images`` reads of ``validate`` params (``ValidateSection`` satisfies it)."""

    @property
    def max_pixels(self) -> int: ...

    @property
    def workers(self) -> int: ...


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
    """Inspect files in parallel, reusing cached results for content already decoded by this code."""
    formats = formats if formats is not None else allowed_formats()
    cache_dir = code_cache_dir(cache_dir)
    results: dict[int, IntegrityFacts] = {}
    todo: list[int] = []
    for i, sha in enumerate(hashes):
        cached = _read_cache(cache_dir, sha, params.max_pixels, formats)
        if cached is None:
            todo.append(i)
        else:
            results[i] = cached
    if todo:
        log.info("decoding %d images (%d cached)", len(todo), len(results))
    progress = tqdm(total=len(todo), desc="validate: decoding", unit="img", leave=False)
    if params.workers > 1 and len(todo) > 16:
        _decode_in_pool(files, todo, params, formats, results, progress)
    else:
        for i in todo:
            results[i] = inspect_image(files[i], params.max_pixels, formats)
            progress.update()
    progress.close()
    for i in todo:
        _write_cache(cache_dir, hashes[i], params.max_pixels, formats, results[i])
    return [results[i] for i in range(len(files))]


def _decode_in_pool(
    files: list[Path],
    todo: list[int],
    params: DecodeLimits,
    formats: tuple[str, ...],
    results: dict[int, IntegrityFacts],
    progress: tqdm,
) -> None:
    """Decode ``todo`` in worker processes; after a worker dies, each remaining file gets its own.

    When a worker is killed (out of memory, a crashing decoder) the pool breaks and every
    unfinished file fails with it; re-running them one per process finds the file that kills
    its process, which is quarantined, while every other file is decoded normally.
    """
    with ProcessPoolExecutor(max_workers=params.workers) as pool:
        futures: dict[int, Future[IntegrityFacts]] = {
            i: pool.submit(inspect_image, files[i], params.max_pixels, formats) for i in todo
        }
        for i, future in futures.items():
            try:
                results[i] = future.result()
            except BrokenProcessPool:
                continue  # re-run below, one file per process
            progress.update()
    remaining = [i for i in todo if i not in results]
    if remaining:
        log.warning(
            "a decoding worker died; decoding the %d unfinished images one per process", len(remaining)
        )
    for i in remaining:
        results[i] = _decode_alone(files[i], params.max_pixels, formats)
        progress.update()


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
    file = _cache_file(cache_dir, sha, max_pixels, formats)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(asdict(facts)), encoding="utf-8")
