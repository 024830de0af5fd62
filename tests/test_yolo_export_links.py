"""YOLO export hard links: only for images validate accepted and ultralytics will never rewrite."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stages.core.contracts import boxes_frame
from stages.core.hashing import sha256_file
from stages.core.params import ValidateSection
from stages.dataprep import yolo_export
from stages.dataprep.integrity import check_images
from stages.dataprep.validation import apply_policy
from stages.dataprep.yolo_export import export_dataset, rewrite_risk
from tests.conftest import tree_digest

CLASSES = ["thing"]


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, size=(40, 48, 3)).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, size=(40, 48, 3)).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    root.mkdir()
    (root / "clean.jpg").write_bytes(_jpeg(0))
    (root / "clean.png").write_bytes(_png(1))
    whole = _jpeg(2)
    (root / "truncated.jpg").write_bytes(whole[: len(whole) // 2])  # cut mid-scan: does not decode
    (root / "no_eoi.jpg").write_bytes(_jpeg(3)[:-2])  # only the EOI marker missing
    (root / "trailing.jpg").write_bytes(_jpeg(4) + b"junk")  # decodes, but does not end with FF D9
    (root / "jpeg_named.png").write_bytes(_jpeg(5) + b"\0")  # a JPEG under another name, same risk
    return root


def _validated(root: Path, tmp_path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What validate keeps of ``root``, through validate's own decode and policy functions."""
    paths = sorted(p.name for p in root.iterdir())
    shas = [sha256_file(root / p) for p in paths]
    manifest = pd.DataFrame(
        {"image_id": [s[:16] for s in shas], "path": paths, "sha256": shas, "width": 48, "height": 40}
    )
    facts = check_images([root / p for p in paths], shas, ValidateSection(workers=1), tmp_path / "integrity")
    keep, quarantine = apply_policy(manifest, facts, ValidateSection(workers=1))
    quarantined = {entry.path: entry.reason for entry in quarantine}
    assert quarantined == {"truncated.jpg": "corrupt", "no_eoi.jpg": "corrupt"}
    frame = manifest[keep].assign(split="train").reset_index(drop=True)
    return frame, boxes_frame([])


def _exported(target: Path, frame: pd.DataFrame, name: str) -> Path:
    image_id = frame.loc[frame["path"] == name, "image_id"].iloc[0]
    return target / "images" / "train" / f"{image_id}{Path(name).suffix}"


def test_truncated_jpegs_are_quarantined_and_only_safe_images_are_linked(
    source: Path, tmp_path: Path
) -> None:
    frame, boxes = _validated(source, tmp_path)
    before = tree_digest(source)
    target = tmp_path / "yolo"
    result = export_dataset(frame, boxes, CLASSES, source, target)
    assert (result.linked, result.copied) == (2, 2)
    for name in ("clean.jpg", "clean.png"):
        assert _exported(target, frame, name).stat().st_ino == (source / name).stat().st_ino
    for name in ("trailing.jpg", "jpeg_named.png"):
        exported = _exported(target, frame, name)
        assert exported.stat().st_ino != (source / name).stat().st_ino
        assert exported.read_bytes() == (source / name).read_bytes()
    assert tree_digest(source) == before


def test_the_rule_is_exactly_when_ultralytics_rewrites(source: Path, tmp_path: Path) -> None:
    """Run ultralytics' own dataset check on the export: it rewrites exactly the copies, and the
    source never changes."""
    from ultralytics.data.utils import check_image

    frame, boxes = _validated(source, tmp_path)
    before = tree_digest(source)
    target = tmp_path / "yolo"
    export_dataset(frame, boxes, CLASSES, source, target)
    for name in frame["path"]:
        exported = _exported(target, frame, name)
        linked = exported.stat().st_ino == (source / name).stat().st_ino
        message, _ = check_image(str(exported))
        assert bool(message) == rewrite_risk(source / name) == (not linked), name
    assert tree_digest(source) == before


def test_a_failed_link_falls_back_to_a_copy(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame, boxes = _validated(source, tmp_path)

    def cross_device(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(yolo_export.os, "link", cross_device)
    target = tmp_path / "yolo"
    result = export_dataset(frame, boxes, CLASSES, source, target)
    assert (result.linked, result.copied) == (0, len(frame))
    exported = _exported(target, frame, "clean.jpg")
    assert exported.stat().st_ino != (source / "clean.jpg").stat().st_ino
    assert exported.read_bytes() == (source / "clean.jpg").read_bytes()
    assert not list(target.rglob("*.tmp"))


def test_rerunning_over_an_earlier_linked_tree_never_writes_into_the_source(
    source: Path, tmp_path: Path
) -> None:
    frame, boxes = _validated(source, tmp_path)
    target = tmp_path / "yolo"
    # An earlier export (or an older version of this code) linked the risky file too.
    risky = _exported(target, frame, "trailing.jpg")
    risky.parent.mkdir(parents=True)
    os.link(source / "trailing.jpg", risky)
    before = tree_digest(source)

    first = export_dataset(frame, boxes, CLASSES, source, target)
    assert (first.linked, first.copied) == (2, 2)
    assert risky.stat().st_ino != (source / "trailing.jpg").stat().st_ino  # replaced by a copy
    assert (source / "trailing.jpg").stat().st_nlink == 1
    again = export_dataset(frame, boxes, CLASSES, source, target)
    assert (again.linked, again.copied, again.labels_written, again.removed) == (0, 0, 0, 0)
    assert _exported(target, frame, "clean.jpg").stat().st_ino == (source / "clean.jpg").stat().st_ino
    assert tree_digest(source) == before


def test_rewrite_risk_reads_the_bytes_not_the_name(tmp_path: Path) -> None:
    cases = {
        "ok.jpg": _jpeg(0),
        "trailing.jpg": _jpeg(0) + b"x",
        "jpeg.png": _jpeg(0)[:-2],
        "png.jpg": _png(0),
        "tiny.jpg": b"\xff\xd8\xff",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    risky = {name for name in cases if rewrite_risk(tmp_path / name)}
    assert risky == {"trailing.jpg", "jpeg.png", "tiny.jpg"}
