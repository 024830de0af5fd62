"""A PyTorch network ending in a softmax over dim 1, to ONNX with ``torch.onnx.export(dynamo=True)``.

Exporter, chosen on torch 2.15 by trying both on the offline EfficientNet-Lite: ``dynamo=True``
(torch.export + onnxscript; the default since torch 2.9 and the maintained one) and the legacy
TorchScript exporter (``dynamo=False``, deprecated, warns on every call). Both run offline and
agree with PyTorch to ~1e-7 in probability; the dynamo graph is also smaller after its optimiser
(94 nodes against 160 for Lite0), so we use it. The opset is pinned by ``export.opset`` (18:
the dynamo exporter's native opset, below onnxruntime's static-quantization limit of 20).
The classifier (``(n, classes)``) and the segmenter (``(n, classes, size, size)``) share it.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import torch
from torch import nn

INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"


class _Probabilities(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(images).float(), dim=1)


def export_probabilities(model: nn.Module, size: int, target: Path, opset: int) -> None:
    """Write ``target``: ``(batch, 3, size, size)`` images in, float32 softmax of the logits out,
    dynamic batch."""
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
