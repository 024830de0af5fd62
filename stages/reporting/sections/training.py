"""Training: DVCLive's per-epoch curves and the last epoch's numbers."""

from __future__ import annotations

from stages.reporting import figures
from stages.reporting.inputs import ReportInputs, read_history, read_json
from stages.reporting.markdown import Section, code, esc, figure_lines, flat, rel


def render(inputs: ReportInputs) -> Section:
    section = Section("Training")
    log_dir = inputs.layout.train_log_dir
    where = rel(log_dir, inputs.here)
    history = read_history(log_dir)
    if history.empty:
        section.lines.append(f"No DVCLive curves under {code(where)}.")
        return section
    final = read_json(log_dir / "metrics.json", {})
    section.lines += [
        f"Per-epoch curves logged by DVCLive ({code(where + '/plots/metrics')})"
        + (f"; last epoch: {esc(flat(final))}." if final else "."),
        "",
    ]
    drawn = figures.training(history, inputs.fig_path("training_curves.png"))
    section.lines += figure_lines([(drawn, "training curves")], inputs.here)
    return section
