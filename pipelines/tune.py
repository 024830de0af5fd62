"""Hyper-parameter search for the classifier: Optuna's TPE sampler plus a Hyperband pruner.

    python -m pipelines.tune [--params params.yaml] [--trials N] [--timeout-minutes M]
                             [--storage URL] [--study-name NAME] [--worker K] [--fresh]

Every trial is ``stages.train.run`` (no second training loop) on params with the trial's
overrides; its per-epoch val metric goes to the pruner through ``on_epoch``, which raises
``optuna.TrialPruned`` to stop a hopeless trial. The objective is the val metric at the epoch
the train stage selects; the test split is never read. The study lives in SQLite under
``paths.cache/tune`` by default, so a stopped search (Ctrl-C, a kill) resumes with the same
command, and workers on other machines join it through a shared RDB URL. ``params.yaml`` is
never written: the best trial becomes ``reports/tune/best_params.yaml``, for review.
See docs/tuning.md.
"""

from __future__ import annotations

import pipelines  # noqa: F401  (offline environment first)

# isort: split
import argparse
import contextlib
import json
import logging
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from tqdm import tqdm

from pipelines.trials import (
    clean_dir,
    drop_checkpoint,
    params_dict,
    require_prepared,
    run_params,
    with_cli_options,
    write_policy,
)
from pipelines.tune_params import TuneSection, redact, tune_section
from stages import train
from stages.core.errors import UserError
from stages.core.params import (
    DEFAULT_PARAMS_FILE,
    Params,
    get_dotted,
    load_params,
    parse_params,
    with_overrides,
)

log = logging.getLogger("pipelines.tune")
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
STORAGE_ATTEMPTS = 5
BODY_STRATEGIES = {"partial", "full", "gradual", "discriminative", "lp_ft"}
# Search-space name -> the params key it sets.
PARAM_KEYS = {
    "lr": "train.lr",
    "weight_decay": "train.weight_decay",
    "strategy": "train.strategy",
    "unfreeze_blocks": "train.unfreeze_blocks",
    "layer_decay": "train.layer_decay",
    "augment_preset": "augment.preset",
    "image_size": "train.image_size",
    "epochs": "train.epochs",
}
# data.task detect: the same names on the YOLO trainer's params (strategy, unfreeze_blocks and
# layer_decay are classifier-only and not searched).
DETECT_KEYS = {
    "lr": "train.detector.lr0",
    "weight_decay": "train.detector.ultralytics.weight_decay",
    "augment_preset": "augment.preset",
    "image_size": "train.detector.image_size",
    "epochs": "train.detector.epochs",
}
TASK_METRICS = {"classify": ("val_accuracy", "val_loss"), "detect": ("map50_95", "map50")}


@dataclass(frozen=True)
class TuneResult:
    study_name: str
    storage: str
    complete: int
    pruned: int
    failed: int
    best_value: float | None
    best_trial: int | None
    out_dir: Path
    interrupted: bool = False

    def __str__(self) -> str:
        best = "none yet" if self.best_trial is None else f"trial {self.best_trial} = {self.best_value:.4f}"
        stop = " (interrupted: rerun the same command to resume)" if self.interrupted else ""
        return (
            f"study '{self.study_name}': {self.complete} complete, {self.pruned} pruned, "
            f"{self.failed} failed; best {best}; reports in {self.out_dir}{stop}"
        )


# --- the search space -------------------------------------------------------------------------


