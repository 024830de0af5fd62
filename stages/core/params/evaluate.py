"""The ``evaluate`` section: which split is scored, bootstrap intervals, top-k and calibration bins."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from stages.core.params.base import Section


class EvaluateSection(Section):
    split: Literal["test", "val"] = "test"
    bootstrap: int = Field(
        default=1000, ge=0, description="Bootstrap resamples for confidence intervals (0: none)."
    )
    confidence: float = Field(default=0.95, gt=0, lt=1, description="Coverage of the bootstrap intervals.")
    top_k: int = Field(
        default=5,
        ge=2,
        description="Top-k accuracy (classification; reported only when there are more classes).",
    )
    calibration_bins: int = Field(
        default=15,
        ge=2,
        le=100,
        description="Equal-width confidence bins for ECE and the reliability diagram.",
    )
