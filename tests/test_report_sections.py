"""The report's sections and Markdown pieces one by one, and the pipelines' figures under
``stages/reporting`` (gate, tune, strategy study), without running a stage."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from stages.metrics.names import CLASSIFY_HEADLINE, DETECT_HEADLINE
from stages.reporting import gate_figures, study_figures, tune_figures
from stages.reporting.markdown import Section, esc, figure_lines, num, rel, with_ci
from stages.reporting.page import SECTIONS
from stages.reporting.sections import data, errors, headline, mistakes, model, per_class
from tests.conftest import fast_params

# --- Markdown pieces ---------------------------------------------------------------------------


def test_data_text_cannot_become_tags_or_break_a_table_row() -> None:
    assert esc("<b>a|b</b> & c") == "\\<b\\>a\\|b\\<\\/b\\> \\& c"
    assert esc("two\nlines") == "two lines"


def test_cells_format_missing_values_and_intervals() -> None:
    assert num(None) == num(math.nan) == "n/a"
    assert num(0.12345) == "0.123" and num(7) == "7"
    assert with_ci({"f1": 0.5, "f1_ci_low": 0.25, "f1_ci_high": 0.75}, "f1") == "0.500 (0.25–0.75)"
    assert with_ci({"f1": 0.5}, "f1") == "0.500"


def test_links_are_relative_inside_the_report_folder_and_kept_outside(tmp_path: Path) -> None:
    assert rel(tmp_path / "figures" / "a.png", tmp_path) == "figures/a.png"
    outside = tmp_path.parent / "elsewhere.png"
    assert rel(outside, tmp_path / "sub") == outside.as_posix()


def test_figures_not_drawn_leave_no_link_and_no_blank_line(tmp_path: Path) -> None:
    assert figure_lines([(None, "x")], tmp_path) == []
    row = figure_lines([(tmp_path / "a.png", "A"), (None, "x"), (tmp_path / "b.png", "B")], tmp_path)
    assert row == ["![A](a.png)", "![B](b.png)", ""]


def test_a_section_opens_with_its_heading_between_blank_lines() -> None:
    assert Section("Data", ["x"]).markdown_lines() == ["", "## Data", "", "x"]


def test_the_page_keeps_the_section_order() -> None:
    names = [render.__module__.rsplit(".", 1)[-1] for render in SECTIONS]
    assert names == [
        "headline", "data", "model", "per_class", "errors", "label_issues", "curves", "training", "reproduce"
    ]  # fmt: skip


# --- headline ----------------------------------------------------------------------------------


def test_every_headline_metric_has_a_meaning() -> None:
    for name in (*CLASSIFY_HEADLINE, *DETECT_HEADLINE):
        assert headline.meaning(name), name
    assert headline.meaning("top3_accuracy").endswith("among the 3 highest scores")


def test_exact_interval_only_where_the_bootstrap_has_no_width() -> None:
    perfect = {"accuracy": 1.0, "accuracy_ci_low": 1.0, "accuracy_ci_high": 1.0, "images": 12}
    low, high = headline.exact_interval(perfect, "accuracy", 0.95)
    assert high == pytest.approx(1.0) and low == pytest.approx(0.7354, abs=1e-3)  # Clopper-Pearson, 12/12
    assert headline.exact_interval({**perfect, "accuracy_ci_low": 0.8}, "accuracy", 0.95) is None
    assert headline.exact_interval({**perfect, "f1_macro": 1.0}, "f1_macro", 0.95) is None  # accuracy only


# --- data, model, per class --------------------------------------------------------------------


def test_validation_line_names_the_checks_that_did_not_pass() -> None:
    validation = {
        "images_in": 10,
        "images_valid": 9,
        "checks": {"a": {"success": True}, "b": {"success": False, "severity": "warn"}},
    }
    line = data.validation_line(validation, 1)
    assert line == (
        "- 10 images imported, 9 passed validation, 1 items quarantined; 1 of 2 data checks passed "
        "(not passed: b (warn))."
    )
    assert data.validation_line({"checks": {"a": {}}}, 0).endswith("1 of 1 data checks passed.")


def test_quarantine_is_counted_per_stage_and_reason() -> None:
    quarantine = pd.DataFrame(
        {"stage": ["validate", "ingest", "validate"], "reason": ["too small", "a|b <x>", "too small"]}
    )
    assert data.quarantine_table(quarantine)[3:] == [
        "| ingest | a\\|b \\<x\\> | 1 |",
        "| validate | too small | 2 |",
        "",
    ]


@pytest.mark.parametrize(("strategy", "shown"), [("lp_ft", True), ("full", False)])
def test_lp_epochs_is_listed_only_where_the_strategy_uses_it(
    tmp_path: Path, strategy: str, shown: bool
) -> None:
    params = fast_params(tmp_path, tmp_path / "src", train={"strategy": strategy})
    rows = model.parameter_rows(params, "classify")
    assert f"| train.strategy | {esc(strategy)} |" in rows
    assert any(r.startswith("| train.lp_epochs |") for r in rows) is shown
    phrase = model.model_phrase(params, "classify")
    assert phrase.startswith("Classifier fine-tuned from `efficientnet_lite0`")


def test_weakest_class_needs_two_scored_classes_that_differ() -> None:
    rows = [
        {"class": "a", "f1": 0.9, "support": 3},
        {"class": "b", "f1": 0.4, "support": 3},
        {"class": "c", "f1": 0.1, "support": 0},  # no images: not a class the model failed on
    ]
    assert per_class.weakest_class(rows, "f1")["class"] == "b"
    assert per_class.weakest_class(rows[:1], "f1") is None
    assert per_class.weakest_class([{**rows[0], "class": "b"}, rows[0]], "f1") is None


# --- errors ------------------------------------------------------------------------------------


def test_confusion_labels_follow_the_per_class_table_with_background_last() -> None:
    frame = pd.DataFrame({"actual": ["cat", "background", "zebra"], "predicted": ["ant", "cat", "zebra"]})
    labels = errors.confusion_labels(frame, [{"class": "zebra"}, {"class": "cat"}])
    assert labels == ["zebra", "cat", "ant", "background"]
    matrix = np.array([[5, 2, 0], [3, 4, 2], [0, 0, 1]])
    common = errors.most_common_confusions(matrix, ["a", "b", "c"])
    assert common == [(3, "b", "a"), (2, "b", "c"), (2, "a", "b")]


def test_detection_threshold_is_evaluates_else_the_f1_peak_else_the_default() -> None:
    f1 = [{"class": c, "confidence": t, "f1": f} for c in ("a", "b") for t, f in ((0.3, 0.5), (0.6, 0.8))]
    assert mistakes.detection_threshold({"confidence_threshold": 0.4}, f1) == 0.4
    assert mistakes.detection_threshold({}, f1) == 0.6
    assert mistakes.detection_threshold({}, []) == mistakes.DEFAULT_THRESHOLD


def test_box_errors_count_missed_truths_and_false_predictions_above_the_threshold() -> None:
    columns = ["image_id", "kind", "score", "outcome"]
    frame = pd.DataFrame(
        [
            ("x", "truth", np.nan, "missed"),
            ("x", "prediction", 0.9, "fp"),
            ("y", "truth", np.nan, "missed"),
            ("y", "prediction", 0.1, "fp"),  # below the threshold: not drawn, not counted
            ("z", "truth", np.nan, "matched"),
            ("z", "prediction", 0.8, "tp"),
        ],
        columns=columns,
    )
    found = mistakes.box_errors(mistakes.visible_boxes(frame, 0.5))
    expected = {"x": {"missed": 1, "false": 1}, "y": {"missed": 1, "false": 0}}
    assert found[["missed", "false"]].to_dict("index") == expected


# --- the pipelines' figures --------------------------------------------------------------------


def test_gate_figures_draw_base_and_change(tmp_path: Path) -> None:
    base = {"accuracy": (0.8, 0.7, 0.9), "f1_macro": (0.75, None, None)}
    new = {"accuracy": (0.85, 0.75, 0.95)}  # f1_macro missing on this side: no dot, no error
    path = gate_figures.metric_comparison(base, new, ["accuracy", "f1_macro"], tmp_path / "m.png", "base")
    assert path.stat().st_size > 1000
    old = [{"actual": "cat", "predicted": "cat"}, {"actual": "dog", "predicted": "cat"}]
    new_rows = [{"actual": "cat", "predicted": "cat"}, {"actual": "owl", "predicted": "owl"}]
    assert gate_figures.confusion_pair(old, new_rows, tmp_path / "c.png", "base").stat().st_size > 1000


def test_strategy_figure_draws_every_strategy(tmp_path: Path) -> None:
    summary = {
        "full": {"mean": 0.9, "sd": 0.02, "wall_median": 12.0},
        "linear_probe": {"mean": 0.8, "sd": 0.0, "wall_median": 3.0},
    }
    seeds = {"full": [0.88, 0.92], "linear_probe": [0.8]}
    path = study_figures.strategy_comparison(summary, seeds, "accuracy", tmp_path / "out" / "s.png")
    assert path.stat().st_size > 1000


def test_optuna_plots_skip_what_the_study_cannot_draw_yet(tmp_path: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1) ** 2, n_trials=1)
    assert "param_importances" not in tune_figures.optuna_plots(study, tmp_path)  # needs two trials
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1) ** 2, n_trials=4)
    written = tune_figures.optuna_plots(study, tmp_path)
    assert {"optimization_history", "param_importances"} <= set(written)
    for name in written:
        assert (tmp_path / f"{name}.png").stat().st_size > 1000


def test_the_report_and_every_figure_module_start_without_torch() -> None:
    """The report stage writes Markdown and PNGs: importing torch (or ultralytics) would cost it seconds."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import stages.report, stages.reporting as r\n"
        "for m in pkgutil.walk_packages(r.__path__, 'stages.reporting.'): importlib.import_module(m.name)\n"
        "print(sorted({'torch', 'ultralytics', 'albumentations'} & set(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
