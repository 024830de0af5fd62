"""The report page: every section as Markdown, from the stage outputs alone."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from stages.core.contracts import read_classes, read_parquet
from stages.core.layout import Layout
from stages.core.params import Params
from stages.metrics.classification import LOWER_IS_BETTER, ordered_names
from stages.reporting import figures

DETECT_HEADLINE = ("map50", "map50_95", "precision", "recall")
MEANING = {
    "accuracy": "share of images whose top prediction is right",
    "balanced_accuracy": "mean recall over classes (each class counts the same)",
    "precision_macro": "of the images predicted as a class, the share that is that class; mean over classes",
    "recall_macro": "of the images of a class, the share found; mean over classes",
    "f1_macro": "harmonic mean of precision and recall; mean over classes",
    "roc_auc_macro": "chance a random positive scores above a random negative (one-vs-rest), mean",
    "pr_auc_macro": "average precision over all thresholds (one-vs-rest), mean over classes",
    "log_loss": "mean cross-entropy of the true class; lower is better",
    "ece": "expected calibration error: confidence minus accuracy, averaged over bins; lower is better",
    "map50": "mean average precision at IoU 0.5",
    "map50_95": "mean average precision over IoU 0.50:0.95 (COCO)",
    "precision": "share of predicted boxes that match a true box",
    "recall": "share of true boxes that are found",
}
TRAIN_KEYS = (
    "backbone",
    "weights",
    "strategy",
    "epochs",
    "lp_epochs",
    "batch_size",
    "image_size",
    "optimizer",
    "lr",
    "backbone_lr_mult",
    "weight_decay",
    "schedule",
    "label_smoothing",
    "imbalance",
    "aug_views",
)


class Page:
    """Collects the Markdown of each section; figures are drawn as sections need them."""

    def __init__(self, params: Params, layout: Layout) -> None:
        self.params, self.layout = params, layout
        self.here = layout.report.parent
        self.metrics = _read_json(layout.metrics)
        self.task = self.metrics.get("task", params.data.task)
        self.per_class = _read_json(layout.plots_dir / "per_class.json", [])
        self.predictions = read_parquet(layout.predictions)
        self.lines: list[str] = []
        self.sections: list[str] = []

    # --- helpers ------------------------------------------------------------------------------

    def section(self, title: str) -> None:
        self.sections.append(title)
        self.lines += ["", f"## {title}", ""]

    def figure(self, path: Path | None, alt: str) -> None:
        self.figure_row([(path, alt)])

    def figure_row(self, items: list[tuple[Path | None, str]]) -> None:
        """Images in one paragraph: side by side in the HTML and on most Markdown viewers."""
        drawn = [f"![{alt}]({_rel(path, self.here)})" for path, alt in items if path is not None]
        if drawn:
            self.lines += [*drawn, ""]

    def fig_path(self, name: str) -> Path:
        return self.layout.figures_dir / name

    def plot_rows(self, name: str) -> list[dict]:
        return _read_json(self.layout.plots_dir / name, [])

    # --- the page -----------------------------------------------------------------------------

    def render(self) -> str:
        p = self.params
        split = self.metrics.get("split", p.evaluate.split)
        self.lines = [
            f"# {p.report.title}",
            "",
            f"{self.model_phrase()} on `{p.data.source}`; scored on the {split} split "
            f"({self.metrics.get('images', '?')} images), seed {p.base.seed}. "
            f"Split fingerprint `{self.metrics.get('split_hash', '?')}`.",
        ]
        self.headline()
        self.data()
        self.model()
        self.per_class_section()
        self.errors()
        self.curves()
        self.training()
        self.strategy_study()
        self.reproduce()
        return "\n".join(self.lines).rstrip() + "\n"

    def headline_names(self) -> list[str]:
        if self.task == "detect":
            return [n for n in DETECT_HEADLINE if n in self.metrics]
        return [n for n in ordered_names(self.metrics) if n in self.metrics]

    def headline(self) -> None:
        m, names = self.metrics, self.headline_names()
        level = self.params.evaluate.confidence
        self.section(f"Headline ({m.get('split', '?')} split, {m.get('images', '?')} images)")
        main = names[0] if names else None
        exact = None
        if main and m.get(main) is not None:
            low, high = m.get(f"{main}_ci_low"), m.get(f"{main}_ci_high")
            sentence = f"**{main} {m[main]:.3f}**"
            if low is not None and high is not None:
                sentence += f" ({level:.0%} bootstrap interval {low:.3f} to {high:.3f})"
                if high - low > 0.1:
                    sentence += (
                        f". The interval is wide: the {m.get('split', 'test')} split has "
                        f"{m.get('images', '?')} images, and a larger one would narrow it"
                    )
            self.lines += [sentence + ".", ""]
            exact = _exact_interval(m, main, level)
            if exact:
                self.lines += [
                    f"> Every resample gives the same {main}, so the bootstrap interval has no width; that "
                    f"is not certainty. With {round(m[main] * m['images'])} of {m['images']} images right, "
                    f"the exact binomial {level:.0%} interval is **{exact[0]:.3f} to {exact[1]:.3f}** "
                    "(dashed in the figure).",
                    "",
                ]
        resamples = self.params.evaluate.bootstrap
        header = f"{level:.0%} interval ({resamples} resamples)" if resamples else "interval"
        self.lines += [f"| metric | value | {header} | meaning |", "|---|---|---|---|"]
        for name in names:
            self.lines.append(f"| {name} | {_num(m[name])} | {_interval(m, name)} | {_meaning(name)} |")
        self.lines.append("")
        if names:
            self.figure(
                figures.headline(
                    m,
                    names,
                    self.fig_path("headline.png"),
                    level,
                    LOWER_IS_BETTER,
                    exact={main: exact} if main and exact else None,
                ),
                "headline metrics with intervals",
            )
        if self.task != "detect" and not any(n.startswith("top") for n in names):
            self.lines += [
                f"Top-{self.params.evaluate.top_k} accuracy is not listed: with this few classes it is 1.",
                "",
            ]

    def data(self) -> None:
        layout = self.layout
        self.section("Data")
        validation = _read_json(layout.validation_report, {})
        quarantine = _quarantine(layout)
        if validation:
            checks = validation.get("checks", {})
            failed = [
                f"{k} ({v.get('severity', '?')})" for k, v in checks.items() if not v.get("success", True)
            ]
            self.lines.append(
                f"- {validation.get('images_in', '?')} images imported, "
                f"{validation.get('images_valid', '?')} "
                f"passed validation, {len(quarantine)} items quarantined; {len(checks) - len(failed)} of "
                f"{len(checks)} data checks passed"
                + (f" (not passed: {', '.join(failed)})." if failed else ".")
            )
        if len(quarantine):
            counts = quarantine.groupby(["stage", "reason"]).size()
            self.lines += ["", "| stage | reason | items |", "|---|---|---|"]
            self.lines += [f"| {stage} | {_esc(reason)} | {n} |" for (stage, reason), n in counts.items()]
            self.lines.append("")
        audit = _read_json(layout.split_audit, {})
        self.lines += [
            f"- warning: {_esc(w)}" for w in validation.get("warnings", []) + audit.get("warnings", [])
        ]
        if audit.get("splits"):
            self.split_table(audit)
        self.leakage(audit)

    def split_table(self, audit: dict) -> None:
        classes = _classes(self.layout, audit)
        unit = "boxes" if self.task == "detect" else "images"
        counts = pd.DataFrame(
            {c: [info["class_counts"].get(c, 0) for info in audit["splits"].values()] for c in classes},
            index=list(audit["splits"]),
        )
        self.lines += [
            "",
            f"Images per split, and {unit} per class:",
            "",
            "| split | images | " + " | ".join(map(_esc, classes)) + " |",
            "|---|---|" + "---|" * len(classes),
        ]
        for name, info in audit["splits"].items():
            cells = [str(info["class_counts"].get(c, 0)) for c in classes]
            self.lines.append(f"| {name} | {info['images']} | " + " | ".join(cells) + " |")
        self.lines.append("")
        self.figure(
            figures.split_counts(counts, self.fig_path("split_counts.png"), unit), "class counts per split"
        )
        if "max_class_share_deviation" in audit:
            self.lines += [
                "Largest class-share deviation of a split from the whole: "
                f"{audit['max_class_share_deviation']:.3f}.",
                "",
            ]

    def leakage(self, audit: dict) -> None:
        leaks = _read_json(self.layout.leakage_report, {})
        counts = leaks.get("counts") or audit.get("leakage")
        if not counts:
            return
        tolerance = leaks.get("tolerance", {})
        clean = not any(counts.get(k, 0) for k in ("exact_pairs", "near_pairs", "groups"))
        verdict = (
            "**passed, nothing crosses splits**" if clean else "**found leakage (within the tolerance)**"
        )
        self.lines += [
            f"Leakage audit: {verdict}: {counts.get('exact_pairs', 0)} identical and "
            f"{counts.get('near_pairs', 0)} near-duplicate image pairs, {counts.get('groups', 0)} groups "
            f"found in two splits (tolerance {tolerance.get('max_exact_pairs', '?')} / "
            f"{tolerance.get('max_near_pairs', '?')} / {tolerance.get('max_groups', '?')}; list: "
            f"`{_rel(self.layout.leakage_report, self.here)}`).",
            "",
        ]
        near, groups = audit.get("near_duplicates"), audit.get("groups")
        if near and groups:
            thresholds = ", ".join(f"{k} <= {v}" for k, v in near.get("max_distance", {}).items()) or "off"
            self.lines.append(
                f"Near-duplicate clusters ({thresholds}): {near.get('clusters', 0)} "
                f"({near.get('images_in_clusters', 0)} images); groups (rule `{groups.get('rule')}`): "
                f"{groups.get('groups', 0)}; each is kept in one split."
            )
        self.lines += [f"- {_esc(note)}" for note in audit.get("notes", [])]

    def model_phrase(self) -> str:
        train = self.params.train
        detector = getattr(train, "detector", None)
        if self.task == "detect" and detector is not None:
            return f"YOLO detector fine-tuned from `{detector.weights}` weights"
        return (
            f"Classifier fine-tuned from `{train.backbone}` ({train.weights} weights, "
            f"strategy `{train.strategy}`)"
        )

    def model(self) -> None:
        p = self.params
        self.section("Model")
        self.lines += ["| parameter | value |", "|---|---|", f"| task | {self.task} |"]
        detector = getattr(p.train, "detector", None)
        if self.task == "detect" and detector is not None:
            for key, value in detector.model_dump().items():
                if value is not None and value != {}:
                    self.lines.append(f"| train.detector.{key} | {value} |")
        else:
            train = p.train.model_dump()
            for key in TRAIN_KEYS:
                if (
                    key in train
                    and train[key] is not None
                    and not (key == "lp_epochs" and p.train.strategy != "lp_ft")
                ):
                    self.lines.append(f"| train.{key} | {train[key]} |")
        run_info = _read_json(self.layout.train_log_dir / "run.json", {})
        if "total_params" in run_info:
            self.lines.append(f"| parameters (total) | {run_info['total_params']:,} |")
        history = read_history(self.layout.train_log_dir)
        if not history.empty:
            self.lines.append(f"| epochs run | {int(history['step'].max()) + 1} |")
        self.lines += [
            f"| seed | {p.base.seed} |",
            "",
            "All parameters: `params.yaml` (`dvc params diff` compares them between commits).",
        ]

    def per_class_section(self) -> None:
        self.section("Per class")
        rows = self.per_class
        if not rows:
            self.lines.append("No per-class table was written.")
            return
        if self.task == "detect":
            self.lines += [
                "| class | boxes | AP50 | AP50-95 | precision | recall |",
                "|---|---|---|---|---|---|",
            ]
            self.lines += [
                f"| {_esc(r['class'])} | {r.get('support', '')} | {_num(r.get('ap50'))} "
                f"| {_num(r.get('ap50_95'))} "
                f"| {_num(r.get('precision'))} | {_num(r.get('recall'))} |"
                for r in rows
            ]
            metrics, key = ("ap50", "ap50_95", "recall"), "ap50_95"
        else:
            self.lines += [
                "| class | images | precision | recall | F1 | ROC-AUC | PR-AUC |",
                "|---|---|---|---|---|---|---|",
            ]
            self.lines += [
                f"| {_esc(r['class'])} | {r['support']} | {_with_ci(r, 'precision')} "
                f"| {_with_ci(r, 'recall')} "
                f"| {_with_ci(r, 'f1')} | {_num(r.get('roc_auc'))} | {_num(r.get('pr_auc'))} |"
                for r in rows
            ]
            metrics, key = ("precision", "recall", "f1"), "f1"
        scored = [r for r in rows if r.get(key) is not None and r.get("support", 1)]
        if len(scored) > 1 and len({r[key] for r in scored}) > 1:
            worst = min(scored, key=lambda r: r[key])
            self.lines += ["", f"Weakest class by {key}: **{_esc(worst['class'])}** ({worst[key]:.3f})."]
        self.lines.append("")
        self.figure(figures.per_class(rows, metrics, self.fig_path("per_class.png")), "per-class metrics")

    def errors(self) -> None:
        self.section("Errors")
        confusion_rows = self.plot_rows("confusion.json")
        if confusion_rows:
            frame = pd.DataFrame(confusion_rows)
            labels = _confusion_labels(frame, self.per_class)
            matrix = (
                pd.crosstab(frame["actual"], frame["predicted"])
                .reindex(index=labels, columns=labels, fill_value=0)
                .to_numpy()
            )
            self.lines.append(
                "Confusion matrix (rows: actual, columns: predicted; colour: share of the row):"
            )
            self.lines.append("")
            self.figure(
                figures.confusion(matrix, labels, labels, self.fig_path("confusion_matrix.png")),
                "confusion matrix",
            )
            off = [(matrix[i, j], labels[i], labels[j]) for i, j in np.ndindex(matrix.shape) if i != j]
            common = sorted((o for o in off if o[0] > 0), reverse=True)[:5]
            if common:
                self.lines += [
                    "Most frequent confusions: "
                    + "; ".join(f"{_esc(a)} as {_esc(b)} ({n})" for n, a, b in common)
                    + ".",
                    "",
                ]
        if self.task == "detect":
            self.detection_mistakes()
        else:
            self.classification_mistakes()

    def classification_mistakes(self) -> None:
        """The highest-loss images: every mistake first (most confidently wrong first); when there
        are fewer mistakes than ``report.mistakes``, the right answers the model was least sure of."""
        frame = self.predictions
        order = "loss" if "loss" in frame else "confidence"
        wrong = frame["label"] != frame["prediction"]
        ranked = frame.assign(wrong=wrong).sort_values(["wrong", order], ascending=False)
        shown = ranked.head(self.params.report.mistakes)
        self.lines += ["### Worst mistakes", ""]
        split = self.metrics.get("split", "test")
        if not wrong.any():
            intro = f"No mistakes: every image of the {split} split is classified right."
        else:
            intro = f"{int(wrong.sum())} of {len(frame)} images of the {split} split are misclassified."
        if shown.empty:
            self.lines.append(intro)
            return
        closest = int((~shown["wrong"]).sum())
        if closest == len(shown):
            detail = f" The {closest} right answers the model was least sure of (highest loss):"
        else:
            detail = (
                f" The {len(shown)} images with the highest loss (red: wrong, most confidently wrong first"
                + (f"; green: right, the {closest} the model was least sure of" if closest else "")
                + "):"
            )
        self.lines += [intro + detail, ""]
        source = Path(self.params.data.source)
        tiles = [
            figures.Tile(
                source / row["path"],
                [
                    f"true: {row['label']}",
                    f"predicted: {row['prediction']} ({row['confidence']:.2f})",
                    f"loss {row.get('loss', float('nan')):.2f} · {_short(Path(row['path']).name, 24)}",
                ],
                colour=figures.BAD if row["wrong"] else figures.GOOD,
            )
            for _, row in shown.iterrows()
        ]
        self.figure(figures.image_grid(tiles, self.fig_path("mistakes.png")), "highest-loss images")
        self.lines += ["| image | true | predicted | confidence | loss |", "|---|---|---|---|---|"]
        self.lines += [
            f"| `{row['path']}` | {_esc(row['label'])} "
            f"| {_esc(row['prediction'])}{'' if row['wrong'] else ' (right)'} "
            f"| {row['confidence']:.3f} | {row.get('loss', float('nan')):.3f} |"
            for _, row in shown.iterrows()
        ]

    def detection_threshold(self) -> float:
        """evaluate's operating threshold, else the confidence where mean F1 over classes peaks."""
        if self.metrics.get("confidence_threshold") is not None:
            return float(self.metrics["confidence_threshold"])
        rows = self.plot_rows("f1_confidence.json")
        if not rows:
            return 0.25
        frame = pd.DataFrame(rows)
        frame["confidence"] = frame["confidence"].round(2)
        mean = frame.groupby("confidence")["f1"].mean()
        return float(mean.idxmax()) if len(mean) else 0.25

    def detection_mistakes(self) -> None:
        frame = self.predictions
        threshold = self.detection_threshold()
        shown = frame[(frame["kind"] == "truth") | (frame["score"] >= threshold)]
        missed = shown[(shown["kind"] == "truth") & (shown["outcome"] == "missed")].groupby("image_id").size()
        false = shown[(shown["kind"] == "prediction") & (shown["outcome"] == "fp")].groupby("image_id").size()
        errors = pd.DataFrame({"missed": missed, "false": false}).fillna(0).astype(int)
        errors["total"] = errors["missed"] + errors["false"]
        errors = errors[errors["total"] > 0].sort_values(["total", "missed"], ascending=False)
        worst = errors.head(self.params.report.mistakes)
        self.lines += ["### Images with the most missed and false boxes", ""]
        if worst.empty:
            self.lines.append(
                f"None at confidence >= {threshold:.2f}: every box is found and no false box is drawn."
            )
            return
        self.lines += [
            f"{len(errors)} of {self.metrics.get('images', '?')} images have a missed or a false box at "
            f"confidence >= {threshold:.2f} (the operating threshold); the {len(worst)} worst:",
            "",
        ]
        source = Path(self.params.data.source)
        tiles = []
        for image_id, counts in worst.iterrows():
            boxes = shown[shown["image_id"] == image_id]
            drawn = []
            for _, box in boxes.iterrows():
                if box["kind"] == "truth":
                    colour, dashed, label = (
                        (figures.MISSED, True, box["class_name"])
                        if box["outcome"] == "missed"
                        else (figures.GOOD, False, None)
                    )
                else:
                    colour = figures.NEUTRAL if box["outcome"] == "tp" else figures.BAD
                    dashed, label = False, f"{box['class_name']} {box['score']:.2f}"
                drawn.append(
                    {
                        **{k: box[k] for k in ("x_min", "y_min", "x_max", "y_max")},
                        "colour": colour,
                        "dashed": dashed,
                        "label": label,
                    }
                )
            path = boxes["path"].iloc[0]
            tiles.append(
                figures.Tile(
                    source / path,
                    [f"{counts['missed']} missed, {counts['false']} false", _short(Path(path).name, 30)],
                    boxes=drawn,
                )
            )
        self.figure(
            figures.image_grid(tiles, self.fig_path("mistakes.png"), columns=3, thumb=3.4),
            "images with missed and false boxes",
        )
        self.lines += ["| image | missed | false |", "|---|---|---|"]
        paths = frame.drop_duplicates("image_id").set_index("image_id")["path"]
        self.lines += [f"| `{paths[i]}` | {c['missed']} | {c['false']} |" for i, c in worst.iterrows()]

    def curves(self) -> None:
        self.section("Curves")
        pr = self.plot_rows("pr_curve.json")
        if self.task == "detect":
            notes = {r["class"]: f"AP50 {r['ap50']:.2f}" for r in self.per_class if r.get("ap50") is not None}
            self.lines += [
                "Per class at IoU 0.5: precision against recall, and F1 at each confidence "
                "threshold (where the curves peak is the threshold to deploy with).",
                "",
            ]
            self.figure_row(
                [
                    (
                        figures.class_curves(
                            pr,
                            "recall",
                            "precision",
                            self.fig_path("pr_curves.png"),
                            "precision-recall (IoU 0.5)",
                            "recall",
                            "precision",
                            notes=notes,
                        ),
                        "precision-recall curves",
                    ),
                    (
                        figures.class_curves(
                            self.plot_rows("f1_confidence.json"),
                            "confidence",
                            "f1",
                            self.fig_path("f1_confidence.png"),
                            "F1 against confidence threshold",
                            "confidence",
                            "F1",
                        ),
                        "F1-confidence curves",
                    ),
                ]
            )
            return
        auc = {r["class"]: f"AUC {r['roc_auc']:.2f}" for r in self.per_class if r.get("roc_auc") is not None}
        ap = {r["class"]: f"AP {r['pr_auc']:.2f}" for r in self.per_class if r.get("pr_auc") is not None}
        self.lines += [
            "One-vs-rest per class: ROC, precision-recall, and the reliability diagram (is a 0.9 "
            "confidence right 90% of the time? a bar below its red mark: over-confident there).",
            "",
        ]
        self.figure_row(
            [
                (
                    figures.class_curves(
                        self.plot_rows("roc.json"),
                        "fpr",
                        "tpr",
                        self.fig_path("roc_curves.png"),
                        "ROC (one-vs-rest)",
                        "false positive rate",
                        "true positive rate",
                        diagonal=True,
                        notes=auc,
                    ),
                    "ROC curves",
                ),
                (
                    figures.class_curves(
                        pr,
                        "recall",
                        "precision",
                        self.fig_path("pr_curves.png"),
                        "precision-recall (one-vs-rest)",
                        "recall",
                        "precision",
                        notes=ap,
                    ),
                    "precision-recall curves",
                ),
                (
                    figures.reliability(
                        self.plot_rows("calibration.json"),
                        self.fig_path("reliability.png"),
                        self.metrics.get("ece"),
                    ),
                    "reliability diagram",
                ),
            ]
        )

    def training(self) -> None:
        self.section("Training")
        history = read_history(self.layout.train_log_dir)
        if history.empty:
            self.lines.append(f"No DVCLive curves under `{_rel(self.layout.train_log_dir, self.here)}`.")
            return
        final = _read_json(self.layout.train_log_dir / "metrics.json", {})
        self.lines += [
            "Per-epoch curves logged by DVCLive "
            f"(`{_rel(self.layout.train_log_dir, self.here)}/plots/metrics`)"
            + (f"; last epoch: {_flat(final)}." if final else "."),
            "",
        ]
        self.figure(figures.training(history, self.fig_path("training_curves.png")), "training curves")

    def strategy_study(self) -> None:
        study = self.layout.strategy_study
        if not study.is_file():
            return
        self.section("Strategy study")
        text = study.read_text(encoding="utf-8")
        body = []
        for line in text.splitlines():
            if line.startswith("#"):
                level = len(line) - len(line.lstrip("#"))
                line = "#" * min(level + 2, 6) + line[level:]
            body.append(line)
        self.lines += [*body, ""]
        image = study.with_suffix(".png")
        if image.is_file() and image.name not in text:
            self.figure(image, "strategy study")

    def reproduce(self) -> None:
        self.section("Reproduce and compare")
        files = [self.layout.metrics, self.layout.predictions, self.layout.plots_dir, self.layout.figures_dir]
        self.lines += [
            "- `dvc repro` rebuilds everything that changed; this page: `"
            + _rel(self.layout.report, Path.cwd())
            + "` (self-contained: `"
            + _rel(self.layout.report_html, Path.cwd())
            + "`).",
            "- `dvc metrics show` / `dvc metrics diff <rev>`: the headline numbers and their intervals.",
            "- `dvc plots diff <rev>`: confusion matrix, ROC / precision-recall / F1-confidence curves and "
            "training curves of two revisions side by side.",
            "- Files: " + ", ".join(f"`{_rel(f, self.here)}`" for f in files) + ".",
        ]


