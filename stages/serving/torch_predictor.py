"""Prediction from the PyTorch checkpoints (``models/classifier.pt``, ``detector.pt``, ``segmenter.pt``).

The classifier runs exactly as the evaluate stage runs it: the checkpoint's own timm transform,
``inference_network`` / ``inference_batch`` (channels_last), softmax in float32. The detector
goes through ultralytics (``stages.engine.yolo.serving``), the only place that may import it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from stages.core.errors import UserError
from stages.serving.metadata import ModelInfo


class TorchPredictor:
    def __init__(self, path: Path, threads: int | None = None) -> None:
        if not path.is_file():
            raise UserError(f"{path} not found; run the train stage first or give an existing checkpoint.")
        if threads:
            torch.set_num_threads(threads)
        self.path = path
        self.device = torch.device("cpu")
        # One call at a time: ``inference_network`` switches the weights' memory layout in and out,
        # and ultralytics' predictor keeps per-call state (the service calls from a thread pool).
        self._lock = threading.Lock()
        self.model: Any  # a Backbone (classify), an ultralytics model (detect) or an smp network (segment)
        self.meta: dict[str, Any] = {}
        task = checkpoint_task(path)
        if task == "segment":
            from stages.models.segmenters import load_segmenter

            self.model, meta = load_segmenter(path)
            self.meta = meta
            self.info = ModelInfo(
                task="segment",
                classes=list(meta["classes"]),
                preprocessing={k: meta["preprocessing"][k] for k in ("input_size", "mean", "std")},
                provenance={k: meta[k] for k in ("code_digest", "backbone", "weights_id") if k in meta},
            )
        elif task == "detect":
            from stages.engine.yolo.serving import load_for_serving

            self.model, meta = load_for_serving(path)
            self.info = ModelInfo(
                task="detect",
                classes=list(meta["classes"]),
                preprocessing={"image_size": int(meta.get("image_size", 640))},
                conf=float(meta.get("conf", 0.25)),
                provenance={k: meta[k] for k in ("code_digest", "weights", "fingerprint") if k in meta},
            )
        else:
            from stages.models.checkpoints import load_checkpoint

            self.model, meta = load_checkpoint(path)
            self.info = ModelInfo(
                task="classify",
                classes=list(meta["classes"]),
                preprocessing=meta["preprocessing"],
                provenance={k: meta[k] for k in ("code_digest", "backbone", "weights_id") if k in meta},
            )

    @torch.inference_mode()
    def probabilities(self, images: list[Image.Image]) -> np.ndarray:
        from stages.models.backbones import inference_batch, inference_network

        transform = self.model.preprocessing.transform()
        with inference_network(self.model.model, self.device) as network:
            batch = inference_batch([transform(im) for im in images], self.device)
            return torch.softmax(network(batch).float(), dim=1).cpu().numpy()

    def boxes(
        self, images: list[Image.Image], conf: float | None = None, iou: float | None = None
    ) -> list[dict[str, np.ndarray]]:
        from stages.engine.yolo.serving import predict_rgb

        return predict_rgb(
            self.model,
            [np.asarray(im) for im in images],
            int(self.info.preprocessing["image_size"]),
            self.info.conf if conf is None else conf,
            self.info.iou if iou is None else iou,
            self.info.max_det,
        )

    @torch.inference_mode()
    def masks(self, images: list[Image.Image]) -> list[np.ndarray]:
        """segment: the class maps evaluate scores (``predict_masks``), from images in memory."""
        from stages.engine.segmentation.inference import predict_arrays

        return predict_arrays(self.model, self.meta, [np.asarray(im) for im in images], self.device)

    def predict(self, images: list[Image.Image], **thresholds: Any) -> list[dict[str, Any]]:
        from stages.serving.rows import classify_result, detect_result, segment_result

        with self._lock:
            if self.info.task == "segment":
                return [segment_result(m, self.info) for m in self.masks(images)]
            if self.info.task == "classify":
                return [classify_result(p, self.info) for p in self.probabilities(images)]
            return [detect_result(b, self.info) for b in self.boxes(images, **thresholds)]


def checkpoint_task(path: Path) -> str:
    """Our classifier and segmenter checkpoints are tensors + JSON meta and load with ``weights_only``
    (the meta names the task); a detector does not."""
    import json

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # pickled ultralytics classes: not loadable without code, so not ours
        return "detect"
    if not (isinstance(payload, dict) and "state_dict" in payload and "meta" in payload):
        return "detect"
    meta = json.loads(payload["meta"]) if isinstance(payload["meta"], str) else payload["meta"]
    return str(meta.get("task", "classify"))
