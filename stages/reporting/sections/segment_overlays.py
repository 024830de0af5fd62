"""The worst images of a segmentation (``data.task: segment``) in the Errors section: lowest
per-image mIoU first, as image / truth / prediction overlays and a table.

The class maps come from evaluate (``reports/segment_masks/<image_id>.truth.png`` and
``.pred.png``, the ``report.mistakes`` worst images), so the report needs neither the model
nor the shapes; an image whose maps are missing is listed in the table but not drawn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from stages.reporting import figures
from stages.reporting.inputs import ReportInputs
from stages.reporting.markdown import code, esc, figure_lines, num, short


def worst(frame: pd.DataFrame, count: int) -> pd.DataFrame:
    """The ``count`` images with the lowest mIoU (ties: image id), the order evaluate keeps their
    masks in (``WorstImages``: rows by image id, ties keep the earlier)."""
    if frame.empty or "miou" not in frame:
        return frame.head(0)
    ranked = frame.sort_values(["miou", "image_id"], na_position="first", kind="mergesort")
    return ranked.head(count)


def read_mask(path: Path) -> np.ndarray | None:
    try:
        with Image.open(path) as image:
            return np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError):
        return None


def lines(inputs: ReportInputs) -> list[str]:
    frame = inputs.predictions
    shown = worst(frame, inputs.params.report.mistakes)
    out = ["### Images with the lowest IoU", ""]
    split = esc(inputs.metrics.get("split", "test"))
    if shown.empty:
        return [*out, f"No per-image scores for the {split} split."]
    classes = [r["class"] for r in inputs.per_class]
    source = Path(inputs.params.data.source)
    masks = inputs.layout.segment_masks
    overlays = []
    for row in shown.itertuples(index=False):
        truth = read_mask(masks / f"{row.image_id}.truth.png")
        prediction = read_mask(masks / f"{row.image_id}.pred.png")
        if truth is None or prediction is None or truth.shape != prediction.shape:
            continue
        caption = f"mIoU {num(row.miou)} · {short(Path(str(row.path)).name, 22)}"
        overlays.append(figures.Overlay(source / str(row.path), truth, prediction, caption))
    out += [
        f"The {len(shown)} images of the {split} split with the lowest mIoU (each image's own pixels; "
        "its classes are those in its truth or its prediction). Left to right: the image, the true "
        "classes, the predicted classes; background is left clear.",
        "",
    ]
    drawn = figures.segment_overlays(overlays, classes, inputs.fig_path("segment_overlays.png"))
    out += figure_lines([(drawn, "image, truth and prediction of the lowest-IoU images")], inputs.here)
    if len(overlays) < len(shown):
        out += [
            f"{len(shown) - len(overlays)} of them are not drawn: evaluate wrote no class maps for them "
            f"under {code(masks.name)} (run evaluate again).",
            "",
        ]
    out += ["| image | mIoU | pixel accuracy | Dice |", "|---|---|---|---|"]
    out += [
        f"| {code(row.path, table=True)} | {num(row.miou)} | {num(row.pixel_accuracy)} "
        f"| {num(getattr(row, 'dice_macro', None))} |"
        for row in shown.itertuples(index=False)
    ]
    return out
