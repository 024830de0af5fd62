"""Learning-rate schedules as pure functions of the step, applied to every group's own LR.

A pure function of the step needs no scheduler state in checkpoints and cannot ignore
per-group learning rates (the timm ``lr_scale`` trap).
"""

from __future__ import annotations

import math


def lr_factor(step: int, total_steps: int, warmup_steps: int, kind: str, min_factor: float = 0.01) -> float:
    """Multiplier of the base LR at ``step`` (0-based) of ``total_steps``.

    Linear warmup from ``min_factor`` to 1 over ``warmup_steps``, then ``cosine`` decay to
    ``min_factor``, ``onecycle``-style cosine annealing (warmup then decay, the warmup
    defaulting to 30% when none is set), or ``constant``.
    """
    if total_steps <= 0:
        return 1.0
    if kind == "onecycle" and warmup_steps == 0:
        warmup_steps = max(1, int(0.3 * total_steps))
    if step < warmup_steps:
        return min_factor + (1 - min_factor) * (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lrs(optimizer, factor: float) -> None:
    """Each group's LR = its own initial LR x factor."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