def suggest(trial: optuna.Trial, cfg: TuneSection, base: Params) -> dict[str, Any]:
    """The trial's overrides (dotted params keys); conditional knobs only where they act."""
    space = cfg.space
    chosen: dict[str, Any] = {}
    detect = base.data.task == "detect"
    if space.strategy is not None and not detect:
        chosen["strategy"] = (
            space.strategy[0]
            if len(space.strategy) == 1  # min_length=1: one choice or more
            else trial.suggest_categorical("strategy", list(space.strategy))
        )
    strategy = chosen.get("strategy", base.train.strategy)
    for name in ("lr", "weight_decay"):
        rng = getattr(space, name)
        if rng is not None:
            chosen[name] = trial.suggest_float(name, rng.low, rng.high, log=rng.log)
    if space.unfreeze_blocks is not None and strategy == "partial" and not detect:
        chosen["unfreeze_blocks"] = trial.suggest_int(
            "unfreeze_blocks", space.unfreeze_blocks.low, space.unfreeze_blocks.high
        )
    if space.layer_decay is not None and strategy in BODY_STRATEGIES and not detect:
        rng = space.layer_decay
        chosen["layer_decay"] = trial.suggest_float("layer_decay", rng.low, rng.high, log=rng.log)
    for name in ("augment_preset", "image_size"):
        choices = getattr(space, name)
        if choices is not None:
            chosen[name] = trial.suggest_categorical(name, list(choices)) if len(choices) > 1 else choices[0]
    if space.epochs is not None:
        chosen["epochs"] = trial.suggest_int("epochs", space.epochs.low, space.epochs.high)
    keys = DETECT_KEYS if detect else PARAM_KEYS
    return {keys[name]: value for name, value in chosen.items()}


def check_task(cfg: TuneSection, params: Params) -> None:
    """The metric must exist for the task; a detector's lr only counts with an explicit optimizer."""
    task = params.data.task
    if task not in TASK_METRICS:
        raise UserError(
            f"the search tunes classifiers and detectors; data.task {task} has no search yet: set "
            "train.* by hand (docs/segmentation.md lists what the facade benchmark found)."
        )
    if cfg.metric not in TASK_METRICS[task]:
        raise UserError(
            f"tune.metric {cfg.metric} does not exist for data.task {task}; use one of {TASK_METRICS[task]}."
        )
    if task == "detect" and cfg.space.lr is not None and params.train.detector.optimizer == "auto":
        raise UserError(
            "tune.space.lr sets train.detector.lr0, which ultralytics ignores with optimizer auto; set "
            "train.detector.optimizer (e.g. SGD or AdamW) or tune.space.lr: null."
        )


def max_epochs(cfg: TuneSection, base: Params) -> int:
    """The most epochs a trial can report (the pruner's resource): lp_ft adds its probe phase."""
    if base.data.task == "detect":
        return cfg.space.epochs.high if cfg.space.epochs is not None else base.train.detector.epochs
    epochs = cfg.space.epochs.high if cfg.space.epochs is not None else base.train.epochs
    strategies = cfg.space.strategy or (base.train.strategy,)
    return epochs + (base.train.lp_epochs if "lp_ft" in strategies else 0)


# --- study, sampler, pruner, storage ----------------------------------------------------------


def storage_url(cfg: TuneSection, params: Params) -> str:
    if cfg.storage:
        return cfg.storage
    path = (params.paths.cache / "tune" / "study.db").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """An RDB URL (SQLite, PostgreSQL...) or a journal file path (``*.log``)."""
    if "://" not in url:
        from optuna.storages.journal import JournalFileBackend

        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(url))
    import sqlalchemy.exc

    url = with_locked_driver(url)
    require_driver(url)
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    for attempt in range(STORAGE_ATTEMPTS):
        try:
            # Heartbeats let a restarted worker mark the trials of a killed one as failed.
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5.0
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=30, grace_period=120
                )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError):
            # Workers started together on a new database race to create its tables: the
            # loser sees them half made; once they exist, connecting again works.
            if attempt == STORAGE_ATTEMPTS - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def with_locked_driver(url: str) -> str:
    """``postgresql://`` names psycopg2 to SQLAlchemy; the lock holds psycopg (3), so say so in the URL."""
    scheme, _, rest = url.partition("://")
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    return url


