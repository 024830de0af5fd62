"""The ``Section`` every params model derives from, and the ``base``, ``data`` and ``paths`` sections."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    """Base for every section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseSection(Section):
    seed: int = Field(default=42, ge=0, description="Seed for every random choice in every stage.")


class DataSection(Section):
    source: Path = Field(description="Dataset root; read only, never written.")
    format: Literal["auto", "folder", "coco", "yolo", "voc", "cvat", "labelstudio", "masks"] = "auto"
    task: Literal["classify", "detect", "segment"] = Field(
        default="classify",
        description="classify: one label per image (folders or tags); detect: boxes; segment: a class per "
        "pixel from the shapes (polygons, RLE, mask PNGs), background where no shape lies.",
    )
    annotations: Path | None = Field(
        default=None,
        description="Annotation file relative to source when the layout leaves a choice: the COCO JSON, "
        "the YOLO dataset YAML that lists the class names, the CVAT XML or the Label Studio JSON export.",
    )


def uses_boxes(task: str) -> bool:
    """Whether a task's data are annotated regions (boxes, and for segment their shapes' tight boxes).

    ``segment`` reads classes, boxes, box checks and split strata exactly as ``detect`` does.
    """
    return task in ("detect", "segment")


class PathsSection(Section):
    interim: Path = Path("data/interim")
    processed: Path = Path("data/processed")
    models: Path = Path("models")
    reports: Path = Path("reports")
    cache: Path = Field(default=Path("data/cache"), description="Content-addressed caches (not DVC outputs).")
    export: Path = Field(
        default=Path("export"),
        description="The export stage's ONNX models (not under models/: train owns that folder in DVC).",
    )
