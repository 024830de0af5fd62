"""The augmentation preview: original and augmented views side by side, boxes or masks drawn."""

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
    shapes: pd.DataFrame | None = None,
    classes: list[str] | None = None,
) -> Path | None:
    """A grid: each row one training image, original then augmented views.

    Boxes are drawn when ``boxes`` is given (detect); with ``shapes`` (segment) the class map
    is rasterised (``MaskStore``, draw order ``train.segmenter.draw_order``), moved with each
    view and laid over it in semi-transparent class colours (grey: ignored pixels).
    """
    from matplotlib.figure import Figure  # not pyplot: no backend or global figure state to set up

    from stages.dataprep.augmentation import BOX_COLUMNS, augment_image, augment_pair, augment_sample

    if train.empty:
        return None
    chosen = train.sort_values("image_id").sample(
        n=min(params.augment.preview.images, len(train)), random_state=params.base.seed
    )
    views = params.augment.preview.views
    colours = _class_colours(boxes)
    store = _mask_store(shapes, classes, params)
    shown: set[int] = set()
    fig = Figure(figsize=(2.4 * (views + 1), 2.4 * len(chosen) + 0.4))
    axes = fig.subplots(len(chosen), views + 1, squeeze=False)
    for row, (_, item) in enumerate(chosen.iterrows()):
        image = np.asarray(load_rgb(params.data.source / item["path"]))
        seeds = [params.base.seed + row * 100 + k for k in range(views)]
        masks: list[np.ndarray | None] = [None] * (views + 1)
        if store is not None:
            mask = store.mask(str(item["image_id"]), str(item["sha256"]), image.shape[0], image.shape[1])
            pairs = [(image, mask)] + [augment_pair(policy, image, mask, s) for s in seeds]
            panels = [(p, None, None) for p, _ in pairs]
            masks = [m for _, m in pairs]
            present = [int(v) for v in np.unique(mask) if 0 < v < len(store.classes)]
            shown.update(present)
            row_label = ", ".join(store.classes[v] for v in present) or "background only"
            if len(row_label) > 28:  # a rotated label longer than the row runs into its neighbours
                row_label = f"{len(present)} classes (legend)"
        elif boxes is None:
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
            layer = masks[col]
            if layer is not None:
                axis.imshow(_overlay(layer), interpolation="nearest")
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
    if store is not None and shown:
        from matplotlib.patches import Patch

        handles = [Patch(color=_mask_colour(v)[:3], alpha=0.6, label=store.classes[v]) for v in sorted(shown)]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7, frameon=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    return out


def _mask_store(shapes: pd.DataFrame | None, classes: list[str] | None, params: Params) -> Any:
    """The segment preview's masks: the training cache and draw order, so the preview shows what trains."""
    if shapes is None:
        return None
    from stages.core.layout import Layout
    from stages.dataprep.semantic_masks import MaskStore

    names = classes if classes is not None else list(dict.fromkeys(shapes["class_name"].astype(str)))
    order = params.train.segmenter.draw_order
    return MaskStore(Layout(params.paths).mask_cache, shapes, names, order)


def _mask_colour(index: int) -> tuple[float, float, float, float]:
    import matplotlib

    from stages.dataprep.semantic_masks import IGNORE_INDEX

    if index == IGNORE_INDEX:
        return (0.5, 0.5, 0.5, 1.0)
    k = index - 1  # classes 1..10 get tab20's saturated colours, 11..20 its light ones, then repeat
    red, green, blue, alpha = matplotlib.colormaps["tab20"]((2 * k) % 20 + (k // 10) % 2)
    return (float(red), float(green), float(blue), float(alpha))


def _overlay(mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGBA layer: each class in its colour at ``alpha``, background transparent."""
    layer = np.zeros((*mask.shape, 4), dtype=np.float32)
    for value in np.unique(mask):
        if value == 0:
            continue
        layer[mask == value] = (*_mask_colour(int(value))[:3], alpha)
    return layer


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
