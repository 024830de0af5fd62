"""Stage ``report``: ``reports/report.md`` and a self-contained ``reports/report.html``.

It only reads what earlier stages wrote (metrics, predictions, plot data, audits, DVCLive
curves, the source images for the mistakes grid), so it can be regenerated without the model
and never disagrees with ``dvc metrics show``. Figures are matplotlib PNGs in
``reports/figures/``; the Markdown links them and the HTML embeds them (``report_html``).
Classification, detection and segmentation share the page's order: headline, data, model, per
class, errors, curves (not for segmentation), training, (strategy study), reproduce; for
segmentation the errors section shows the pixel confusion matrix and image / truth / prediction
overlays of the lowest-IoU images (``sections/segment_overlays.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stages.core.cli import exit_with
from stages.core.layout import Layout
from stages.core.params import Params

STAGE = "report"


@dataclass(frozen=True)
class ReportResult:
    report: Path
    html: Path
    sections: tuple[str, ...]

    def __str__(self) -> str:
        return f"report -> {self.report}, {self.html} ({len(self.sections)} sections)"


def run(params: Params) -> ReportResult:
    """Render the report and its figures from the other stages' outputs."""
    from stages.reporting.html import to_html  # matplotlib and pandas: imported when the page renders
    from stages.reporting.page import render_page

    layout = Layout(params.paths)
    layout.figures_dir.mkdir(parents=True, exist_ok=True)
    for old in layout.figures_dir.glob("*.png"):  # a figure this run does not draw must not linger
        old.unlink()
    page = render_page(params, layout)
    layout.report.parent.mkdir(parents=True, exist_ok=True)
    layout.report.write_text(page.markdown, encoding="utf-8")
    html = to_html(page.markdown, layout.report.parent, params.report.title, layout.figures_dir)
    layout.report_html.write_text(html, encoding="utf-8")
    from stages.reporting.model_card import MODEL_CARD, render_model_card

    card = layout.paths.reports / MODEL_CARD
    card.write_text(render_model_card(params, layout), encoding="utf-8")
    return ReportResult(layout.report, layout.report_html, page.sections)


if __name__ == "__main__":
    exit_with(STAGE, run)
