"""The saved policy runs inside ultralytics' YOLO training pipeline, with our box rules, on train only."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import albumentations as A
import numpy as np
import pytest
import yaml
from PIL import Image

from stages.core.params import AugmentSection, BboxSection
from stages.dataprep.augmentation import bbox_params, build_policy


@pytest.fixture(scope="module")
def ul() -> SimpleNamespace:
    """ultralytics and our hook, imported only when these tests run.

    Importing ultralytics replaces ``PIL.Image.open`` for the whole process; imported at
    collection time it would change what every other test module sees.
    """
    from ultralytics.cfg import DEFAULT_CFG
    from ultralytics.data.augment import Albumentations
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.utils import IterableSimpleNamespace
    from ultralytics.utils.callbacks import get_default_callbacks

    from stages.engine.yolo import augment as yolo_augment

    return SimpleNamespace(
        DEFAULT_CFG=DEFAULT_CFG,
        Albumentations=Albumentations,
        YOLODataset=YOLODataset,
        IterableSimpleNamespace=IterableSimpleNamespace,
        get_default_callbacks=get_default_callbacks,
        hook=yolo_augment,
    )


SIZE = 64
BOX = (8, 16, 40, 32)  # x_min, y_min, x_max, y_max in pixels of every image
SMALL_BOX = (0, 40, 8, 56)


def _write_split(root: Path, split: str, count: int, colour=(255, 255, 255), boxes=(BOX,)) -> Path:
    images, labels = root / split / "images", root / split / "labels"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for i in range(count):
        pixels = np.zeros((SIZE, SIZE, 3), np.uint8)
        lines = []
        for x_min, y_min, x_max, y_max in boxes:
            pixels[y_min:y_max, x_min:x_max] = colour
            cx, cy = (x_min + x_max) / 2 / SIZE, (y_min + y_max) / 2 / SIZE
            lines.append(f"0 {cx} {cy} {(x_max - x_min) / SIZE} {(y_max - y_min) / SIZE}\n")
        Image.fromarray(pixels).save(images / f"{split}_{i}.png")
        (labels / f"{split}_{i}.txt").write_text("".join(lines))
    return images


def _dataset(ul: SimpleNamespace, images: Path, augment: bool = True):
    hyp = ul.IterableSimpleNamespace(**{**vars(ul.DEFAULT_CFG), **ul.hook.BUILTIN_AUGMENTATION_OFF})
    return ul.YOLODataset(
        img_path=str(images), imgsz=SIZE, augment=augment, hyp=hyp, data={"names": {0: "box"}, "channels": 3}
    )


def _policy(*transforms: A.BasicTransform, **rules: float) -> A.Compose:
    return A.Compose(list(transforms), bbox_params=bbox_params(BboxSection(**rules)), seed=0)


def _pixels_xyxy(sample: dict) -> np.ndarray:
    """The sample's boxes (normalised xywh after ultralytics' Format) as pixel corners."""
    xywh = sample["bboxes"].numpy() * SIZE
    return np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], axis=1)


@pytest.fixture
def train_images(tmp_path: Path) -> Path:
    return _write_split(tmp_path, "train", 2)


def test_without_the_policy_the_dataset_leaves_images_alone(ul, train_images: Path) -> None:
    sample = _dataset(ul, train_images)[0]
    np.testing.assert_allclose(_pixels_xyxy(sample), [BOX], atol=0.5)


def test_installed_policy_flips_the_image_and_its_box(ul, train_images: Path) -> None:
    dataset = _dataset(ul, train_images)
    assert ul.hook.install_policy(dataset, _policy(A.HorizontalFlip(p=1))) == 1
    sample = dataset[0]
    x_min, y_min, x_max, y_max = BOX
    np.testing.assert_allclose(_pixels_xyxy(sample), [[SIZE - x_max, y_min, SIZE - x_min, y_max]], atol=0.5)
    white = np.nonzero(sample["img"].numpy()[0] > 127)
    assert white[1].min() == SIZE - x_max and white[1].max() == SIZE - x_min - 1


def test_our_visibility_rule_replaces_ultralytics_defaults(ul, tmp_path: Path) -> None:
    images = _write_split(tmp_path, "train", 1, boxes=(BOX, SMALL_BOX))

    def shift() -> A.Affine:  # BOX moves to x = 48..80: 16 of its 32 px (50 %) stay in view
        return A.Affine(translate_px={"x": 40, "y": 0}, p=1)

    strict, lenient = _dataset(ul, images), _dataset(ul, images)
    ul.hook.install_policy(strict, _policy(shift(), min_visibility=0.6))
    ul.hook.install_policy(lenient, _policy(shift(), min_visibility=0.4))
    # ultralytics' own rules (no visibility limit) would keep the half-visible box.
    np.testing.assert_allclose(_pixels_xyxy(strict[0]), [[40, 40, 48, 56]], atol=0.5)
    kept = sorted(_pixels_xyxy(lenient[0]).tolist())
    np.testing.assert_allclose(kept, [[40, 40, 48, 56], [48, 16, 64, 32]], atol=0.5)


def test_ultralytics_keeps_the_original_sample_when_the_policy_drops_every_box(
    ul, train_images: Path
) -> None:
    """ultralytics' rule, not ours: a view without any box left is replaced by the unaugmented sample."""
    dataset = _dataset(ul, train_images)
    ul.hook.install_policy(
        dataset, _policy(A.Affine(translate_px={"x": 40, "y": 0}, p=1), min_visibility=0.6)
    )
    np.testing.assert_allclose(_pixels_xyxy(dataset[0]), [BOX], atol=0.5)


