"""Fine-tuning strategy study: every strategy with the same budget over several seeds.

    python -m pipelines.strategy_study [--params params.yaml] [--strategies linear_probe lp_ft ...]
                                       [--seeds 0 1 2] [--epochs 3] [--probe-epochs 60]

Each run is the train and evaluate stages (``run(params)``, no second loop) on params with
``train.strategy``, ``base.seed`` and the epoch budget overridden, in its own folder under
``paths.cache/strategy_study``; the ingest/validate/split outputs and the feature cache are
shared, so the split (made with params.yaml's seed) is the same for every run: the seeds vary
what training draws (head init, sample order, augmentation, dropout). The table (mean and
spread of the headline metric on ``evaluate.split``, val accuracy, wall time, trainable
parameters) goes to ``<paths.reports>/strategy_study.md`` with a plot beside it
(``strategy_study.png``); the report stage includes both when present. See docs/tuning.md.
"""

from __future__ import annotations

import pipelines  # noqa: F401  (offline environment first)

# isort: split
import argparse
import logging
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from tqdm import tqdm

from pipelines.trials import (
    drop_checkpoint,
    require_prepared,
    run_params,
    with_cli_options,
    write_policy,
)
from pipelines.tune_params import redact, tune_section
from stages import evaluate, train
from stages.core.errors import UserError
from stages.core.params import DEFAULT_PARAMS_FILE, Params, load_params

if TYPE_CHECKING:
    from stages.engine.classifier import TrainResult

log = logging.getLogger("pipelines.strategy_study")
STUDY_MD = "strategy_study.md"
STUDY_PNG = "strategy_study.png"


@dataclass(frozen=True)
class StudyRun:
    strategy: str
    seed: int
    metric: float
    val_accuracy: float | None
    train_wall_s: float
    trainable_params: int
    epochs_run: int
    best_epoch: int


@dataclass(frozen=True)
class StudyResult:
    runs: list[StudyRun]
    table: str
    markdown: Path
    plot: Path

    def __str__(self) -> str:
        return f"{len(self.runs)} runs -> {self.markdown}, {self.plot}"


def budget_overrides(params: Params, strategy: str, seed: int) -> dict[str, Any]:
    study = tune_section(params).study
    overrides: dict[str, Any] = {"train.strategy": strategy, "base.seed": seed}
    epochs = study.epochs or params.train.epochs
    probe = study.probe_epochs or params.train.lp_epochs
    if strategy == "linear_probe":
        overrides["train.epochs"] = probe
    else:
        overrides["train.epochs"] = epochs
        if strategy == "lp_ft":
            overrides["train.lp_epochs"] = probe
    return overrides


def run_one(params: Params, strategy: str, seed: int, root: Path) -> StudyRun:
    run = run_params(params, budget_overrides(params, strategy, seed), root / strategy / f"seed_{seed}")
    write_policy(run)
    started = time.perf_counter()
    trained = cast("TrainResult", train.run(run))  # a classifier: run() refused data.task != classify
    wall = time.perf_counter() - started
    metrics = evaluate.run(run).metrics
    drop_checkpoint(run)
    name = tune_section(params).study.metric
    if name not in metrics:
        raise UserError(f"tune.study.metric '{name}' is not in metrics.json; use one of {sorted(metrics)}.")
    return StudyRun(
        strategy,
        seed,
        float(metrics[name]),
        trained.best_val_accuracy,
        round(wall, 2),
        trained.trainable_params,
        trained.epochs_run,
        trained.best_epoch,
    )


def run(params: Params, progress: bool = True) -> StudyResult:
    """Train and evaluate every (strategy, seed); write the table and the plot under paths.reports."""
    study = tune_section(params).study  # a bad tune: section fails before any work
    require_prepared(params)
    if params.data.task != "classify":
        raise UserError("the strategy study compares classifier strategies; set data.task: classify.")
    root = params.paths.cache / "strategy_study"
    runs: list[StudyRun] = []
    jobs = [(s, seed) for s in study.strategies for seed in study.seeds]
    bar = tqdm(jobs, desc="strategy study", unit="run", disable=not progress)
    for strategy, seed in bar:
        bar.set_postfix(strategy=strategy, seed=seed)
        result = run_one(params, strategy, seed, root)
        runs.append(result)
        tqdm.write(
            f"{strategy:15s} seed {seed}: {study.metric} {result.metric:.4f}, val accuracy "
            f"{_fmt(result.val_accuracy)}, train {result.train_wall_s:.1f} s, "
            f"{result.trainable_params:,} trainable"
        )
    reports = params.paths.reports
    reports.mkdir(parents=True, exist_ok=True)
    table = summary_table(runs, study.metric)
    markdown = reports / STUDY_MD
    markdown.write_text(render_markdown(params, runs, table), encoding="utf-8")
    plot = reports / STUDY_PNG
    draw(runs, study.metric, plot)
    return StudyResult(runs, table, markdown, plot)


