"""Augmentation policies: built from params, validated, saved, reloaded identically, seeded;
boxes move with the pixels; val/test images never reach a policy."""

from __future__ import annotations

import hashlib
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import pytest

from stages import augment
from stages.core.contracts import manifest_frame, read_parquet, write_parquet
from stages.core.errors import ParamsError
from stages.core.layout import Layout
from stages.core.params import AugmentSection, BboxSection, TransformSpec
from stages.dataprep import augmentation
from stages.dataprep.imaging import load_rgb
from stages.reporting import previews
from tests.conftest import fast_params, write_image

BOXES = np.array([[10.0, 20.0, 50.0, 60.0], [150.0, 10.0, 190.0, 90.0]])  # on a 200 x 100 image


def _detect_policy(*transforms: A.BasicTransform, **bbox: float) -> A.Compose:
    return A.Compose(list(transforms), bbox_params=augmentation.bbox_params(BboxSection(**bbox)), seed=0)


def _marked_image(boxes: np.ndarray, shape: tuple[int, int] = (100, 200)) -> np.ndarray:
    """Black image with each box painted white, so the pixels show where a box must end up."""
    image = np.zeros((*shape, 3), np.uint8)
    for x_min, y_min, x_max, y_max in boxes.astype(int):
        image[y_min:y_max, x_min:x_max] = 255
    return image


