"""The ``tune:`` section of params.yaml: the search of ``python -m pipelines.tune`` (docs/tuning.md)
and, under ``tune.study``, the strategy study of ``python -m pipelines.strategy_study``.

The stages keep this section as a plain mapping (``stages.core.params.Params.tune``);
``tune_section`` validates it with the same one-sentence errors as the stages' own sections.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, model_validator

from stages.core.params import AugmentPreset, Params, Section, Strategy, parse_section


class FloatRange(Section):
    """A searched float: uniform in [low, high], or log-uniform with ``log: true``."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class IntRange(Section):
    """A searched integer in [low, high] (both included)."""

    low: int = Field(ge=1)
    high: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not be above high ({self.high})")
        return self


def _unique(values: tuple | None, key: str) -> None:
    if values is not None and len(set(values)) != len(values):
        raise ValueError(f"{key} lists a value twice; list each once")


class TuneSpace(Section):
    """What the search varies; null keeps the value params.yaml has (not searched)."""

    lr: FloatRange | None = Field(
        default=FloatRange(low=1e-4, high=3e-2, log=True), description="train.lr (the head's learning rate)."
    )
    weight_decay: FloatRange | None = Field(
        default=FloatRange(low=1e-5, high=0.1, log=True), description="train.weight_decay."
    )
    strategy: tuple[Strategy, ...] | None = Field(
        default=("linear_probe",),
        min_length=1,
        description="train.strategy choices (CPU default; add lp_ft, partial on a GPU).",
    )
    unfreeze_blocks: IntRange | None = Field(
        default=IntRange(low=1, high=3),
        description="train.unfreeze_blocks, searched when the strategy is partial.",
    )
    layer_decay: FloatRange | None = Field(
        default=FloatRange(low=0.5, high=1.0),
        description="train.layer_decay, searched when the strategy trains the body (not linear_probe).",
    )
    augment_preset: tuple[AugmentPreset, ...] | None = Field(
        default=("none", "light", "default"), min_length=1, description="augment.preset choices."
    )
    image_size: tuple[Annotated[int, Field(ge=32)], ...] | None = Field(
        default=None, min_length=1, description="train.image_size choices (px); null keeps train.image_size."
    )
    epochs: IntRange | None = Field(
        default=IntRange(low=5, high=30), description="train.epochs (the fine-tuning phase for lp_ft)."
    )

    @model_validator(mode="after")
    def _unique_choices(self) -> TuneSpace:
        for key in ("strategy", "augment_preset", "image_size"):
            _unique(getattr(self, key), key)
        return self


class StrategyStudySection(Section):
    """``python -m pipelines.strategy_study``: every strategy, the same budget, several seeds."""

    strategies: tuple[Strategy, ...] = Field(
        default=("linear_probe", "partial", "full", "gradual", "discriminative", "lp_ft"), min_length=1
    )
    seeds: tuple[Annotated[int, Field(ge=0)], ...] = Field(
        default=(0, 1, 2),
        min_length=1,
        description="Training seeds (base.seed); the split stays the one made.",
    )
    epochs: int | None = Field(
        default=None,
        ge=1,
        description="Epochs of every end-to-end phase (lp_ft's second phase too); null: train.epochs.",
    )
    probe_epochs: int | None = Field(
        default=None,
        ge=1,
        description="Epochs of linear_probe and of lp_ft's probe phase; null: train.lp_epochs.",
    )
    metric: str = Field(
        default="accuracy", description="Headline metric: a key of the evaluate stage's metrics.json."
    )

    @model_validator(mode="after")
    def _unique_lists(self) -> StrategyStudySection:
        _unique(self.strategies, "strategies")
        _unique(self.seeds, "seeds")
        return self


class TuneSection(Section):
    """Hyper-parameter search (``python -m pipelines.tune``, docs/tuning.md): Optuna TPE + pruning."""

    trials: int = Field(
        default=20, ge=1, description="Finished (complete or pruned) trials the study stops at."
    )
    timeout_minutes: float | None = Field(
        default=None,
        gt=0,
        description="Also stop this worker after this many minutes (the running trial ends).",
    )
    seed: int | None = Field(default=None, ge=0, description="Sampler seed; null: base.seed.")
    metric: Literal["val_accuracy", "val_loss", "map50_95", "map50"] = Field(
        default="val_accuracy",
        description="Objective: the val metric at the selected epoch (never the test split); val_accuracy "
        "or val_loss for data.task classify, map50_95 or map50 for detect.",
    )
    direction: Literal["maximize", "minimize"] | None = Field(
        default=None, description="null: minimize val_loss, maximize the others."
    )
    study_name: str = Field(
        default="classifier",
        pattern=r"^[A-Za-z0-9_.-]*[A-Za-z0-9_-][A-Za-z0-9_.-]*$",
        description="Names the study and its folder <paths.cache>/tune/<name>: letters, digits, _ . -, "
        "not only dots (`.` or `..` would be the cache folder itself or its parent).",
    )
    storage: str | None = Field(
        default=None,
        description="null: SQLite at <paths.cache>/tune/study.db; or an RDB URL (sqlite:///..., "
        "postgresql://user:pw@host/db) that several workers share, or a .log journal file path.",
    )
    startup_trials: int = Field(default=5, ge=0, description="Random trials before TPE models the results.")
    pruner: Literal["hyperband", "successive_halving", "none"] = Field(
        default="hyperband", description="Stops hopeless trials early from their per-epoch val metric."
    )
    min_epochs: int = Field(
        default=1, ge=1, description="Pruner: epochs every trial gets before it can be pruned."
    )
    reduction_factor: int = Field(
        default=3, ge=2, description="Pruner: keep about 1/reduction_factor per rung."
    )
    keep_checkpoints: bool = Field(
        default=False, description="Keep every trial's classifier.pt (large); false keeps only their metrics."
    )
    space: TuneSpace = TuneSpace()
    study: StrategyStudySection = StrategyStudySection()

    @model_validator(mode="after")
    def _direction_fits_metric(self) -> TuneSection:
        natural = self.goal_of(self.metric)
        if self.direction not in (None, natural):
            raise ValueError(
                f"{self.metric} is better when it is {natural[:3]}imal; set direction: {natural}"
            )
        return self

    @property
    def goal(self) -> Literal["maximize", "minimize"]:
        return self.direction or self.goal_of(self.metric)

    @staticmethod
    def goal_of(metric: str) -> Literal["maximize", "minimize"]:
        return "minimize" if metric.endswith("loss") else "maximize"


_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<secret>[^@\s]*)@")


def redact(text: str) -> str:
    """``text`` with the password of every URL in it replaced: ``user:pw@host`` -> ``user:***@host``.

    tune.storage may be ``postgresql://user:pw@host/db``; messages, logs and results show it only
    through this, so the password never reaches a terminal, a CI log or a report.
    """
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def tune_section(params: Params, source: str = "params") -> TuneSection:
    """``params.tune`` validated; raises ``ParamsError`` naming the bad key (``source``: the file)."""
    return parse_section(params.tune, "tune", TuneSection, source)
