"""Preprocessing without torch, equal to what the evaluate stage feeds the PyTorch model.

- classify: timm's evaluation transform as the checkpoint records it (``Preprocessing.transform``):
  torchvision's ``Resize(int)`` on a PIL image is ``PIL.Image.resize`` of the short side to
  ``floor(size / crop_pct)``, then ``CenterCrop`` (offsets rounded), ``ToTensor`` (/255 in float32)
  and ``Normalize``. tests/test_serving.py checks it against timm's transform bit for bit.
- detect: ultralytics' ``LetterBox`` (cv2 bilinear resize to fit, centred grey padding) with
  a square output, and the inverse mapping of boxes back to the image.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from stages.serving.metadata import ClassifyPreprocessing, DetectPreprocessing

_PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


def classify_array(image: Image.Image, spec: ClassifyPreprocessing) -> np.ndarray:
    """RGB PIL image -> (3, size, size) float32, as timm's eval transform makes it."""
    size = spec.input_size
    scale = math.floor(size / spec.crop_pct)
    width, height = image.size
    if width <= height:
        new_w, new_h = scale, int(scale * height / width)
    else:
        new_w, new_h = int(scale * width / height), scale
    resized = image.resize((new_w, new_h), _PIL_FILTERS[spec.interpolation])
    if new_w < size or new_h < size:  # torchvision pads with 0 before cropping (crop_pct > 1)
        canvas = Image.new("RGB", (max(new_w, size), max(new_h, size)))
        canvas.paste(resized, ((max(size - new_w, 0) + 1) // 2, (max(size - new_h, 0) + 1) // 2))
        resized, (new_w, new_h) = canvas, canvas.size
    top, left = round((new_h - size) / 2.0), round((new_w - size) / 2.0)
    cropped = resized.crop((left, top, left + size, top + size))
    array = np.asarray(cropped, dtype=np.uint8).astype(np.float32) / np.float32(255)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    return ((array - mean) / std).transpose(2, 0, 1).copy()


def letterbox(
    image: np.ndarray, spec: DetectPreprocessing
) -> tuple[np.ndarray, tuple[float, float, int, int]]:
    """RGB uint8 (h, w, 3) -> (3, s, s) float32 in [0, 1]; also (gain_x, gain_y, pad_x, pad_y)."""
    import cv2

    size = spec.image_size
    h, w = image.shape[:2]
    r = min(size / h, size / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    dw, dh = (size - new_w) / 2, (size - new_h) / 2
    if (w, h) != (new_w, new_h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    value = (spec.pad_value,) * 3
    padded = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=value)
    array = padded.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    return array, (new_w / w, new_h / h, left, top)


def unletterbox(
    boxes: np.ndarray, geometry: tuple[float, float, int, int], width: int, height: int
) -> np.ndarray:
    """xyxy boxes on the letterboxed input -> pixels of the original image, clipped to it."""
    gain_x, gain_y, pad_x, pad_y = geometry
    out = boxes.astype(np.float64).copy()
    out[:, [0, 2]] = ((out[:, [0, 2]] - pad_x) / gain_x).clip(0, width)
    out[:, [1, 3]] = ((out[:, [1, 3]] - pad_y) / gain_y).clip(0, height)
    return out


def nms(
    output: np.ndarray, conf: float, iou: float, max_det: int, max_nms: int = 30000, max_wh: int = 7680
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ultralytics' class-aware NMS on one image's raw head output ``(4 + classes, anchors)``.

    Returns ``(boxes xyxy, scores, labels)`` sorted by score.
    """
    pred = output.T  # (anchors, 4 + nc)
    scores_all = pred[:, 4:]
    labels = scores_all.argmax(1)
    scores = scores_all[np.arange(len(pred)), labels]
    keep = scores > conf
    xywh, scores, labels = pred[keep, :4], scores[keep], labels[keep]
    order = np.argsort(-scores, kind="stable")[:max_nms]
    xywh, scores, labels = xywh[order], scores[order], labels[order]
    boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], axis=1)
    shifted = boxes + (labels * max_wh)[:, None]
    areas = (shifted[:, 2] - shifted[:, 0]) * (shifted[:, 3] - shifted[:, 1])
    suppressed = np.zeros(len(boxes), dtype=bool)
    kept: list[int] = []
    for i in range(len(boxes)):
        if suppressed[i]:
            continue
        kept.append(i)
        if len(kept) == max_det:
            break
        rest = np.arange(i + 1, len(boxes))
        rest = rest[~suppressed[rest]]
        if rest.size == 0:
            continue
        xx1 = np.maximum(shifted[i, 0], shifted[rest, 0])
        yy1 = np.maximum(shifted[i, 1], shifted[rest, 1])
        xx2 = np.minimum(shifted[i, 2], shifted[rest, 2])
        yy2 = np.minimum(shifted[i, 3], shifted[rest, 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        overlap = inter / (areas[i] + areas[rest] - inter + 1e-9)
        suppressed[rest[overlap > iou]] = True
    index = np.asarray(kept, dtype=np.int64)
    return boxes[index], scores[index], labels[index]