def test_colour_transforms_see_rgb_although_ultralytics_decodes_bgr(ul, tmp_path: Path) -> None:
    dataset = _dataset(ul, _write_split(tmp_path, "train", 1, colour=(255, 0, 0)))  # pure red
    ul.hook.install_policy(dataset, _policy(A.ToGray(method="weighted_average", p=1)))
    grey = dataset[0]["img"].numpy()[:, BOX[1] + 2, BOX[0] + 2]
    assert grey.tolist() == [76, 76, 76]  # 0.299 * 255 for red; blue (a BGR mix-up) would give 29


def test_a_policy_that_changes_the_image_size_fails_with_a_sentence(ul, train_images: Path) -> None:
    dataset = _dataset(ul, train_images)
    ul.hook.install_policy(dataset, _policy(A.Crop(x_max=32, y_max=32, p=1)))
    with pytest.raises(ValueError, match="keep imgsz"):
        dataset[0]


def test_evaluation_datasets_are_never_augmented(ul, tmp_path: Path) -> None:
    dataset = _dataset(ul, _write_split(tmp_path, "val", 1), augment=False)
    with pytest.raises(ValueError, match="never augmented"):
        ul.hook.install_policy(dataset, _policy(A.HorizontalFlip(p=1)))
    assert not any(isinstance(t, ul.Albumentations) for t in dataset.transforms.transforms)


def test_train_overrides_carry_the_policy_and_switch_builtins_off(ul) -> None:
    policy = build_policy(AugmentSection(preset="default"), seed=0, task="detect")
    overrides = ul.hook.train_overrides(policy)
    restored = [type(A.from_dict(d)).__name__ for d in overrides["augmentations"]]
    assert restored == [type(t).__name__ for t in policy.transforms]
    assert overrides["mosaic"] == overrides["fliplr"] == overrides["hsv_s"] == 0
    assert "mosaic" not in ul.hook.train_overrides(policy, keep_builtin=True)


