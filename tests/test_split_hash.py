"""The evaluation-set fingerprint that the metric gate compares between runs."""

import pandas as pd

from stages.core.contracts import split_hash


def _images(shas, labels):
    return pd.DataFrame({"image_id": [s[:4] for s in shas], "sha256": shas, "label": labels})


def test_order_and_paths_do_not_matter():
    a = _images(["aaaa1", "bbbb2", "cccc3"], ["x", "y", "x"])
    assert split_hash(a) == split_hash(a.iloc[::-1].assign(path=["p", "q", "r"]))


def test_changed_image_or_label_changes_the_hash():
    a = _images(["aaaa1", "bbbb2"], ["x", "y"])
    assert split_hash(a) != split_hash(_images(["aaaa1", "bbbb3"], ["x", "y"]))
    assert split_hash(a) != split_hash(_images(["aaaa1", "bbbb2"], ["x", "x"]))
    assert split_hash(a) != split_hash(a.iloc[:1])


def test_boxes_enter_the_detection_hash():
    a = _images(["aaaa1", "bbbb2"], [pd.NA, pd.NA])
    box = {"image_id": "aaaa", "class_name": "raccoon", "x_min": 1.0, "y_min": 2.0, "x_max": 30.0}
    boxes = pd.DataFrame([{**box, "y_max": 40.0}])
    moved = pd.DataFrame([{**box, "y_max": 41.0}])
    assert split_hash(a, boxes) != split_hash(a)
    assert split_hash(a, boxes) != split_hash(a, moved)
    assert split_hash(a, boxes) == split_hash(a.iloc[::-1], boxes)
