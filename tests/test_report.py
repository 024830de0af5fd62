"""The report on a classification and a detection run: every section, figures, self-contained HTML.

No model is trained: the data stages run for real on tiny generated sources, then the evaluate
outputs are written from fabricated scores (classification, through ``evaluate.write_outputs``)
or as fabricated files of the detection contract, plus DVCLive-style TSVs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench import render_report
from stages import evaluate, ingest, report, split, validate
from stages.core.contracts import (
    DETECTION_PREDICTION_COLUMNS,
    read_classes,
    read_parquet,
    write_json,
    write_parquet,
)
from stages.core.layout import Layout
from stages.reporting.markdown import esc
from tests.conftest import detect_params, fast_params, make_classify_source, write_image, write_voc

CLASSIFY_SECTIONS = ("Headline", "Data", "Model", "Per class", "Errors", "Curves", "Training")
FIGURES = ("headline", "split_counts", "per_class", "confusion_matrix", "mistakes", "training_curves")


def _write_history(layout: Layout, series: dict[str, list[float]]) -> None:
    """DVCLive's layout: ``plots/metrics/<name>.tsv`` with columns step and the last name part."""
    for name, values in series.items():
        path = layout.train_log_dir / "plots" / "metrics" / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame({"step": range(len(values)), Path(name).name: values})
        frame.to_csv(path, sep="\t", index=False)
    write_json(
        {"train": {"loss": series["train/loss"][-1]}, "step": 2}, layout.train_log_dir / "metrics.json"
    )


def _prepare(params) -> Layout:
    for stage in (ingest, validate, split):
        stage.run(params)
    return Layout(params.paths)


