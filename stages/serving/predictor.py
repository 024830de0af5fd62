"""``load_predictor(path)``: the one entry for predict and serve; ``.onnx`` never imports torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from stages.core.errors import UserError
from stages.serving.metadata import ModelInfo


class Predictor(Protocol):
    info: ModelInfo

    def predict(self, images: list[Image.Image], **thresholds: Any) -> list[dict[str, Any]]: ...

    def boxes(
        self, images: list[Image.Image], conf: float | None = None, iou: float | None = None
    ) -> list[dict[str, np.ndarray]]: ...

    def masks(self, images: list[Image.Image]) -> list[np.ndarray]: ...


def load_predictor(path: Path, threads: int | None = None) -> Predictor:
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from stages.serving.onnx_predictor import OnnxPredictor

        return OnnxPredictor(path, threads)
    if suffix == ".pt":
        from stages.serving.torch_predictor import TorchPredictor  # torch: only for .pt

        return TorchPredictor(path, threads)
    raise UserError(
        f"{path}: the model must be a .onnx (from stages.export) or a .pt checkpoint (from train)."
    )
