"""The segmenter to ONNX: per-pixel class probabilities ``(batch, classes, size, size)`` from
images preprocessed by ``stages.dataprep.segment_preprocess`` (``stages.serving.torch_onnx``), so
onnxruntime and PyTorch compare number for number and the class map is their argmax in both."""

from __future__ import annotations

from pathlib import Path

from stages.models.segmenters import load_segmenter
from stages.serving.torch_onnx import export_probabilities


def export_segmenter(checkpoint: Path, target: Path, opset: int) -> dict:
    """Write ``target`` (dynamic batch) from ``models/segmenter.pt``; returns the checkpoint's meta."""
    model, meta = load_segmenter(checkpoint)
    export_probabilities(model, int(meta["preprocessing"]["input_size"]), target, opset)
    return meta
