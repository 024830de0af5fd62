"""The report page: an opening sentence, then each section in a fixed order, as one Markdown text.

Each section lives in ``stages/reporting/sections/`` as a function of the shared inputs that
returns its Markdown lines (and draws its figures), so a section can be read, changed and tested
alone; this module only decides the order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from stages.core.layout import Layout
from stages.core.params import Params
from stages.reporting.inputs import ReportInputs
from stages.reporting.markdown import Section, code, esc
from stages.reporting.sections import (
    curves,
    data,
    errors,
    headline,
    label_issues,
    model,
    per_class,
    reproduce,
    training,
)

# Classification and detection share the order; a section returning None is left out.
SECTIONS: tuple[Callable[[ReportInputs], Section | None], ...] = (
    headline.render,
    data.render,
    model.render,
    per_class.render,
    errors.render,
    label_issues.render,
    curves.render,
    training.render,
    reproduce.render,
)


@dataclass(frozen=True)
class Page:
    markdown: str
    sections: tuple[str, ...]


def opening(inputs: ReportInputs) -> list[str]:
    """Title and one sentence: which model, which data, which split, which seed and split fingerprint."""
    p, m = inputs.params, inputs.metrics
    return [
        f"# {esc(p.report.title)}",
        "",
        f"{model.model_phrase(p, inputs.task)} on {code(p.data.source)}; scored on the "
        f"{esc(m.get('split', p.evaluate.split))} split ({esc(m.get('images', '?'))} images), "
        f"seed {p.base.seed}. Split fingerprint {code(m.get('split_hash', '?'))}.",
    ]


def render_page(params: Params, layout: Layout) -> Page:
    """Read the stage outputs, render every section (drawing its figures) and join them."""
    inputs = ReportInputs.read(params, layout)
    lines = opening(inputs)
    titles = []
    for render in SECTIONS:
        section = render(inputs)
        if section is not None:
            titles.append(section.title)
            lines += section.markdown_lines()
    return Page("\n".join(lines).rstrip() + "\n", tuple(titles))
