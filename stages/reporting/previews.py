"""The augmentation preview: original and augmented views side by side, boxes drawn."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from stages.core.params import Params
from stages.dataprep.imaging import load_rgb

if TYPE_CHECKING:  # albumentations imports torch: only the augment stage, which draws this, pays for it
    import albumentations as A


def render_preview(
    policy: A.Compose,
    train: pd.DataFrame,
    params: Params,
    out: Path,
    boxes: pd.DataFrame | None = None,
) -> Path | None:
    """A grid: each row one training image, original then augmented views (boxes drawn if given)."""
    from matplotlib.figure import Figure  # not pyplot: no backend or global figure state to set up

    from stages.dataprep.augmentation import BOX_COLUMNS, augment_image, augment_sample

    if train.empty:
        return None
    chosen = train.sort_values("image_id").sample(
        n=min(params.augment.preview.images, len(train)), random_state=params.base.seed
    )
    views = params.augment.preview.views
    colours = _class_colours(boxes)
    fig = Figure(figsize=(2.4 * (views + 1), 2.4 * len(chosen) + 0.4))
    axes = fig.subplots(len(chosen), views + 1, squeeze=False)
    for row, (_, item) in enumerate(chosen.iterrows()):
        image = np.asarray(load_rgb(params.data.source / item["path"]))
        seeds = [params.base.seed + row * 100 + k for k in range(views)]
        if boxes is None:
            panels = [(image, None, None)] + [(augment_image(policy, image, s), None, None) for s in seeds]
            row_label = str(item["label"])
        else:
            mine = boxes[boxes["image_id"] == item["image_id"]]
            corners = mine[BOX_COLUMNS].to_numpy(dtype=np.float64)
            names = mine["class_name"].astype(str).tolist()
            panels = [(image, corners, names)] + [
                augment_sample(policy, image, corners, names, s) for s in seeds
            ]
            row_label = f"{len(names)} box{'es' if len(names) != 1 else ''}"
        for col, (panel, panel_boxes, panel_names) in enumerate(panels):
            axis = axes[row][col]
            axis.imshow(panel)
            if panel_boxes is not None and panel_names is not None:
                _draw_boxes(axis, panel_boxes, panel_names, colours)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title("original" if col == 0 else f"augmented {col}", fontsize=9)
        axes[row][0].set_ylabel(row_label, fontsize=9)
    names = ", ".join(type(t).__name__ for t in policy.transforms) or "no transforms"
    fig.suptitle(f"augmentation policy: {names}", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    return out


def _class_colours(boxes: pd.DataFrame | None) -> dict[str, Any]:
    import matplotlib

    if boxes is None or boxes.empty:
        return {}
    palette = matplotlib.colormaps["tab10"]
    return {name: palette(i % 10) for i, name in enumerate(sorted(boxes["class_name"].astype(str).unique()))}


def _draw_boxes(axis: Any, corners: np.ndarray, names: list, colours: dict[str, Any]) -> None:
    from matplotlib.patches import Rectangle

    for (x_min, y_min, x_max, y_max), name in zip(corners, names, strict=True):
        colour = colours.get(str(name), "yellow")
        axis.add_patch(
            Rectangle(
                (x_min, y_min), x_max - x_min, y_max - y_min, fill=False, edgecolor=colour, linewidth=1.5
            )
        )
        axis.text(
            x_min,
            y_min,
            str(name),
            fontsize=6,
            color="white",
            va="top",  # inside the box, so a box at the top edge keeps its label in view
            bbox={"facecolor": colour, "alpha": 0.7, "pad": 1, "linewidth": 0},
        )
