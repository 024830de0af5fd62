"""The ``augment`` section: a preset or explicit albumentations transforms, box rules, the preview."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from stages.core.params.base import Section

AugmentPreset = Literal["none", "light", "default", "heavy"]


class TransformSpec(Section):
    """One albumentations transform by class name, with its keyword arguments."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class PreviewSection(Section):
    images: int = Field(default=4, ge=1, le=32, description="Training images in the preview grid (rows).")
    views: int = Field(
        default=3, ge=1, le=8, description="Augmented views per image (columns after the original)."
    )


class BboxSection(Section):
    """How a detection policy treats boxes (albumentations ``BboxParams``); boxes are always clipped."""

    min_visibility: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Drop a box when less than this fraction of it stays in the image.",
    )
    min_area: float = Field(
        default=4.0, ge=0, description="Drop a box smaller than this after augmenting (px)."
    )


class AugmentSection(Section):
    preset: AugmentPreset = "default"
    transforms: tuple[TransformSpec, ...] | None = Field(
        default=None, description="Explicit albumentations transforms; replaces the preset when given."
    )
    bbox: BboxSection = Field(default=BboxSection(), description="Box rules, used when data.task is detect.")
    preview: PreviewSection = PreviewSection()
