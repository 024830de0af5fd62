"""Stage ``augment``: turn params into an albumentations policy, save it, and render a preview.

The saved policy (albumentations' own serialisation) is exactly what the trainer applies,
so the preview a person looks at and the training run cannot disagree.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import pandas as pd

from stages.cli import exit_with
from stages.errors import ParamsError
from stages.imaging import load_rgb
from stages.layout import Layout
from stages.manifest import read_parquet
from stages.params import AugmentSection, Params, TransformSpec

log = logging.getLogger("stages.augment")
STAGE = "augment"

# Mild, label-preserving policies for fine-tuning; no vertical flips (most photos have an "up").
PRESETS: dict[str, list[dict[str, Any]]] = {
    "none": [],
    "light": [
        {"name": "HorizontalFlip", "params": {"p": 0.5}},
        {
            "name": "RandomBrightnessContrast",
            "params": {"brightness_limit": 0.1, "contrast_limit": 0.1, "p": 0.3},
        },
    ],
    "default": [
        {"name": "HorizontalFlip", "params": {"p": 0.5}},
        {
            "name": "Affine",
            "params": {
                "scale": [0.9, 1.1],
                "translate_percent": [-0.05, 0.05],
                "rotate": [-10, 10],
                "p": 0.5,
            },
        },
        {
            "name": "RandomBrightnessContrast",
            "params": {"brightness_limit": 0.2, "contrast_limit": 0.2, "p": 0.5},
        },
        {
            "name": "HueSaturationValue",
            "params": {"hue_shift_limit": 5, "sat_shift_limit": 15, "val_shift_limit": 10, "p": 0.3},
        },
    ],
    "heavy": [
        {"name": "HorizontalFlip", "params": {"p": 0.5}},
        {
            "name": "Affine",
            "params": {
                "scale": [0.8, 1.2],
                "translate_percent": [-0.1, 0.1],
                "rotate": [-20, 20],
                "shear": [-8, 8],
                "p": 0.7,
            },
        },
        {
            "name": "ColorJitter",
            "params": {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.05, "p": 0.7},
        },
        {"name": "GaussianBlur", "params": {"blur_limit": [3, 5], "p": 0.2}},
        {
            "name": "CoarseDropout",
            "params": {
                "num_holes_range": [1, 4],
                "hole_height_range": [0.05, 0.15],
                "hole_width_range": [0.05, 0.15],
                "p": 0.3,
            },
        },
    ],
}


@dataclass(frozen=True)
class AugmentResult:
    policy_file: Path
    preview_file: Path | None
    transforms: list[str]

    def __str__(self) -> str:
        return f"policy [{', '.join(self.transforms) or 'no transforms'}] -> {self.policy_file}"


def run(params: Params) -> AugmentResult:
    """Build and save the policy under ``paths.processed``; render the preview under ``paths.reports``."""
    layout = Layout(params.paths)
    policy = build_policy(params.augment, params.base.seed)
    layout.augment_policy.parent.mkdir(parents=True, exist_ok=True)
    A.save(policy, str(layout.augment_policy), data_format="json")
    preview = None
    if layout.manifest.is_file() and layout.splits.is_file():
        manifest = read_parquet(layout.manifest).merge(
            read_parquet(layout.splits), on="image_id", suffixes=("_source", "")
        )
        train = manifest[manifest["split"] == "train"]
        preview = render_preview(policy, train, params, layout.augment_preview)
    names = [type(t).__name__ for t in policy.transforms]
    return AugmentResult(layout.augment_policy, preview, names)


def transform_specs(params: AugmentSection) -> list[TransformSpec]:
    """The explicit list when given, else the named preset."""
    if params.transforms is not None:
        return list(params.transforms)
    return [TransformSpec.model_validate(spec) for spec in PRESETS[params.preset]]


def build_policy(params: AugmentSection, seed: int) -> A.Compose:
    """Instantiate each transform, failing with one sentence that names the bad one."""
    transforms = [build_transform(spec) for spec in transform_specs(params)]
    return A.Compose(transforms, seed=seed)


def build_transform(spec: TransformSpec) -> A.BasicTransform:
    cls = getattr(A, spec.name, None)
    if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
        raise ParamsError(
            f"augment.transforms: '{spec.name}' is not a transform in albumentations "
            f"{A.__version__}; check the spelling against its documentation."
        )
    try:
        return cls(**spec.params, strict=True)
    except (ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()
        reason = " ".join(line.strip() for line in first[:3])
        raise ParamsError(
            f"augment.transforms: {spec.name}{spec.params} is invalid in albumentations "
            f"{A.__version__}: {reason}"
        ) from None


def load_policy(path: Path) -> A.Compose:
    """Load the policy the augment stage saved."""
    return A.load(str(path), data_format="json")


def augment_image(policy: A.Compose, image: np.ndarray, seed: int) -> np.ndarray:
    """Apply the policy with a per-call seed, so a view depends only on (image, seed)."""
    policy.set_random_seed(seed)
    return policy(image=image)["image"]


def render_preview(policy: A.Compose, train: pd.DataFrame, params: Params, out: Path) -> Path | None:
    """A grid: each row one training image, original then augmented views."""
    import matplotlib.pyplot as plt

    if train.empty:
        return None
    chosen = train.sort_values("image_id").sample(
        n=min(params.augment.preview.images, len(train)), random_state=params.base.seed
    )
    views = params.augment.preview.views
    fig, axes = plt.subplots(
        len(chosen), views + 1, figsize=(2.2 * (views + 1), 2.2 * len(chosen)), squeeze=False
    )
    for row, (_, item) in enumerate(chosen.iterrows()):
        image = np.asarray(load_rgb(params.data.source / item["path"]))
        panels = [image] + [
            augment_image(policy, image, params.base.seed + row * 100 + k) for k in range(views)
        ]
        for col, panel in enumerate(panels):
            axis = axes[row][col]
            axis.imshow(panel)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title("original" if col == 0 else f"augmented {col}", fontsize=9)
        axes[row][0].set_ylabel(str(item["label"]), fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


if __name__ == "__main__":
    exit_with(STAGE, run)
