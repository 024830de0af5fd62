"""The worst images of the Errors section: highest-loss images (classification) or the images with
the most missed and false boxes (detection), as a captioned grid and a table."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pandas as pd

from stages.reporting import figures
from stages.reporting.inputs import ReportInputs
from stages.reporting.markdown import code, esc, figure_lines, short

DEFAULT_THRESHOLD = 0.25  # ultralytics' default confidence, when evaluate recorded none


def classification(inputs: ReportInputs) -> list[str]:
    """The highest-loss images: every mistake first (most confidently wrong first); when there
    are fewer mistakes than ``report.mistakes``, the right answers the model was least sure of."""
    frame = inputs.predictions
    order = "loss" if "loss" in frame else "confidence"
    wrong = frame["label"] != frame["prediction"]
    ranked = frame.assign(wrong=wrong).sort_values(["wrong", order], ascending=False)
    shown = ranked.head(inputs.params.report.mistakes)
    lines = ["### Worst mistakes", ""]
    split = esc(inputs.metrics.get("split", "test"))
    if not wrong.any():
        intro = f"No mistakes: every image of the {split} split is classified right."
    else:
        intro = f"{int(wrong.sum())} of {len(frame)} images of the {split} split are misclassified."
    if shown.empty:
        return [*lines, intro]
    closest = int((~shown["wrong"]).sum())
    if closest == len(shown):
        detail = f" The {closest} right answers the model was least sure of (highest loss):"
    else:
        detail = (
            f" The {len(shown)} images with the highest loss (red: wrong, most confidently wrong first"
            + (f"; green: right, the {closest} the model was least sure of" if closest else "")
            + "):"
        )
    lines += [intro + detail, ""]
    source = Path(inputs.params.data.source)
    tiles = [
        figures.Tile(
            source / row["path"],
            [
                f"true: {row['label']}",
                f"predicted: {row['prediction']} ({row['confidence']:.2f})",
                f"loss {row.get('loss', float('nan')):.2f} · {short(Path(row['path']).name, 24)}",
            ],
            colour=figures.BAD if row["wrong"] else figures.GOOD,
        )
        for _, row in shown.iterrows()
    ]
    drawn = figures.image_grid(tiles, inputs.fig_path("mistakes.png"))
    lines += figure_lines([(drawn, "highest-loss images")], inputs.here)
    lines += ["| image | true | predicted | confidence | loss |", "|---|---|---|---|---|"]
    lines += [
        f"| {code(row['path'], table=True)} | {esc(row['label'])} "
        f"| {esc(row['prediction'])}{'' if row['wrong'] else ' (right)'} "
        f"| {row['confidence']:.3f} | {row.get('loss', float('nan')):.3f} |"
        for _, row in shown.iterrows()
    ]
    return lines


def detection_threshold(metrics: dict[str, Any], f1_rows: list[dict[str, Any]]) -> float:
    """evaluate's operating threshold, else the confidence where mean F1 over classes peaks."""
    if metrics.get("confidence_threshold") is not None:
        return float(metrics["confidence_threshold"])
    if not f1_rows:
        return DEFAULT_THRESHOLD
    frame = pd.DataFrame(f1_rows)
    frame["confidence"] = frame["confidence"].round(2)
    mean = frame.groupby("confidence")["f1"].mean()
    return float(cast(float, mean.idxmax())) if len(mean) else DEFAULT_THRESHOLD


def visible_boxes(frame: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Every true box, and the predictions scoring at least ``threshold``."""
    return frame[(frame["kind"] == "truth") | (frame["score"] >= threshold)]


def box_errors(shown: pd.DataFrame) -> pd.DataFrame:
    """Per image with an error: missed true boxes and false predictions among ``shown``, worst first."""
    missed = shown[(shown["kind"] == "truth") & (shown["outcome"] == "missed")].groupby("image_id").size()
    false = shown[(shown["kind"] == "prediction") & (shown["outcome"] == "fp")].groupby("image_id").size()
    errors = pd.DataFrame({"missed": missed, "false": false}).fillna(0).astype(int)
    errors["total"] = errors["missed"] + errors["false"]
    return errors[errors["total"] > 0].sort_values(["total", "missed"], ascending=False)


def detection(inputs: ReportInputs) -> list[str]:
    frame = inputs.predictions
    threshold = detection_threshold(inputs.metrics, inputs.plot_rows("f1_confidence.json"))
    shown = visible_boxes(frame, threshold)
    errors = box_errors(shown)
    worst = errors.head(inputs.params.report.mistakes)
    lines = ["### Images with the most missed and false boxes", ""]
    if worst.empty:
        lines.append(f"None at confidence >= {threshold:.2f}: every box is found and no false box is drawn.")
        return lines
    lines += [
        f"{len(errors)} of {inputs.metrics.get('images', '?')} images have a missed or a false box at "
        f"confidence >= {threshold:.2f} (the operating threshold); the {len(worst)} worst:",
        "",
    ]
    source = Path(inputs.params.data.source)
    tiles = []
    for image_id, counts in worst.iterrows():
        boxes = shown[shown["image_id"] == image_id]
        path = boxes["path"].iloc[0]
        tiles.append(
            figures.Tile(
                source / path,
                [f"{counts['missed']} missed, {counts['false']} false", short(Path(path).name, 30)],
                boxes=[_drawn_box(box) for _, box in boxes.iterrows()],
            )
        )
    drawn = figures.image_grid(tiles, inputs.fig_path("mistakes.png"), columns=3, thumb=3.4)
    lines += figure_lines([(drawn, "images with missed and false boxes")], inputs.here)
    lines += ["| image | missed | false |", "|---|---|---|"]
    paths = frame.drop_duplicates("image_id").set_index("image_id")["path"].to_dict()
    lines += [f"| {code(paths[i], table=True)} | {c['missed']} | {c['false']} |" for i, c in worst.iterrows()]
    return lines


def _drawn_box(box: pd.Series) -> dict[str, Any]:
    """A box as the grid draws it: truth found green, truth missed orange dashed with its class,
    a correct prediction blue and a false one red, both with class and score."""
    if box["kind"] == "truth":
        missed = box["outcome"] == "missed"
        colour, dashed = (figures.MISSED, True) if missed else (figures.GOOD, False)
        label = box["class_name"] if missed else None
    else:
        colour = figures.NEUTRAL if box["outcome"] == "tp" else figures.BAD
        dashed, label = False, f"{box['class_name']} {box['score']:.2f}"
    return {
        **{k: box[k] for k in ("x_min", "y_min", "x_max", "y_max")},
        "colour": colour,
        "dashed": dashed,
        "label": label,
    }