def require_driver(url: str) -> None:
    """A MySQL (or other) URL needs a database driver the lock does not hold."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(url).get_dialect().import_dbapi()
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise UserError(
            f"tune.storage {url.split('@')[-1]!r} needs a database driver that is not installed "
            f"({type(exc).__name__}: {redact(str(exc))}); add it with `uv add <driver>` and commit uv.lock, "
            "or use postgresql://..., a SQLite path or a journal file ending in .log."
        ) from None


def make_pruner(cfg: TuneSection, base: Params) -> optuna.pruners.BasePruner:
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=cfg.min_epochs,
            max_resource=max(max_epochs(cfg, base), cfg.min_epochs),
            reduction_factor=cfg.reduction_factor,
        )
    if cfg.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=cfg.min_epochs, reduction_factor=cfg.reduction_factor
        )
    return optuna.pruners.NopPruner()


def open_study(cfg: TuneSection, params: Params, storage: str, worker: int) -> optuna.Study:
    seed = params.base.seed if cfg.seed is None else cfg.seed
    storage_obj = make_storage(storage)
    try:
        existing = len(optuna.load_study(study_name=cfg.study_name, storage=storage_obj).trials)
    except KeyError:
        existing = 0
    # A resumed or second worker draws from another stream: the same seed would repeat the
    # first worker's random start-up trials.
    sampler = optuna.samplers.TPESampler(
        seed=seed + 1000 * worker + existing, n_startup_trials=cfg.startup_trials, constant_liar=True
    )
    study = optuna.create_study(
        storage=storage_obj,
        sampler=sampler,
        pruner=make_pruner(cfg, params),
        study_name=cfg.study_name,
        direction=cfg.goal,
        load_if_exists=True,
    )
    if study.direction.name.lower() != cfg.goal:
        raise UserError(
            f"study '{cfg.study_name}' in {redact(storage)} was created to {study.direction.name.lower()}; "
            f"tune.metric {cfg.metric} needs {cfg.goal}: use another tune.study_name."
        )
    return study


# --- one trial --------------------------------------------------------------------------------


class Objective:
    """``trial -> objective value``: the train stage on the trial's params, reporting every epoch."""

    def __init__(self, params: Params, cfg: TuneSection) -> None:
        self.params, self.cfg = params, cfg
        self.root = params.paths.cache / "tune" / cfg.study_name

    def __call__(self, trial: optuna.Trial) -> float:
        overrides = suggest(trial, self.cfg, self.params)
        run_dir = self.root / f"trial_{trial.number:04d}"
        clean_dir(run_dir)
        params = run_params(self.params, overrides, run_dir)
        write_policy(params)
        reported: dict[int, float] = {}
        metric = self.cfg.metric

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            if metric not in metrics:
                raise UserError(
                    f"the val split is empty, so there is no {metric} to tune on; give it images."
                )
            value = reported[epoch] = metrics[metric]
            trial.report(value, epoch)
            if trial.should_prune():
                trial.set_user_attr("epochs_run", epoch)
                raise optuna.TrialPruned(f"{metric} {value:.4f} at epoch {epoch}")

        trial.set_user_attr("overrides", json.dumps(overrides, sort_keys=True))
        started = time.perf_counter()
        try:
            result = train.run(params, on_epoch=on_epoch)
        finally:
            trial.set_user_attr("wall_s", round(time.perf_counter() - started, 2))
            if not self.cfg.keep_checkpoints:
                drop_checkpoint(params)
        trial.set_user_attr("epochs_run", result.epochs_run)
        trial.set_user_attr("best_epoch", result.best_epoch)
        trainable = getattr(result, "trainable_params", None)  # a classifier's result only
        if trainable is not None:
            trial.set_user_attr("trainable_params", trainable)
        if result.best_epoch in reported:
            return reported[result.best_epoch]
        # A detector run that was already finished (same fingerprint) is reused without epochs.
        best_map50_95 = getattr(result, "best_map50_95", None)  # a detector's result only
        if metric == "map50_95" and best_map50_95 is not None:
            return best_map50_95
        raise UserError(f"trial {trial.number}: the train stage reported no {metric} for its best epoch.")


def trial_line(study: optuna.Study, trial: optuna.trial.FrozenTrial, metric: str) -> str:
    """The one-line summary printed after every trial."""
    state = trial.state.name.lower()
    if trial.state == optuna.trial.TrialState.COMPLETE:
        what = f"{metric} {trial.value:.4f}"
    elif trial.state == optuna.trial.TrialState.PRUNED:
        last = trial.last_step
        value = trial.intermediate_values.get(last) if last is not None else None
        what = f"at epoch {last}" + (f" ({metric} {value:.4f})" if value is not None else "")
    else:
        what = ""
    try:
        best = f"best {study.best_value:.4f} (#{study.best_trial.number})"
    except ValueError:
        best = "no complete trial yet"
    knobs = " ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    wall = trial.user_attrs.get("wall_s")
    wall_text = f" {wall:.0f}s" if isinstance(wall, int | float) else ""
    return f"trial {trial.number:3d} {state:8s} {what:32s}{wall_text} | {knobs} | {best}"


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


