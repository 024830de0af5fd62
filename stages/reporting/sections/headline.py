"""The headline: the main metric in a sentence, every headline metric with its interval and meaning."""

from __future__ import annotations

from typing import Any

from stages.metrics.names import LOWER_IS_BETTER, headline_names
from stages.reporting import figures
from stages.reporting.inputs import ReportInputs
from stages.reporting.markdown import Section, esc, figure_lines, interval, num

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
    "miou": "intersection over union of predicted and true pixels per class, mean over classes",
    "dice_macro": "Dice (pixel F1): twice the overlap over both areas per class, mean over classes",
    "pixel_accuracy": "share of scored pixels whose predicted class is right",
    "mean_accuracy": "share of each class's pixels found (pixel recall), mean over classes",
    "fw_iou": "IoU per class weighted by the class's share of the true pixels",
}
WIDE = 0.1  # an interval wider than this gets a sentence on the split's size


def render(inputs: ReportInputs) -> Section:
    m, names = inputs.metrics, headline_names(inputs.metrics, inputs.task)
    evaluate = inputs.params.evaluate
    level = evaluate.confidence
    section = Section(f"Headline ({esc(m.get('split', '?'))} split, {esc(m.get('images', '?'))} images)")
    lines = section.lines
    main = names[0] if names else None
    exact = None
    if main and m.get(main) is not None:
        lines += [_main_sentence(m, main, level), ""]
        exact = exact_interval(m, main, level)
        if exact:
            lines += [
                f"> Every resample gives the same {main}, so the bootstrap interval has no width; that "
                f"is not certainty. With {round(m[main] * m['images'])} of {m['images']} images right, "
                f"the exact binomial {level:.0%} interval is **{exact[0]:.3f} to {exact[1]:.3f}** "
                "(dashed in the figure).",
                "",
            ]
    header = f"{level:.0%} interval ({evaluate.bootstrap} resamples)" if evaluate.bootstrap else "interval"
    lines += [f"| metric | value | {header} | meaning |", "|---|---|---|---|"]
    lines += [f"| {esc(name)} | {num(m[name])} | {interval(m, name)} | {meaning(name)} |" for name in names]
    lines.append("")
    if names:
        drawn = figures.headline(
            m,
            names,
            inputs.fig_path("headline.png"),
            level,
            LOWER_IS_BETTER,
            exact={main: exact} if main and exact else None,
        )
        lines += figure_lines([(drawn, "headline metrics with intervals")], inputs.here)
    if inputs.task == "classify" and not any(n.startswith("top") for n in names):
        lines += [f"Top-{evaluate.top_k} accuracy is not listed: with this few classes it is 1.", ""]
    return section


def _main_sentence(m: dict[str, Any], main: str, level: float) -> str:
    low, high = m.get(f"{main}_ci_low"), m.get(f"{main}_ci_high")
    sentence = f"**{main} {m[main]:.3f}**"
    if low is not None and high is not None:
        sentence += f" ({level:.0%} bootstrap interval {low:.3f} to {high:.3f})"
        if high - low > WIDE:
            sentence += (
                f". The interval is wide: the {m.get('split', 'test')} split has "
                f"{m.get('images', '?')} images, and a larger one would narrow it"
            )
    return sentence + "."


def meaning(name: str) -> str:
    """What a headline metric measures, in words (``topK_accuracy`` for any K)."""
    if name.startswith("top") and name.endswith("_accuracy"):
        return f"share of images whose true class is among the {name[3:-9]} highest scores"
    return MEANING.get(name, "")


def exact_interval(metrics: dict[str, Any], name: str, level: float) -> tuple[float, float] | None:
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
