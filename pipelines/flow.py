"""The DVC pipeline as a Prefect flow: one task per ``dvc.yaml`` stage, recorded in ``dvc.lock``.

Each task calls the stage's own ``run(params)`` in-process (no second implementation), then
records the stage with DVC's Python API exactly as ``dvc repro`` does after running its
command, so ``dvc status`` is clean after a flow run and ``dvc repro`` has nothing to do.
DVC decides what to skip: a stage whose ``dvc status`` is clean ends in a ``Cached`` state.
Why this shape, and the rule for overrides: docs/architecture.md, "Orchestration with Prefect".

``python -m pipelines.flow [--set train.epochs=3] [--target train]`` runs it once;
``python -m pipelines.deploy`` serves it on a cron schedule.
"""

from __future__ import annotations

import pipelines  # noqa: F401  (offline environment first, also when Prefect loads this file by path)

# isort: split
import argparse
import errno
import hashlib
import importlib
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypedDict

import yaml
from dvc.exceptions import DownloadError, DvcException, UploadError
from dvc.lock import LockError
from dvc.repo import Repo, lock_repo
from dvc.stage.cache import RunCacheNotFoundError
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE, CachePolicy
from prefect.client.schemas.objects import State, TaskRun  # prefect.states does not export State
from prefect.states import Completed, Failed
from prefect.tasks import RetryConditionCallable, Task, exponential_backoff

import stages
from stages.core import locks
from stages.core.errors import UserError
from stages.core.layout import Layout
from stages.core.params import Params, get_dotted, load_params, parse_params, set_dotted, with_overrides
from stages.core.trust import parse_digest_record, read_digest_record, untrusted_files
from stages.reporting.markdown import code, esc

PARAMS_FILE = "params.yaml"  # the file dvc.yaml templates from and dvc.lock records
PROJECT_FILE = "dvc.yaml"
STAGE_COMMAND = re.compile(r"python -m (stages\.[a-z_]+)")
METRICS_ARTIFACT = "cv-finetune-metrics"
REPORT_ARTIFACT = "cv-finetune-report"
CODE_ROOT = Path(__file__).resolve().parents[1]
TRANSIENT_ERRNOS = frozenset(
    {
        errno.EAGAIN,
        errno.EBUSY,
        errno.EIO,
        errno.ESTALE,
        errno.ETIMEDOUT,
        errno.ECONNRESET,
        errno.ECONNREFUSED,
        errno.ECONNABORTED,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
    }
)


class ProjectError(UserError):
    """The flow cannot run this project as asked (wrong params file, bad target, no remote...)."""


# --- retries: only what can succeed on a second try -------------------------------------------


def is_transient(exc: BaseException | None) -> bool:
    """A failure worth retrying: I/O hiccups, remotes, a DVC lock held by another process.

    Bad data and bad params (``UserError``) fail the same way every time, and so do bugs.
    """
    if exc is None or isinstance(exc, UserError):
        return False
    if isinstance(exc, LockError | DownloadError | UploadError | ConnectionError | TimeoutError):
        return True
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


def retry_if_transient(task: Task, task_run: TaskRun, state: State) -> bool:
    """Prefect's ``retry_condition_fn``: retry a failed task only when its exception is transient."""
    exc = state.data
    if not isinstance(exc, BaseException):
        try:
            exc = state.result(raise_on_failure=False)
        except Exception:  # the result could not be read: do not retry blindly
            return False
    return is_transient(exc if isinstance(exc, BaseException) else None)


class RetryOptions(TypedDict, total=False):
    """The ``@task`` keywords shared by the retrying tasks (a subset of ``task()``'s own parameters)."""

    retries: int
    retry_delay_seconds: Callable[[int], list[float]]
    retry_jitter_factor: float
    retry_condition_fn: RetryConditionCallable
    cache_policy: CachePolicy


RETRYING: RetryOptions = {
    "retries": 2,
    "retry_delay_seconds": exponential_backoff(backoff_factor=10),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_if_transient,
    # DVC decides whether a stage is up to date (deps, params, outs hashed as dvc.lock records them).
    "cache_policy": NO_CACHE,
}


# --- params: the file DVC reads, plus overrides written into it ---------------------------------


