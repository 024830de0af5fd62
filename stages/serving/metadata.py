"""What a deployed model needs besides its weights, stored in the ONNX file's ``metadata_props``.

One JSON value under ``METADATA_KEY``: the task, the class list, the preprocessing (exactly the
evaluate stage's), the default thresholds, the pixel limit and the provenance (code digest,
params digest, metrics with intervals). ``predict`` and ``serve`` read it from the model file, so
a model can never be run with another model's preprocessing or classes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

METADATA_KEY = "cv_finetune"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ClassifyPreprocessing:
    """timm's evaluation transform: resize the short side to ``floor(size / crop_pct)``, centre crop,
    scale to [0, 1], normalise. Its numbers come from the checkpoint's own metadata."""

    input_size: int
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float


@dataclass(frozen=True)
class DetectPreprocessing:
    """ultralytics' letterbox: scale to fit ``image_size`` (up or down), pad to a square with grey
    ``pad_value``, RGB in [0, 1]."""

    image_size: int
    pad_value: int = 114


@dataclass(frozen=True)
class SegmentPreprocessing:
    """Resize to ``input_size`` x ``input_size`` (PIL bilinear), scale to [0, 1], normalise; the class
    map comes back at that size and is resized to the image's (nearest): ``segment_preprocess``."""

    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class ModelInfo:
    task: Literal["classify", "detect", "segment"]
    classes: list[str]
    preprocessing: dict[str, Any]
    conf: float = 0.25  # detect: the boxes reported
    iou: float = 0.7  # detect: NMS overlap
    max_det: int = 100
    top_k: int = 5  # classify: the ranked classes a row lists
    max_pixels: int = 89_478_485  # validate.max_pixels: larger images are refused before decoding
    provenance: dict[str, Any] = field(default_factory=dict)
    version: int = FORMAT_VERSION

    def classify_preprocessing(self) -> ClassifyPreprocessing:
        p = self.preprocessing
        return ClassifyPreprocessing(
            int(p["input_size"]),
            str(p["interpolation"]),
            tuple(p["mean"]),
            tuple(p["std"]),
            float(p["crop_pct"]),
        )

    def detect_preprocessing(self) -> DetectPreprocessing:
        return DetectPreprocessing(int(self.preprocessing["image_size"]))

    def segment_preprocessing(self) -> SegmentPreprocessing:
        p = self.preprocessing
        return SegmentPreprocessing(int(p["input_size"]), tuple(p["mean"]), tuple(p["std"]))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelInfo:
        data = json.loads(text)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def params_digest(section: dict[str, Any]) -> str:
    """A short, stable digest of the training params (to tell two models' settings apart)."""
    return hashlib.sha256(json.dumps(section, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_metadata(path: Path, info: ModelInfo) -> None:
    """Put ``info`` into the ONNX file's ``metadata_props`` (replacing an earlier value)."""
    import onnx

    model = onnx.load(str(path))
    strip_trace_metadata(model)
    # ultralytics stamps the export time ("date") and the absolute data.yaml path ("description").
    kept = [p for p in model.metadata_props if p.key not in (METADATA_KEY, "date")]
    for prop in kept:
        if prop.key == "description":
            prop.value = prop.value.split(" trained on ")[0]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info.to_json()
    onnx.save(model, str(path))


def strip_trace_metadata(model: Any) -> None:
    """Drop the exporters' per-node ``pkg.*`` notes (Python stack traces with absolute paths, FX
    node dumps): they would put this machine's folders into the model and make its bytes differ
    between two checkouts of the same code."""
    graphs = [model.graph, *(function for function in model.functions)]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            kept = [p for p in node.metadata_props if not p.key.startswith("pkg.")]
            del node.metadata_props[:]
            node.metadata_props.extend(kept)
            graphs += [a.g for a in node.attribute if a.HasField("g")]
            graphs += [g for a in node.attribute for g in a.graphs]


def read_metadata(custom: dict[str, str], path: Path) -> ModelInfo:
    """``ModelInfo`` from an onnxruntime session's ``custom_metadata_map``."""
    from stages.core.errors import UserError

    if METADATA_KEY not in custom:
        raise UserError(
            f"{path} has no '{METADATA_KEY}' metadata; export it with `python -m stages.export` "
            "so its preprocessing and classes travel with it."
        )
    return ModelInfo.from_json(custom[METADATA_KEY])
