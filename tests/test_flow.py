"""The Prefect flow: same stages, same dvc.lock, DVC-keyed skipping, retries, visible failures.

Fast tests run the flow in-process against Prefect's test harness on the first stages of a tiny
throwaway DVC project; the slow one starts a real ``prefect server``, serves the deployment with
its cron schedule and runs the whole pipeline through it.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from dvc.exceptions import DownloadError
from dvc.lock import LockError
from dvc.repo import Repo
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import TaskRunSort
from prefect.flows import load_flow_from_entrypoint
from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings
from prefect.testing.utilities import prefect_test_harness

import stages.split
from bench import render_report
from pipelines import deploy
from pipelines import flow as flow_module
from pipelines.flow import (
    METRICS_ARTIFACT,
    REPORT_ARTIFACT,
    is_transient,
    metrics_table,
    parse_override,
    training_pipeline,
)
from stages.core.errors import DataError, ParamsError
from stages.core.params import parse_params, with_overrides
from tests.conftest import REPO_ROOT, make_classify_source
from tests.postgres_cluster import free_port, postgres_cluster

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
}


def make_project(root: Path, classes: dict | None = None, per_class: int = 8, git: bool = False) -> Path:
    """A throwaway DVC project: this checkout's code and dvc.yaml, tiny data, fast params."""
    for name in ("stages", "pipelines"):
        shutil.copytree(REPO_ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "dvc.yaml", root / "dvc.yaml")
    (root / "data").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "data" / "exclude.txt", root / "data" / "exclude.txt")  # split.exclude, a dep
    make_classify_source(root / "data" / "raw", per_class=per_class, classes=classes)
    raw = {
        "data": {"source": "data/raw"},
        "validate": {"workers": 1},
        "augment": {"preview": {"images": 2, "views": 2}},
        "train": {"image_size": 64, "epochs": 4, "aug_views": 1, "patience": 3, "device": "cpu"},
        "evaluate": {"bootstrap": 20},
    }
    # Every section written out: dvc.yaml's templating and `params:` lists need them all.
    full = parse_params(raw).model_dump(mode="json", by_alias=True)
    text = "# tiny params for tests\n" + yaml.safe_dump(full, sort_keys=False)
    (root / "params.yaml").write_text(text, encoding="utf-8")
    (root / ".gitignore").write_text("__pycache__/\n/data/cache/\n", encoding="utf-8")
    env = os.environ | GIT_ENV
    if git:  # DVCLive (train) needs a git repository with a commit
        subprocess.run(["git", "init", "-q"], cwd=root, check=True, env=env)
        Repo.init(str(root)).close()
        subprocess.run(["git", "add", "-A"], cwd=root, check=True, env=env)
        subprocess.run(["git", "commit", "-qm", "test project"], cwd=root, check=True, env=env)
    else:
        Repo.init(str(root), no_scm=True).close()
    return root


# --- pure helpers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (OSError(errno.EIO, "I/O error"), True),
        (OSError(errno.ETIMEDOUT, "timed out"), True),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (LockError("Unable to acquire lock"), True),
        (DownloadError(3), True),
        (DataError("classification needs at least two classes"), False),
        (ParamsError("unknown key 'train.epoch'"), False),
        (FileNotFoundError(errno.ENOENT, "missing"), False),
        (OSError(errno.ENOSPC, "disk full"), False),
        (ValueError("a bug"), False),
        (None, False),
    ],
)
def test_only_transient_failures_are_retried(exc: BaseException | None, expected: bool) -> None:
    assert is_transient(exc) is expected


def test_overrides_parse_like_dvc_set_param_and_merge_into_sections() -> None:
    assert parse_override("train.epochs=3") == ("train.epochs", 3)
    assert parse_override("augment.preset=light") == ("augment.preset", "light")
    assert parse_override("split.fractions={train: 0.8, val: 0.1, test: 0.1}")[1] == {
        "train": 0.8,
        "val": 0.1,
        "test": 0.1,
    }
    with pytest.raises(flow_module.ProjectError, match="KEY=VALUE"):
        parse_override("train.epochs")
    raw = {"train": {"epochs": 60, "lr": 0.001}}
    merged = with_overrides(raw, {"train.epochs": 3, "report.title": "x"})
    assert merged == {"train": {"epochs": 3, "lr": 0.001}, "report": {"title": "x"}}
    assert raw["train"]["epochs"] == 60  # the input is not modified


