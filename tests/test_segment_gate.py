"""The metric gate on segmentation records (``data.task: segment``): a paired bootstrap of mIoU
over the same images, decided by ``pipelines.gate.decide`` (no git, no DVC: two documents)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines import gate
from pipelines.gate_params import GateSection
from pipelines.gate_stats import Bootstrap, detectable_drops
from stages.metrics import segmentation as seg
from stages.metrics.paired import SegmentRecords, dumps, parse, segment_document

CLASSES = ["background", "wall", "window"]
IMAGES = 40


def confusions(seed: int, wrong: float) -> np.ndarray:
    """Per-image confusions of 16x16 masks where a share ``wrong`` of pixels is predicted as
    another class (the same truths for every seed: only the predictions change)."""
    truth_rng, rng = np.random.default_rng(0), np.random.default_rng(seed)
    out = []
    for _ in range(IMAGES):
        truth = truth_rng.choice(3, size=(4, 4), p=[0.5, 0.3, 0.2]).repeat(4, 0).repeat(4, 1)
        flip = rng.random(truth.shape) < wrong
        prediction = np.where(flip, (truth + 1) % 3, truth)
        out.append(seg.confusion(truth, prediction, 3))
    return np.stack(out)


def records(cms: np.ndarray) -> SegmentRecords:
    ids = [f"img{i:02d}" for i in range(len(cms))]
    parsed = parse(dumps(segment_document(ids, cms, CLASSES)), "per_image.json")
    assert isinstance(parsed, SegmentRecords)
    return parsed


def metrics(cms: np.ndarray) -> dict:
    headline, _ = seg.summarise(cms, CLASSES, 0, 0.95, 0)
    return {"task": "segment", **headline, "split": "test", "images": len(cms), "split_hash": "abc"}


SETTINGS = gate.Settings(GateSection(), bootstrap=300, confidence=0.95, seed=42)


def decide(base: np.ndarray, new: np.ndarray) -> gate.Decision:
    return gate.decide(metrics(base), metrics(new), records(base), records(new), SETTINGS, "segment",
                       False, "`main`", "reports/per_image.json")  # fmt: skip


def test_the_same_segmenter_passes_with_zero_difference() -> None:
    base = confusions(1, 0.1)
    decision = decide(base, base.copy())
    assert decision.code == gate.PASS
    assert [r.rule.name for r in decision.rows] == ["miou", "dice_macro"]  # the segment defaults
    assert all(r.change == 0 and r.low == 0 and r.high == 0 for r in decision.rows)


def test_a_worse_segmenter_fails_on_miou() -> None:
    decision = decide(confusions(1, 0.05), confusions(2, 0.35))
    assert decision.code == gate.REGRESSION
    miou = decision.rows[0]
    assert miou.rule.name == "miou" and miou.verdict == "regression"
    assert miou.high is not None and miou.high < -0.01
    assert "miou" in decision.summary


def test_images_in_another_order_are_paired_by_id() -> None:
    base = confusions(1, 0.1)
    new = records(base).reorder(np.arange(IMAGES)[::-1])
    decision = gate.decide(metrics(base), metrics(base), records(base), new, SETTINGS, "segment",
                           False, "`main`", "reports/per_image.json")  # fmt: skip
    assert decision.code == gate.PASS and decision.rows[0].change == 0


def test_changed_masks_cannot_be_compared() -> None:
    base = confusions(1, 0.1)
    other = base.copy()
    other[0, 1, 1] -= 1  # a pixel moved to another true class: not the same test set
    other[0, 2, 1] += 1
    decision = decide(base, other)
    assert decision.code == gate.CANNOT_COMPARE and "labels differ" in decision.summary


def test_the_smallest_detectable_drop_is_found_for_miou() -> None:
    base = records(confusions(1, 0.05))
    boot = Bootstrap(base, ["miou", "pixel_accuracy"], 200, 0.95, 0)
    drops = detectable_drops(boot, {"miou": (0.01, True), "pixel_accuracy": (0.01, True)}, 0)
    drop, images = drops["miou"] or (None, None)
    assert drop is not None and images is not None and 0 < drop < 1 and 0 < images <= IMAGES
    flagged = boot.compare(base.degrade(base.candidates(0)[:images]))["miou"]
    assert gate.stats.rule(flagged, 0.01, True) == gate.stats.REGRESSION


@pytest.mark.parametrize("name", ["miou", "dice_macro", "pixel_accuracy", "mean_accuracy", "fw_iou"])
def test_every_segment_headline_metric_can_be_watched(name: str) -> None:
    cms = confusions(1, 0.1)
    point = records(cms).values(np.ones((1, IMAGES)), [name])[name][0]
    assert point == pytest.approx(metrics(cms)[name], abs=1e-6)