# --- reading inputs ---------------------------------------------------------------------------


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


def _quarantine(layout: Layout) -> pd.DataFrame:
    parts = [read_parquet(p) for p in (layout.ingest_quarantine, layout.validate_quarantine) if p.is_file()]
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["stage", "reason"])


def _classes(layout: Layout, audit: dict) -> list[str]:
    if layout.classes.is_file():
        return read_classes(layout.classes)
    names: dict[str, None] = {}
    for info in audit["splits"].values():
        names |= dict.fromkeys(info["class_counts"])
    return list(names)


def _confusion_labels(frame: pd.DataFrame, per_class: list[dict]) -> list[str]:
    labels = [r["class"] for r in per_class]
    seen = list(dict.fromkeys([*frame["actual"], *frame["predicted"]]))
    extra = sorted(c for c in seen if c not in labels and c != "background")
    return labels + extra + (["background"] if "background" in seen else [])


def _read_json(path: Path, default=None):
    if default is not None and not path.is_file():
        return default
    return json.loads(path.read_text(encoding="utf-8"))


def _num(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _interval(metrics: dict, name: str) -> str:
    low, high = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
    return f"{low:.3f} – {high:.3f}" if low is not None and high is not None else "n/a"


def _exact_interval(metrics: dict, name: str, level: float) -> tuple[float, float] | None:
    """A bootstrap cannot show uncertainty when every image is right (or wrong): every resample
    agrees. For accuracy, the exact binomial (Clopper-Pearson) interval then; else None."""
    low, high, images = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high"), metrics.get("images")
    if name != "accuracy" or low is None or high is None or high > low or not images:
        return None
    from scipy.stats import binomtest

    exact = binomtest(round(metrics[name] * images), images).proportion_ci(
        confidence_level=level, method="exact"
    )
    return float(exact.low), float(exact.high)


def _short(name: str, width: int) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _esc(text) -> str:
    """Names and messages from the data as Markdown text: no HTML tags, no table breaks."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def _with_ci(row: dict, name: str) -> str:
    low, high = row.get(f"{name}_ci_low"), row.get(f"{name}_ci_high")
    value = _num(row.get(name))
    return f"{value} ({low:.2f}–{high:.2f})" if low is not None and high is not None else value


def _meaning(name: str) -> str:
    if name.startswith("top") and name.endswith("_accuracy"):
        return f"share of images whose true class is among the {name[3:-9]} highest scores"
    return MEANING.get(name, "")


def _flat(values: dict, prefix: str = "") -> str:
    parts = []
    for key, value in values.items():
        if isinstance(value, dict):
            parts.append(_flat(value, f"{prefix}{key}/"))
        elif key != "step" and isinstance(value, int | float):
            parts.append(f"{prefix}{key} {value:.4g}")
    return ", ".join(p for p in parts if p)


def _rel(path: Path, start: Path) -> str:
    return (
        Path(path).resolve().relative_to(start.resolve()).as_posix()
        if Path(path).resolve().is_relative_to(start.resolve())
        else Path(path).as_posix()
    )
