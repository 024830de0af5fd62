"""The ``label_issues`` section: out-of-fold label-issue detection (``python -m stages.label_issues``)."""

from __future__ import annotations

from pydantic import Field

from stages.core.params.base import Section


class LabelIssuesSection(Section):
    enabled: bool = Field(
        default=True, description="Score every train and val label; false writes an empty list."
    )
    folds: int = Field(
        default=5,
        ge=2,
        le=20,
        description="K of the K-fold linear heads: each image is scored by a head that never saw it "
        "nor its near-duplicates and group (fewer folds when there are fewer independent units).",
    )
    epochs: int = Field(default=30, ge=1, description="Epochs of each fold's linear head.")
    lr: float = Field(default=0.001, gt=0, description="AdamW learning rate of each fold's head.")
    weight_decay: float = Field(default=0.01, ge=0, description="AdamW weight decay of each fold's head.")
    batch_size: int = Field(default=32, ge=1, description="Minibatch of each fold's head.")
    grid: int = Field(default=12, ge=0, le=64, description="Top suspects drawn in the report's grid.")
    box_confident: float = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="detect: a prediction this confident can call a swapped class or a missing box "
        "(cleanlab's high_probability_threshold; its 0.95 suits few fine-tuned detectors).",
    )
    box_low: float = Field(
        default=0.25,
        gt=0,
        lt=1,
        description="detect: predictions above this place a box (badly placed); a given box no "
        "prediction above it supports is spurious (cleanlab's low_probability_threshold).",
    )
    box_threshold: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="detect: boxes whose quality is at most this are listed in reports/box_issues.csv.",
    )
