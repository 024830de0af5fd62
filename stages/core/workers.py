"""How many processes ``workers: auto`` means on this machine (no imports beyond ``os``).

Kept out of ``stages.core.params`` on purpose: the integrity and perceptual-hash caches are keyed
by their modules' import closure, and importing the params package would tie them to every
params edit.
"""

from __future__ import annotations

import os

AUTO = "auto"


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity (containers, taskset), else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS and Windows have no sched_getaffinity
        return max(1, os.cpu_count() or 1)


def resolve_workers(value: int | str | None) -> int:
    """The process count ``value`` stands for: ``auto``/None -> usable cores, an int >= 1 -> itself."""
    if value is None or value == AUTO:
        return usable_cores()
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError(f"workers must be 'auto' or a whole number of processes >= 1, got {value!r}")
