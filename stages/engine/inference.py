"""Batched classifier inference, preprocessed exactly as in training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from stages.dataprep.imaging import load_rgb


@torch.inference_mode()
def predict(model, files: list[Path], device: torch.device, batch_size: int) -> np.ndarray:
    """Softmax probabilities for each file, preprocessed as in training."""
    network = model.model.to(device).eval()
    transform = model.preprocessing.transform()
    outputs = []
    for start in tqdm(
        range(0, len(files), batch_size), desc="evaluate: predicting", unit="batch", leave=False
    ):
        batch = torch.stack([transform(load_rgb(f)) for f in files[start : start + batch_size]])
        outputs.append(torch.softmax(network(batch.to(device)).float(), dim=1).cpu().numpy())
    return np.concatenate(outputs)