def parse_override(text: str) -> tuple[str, Any]:
    """``train.epochs=3`` -> ``("train.epochs", 3)``; the value is YAML, as in ``dvc exp run -S``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ProjectError(f"override '{text}' is not KEY=VALUE; write it like train.epochs=3.")
    return key.strip(), yaml.safe_load(value)


def validate_params(root: Path, params_file: str, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Check params.yaml + overrides with the stages' own models; return the overrides that change it.

    Only params.yaml is accepted: dvc.yaml templates from it and dvc.lock records it, so any
    other file would leave dvc.lock describing values the stages did not use.
    """
    path = root / PARAMS_FILE
    requested = Path(params_file)
    requested = requested if requested.is_absolute() else root / requested
    if requested.resolve() != path.resolve():
        raise ProjectError(
            f"{params_file}: dvc.yaml reads {PARAMS_FILE}, so the flow runs that file only; "
            f"copy your values into {PARAMS_FILE} or pass them as overrides."
        )
    load_params(path)  # a bad file is a one-sentence ParamsError naming the key
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    merged = with_overrides(raw, overrides or {})
    parse_params(merged, source=f"{PARAMS_FILE} with overrides {overrides}")
    return {
        key: get_dotted(merged, key)
        for key in overrides or {}
        if get_dotted(raw, key) != get_dotted(merged, key)
    }


def prepare_params(root: Path, params_file: str, overrides: dict[str, Any] | None) -> list[str]:
    """Validate, then write the overrides into params.yaml (comments kept), like ``dvc exp run -S``.

    Nothing is written when validation fails, so a bad override never leaves a half-edited file.
    Returns the keys whose values changed.
    """
    changed = validate_params(root, params_file, overrides)
    if changed:
        from dvc.utils.serialize import modify_yaml  # DVC's own round-trip writer

        with modify_yaml(root / PARAMS_FILE) as data:
            for key, value in changed.items():
                set_dotted(data, key, value)
    return list(changed)


# --- the project: the same code DVC hashes, the stages DVC would run -----------------------------


def check_same_code(root: Path) -> None:
    """Refuse when the imported ``stages`` code differs from ``<root>/stages``, which dvc.lock hashes."""
    imported = Path(stages.__file__).resolve().parent
    recorded = (root / "stages").resolve()
    if imported == recorded or _tree_digest(imported) == _tree_digest(recorded):
        return
    raise ProjectError(
        f"{recorded} differs from the stage code this flow imports ({imported}); "
        "run the flow from the project's own checkout."
    )


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def plan_stages(root: Path, target: str | None) -> list[str]:
    """The stages ``dvc repro [target]`` would visit, in DVC's own order (upstream first)."""
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro
    from dvc.stage.exceptions import StageNotFound

    with Repo(str(root)) as repo:
        try:
            chosen = collect_stages(repo, [target or PROJECT_FILE])
            return [s.addressing for s in plan_repro(get_active_graph(repo.index.graph), chosen)]
        except StageNotFound:
            names = ", ".join(s.addressing for s in repo.index.stages)
            raise ProjectError(
                f"target '{target}' is not a stage in {PROJECT_FILE}; use one of {names}."
            ) from None
        except DvcException as exc:  # e.g. dvc.yaml templating a key params.yaml lacks
            raise ProjectError(str(exc)) from None


@contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """Stages resolve ``paths.*`` against the current directory, as under ``dvc repro``."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@contextmanager
def stage_logs_to_prefect() -> Iterator[None]:
    """Give the ``stages`` loggers Prefect's API handler for the run, so their lines show in the UI.

    Same as ``PREFECT_LOGGING_EXTRA_LOGGERS=stages``, which only works if set before Prefect is
    imported; this also works when something imported Prefect first, and is undone afterwards
    so stage code run outside a flow does not try to reach the API.
    """
    stage_logger = logging.getLogger("stages")
    level = stage_logger.level
    added = [h for h in logging.getLogger("prefect.extra").handlers if h not in stage_logger.handlers]
    stage_logger.setLevel(logging.INFO)
    for handler in added:
        stage_logger.addHandler(handler)
    try:
        yield
    finally:
        for handler in added:
            stage_logger.removeHandler(handler)
        stage_logger.setLevel(level)


# --- tasks -------------------------------------------------------------------------------------


@task(name="stage", task_run_name="{stage}", **RETRYING)
def run_stage(stage: str, project: str, params: Params) -> Any:
    """Run one dvc.yaml stage unless DVC says it is up to date, then record it in dvc.lock.

    ``params`` is params.yaml as the flow loaded it once, under the checkout's run lock.
    """
    logger = get_run_logger()
    root = Path(project)
    with Repo(str(root)) as repo:
        dvc_stage = repo.stage.collect(stage)[0]
        match = STAGE_COMMAND.fullmatch(dvc_stage.cmd or "")
        if match is None:  # a data source or a command of the user's own: DVC runs it
            done = repo.reproduce(stage, single_item=True)
            return "ran" if done else Completed(name="Cached", message="up to date", data="cached")
        with lock_repo(repo):
            changes = repo.status(targets=[stage])
            if not changes:
                logger.info("%s is up to date in dvc.lock; skipped", stage)
                return Completed(name="Cached", message="up to date in dvc.lock", data="cached")
            logger.info("%s runs: %s", stage, json.dumps(changes[stage], default=str))
            # Read before anything is removed or restored: a run-cache entry brings its own record.
            record = (root / Layout(params.paths).model_digest).resolve()
            anchor = committed_record(root, record)
            dvc_stage.remove_outs(ignore_remove=False, force=False)  # as `dvc repro` does
            restored = _restore_from_run_cache(repo, dvc_stage)
            if restored and (untrusted := untrusted_checkpoints(dvc_stage, anchor, record)):
                logger.warning(
                    "%s: DVC's run cache restored %s, which does not match the digest committed in "
                    "%s before the restore; removed, the stage runs instead",
                    stage,
                    relative_to(untrusted[0], root),
                    relative_to(record, root),
                )
                dvc_stage.remove_outs(ignore_remove=False, force=False)
                restored = False
        if restored:
            logger.info("%s: outputs restored from DVC's run cache (same deps and params ran before)", stage)
        else:
            started = time.perf_counter()
            summary = importlib.import_module(match.group(1)).run(params)
            logger.info("%s done in %.1f s: %s", stage, time.perf_counter() - started, summary)
        with repo.scm_context(quiet=True):
            repo.commit(stage, force=True)
    return "restored" if restored else "ran"


def committed_record(root: Path, record: Path) -> dict[str, str] | None:
    """The checkpoint digests ``record`` holds as committed at git ``HEAD`` (the anchor a writer
    of the DVC remote cannot change); when git has no such file (no git, not committed yet),
    the record in the workspace as it is now, before a restore could overwrite it. None: none."""
    relative = relative_to(record, root)
    try:
        shown = subprocess.run(
            ["git", "-C", str(root), "show", f"HEAD:./{relative}"],
            capture_output=True,
            check=False,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        shown = None
    if shown is not None and shown.returncode == 0:
        return parse_digest_record(shown.stdout.decode("utf-8", "replace")) or {}
    try:
        return read_digest_record(record)
    except UserError:
        return None


def untrusted_checkpoints(dvc_stage: Any, anchor: dict[str, str] | None, record: Path) -> list[Path]:
    """What a run-cache restore brought that the pre-restore ``anchor`` does not vouch for.

    The pickled checkpoints (``*.pt``) among the stage's outputs whose sha256 is not the one
    ``anchor`` (``committed_record``, read before the restore) gives for their name, plus
    ``record`` itself when the restore rewrote it to other digests: DVC's run cache stores and
    restores ``cache: false`` outputs too, so an entry from a remote others can write could
    bring a checkpoint and a record that agree with each other. Empty: the restore is kept.
    """
    found: list[Path] = []
    for out in dvc_stage.outs:
        path = Path(str(out.fs_path))
        files = [path] if path.is_file() else sorted(path.rglob("*.pt")) if path.is_dir() else []
        found += untrusted_files([f for f in files if f.suffix == ".pt"], anchor)
    restored = Path(record).resolve()
    if any(Path(str(out.fs_path)).resolve() == restored for out in dvc_stage.outs) and restored.is_file():
        try:
            digests = read_digest_record(restored)
        except UserError:
            digests = None
        if digests != anchor:
            found.append(restored)
    return found


def _restore_from_run_cache(repo: Repo, dvc_stage: Any) -> bool:
    try:
        repo.stage_cache.restore(dvc_stage)
    except RunCacheNotFoundError:
        return False
    return True


@task(name="dvc-pull", **RETRYING | {"retries": 3})
def pull_data(project: str) -> int:
    """Fetch data and recorded outputs from the DVC remote, so unchanged stages are skipped."""
    from dvc.config import NoRemoteError

    with Repo(project) as repo:
        try:
            stats = repo.pull(allow_missing=True, run_cache=True)
        except NoRemoteError:
            raise ProjectError(
                "pull needs a DVC remote; add one with `dvc remote add -d NAME URL`."
            ) from None
    count = stats.get("fetched", 0) if isinstance(stats, dict) else 0
    get_run_logger().info("dvc pull: %s files fetched", count)
    return count


@task(name="dvc-push", **RETRYING | {"retries": 3})
def push_outputs(project: str) -> int:
    """Upload the outputs (and DVC's run cache) to the remote, so other machines can pull them."""
    from dvc.config import NoRemoteError

    with Repo(project) as repo:
        try:
            count = repo.push(run_cache=True)
        except NoRemoteError:
            raise ProjectError(
                "push needs a DVC remote; add one with `dvc remote add -d NAME URL`."
            ) from None
    get_run_logger().info("dvc push: %s files uploaded", count)
    return count


@task(name="publish-artifacts", cache_policy=NO_CACHE)
def publish_artifacts(project: str, visited: list[str], params: Params) -> list[str]:
    """Headline metrics as a table artifact and the report summary as Markdown, with the files'
    paths relative to the project (no host name, no absolute path, no link to follow)."""
    root = Path(project)
    layout = Layout(params.paths)
    published = []
    metrics_file = root / layout.metrics
    if "evaluate" in visited and metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        create_table_artifact(
            key=METRICS_ARTIFACT,
            table=metrics_table(metrics),
            description=f"Headline metrics on the {esc(metrics.get('split', '?'))} split "
            f"({esc(metrics.get('images', '?'))} images), from {code(relative_to(layout.metrics, root))}.",
        )
        published.append(METRICS_ARTIFACT)
    report_file = root / layout.report
    if "report" in visited and report_file.is_file():
        create_markdown_artifact(
            key=REPORT_ARTIFACT,
            markdown=report_summary(report_file.read_text(encoding="utf-8"), root, layout, params),
            description=f"Summary of {code(relative_to(layout.report, root))}",
        )
        published.append(REPORT_ARTIFACT)
    return published


def metrics_table(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per numeric metric with its bootstrap interval when there is one."""
    rows = []
    for name, value in metrics.items():
        if name.endswith(("_ci_low", "_ci_high")) or isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            rows.append(
                {
                    "metric": name,
                    "value": value,
                    "ci_low": metrics.get(f"{name}_ci_low"),
                    "ci_high": metrics.get(f"{name}_ci_high"),
                }
            )
    return rows


def relative_to(path: Path, root: Path) -> str:
    """``path`` relative to the project ``root``; outside it, only its name (never the machine's layout)."""
    absolute = (root / path).resolve()
    anchor = root.resolve()
    if absolute.is_relative_to(anchor):
        return absolute.relative_to(anchor).as_posix()
    return f"<outside the project>/{absolute.name}"


def report_summary(report: str, root: Path, layout: Layout, params: Params, sections: int = 2) -> str:
    """The report's title, intro and first sections (images dropped: the report escapes every name
    from the data, so the rest is text), then where the files are, relative to the project."""
    lines: list[str] = []
    seen = 0
    for line in report.splitlines():
        if line.startswith("## "):
            seen += 1
            if seen > sections:
                break
        if not line.startswith("!["):
            lines.append(line)
    model = {"detect": layout.detector, "segment": layout.segmenter}.get(params.data.task, layout.classifier)
    files = [
        ("full report", layout.report),
        ("metrics", layout.metrics),
        ("model", model),
        ("figures", layout.figures_dir),
        ("training curves (DVCLive)", layout.train_log_dir),
    ]
    lines += ["", "## Files (in the project folder of the worker that ran the flow)", ""]
    lines += [f"- {label}: {code(relative_to(path, root))}" for label, path in files]
    return "\n".join(lines) + "\n"


# --- the flow ------------------------------------------------------------------------------------


@flow(name="cv-finetune", log_prints=True)
def training_pipeline(
    params_file: str = PARAMS_FILE,
    overrides: dict[str, Any] | None = None,
    target: str | None = None,
    pull: bool = False,
    push: bool = False,
    project_dir: str | None = None,
) -> State:
    """Run the DVC stages up to ``target`` (all by default); ``dvc status`` is clean afterwards.

    ``overrides`` (``{"train.epochs": 3}``) are validated with the params models and written into
    params.yaml, like ``dvc exp run --set-param``, so dvc.lock records what actually ran.
    ``pull``/``push`` fetch from and upload to the DVC remote (for workers on other machines).
    """
    logger = get_run_logger()
    root = Path(project_dir).resolve() if project_dir else CODE_ROOT
    try:
        with locks.held(run_lock(root), locks.default_timeout(), "this checkout"):
            outcomes = _run_locked(root, params_file, overrides, target, pull, push)
    except UserError as exc:  # the lock's wait ran out: one sentence, nothing touched
        return Failed(message=str(exc))
    if isinstance(outcomes, State):
        return outcomes
    counts = {kind: list(outcomes.values()).count(kind) for kind in ("ran", "restored", "cached")}
    summary = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
    logger.info("done: %s", summary)
    return Completed(message=f"{len(outcomes)} stages: {summary}", data=outcomes)


def run_lock(root: Path) -> Path:
    """The checkout's run lock, the one the stages' CLI takes under ``dvc repro`` (stages.core.locks)."""
    return root / ".dvc" / "tmp" / "cv-finetune-run.lock"


def _run_locked(
    root: Path,
    params_file: str,
    overrides: dict[str, Any] | None,
    target: str | None,
    pull: bool,
    push: bool,
) -> dict[str, str] | State:
    """The flow's body under the run lock: params written and loaded once, then every stage."""
    logger = get_run_logger()
    outcomes: dict[str, str] = {}
    with working_directory(root), stage_logs_to_prefect():
        try:
            check_same_code(root)
            changed = prepare_params(root, params_file, overrides)
            if changed:
                logger.info("overrides written into %s: %s", PARAMS_FILE, ", ".join(changed))
            params = load_params(root / PARAMS_FILE)  # once per run: nothing else writes it meanwhile
            if pull:
                pull_data(str(root))
            plan = plan_stages(root, target)
        except (UserError, DvcException) as exc:
            return Failed(message=str(exc))
        logger.info("stages: %s", " -> ".join(plan))
        for stage in plan:
            try:
                outcome = run_stage(stage, str(root), params)
            except (UserError, DvcException) as exc:  # DVC errors are one line too; the task log has more
                return Failed(message=f"{stage}: {exc}")
            outcomes[stage] = outcome.result() if isinstance(outcome, State) else outcome  # Cached
        publish_artifacts(str(root), list(outcomes), params)
        if push:
            try:
                push_outputs(str(root))
            except (UserError, DvcException) as exc:
                return Failed(message=f"dvc push: {exc}")
    return outcomes


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The flow's parameters on a command line (shared by ``pipelines.flow`` and ``pipelines.deploy``)."""
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (only params.yaml: DVC reads it)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--target", help="last stage to run, like `dvc repro TARGET` (default: all)")
    parser.add_argument("--pull", action="store_true", help="dvc pull before each run")
    parser.add_argument("--push", action="store_true", help="dvc push after each run")


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.flow``: one run now (on PREFECT_API_URL, else a temporary local server)."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.flow", description=main.__doc__)
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    try:
        overrides = dict(parse_override(text) for text in args.overrides)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:  # held from before Prefect starts, so a second run refuses before any work; re-entrant inside
        with locks.held(run_lock(CODE_ROOT), locks.default_timeout(), "this checkout"):
            state = training_pipeline(
                params_file=args.params,
                overrides=overrides or None,
                target=args.target,
                pull=args.pull,
                push=args.push,
                return_state=True,
            )
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not state.is_completed():
        print(f"error: {state.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
