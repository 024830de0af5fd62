"""The classifier to ONNX (``stages.serving.torch_onnx``: the exporter and why). The graph ends in
a softmax, so it returns the probabilities evaluate computes, in float32."""

from __future__ import annotations

from pathlib import Path

from stages.models.checkpoints import load_checkpoint
from stages.serving.torch_onnx import export_probabilities


def export_classifier(checkpoint: Path, target: Path, opset: int) -> dict:
    """Write ``target`` (dynamic batch) from ``models/classifier.pt``; returns the checkpoint's meta."""
    backbone, meta = load_checkpoint(checkpoint)
    export_probabilities(backbone.model, backbone.preprocessing.input_size, target, opset)
    return meta