# --- the search -------------------------------------------------------------------------------


def counts(study: optuna.Study) -> dict[str, int]:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {
        "complete": states.count(optuna.trial.TrialState.COMPLETE),
        "pruned": states.count(optuna.trial.TrialState.PRUNED),
        "failed": states.count(optuna.trial.TrialState.FAIL),
    }


def run(
    params: Params,
    params_file: Path | None = None,
    out_dir: Path | None = None,
    worker: int = 0,
    progress: bool = True,
    write_reports: bool = True,
) -> TuneResult:
    """Search until ``tune.trials`` trials have finished in the study (all workers together)."""
    cfg = tune_section(params, str(params_file or "params"))
    require_prepared(params)
    check_task(cfg, params)
    storage = storage_url(cfg, params)
    study = open_study(cfg, params, storage, worker)
    out_dir = out_dir or params.paths.reports / "tune"
    remaining = cfg.trials - sum(1 for t in study.get_trials(deepcopy=False) if t.state in FINISHED)
    interrupted = False
    if remaining > 0:
        bar = tqdm(total=remaining, desc=f"tune {cfg.study_name}", unit="trial", disable=not progress)

        def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            bar.update(1)
            tqdm.write(trial_line(study, trial, cfg.metric))
            if sum(1 for t in study.get_trials(deepcopy=False) if t.state in FINISHED) >= cfg.trials:
                study.stop()  # the budget counts every worker's trials

        try:
            study.optimize(
                Objective(params, cfg),
                n_trials=remaining,
                timeout=cfg.timeout_minutes * 60 if cfg.timeout_minutes else None,
                callbacks=[after_trial],
            )
        except KeyboardInterrupt:
            interrupted = True  # optuna has stored the running trial as failed; the rest is saved
        finally:
            bar.close()
    else:
        log.info("study '%s' already has %d finished trials (tune.trials)", cfg.study_name, cfg.trials)
    if write_reports:
        write_outputs(study, params, params_file, out_dir)
    c = counts(study)
    best_trial, best_value = _best(study)
    return TuneResult(
        cfg.study_name,
        redact(storage),  # the result is printed and logged: never the storage's password
        c["complete"],
        c["pruned"],
        c["failed"],
        best_value,
        best_trial,
        out_dir,
        interrupted,
    )


def _best(study: optuna.Study) -> tuple[int | None, float | None]:
    try:
        return study.best_trial.number, study.best_value
    except ValueError:
        return None, None


# --- outputs ----------------------------------------------------------------------------------


def best_overrides(study: optuna.Study) -> dict[str, Any]:
    return json.loads(study.best_trial.user_attrs["overrides"])


def changed_keys(overrides: dict[str, Any], params: Params) -> dict[str, tuple[Any, Any]]:
    """``{key: (current value, tuned value)}`` for the overrides that differ from ``params``."""
    current = params_dict(params)
    return {k: (get_dotted(current, k), v) for k, v in overrides.items() if get_dotted(current, k) != v}


def best_params_text(study: optuna.Study, params: Params, params_file: Path | None) -> str:
    """The user's params file (or the validated params) with the best trial's overrides, validated."""
    if params_file is not None and params_file.is_file():
        raw = yaml.safe_load(params_file.read_text(encoding="utf-8")) or {}
    else:
        raw = params_dict(params)
    overrides = best_overrides(study)
    merged = with_overrides(raw, overrides)
    parse_params(merged, source="best_params.yaml")  # what we hand back must load as params
    changed = changed_keys(overrides, params)
    best = study.best_trial
    lines = [
        f"# Best trial of study '{study.study_name}': trial {best.number}, "
        f"{tune_section(params).metric} {best.value:.4f} (val split). Written by pipelines.tune; "
        "params.yaml is",
        "# not changed. Review, then copy it over params.yaml, or apply only the changed keys:",
        "#   python -m pipelines.flow "
        + " ".join(f"--set {k}={_yaml_value(v)}" for k, (_, v) in changed.items()),
        "# Changed keys (params.yaml -> tuned):",
    ]
    lines += [f"#   {k}: {_yaml_value(old)} -> {_yaml_value(new)}" for k, (old, new) in changed.items()]
    body = yaml.safe_dump(merged, sort_keys=False, allow_unicode=True)
    return "\n".join(lines) + "\n" + body


