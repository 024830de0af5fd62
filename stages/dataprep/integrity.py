"""Image-integrity checks (decode, size, bombs), cached by content hash and decoding code.

An entry lives under ``<cache>/<code digest>/<sha[:2]>/<sha>-<max_pixels>.json``: the digest
covers this module and the decoding it imports (``stages.dataprep.imaging``) plus Pillow's
version, so a change to how images are decoded decodes them again. Params arrive as a
protocol rather than the params model, so editing an unrelated params section keeps the cache.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from stages.core import codebase
from stages.dataprep.imaging import ImageReadError, load_rgb, read_header

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


def inspect_image(path: Path, max_pixels: int) -> IntegrityFacts:
    """Header first (refuse oversized images before decoding), then a full decode."""
    try:
        header = read_header(path)
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
        image = load_rgb(path)
    except ImageReadError as exc:
        return IntegrityFacts(False, exc.reason, exc.detail, 0, 0, "", 0)
    return IntegrityFacts(True, "", "", image.width, image.height, header.mode, header.frames)


def check_images(
    files: list[Path], hashes: list[str], params: DecodeLimits, cache_dir: Path
) -> list[IntegrityFacts]:
    """Inspect files in parallel, reusing cached results for content already decoded by this code."""
    cache_dir = code_cache_dir(cache_dir)
    results: dict[int, IntegrityFacts] = {}
    todo: list[int] = []
    for i, sha in enumerate(hashes):
        cached = _read_cache(cache_dir, sha, params.max_pixels)
        if cached is None:
            todo.append(i)
        else:
            results[i] = cached
    if todo:
        log.info("decoding %d images (%d cached)", len(todo), len(results))
    progress = tqdm(total=len(todo), desc="validate: decoding", unit="img", leave=False)
    if params.workers > 1 and len(todo) > 16:
        with ProcessPoolExecutor(max_workers=params.workers) as pool:
            limits = [params.max_pixels] * len(todo)
            for i, facts in zip(
                todo, pool.map(inspect_image, [files[i] for i in todo], limits, chunksize=8), strict=True
            ):
                results[i] = facts
                progress.update()
    else:
        for i in todo:
            results[i] = inspect_image(files[i], params.max_pixels)
            progress.update()
    progress.close()
    for i in todo:
        _write_cache(cache_dir, hashes[i], params.max_pixels, results[i])
    return [results[i] for i in range(len(files))]


def code_cache_dir(cache_dir: Path) -> Path:
    """The part of the cache written by the current decoding code."""
    return cache_dir / codebase.code_digest(*INTEGRITY_CODE)


def _cache_file(cache_dir: Path, sha: str, max_pixels: int) -> Path:
    return cache_dir / sha[:2] / f"{sha}-{max_pixels}.json"


def _read_cache(cache_dir: Path, sha: str, max_pixels: int) -> IntegrityFacts | None:
    file = _cache_file(cache_dir, sha, max_pixels)
    if not file.is_file():
        return None
    try:
        return IntegrityFacts(**json.loads(file.read_text(encoding="utf-8")))
    except (ValueError, TypeError):
        return None  # a damaged cache entry is simply recomputed


def _write_cache(cache_dir: Path, sha: str, max_pixels: int, facts: IntegrityFacts) -> None:
    file = _cache_file(cache_dir, sha, max_pixels)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(asdict(facts)), encoding="utf-8")