def test_metrics_table_has_one_row_per_metric_with_its_interval() -> None:
    metrics = {
        "accuracy": 0.9,
        "accuracy_ci_low": 0.8,
        "accuracy_ci_high": 1.0,
        "images": 15,
        "split": "test",
    }
    assert metrics_table(metrics) == [
        {"metric": "accuracy", "value": 0.9, "ci_low": 0.8, "ci_high": 1.0},
        {"metric": "images", "value": 15, "ci_low": None, "ci_high": None},
    ]


def test_prefect_yaml_deployments_load_the_flow_and_fit_its_parameters() -> None:
    config = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text(encoding="utf-8"))
    assert config["deployments"]
    cwd = Path.cwd()
    os.chdir(REPO_ROOT)  # entrypoints are relative to the project root, as for `prefect deploy`
    try:
        for deployment in config["deployments"]:
            loaded = load_flow_from_entrypoint(deployment["entrypoint"], use_placeholder_flow=False)
            assert loaded.name == training_pipeline.name
            loaded.validate_parameters(deployment.get("parameters", {}))  # raises on an unknown name
            assert all(s.get("cron") for s in deployment["schedules"])
    finally:
        os.chdir(cwd)


def test_deploy_refuses_a_typo_before_registering_anything(capsys: pytest.CaptureFixture[str]) -> None:
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):  # nothing listens there
        assert deploy.main(["--cron", "0 3 * * *", "--set", "train.epoch=3"]) == 2
        assert "unknown key 'train.epoch'" in capsys.readouterr().err
        assert deploy.main(["--cron", "0 25 * * *"]) == 2
        assert "'0 25 * * *'" in capsys.readouterr().err
        assert deploy.main(["--target", "trian"]) == 2
        assert "target 'trian' is not a stage" in capsys.readouterr().err


def test_deploy_needs_a_server_to_hold_the_schedule(capsys: pytest.CaptureFixture[str]) -> None:
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert deploy.main([]) == 2
    assert "PREFECT_API_URL is not set" in capsys.readouterr().err


# --- the flow in-process, on Prefect's test harness ------------------------------------------------


@pytest.fixture(scope="module")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    home = tmp_path_factory.mktemp("prefect_home")
    with temporary_settings({PREFECT_HOME: str(home)}), prefect_test_harness(server_startup_timeout=120):
        yield


def _run(project: Path, **parameters: Any):
    return training_pipeline(project_dir=str(project), return_state=True, **parameters)


def _task_runs(state) -> dict[str, Any]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=50,
        )
    return {run.name: run for run in runs}


def _dvc_status(project: Path, stage: str) -> dict:
    """What `dvc status --with-deps STAGE` reports (empty: nothing to reproduce)."""
    with Repo(str(project)) as repo:
        return repo.status(targets=[f"{project}/dvc.yaml:{stage}"], with_deps=True)


def test_bad_data_fails_the_flow_run_with_the_stage_sentence_and_no_retry(
    prefect_harness: None, tmp_path: Path
) -> None:
    project = make_project(tmp_path / "p", classes={"only": (0, 0, 0)}, per_class=3)
    state = _run(project)
    assert state.is_failed()
    assert state.message.startswith("ingest: ")
    assert "at least two classes" in state.message and "Traceback" not in state.message
    ingest = _task_runs(state)["ingest"]
    assert ingest.state.is_failed() and ingest.run_count == 1  # deterministic: not retried


def test_bad_override_or_other_params_file_fails_before_any_work(
    prefect_harness: None, tmp_path: Path
) -> None:
    project = make_project(tmp_path / "p")
    before = (project / "params.yaml").read_bytes()
    state = _run(project, overrides={"train.epoch": 3})
    assert state.is_failed() and "unknown key 'train.epoch'" in state.message
    (project / "other.yaml").write_bytes(before)
    state = _run(project, params_file="other.yaml")
    assert state.is_failed() and "dvc.yaml reads params.yaml" in state.message
    assert (project / "params.yaml").read_bytes() == before
    assert not (project / "data" / "interim").exists() and not (project / "dvc.lock").exists()


