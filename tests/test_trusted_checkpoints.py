"""Pickled files are opened only when this project recorded their digest (or pins it in code).

Each "payload" below is a pickle that creates a marker file when unpickled: a loader that ran
it would leave the marker behind, so its absence shows nothing from the file was executed.
The anchor for ``models/detector.pt`` is the git-tracked ``reports/model_digest.json``: a DVC
remote's writer can replace a checkpoint and its sidecar together, not what git holds.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

import stages.engine.classifier
import stages.train
from pipelines.flow import committed_record, untrusted_checkpoints
from stages.core import trust
from stages.core.errors import UserError
from stages.core.hashing import sha256_file
from stages.core.layout import Layout
from stages.engine.yolo import trainer
from tests.conftest import REPO_ROOT, fast_params


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


def _replaced_pair(detector: Path, marker: Path) -> None:
    """What a writer of the DVC remote can do: a new detector.pt with a sidecar that agrees."""
    _planted(detector, marker)
    trust.record_trusted(detector)


def test_a_detector_replaced_with_its_sidecar_is_refused_by_the_git_tracked_record(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    detector = tmp_path / "models" / "detector.pt"
    detector.parent.mkdir()
    detector.write_bytes(b"the detector train wrote")
    record = tmp_path / "reports" / "model_digest.json"
    written = trust.write_digest_record(record, [detector])
    assert written == {"detector.pt": sha256_file(detector)}
    assert "git-tracked digest record" in trust.verify_recorded(detector, record)

    _replaced_pair(detector, marker)
    assert trust.verify_trusted(detector) == detector  # the sidecar alone cannot tell
    with pytest.raises(trust.UntrustedFileError) as caught:
        trainer.load_detector(detector, record)
    message = str(caught.value)
    assert "\n" not in message and str(record) in message and "git-tracked" in message
    assert not marker.exists()

    record.write_text('{"classifier.pt": "' + "0" * 64 + '"}')  # a record without the detector
    with pytest.raises(trust.UntrustedFileError, match="not listed in"):
        trainer.load_detector(detector, record)
    record.write_text("not json")  # a damaged record is no reason to fall back to the sidecar
    with pytest.raises(trust.UntrustedFileError, match="not a digest record"):
        trainer.load_detector(detector, record)
    record.unlink()  # no record (a model outside the pipeline): the sidecar is the check
    assert "sidecar" in trust.verify_recorded(detector, record)
    assert not marker.exists()


def test_predict_and_serve_find_the_checkouts_record_for_its_detector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``load_detector(path)`` without a record, as the serving loader calls it, inside a checkout."""
    marker = tmp_path / "code-ran"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": {"source": "images"}}), encoding="utf-8")
    detector = Path("models/detector.pt")
    detector.parent.mkdir()
    detector.write_bytes(b"the detector train wrote")
    trust.write_digest_record(Path("reports/model_digest.json"), [detector])
    assert trainer.detector_record(detector) == Path("reports/model_digest.json")
    assert trainer.detector_record(tmp_path / "elsewhere.pt") is None
    _replaced_pair(detector, marker)
    with pytest.raises(trust.UntrustedFileError, match="git-tracked digest record"):
        trainer.load_detector(detector)
    assert not marker.exists()


def test_the_train_stage_records_its_checkpoint_in_a_git_tracked_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = fast_params(tmp_path, tmp_path / "data")
    layout = Layout(params.paths)

    def fake_train(params, on_epoch=None):
        layout.classifier.parent.mkdir(parents=True)
        layout.classifier.write_bytes(b"tensors")
        return SimpleNamespace(checkpoint=layout.classifier)

    monkeypatch.setattr(stages.engine.classifier, "train_classifier", fake_train)
    stages.train.run(params)
    recorded = trust.read_digest_record(layout.model_digest)
    assert recorded == {"classifier.pt": sha256_file(layout.classifier)}
    train = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]["train"]
    declared = [o for o in train["outs"] if isinstance(o, dict) and "${paths.reports}/model_digest.json" in o]
    assert declared == [{"${paths.reports}/model_digest.json": {"cache": False}}]  # git-tracked, like metrics


def _git(root: Path, *args: str) -> None:
    command = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args]
    subprocess.run(command, check=True, capture_output=True)


def test_the_flow_keeps_a_run_cache_restore_only_when_the_committed_record_vouches_for_it(
    tmp_path: Path,
) -> None:
    root = tmp_path / "checkout"
    models, record = root / "models", root / "reports" / "model_digest.json"
    models.mkdir(parents=True)
    detector = models / "detector.pt"
    detector.write_bytes(b"the detector in git's record")
    committed = trust.write_digest_record(record, [detector])
    _git(root, "init", "-q")
    _git(root, "add", "reports/model_digest.json")
    _git(root, "commit", "-qm", "record")
    stage = SimpleNamespace(outs=[SimpleNamespace(fs_path=str(models)), SimpleNamespace(fs_path=str(record))])

    # The restore of the same model keeps it.
    assert committed_record(root, record) == committed
    assert untrusted_checkpoints(stage, committed_record(root, record), record) == []

    # A run-cache entry whose detector.pt, sidecar and record all agree with each other: the
    # record it restored is not the one read before the restore, so all of it is refused.
    _replaced_pair(detector, tmp_path / "code-ran")
    restored = trust.write_digest_record(record, [detector])
    assert committed_record(root, record) == committed  # git HEAD, not the restored file
    assert untrusted_checkpoints(stage, committed, record) == [detector, record]
    assert untrusted_checkpoints(stage, restored, record) == []  # what trusting the restored file would do
    assert untrusted_checkpoints(stage, None, record) == [detector, record]  # no record: nothing kept


def test_without_git_the_record_before_the_restore_is_the_anchor(tmp_path: Path) -> None:
    models, record = tmp_path / "models", tmp_path / "reports" / "model_digest.json"
    models.mkdir()
    (models / "classifier.pt").write_bytes(b"tensors")
    before = trust.write_digest_record(record, [models / "classifier.pt"])
    assert committed_record(tmp_path, record) == before  # read before remove_outs and the restore
    record.unlink()
    assert committed_record(tmp_path, record) is None
    stage = SimpleNamespace(outs=[SimpleNamespace(fs_path=str(models))])  # a stage without the record
    assert untrusted_checkpoints(stage, before, record) == []
    (models / "classifier.pt").write_bytes(b"other tensors")
    assert untrusted_checkpoints(stage, before, record) == [models / "classifier.pt"]
