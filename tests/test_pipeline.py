"""End to end through DVC: repro, no-op repro, partial re-runs, and a remote round trip.

One throwaway project (a copy of the code, dvc.yaml and a params file pointing at generated
data) is built and reproduced once per module; each test then works on its own copy of it, so
the tests pass alone, in any order, and the real repository is never touched.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT, make_classify_source, tree_digest

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)  # `python` in dvc.yaml must be this venv's
    return os.environ | {
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }


def _sh(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(list(args), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def _dvc(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _sh(cwd, sys.executable, "-m", "dvc", *args, check=check)


def _ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", output))


@dataclass(frozen=True)
class BuiltProject:
    """A project after its first ``dvc repro``: the costly part, shared read-only by the tests."""

    root: Path
    first_repro: str  # stdout of that first repro
    raw_digest_before: str  # tree digest of data/raw before it


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltProject:
    root = tmp_path_factory.mktemp("project")
    for name in ("stages", "pipelines"):
        shutil.copytree(REPO_ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "dvc.yaml", root / "dvc.yaml")
    (root / "data").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "data" / "exclude.txt", root / "data" / "exclude.txt")  # split.exclude, a dep
    make_classify_source(root / "data" / "raw", per_class=10)
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["data"]["source"] = "data/raw"
    params["validate"]["workers"] = 1
    params["augment"]["preview"] = {"images": 2, "views": 2}
    params["train"].update({"image_size": 64, "epochs": 6, "aug_views": 1, "device": "cpu"})
    params["evaluate"]["bootstrap"] = 50
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    (root / ".gitignore").write_text("__pycache__/\n/data/cache/\n", encoding="utf-8")
    _sh(root, "git", "init", "-q")
    _dvc(root, "init", "-q")
    _sh(root, "git", "add", "-A")
    _sh(root, "git", "commit", "-qm", "test project")
    raw_digest_before = tree_digest(root / "data" / "raw")
    return BuiltProject(root, _dvc(root, "repro").stdout, raw_digest_before)


@pytest.fixture
def project(built: BuiltProject, tmp_path: Path) -> Path:
    """This test's own copy of the reproduced project (git, DVC cache and outputs included)."""
    root = tmp_path / "project"
    shutil.copytree(built.root, root)
    return root


def test_repro_builds_everything_then_a_second_repro_does_nothing(built: BuiltProject, project: Path) -> None:
    assert _ran_stages(built.first_repro) == {
        "ingest",
        "validate",
        "split",
        "label_issues",
        "augment",
        "train",
        "box_issues",
        "evaluate",
        "export",
        "report",
    }
    for output in (
        "reports/metrics.json",
        "reports/report.md",
        "models/classifier.pt",
        "reports/train/metrics.json",
        "reports/augmentation_preview.png",
    ):
        assert (project / output).is_file(), output

    second = _dvc(project, "repro")
    assert _ran_stages(second.stdout) == set()
    assert "up to date" in _dvc(project, "status").stdout
    assert tree_digest(project / "data" / "raw") == built.raw_digest_before


@pytest.mark.slow
def test_a_forced_rerun_with_the_same_inputs_leaves_dvc_lock_byte_identical(project: Path) -> None:
    """Clocks, uuids and pids must not reach an output: the gate's --check-committed relies on it."""
    before = (project / "dvc.lock").read_bytes()
    _dvc(project, "repro", "-f")
    after = (project / "dvc.lock").read_bytes()
    changed = difflib.unified_diff(before.decode().splitlines(), after.decode().splitlines(), lineterm="")
    assert after == before, "\n".join(list(changed)[:40])


def test_changing_a_train_param_reruns_only_train_and_downstream(project: Path) -> None:
    params_file = project / "params.yaml"
    params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    params["train"]["lr"] = params["train"]["lr"] * 3
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    result = _dvc(project, "repro")
    assert _ran_stages(result.stdout) == {"train", "box_issues", "evaluate", "export", "report"}


def test_outputs_round_trip_through_a_local_remote(project: Path, tmp_path: Path) -> None:
    model = project / "models" / "classifier.pt"
    before = model.read_bytes()
    _dvc(project, "remote", "add", "-d", "local", str(tmp_path / "remote"))
    _dvc(project, "push")
    model.unlink()
    shutil.rmtree(project / "data" / "interim")
    shutil.rmtree(project / ".dvc" / "cache")
    _dvc(project, "pull")
    assert model.read_bytes() == before
    assert (project / "data" / "interim" / "validate" / "manifest.parquet").is_file()
    assert "up to date" in _dvc(project, "status").stdout


def test_a_stage_rejecting_data_fails_the_repro_with_one_line(tmp_path: Path) -> None:
    project = tmp_path / "bad"
    shutil.copytree(REPO_ROOT / "stages", project / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    make_classify_source(project / "raw", per_class=3, classes={"only": (0, 0, 0)})
    params = {"data": {"source": str(project / "raw")}, "paths": {"interim": str(project / "interim")}}
    (project / "p.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    result = _sh(project, sys.executable, "-m", "stages.ingest", "--params", "p.yaml", check=False)
    assert result.returncode == 2
    assert "at least two classes" in result.stderr and "Traceback" not in result.stderr


def test_changing_augment_params_reruns_augment_and_the_trainer_not_the_data_stages(project: Path) -> None:
    params_file = project / "params.yaml"
    params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    params["augment"]["preset"] = "light" if params["augment"]["preset"] != "light" else "heavy"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    downstream = {"augment", "train", "box_issues", "evaluate", "export", "report"}
    assert _ran_stages(_dvc(project, "repro").stdout) == downstream

    # Only the preview changes: the saved policy is byte-identical, so nothing downstream re-runs.
    params["augment"]["preview"]["views"] = 1
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    assert _ran_stages(_dvc(project, "repro").stdout) == {"augment"}
