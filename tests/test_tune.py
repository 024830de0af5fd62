"""The per-epoch hook of the train stage and the hyper-parameter search built on it (pipelines/tune.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from pipelines import tune
from pipelines.trials import params_dict
from pipelines.tune_params import tune_section
from stages import augment, ingest, split, train, validate
from stages.core.errors import ParamsError, UserError
from stages.core.params import Params, load_params, parse_params
from tests.conftest import REPO_ROOT, fast_params, make_classify_source
from tests.postgres_cluster import postgres_cluster

TUNE_CLI = [sys.executable, "-m", "pipelines.tune"]
# Only the head's learning rate is searched unless a test says otherwise: linear probes on the cache.
PROBE_SPACE = {
    "lr": {"low": 1e-6, "high": 0.1, "log": True},
    "weight_decay": None,
    "strategy": ["linear_probe"],
    "unfreeze_blocks": None,
    "layer_decay": None,
    "augment_preset": None,
    "image_size": None,
    "epochs": None,
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Params:
    """A prepared tiny project (ingest to augment done) whose feature cache is already warm."""
    root = tmp_path_factory.mktemp("tune")
    source = make_classify_source(root / "source", per_class=12)
    params = fast_params(
        root,
        source,
        train={"strategy": "linear_probe", "epochs": 4, "aug_views": 0, "patience": 10, "batch_size": 8},
    )
    for stage in (ingest, validate, split, augment):
        stage.run(params)
    train.run(params)  # fills the feature cache, so parallel workers never compute the same vector
    return params


def with_tune(params: Params, tmp_path: Path, **tune_cfg) -> Params:
    raw = params_dict(params)
    raw["tune"] = {
        "storage": f"sqlite:///{tmp_path / 'study.db'}",
        "startup_trials": 2,
        "space": PROBE_SPACE,
        **tune_cfg,
    }
    raw["paths"]["reports"] = str(tmp_path / "reports")
    raw["paths"]["models"] = str(tmp_path / "models")
    return parse_params(raw)


def load(params: Params) -> optuna.Study:
    cfg = tune_section(params)
    return optuna.load_study(study_name=cfg.study_name, storage=tune.make_storage(cfg.storage))


# --- the on_epoch hook ------------------------------------------------------------------------


def test_linear_probe_reports_every_epoch_and_a_raise_propagates(project) -> None:
    seen: list[tuple[int, dict]] = []
    result = train.run(project, on_epoch=lambda epoch, metrics: seen.append((epoch, metrics)))
    assert [epoch for epoch, _ in seen] == list(range(1, result.epochs_run + 1))
    assert all({"train_loss", "val_loss", "val_accuracy"} <= set(m) for _, m in seen)
    assert seen[result.best_epoch - 1][1]["val_accuracy"] == result.best_val_accuracy

    def stop(epoch: int, metrics: dict) -> None:
        if epoch == 2:
            raise optuna.TrialPruned("stop")

    with pytest.raises(optuna.TrialPruned):
        train.run(project, on_epoch=stop)


def test_fine_tuning_reports_after_the_checkpoint_and_resumes_consistently(tmp_path, project) -> None:
    raw = params_dict(project)
    raw["train"].update({"strategy": "lp_ft", "lp_epochs": 2, "epochs": 2})
    raw["paths"]["cache"] = str(tmp_path / "cache")  # its own fine-tuning checkpoints
    raw["paths"]["models"] = str(tmp_path / "models")
    params = parse_params(raw)
    seen: list[int] = []

    def stop_in_fine_tuning(epoch: int, metrics: dict) -> None:
        seen.append(epoch)
        if epoch == 3:  # the first fine-tuning epoch, after the two probe epochs
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.run(params, on_epoch=stop_in_fine_tuning)
    assert seen == [1, 2, 3]
    (state_file,) = (tmp_path / "cache" / "runs").glob("*/last.pt")
    state = torch.load(state_file, weights_only=True)
    assert state["epoch"] == 1 and not state["finished"] and len(state["history"]) == 1

    resumed: list[int] = []
    result = train.run(params, on_epoch=lambda epoch, metrics: resumed.append(epoch))
    assert resumed == [1, 2, 3, 4]  # probe again (cache), the restored epoch replayed, then the new one
    assert result.epochs_run == 4
    assert torch.load(state_file, weights_only=True)["finished"]


# --- params -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tune_cfg", "message"),
    [
        ({"metric": "val_loss", "direction": "maximize"}, "set direction: minimize"),
        ({"space": {"lr": {"low": 0.1, "high": 0.01}}}, "tune.space.lr"),
        ({"space": {"strategy": ["linear_probe", "linear_probe"]}}, "lists a value twice"),
        ({"pruner": "median"}, "tune.pruner"),
        ({"trails": 3}, "unknown key 'tune.trails'"),
    ],
)
def test_bad_tune_section_is_one_sentence(tmp_path, tune_cfg, message) -> None:
    with pytest.raises(ParamsError, match=message):
        tune_section(parse_params({"data": {"source": str(tmp_path)}, "tune": tune_cfg}))


def test_tune_cli_refuses_a_bad_tune_section_before_any_work(tmp_path, capsys) -> None:
    """The stages keep tune: as a mapping; the pipeline validates it first, naming the file and key."""
    params_file = tmp_path / "params.yaml"
    raw = {
        "data": {"source": str(tmp_path / "images")},
        "paths": {"cache": str(tmp_path / "cache")},
        "tune": {"trails": 3},
    }
    params_file.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert tune.main(["--params", str(params_file), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {params_file}: unknown key 'tune.trails'; allowed keys here are: trials")
    assert "\n" not in err and not (tmp_path / "cache").exists()


# --- the search -------------------------------------------------------------------------------


def test_pruner_stops_a_clearly_worse_trial(tmp_path, project) -> None:
    params = with_tune(
        project,
        tmp_path,
        trials=2,
        metric="val_loss",
        pruner="successive_halving",
        reduction_factor=2,
        study_name="prune",
    )
    cfg = tune_section(params)
    study = tune.open_study(cfg, params, cfg.storage, worker=0)
    study.enqueue_trial({"lr": 0.05})  # learns: val loss falls fast
    study.enqueue_trial({"lr": 1e-6})  # hardly moves from ln 2
    result = tune.run(params, progress=False)
    good, bad = load(params).trials
    assert good.state == optuna.trial.TrialState.COMPLETE
    assert bad.state == optuna.trial.TrialState.PRUNED
    assert bad.last_step < params.train.epochs  # stopped early
    assert (result.complete, result.pruned) == (1, 1)


def test_search_resumes_after_ctrl_c_and_writes_a_valid_best_params_file(
    tmp_path, project, monkeypatch
) -> None:
    params = with_tune(project, tmp_path, trials=3, study_name="resume")
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params_dict(params), sort_keys=False), encoding="utf-8")
    before = params_file.read_bytes()
    real_run, calls = train.run, []

    def interrupted_second_trial(p, on_epoch=None):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C in the middle of trial 1
        return real_run(p, on_epoch=on_epoch)

    monkeypatch.setattr(train, "run", interrupted_second_trial)
    stopped = tune.run(params, params_file, progress=False)
    assert stopped.interrupted and (stopped.complete, stopped.failed) == (1, 1)
    assert (tmp_path / "reports" / "tune" / "trials.csv").is_file()  # saved on the way out

    monkeypatch.setattr(train, "run", real_run)
    resumed = tune.run(params, params_file, progress=False)
    trials = load(params).trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    finished = [t for t in trials if t.state in tune.FINISHED]
    assert len(finished) == 3 and not resumed.interrupted
    assert len({t.params["lr"] for t in trials}) == 4  # the resumed sampler does not repeat trial 0

    out = tmp_path / "reports" / "tune"
    best = load_params(out / "best_params.yaml")
    assert best.train.lr == pytest.approx(load(params).best_params["lr"])
    assert best.paths == params.paths and best.data == params.data
    assert params_file.read_bytes() == before  # never rewritten
    for name in ("trials.csv", "summary.md", "summary.json", "optimization_history.png"):
        assert (out / name).is_file(), name
    assert not list((params.paths.cache / "tune" / "resume").glob("*/models/classifier.pt"))

    again = tune.run(params, params_file, progress=False)  # budget reached: nothing more runs
    assert len(load(params).trials) == 4 and again.complete == resumed.complete


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_storage(request, tmp_path) -> Iterator[str]:
    """The study's storage: SQLite (one machine) or a real PostgreSQL cluster (several machines)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'study.db'}"
        return
    with postgres_cluster(databases=("optuna",)) as url:
        yield f"{url}/optuna"


