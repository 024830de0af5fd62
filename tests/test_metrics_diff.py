"""`dvc metrics diff`, `dvc params diff` and `dvc plots diff` across two commits with different params.

A throwaway git + DVC repository holds a one-stage dvc.yaml whose stage writes
``reports/metrics.json`` and the plot files exactly as ``evaluate`` does (same functions), and
the real dvc.yaml's ``plots:`` entries for those files (same template), so what is checked is
what a user sees when comparing two commits.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow  # two `dvc repro` runs in a fresh repository (about 30 s)

SCRIPT = """
import numpy as np, yaml
from pathlib import Path
from stages.metrics.classification import Options, curves, summarise
from stages.core.contracts import write_json

params = yaml.safe_load(Path("params.yaml").read_text())
rng = np.random.default_rng(0)
y = rng.integers(0, 3, 120)
logits = rng.normal(size=(120, 3)) * params["evaluate"]["noise"]
logits[np.arange(120), y] += 1.0
p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
options = Options(resamples=params["evaluate"]["bootstrap"], seed=params["base"]["seed"], top_k=2)
metrics, per_class = summarise(y, p, ["a", "b", "c"], options)
write_json({"task": "classify", **metrics, "split": "test", "images": 120}, Path("reports/metrics.json"))
for name, rows in curves(y, p, ["a", "b", "c"]).items():
    write_json(rows, Path("reports/plots") / f"{name}.json")
write_json([{"actual": "a", "predicted": "b"}], Path("reports/plots/confusion.json"))
"""


def _run(cwd: Path, *args: str) -> str:
    env = os.environ | {
        "PYTHONPATH": str(REPO_ROOT),
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    result = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result.stdout


def _dvc(cwd: Path, *args: str) -> str:
    return _run(cwd, sys.executable, "-m", "dvc", *args)


def _real_plots() -> list:
    """The real dvc.yaml's plot entries for files under reports/plots, paths resolved."""
    entries = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))["plots"]
    kept = []
    for entry in entries:
        name = entry if isinstance(entry, str) else next(iter(entry))
        if name.startswith("${paths.reports}/plots/"):
            path = name.replace("${paths.reports}", "reports")
            kept.append(path if isinstance(entry, str) else {path: entry[name]})
    return kept


@pytest.fixture(scope="module")
def two_commits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("diff")
    template = REPO_ROOT / "stages" / "reporting" / "plot_templates" / "by_class.json"
    (root / "stages" / "reporting" / "plot_templates").mkdir(parents=True)
    shutil.copy(template, root / "stages" / "reporting" / "plot_templates" / template.name)
    (root / "make_metrics.py").write_text(SCRIPT, encoding="utf-8")
    stage = {
        "cmd": "python make_metrics.py",
        "deps": ["make_metrics.py"],
        "params": ["base.seed", "evaluate"],
        "metrics": [{"reports/metrics.json": {"cache": False}}],
        "outs": [{"reports/plots": {"cache": False}}],
    }
    dvc_yaml = {"stages": {"evaluate": stage}, "plots": _real_plots()}
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False), encoding="utf-8")
    params = {"base": {"seed": 1}, "evaluate": {"noise": 0.5, "bootstrap": 100}}
    (root / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    _run(root, "git", "init", "-q")
    _dvc(root, "init", "-q")
    for noise in (0.5, 2.0):
        params["evaluate"]["noise"] = noise
        (root / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
        _dvc(root, "repro", "-q")
        _run(root, "git", "add", "-A")
        _run(root, "git", "commit", "-qm", f"noise {noise}")
    return root


def test_metrics_diff_shows_the_changed_metrics_with_their_intervals(two_commits: Path) -> None:
    diff = json.loads(_dvc(two_commits, "metrics", "diff", "HEAD~1", "HEAD", "--json"))[
        "reports/metrics.json"
    ]
    for name in (
        "accuracy",
        "accuracy_ci_low",
        "f1_macro",
        "roc_auc_macro",
        "log_loss",
        "ece",
        "top2_accuracy",
    ):
        assert name in diff, name
        assert diff[name]["old"] != diff[name]["new"], name
    assert diff["accuracy"]["new"] < diff["accuracy"]["old"]  # more noise, worse model
    assert diff["log_loss"]["diff"] > 0
    assert "images" not in diff  # unchanged values are left out (no --all)
    params = json.loads(_dvc(two_commits, "params", "diff", "HEAD~1", "HEAD", "--json"))["params.yaml"]
    assert (params["evaluate.noise"]["old"], params["evaluate.noise"]["new"]) == (0.5, 2.0)


def test_plots_diff_draws_each_declared_curve_for_both_revisions(two_commits: Path) -> None:
    shown = json.loads(_dvc(two_commits, "plots", "diff", "HEAD~1", "HEAD", "--json"))
    assert not shown.get("errors"), shown.get("errors")
    data = shown["data"]
    for name in ("roc", "pr_curve", "f1_confidence", "confusion"):
        assert f"reports/plots/{name}.json" in data, name
    roc = data["reports/plots/roc.json"][0]
    assert set(roc["revisions"]) == {"HEAD~1", "HEAD"}
    rows = roc["content"]["data"]["values"]
    assert {r["class"] for r in rows} == {"a", "b", "c"} and {r["rev"] for r in rows} == {"HEAD~1", "HEAD"}
    assert roc["content"]["encoding"]["color"]["field"] == "class"
