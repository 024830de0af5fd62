"""Class maps from a trained segmenter, one per image at the image's own size, streamed.

Each image goes through ``segment_input`` (the training size), the argmax of the logits is the
class map at that size, and ``restore_mask`` brings it back to the image (nearest-neighbour):
metrics are computed at the image's own resolution, against masks drawn at that resolution.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stages.dataprep.imaging import load_rgb
from stages.dataprep.segment_preprocess import restore_mask, segment_input


def predict_masks(
    model: nn.Module, meta: dict[str, Any], files: list[Path], device: torch.device, batch: int
) -> Iterator[np.ndarray]:
    """One uint8 class map (height, width) per file, in order; ``batch`` images per forward pass."""
    step = max(batch, 1)
    for start in range(0, len(files), step):
        yield from predict_arrays(
            model, meta, [np.asarray(load_rgb(f)) for f in files[start : start + step]], device
        )


def predict_arrays(
    model: nn.Module, meta: dict[str, Any], images: list[np.ndarray], device: torch.device
) -> list[np.ndarray]:
    """The class maps of RGB arrays in memory, in one forward pass (the service's path)."""
    preprocessing = meta["preprocessing"]
    size, mean, std = preprocessing["input_size"], preprocessing["mean"], preprocessing["std"]
    model.to(device).eval()
    inputs = np.stack([segment_input(image, size, mean, std) for image in images])
    with torch.inference_mode():
        classes = model(torch.from_numpy(inputs).to(device)).argmax(1).to(torch.uint8).cpu().numpy()
    return [
        restore_mask(pred, image.shape[0], image.shape[1])
        for image, pred in zip(images, classes, strict=True)
    ]
