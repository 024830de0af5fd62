"""Concurrent runs on one checkout: one lock for the whole run, one writer per training run,
and a corrupt resume state that restarts instead of crashing."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from dvc.repo import Repo
from torch import nn

from pipelines import flow as flow_module
from stages.core import locks
from stages.core.params import Params
from stages.engine import loop
from tests.conftest import REPO_ROOT, fast_params, make_classify_source
from tests.test_flow import make_project

HOLD = """
import sys, time
from pathlib import Path
from stages.core import locks
with locks.held(Path(sys.argv[1]), None, "test"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


@contextmanager
def holder(lock: Path, seconds: float = 60) -> Iterator[subprocess.Popen]:
    """Another process holding ``lock`` until the block ends."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock), str(seconds)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "held"
        yield process
    finally:
        process.kill()
        process.wait(timeout=30)


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# --- the lock itself ------------------------------------------------------------------------------


def test_a_held_lock_makes_the_other_process_wait_then_say_so_in_one_sentence(tmp_path: Path) -> None:
    lock = tmp_path / "run.lock"
    with holder(lock) as other:
        started = time.monotonic()
        with pytest.raises(locks.LockTimeout) as caught, locks.held(lock, 0.5, "this checkout"):
            pass
        assert 0.4 < time.monotonic() - started < 10
    message = str(caught.value)
    assert f"process {other.pid}" in message and "CV_FINETUNE_LOCK_TIMEOUT" in message
    assert message.count(". ") == 0 and "\n" not in message
    with locks.held(lock, 5, "this checkout"):  # released when its holder died
        assert locks.held_by_ancestor(lock)
        with locks.held(lock, 0, "this checkout"):  # re-entrant for the holder (and its children)
            pass
    assert not locks.held_by_ancestor(lock)


def test_a_stage_cli_refuses_while_another_run_holds_the_checkout(tmp_path: Path) -> None:
    source = make_classify_source(tmp_path / "source", per_class=3)
    params = fast_params(tmp_path, source)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json", by_alias=True)), encoding="utf-8")
    (tmp_path / ".dvc").mkdir()  # a DVC project: the lock is .dvc/tmp's, the flow's too
    lock = locks.checkout_lock(tmp_path, params.paths.cache)
    assert lock == flow_module.run_lock(tmp_path)
    env = os.environ | {locks.TIMEOUT_ENV: "1"}
    env.pop(locks.ENV, None)
    with holder(lock):
        run = subprocess.run(
            [sys.executable, "-m", "stages.ingest", "--params", str(params_file)],
            cwd=tmp_path,
            env=env | {"PYTHONPATH": str(REPO_ROOT)},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert run.returncode == 2, run.stderr[-2000:]
    assert len(_errors(run.stderr)) == 1 and "locked by another run" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (params.paths.interim / "ingest").exists()  # nothing was written


# --- two flow runs on one checkout --------------------------------------------------------------------


@pytest.mark.slow
def test_two_flow_runs_started_together_one_completes_the_other_refuses(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", per_class=4)
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != locks.ENV}
    runs = []
    for name in ("a", "b"):
        env = base | {"PREFECT_HOME": str(tmp_path / f"home_{name}"), locks.TIMEOUT_ENV: "3"}
        runs.append(
            subprocess.Popen(
                [sys.executable, "-m", "pipelines.flow", "--target", "split"],
                cwd=project,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = [(run.wait(timeout=300), run.communicate()) for run in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], [err[-2000:] for _, (_, err) in results]
    refused = next(err for code, (_, err) in results if code == 2)
    assert _errors(refused) == [_errors(refused)[0]] and "locked by another run" in refused
    assert "Traceback" not in refused
    with Repo(str(project)) as repo:  # dvc.lock matches the outputs: nothing to reproduce
        assert repo.status(targets=[f"{project}/dvc.yaml:split"], with_deps=True) == {}


# --- training runs sharing a fingerprint -------------------------------------------------------------


def test_a_corrupt_resume_state_is_moved_aside_and_training_starts_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = tmp_path / "runs" / "fp" / "last.pt"
    state.parent.mkdir(parents=True)
    for bad in (b"not a checkpoint", None):
        if bad is None:  # readable, but another model's tensors
            torch.save(
                {"model": {"weight": torch.zeros(5, 5)}, "optimizer": {}, **dict.fromkeys(loop.RESUME_KEYS)},
                state,
            )
        else:
            state.write_bytes(bad)
        with caplog.at_level(logging.WARNING, logger="stages.train"):
            assert loop.load_state(state, model, optimizer) is None
        assert not state.exists() and list(state.parent.glob("last.pt.corrupt-*"))
        assert "training starts over" in caplog.text
        for key, value in model.state_dict().items():  # nothing half-applied
            assert torch.equal(value, before[key])
        for aside in state.parent.glob("last.pt.corrupt-*"):
            aside.unlink()


TRAIN = """
import logging, sys
import stages
from stages import train
from stages.core.params import load_params
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
train.run(load_params(sys.argv[1]))
"""


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Params, Path]:
    from stages import augment, ingest, split, validate

    tmp = tmp_path_factory.mktemp("concurrent")
    source = make_classify_source(tmp / "source", per_class=5, size=(32, 32))
    params = fast_params(
        tmp,
        source,
        train={"strategy": "full", "epochs": 2, "aug_views": 0, "image_size": 32, "batch_size": 8},
    )
    for stage in (ingest, validate, split, augment):
        stage.run(params)
    params_file = tmp / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json", by_alias=True)), encoding="utf-8")
    return params, params_file


@pytest.mark.slow
def test_two_processes_training_the_same_fingerprint_do_not_interleave(prepared) -> None:
    params, params_file = prepared
    env = {k: v for k, v in os.environ.items() if k != locks.ENV}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", TRAIN, str(params_file)],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [o[-2000:] for o in outputs]
    trained = [o for o in outputs if "full epoch 1:" in o]
    reused = [o for o in outputs if "finished run found" in o]
    assert len(trained) == 1 and len(reused) == 1, [o[-1500:] for o in outputs]
    (state,) = (params.paths.cache / "runs").glob("*/last.pt")
    saved = torch.load(state, map_location="cpu", weights_only=True)
    assert [r["epoch"] for r in saved["history"]] == [1, 2] and saved["finished"]
    assert not list(state.parent.glob("*.tmp"))  # no temporary file left behind


def test_a_checkpoint_has_the_same_bytes_whichever_process_wrote_it(tmp_path: Path, monkeypatch) -> None:
    """The per-process temporary name must not reach the file: DVC would see a new model each run."""
    import torch

    from stages.models import checkpoints

    written = []
    for pid in (111, 222):
        monkeypatch.setattr(checkpoints.os, "getpid", lambda pid=pid: pid)
        target = tmp_path / f"run{pid}" / "classifier.pt"
        target.parent.mkdir()
        checkpoints.save_atomically({"w": torch.arange(4.0)}, target)
        written.append(target.read_bytes())
    assert written[0] == written[1]
