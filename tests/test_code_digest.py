"""Caches that know the code: every run fingerprint and cache key includes a digest of the source
that computes it, so editing that source recomputes, and leaving it alone reuses.

Code changes are made on copies of ``stages/`` in tmp_path, never in the repository: in-process
through ``code_digest``'s ``root`` (``use_code``), end to end by running ``python -m stages.train``
inside the copy.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from stages import augment, ingest, split, train, validate
from stages.core import codebase
from stages.core.hashing import sha256_file
from stages.core.layout import Layout
from stages.core.params import ValidateSection
from stages.dataprep import integrity, near_duplicates
from stages.engine import loop
from stages.models.backbones import create_classifier
from stages.models.feature_cache import FEATURE_CODE, FeatureCache, FeatureRequest
from stages.models.fingerprints import CLASSIFIER_CODE, classifier_code_digest
from tests.conftest import REPO_ROOT, fast_params, make_classify_source

REAL_CODE_DIGEST = codebase.code_digest


@pytest.fixture(autouse=True)
def fresh_digests() -> Iterator[None]:
    """Closures and digests are cached per process; files change under them in these tests."""
    codebase.code_digest.cache_clear()
    codebase.import_closure.cache_clear()
    yield
    codebase.code_digest.cache_clear()
    codebase.import_closure.cache_clear()


def code_copy(target: Path, edit: tuple[str, str, str] | None = None) -> Path:
    """A copy of the project's ``stages/`` under ``target``; ``edit`` = (file, old, new) changes one file."""
    shutil.copytree(REPO_ROOT / "stages", target / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    if edit is not None:
        name, old, new = edit
        file = target / name
        text = file.read_text(encoding="utf-8")
        assert text.count(old) == 1, f"{old!r} not found once in {name}; update this test's edit"
        file.write_text(text.replace(old, new), encoding="utf-8")
    return target


def appended(name: str) -> tuple[str, str, str]:
    """An edit that changes a file's bytes without changing what it does (enough for a digest)."""
    first_line = (REPO_ROOT / name).read_text(encoding="utf-8").splitlines(keepends=True)[0]
    return name, first_line, first_line + "# edited by tests/test_code_digest.py\n"


def use_code(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Caches digest the code under ``root`` from now on, as if the project had been edited."""
    monkeypatch.setattr(codebase, "code_digest", lambda *modules: REAL_CODE_DIGEST(*modules, root=root))


# --- the closure and digest themselves, on a fake project -----------------------------------


def _fake_project(root: Path) -> Path:
    files = {
        "stages/__init__.py": "from stages.core import base\n",
        "stages/core/__init__.py": "",
        "stages/core/base.py": "X = 1\n",
        "stages/engine/__init__.py": "",
        "stages/engine/trainer.py": (
            "from stages.core.base import X\n\n\ndef train():\n"
            "    from stages.engine import lazy  # imported only when train() runs\n\n"
            "    return lazy.run() + X\n"
        ),
        "stages/engine/lazy.py": "def run():\n    return 1\n",
        "stages/engine/unrelated.py": "Y = 2\n",
        "stages/report.py": "import stages.engine.unrelated\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


def test_closure_follows_lazy_imports_and_package_inits_and_nothing_else(tmp_path: Path) -> None:
    root = _fake_project(tmp_path)
    closure = {p.relative_to(root).as_posix() for p in codebase.import_closure("stages.engine.trainer", root)}
    assert closure == {
        "stages/__init__.py",
        "stages/core/__init__.py",
        "stages/core/base.py",  # imported by the trainer and by the package __init__
        "stages/engine/__init__.py",
        "stages/engine/trainer.py",
        "stages/engine/lazy.py",  # a lazy import inside a function is code the trainer runs
    }
    with pytest.raises(ModuleNotFoundError):
        codebase.import_closure("stages.engine.missing", root)


def test_digest_changes_with_a_file_in_the_closure_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _fake_project(tmp_path)

    def digest() -> str:
        codebase.code_digest.cache_clear()
        codebase.import_closure.cache_clear()
        return codebase.code_digest("stages.engine.trainer", root=root)

    before = digest()
    assert digest() == before  # stable while nothing changes
    (root / "stages/engine/unrelated.py").write_text("Y = 3\n", encoding="utf-8")
    (root / "stages/report.py").write_text("Z = 1\n", encoding="utf-8")
    assert digest() == before
    (root / "stages/engine/lazy.py").write_text("def run():\n    return 2\n", encoding="utf-8")
    after_lazy = digest()
    assert after_lazy != before
    (root / "stages/__init__.py").write_text("from stages.core import base  # edited\n", encoding="utf-8")
    assert digest() != after_lazy
    # The numeric libraries' versions are part of it too: another torch, another digest.
    versions = codebase.library_versions()
    monkeypatch.setattr(codebase, "library_versions", lambda: {**versions, "torch": "0.0.0"})
    assert digest() not in (before, after_lazy)


def test_each_cache_digests_the_code_that_computes_it() -> None:
    """The modules each cache names cover the code that decides its content, and not much more."""

    def closure(*modules: str) -> set[str]:
        files = set().union(*(codebase.import_closure(m, REPO_ROOT) for m in modules))
        return {p.relative_to(REPO_ROOT).as_posix() for p in files}

    classifier = closure(*CLASSIFIER_CODE)
    for name in ("loop", "schedule", "strategies", "linear_probe", "classifier"):
        assert f"stages/engine/{name}.py" in classifier
    for name in ("augmentation", "torch_datasets", "imaging"):
        assert f"stages/dataprep/{name}.py" in classifier
    assert "stages/models/backbones.py" in classifier

    features = closure(*FEATURE_CODE)
    assert {"stages/dataprep/augmentation.py", "stages/models/backbones.py"} <= features
    assert "stages/engine/loop.py" not in features

    from stages.engine.yolo.trainer import DETECTOR_CODE

    detector = closure(*DETECTOR_CODE)
    assert {"stages/engine/yolo/augment.py", "stages/dataprep/yolo_export.py"} <= detector
    assert "stages/engine/loop.py" not in detector  # classifier code does not retrain the detector

    decoding = closure(*integrity.INTEGRITY_CODE)
    assert "stages/dataprep/imaging.py" in decoding
    assert not any(p.startswith("stages/core/params") for p in decoding)  # params edits keep it
    assert "stages/dataprep/imaging.py" in closure(*near_duplicates.HASH_CODE)


# --- the caches miss after a code change and hit otherwise ----------------------------------


@pytest.fixture
def images(tmp_path: Path) -> tuple[list[Path], list[str]]:
    source = make_classify_source(tmp_path / "source", per_class=2, size=(32, 32))
    files = sorted(source.rglob("*.png"))
    return files, [sha256_file(f) for f in files]


def test_feature_cache_misses_after_a_code_change_and_hits_otherwise(
    tmp_path: Path, images, monkeypatch: pytest.MonkeyPatch
) -> None:
    files, shas = images
    requests = [FeatureRequest(f, sha, 0) for f, sha in zip(files, shas, strict=True)]
    backbone = create_classifier("efficientnet_lite0", "none", 2, image_size=32)

    def computed() -> int:
        cache = FeatureCache(tmp_path / "features", backbone, "efficientnet_lite0", None, seed=0)
        cache.get(requests, torch.device("cpu"), 8, "test features")
        return cache.computed

    assert computed() == len(files)
    assert computed() == 0
    use_code(monkeypatch, code_copy(tmp_path / "same"))
    assert computed() == 0  # an identical copy of the code is the same code
    use_code(monkeypatch, code_copy(tmp_path / "other", appended("stages/engine/schedule.py")))
    assert computed() == 0  # the training schedule does not compute features
    use_code(monkeypatch, code_copy(tmp_path / "edited", appended("stages/dataprep/augmentation.py")))
    assert computed() == len(files)


def test_integrity_and_hash_caches_miss_after_a_code_change_and_hit_otherwise(
    tmp_path: Path, images, monkeypatch: pytest.MonkeyPatch
) -> None:
    files, shas = images
    decoded: list[Path] = []
    hashed: list[Path] = []
    real_inspect, real_hash = integrity.inspect_image, near_duplicates.hash_image
    monkeypatch.setattr(
        integrity, "inspect_image", lambda p, m, *f: decoded.append(p) or real_inspect(p, m, *f)
    )
    monkeypatch.setattr(near_duplicates, "hash_image", lambda p, k: hashed.append(p) or real_hash(p, k))
    limits = ValidateSection(workers=1)

    def recomputed() -> tuple[int, int]:
        decoded.clear()
        hashed.clear()
        facts = integrity.check_images(files, shas, limits, tmp_path / "integrity")
        assert all(f.ok for f in facts)
        near_duplicates.compute_hashes(files, shas, ["phash"], tmp_path / "phash")
        return len(decoded), len(hashed)

    everything = (len(files), len(files))
    assert recomputed() == everything
    assert recomputed() == (0, 0)
    use_code(monkeypatch, code_copy(tmp_path / "other", appended("stages/engine/loop.py")))
    assert recomputed() == (0, 0)
    use_code(monkeypatch, code_copy(tmp_path / "edited", appended("stages/dataprep/imaging.py")))
    assert recomputed() == everything  # both decode through imaging.py


# --- end to end: train reuses a finished run until the training code changes ----------------


def _train_in_copy(code: Path, params_file: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # `stages` must be the copy
    return subprocess.run(
        [sys.executable, "-m", "stages.train", "--params", str(params_file)],
        cwd=code,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _meta(params) -> dict:
    return json.loads(torch.load(Layout(params.paths).classifier, weights_only=True)["meta"])


def test_train_reuses_a_finished_run_until_the_training_code_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    source = make_classify_source(tmp_path / "source", per_class=8, size=(40, 40))
    params = fast_params(
        tmp_path,
        source,
        train={"strategy": "full", "epochs": 1, "batch_size": 4, "image_size": 32},
    )
    for stage in (ingest, validate, split, augment):
        stage.run(params)
    layout = Layout(params.paths)
    epochs_trained: list[int] = []
    real_save = loop._save_state
    monkeypatch.setattr(loop, "_save_state", lambda *a: epochs_trained.append(a[8]) or real_save(*a))
    caplog.set_level(logging.INFO, logger="stages.train")

    train.run(params)
    first = _meta(params)
    first_state = torch.load(layout.classifier, weights_only=True)["state_dict"]
    assert first["code_digest"] == classifier_code_digest()
    assert epochs_trained == [1]

    # (b) Same code: the finished run is reused, no epoch runs, the model is the same.
    epochs_trained.clear()
    caplog.clear()
    train.run(params)
    assert epochs_trained == []
    assert "finished run found" in caplog.text
    assert _meta(params)["code_digest"] == first["code_digest"]
    again = torch.load(layout.classifier, weights_only=True)["state_dict"]
    assert all(torch.equal(again[k], first_state[k]) for k in first_state)

    # (a) The schedule's floor changes (later steps get another LR): the next train really trains.
    code = code_copy(
        tmp_path / "code",
        ("stages/engine/schedule.py", "min_factor: float = 0.01", "min_factor: float = 0.2"),
    )
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json", by_alias=True)), encoding="utf-8")
    done = _train_in_copy(code, params_file)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "finished run found" not in output
    assert "full epoch 1:" in output
    retrained = _meta(params)
    assert retrained["code_digest"] != first["code_digest"]
    assert retrained["code_digest"] == REAL_CODE_DIGEST(*CLASSIFIER_CODE, root=code)
    assert len(list((layout.paths.cache / "runs").iterdir())) == 2  # a new run folder, the old one kept
    state = torch.load(layout.classifier, weights_only=True)["state_dict"]
    assert any(not torch.equal(state[k], first_state[k]) for k in first_state)
