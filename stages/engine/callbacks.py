"""The per-epoch callback both trainers call (a module of its own: the YOLO trainer needs the
type without importing the classifier loop, whose code would otherwise join its run fingerprint)."""

from __future__ import annotations

from collections.abc import Callable

# Called after every epoch with (1-based epoch, that epoch's validation metrics), by both
# trainers; the hyper-parameter search reports to its pruner through it and may raise to stop.
EpochCallback = Callable[[int, dict[str, float]], None]
