"""The hyper-parameter search's figures: Optuna's own matplotlib plots, as PNG."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)
DPI = 100
SIZE = (9, 5)  # inches


def optuna_plots(study: optuna.Study, out_dir: Path) -> list[str]:
    """Optimisation history, intermediate values, parameter importances and parallel coordinates
    as ``<name>.png`` under ``out_dir``; returns the names drawn. A plot the study cannot draw yet
    (importances need two complete trials, or values that vary) is skipped with a warning."""
    import optuna
    from optuna.visualization import matplotlib as oplt

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    plots = {
        "optimization_history": oplt.plot_optimization_history,
        "intermediate_values": oplt.plot_intermediate_values,
        "param_importances": oplt.plot_param_importances,
        "parallel_coordinate": oplt.plot_parallel_coordinate,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, plot in plots.items():
        if name == "param_importances" and len(complete) < 2:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots "experimental"
                axes = plot(study)
                figure = getattr(axes, "figure", None) or plt.gcf()
                figure.set_size_inches(*SIZE)
                figure.tight_layout()
            figure.savefig(out_dir / f"{name}.png", dpi=DPI)
            plt.close(figure)
            written.append(name)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. no variance to rank yet
            log.warning("skipped the %s plot: %s", name, exc)
            plt.close("all")
    return written
