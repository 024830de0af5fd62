"""Detection ``evaluate`` streams the split: decoded images held at once stay at one batch,
whatever the split's size (a 50,000-image test set must not be decoded into memory at once)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import stages.evaluate
from stages.core.contracts import boxes_frame, image_id_from_sha256, manifest_frame, write_json, write_parquet
from stages.core.hashing import sha256_file
from stages.core.layout import Layout
from stages.dataprep import imaging
from tests.conftest import detect_params, write_image

BATCH = 4


def _split_of(tmp_path: Path, images: int) -> tuple[Path, Layout]:
    """A validated manifest, boxes and split with ``images`` test images (no stage needed)."""
    source = tmp_path / "source"
    rows, boxes = [], []
    for i in range(images):
        file = write_image(source / f"im_{i:03d}.png", seed=i, size=(40, 32))
        sha = sha256_file(file)
        image_id = image_id_from_sha256(sha)
        rows.append(
            {
                "image_id": image_id,
                "path": file.name,
                "sha256": sha,
                "width": 40,
                "height": 32,
                "label": None,
                "group": None,
                "split": None,
                "source": "annotations.json",
            }
        )
        boxes.append(
            {"image_id": image_id, "class_name": "cat", "x_min": 4, "y_min": 4, "x_max": 20, "y_max": 20}
        )
    params = detect_params(tmp_path, source)
    layout = Layout(params.paths)
    manifest = manifest_frame(rows)
    write_parquet(manifest, layout.manifest)
    write_parquet(boxes_frame(boxes), layout.boxes)
    write_parquet(pd.DataFrame({"image_id": manifest["image_id"], "split": "test"}), layout.splits)
    write_json(["cat"], layout.classes)
    return source, layout


def _peak_held(tmp_path: Path, images: int, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """Evaluate with a fake detector: (most images decoded but not yet predicted, images predicted)."""
    from stages.engine.yolo import trainer

    source, _ = _split_of(tmp_path, images)
    state = {"decoded": 0, "predicted": 0, "peak": 0}
    real_load = imaging.load_rgb

    def counting_load(path: Path, *args):
        state["decoded"] += 1
        state["peak"] = max(state["peak"], state["decoded"] - state["predicted"])
        return real_load(path, *args)

    def fake_predict(model, batch_images: list[np.ndarray], image_size: int, device: str, **_) -> list[dict]:
        assert all(im.shape == (32, 40, 3) for im in batch_images)
        state["predicted"] += len(batch_images)
        box = np.array([[4.0, 4.0, 20.0, 20.0]])
        return [{"boxes": box, "scores": np.array([0.9]), "labels": np.array([0])} for _ in batch_images]

    monkeypatch.setattr(imaging, "load_rgb", counting_load)
    fake_model = (object(), {"classes": ["cat"], "conf": 0.25})
    monkeypatch.setattr(trainer, "load_detector", lambda path, record=None: fake_model)
    monkeypatch.setattr(trainer, "predict_boxes", fake_predict)
    params = detect_params(tmp_path, source, train={"feature_batch_size": BATCH}, evaluate={"bootstrap": 10})
    result = stages.evaluate.run(params)
    assert isinstance(result, stages.evaluate.DetectEvaluateResult)
    assert result.metrics["images"] == images
    assert result.metrics["map50"] == pytest.approx(1.0)  # every prediction lines up with its own image
    return state["peak"], state["predicted"]


def test_detection_evaluate_holds_one_batch_of_images_whatever_the_split_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = _peak_held(tmp_path / "small", 6, monkeypatch)
    large = _peak_held(tmp_path / "large", 22, monkeypatch)
    assert small == (BATCH, 6)
    assert large == (BATCH, 22)  # five times the images, the same number held at once