def test_flow_records_stages_in_dvc_lock_and_dvc_decides_what_to_skip(
    prefect_harness: None, tmp_path: Path
) -> None:
    project = make_project(tmp_path / "p")
    first = _run(project, target="split")
    assert first.is_completed(), first.message
    assert first.result() == {"ingest": "ran", "validate": "ran", "split": "ran"}
    assert _dvc_status(project, "split") == {}

    second = _run(project, target="split")
    assert second.result() == {"ingest": "cached", "validate": "cached", "split": "cached"}
    runs = _task_runs(second)
    assert [runs[stage].state.name for stage in ("ingest", "validate", "split")] == ["Cached"] * 3

    # An override lands in params.yaml (comments kept) and re-runs only the stages that read it.
    third = _run(project, target="split", overrides={"base.seed": 7})
    assert third.result() == {"ingest": "cached", "validate": "cached", "split": "ran"}
    text = (project / "params.yaml").read_text(encoding="utf-8")
    assert text.startswith("# tiny params for tests") and yaml.safe_load(text)["base"]["seed"] == 7

    # Deleted outputs with unchanged deps come back from DVC's cache, as under `dvc repro`.
    splits = project / "data" / "interim" / "split" / "splits.parquet"
    digest = splits.read_bytes()
    shutil.rmtree(splits.parent)
    fourth = _run(project, target="split")
    assert fourth.result()["split"] == "restored"
    assert splits.read_bytes() == digest
    assert _dvc_status(project, "split") == {}


def test_a_transient_failure_is_retried(
    prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(tmp_path / "p")
    calls: list[int] = []
    real_run = stages.split.run

    def flaky_run(params):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.EIO, "network file system hiccup")
        return real_run(params)

    monkeypatch.setattr(stages.split, "run", flaky_run)
    monkeypatch.setattr(flow_module, "run_stage", flow_module.run_stage.with_options(retry_delay_seconds=0))
    state = _run(project, target="split")
    assert state.is_completed(), state.message
    assert len(calls) == 2
    assert _task_runs(state)["split"].run_count == 2


