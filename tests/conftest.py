"""Shared fixtures: tiny generated datasets and params that point every path into tmp_path."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import stages  # noqa: F401  (applies the offline environment before anything else)
from stages.params import Params, parse_params

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_image(
    path: Path,
    seed: int,
    size: tuple[int, int] = (48, 40),
    tint=(0, 0, 0),
    mode: str = "RGB",
    fmt: str | None = None,
) -> Path:
    """A small noisy image whose mean colour is pulled towards ``tint`` (so classes differ)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 120, size=(size[1], size[0], 3)) + np.array(tint)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype("uint8"), "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)
    return path


def make_classify_source(
    root: Path, per_class: int = 12, classes: dict | None = None, size: tuple[int, int] = (48, 40)
) -> Path:
    """``root/<class>/img_<i>.png`` with a distinct colour per class."""
    classes = classes or {"cat": (130, 0, 0), "dog": (0, 0, 130)}
    for c, (name, tint) in enumerate(classes.items()):
        for i in range(per_class):
            write_image(root / name / f"img_{i:03d}.png", seed=1000 * c + i, size=size, tint=tint)
    return root


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root (to prove a stage never writes into its input)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def fast_params(tmp_path: Path, source: Path, **sections: dict[str, Any]) -> Params:
    """Params for quick tests: tiny images, few epochs, every output under tmp_path."""
    raw: dict[str, Any] = {
        "data": {"source": str(source), "format": "auto", "task": "classify"},
        "paths": {
            name: str(tmp_path / "out" / name)
            for name in ("interim", "processed", "models", "reports", "cache")
        },
        "validate": {"workers": 1},
        "augment": {"preview": {"images": 2, "views": 2}},
        "train": {
            "image_size": 64,
            "epochs": 8,
            "aug_views": 1,
            "patience": 3,
            "feature_batch_size": 16,
            "device": "cpu",
        },
        "evaluate": {"bootstrap": 50},
    }
    for key, values in sections.items():
        raw.setdefault(key, {}).update(values)
    return parse_params(raw)


@pytest.fixture
def classify_source(tmp_path: Path) -> Path:
    return make_classify_source(tmp_path / "source")
