"""Ingest's per-file work (header and content hash) spread over processes.

The job is ``stages.dataprep.importing.read_file``; this module only runs it in a pool. Headers
and hashes are per file and independent, so at 50,000 images they are the part of ingest that
scales with the cores; everything after (boxes, duplicates, classes) stays in the stage's process.
Results come back in input order, so the manifest is the same for any number of workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from stages.core.workers import resolve_workers
from stages.dataprep.imaging import ImageHeader, ImageReadError

_MIN_POOLED = 64  # below this a pool costs more to start than it saves
_CHUNK = 32


@dataclass(frozen=True)
class FileFacts:
    """One file's header and sha256, or the quarantine reason it could not be read for."""

    header: ImageHeader | None
    sha256: str
    reason: str = ""
    detail: str = ""

    def unwrap(self) -> tuple[ImageHeader, str]:
        """The header and hash; raises the ``ImageReadError`` the worker found (it cannot be pickled)."""
        if self.header is None:
            raise ImageReadError(self.reason, self.detail)
        return self.header, self.sha256


Job = Callable[[tuple[Path, tuple[str, ...]]], FileFacts]


def read_files(
    job: Job, files: Sequence[Path], formats: tuple[str, ...], workers: int | str = 1
) -> Iterator[FileFacts]:
    """``job((file, formats))`` for every file, in order, in ``workers`` processes (``auto``: one per
    usable core). ``job`` must be a module-level function: worker processes import it by name."""
    count = resolve_workers(workers)
    jobs = [(Path(f), formats) for f in files]
    if count <= 1 or len(jobs) < _MIN_POOLED:
        yield from map(job, jobs)
        return
    # Large chunks: a small file's header and hash take well under 0.1 ms, less than sending it.
    chunk = max(_CHUNK, min(512, len(jobs) // (count * 4)))
    with ProcessPoolExecutor(max_workers=min(count, len(jobs))) as pool:
        yield from pool.map(job, jobs, chunksize=chunk)