def _yaml_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def write_outputs(study: optuna.Study, params: Params, params_file: Path | None, out_dir: Path) -> None:
    """trials.csv, summary.json/md, the plots, and best_params.yaml when a trial completed."""
    cfg = tune_section(params)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = study.trials_dataframe(attrs=("number", "value", "state", "params", "user_attrs", "duration"))
    if not frame.empty:
        frame["duration"] = frame["duration"].dt.total_seconds().round(1)
        frame.to_csv(out_dir / "trials.csv", index=False)
    c = counts(study)
    best_trial, best_value = _best(study)
    summary: dict[str, Any] = {
        "study": study.study_name,
        "metric": cfg.metric,
        "direction": cfg.goal,
        **c,
        "best_trial": best_trial,
        "best_value": best_value,
    }
    from stages.reporting.tune_figures import optuna_plots  # matplotlib only when writing outputs

    plots = optuna_plots(study, out_dir)
    lines = [
        f"# Hyper-parameter search: study `{study.study_name}`",
        "",
        f"{c['complete']} complete, {c['pruned']} pruned, {c['failed']} failed trials; "
        f"objective: {cfg.metric} on the val split ({cfg.goal}), pruner "
        f"{cfg.pruner}, TPE sampler.",
        "",
    ]
    if best_trial is not None:
        (out_dir / "best_params.yaml").write_text(
            best_params_text(study, params, params_file), encoding="utf-8"
        )
        overrides = best_overrides(study)
        summary["best_overrides"] = overrides  # every searched value, changed or not
        summary["best_epoch"] = study.best_trial.user_attrs.get("best_epoch")
        lines += [
            f"Best: trial {best_trial}, {cfg.metric} **{best_value:.4f}** "
            f"(epoch {study.best_trial.user_attrs.get('best_epoch')}).",
            "",
            "| key | params.yaml | best trial |",
            "|---|---|---|",
        ]
        changed = changed_keys(overrides, params)
        lines += [f"| `{k}` | {_yaml_value(old)} | {_yaml_value(new)} |" for k, (old, new) in changed.items()]
        lines += [
            "",
            "`best_params.yaml` holds the whole params file with these values (params.yaml untouched).",
            "",
        ]
    lines += [f"![{name}]({name}.png)" for name in plots]
    (out_dir / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out_dir / "summary.json").write_text(
        json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )


# --- command line -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.tune", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS_FILE, help="params file (read only)")
    parser.add_argument("--trials", type=int, help="override tune.trials (finished trials, all workers)")
    parser.add_argument("--timeout-minutes", type=float, help="override tune.timeout_minutes")
    parser.add_argument("--storage", help="override tune.storage (e.g. postgresql://user:pw@host/db)")
    parser.add_argument("--study-name", help="override tune.study_name")
    parser.add_argument("--worker", type=int, default=0, help="index of this worker (seeds its sampler)")
    parser.add_argument("--out", type=Path, help="report folder (default: <paths.reports>/tune)")
    parser.add_argument("--fresh", action="store_true", help="delete the study first instead of resuming")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every epoch")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("pipelines.tune").setLevel(logging.INFO)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        options = {
            "tune.trials": args.trials,
            "tune.timeout_minutes": args.timeout_minutes,
            "tune.storage": args.storage,
            "tune.study_name": args.study_name,
        }
        params = with_cli_options(load_params(args.params), options, str(args.params))
        if args.fresh:
            delete_study(params)
        result = run(params, args.params, args.out, args.worker, progress=not args.no_progress)
    except UserError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 2
    print(result)
    return 130 if result.interrupted else 0


def delete_study(params: Params) -> None:
    cfg = tune_section(params)
    with contextlib.suppress(KeyError):  # no such study yet
        optuna.delete_study(study_name=cfg.study_name, storage=make_storage(storage_url(cfg, params)))
    clean_dir(params.paths.cache / "tune" / cfg.study_name)


if __name__ == "__main__":
    sys.exit(main())