def _white_extent(image: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(image[..., 0] > 127)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


# ---- presets and params --------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["classify", "detect"])
@pytest.mark.parametrize("preset", sorted(augmentation.PRESETS))
def test_every_preset_builds_for_both_tasks_without_vertical_flip(preset: str, task: str) -> None:
    policy = augmentation.build_policy(AugmentSection(preset=preset), seed=0, task=task)
    names = [type(t).__name__ for t in policy.transforms]
    assert "VerticalFlip" not in names
    assert len(names) == len(augmentation.PRESETS[preset])
    assert ("bboxes" in policy.processors) == (task == "detect")


def test_detection_policy_carries_the_box_rules_from_params() -> None:
    section = AugmentSection(bbox=BboxSection(min_visibility=0.4, min_area=9))
    rules = augmentation.build_policy(section, seed=0, task="detect").processors["bboxes"].params
    assert (rules.format, rules.label_fields) == ("pascal_voc", ["class_labels"])
    assert (rules.min_visibility, rules.min_area, rules.clip) == (0.4, 9, True)


def test_explicit_transforms_replace_the_preset() -> None:
    section = AugmentSection(
        preset="heavy", transforms=(TransformSpec(name="HorizontalFlip", params={"p": 1.0}),)
    )
    policy = augmentation.build_policy(section, seed=0)
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    assert [type(t).__name__ for t in policy.transforms] == ["HorizontalFlip"]
    np.testing.assert_array_equal(policy(image=image)["image"], image[:, ::-1])


def test_an_explicit_list_may_nest_a_one_of() -> None:
    spec = TransformSpec(
        name="OneOf",
        params={"transforms": [{"name": "InvertImg"}, {"name": "ToGray", "params": {"p": 1}}], "p": 1.0},
    )
    policy = augmentation.build_policy(AugmentSection(transforms=(spec,)), seed=0)
    assert [type(t).__name__ for t in policy.transforms[0].transforms] == ["InvertImg", "ToGray"]
    image = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    assert not np.array_equal(augmentation.augment_image(policy, image, 1), image)


@pytest.mark.parametrize(
    ("spec", "task", "fragment"),
    [
        (TransformSpec(name="HorizontalFlipp"), "classify", "'HorizontalFlipp' is not a transform"),
        (TransformSpec(name="HorizontalFlip", params={"q": 1}), "classify", "'q'"),
        (TransformSpec(name="HorizontalFlip", params={"p": 3}), "classify", "less than or equal to 1"),
        (TransformSpec(name="ToTensorV2"), "classify", "'ToTensorV2' does not return an image array"),
        (TransformSpec(name="CenterCrop3D", params={"size": [2, 2, 2]}), "classify", "its targets:"),
        (TransformSpec(name="OverlayElements"), "detect", "'OverlayElements' moves pixels but not bounding"),
        (TransformSpec(name="OneOf", params={"p": 1}), "classify", "OneOf needs params.transforms"),
        (
            TransformSpec(name="OneOf", params={"transforms": [{"name": "Blurr"}]}),
            "classify",
            "'Blurr' is not a transform",
        ),
    ],
)
def test_bad_transform_is_one_sentence_naming_it_and_the_version(spec, task, fragment) -> None:
    with pytest.raises(ParamsError) as caught:
        augmentation.build_policy(AugmentSection(transforms=(spec,)), seed=0, task=task)
    message = str(caught.value)
    assert fragment in message
    assert "\n" not in message
    if "needs params.transforms" not in message:
        assert f"albumentations {A.__version__}" in message


def test_overlay_elements_is_fine_for_classification() -> None:
    section = AugmentSection(transforms=(TransformSpec(name="OverlayElements"),))
    assert augmentation.build_policy(section, seed=0, task="classify").transforms


# ---- round trip and seeding ----------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["default", "heavy"])
def test_policy_round_trip_params_to_file_to_policy_gives_the_same_views(preset: str, tmp_path: Path) -> None:
    policy = augmentation.build_policy(AugmentSection(preset=preset), seed=7)
    file = tmp_path / "policy.json"
    A.save(policy, str(file), data_format="json")
    loaded = augmentation.load_policy(file)
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    for seed in (1, 2, 3):
        np.testing.assert_array_equal(
            augmentation.augment_image(policy, image, seed), augmentation.augment_image(loaded, image, seed)
        )
    views = {augmentation.augment_image(policy, image, s).tobytes() for s in range(8)}
    assert len(views) > 1  # the seed really changes the view


def test_detection_round_trip_keeps_boxes_and_rules(tmp_path: Path) -> None:
    section = AugmentSection(preset="heavy", bbox=BboxSection(min_visibility=0.3, min_area=10))
    policy = augmentation.build_policy(section, seed=3, task="detect")
    A.save(policy, str(tmp_path / "policy.json"), data_format="json")
    loaded = augmentation.load_policy(tmp_path / "policy.json")
    assert loaded.processors["bboxes"].params.min_visibility == 0.3
    assert loaded.processors["bboxes"].params.min_area == 10
    image = np.random.default_rng(1).integers(0, 255, (100, 200, 3), dtype=np.uint8)
    for seed in range(5):
        first = augmentation.augment_sample(policy, image, BOXES, ["a", "b"], seed)
        second = augmentation.augment_sample(loaded, image, BOXES, ["a", "b"], seed)
        np.testing.assert_array_equal(first[0], second[0])
        np.testing.assert_array_equal(first[1], second[1])
        assert first[2] == second[2]


def test_transforms_draw_independently_for_each_seed() -> None:
    """Per-call reseeding must not give every transform the same draw (they would always co-occur)."""
    section = AugmentSection(
        transforms=(
            TransformSpec(name="HorizontalFlip", params={"p": 0.5}),
            TransformSpec(name="InvertImg", params={"p": 0.5}),
        )
    )
    policy = augmentation.build_policy(section, seed=0)
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    states = {
        (False, False): image,
        (True, False): image[:, ::-1],
        (False, True): 255 - image,
        (True, True): 255 - image[:, ::-1],
    }
    counts = dict.fromkeys(states, 0)
    for seed in range(400):
        out = augmentation.augment_image(policy, image, seed)
        counts[next(k for k, v in states.items() if np.array_equal(out, v))] += 1
    assert all(60 <= n <= 140 for n in counts.values()), counts  # about 100 each


def test_augment_image_on_a_detection_policy_matches_augment_sample() -> None:
    """The classifier-style call and the box-aware call see the same geometry for one seed."""
    policy = augmentation.build_policy(AugmentSection(preset="heavy"), seed=0, task="detect")
    image = np.random.default_rng(2).integers(0, 255, (100, 200, 3), dtype=np.uint8)
    for seed in range(4):
        alone = augmentation.augment_image(policy, image, seed)
        with_boxes, _, _ = augmentation.augment_sample(policy, image, BOXES, ["a", "b"], seed)
        np.testing.assert_array_equal(alone, with_boxes)


# ---- boxes ---------------------------------------------------------------------------------------


def test_horizontal_flip_moves_a_box_to_width_minus_x() -> None:
    policy = _detect_policy(A.HorizontalFlip(p=1))
    out, boxes, labels = augmentation.augment_sample(policy, _marked_image(BOXES), BOXES, ["a", "b"], seed=0)
    width = 200
    expected = np.stack([width - BOXES[:, 2], BOXES[:, 1], width - BOXES[:, 0], BOXES[:, 3]], axis=1)
    np.testing.assert_allclose(boxes, expected, atol=1e-3)
    assert labels == ["a", "b"]
    np.testing.assert_allclose(_white_extent(_marked_image(boxes.round())), _white_extent(out))


def test_a_box_partly_outside_the_input_is_clipped_before_flipping() -> None:
    policy = _detect_policy(A.HorizontalFlip(p=1))
    _, boxes, _ = augmentation.augment_sample(policy, _marked_image(BOXES), [[-10, 5, 30, 40]], ["a"], seed=0)
    np.testing.assert_allclose(boxes, [[170, 5, 200, 40]], atol=1e-3)


def test_crop_keeps_inside_boxes_clips_partial_ones_and_drops_those_that_left() -> None:
    boxes = np.array([[10, 20, 50, 60], [100, 10, 140, 90], [150, 10, 190, 90]], dtype=float)
    policy = _detect_policy(A.Crop(x_min=0, y_min=0, x_max=120, y_max=100, p=1), min_visibility=0.3)
    out, moved, labels = augmentation.augment_sample(
        policy, _marked_image(boxes), boxes, ["inside", "half", "outside"], seed=0
    )
    assert out.shape == (100, 120, 3)
    assert labels == ["inside", "half"]
    np.testing.assert_allclose(moved, [[10, 20, 50, 60], [100, 10, 120, 90]], atol=1e-3)


@pytest.mark.parametrize(("min_visibility", "kept"), [(0.3, ["visible"]), (0.2, ["visible", "hidden"])])
def test_min_visibility_drops_mostly_hidden_boxes(min_visibility: float, kept: list[str]) -> None:
    # After cropping at x = 120, the second box keeps 10 of its 40 px width: 25 % visible.
    boxes = np.array([[10, 20, 50, 60], [110, 10, 150, 90]], dtype=float)
    policy = _detect_policy(A.Crop(x_max=120, y_max=100, p=1), min_visibility=min_visibility)
    _, _, labels = augmentation.augment_sample(policy, _marked_image(boxes), boxes, ["visible", "hidden"], 0)
    assert labels == kept


def test_min_area_drops_boxes_that_shrink_below_it() -> None:
    boxes = np.array([[10, 20, 50, 60], [116, 10, 130, 90]], dtype=float)  # 4 x 80 px survive the crop
    policy = _detect_policy(A.Crop(x_max=120, y_max=100, p=1), min_area=400)
    _, moved, labels = augmentation.augment_sample(policy, _marked_image(boxes), boxes, ["big", "sliver"], 0)
    assert labels == ["big"] and moved.shape == (1, 4)


def test_affine_rotation_by_90_degrees_maps_the_box_counter_clockwise() -> None:
    boxes = np.array([[10.0, 20.0, 30.0, 60.0]])
    image = _marked_image(boxes, shape=(100, 100))
    policy = _detect_policy(A.Affine(rotate=(90, 90), p=1))
    out, moved, _ = augmentation.augment_sample(policy, image, boxes, ["a"], seed=0)
    # (x, y) -> (y, W - x): the box's top edge becomes its left edge.
    np.testing.assert_allclose(moved, [[20, 70, 60, 90]], atol=1.0)
    np.testing.assert_allclose(moved[0], _white_extent(out), atol=1.0)


@pytest.mark.parametrize("seed", range(4))
def test_random_rotate90_boxes_follow_the_pixels(seed: int) -> None:
    image = _marked_image(BOXES[:1])
    policy = _detect_policy(A.RandomRotate90(p=1))
    out, moved, _ = augmentation.augment_sample(policy, image, BOXES[:1], ["a"], seed=seed)
    np.testing.assert_allclose(moved[0], _white_extent(out), atol=1.0)


@pytest.mark.parametrize("preset", ["default", "heavy"])
def test_preset_boxes_stay_inside_the_frame_and_labels_stay_in_step(preset: str) -> None:
    policy = augmentation.build_policy(AugmentSection(preset=preset), seed=0, task="detect")
    image = _marked_image(BOXES)
    for seed in range(20):
        out, moved, labels = augmentation.augment_sample(policy, image, BOXES, ["a", "b"], seed)
        height, width = out.shape[:2]
        assert len(moved) == len(labels) and set(labels) <= {"a", "b"}
        assert (
            (moved[:, [0, 1]] >= 0).all() and (moved[:, 2] <= width).all() and (moved[:, 3] <= height).all()
        )
        assert (moved[:, 2] > moved[:, 0]).all() and (moved[:, 3] > moved[:, 1]).all()


def test_augment_sample_refuses_a_policy_without_box_rules() -> None:
    policy = augmentation.build_policy(AugmentSection(preset="light"), seed=0, task="classify")
    with pytest.raises(ValueError, match="detection policy"):
        augmentation.augment_sample(policy, _marked_image(BOXES), BOXES, ["a", "b"], seed=0)


# ---- the stage ------------------------------------------------------------------------------------


def test_detection_stage_saves_a_box_aware_policy_and_draws_boxes_in_the_preview(tmp_path, monkeypatch):
    source = tmp_path / "source"
    rows, boxes, splits = [], [], []
    for i in range(6):
        file = write_image(source / f"img_{i}.png", seed=i, size=(80, 60))
        sha = hashlib.sha256(file.read_bytes()).hexdigest()
        image_id = sha[:16]
        rows.append({"image_id": image_id, "path": file.name, "sha256": sha, "width": 80, "height": 60})
        boxes.append({"image_id": image_id, "class_name": "raccoon", "x_min": 5.0, "y_min": 5.0,
                      "x_max": 40.0, "y_max": 30.0})  # fmt: skip
        splits.append({"image_id": image_id, "split": "train" if i < 4 else "val"})
    params = fast_params(
        tmp_path, source, data={"task": "detect"}, augment={"preview": {"images": 3, "views": 2}}
    )
    layout = Layout(params.paths)
    write_parquet(manifest_frame(rows), layout.manifest)
    write_parquet(pd.DataFrame(splits), layout.splits)
    write_parquet(pd.DataFrame(boxes), layout.boxes)
    drawn: list[int] = []
    real_draw = previews._draw_boxes
    monkeypatch.setattr(
        previews, "_draw_boxes", lambda ax, c, n, k: (drawn.append(len(n)), real_draw(ax, c, n, k))
    )

    result = augment.run(params)

    policy = augmentation.load_policy(result.policy_file)
    assert policy.processors["bboxes"].params.min_visibility == params.augment.bbox.min_visibility
    assert result.preview_file is not None and result.preview_file.stat().st_size > 5000
    assert len(drawn) == 3 * (1 + 2)  # 3 training images x (original + 2 views), boxes on each panel
    assert drawn[0] == 1


# ---- val/test never augmented ----------------------------------------------------------------------


def _pixel_hash(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


@pytest.mark.parametrize("strategy", ["linear_probe", "full"])
def test_val_and_test_images_never_reach_the_policy(strategy, tmp_path, classify_source, monkeypatch):
    """Run the stages up to train on tiny data; record every image the trainer applies any Compose to."""
    from stages import ingest, split, train, validate

    invert = [{"name": "InvertImg", "params": {"p": 1.0}}]  # an augmented view is unmistakable
    params = fast_params(  # both strategies must exist: a ParamsError here fails the test
        tmp_path,
        classify_source,
        augment={"transforms": invert},
        train={"strategy": strategy, "epochs": 1},
    )
    for stage in (ingest, validate, split, augment):
        stage.run(params)
    seen: list[str] = []
    real_call = A.Compose.__call__

    def spy(self, *args, force_apply=False, **data):
        seen.append(_pixel_hash(data["image"]))
        return real_call(self, *args, force_apply=force_apply, **data)

    monkeypatch.setattr(A.Compose, "__call__", spy)
    train.run(params)

    layout = Layout(params.paths)
    frame = read_parquet(layout.manifest).merge(
        read_parquet(layout.splits), on="image_id", suffixes=("_", "")
    )
    by_split = {
        name: {_pixel_hash(np.asarray(load_rgb(params.data.source / p))) for p in rows["path"]}
        for name, rows in frame.groupby("split")
    }
    assert by_split["val"] and by_split["test"]
    assert set(seen) & by_split["train"], "the policy was never applied to a training image"
    assert not set(seen) & (by_split["val"] | by_split["test"])
