"""Markdown pieces shared by the report's sections: a section's shape, cells, links, figures.

Every name, message or path that comes from the data goes through ``esc`` (text) or ``code``
(a code span): a class named ``![a](/proc/self/environ)`` must stay those characters, never
become an image, a link, a tag or a second table cell, on GitHub and in ``report.html``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Section:
    """One ``## title`` of the page and the Markdown lines below it."""

    title: str
    lines: list[str] = field(default_factory=list)

    def markdown_lines(self) -> list[str]:
        return ["", f"## {self.title}", "", *self.lines]


def figure_lines(items: list[tuple[Path | None, str]], here: Path) -> list[str]:
    """Images in one paragraph (side by side in the HTML and on most Markdown viewers); a figure
    that was not drawn (None) is left out, and nothing at all when none was drawn."""
    drawn = [f"![{alt}]({rel(path, here)})" for path, alt in items if path is not None]
    return [*drawn, ""] if drawn else []


def num(value: Any) -> str:
    """A metric cell: three decimals for floats, ``n/a`` for missing or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def interval(metrics: dict[str, Any], name: str) -> str:
    low, high = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
    return f"{low:.3f} – {high:.3f}" if low is not None and high is not None else "n/a"


def with_ci(row: dict[str, Any], name: str) -> str:
    """A per-class cell: the value and, where the row carries one, its interval in brackets."""
    low, high = row.get(f"{name}_ci_low"), row.get(f"{name}_ci_high")
    value = num(row.get(name))
    return f"{value} ({low:.2f}–{high:.2f})" if low is not None and high is not None else value


# Every ASCII punctuation character can be backslash-escaped in CommonMark; escaping them all
# leaves no emphasis, link, image, autolink (``http\://`` and ``www\.`` are not recognised),
# HTML tag, entity, heading or table cell boundary for data to open.
_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029\x0b\x0c\x85]+")


def esc(text: Any) -> str:
    """Names and messages from the data as literal Markdown text on one line: no markup at all."""
    return _PUNCTUATION.sub(r"\\\1", _LINE_BREAKS.sub(" ", str(text)))


def code(text: Any, table: bool = False) -> str:
    """A path or name from the data as a literal code span (nothing inside is parsed as Markdown).

    The fence is one backtick longer than the longest run inside, so a backtick cannot close it
    early; in a table cell a ``|`` is written ``\\|`` (GFM splits cells before code spans).
    """
    value = _LINE_BREAKS.sub(" ", str(text))
    if table:
        value = value.replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", value)), default=0) + 1)
    pad = " " if value.startswith(("`", " ")) or value.endswith(("`", " ")) else ""
    return f"{fence}{pad}{value}{pad}{fence}"


def short(name: str, width: int) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def flat(values: dict[str, Any], prefix: str = "") -> str:
    """Nested numbers as ``a/b 0.123`` pairs (``step`` left out)."""
    parts = []
    for key, value in values.items():
        if isinstance(value, dict):
            parts.append(flat(value, f"{prefix}{key}/"))
        elif key != "step" and isinstance(value, int | float):
            parts.append(f"{prefix}{key} {value:.4g}")
    return ", ".join(p for p in parts if p)


def rel(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` when inside it (links that survive moving the folder), else as given."""
    resolved, anchor = Path(path).resolve(), start.resolve()
    if resolved.is_relative_to(anchor):
        return resolved.relative_to(anchor).as_posix()
    return Path(path).as_posix()
