"""Dotted-key overrides (``train.epochs=3``): the flow's --set, tuning trials, CLI options."""

from __future__ import annotations

import copy
from typing import Any


def get_dotted(raw: dict[str, Any], dotted: str) -> Any:
    """The value at ``a.b.c`` in nested dicts, or None where the path does not exist."""
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in nested dicts in place, creating missing sections."""
    *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value


def with_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``raw`` with each dotted key set (intermediate sections created as needed)."""
    merged = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        set_dotted(merged, dotted, value)
    return merged
