"""Metric names shared by evaluate, the report and the CI gate: the one home of which are headline
and which read "lower is better", so the three cannot disagree.

Pure constants and string logic: no numpy, no torch, cheap to import from any stage.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

CLASSIFY = "classify"
DETECT = "detect"
SEGMENT = "segment"

# Headline metrics in report order; ``top{k}_accuracy`` joins after ``accuracy`` when k < classes.
CLASSIFY_HEADLINE = (
    "accuracy",
    "balanced_accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "roc_auc_macro",
    "pr_auc_macro",
    "log_loss",
    "ece",
)
DETECT_HEADLINE = ("map50", "map50_95", "precision", "recall")
SEGMENT_HEADLINE = ("miou", "dice_macro", "pixel_accuracy", "mean_accuracy", "fw_iou")
HEADLINE: Mapping[str, tuple[str, ...]] = {
    CLASSIFY: CLASSIFY_HEADLINE,
    DETECT: DETECT_HEADLINE,
    SEGMENT: SEGMENT_HEADLINE,
}

# What the CI gate watches when ``gate.metrics`` is empty: the main metric first.
GATED: Mapping[str, tuple[str, ...]] = {
    CLASSIFY: ("accuracy", "f1_macro"),
    DETECT: ("map50_95", "map50"),
    SEGMENT: ("miou", "dice_macro"),
}

# The metrics evaluate writes that improve downwards.
LOWER_IS_BETTER = frozenset({"log_loss", "ece"})
# Any other name (a metric a user gates on) reads lower-is-better when it ends like a loss or an error.
_LOWER_SUFFIX = re.compile(r"(^|_)(loss|error|ece|brier|mae|mse|rmse)$")


def lower_is_better(name: str) -> bool:
    """True when a smaller value of ``name`` is an improvement."""
    return name in LOWER_IS_BETTER or _LOWER_SUFFIX.search(name) is not None


def classify_headline(metrics: Iterable[str]) -> list[str]:
    """Classification headline names in report order, ``top{k}_accuracy`` after accuracy when present."""
    top = [name for name in metrics if name.startswith("top") and name.endswith("_accuracy")]
    return [CLASSIFY_HEADLINE[0], *top, *CLASSIFY_HEADLINE[1:]]


def headline_names(metrics: Mapping[str, Any], task: str) -> list[str]:
    """The headline metrics present in ``metrics`` (a metrics.json), in report order."""
    order = HEADLINE[task] if task in (DETECT, SEGMENT) else classify_headline(metrics)
    return [name for name in order if name in metrics]
