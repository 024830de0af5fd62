"""Start-up cost as behaviour: which heavy libraries a stage loads, checked in fresh processes.

A stage that does not need torch must not import it (it is most of a light stage's start-up),
``--help`` must not pay for any heavy library, and only detection training may load
ultralytics (the AGPL boundary). Timings live in ``bench/startup.py``, not here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.core.layout import Layout
from tests.conftest import REPO_ROOT, fast_params, make_classify_source

STAGES = ("ingest", "validate", "split", "label_issues", "augment", "train", "evaluate", "export", "report")
HEAVY = ("torch", "great_expectations", "albumentations", "ultralytics")

# Runs code in a fresh interpreter, then prints the heavy libraries it left in sys.modules.
_LOADED = """
import json, sys
{body}
print("LOADED=" + json.dumps([name for name in {heavy!r} if name in sys.modules]))
"""
# What ``python -m stages.<name> --help`` does, with the help text kept off the last line.
_HELP = """
import contextlib, io, runpy
sys.argv = ["stages.{stage}", "--help"]
text = io.StringIO()
with contextlib.redirect_stdout(text):
    try:
        runpy.run_module("stages.{stage}", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        assert exc.code == 0, exc.code
assert "--params" in text.getvalue(), text.getvalue()
"""


def loaded_after(body: str) -> set[str]:
    """Heavy libraries in ``sys.modules`` after running ``body`` in a fresh process at the repo root."""
    code = _LOADED.format(body=body, heavy=HEAVY)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = [x for x in done.stdout.splitlines() if x.startswith("LOADED=")][-1]
    return set(json.loads(line.removeprefix("LOADED=")))


@pytest.mark.parametrize("stage", STAGES)
def test_importing_a_stage_loads_no_heavy_library(stage: str) -> None:
    # Entry points import what run() needs inside run(): importing one (as tests, the Prefect
    # flow and the docs do) costs no torch, great-expectations, albumentations or ultralytics.
    assert loaded_after(f"import stages.{stage}") == set()


@pytest.mark.parametrize("stage", STAGES)
def test_stage_help_loads_no_heavy_library(stage: str) -> None:
    assert loaded_after(_HELP.format(stage=stage)) == set()


def test_metric_names_and_classification_metrics_import_without_torch() -> None:
    # The report and the gate read metric names; that must not cost torch or sklearn's import.
    body = "import stages.metrics.names, stages.metrics.classification, stages.metrics.detection"
    assert loaded_after(body + "\nassert 'sklearn' not in sys.modules") == set()


@pytest.mark.slow
def test_data_stages_run_without_torch(tmp_path: Path) -> None:
    # Not just their imports: a real ingest -> validate -> split never loads torch or ultralytics
    # (great-expectations is validate's own cost).
    source = make_classify_source(tmp_path / "source", per_class=10)
    params = fast_params(tmp_path, source)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json", by_alias=True)), encoding="utf-8")
    body = (
        "from stages.core.params import load_params\n"
        "import stages.ingest, stages.validate, stages.split\n"
        f"params = load_params({str(params_file)!r})\n"
        "for stage in (stages.ingest, stages.validate, stages.split):\n"
        "    stage.run(params)\n"
    )
    loaded = loaded_after(body)
    assert "great_expectations" in loaded  # the run really reached the expectation suite
    assert loaded.isdisjoint({"torch", "ultralytics", "albumentations"})
    assert Layout(params.paths).splits.is_file()
