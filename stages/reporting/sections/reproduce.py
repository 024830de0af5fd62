"""Reproduce and compare: the DVC commands and the files behind the page."""

from __future__ import annotations

from pathlib import Path

from stages.reporting.inputs import ReportInputs
from stages.reporting.markdown import Section, code, rel


def render(inputs: ReportInputs) -> Section:
    layout, here, cwd = inputs.layout, inputs.here, Path.cwd()
    files = [layout.metrics, layout.predictions, layout.plots_dir, layout.figures_dir]
    section = Section("Reproduce and compare")
    section.lines += [
        f"- `dvc repro` rebuilds everything that changed; this page: {code(rel(layout.report, cwd))} "
        f"(self-contained: {code(rel(layout.report_html, cwd))}).",
        "- `dvc metrics show` / `dvc metrics diff <rev>`: the headline numbers and their intervals.",
        "- `dvc plots diff <rev>`: confusion matrix, ROC / precision-recall / F1-confidence curves and "
        "training curves of two revisions side by side.",
        "- Files: " + ", ".join(code(rel(f, here)) for f in files) + ".",
        # Not embedded: the study is its own DVC stage (tune/dvc.yaml), and reading its file here would
        # make this page depend on an output `dvc repro` neither declares nor rebuilds.
        f"- Strategy study (every fine-tuning strategy x 3 seeds, same budget): "
        f"`dvc repro tune/dvc.yaml:strategy_study` writes {code(rel(layout.strategy_study, here))} "
        "beside this page.",
    ]
    return section
