"""``data.task: segment``: a training run killed with SIGKILL resumes from its last checkpoint and
ends bit-identical (on CPU) to a run that was never interrupted, on a copy of the facade demo."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml

from stages import augment, ingest, split, validate
from stages.core.params import parse_params
from tests.conftest import REPO_ROOT
from tests.test_segment_pipeline import DEMO, segment_params
from tests.test_strategies import _train_cli

pytestmark = pytest.mark.slow

EPOCHS = 4
PREPARED = ("interim", "processed")  # ingest..augment outputs; the uninterrupted run reuses them


def _params_file(root: Path, source: Path) -> Path:
    """The segment demo's params, every output under ``root``, small and single-threaded."""
    raw = segment_params()
    raw["data"]["source"] = str(source)
    names = ("interim", "processed", "models", "reports", "cache", "export")
    raw["paths"] = {name: str(root / name) for name in names}
    raw["train"].update(
        {"backbone": "efficientnet_lite0", "epochs": EPOCHS, "batch_size": 8, "patience": 10, "threads": 1}
    )
    parse_params(raw)  # a typo in the overrides fails here, not as a confusing train error
    file = root / "params.yaml"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return file


def _segmenter_state(root: Path) -> dict[str, torch.Tensor]:
    return torch.load(root / "models" / "segmenter.pt", weights_only=True)["state_dict"]


def test_kill_9_then_rerun_resumes_and_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(REPO_ROOT / DEMO, source)
    interrupted = _params_file(tmp_path / "a", source)
    params = parse_params(yaml.safe_load(interrupted.read_text(encoding="utf-8")))
    for stage in (ingest, validate, split, augment):
        stage.run(params)

    process = _train_cli(interrupted)
    runs = tmp_path / "a" / "cache" / "seg_runs"
    states: list[Path] = []
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:  # wait until at least one epoch is checkpointed
            states = list(runs.glob("*/last.pt"))
            if states and torch.load(states[0], weights_only=True)["epoch"] >= 1:
                break
            assert process.poll() is None, process.communicate()[0][-3000:]
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
    assert len(states) == 1, states
    saved_epoch = torch.load(states[0], weights_only=True)["epoch"]
    assert 1 <= saved_epoch < EPOCHS, "the run finished before it could be killed"

    resumed = _train_cli(interrupted)
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output[-3000:]
    assert f"resuming from epoch {saved_epoch + 1}" in output, output[-3000:]

    uninterrupted = _params_file(tmp_path / "b", source)
    for name in PREPARED:
        shutil.copytree(tmp_path / "a" / name, tmp_path / "b" / name)
    reference = _train_cli(uninterrupted)
    output, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, output[-3000:]
    assert "resuming" not in output

    a, b = _segmenter_state(tmp_path / "a"), _segmenter_state(tmp_path / "b")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
