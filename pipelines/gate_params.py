"""The ``gate:`` section of params.yaml: the rules of ``python -m pipelines.gate`` (docs/gate.md).

The stages keep this section as a plain mapping (``stages.core.params.Params.gate``);
``gate_section`` validates it with the same one-sentence errors as the stages' own sections.
The gate applies the base revision's section; this change's takes effect only when accepted.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from stages.core.params import Params, Section, parse_section


class GateMetric(Section):
    """One watched metric of the metric-regression gate (pipelines/gate.py, docs/gate.md)."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="A headline metric the per-image records give (docs/gate.md).",
    )
    better: Literal["higher", "lower"] | None = Field(
        default=None,
        description="Which direction is better; None: lower for *loss, *error, ece, brier, else higher.",
    )
    tolerance: float | None = Field(
        default=None, ge=0, description="Absolute tolerance; None: gate.tolerance."
    )
    intervals: bool | None = Field(
        default=None, description="Decide on the paired interval; None: gate.intervals."
    )

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data


class GateSection(Section):
    """Rules of ``python -m pipelines.gate``: which metrics may not get worse, and by how much."""

    metrics: tuple[GateMetric, ...] | None = Field(
        default=None,
        description="Watched metrics (names or {name, better, tolerance, intervals}); None: the task's "
        "headline metrics, accuracy and f1_macro (classify), map50_95 and map50 (detect), or miou and "
        "dice_macro (segment).",
    )
    tolerance: float = Field(
        default=0.01, ge=0, description="Absolute drop (new - base, same images) tolerated on every metric."
    )
    intervals: bool = Field(
        default=True,
        description="Decide on the paired bootstrap interval of the change: pass above -tolerance, "
        "regression below, else inconclusive (docs/gate.md); false: the point change decides.",
    )
    accept_regression: bool = Field(
        default=False,
        description="Accept the regressions (and a changed test set) of the change that sets this to true; "
        "ignored when the base already has it true.",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> GateSection:
        names = [m.name for m in self.metrics or ()]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"metrics {repeated} are listed more than once in gate.metrics; keep one each")
        return self


def gate_section(params: Params, source: str = "params") -> GateSection:
    """``params.gate`` validated; raises ``ParamsError`` naming the bad key (``source``: the file)."""
    return parse_section(params.gate, "gate", GateSection, source)
