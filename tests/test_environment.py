"""The dependency set imports together, offline, and every entry point is made offline first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from stages.core.offline import OFFLINE_ENV
from tests.conftest import REPO_ROOT

LIBRARIES = [
    "torch",
    "torchvision",
    "timm",
    "ultralytics",
    "dvc",
    "dvclive",
    "prefect",
    "great_expectations",
    "albumentations",
    "pandas",
    "pyarrow",
    "pydantic",
    "defusedxml",
    "imagehash",
    "torchmetrics",
    "sklearn",
    "rich",
    "tqdm",
    "matplotlib",
    "fastapi",
]


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_ENV and k != "YOLO_CONFIG_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    return env


def _python(code: str, env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_whole_stack_imports_together_after_the_offline_setup(tmp_path: Path) -> None:
    code = (
        "import os, stages\n"
        f"for name in {LIBRARIES!r}: __import__(name)\n"
        "import fastapi, prefect\n"
        "assert tuple(int(x) for x in fastapi.__version__.split('.')[:2]) < (0, 155)\n"
        "print(os.environ['YOLO_CONFIG_DIR'])\n"
    )
    result = _python(code, _clean_env(tmp_path), timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    config_dir = Path(result.stdout.strip().splitlines()[-1])
    assert (config_dir / "Ultralytics" / "Arial.ttf").stat().st_size > 10_000


def test_every_entry_package_applies_the_offline_environment(tmp_path: Path) -> None:
    for package in ("stages", "pipelines"):
        code = (
            f"import json, os, {package}; "
            f"print(json.dumps({{k: os.environ.get(k) for k in {sorted(OFFLINE_ENV)!r}}}))"
        )
        result = _python(code, _clean_env(tmp_path))
        assert result.returncode == 0, result.stderr
        seen = json.loads(result.stdout)
        assert seen == OFFLINE_ENV, package


def test_user_can_override_an_offline_variable(tmp_path: Path) -> None:
    env = _clean_env(tmp_path) | {"HF_HUB_OFFLINE": "0"}
    code = "import os, stages; print(os.environ['HF_HUB_OFFLINE'])"
    assert _python(code, env).stdout.strip() == "0"
