"""matplotlib figures for the report (PNG under ``reports/figures/``); DejaVu fonts only.

Each function takes plain data (rows as written by ``evaluate``, frames, paths) and an output
path, draws one figure, saves it and returns the path, so the report and tests can call them
one by one.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Patch, Rectangle
from matplotlib.typing import RcKeyType

from stages.dataprep.imaging import load_rgb

# Applied per figure (not globally): bundled DejaVu only, and names from the data are plain text
# (a class called "$x$" must not turn into mathtext).
STYLE: dict[RcKeyType, Any] = {
    "font.family": "DejaVu Sans",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "text.parse_math": False,
}
DPI = 100
GOOD, BAD, MISSED, NEUTRAL = "#2e7d32", "#c62828", "#ef6c00", "#1565c0"
P = ParamSpec("P")
R = TypeVar("R")


def styled(draw: Callable[P, R]) -> Callable[P, R]:
    """Run a figure function inside ``STYLE``."""

    @functools.wraps(draw)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with plt.rc_context(STYLE):
            return draw(*args, **kwargs)

    return wrapper


def _save(fig, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return out


@styled
def headline(
    metrics: dict,
    names: Sequence[str],
    out: Path,
    confidence: float,
    lower_is_better: frozenset[str],
    exact: dict[str, tuple[float, float]] | None = None,
) -> Path:
    """Point value and bootstrap interval of each metric (0-1 scale; losses apart); ``exact``
    intervals (where the bootstrap has no width) are drawn dashed."""
    exact = exact or {}
    unit = [n for n in names if metrics.get(n) is not None and n not in lower_is_better]
    other = [n for n in names if metrics.get(n) is not None and n in lower_is_better]
    panels = [(unit, "higher is better", (0, 1.02))] + ([(other, "lower is better", None)] if other else [])
    widths = [3] + ([1.3] if other else [])
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(9, 0.42 * max(len(unit), len(other), 3) + 1.2),
        gridspec_kw={"width_ratios": widths},
        squeeze=False,
    )
    for axis, (group, title, limits) in zip(axes[0], panels, strict=True):
        for row, name in enumerate(reversed(group)):
            value = metrics[name]
            low, high = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
            if low is not None and high is not None:
                axis.plot(
                    [low, high], [row, row], color=NEUTRAL, linewidth=4, alpha=0.35, solid_capstyle="butt"
                )
            if name in exact:
                axis.plot(list(exact[name]), [row - 0.18] * 2, color=MISSED, linestyle="--", linewidth=1.5)
            axis.plot([value], [row], "o", color=NEUTRAL)
            axis.annotate(
                f"{value:.3f}", (value, row), textcoords="offset points", xytext=(0, 7), ha="center"
            )
        axis.set_yticks(range(len(group)), list(reversed(group)))
        axis.set_ylim(-0.7, len(group) - 0.3)
        if limits:
            lows = [metrics.get(f"{n}_ci_low") or metrics[n] for n in group] + [e[0] for e in exact.values()]
            start = min(0.8, max(0.0, math.floor((min(lows) - 0.05) * 10) / 10)) if lows else 0.0
            axis.set_xlim(start, limits[1])
        else:
            top = max(max(metrics.get(f"{n}_ci_high") or metrics[n], metrics[n]) for n in group)
            axis.set_xlim(0, top * 1.15 + 1e-6)
        axis.grid(axis="x", alpha=0.3)
        axis.set_title(title, fontsize=10)
    note = "; dashed: exact binomial interval" if exact else ""
    fig.suptitle(f"point value and {confidence:.0%} bootstrap interval{note}", fontsize=10)
    fig.tight_layout()
    return _save(fig, out)


@styled
def confusion(
    matrix: np.ndarray, rows: list[str], columns: list[str], out: Path, as_share: bool = False
) -> Path:
    """Counts, coloured by the share of each actual class (row) so small classes show too;
    ``as_share``: the cells read as that per cent instead (pixel counts are too long to print)."""
    matrix = np.asarray(matrix)
    totals = matrix.sum(1, keepdims=True)
    share = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    width = max(3.6, 0.55 * len(columns) + 2.2)
    height = max(3.2, 0.55 * len(rows) + 1.8)
    fig, axis = plt.subplots(figsize=(width, height))
    image = axis.imshow(share, cmap="Blues", vmin=0, vmax=1)
    rotate = len(columns) > 3 or max(len(c) for c in columns) > 6
    axis.set_xticks(
        range(len(columns)), columns, rotation=45 if rotate else 0, ha="right" if rotate else "center"
    )
    axis.set_yticks(range(len(rows)), rows)
    axis.set_xlabel("predicted")
    axis.set_ylabel("actual")
    small = len(columns) > 12
    for (i, j), value in np.ndenumerate(matrix):
        if value or not small:
            colour = "white" if share[i, j] > 0.5 else "black"
            text = _percent(float(share[i, j])) if as_share and value else str(value)
            axis.text(j, i, text, ha="center", va="center", color=colour, fontsize=8 if small else 10)
    fig.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="share of actual class")
    axis.spines[:].set_visible(False)
    fig.tight_layout()
    return _save(fig, out)


def _percent(share: float) -> str:
    """A share as a short per cent: ``97``, ``3.2``, ``<0.1`` (never a bare 0 for a non-empty cell)."""
    value = 100 * share
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}" if value >= 0.1 else "<0.1"


@styled
def class_curves(
    rows: list[dict],
    x: str,
    y: str,
    out: Path,
    title: str,
    xlabel: str,
    ylabel: str,
    diagonal: bool = False,
    notes: dict[str, str] | None = None,
    max_classes: int = 12,
) -> Path | None:
    """One line per class from DVC plot rows ({class, x, y}); None when there are no rows."""
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    names = list(dict.fromkeys(frame["class"]))[:max_classes]
    fig, axis = plt.subplots(figsize=(4.6, 4.2))
    if diagonal:
        axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    for name in names:
        part = frame[frame["class"] == name]
        label = f"{name} ({notes[name]})" if notes and name in notes else name
        axis.plot(part[x], part[y], label=label, linewidth=1.6, drawstyle="default")
    axis.set_xlim(-0.01, 1.01)
    axis.set_ylim(-0.01, 1.03)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize=11)
    axis.grid(alpha=0.3)
    more = len(dict.fromkeys(frame["class"])) - len(names)
    axis.legend(fontsize=8, loc="best", title=f"+{more} classes not drawn" if more > 0 else None)
    fig.tight_layout()
    return _save(fig, out)


@styled
def reliability(rows: list[dict], out: Path, ece: float | None) -> Path | None:
    """Reliability diagram: accuracy against mean confidence per bin, with image counts below."""
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    fig, (axis, counts) = plt.subplots(
        2, 1, figsize=(4.6, 5.0), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    width = frame["bin_high"] - frame["bin_low"]
    axis.bar(
        frame["bin_low"],
        frame["accuracy"],
        width=width,
        align="edge",
        color=NEUTRAL,
        alpha=0.6,
        edgecolor="white",
        label="accuracy in bin",
    )
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    centre = frame["bin_low"] + width / 2
    axis.plot(
        centre,
        frame["confidence"],
        "_",
        color=BAD,
        markersize=12,
        markeredgewidth=2,
        label="mean confidence in bin",
    )
    axis.set_ylabel("accuracy")
    axis.set_ylim(0, 1.02)
    axis.set_title("reliability" + (f" (ECE {ece:.3f})" if ece is not None else ""), fontsize=11)
    axis.legend(fontsize=8, loc="upper left")
    axis.grid(alpha=0.3)
    counts.bar(frame["bin_low"], frame["images"], width=width, align="edge", color="grey", edgecolor="white")
    counts.set_ylabel("images")
    counts.set_xlabel("confidence of the predicted class")
    counts.set_xlim(0, 1)
    fig.tight_layout()
    return _save(fig, out)


@styled
def per_class(rows: list[dict], metrics: Sequence[str], out: Path, max_classes: int = 40) -> Path | None:
    """Grouped horizontal bars per class with bootstrap intervals where the rows carry them."""
    if not rows:
        return None
    rows = rows[:max_classes]
    names = [r["class"] for r in rows]
    fig, axis = plt.subplots(figsize=(7, 0.2 * len(rows) * len(metrics) + 1.4))
    height = 0.8 / len(metrics)
    colours = ["#1565c0", "#ef6c00", "#2e7d32", "#6a1b9a"]
    for m, metric in enumerate(metrics):
        values = np.array([r.get(metric) if r.get(metric) is not None else np.nan for r in rows], float)
        positions = np.arange(len(rows)) - 0.4 + height * (m + 0.5)
        low = np.array([r.get(f"{metric}_ci_low", np.nan) for r in rows], dtype=float)
        high = np.array([r.get(f"{metric}_ci_high", np.nan) for r in rows], dtype=float)
        errors = None
        if not np.isnan(low).all():
            errors = np.vstack([np.clip(values - low, 0, None), np.clip(high - values, 0, None)])
        axis.barh(
            positions,
            values,
            height=height,
            color=colours[m % 4],
            label=metric,
            xerr=errors,
            error_kw={"elinewidth": 1, "capsize": 2, "ecolor": "#333333"},
        )
    axis.set_yticks(range(len(rows)), names)
    axis.invert_yaxis()
    axis.set_xlim(0, 1.02)
    axis.grid(axis="x", alpha=0.3)
    axis.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=len(metrics), frameon=False)
    fig.tight_layout()
    return _save(fig, out)


@styled
def split_counts(counts: pd.DataFrame, out: Path, ylabel: str = "images") -> Path | None:
    """Stacked bars: rows are splits, columns classes."""
    if counts.empty:
        return None
    fig, axis = plt.subplots(figsize=(max(4.5, 1.0 * len(counts) + 3), 3.0))
    bottom = np.zeros(len(counts))
    cmap = plt.get_cmap("tab20")
    for i, name in enumerate(counts.columns):
        axis.bar(counts.index, counts[name], bottom=bottom, label=name, color=cmap(i % 20))
        bottom += counts[name].to_numpy()
    axis.set_ylabel(ylabel)
    if len(counts.columns) <= 20:
        axis.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return _save(fig, out)


@styled
def training(history: pd.DataFrame, out: Path) -> Path | None:
    """DVCLive per-epoch series: losses, other validation metrics, learning rate (one panel each)."""
    if history.empty:
        return None
    epochs = history["step"] + 1
    losses = [c for c in history.columns if c.endswith("loss")]
    scores = [c for c in history.columns if c not in losses and c not in ("step", "lr", "trainable_params")]
    panels = [(losses, "loss"), (scores, "score"), (["lr"] if "lr" in history else [], "learning rate")]
    panels = [(columns, label) for columns, label in panels if columns]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for axis, (columns, label) in zip(axes[0], panels, strict=True):
        for column in columns:
            part = history[["step", column]].dropna()
            axis.plot(part["step"] + 1, part[column], label=column, marker="." if len(part) < 30 else None)
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        if label == "learning rate":
            axis.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        else:
            axis.legend(fontsize=8)
        axis.set_xlim(epochs.min() - 0.5, epochs.max() + 0.5)
    fig.tight_layout()
    return _save(fig, out)


@dataclass
class Tile:
    """One image of a grid: caption lines and (detection) boxes to draw."""

    path: Path
    caption: list[str]
    colour: str = BAD
    boxes: list[dict] = field(default_factory=list)  # {x_min.., colour, dashed, label}


MISTAKES_LEGEND = (
    ("truth, found", GOOD, False),
    ("truth, missed", MISSED, True),
    ("prediction, correct", NEUTRAL, False),
    ("prediction, false", BAD, False),
)


@styled
def image_grid(
    tiles: list[Tile],
    out: Path,
    columns: int = 4,
    thumb: float = 2.6,
    legend: tuple[tuple[str, str, bool], ...] = MISTAKES_LEGEND,
) -> Path | None:
    """Thumbnails with coloured captions (and boxes); unreadable images become a grey tile.

    ``legend``: (label, colour, dashed) per kind of box drawn; shown when any tile has boxes.
    """
    if not tiles:
        return None
    columns = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    lines = max(len(t.caption) for t in tiles)
    fig, axes = plt.subplots(
        rows, columns, figsize=(thumb * columns, (thumb + 0.2 * lines) * rows), squeeze=False
    )
    for axis in axes.ravel():
        axis.axis("off")
    for axis, tile in zip(axes.ravel(), tiles, strict=False):
        try:
            axis.imshow(np.asarray(load_rgb(tile.path)))
        except Exception:  # a moved or unreadable source image must not stop the report
            axis.imshow(np.full((8, 8, 3), 200, dtype=np.uint8))
        for box in tile.boxes:
            axis.add_patch(
                Rectangle(
                    (box["x_min"], box["y_min"]),
                    box["x_max"] - box["x_min"],
                    box["y_max"] - box["y_min"],
                    fill=False,
                    edgecolor=box["colour"],
                    linewidth=2,
                    linestyle="--" if box.get("dashed") else "-",
                )
            )
            if box.get("label"):
                axis.text(
                    box["x_min"],
                    box["y_min"],
                    box["label"],
                    color="white",
                    fontsize=7,
                    va="bottom",
                    bbox={"facecolor": box["colour"], "pad": 1, "linewidth": 0, "alpha": 0.85},
                )
        axis.set_title("\n".join(tile.caption), fontsize=8, color=tile.colour, loc="left")
    if any(t.boxes for t in tiles):
        handles = [
            Patch(edgecolor=colour, fill=False, linestyle="--" if dashed else "-", label=label)
            for label, colour, dashed in legend
        ]
        fig.legend(handles=handles, loc="lower center", ncols=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04 if any(t.boxes for t in tiles) else 0, 1, 1))
    return _save(fig, out)


# --- segmentation ----------------------------------------------------------------------------------

IGNORE_COLOUR = (1.0, 1.0, 1.0, 0.75)  # pixels the metrics skip (truth 255): pale


def class_colours(count: int) -> np.ndarray:
    """RGBA per class index; class 0 (background) fully transparent, the others from tab10/tab20."""
    cmap = plt.get_cmap("tab10" if count <= 11 else "tab20")
    colours = np.array([cmap((i - 1) % cmap.N) for i in range(count)], dtype=float)
    colours[0] = (0, 0, 0, 0)
    return colours


def mask_rgba(mask: np.ndarray, colours: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """A class map as an RGBA overlay: background clear, classes at ``alpha``, ignore pixels pale."""
    rgba = np.zeros((*mask.shape, 4))
    known = mask < len(colours)
    rgba[known] = colours[mask[known]]
    rgba[known & (mask > 0), 3] = alpha
    rgba[~known] = IGNORE_COLOUR
    return rgba


@dataclass
class Overlay:
    """One row of the overlay grid: the image, its true and predicted class maps, a caption."""

    path: Path
    truth: np.ndarray
    prediction: np.ndarray
    caption: str


@styled
def segment_overlays(rows: list[Overlay], classes: list[str], out: Path, thumb: float = 2.4) -> Path | None:
    """Image | truth | prediction per row (masks over the image; background left clear), with one
    class legend. Unreadable images become a grey tile under their masks."""
    if not rows:
        return None
    colours = class_colours(len(classes))
    fig, axes = plt.subplots(
        len(rows), 3, figsize=(3 * thumb, (thumb + 0.25) * len(rows) + 0.5), squeeze=False
    )
    for r, row in enumerate(rows):
        height, width = row.truth.shape
        try:
            image = np.asarray(load_rgb(row.path))
        except Exception:  # a moved or unreadable source image must not stop the report
            image = np.full((8, 8, 3), 200, dtype=np.uint8)
        extent = (0, width, height, 0)
        for c, (mask, title) in enumerate(
            ((None, "image"), (row.truth, "truth"), (row.prediction, "prediction"))
        ):
            axis = axes[r, c]
            axis.axis("off")
            axis.imshow(image, extent=extent)
            if mask is not None:
                axis.imshow(mask_rgba(mask, colours), extent=extent, interpolation="nearest")
            axis.set_title(
                row.caption if c == 0 else title, fontsize=8, loc="left", color=BAD if c == 0 else "black"
            )
    handles = [Patch(facecolor=colours[i], label=name) for i, name in enumerate(classes) if i > 0]
    handles.append(Patch(facecolor=IGNORE_COLOUR, edgecolor="grey", label="ignored (not scored)"))
    fig.legend(handles=handles, loc="lower center", ncols=min(len(handles), 5), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.35 / ((thumb + 0.25) * len(rows) + 0.5) * (1 + len(handles) // 5), 1, 1))
    return _save(fig, out)
