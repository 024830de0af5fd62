"""Batched classifier inference, preprocessed and laid out exactly as the cached features a
linear-probe head was trained on (the same ``inference_network``/``inference_batch`` helpers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from stages.dataprep.imaging import load_rgb
from stages.models.backbones import inference_batch, inference_network


@torch.inference_mode()
def predict(model, files: list[Path], device: torch.device, batch_size: int) -> np.ndarray:
    """Softmax probabilities for each file, preprocessed as in training."""
    transform = model.preprocessing.transform()
    outputs = []
    with inference_network(model.model, device) as network:
        for start in tqdm(
            range(0, len(files), batch_size), desc="evaluate: predicting", unit="batch", leave=False
        ):
            images = [transform(load_rgb(f)) for f in files[start : start + batch_size]]
            batch = inference_batch(images, device)
            outputs.append(torch.softmax(network(batch).float(), dim=1).cpu().numpy())
    return np.concatenate(outputs)
