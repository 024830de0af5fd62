"""The ``split`` section: fractions, groups, near-duplicates and the leakage audit's tolerances."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from stages.core.params.base import Section
from stages.core.params.workers import Workers, workers_field


class SplitFractions(Section):
    train: float = Field(default=0.7, gt=0, lt=1)
    val: float = Field(default=0.15, ge=0, lt=1)
    test: float = Field(default=0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must add up to 1, they add up to {total:g}")
        return self


HashKind = Literal["phash", "dhash", "ahash", "whash"]


class NearDuplicateSection(Section):
    enabled: bool = Field(
        default=True, description="Find near-duplicate images and keep each cluster in one split."
    )
    max_distance: dict[HashKind, Annotated[int, Field(ge=0, le=32)]] = Field(
        default_factory=lambda: {"phash": 10, "dhash": 10},
        description="Largest Hamming distance (of 64 bits) per perceptual hash; two images are "
        "near-duplicates when they are within it on every listed hash.",
    )
    workers: Workers = workers_field("computing perceptual hashes")
    confirm: Literal["none", "embedding"] = Field(
        default="none",
        description="embedding: keep a hash pair only when the backbone's features (train.backbone, "
        "its weights and image size; cached and shared with train) are also near, so a re-encoded or "
        "resized copy stays a pair but a fixed-camera shot with a piece moved does not. none: hashes only.",
    )
    embedding_min_similarity: float = Field(
        default=0.98,
        gt=0,
        le=1,
        description="confirm embedding: the smallest cosine similarity of two images' features that "
        "confirms a hash pair.",
    )

    @model_validator(mode="after")
    def _needs_a_hash(self) -> NearDuplicateSection:
        if self.enabled and not self.max_distance:
            raise ValueError("list at least one hash in max_distance, or set enabled: false")
        return self


class GroupSection(Section):
    rule: Literal["source", "none", "parent", "regex", "csv"] = Field(
        default="source",
        description="Where an image's group comes from: the source annotations, none, a parent "
        "folder, a regex on the path, or a CSV file.",
    )
    parent_level: int = Field(
        default=1, ge=1, description="rule parent: 1 = the image's folder, 2 = the one above."
    )
    pattern: str | None = Field(
        default=None,
        description="rule regex: searched in the path relative to data.source; the group is the named "
        "group 'group', else the first group, else the whole match.",
    )
    file: Path | None = Field(
        default=None, description="rule csv: the mapping file, relative to data.source."
    )
    path_column: str = Field(default="path", description="rule csv: column with image paths or file names.")
    group_column: str = Field(default="group", description="rule csv: column with the group.")

    @model_validator(mode="after")
    def _rule_has_its_setting(self) -> GroupSection:
        if self.rule == "regex":
            if not self.pattern:
                raise ValueError("rule 'regex' needs a pattern")
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern {self.pattern!r} is not a valid regex: {exc}") from None
        if self.rule == "csv" and self.file is None:
            raise ValueError("rule 'csv' needs a file")
        return self


class LeakageSection(Section):
    max_exact_pairs: int = Field(default=0, ge=0, description="Identical images in two splits tolerated.")
    max_near_pairs: int = Field(default=0, ge=0, description="Near-duplicate pairs across splits tolerated.")
    max_groups: int = Field(default=0, ge=0, description="Groups found in more than one split tolerated.")
    max_name_twins: int = Field(
        default=0,
        ge=0,
        description="Name twins across splits tolerated: files whose names differ only by a vendor "
        "tail (Roboflow's _jpg.rf.<hash>) or a numbered suffix (_scaled_1, _tile_2).",
    )
    sheet_pairs: int = Field(
        default=16, ge=1, le=200, description="Worst cross-split pairs drawn in the sheet."
    )


class SplitSection(Section):
    fractions: SplitFractions = SplitFractions()
    honour_predefined: bool = Field(
        default=True,
        description="Keep a split the source already has (folders, a column or predefined_file).",
    )
    predefined_file: Path | None = Field(
        default=None,
        description="CSV with columns path and split, relative to data.source; overrides the source's.",
    )
    exclude: Path = Field(
        default=Path("data/exclude.txt"),
        description="Text file relative to the project (not data.source), one image path (relative "
        "to data.source) or image_id per line, # comments: images left out of every split. dvc.yaml "
        "tracks it as a dep of split, so excluding a suspect is a reviewed, versioned change; a file "
        "with no entries (the shipped one) excludes nothing. Never null: dvc.yaml needs a path.",
    )
    groups: GroupSection = GroupSection()
    near_duplicates: NearDuplicateSection = NearDuplicateSection()
    leakage: LeakageSection = LeakageSection()
