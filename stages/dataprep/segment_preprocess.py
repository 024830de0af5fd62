"""What a segmenter sees and gives back, in NumPy and PIL only (no torch).

Training, evaluate, the ONNX export and serving all call these three functions, so an image is
resized and normalised the same way everywhere and a predicted class map goes back to the
image's own size the same way. Masks are resized nearest-neighbour: a class index must never be
interpolated into a class that is not there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image


def segment_input(image: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, size, size) float32: bilinear resize, /255, (x - mean) / std."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"segment_input needs an (H, W, 3) RGB array, got shape {image.shape}.")
    resized = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    array = np.asarray(resized, dtype=np.float32) / 255.0
    array = (array - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """(H, W) uint8 class map -> (size, size), nearest-neighbour (training targets)."""
    return _nearest(mask, size, size)


def restore_mask(pred: np.ndarray, height: int, width: int) -> np.ndarray:
    """A (size, size) predicted class map back to the image's (height, width), nearest-neighbour."""
    return _nearest(pred, height, width)


def _nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    if mask.ndim != 2:
        raise ValueError(f"a class map must be 2-D (H, W), got shape {mask.shape}.")
    if mask.shape == (height, width):
        return np.array(mask, dtype=np.uint8)  # a copy: callers may paint on it
    image = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8))
    return np.asarray(image.resize((width, height), Image.Resampling.NEAREST), dtype=np.uint8)
