"""Typed, validated params: every stage loads ``params.yaml`` through here before any work.

An unknown key or a bad value becomes one sentence that names the key and what is
allowed, so a typo never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stages.errors import ParamsError

DEFAULT_PARAMS_FILE = Path("params.yaml")


class Section(BaseModel):
    """Base for every section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseSection(Section):
    seed: int = Field(42, ge=0, description="Seed for every random choice in every stage.")


class DataSection(Section):
    source: Path = Field(description="Dataset root; read only, never written.")
    format: Literal["auto", "folder", "coco", "yolo", "voc"] = "auto"
    task: Literal["classify", "detect"] = "classify"
    annotations: Path | None = Field(
        None, description="Annotation file relative to source (COCO), when auto-detection is ambiguous."
    )


class PathsSection(Section):
    interim: Path = Path("data/interim")
    processed: Path = Path("data/processed")
    models: Path = Path("models")
    reports: Path = Path("reports")
    cache: Path = Field(Path("data/cache"), description="Content-addressed caches (not DVC outputs).")


class IngestSection(Section):
    image_extensions: tuple[str, ...] = (
        ".jpg",
        ".jpeg",
        ".png",
        ".bmp",
        ".gif",
        ".tif",
        ".tiff",
        ".webp",
    )
    ignore_files: tuple[str, ...] = (".DS_Store", "Thumbs.db", "desktop.ini")


class ValidateSection(Section):
    max_pixels: int = Field(
        89_478_485,
        gt=0,
        description="Refuse images whose declared width*height exceeds this (before decoding).",
    )
    min_side: int = Field(16, ge=1, description="Quarantine images whose shorter side is below this.")
    min_images_per_class: int = Field(5, ge=1, description="Fewer images than this in a class is a warning.")
    workers: int = Field(2, ge=1, description="Processes decoding images in parallel.")


class SplitFractions(Section):
    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.15, ge=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must add up to 1, they add up to {total:g}")
        return self


class SplitSection(Section):
    fractions: SplitFractions = SplitFractions()
    honour_predefined: bool = Field(True, description="Keep the train/val/test folders a source already has.")


class TransformSpec(Section):
    """One albumentations transform by class name, with its keyword arguments."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class PreviewSection(Section):
    images: int = Field(4, ge=1, le=32)
    views: int = Field(3, ge=1, le=8)


class AugmentSection(Section):
    preset: Literal["none", "light", "default", "heavy"] = "default"
    transforms: tuple[TransformSpec, ...] | None = Field(
        None, description="Explicit albumentations transforms; replaces the preset when given."
    )
    preview: PreviewSection = PreviewSection()


class TrainSection(Section):
    backbone: str = Field("efficientnet_lite0", description="timm model name.")
    weights: str = Field(
        "offline",
        description="'offline' (package-bundled), 'hub' (timm download), 'none', or a checkpoint path.",
    )
    strategy: Literal["linear_probe"] = "linear_probe"
    image_size: int | None = Field(
        None, ge=32, description="Input size; None takes the backbone's pretrained size."
    )
    epochs: int = Field(60, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.001, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    patience: int = Field(10, ge=1, description="Early stopping: epochs without val improvement.")
    aug_views: int = Field(
        2, ge=0, description="Augmented views per training image in the linear-probe feature cache."
    )
    class_weights: Literal["none", "balanced"] = "none"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    feature_batch_size: int = Field(32, ge=1)


class EvaluateSection(Section):
    split: Literal["test", "val"] = "test"
    bootstrap: int = Field(1000, ge=0, description="Bootstrap resamples for confidence intervals (0: none).")
    confidence: float = Field(0.95, gt=0, lt=1)


class ReportSection(Section):
    title: str = "Fine-tuning report"


class Params(Section):
    base: BaseSection = BaseSection()
    data: DataSection
    paths: PathsSection = PathsSection()
    ingest: IngestSection = IngestSection()
    validate_: Annotated[ValidateSection, Field(alias="validate")] = ValidateSection()
    split: SplitSection = SplitSection()
    augment: AugmentSection = AugmentSection()
    train: TrainSection = TrainSection()
    evaluate: EvaluateSection = EvaluateSection()
    report: ReportSection = ReportSection()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def load_params(path: Path | str = DEFAULT_PARAMS_FILE) -> Params:
    """Read and validate a params file; raise ``ParamsError`` with one sentence on any problem."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found; pass an existing file with --params.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ParamsError(f"{path}: invalid YAML{where}; fix the syntax there.") from None
    return parse_params(raw if raw is not None else {}, source=str(path))


def parse_params(raw: Any, source: str = "params") -> Params:
    """Validate a mapping into ``Params``; the first problem becomes a one-sentence error."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: the top level must be a mapping of sections.")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(f"{source}: {describe_error(exc)}") from None


def describe_error(exc: ValidationError) -> str:
    """Turn pydantic's first error into a sentence naming the dotted key and the allowed values."""
    errors = exc.errors()
    # An unknown key explains a "missing" one better (a typo of the required key).
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(loc[:-1]))
        return f"unknown key '{key}'; allowed keys here are: {allowed}."
    if kind == "missing":
        return f"missing required key '{key}'."
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"'{key}' is {error['input']!r}, which is not allowed; use one of {expected}."
    return f"'{key}' = {error.get('input')!r} is invalid: {error['msg']}."


def _allowed_keys(parent: list[str]) -> list[str]:
    """Field names (as written in YAML) of the section at ``parent``."""
    model: type[BaseModel] = Params
    for part in parent:
        if part.isdigit():  # an item of a list: same model as the list's elements
            continue
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        nested = _find_model(field.annotation) if field else None
        if nested is None:
            return []
        model = nested
    return [info.alias or name for name, info in model.model_fields.items()]


def _find_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as ``tuple[Spec, ...] | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _find_model(arg)
        if found is not None:
            return found
    return None
