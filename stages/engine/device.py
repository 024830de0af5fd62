"""Device choice and seeding, shared by every trainer and by evaluation."""

from __future__ import annotations

import random

import numpy as np
import torch

from stages.core.errors import UserError


def resolve_device(choice: str) -> torch.device:
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device is '{choice}' but no CUDA GPU is visible; use 'auto' or 'cpu'.")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch seeds; cuDNN benchmark off (its kernel choice is not seeded)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
