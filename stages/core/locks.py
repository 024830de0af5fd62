"""Advisory file locks: one run per checkout, one writer per training run.

``held(path, timeout, what)`` takes an exclusive ``fcntl.flock`` on ``path`` (created if absent)
and writes the holder's process id into it, for the message a waiting process prints. The
kernel drops the lock when the holder exits, even on ``kill -9``, so a crash never leaves a
stale lock behind (the file stays; its content is only a hint).

Re-entrant for the holder and its children: while held, the lock's path is listed in the
``CV_FINETUNE_LOCKS`` environment variable, so a stage the flow starts as a subprocess (``dvc
repro --single-item`` of a ``python -m stages.*`` command) passes straight through instead of
waiting for its own parent. Why not DVC's repo lock: ``dvc repro`` releases it while a stage's
command runs (docs/architecture.md, "One run at a time per checkout").
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from stages.core.errors import UserError

ENV = "CV_FINETUNE_LOCKS"
TIMEOUT_ENV = "CV_FINETUNE_LOCK_TIMEOUT"  # seconds a run waits for the checkout's lock
DEFAULT_TIMEOUT = 900.0
POLL = 0.2

log = logging.getLogger("stages")


class LockTimeout(UserError):
    """Another process held the lock for longer than this one was willing to wait."""


def default_timeout() -> float:
    """``CV_FINETUNE_LOCK_TIMEOUT`` seconds (default 900), the bounded wait for a checkout's lock."""
    try:
        return max(0.0, float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT)))
    except ValueError:
        raise UserError(
            f"{TIMEOUT_ENV} must be a number of seconds, not {os.environ[TIMEOUT_ENV]!r}."
        ) from None


def held_by_ancestor(path: Path) -> bool:
    """Whether this process or one of its parents holds ``path`` (listed in ``CV_FINETUNE_LOCKS``)."""
    return str(Path(path).resolve()) in os.environ.get(ENV, "").split(os.pathsep)


@contextmanager
def held(path: Path, timeout: float | None, what: str) -> Iterator[None]:
    """Hold the exclusive lock ``path`` for the block; wait at most ``timeout`` seconds (None: no limit).

    Raises ``LockTimeout`` (one sentence: who holds it, how to go on) when the wait runs out.
    """
    path = Path(path).resolve()
    if held_by_ancestor(path):
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    try:
        _acquire(handle, path, timeout, what)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        before = os.environ.get(ENV)
        os.environ[ENV] = os.pathsep.join(p for p in (before, str(path)) if p)
        try:
            yield
        finally:
            if before is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = before
    finally:
        handle.close()  # closing the descriptor releases the flock


def _acquire(handle, path: Path, timeout: float | None, what: str) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    announced = False
    while True:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        holder = _holder(path)
        if deadline is not None and time.monotonic() >= deadline:
            raise LockTimeout(
                f"{what} is locked by another run (process {holder}, lock {path}) and it did not finish "
                f"within {timeout:g} s; wait for it, or raise {TIMEOUT_ENV}."
            )
        if not announced:
            log.info("waiting for %s: locked by process %s (%s)", what, holder, path)
            announced = True
        time.sleep(POLL)


def _holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() or "?"
    except OSError:
        return "?"


def checkout_lock(root: Path, cache: Path) -> Path:
    """The run lock of a checkout: ``.dvc/tmp/cv-finetune-run.lock`` in a DVC project (what
    ``dvc repro`` and the flow share), else ``<paths.cache>/cv-finetune-run.lock``."""
    dvc_dir = Path(root) / ".dvc"
    return (dvc_dir / "tmp" if dvc_dir.is_dir() else Path(cache)) / "cv-finetune-run.lock"
