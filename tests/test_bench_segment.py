"""bench/bench_segment.py's pure parts: the photo rule, the vendor fractions, the table."""

from __future__ import annotations

import re
from pathlib import Path

from bench.bench_segment import PHOTO_PATTERN, photo_of, render, split_sections, vendor_fractions
from stages.core.params import parse_params

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo" / "segment"


def test_photo_pattern_joins_the_two_halves_of_a_photo() -> None:
    a = "train/IMG_0718_scaled_0_png_jpg.rf.005f2a1d7ef6a5abfbdd3a6c9e81608d.jpg"
    b = "valid/IMG_0718_scaled_1_png_jpg.rf.1234abcd1234abcd1234abcd1234abcd.jpg"
    c = "IMG_0719_scaled_1_png_jpg.rf.1234abcd1234abcd1234abcd1234abcd.jpg"
    assert photo_of(a) == photo_of(b) == "IMG_0718"
    assert photo_of(c) == "IMG_0719"
    names = sorted(p.name for p in DEMO.glob("*.jpg"))
    groups = [re.search(PHOTO_PATTERN, n) for n in names]
    assert names and all(groups)  # every demo file has a photo


def test_vendor_fractions_are_valid_split_params() -> None:
    fractions = vendor_fractions({"train": 407, "valid": 108, "test": 83})
    assert abs(sum(fractions.values()) - 1) < 1e-9
    assert round(fractions["test"] * 598) == 83
    for kind in ("leaky", "grouped"):
        data = {"source": "data/demo/segment", "format": "coco", "task": "segment"}
        parse_params({"data": data, "split": split_sections(kind, fractions)})  # loads without error


def test_render_shows_both_splits_and_the_largest_classes() -> None:
    per_class = [
        {"class": "background", "iou": 0.9, "pixels": 10_000},
        {"class": "facade", "iou": 0.5, "pixels": 5_000},
        {"class": "window", "iou": 0.4, "pixels": 3_000},
        {"class": "car", "iou": 0.1, "pixels": 10},
        {"class": "shop", "iou": None, "pixels": 20},
    ]

    def run(miou: float) -> dict:
        metrics = {"miou": miou, "miou_ci_low": miou - 0.05, "miou_ci_high": miou + 0.05}
        metrics["pixel_accuracy"] = 0.8
        return {"metrics": metrics, "per_class": per_class, "train_s": 120.0, "evaluate_s": 9.0}

    facts = {"sizes": {"train": 1, "val": 1, "test": 1}, "leakage": {"groups": 3}}
    results = {
        "config": {
            "epochs": 2,
            "image_size": 64,
            "batch": 4,
            "decoder": "unet",
            "backbone": "efficientnet_lite0",
            "cpus": 2,
            "threads": None,
            "scratch_lr_mult": 1.0,
            "bootstrap": 10,
        },
        "splits": {"leaky": facts, "grouped": facts},
        "runs": {"grouped/full": run(0.4), "leaky/full": run(0.5)},
    }
    text = render(results)
    assert "IoU facade | IoU window | IoU shop" in text
    assert "0.400 [0.350, 0.450]" in text and "+0.100 mIoU" in text
