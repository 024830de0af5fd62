"""bench/bench_scale.py: the generated sets are really distinct images, and the fits are right."""

from __future__ import annotations

import hashlib
import json
from itertools import combinations

import pytest

from bench.bench_scale import (
    CLASSES,
    SIDE,
    amdahl_speedup,
    fit_exponent,
    generate_classify,
    generate_detect,
    parallel_efficiency,
)
from stages.dataprep.near_duplicates import hash_image


def _near_pairs(files, limit: int = 10) -> list[tuple[str, str]]:
    """Pairs within ``limit`` bits on both phash and dhash: what split would put in one cluster."""
    hashes = [hash_image(f, ("phash", "dhash")) for f in files]
    ints = [(int(h["phash"], 16), int(h["dhash"], 16)) for h in hashes]
    return [
        (files[i].name, files[j].name)
        for (i, a), (j, b) in combinations(enumerate(ints), 2)
        if (a[0] ^ b[0]).bit_count() <= limit and (a[1] ^ b[1]).bit_count() <= limit
    ]


def test_generated_classify_set_has_no_duplicates_or_near_duplicates(tmp_path):
    root = generate_classify(160, tmp_path / "c")
    files = sorted(root.rglob("*.jpg"))
    assert len(files) == 160
    assert {f.parent.name for f in files} == set(CLASSES)
    assert len({hashlib.sha256(f.read_bytes()).hexdigest() for f in files}) == 160
    assert _near_pairs(files) == []


def test_generated_detect_set_has_distinct_images_and_boxes_inside(tmp_path):
    root = generate_detect(120, tmp_path / "d")
    doc = json.loads((root / "annotations.json").read_text(encoding="utf-8"))
    assert len(doc["images"]) == 120
    assert {a["image_id"] for a in doc["annotations"]} == set(range(120))
    for ann in doc["annotations"]:
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= SIDE and y + h <= SIDE
    assert _near_pairs(sorted((root / "images").glob("*.jpg"))) == []


def test_generation_is_reused_when_complete(tmp_path):
    root = generate_classify(8, tmp_path / "c")
    marker = root / CLASSES[0] / "keep.txt"
    marker.write_text("x", encoding="utf-8")
    generate_classify(8, root)
    assert marker.is_file()  # not regenerated
    generate_classify(12, root)
    assert not marker.is_file()  # another size: regenerated


@pytest.mark.parametrize("k", [0.8, 1.0, 1.15, 2.0])
def test_fit_exponent_recovers_a_power_law(k):
    sizes = [1000, 10000, 50000]
    assert fit_exponent(sizes, [3e-4 * n**k for n in sizes]) == pytest.approx(k)


def test_fit_exponent_needs_two_sizes():
    with pytest.raises(ValueError):
        fit_exponent([1000, 1000], [1.0, 2.0])


def test_amdahl_extrapolation():
    assert amdahl_speedup(parallel_efficiency(10.0, 5.0), 2, 16) == pytest.approx(16)
    assert amdahl_speedup(parallel_efficiency(10.0, 10.0), 2, 16) == pytest.approx(1)
    # 1.5x on 2 workers: serial fraction 1/3, so 16 cores give 1 / (1/3 + 2/3/16) = 2.67x.
    assert amdahl_speedup(parallel_efficiency(15.0, 10.0), 2, 16) == pytest.approx(2.6667, rel=1e-3)
