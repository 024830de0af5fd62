"""Stage ``report``: one Markdown page a person reads after ``dvc repro``.

It only reads what earlier stages wrote (metrics, predictions, audits, curves), so it
can be regenerated without the model and never disagrees with ``dvc metrics show``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from stages.cli import exit_with
from stages.layout import Layout
from stages.manifest import read_classes, read_parquet
from stages.params import Params

STAGE = "report"
HEADLINE = ("accuracy", "precision_macro", "recall_macro", "f1_macro")


@dataclass(frozen=True)
class ReportResult:
    report: Path

    def __str__(self) -> str:
        return f"report -> {self.report}"


def run(params: Params) -> ReportResult:
    """Render ``reports/report.md`` and its figures from the other stages' outputs."""
    layout = Layout(params.paths)
    layout.figures_dir.mkdir(parents=True, exist_ok=True)
    metrics = _read_json(layout.metrics)
    classes = read_classes(layout.classes)
    predictions = read_parquet(layout.predictions)
    confusion_png = plot_confusion(predictions, classes, layout.figures_dir / "confusion_matrix.png")
    history = read_history(layout.train_log_dir)
    curves_png = plot_curves(history, layout.figures_dir / "training_curves.png")
    text = render_markdown(params, layout, metrics, predictions, classes, confusion_png, curves_png)
    layout.report.write_text(text, encoding="utf-8")
    return ReportResult(layout.report)