def summarise(runs: list[StudyRun]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for strategy in dict.fromkeys(r.strategy for r in runs):
        mine = [r for r in runs if r.strategy == strategy]
        values = [r.metric for r in mine]
        vals = [r.val_accuracy for r in mine if r.val_accuracy is not None]
        out[strategy] = {
            "mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values),
            "max": max(values),
            "val_mean": statistics.fmean(vals) if vals else None,
            "wall_median": statistics.median(r.train_wall_s for r in mine),
            "trainable": statistics.median(r.trainable_params for r in mine),
            "epochs": statistics.fmean(r.epochs_run for r in mine),
            "seeds": len(mine),
        }
    return out


def summary_table(runs: list[StudyRun], metric: str) -> str:
    rows = [
        f"| {name} | {s['mean']:.3f} ± {s['sd']:.3f} | {s['min']:.3f} – {s['max']:.3f} | "
        f"{_fmt(s['val_mean'])} | {s['wall_median']:.1f} | {int(s['trainable']):,} | {s['epochs']:.1f} | "
        f"{s['seeds']} |"
        for name, s in sorted(summarise(runs).items(), key=lambda item: -item[1]["mean"])
    ]
    header = (
        f"| strategy | {metric} mean ± sd | min – max | val accuracy (mean) | train wall median (s) "
        "| trainable params | epochs run (mean) | seeds |\n|---|---|---|---|---|---|---|---|"
    )
    return "\n".join([header, *rows])


def render_markdown(params: Params, runs: list[StudyRun], table: str) -> str:
    study = tune_section(params).study
    metric = study.metric
    per_run = "\n".join(
        f"| {r.strategy} | {r.seed} | {r.metric:.4f} | {_fmt(r.val_accuracy)} | {r.train_wall_s:.1f} | "
        f"{r.trainable_params:,} | {r.best_epoch}/{r.epochs_run} |"
        for r in runs
    )
    budget = (
        f"end-to-end phases {study.epochs or params.train.epochs} epochs, linear probe and lp_ft's probe "
        f"phase {study.probe_epochs or params.train.lp_epochs} epochs (on cached features)"
    )
    return "\n".join(
        [
            "# Fine-tuning strategy study",
            "",
            f"`python -m pipelines.strategy_study`: backbone `{params.train.backbone}`, image size "
            f"{params.train.image_size or 'the backbone default'}, {budget}; seeds "
            f"{', '.join(map(str, study.seeds))} (training randomness only: every run uses the same split). "
            f"Headline metric: `{metric}` on the {params.evaluate.split} split; val accuracy at the epoch "
            f"the train stage selected; wall time of the train stage (the first linear-probe run also "
            "computes the cached features, hence the median); trainable parameters at the selected epoch.",
            "",
            table,
            "",
            "![strategy study](strategy_study.png)",
            "",
            "<details><summary>Every run</summary>",
            "",
            f"| strategy | seed | {metric} | val accuracy | train wall (s) | trainable params "
            "| best/run epochs |",
            "|---|---|---|---|---|---|---|",
            per_run,
            "",
            "</details>",
            "",
        ]
    )


def draw(runs: list[StudyRun], metric: str, path: Path) -> None:
    """Left: the metric per strategy (mean ± sd, each seed a dot); right: median train wall time."""
    from stages.reporting.study_figures import strategy_comparison  # matplotlib only when drawing

    summary = summarise(runs)
    seeds = {name: [r.metric for r in runs if r.strategy == name] for name in summary}
    strategy_comparison(summary, seeds, metric, path)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.strategy_study", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS_FILE, help="params file (read only)")
    parser.add_argument("--strategies", nargs="+", help="override tune.study.strategies")
    parser.add_argument("--seeds", type=int, nargs="+", help="override tune.study.seeds")
    parser.add_argument("--epochs", type=int, help="override tune.study.epochs")
    parser.add_argument("--probe-epochs", type=int, help="override tune.study.probe_epochs")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        options = {
            "tune.study.strategies": args.strategies,
            "tune.study.seeds": args.seeds,
            "tune.study.epochs": args.epochs,
            "tune.study.probe_epochs": args.probe_epochs,
        }
        params = with_cli_options(load_params(args.params), options, str(args.params))
        result = run(params, progress=not args.no_progress)
    except UserError as exc:  # a tune section error quotes tune.storage: never its password
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped; rerun the same command: finished fine-tuning runs are reused", file=sys.stderr)
        return 130
    print(result.table)
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
