"""The model: the training parameters that decide it, its size and the epochs it ran."""

from __future__ import annotations

from stages.core.params import Params
from stages.reporting.inputs import ReportInputs, read_history, read_json
from stages.reporting.markdown import Section, code, esc

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


# Classifier settings a segmenter does not use (its input size is train.segmenter.image_size).
SEGMENT_UNUSED = frozenset({"image_size", "lp_epochs", "label_smoothing", "aug_views"})


def model_phrase(params: Params, task: str) -> str:
    """The model in one phrase, for the page's opening sentence."""
    train = params.train
    detector = getattr(train, "detector", None)
    if task == "detect" and detector is not None:
        return f"YOLO detector fine-tuned from {code(detector.weights)} weights"
    segmenter = getattr(train, "segmenter", None)
    if task == "segment" and segmenter is not None:
        return (
            f"Segmenter ({code(segmenter.decoder)} decoder) fine-tuned from {code(train.backbone)} "
            f"({esc(train.weights)} weights, strategy {code(train.strategy)})"
        )
    return (
        f"Classifier fine-tuned from {code(train.backbone)} ({esc(train.weights)} weights, "
        f"strategy {code(train.strategy)})"
    )


def parameter_rows(params: Params, task: str) -> list[str]:
    """``| train.<key> | value |`` rows: the detector's settings, or the classifier's ``TRAIN_KEYS``
    (``lp_epochs`` only for ``lp_ft``, where it is used), for a segmenter with its
    ``train.segmenter`` settings."""
    detector = getattr(params.train, "detector", None)
    if task == "detect" and detector is not None:
        return [
            f"| train.detector.{key} | {esc(value)} |"
            for key, value in detector.model_dump().items()
            if value is not None and value != {}
        ]
    train = params.train.model_dump()
    rows = [
        f"| train.{key} | {esc(train[key])} |"
        for key in TRAIN_KEYS
        if key in train
        and train[key] is not None
        and not (key == "lp_epochs" and params.train.strategy != "lp_ft")
        and not (key in SEGMENT_UNUSED and task == "segment")
    ]
    segmenter = train.get("segmenter")
    if task == "segment" and isinstance(segmenter, dict):
        rows += [f"| train.segmenter.{key} | {esc(value)} |" for key, value in segmenter.items()]
    return rows


def render(inputs: ReportInputs) -> Section:
    params, log_dir = inputs.params, inputs.layout.train_log_dir
    section = Section("Model")
    lines = section.lines
    lines += ["| parameter | value |", "|---|---|", f"| task | {inputs.task} |"]
    lines += parameter_rows(params, inputs.task)
    run_info = read_json(log_dir / "run.json", {})
    if "total_params" in run_info:
        lines.append(f"| parameters (total) | {run_info['total_params']:,} |")
    history = read_history(log_dir)
    if not history.empty:
        lines.append(f"| epochs run | {int(history['step'].max()) + 1} |")
    lines += [
        f"| seed | {params.base.seed} |",
        "",
        "All parameters: `params.yaml` (`dvc params diff` compares them between commits).",
    ]
    return section
