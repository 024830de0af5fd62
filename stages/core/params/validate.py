"""The ``validate`` section: image limits and which expectation checks block or only warn."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import Field, model_validator

from stages.core.params.base import Section
from stages.core.params.workers import Workers, workers_field

CheckName = Literal[
    "image_ids_unique",
    "paths_unique",
    "sizes_positive",
    "labels_in_classes",
    "splits_known",
    "enough_classes",
    "boxes_reference_images",
    "box_classes_in_classes",
    "boxes_have_area",
    "boxes_inside_images",
    "min_images_per_class",
    "class_balance",
]
WARNING_CHECKS: tuple[CheckName, ...] = ("min_images_per_class", "class_balance")
# Every other check blocks by default.
BLOCKING_CHECKS: tuple[CheckName, ...] = tuple(c for c in get_args(CheckName) if c not in WARNING_CHECKS)


class ValidateSection(Section):
    max_pixels: int = Field(
        default=89_478_485,
        gt=0,
        description="Refuse images whose declared width*height exceeds this (before decoding).",
    )
    min_side: int = Field(default=16, ge=1, description="Quarantine images whose shorter side is below this.")
    min_images_per_class: int = Field(
        default=5, ge=1, description="Fewer images than this in a class is a warning."
    )
    workers: Workers = workers_field("decoding images in parallel")
    max_class_ratio: float = Field(
        default=10.0, ge=1, description="class_balance check: largest / smallest class (classes with images)."
    )
    blocking: tuple[CheckName, ...] = Field(
        default=BLOCKING_CHECKS,
        description="Expectation checks that fail the stage (stages/dataprep/checks.py).",
    )
    warn: tuple[CheckName, ...] = Field(
        default=WARNING_CHECKS,
        description="Expectation checks that only warn; a check in neither list is off.",
    )

    @model_validator(mode="before")
    @classmethod
    def _one_list_moves_a_check(cls, data: Any) -> Any:
        """Naming a check in one list takes it out of the other list's default."""
        if isinstance(data, dict):
            for given, other, default in (
                ("warn", "blocking", BLOCKING_CHECKS),
                ("blocking", "warn", WARNING_CHECKS),
            ):
                if isinstance(data.get(given), list | tuple) and other not in data:
                    data = {**data, other: [c for c in default if c not in data[given]]}
        return data

    @model_validator(mode="after")
    def _block_or_warn(self) -> ValidateSection:
        both = sorted(set(self.blocking) & set(self.warn))
        if both:
            raise ValueError(
                f"checks {both} are in both validate.blocking and validate.warn; keep each in one"
            )
        return self