@pytest.fixture(scope="module")
def classify_run(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("classify")
    source = make_classify_source(
        tmp / "source", per_class=10, classes={"cat": (130, 0, 0), "dog": (0, 0, 130), "owl": (0, 130, 0)}
    )
    params = fast_params(tmp, source, split={"fractions": {"train": 0.4, "val": 0.2, "test": 0.4}})
    layout = _prepare(params)
    rows = evaluate.split_rows(layout, "test")
    classes = read_classes(layout.classes)
    y = rows["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(len(y), len(classes)))
    logits[np.arange(len(y)), y] += 2.5
    logits[0, (y[0] + 1) % 3] += 6  # one confident mistake
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    evaluate.write_outputs(layout, rows, y, probabilities, classes, params)
    history = {"train/loss": [1.0, 0.6, 0.4], "val/loss": [1.1, 0.8, 0.7], "val/accuracy": [0.5, 0.7, 0.8]}
    _write_history(layout, {**history, "lr": [1e-3, 5e-4, 1e-4]})
    return params, layout


def _sections(text: str) -> list[str]:
    return re.findall(r"^## (.+)$", text, flags=re.M)


def _check_html(layout: Layout) -> str:
    page = layout.report_html.read_text(encoding="utf-8")
    images = re.findall(r'<img src="([^"]+)"', page)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r'(src|href)="https?:|<link|<script', page)  # nothing loads from elsewhere
    return page


def test_classification_report_has_every_section_and_embeds_its_figures(classify_run) -> None:
    params, layout = classify_run
    result = report.run(params)
    text = layout.report.read_text(encoding="utf-8")
    metrics = json.loads(layout.metrics.read_text())
    assert metrics["task"] == "classify" and {"split", "images", "split_hash"} <= set(metrics)
    sections = _sections(text)
    for title in CLASSIFY_SECTIONS:
        assert any(s.startswith(title) for s in sections), title
    assert "Strategy study" not in sections and list(result.sections) == sections
    for name in ("roc_curves", "pr_curves", "reliability", *FIGURES):
        path = layout.figures_dir / f"{name}.png"
        assert path.stat().st_size > 2000, name
        assert f"figures/{name}.png" in text
    assert f"{metrics['accuracy']:.3f}" in text and f"{metrics['roc_auc_macro']:.3f}" in text
    assert "top5_accuracy" not in text  # 3 classes: k >= classes is not reported
    predictions = read_parquet(layout.predictions)
    worst = predictions.sort_values("loss").iloc[-1]
    assert worst["label"] != worst["prediction"] and f"`{worst['path']}`" in text  # highest loss first
    page = _check_html(layout)
    assert len(re.findall(r"<img ", page)) == text.count("![")
    for title in CLASSIFY_SECTIONS:
        assert f">{title}" in page


def test_a_strategy_study_file_leaves_the_report_unchanged(classify_run) -> None:
    """The study is its own DVC stage; the report only points at it, so its deps stay complete."""
    params, layout = classify_run
    report.run(params)
    before = layout.report.read_text(encoding="utf-8")
    study = layout.strategy_study
    study.write_text(
        "# Strategy study\n\n| strategy | accuracy |\n|---|---|\n| full | 0.9 |\n", encoding="utf-8"
    )
    try:
        report.run(params)
        after = layout.report.read_text(encoding="utf-8")
        assert after == before and "| full | 0.9 |" not in after
        assert "tune/dvc.yaml:strategy_study" in after and "strategy_study.md" in after
    finally:
        study.unlink()


def test_report_renders_in_headless_chromium(classify_run, tmp_path: Path) -> None:
    if render_report.find_chromium() is None:
        pytest.skip("no chromium on PATH")
    params, layout = classify_run
    report.run(params)
    png = render_report.render(layout.report_html, tmp_path / "page.png", width=1000, height=3000)
    pixels = np.asarray(Image.open(png).convert("L"))
    assert pixels.shape == (3000, 1000)
    assert render_report.content_height(png) > 1500  # text and figures, not a blank or error page
    assert (pixels < 128).mean() > 0.005


# --- detection: fabricated files of the evaluate contract ---------------------------------------


def _detection_outputs(layout: Layout) -> None:
    manifest = read_parquet(layout.manifest).set_index("path")
    ids = {Path(p).name: (manifest.loc[p, "image_id"], p) for p in manifest.index}
    boxes = []

    def box(name, kind, cls, score, xyxy, outcome):
        image_id, path = ids[name]
        boxes.append((image_id, path, kind, cls, score, *xyxy, outcome))

    box("a.png", "truth", "bird", np.nan, (8, 6, 40, 30), "matched")
    box("a.png", "prediction", "bird", 0.91, (9, 6, 41, 29), "tp")
    box("a.png", "truth", "cat", np.nan, (32, 12, 64, 48), "missed")
    box("a.png", "prediction", "cat", 0.55, (0, 30, 20, 47), "fp")
    box("b.png", "truth", "cat", np.nan, (4, 8, 28, 40), "matched")
    box("b.png", "prediction", "cat", 0.8, (5, 8, 28, 41), "tp")
    box("d é.png", "truth", "bird", np.nan, (0, 0, 16, 24), "missed")
    box("d é.png", "truth", "bird", np.nan, (16, 24, 32, 48), "matched")
    box("d é.png", "prediction", "bird", 0.7, (16, 23, 32, 47), "tp")
    write_parquet(pd.DataFrame.from_records(boxes, columns=DETECTION_PREDICTION_COLUMNS), layout.predictions)
    metrics = {"task": "detect", "split": "test", "images": 4, "boxes": 5, "split_hash": "feedc0de"}
    for name, value in (("map50", 0.62), ("map50_95", 0.41), ("precision", 0.75), ("recall", 0.6)):
        metrics |= {name: value, f"{name}_ci_low": value - 0.2, f"{name}_ci_high": min(1, value + 0.15)}
    write_json(metrics, layout.metrics)
    per_class = [
        {"class": "bird", "ap50": 0.7, "ap50_95": 0.45, "precision": 1.0, "recall": 0.67, "support": 3},
        {"class": "cat", "ap50": 0.5, "ap50_95": 0.35, "precision": 0.5, "recall": 0.5, "support": 2},
    ]
    write_json(per_class, layout.plots_dir / "per_class.json")
    recall = np.linspace(0, 1, 11)
    write_json(
        [
            {"class": c, "recall": r, "precision": 1 - r * f}
            for c, f in (("bird", 0.3), ("cat", 0.6))
            for r in recall
        ],
        layout.plots_dir / "pr_curve.json",
    )
    write_json(
        [
            {"class": c, "confidence": t, "f1": f * t * (1 - t) * 4}
            for c, f in (("bird", 0.9), ("cat", 0.6))
            for t in recall
        ],
        layout.plots_dir / "f1_confidence.json",
    )
    confusion = [("bird", "bird"), ("bird", "bird"), ("bird", "background"), ("cat", "cat")]
    confusion += [("cat", "background"), ("background", "cat")]
    write_json([{"actual": a, "predicted": p} for a, p in confusion], layout.plots_dir / "confusion.json")
    history = {
        "train/loss": [2.0, 1.5, 1.2],
        "train/box_loss": [1.2, 0.9, 0.8],
        "val/map50_95": [0.1, 0.3, 0.4],
    }
    _write_history(layout, history)


def test_detection_report_draws_missed_and_false_boxes(tmp_path: Path) -> None:
    source = write_voc(tmp_path / "voc")
    for i in range(8):  # a few more background images so every split gets some
        write_image(source / "JPEGImages" / f"bg_{i}.png", seed=900 + i, size=(48, 40))
    params = detect_params(tmp_path, source)
    layout = _prepare(params)
    _detection_outputs(layout)
    report.run(params)
    text = layout.report.read_text(encoding="utf-8")
    sections = _sections(text)
    for title in CLASSIFY_SECTIONS:
        assert any(s.startswith(title) for s in sections), title
    for name in ("map50", "map50_95"):
        assert f"| {esc(name)} | " in text
    assert "| bird | 3 | 0.700 | 0.450 |" in text
    assert "roc_curves.png" not in text and "reliability.png" not in text
    for name in ("pr_curves", "f1_confidence", *FIGURES):
        assert (layout.figures_dir / f"{name}.png").stat().st_size > 2000, name
    # a.png: 1 missed + 1 false; d é.png: 1 missed; b.png: none.
    rows = re.findall(r"^\| `([^`]+)` \| (\d+) \| (\d+) \|$", text, flags=re.M)
    assert [(Path(p).name, int(m), int(f)) for p, m, f in rows] == [("a.png", 1, 1), ("d é.png", 1, 0)]
    assert "background" in text  # the confusion matrix's missed / false row and column
    page = _check_html(layout)
    assert "no &lt;object&gt; for a background image" in page  # messages from the data are text, not tags