def test_trainer_installs_the_policy_in_train_not_val_and_again_after_mosaic_closes(
    ul, tmp_path: Path
) -> None:
    train_dir = _write_split(tmp_path, "train", 2)
    val_dir = _write_split(tmp_path, "val", 1)
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(tmp_path), "train": "train/images", "val": "val/images",
                                    "names": {0: "box"}}))  # fmt: skip
    policy = build_policy(AugmentSection(preset="light"), seed=0, task="detect")
    callbacks = ul.get_default_callbacks()

    def dvclive_callback(trainer) -> None:  # stands in for ultralytics' DVCLive integration
        raise AssertionError("the DVCLive integration must not run")

    dvclive_callback.__module__ = ul.hook.DVC_CALLBACKS_MODULE
    callbacks["on_train_end"].append(dvclive_callback)
    trainer_class = ul.hook.trainer_for(policy)
    trainer = trainer_class(
        _callbacks=callbacks,
        overrides={"model": "yolov8n.yaml", "data": str(data), "imgsz": SIZE, "device": "cpu", "workers": 0,
                   "project": str(tmp_path / "runs"), "name": "t", "mosaic": 1.0,
                   **{k: v for k, v in ul.hook.train_overrides(policy).items() if k != "mosaic"}}
    )  # fmt: skip
    trainer.model = trainer.get_model(cfg="yolov8n.yaml", verbose=False)

    def steps(dataset) -> list[type]:
        return [type(t) for t in dataset.transforms.transforms]

    train_set = trainer.build_dataset(str(train_dir), mode="train", batch=2)
    val_set = trainer.build_dataset(str(val_dir), mode="val", batch=2)
    assert ul.hook.PolicyStep in steps(train_set)
    assert not any(issubclass(t, ul.Albumentations) for t in steps(val_set))
    assert dvclive_callback not in trainer.callbacks["on_train_end"]
    assert trainer.callbacks["on_train_end"]  # ultralytics' own callbacks stay

    trainer.train_loader = SimpleNamespace(dataset=train_set)
    before = train_set.transforms
    trainer._close_dataloader_mosaic()  # ultralytics rebuilds the transforms here
    assert train_set.transforms is not before and ul.hook.PolicyStep in steps(train_set)
    step = next(t for t in train_set.transforms.transforms if isinstance(t, ul.hook.PolicyStep))
    assert [type(t).__name__ for t in step.transform.transforms] == [
        "HorizontalFlip",
        "RandomBrightnessContrast",
    ]


def test_dvc_integration_is_hidden_in_memory_only_while_a_trainer_is_built(ul) -> None:
    from ultralytics.utils import SETTINGS

    before = SETTINGS.file.read_bytes() if SETTINGS.file.is_file() else None
    original = SETTINGS.get("dvc")
    dict.__setitem__(SETTINGS, "dvc", True)
    try:
        with ul.hook._dvc_integration_off():
            assert SETTINGS["dvc"] is False
        assert SETTINGS["dvc"] is True
    finally:
        dict.__setitem__(SETTINGS, "dvc", original)
    assert (SETTINGS.file.read_bytes() if SETTINGS.file.is_file() else None) == before


def test_a_short_yolo_training_applies_the_policy_to_every_train_image_and_no_val_image(
    ul, tmp_path, monkeypatch
):
    from ultralytics import YOLO

    _write_split(tmp_path, "train", 4)
    _write_split(tmp_path, "val", 2)
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(tmp_path), "train": "train/images", "val": "val/images",
                                    "names": {0: "box"}}))  # fmt: skip
    seen: list[str] = []
    real_call = ul.hook.PolicyStep.__call__

    def spy(self, labels):
        seen.append(labels["im_file"])
        return real_call(self, labels)

    monkeypatch.setattr(ul.hook.PolicyStep, "__call__", spy)
    monkeypatch.chdir(tmp_path)  # ultralytics writes next to the working directory
    policy = build_policy(AugmentSection(preset="default"), seed=0, task="detect")
    YOLO("yolov8n.yaml").train(
        trainer=ul.hook.trainer_for(policy), data=str(data), imgsz=SIZE, epochs=2, batch=4, workers=0,
        device="cpu", project=str(tmp_path / "runs"), name="t", plots=False, amp=False,
        **ul.hook.train_overrides(policy),
    )  # fmt: skip
    assert len(seen) == 2 * 4
    assert {Path(f).parent.parent.name for f in seen} == {"train"}
