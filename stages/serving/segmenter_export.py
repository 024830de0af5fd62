"""The segmenter to ONNX with ``torch.onnx.export(dynamo=True)``, as the classifier is exported.

Input: ``(batch, 3, size, size)`` images preprocessed by ``stages.dataprep.segment_preprocess``;
output: per-pixel class probabilities ``(batch, classes, size, size)`` (a softmax over the logits,
in float32), so onnxruntime and PyTorch can be compared number for number and the class map is
their argmax in both.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import torch
from torch import nn

from stages.models.segmenters import load_segmenter

INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"


class _Probabilities(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(images).float(), dim=1)


def export_segmenter(checkpoint: Path, target: Path, opset: int) -> dict:
    """Write ``target`` (dynamic batch) from ``models/segmenter.pt``; returns the checkpoint's meta."""
    model, meta = load_segmenter(checkpoint)
    size = int(meta["preprocessing"]["input_size"])
    wrapper = _Probabilities(model.eval()).eval()
    example = torch.zeros(2, 3, size, size)  # batch 2: torch.export specialises a size of 1
    batch = torch.export.Dim("batch", min=1, max=4096)
    target.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("torch.onnx").setLevel(logging.WARNING)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress lines
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            optimize=True,
            verbose=False,
        )
    if program is None:
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no program")
    program.save(str(target), external_data=False)
    return meta
