"""Pickled files are opened only when this project recorded their digest (or pins it in code).

Each "payload" below is a pickle that creates a marker file when unpickled: a loader that ran
it would leave the marker behind, so its absence shows nothing from the file was executed.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pipelines.flow import untrusted_checkpoints
from stages.core import trust
from stages.core.errors import UserError
from stages.engine.yolo import trainer


class Payload:
    """Unpickling this calls ``os.mkdir(marker)``: code execution made visible."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _planted(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"model": Payload(marker)}))
    return path


def test_a_file_loads_only_with_the_digest_recorded_when_it_was_written(tmp_path: Path) -> None:
    path = tmp_path / "models" / "detector.pt"
    path.parent.mkdir()
    path.write_bytes(b"weights v1")
    with pytest.raises(trust.UntrustedFileError, match="no digest record"):
        trust.verify_trusted(path, what="detector")
    digest = trust.record_trusted(path)
    assert trust.verify_trusted(path) == path and trust.is_trusted(path, digest)
    path.write_bytes(b"weights v2 from a remote")  # replaced after it was recorded
    with pytest.raises(trust.UntrustedFileError) as caught:
        trust.verify_trusted(path, what="detector")
    message = str(caught.value)
    assert isinstance(caught.value, UserError) and "\n" not in message
    assert str(path) in message and "does not match detector.pt.sha256.json" in message
    with pytest.raises(trust.UntrustedFileError, match="pinned in the code"):
        trust.verify_trusted(path, expected=digest)
    assert not list(path.parent.glob("*.tmp"))


def test_a_planted_detector_is_refused_before_ultralytics_unpickles_it(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    detector = _planted(tmp_path / "models" / "detector.pt", marker)
    with pytest.raises(trust.UntrustedFileError, match="no digest record"):
        trainer.load_detector(detector)
    trust.sidecar_path(detector).write_text('{"file": "detector.pt", "sha256": "' + "0" * 64 + '"}')
    with pytest.raises(trust.UntrustedFileError, match="does not match"):
        trainer.load_detector(detector)
    assert not marker.exists()


def test_the_shipped_start_checkpoint_must_have_its_pinned_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    path = trainer.offline_checkpoint()  # the installed file has the pinned digest
    assert trust.is_trusted(path, trainer.OFFLINE_SHA256)
    monkeypatch.setattr(trainer, "OFFLINE_SHA256", "0" * 64)
    with pytest.raises(trust.UntrustedFileError, match="pinned in the code"):
        trainer.offline_checkpoint()


def test_a_run_with_an_unrecorded_or_corrupt_last_pt_is_moved_aside_and_restarts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "code-ran"
    runs = tmp_path / "yolo_runs"
    run_dir = runs / "abc123"
    _planted(run_dir / "weights" / "last.pt", marker)  # no digest record: never unpickled
    with caplog.at_level(logging.WARNING, logger="stages.train"):
        assert trainer.run_plan(run_dir) == ("fresh", None)
    assert not marker.exists() and not run_dir.exists()
    assert "moved aside" in caplog.text and len(list(runs.glob("abc123.corrupt-*"))) == 1

    last = run_dir / "weights" / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"cut short by a kill")
    trust.record_trusted(last)  # recorded, but unreadable
    assert trainer.run_plan(run_dir) == ("fresh", None)
    assert len(list(runs.glob("abc123.corrupt-*"))) == 2


def test_ultralytics_label_caches_are_never_unpickled_while_we_train(tmp_path: Path) -> None:
    import ultralytics.data.dataset as ud

    marker = tmp_path / "code-ran"
    cache = tmp_path / "labels" / "train.cache"
    cache.parent.mkdir()
    with cache.open("wb") as handle:
        np.save(handle, np.array({"version": "x", "payload": Payload(marker)}, dtype=object))
    with trainer.ultralytics_offline(None):
        with pytest.raises(FileNotFoundError):
            vars(ud)["load_dataset_cache_file"](cache)
        vars(ud)["save_dataset_cache_file"]("", tmp_path / "new.cache", {}, "1")
    assert not marker.exists() and not (tmp_path / "new.cache").exists()


def test_the_flow_finds_checkpoints_from_the_run_cache_that_it_did_not_write(tmp_path: Path) -> None:
    models = tmp_path / "models"
    good, bad = models / "classifier.pt", models / "detector.pt"
    for path in (good, bad):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(path.name.encode())
    trust.record_trusted(good)
    stage = SimpleNamespace(outs=[SimpleNamespace(fs_path=str(models))])
    assert untrusted_checkpoints(stage) == [bad]
    trust.record_trusted(bad)
    assert untrusted_checkpoints(stage) == []