def test_a_dvc_tracked_source_is_left_to_dvc(prefect_harness: None, tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    with Repo(str(project)) as repo:
        repo.add(str(project / "data" / "raw"))  # the README's `dvc add data/raw`
    state = _run(project, target="ingest")
    assert state.is_completed(), state.message
    assert state.result() == {"data/raw.dvc": "cached", "ingest": "ran"}  # DVC verified the source


def test_push_then_pull_through_a_dvc_remote(prefect_harness: None, tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    state = _run(project, target="ingest", push=True)
    assert state.is_failed() and "needs a DVC remote" in state.message
    with Repo(str(project)) as repo, repo.config.edit() as config:
        config["core"]["remote"] = "store"
        config["remote"]["store"] = {"url": str(tmp_path / "remote")}
    assert _run(project, target="ingest", push=True).is_completed()
    assert any((tmp_path / "remote").rglob("*"))
    shutil.rmtree(project / ".dvc" / "cache")
    shutil.rmtree(project / "data" / "interim")
    state = _run(project, target="ingest", pull=True)
    assert state.result() == {"ingest": "cached"}  # pulled outputs match dvc.lock: nothing to run
    assert (project / "data" / "interim" / "ingest" / "manifest.parquet").is_file()


# --- a real Prefect server, the served deployment, the whole pipeline -------------------------------


def _stop(process: subprocess.Popen) -> None:
    """Stop a process we started and everything it spawned (its own process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """``prefect server start`` on a free 127.0.0.1 port with a temporary PREFECT_HOME (SQLite)."""
    yield from _prefect_server(tmp_path, {})


@pytest.fixture
def prefect_server_on_postgres(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """The same server keeping its state in a throwaway PostgreSQL cluster, as a team runs it."""
    with postgres_cluster(databases=("prefect",)) as url:
        database = url.replace("postgresql://", "postgresql+asyncpg://") + "/prefect"
        yield from _prefect_server(tmp_path, {"PREFECT_API_DATABASE_CONNECTION_URL": database})


def _prefect_server(tmp_path: Path, extra: dict[str, str]) -> Iterator[tuple[str, dict[str, str]]]:
    port = free_port()
    env = os.environ | {
        "PREFECT_HOME": str(tmp_path / "prefect_home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        **extra,
    }
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        api = env["PREFECT_API_URL"]
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "prefect server did not answer /api/health in 90 s"
            time.sleep(0.5)
        yield api, env
    finally:
        _stop(server)
        log.close()


def _wait_for(fetch, done, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {value}"
        time.sleep(1)


@pytest.mark.slow
def test_served_deployment_runs_the_pipeline_on_a_real_server_on_postgresql(
    prefect_server_on_postgres: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    api, env = prefect_server_on_postgres
    project = make_project(tmp_path / "project", per_class=8, git=True)
    log = (tmp_path / "serve.log").open("w")
    serve = subprocess.Popen(
        [sys.executable, "-m", "pipelines.deploy", "--name", "test", "--cron", "0 3 * * *"],
        cwd=project,
        env=env | {"PREFECT_RUNNER_POLL_FREQUENCY": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with httpx.Client(base_url=api, timeout=10) as client:

            def deployment() -> dict | None:
                assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                response = client.get("/deployments/name/cv-finetune/test")
                return response.json() if response.status_code == 200 else None

            found = _wait_for(deployment, lambda d: d is not None, 90, "the deployment")
            schedules = [(s["schedule"]["cron"], s["active"]) for s in found["schedules"]]
            assert schedules == [("0 3 * * *", True)]

            run = client.post(f"/deployments/{found['id']}/create_flow_run", json={}).json()
            final = _wait_for(
                lambda: client.get(f"/flow_runs/{run['id']}").json(),
                lambda r: r["state"]["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"},
                240,
                "the flow run",
            )
            assert final["state"]["type"] == "COMPLETED", (tmp_path / "serve.log").read_text()[-4000:]
            database = env["PREFECT_API_DATABASE_CONNECTION_URL"].replace("+asyncpg", "")
            with psycopg.connect(database) as conn:  # the run's state is in PostgreSQL, not SQLite
                query = "SELECT state_type FROM flow_run WHERE id = %s"
                stored = conn.execute(query, (run["id"],)).fetchone()
            assert stored is not None and stored[0] == "COMPLETED"
            assert not (Path(env["PREFECT_HOME"]) / "prefect.db").exists()

            run_filter = {"flow_runs": {"id": {"any_": [run["id"]]}}}
            artifacts = client.post("/artifacts/filter", json=run_filter).json()
            assert {METRICS_ARTIFACT, REPORT_ARTIFACT} <= {a["key"] for a in artifacts}
            logs = client.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [run["id"]]}}}).json()
            assert any(entry["name"].startswith("stages.") for entry in logs)  # stage logs reach the UI
    finally:
        _stop(serve)
        log.close()

    for output in ("reports/metrics.json", "reports/report.md", "models/classifier.pt", "dvc.lock"):
        assert (project / output).is_file(), output
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status"], cwd=project, capture_output=True, text=True, check=True
    )
    assert "up to date" in status.stdout, status.stdout


def _prefect_cli(cwd: Path, env: dict[str, str], *args: str) -> str:
    """One ``prefect`` command as a user types it; a 422 or a traceback fails the test."""
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "422" not in output and "Traceback" not in output, output[-3000:]
    return output


def _deploy_prefect_yaml(project: Path, env: dict[str, str]) -> None:
    """The README's team commands: a process work pool, then ``prefect deploy --all``."""
    shutil.copy2(REPO_ROOT / "prefect.yaml", project / "prefect.yaml")
    _prefect_cli(project, env, "work-pool", "create", "gpu", "--type", "process")
    _prefect_cli(project, env, "deploy", "--all")


@pytest.mark.slow
def test_prefect_cli_deploys_prefect_yaml_and_lists_it(
    prefect_server: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    """No HTTP 422 from the CLI's own filters; the deployment keeps prefect.yaml's schedule."""
    api, env = prefect_server
    project = make_project(tmp_path / "project", per_class=2)
    env = env | {"CV_FINETUNE_DIR": str(project)}
    _deploy_prefect_yaml(project, env)
    assert "cv-finetune/nightly-gpu" in _prefect_cli(project, env, "deployment", "ls")
    found = httpx.get(f"{api}/deployments/name/cv-finetune/nightly-gpu", timeout=10).json()
    assert found["work_pool_name"] == "gpu"
    assert [(s["schedule"]["cron"], s["active"]) for s in found["schedules"]] == [("0 2 * * *", True)]
    assert found["parameters"]["overrides"] == {"train.device": "cuda"}


@dataclass(frozen=True)
class WorkerRun:
    api: str
    project: Path
    remote: Path
    run: dict  # the finished flow run, as the API returns it
    worker_log: Path


@pytest.fixture(scope="module")
def worker_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerRun]:
    """prefect.yaml end to end, once per module: a process worker started from the checkout pulls
    the deployment's run (dvc pull, the pipeline, dvc push); the server stays up for the UI test."""
    root = tmp_path_factory.mktemp("work_pool")
    with contextmanager(_prefect_server)(root, {}) as (api, env):
        project = make_project(root / "project", per_class=6, git=True)
        remote = root / "dvc-remote"
        add_remote = [sys.executable, "-m", "dvc", "remote", "add", "-d", "local", str(remote)]
        subprocess.run(add_remote, cwd=project, check=True)
        env = env | {"CV_FINETUNE_DIR": str(project), "PREFECT_WORKER_QUERY_SECONDS": "1"}
        _deploy_prefect_yaml(project, env)
        log_path = root / "worker.log"
        log = log_path.open("w")
        worker = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", "gpu", "--limit", "1"],
            cwd=project,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            with httpx.Client(base_url=api, timeout=10) as client:
                found = client.get("/deployments/name/cv-finetune/nightly-gpu").json()
                # No GPU here: the run overrides the deployment's train.device: cuda.
                body = {"parameters": {"overrides": {"train.device": "cpu"}}}
                run = client.post(f"/deployments/{found['id']}/create_flow_run", json=body).json()

                def state() -> dict:
                    assert worker.poll() is None, log_path.read_text()[-3000:]
                    return client.get(f"/flow_runs/{run['id']}").json()

                final = _wait_for(
                    state, lambda r: r["state"]["type"] in {"COMPLETED", "FAILED", "CRASHED"}, 300, "the run"
                )
        finally:
            _stop(worker)  # by its process group id
            log.close()
        yield WorkerRun(api, project, remote, final, log_path)


@pytest.mark.slow
def test_a_work_pool_worker_runs_the_deployment_and_pushes_to_the_remote(worker_run: WorkerRun) -> None:
    final = worker_run.run
    assert final["state"]["type"] == "COMPLETED", worker_run.worker_log.read_text()[-4000:]
    assert final["work_pool_name"] == "gpu"
    assert (worker_run.project / "models" / "classifier.pt").is_file()
    assert any(worker_run.remote.rglob("*")), "dvc push uploaded nothing"
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status"],
        cwd=worker_run.project,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "up to date" in status.stdout, status.stdout


@pytest.mark.slow
def test_the_prefect_ui_renders_its_pages_after_a_run_without_an_error_toast(worker_run: WorkerRun) -> None:
    """Dashboard, Deployments and the run's page in headless Chromium (.ci/run installs it)."""
    browser = render_report.find_chromium()
    if browser is None:
        pytest.skip("no chromium on PATH (.ci/run installs Debian's chromium)")
    assert worker_run.run["state"]["type"] == "COMPLETED"
    ui = worker_run.api.removesuffix("/api")
    pages = {
        "/dashboard": "cv-finetune",
        "/deployments": "nightly-gpu",
        f"/runs/flow-run/{worker_run.run['id']}": worker_run.run["name"],
    }
    headless = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000"]
    for page, expected in pages.items():
        done = subprocess.run(
            [*headless, "--dump-dom", ui + page], capture_output=True, text=True, timeout=120
        )
        dom = done.stdout
        assert 'id="app"' in dom, f"{page}: the app did not render"
        assert "Something went wrong" not in dom and "Oops" not in dom, f"{page} shows an error toast"
        assert expected in dom, f"{page} does not show {expected!r}"
