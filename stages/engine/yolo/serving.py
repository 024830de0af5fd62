"""The detector for deployment: ultralytics' own ONNX export (offline) and PyTorch prediction.

ultralytics (AGPL-3.0) is imported here only, like the rest of ``stages/engine/yolo``.

Offline export: ``Exporter.export_onnx`` calls ``check_requirements(["onnx...", ("onnxruntime",
...), "onnxslim>=0.1.82"])``; every one of them is installed from the lock, so the check is
satisfied without pip, and ``YOLO_AUTOINSTALL=false`` (stages/core/offline.py) stops an install
attempt should a pin ever drift. The export writes next to the checkpoint's recorded path, which is
pointed at a temporary folder, so ``models/`` (the train stage's output) is never written.
``load_detector`` checks the checkpoint's digest before ultralytics unpickles it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from stages.engine.yolo.trainer import load_detector, ultralytics_device


def load_for_serving(path: Path) -> tuple[Any, dict]:
    """``(YOLO model, meta)``; ``load_detector`` checks the file's recorded digest first."""
    return load_detector(path)


def predict_rgb(
    model, images: list[np.ndarray], image_size: int, conf: float, iou: float, max_det: int
) -> list[dict[str, np.ndarray]]:
    """ultralytics' prediction of RGB arrays on CPU: ``boxes`` (xyxy pixels), ``scores``, ``labels``."""
    chunk = [np.ascontiguousarray(im[..., ::-1]) for im in images]  # RGB -> BGR, as ultralytics reads
    results = model.predict(
        chunk,
        imgsz=image_size,
        conf=conf,
        iou=iou,
        max_det=max_det,
        device=ultralytics_device("cpu"),
        verbose=False,
    )
    return [
        {
            "boxes": r.boxes.xyxy.cpu().numpy().astype(np.float64),
            "scores": r.boxes.conf.cpu().numpy().astype(np.float64),
            "labels": r.boxes.cls.cpu().numpy().astype(np.int64),
        }
        for r in results
    ]


def export_onnx(detector: Path, target: Path, image_size: int, opset: int) -> dict:
    """``YOLO(detector).export(format="onnx")`` with a dynamic batch, onnxslim, no NMS in the graph.

    NMS stays out of the graph so the same file scores mAP at confidence 0.001 and predicts at the
    model's own threshold; ``stages.serving.preprocess.nms`` is ultralytics' NMS in NumPy.
    Returns the detector's metadata.
    """
    model, meta = load_detector(detector)  # checks the file's recorded digest before unpickling
    with tempfile.TemporaryDirectory(prefix="cv-finetune-export-") as folder:
        # ultralytics writes the .onnx next to ``pt_path``: a temporary folder, never models/
        network: Any = model.model
        network.pt_path = str(Path(folder) / "detector.pt")
        written = model.export(
            format="onnx",
            imgsz=image_size,
            opset=opset,
            dynamic=True,
            simplify=True,
            nms=False,
            half=False,
            int8=False,
            device="cpu",
            batch=1,
            verbose=False,
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(written), target)
    return meta