def render_markdown(
    params: Params,
    layout: Layout,
    metrics: dict,
    predictions: pd.DataFrame,
    classes: list[str],
    confusion_png: Path,
    curves_png: Path | None,
) -> str:
    here = layout.report.parent
    validation = _read_json(layout.validation_report)
    audit = _read_json(layout.split_audit)
    quarantine = pd.concat(
        [read_parquet(layout.ingest_quarantine), read_parquet(layout.validate_quarantine)], ignore_index=True
    )
    per_class = _read_json(layout.plots_dir / "per_class.json")
    lines = [
        f"# {params.report.title}",
        "",
        f"Backbone `{params.train.backbone}` ({params.train.weights} weights), strategy "
        f"`{params.train.strategy}`, seed {params.base.seed}; data `{params.data.source}` "
        f"({params.data.task}).",
        "",
        f"## Headline ({metrics['split']} split, {metrics['images']} images)",
        "",
        f"| metric | value | {int(params.evaluate.confidence * 100)}% bootstrap interval |",
        "|---|---|---|",
    ]
    for name in HEADLINE:
        low, high = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
        interval = f"[{low:.3f}, {high:.3f}]" if low is not None else "n/a"
        lines.append(f"| {name} | {metrics[name]:.3f} | {interval} |")
    lines += [
        "",
        "## Data",
        "",
        f"- {validation['images_in']} images imported, {validation['images_valid']} passed "
        f"validation, {len(quarantine)} items quarantined.",
    ]
    if len(quarantine):
        counts = quarantine.groupby(["stage", "reason"]).size()
        lines += ["", "| stage | reason | items |", "|---|---|---|"]
        lines += [f"| {stage} | {reason} | {n} |" for (stage, reason), n in counts.items()]
    lines += [f"- warning: {w}" for w in validation["warnings"] + audit["warnings"]]
    lines += [
        "",
        "## Split",
        "",
        "| split | images | " + " | ".join(classes) + " |",
        "|---|---|" + "---|" * len(classes),
    ]
    for name, info in audit["splits"].items():
        counts = [str(info["class_counts"].get(c, 0)) for c in classes]
        lines.append(f"| {name} | {info['images']} | " + " | ".join(counts) + " |")
    lines += [
        "",
        f"Largest class-share deviation from the whole: "
        f"{audit['max_class_share_deviation']:.3f}; identical images across splits: "
        f"{audit['exact_duplicates_across_splits']}.",
    ]
    lines += _leakage_lines(audit, here)
    lines += [
        "",
        "## Per class",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['class']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |"
        for r in per_class
    ]
    lines += ["", f"![confusion matrix]({_rel(confusion_png, here)})", ""]
    if curves_png is not None:
        lines += ["## Training", "", f"![training curves]({_rel(curves_png, here)})", ""]
    if layout.augment_preview.is_file():
        lines += ["## Augmentation", "", f"![augmentation preview]({_rel(layout.augment_preview, here)})", ""]
    wrong = predictions[predictions["label"] != predictions["prediction"]]
    lines += ["## Most confident mistakes", ""]
    if wrong.empty:
        lines.append("None: every image in the split was classified correctly.")
    else:
        lines += ["| image | label | predicted | confidence |", "|---|---|---|---|"]
        for _, row in wrong.sort_values("confidence", ascending=False).head(10).iterrows():
            lines.append(
                f"| `{row['path']}` | {row['label']} | {row['prediction']} | {row['confidence']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def _leakage_lines(audit: dict, here: Path) -> list[str]:
    """Split part: near-duplicate clusters, groups and leakage from the split audit."""
    near, groups, leaks = audit.get("near_duplicates"), audit.get("groups"), audit.get("leakage")
    if near is None or groups is None or leaks is None:
        return []
    thresholds = ", ".join(f"{k} <= {v}" for k, v in near["max_distance"].items()) or "search off"
    report = Path(leaks["report"])
    return [
        "",
        f"Near-duplicates ({thresholds}): {near['pairs']} pairs in {near['clusters']} clusters "
        f"({near['images_in_clusters']} images), each kept in one split. Groups (rule "
        f"`{groups['rule']}`): {groups['groups']}, each kept in one split. Across splits: "
        f"{leaks['exact_pairs']} identical and {leaks['near_pairs']} near-duplicate pairs, "
        f"{leaks['groups']} groups (list: `{_rel(report, here)}`).",
        *[f"- {note}" for note in audit.get("notes", [])],
    ]


def plot_confusion(predictions: pd.DataFrame, classes: list[str], out: Path) -> Path:
    index = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=int)
    for actual, predicted in zip(predictions["label"], predictions["prediction"], strict=True):
        matrix[index[actual], index[predicted]] += 1
    size = max(3.0, 0.6 * len(classes) + 1.5)
    fig, axis = plt.subplots(figsize=(size, size))
    axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axis.set_yticks(range(len(classes)), classes)
    axis.set_xlabel("predicted")
    axis.set_ylabel("actual")
    peak = matrix.max() or 1
    for (i, j), value in np.ndenumerate(matrix):
        axis.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def read_history(train_log_dir: Path) -> pd.DataFrame:
    """DVCLive's per-epoch TSV files merged on ``step``."""
    plots = train_log_dir / "plots" / "metrics"
    frames = []
    for tsv in sorted(plots.rglob("*.tsv")):
        frame = pd.read_csv(tsv, sep="\t")
        name = tsv.relative_to(plots).with_suffix("").as_posix()
        frames.append(frame[["step", frame.columns[-1]]].rename(columns={frame.columns[-1]: name}))
    if not frames:
        return pd.DataFrame()
    merged = frames[0]
    for frame in frames[1:]:
        merged = merged.merge(frame, on="step", how="outer")
    return merged.sort_values("step")


def plot_curves(history: pd.DataFrame, out: Path) -> Path | None:
    if history.empty:
        return None
    fig, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(9, 3.2))
    epochs = history["step"] + 1
    for column in ("train/loss", "val/loss"):
        if column in history:
            loss_axis.plot(epochs, history[column], label=column)
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("loss")
    loss_axis.legend()
    if "val/accuracy" in history:
        acc_axis.plot(epochs, history["val/accuracy"], color="tab:green")
    acc_axis.set_xlabel("epoch")
    acc_axis.set_ylabel("val accuracy")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _rel(path: Path, start: Path) -> str:
    return (
        Path(path).resolve().relative_to(start.resolve()).as_posix()
        if Path(path).resolve().is_relative_to(start.resolve())
        else Path(path).as_posix()
    )


if __name__ == "__main__":
    exit_with(STAGE, run)
