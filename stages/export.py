"""Stage ``export``: the trained model as ONNX, with a parity check on the evaluated split.

Writes ``<paths.export>/model.onnx`` (and ``model.int8.onnx`` with ``export.int8``), each carrying
its preprocessing, classes and provenance in the ONNX metadata, and ``reports/export.json``
(parity numbers, INT8 change). Fails when the ONNX model breaks ``export.parity``.
Library: ``stages/serving`` (``docs/deploy.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stages.core.cli import exit_with
from stages.core.params import Params

STAGE = "export"


@dataclass(frozen=True)
class ExportResult:
    report: dict[str, Any]

    def __str__(self) -> str:
        r = self.report
        if r["task"] == "classify":
            parity = f"max |dp| {r['max_abs_diff']:.2e}, top-1 agreement {r['top1_agreement']:.3f}"
        elif r["task"] == "segment":
            parity = (
                f"mIoU {r['miou_onnx']:.4f} (PyTorch {r['miou_pytorch']:.4f}), "
                f"pixel agreement {r['pixel_agreement']:.4f}"
            )
        else:
            parity = f"mAP50-95 {r['map50_95_onnx']:.3f} (PyTorch {r['map50_95_pytorch']:.3f})"
        return f"{r['onnx']}: {parity} on {r['images']} {r['split']} images"


def run(params: Params) -> ExportResult:
    """Export the model to ONNX, check parity, optionally quantize to INT8."""
    from stages.serving.exporting import export  # torch, onnx: imported when the stage runs

    return ExportResult(export(params))


if __name__ == "__main__":
    exit_with(STAGE, run)
