"""Prediction with onnxruntime and the preprocessing stored in the model file; imports no torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from stages.core.errors import UserError
from stages.dataprep.segment_preprocess import restore_mask, segment_input
from stages.serving.metadata import ModelInfo, read_metadata
from stages.serving.preprocess import classify_array, letterbox, nms, unletterbox


def session(path: Path, threads: int | None = None):
    """An onnxruntime CPU session (``threads``: intra-op threads, None: onnxruntime's default)."""
    import onnxruntime as ort

    if not path.is_file():
        raise UserError(
            f"{path} not found; run `python -m stages.export` first or give an existing .onnx file."
        )
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for a bad file
        raise UserError(f"{path} is not an ONNX model onnxruntime can load ({exc}).") from None


class OnnxPredictor:
    """Batched prediction from RGB images; ``raw`` gives the network's outputs, ``predict`` the results."""

    def __init__(self, path: Path, threads: int | None = None, info: ModelInfo | None = None) -> None:
        self.path = path
        self.session = session(path, threads)
        self.info = info or read_metadata(self.session.get_modelmeta().custom_metadata_map, path)
        self.input_name = self.session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]

    def probabilities(self, images: list[Image.Image]) -> np.ndarray:
        """classify: (n, classes) probabilities (the graph ends in a softmax)."""
        spec = self.info.classify_preprocessing()
        return self.run(np.stack([classify_array(im, spec) for im in images]))

    def boxes(
        self, images: list[Image.Image], conf: float | None = None, iou: float | None = None
    ) -> list[dict[str, np.ndarray]]:
        """detect: per image ``boxes`` (xyxy pixels), ``scores``, ``labels`` after NMS."""
        spec = self.info.detect_preprocessing()
        arrays, geometry = zip(*(letterbox(np.asarray(im), spec) for im in images), strict=True)
        output = self.run(np.stack(arrays))
        results = []
        for image, raw, geo in zip(images, output, geometry, strict=True):
            boxes, scores, labels = nms(
                raw,
                self.info.conf if conf is None else conf,
                self.info.iou if iou is None else iou,
                self.info.max_det,
            )
            results.append(
                {
                    "boxes": unletterbox(boxes, geo, image.width, image.height),
                    "scores": scores.astype(np.float64),
                    "labels": labels.astype(np.int64),
                }
            )
        return results

    def masks(self, images: list[Image.Image]) -> list[np.ndarray]:
        """segment: per image its class map (uint8, the image's own size): argmax at the model's
        input size, resized back with nearest neighbour, as evaluate scores it."""
        spec = self.info.segment_preprocessing()
        batch = np.stack(
            [segment_input(np.asarray(im), spec.input_size, spec.mean, spec.std) for im in images]
        )
        classes = self.run(batch).argmax(axis=1).astype(np.uint8)
        return [restore_mask(c, im.height, im.width) for c, im in zip(classes, images, strict=True)]

    def predict(self, images: list[Image.Image], **thresholds: Any) -> list[dict[str, Any]]:
        from stages.serving.rows import classify_result, detect_result, segment_result

        if self.info.task == "classify":
            return [classify_result(p, self.info) for p in self.probabilities(images)]
        if self.info.task == "segment":
            return [segment_result(m, self.info) for m in self.masks(images)]
        return [detect_result(b, self.info) for b in self.boxes(images, **thresholds)]
