"""Stage ``augment``: build the albumentations policy from params, save it, render a preview.

The policy rules (presets, box safety, seeding) live in ``stages/dataprep/augmentation.py``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from stages.core.cli import exit_with
from stages.core.contracts import read_classes, read_parquet
from stages.core.layout import Layout
from stages.core.params import Params
from stages.dataprep.augmentation import build_policy
from stages.reporting.previews import render_preview

log = logging.getLogger("stages.augment")
STAGE = "augment"


@dataclass(frozen=True)
class AugmentResult:
    policy_file: Path
    preview_file: Path | None
    transforms: list[str]
    task: str = "classify"

    def __str__(self) -> str:
        boxes = {"detect": " with bbox rules", "segment": " moving masks (nearest)"}.get(self.task, "")
        names = ", ".join(self.transforms) or "no transforms"
        return f"policy [{names}]{boxes} -> {self.policy_file}; preview -> {self.preview_file}"


def run(params: Params) -> AugmentResult:
    """Build and save the policy under ``paths.processed``; render the preview under ``paths.reports``."""
    import albumentations as A  # imports torch: paid when the stage runs, not for --help

    layout = Layout(params.paths)
    task = params.data.task
    policy = build_policy(params.augment, params.base.seed, task=task)
    layout.augment_policy.parent.mkdir(parents=True, exist_ok=True)
    A.save(policy, str(layout.augment_policy), data_format="json")
    log.info("wrote %s", layout.augment_policy)
    preview = None
    if layout.manifest.is_file() and layout.splits.is_file():
        manifest = read_parquet(layout.manifest).merge(
            read_parquet(layout.splits), on="image_id", suffixes=("_source", "")
        )
        train = manifest[manifest["split"] == "train"]
        boxes = None
        if task == "detect":
            if layout.boxes.is_file():
                boxes = read_parquet(layout.boxes)
            else:
                log.warning("data.task is detect but %s is missing: the preview shows no boxes", layout.boxes)
        shapes, classes = None, None
        if task == "segment":
            classes = read_classes(layout.classes) if layout.classes.is_file() else None
            if layout.shapes.is_file():
                shapes = read_parquet(layout.shapes)
            else:
                log.warning(
                    "data.task is segment but %s is missing: the preview shows no masks", layout.shapes
                )
        preview = render_preview(
            policy, train, params, layout.augment_preview, boxes=boxes, shapes=shapes, classes=classes
        )
        if preview is not None:
            log.info("wrote %s from %d training images", preview, len(train))
    names = [type(t).__name__ for t in policy.transforms]
    return AugmentResult(layout.augment_policy, preview, names, task)


if __name__ == "__main__":
    exit_with(STAGE, run)