@pytest.mark.slow
def test_two_workers_share_one_study_without_duplicate_trials(tmp_path, project, shared_storage) -> None:
    params = with_tune(
        project, tmp_path, trials=4, study_name="workers", pruner="none", storage=shared_storage
    )
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params_dict(params), sort_keys=False), encoding="utf-8")
    workers = [
        subprocess.Popen(
            [
                *TUNE_CLI,
                "--params",
                str(params_file),
                "--worker",
                str(k),
                "--no-progress",
                "--out",
                str(tmp_path),
            ],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for k in (0, 1)
    ]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    trials = load(params).trials
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) >= 4
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t.params["lr"] for t in trials}) == len(trials)  # the workers sample differently
    per_worker = [
        [int(line.split()[1]) for line in out.splitlines() if line.startswith("trial ")] for out in outputs
    ]
    assert sorted(per_worker[0] + per_worker[1]) == numbers  # every trial ran once, in one worker
    best = load_params(tmp_path / "best_params.yaml")
    assert best.train.lr == pytest.approx(load(params).best_params["lr"])  # the file is the study's best


# --- detector trials --------------------------------------------------------------------------


@pytest.mark.slow
def test_detector_trials_drive_the_yolo_trainer_and_report_map_per_epoch(tmp_path) -> None:
    """Two tiny YOLO trials through ``stages.train.run(params, on_epoch=...)``: mAP per epoch reaches
    the study, and the best params file sets the detector's own keys."""
    from tests.conftest import detect_params, write_voc

    spec = [
        (f"img{i}.png", (64, 64), [("bird" if i % 2 else "cat", 8 + i, 8, 40 + i, 44)]) for i in range(10)
    ]
    source = write_voc(tmp_path / "source", spec)
    tiny = {"epochs": 2, "image_size": 32, "batch": 4, "warmup_epochs": 0, "optimizer": "SGD"}
    params = detect_params(
        tmp_path,
        source,
        split={"fractions": {"train": 0.6, "val": 0.2, "test": 0.2}, "near_duplicates": {"enabled": False}},
        train={"device": "cpu", "detector": {**tiny, "ultralytics": {"plots": False}}},
        tune={
            "trials": 2,
            "metric": "map50_95",
            "pruner": "none",
            "startup_trials": 2,
            "storage": f"sqlite:///{tmp_path / 'study.db'}",
            "space": {**PROBE_SPACE, "lr": {"low": 0.001, "high": 0.02, "log": True}},
        },
    )
    for stage in (ingest, validate, split, augment):
        stage.run(params)
    with pytest.raises(UserError, match=r"does not exist for data\.task detect"):
        tune.run(parse_params({**params_dict(params), "tune": {"metric": "val_accuracy"}}), progress=False)

    result = tune.run(params, progress=False)
    trials = load(params).trials
    assert result.complete == 2 and all(sorted(t.intermediate_values) == [1, 2] for t in trials)
    best = load_params(params.paths.reports / "tune" / "best_params.yaml")
    assert best.train.detector.lr0 == pytest.approx(load(params).best_params["lr"])
    assert best.data.task == "detect"


def test_storage_urls_use_the_locked_driver_and_a_missing_one_is_one_sentence() -> None:
    """postgresql:// means psycopg (in the lock), not psycopg2; an unknown driver names the fix."""
    from pipelines.tune import make_storage, with_locked_driver

    assert with_locked_driver("postgresql://u:pw@h/db") == "postgresql+psycopg://u:pw@h/db"
    assert with_locked_driver("sqlite:///x.db") == "sqlite:///x.db"
    with pytest.raises(UserError, match="uv add") as info:
        make_storage("mysql://user:secret@127.0.0.1:1/optuna")
    assert "secret" not in str(info.value)  # the password never reaches a log
