"""The ``export`` section: the ONNX opset, the parity thresholds, INT8 and the service's request limit."""

from __future__ import annotations

from pydantic import Field

from stages.core.params.base import Section


class ParitySection(Section):
    max_abs_diff: float = Field(
        default=1e-4,
        ge=0,
        description="classify: largest |ONNX - PyTorch| class probability allowed on the evaluated split.",
    )
    min_top1_agreement: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="classify: share of images whose top-1 class must be the same in ONNX and PyTorch.",
    )
    max_map_drop: float = Field(
        default=0.01,
        ge=0,
        description="detect: largest mAP50-95 drop of the ONNX model below PyTorch's allowed.",
    )
    max_miou_drop: float = Field(
        default=0.001,
        ge=0,
        description="segment: largest mIoU drop of the ONNX model below PyTorch's (same images, same "
        "preprocessing) allowed.",
    )
    min_pixel_agreement: float = Field(
        default=0.999,
        ge=0,
        le=1,
        description="segment: share of the evaluated pixels with the same class in ONNX and PyTorch.",
    )


class ExportSection(Section):
    opset: int = Field(
        default=18,
        ge=13,
        le=20,
        description="ONNX opset (18: the torch.onnx dynamo exporter's own; onnxruntime's static INT8 "
        "quantization refuses 21 and above).",
    )
    parity: ParitySection = ParitySection()
    int8: bool = Field(
        default=True,
        description="Also write an INT8 model (onnxruntime static quantization, calibrated on train "
        "images) and its metric change on the evaluated split.",
    )
    calibration_images: int = Field(
        default=32, ge=1, le=1024, description="Train images that calibrate the INT8 ranges."
    )
    max_request_bytes: int = Field(
        default=20_000_000, gt=0, description="pipelines.serve: largest request body accepted (413 above)."
    )
