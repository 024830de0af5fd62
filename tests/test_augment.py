"""Augmentation policies: built from params, validated, saved, reloaded identically, seeded."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
import pytest

from stages import augment
from stages.errors import ParamsError
from stages.params import AugmentSection, TransformSpec


@pytest.mark.parametrize("preset", sorted(augment.PRESETS))
def test_every_preset_builds_and_has_no_vertical_flip(preset: str) -> None:
    policy = augment.build_policy(AugmentSection(preset=preset), seed=0)
    names = [type(t).__name__ for t in policy.transforms]
    assert "VerticalFlip" not in names
    assert len(names) == len(augment.PRESETS[preset])


def test_explicit_transforms_replace_the_preset() -> None:
    section = AugmentSection(
        preset="heavy", transforms=(TransformSpec(name="HorizontalFlip", params={"p": 1.0}),)
    )
    policy = augment.build_policy(section, seed=0)
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    assert [type(t).__name__ for t in policy.transforms] == ["HorizontalFlip"]
    np.testing.assert_array_equal(policy(image=image)["image"], image[:, ::-1])


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        (TransformSpec(name="HorizontalFlipp"), "'HorizontalFlipp' is not a transform"),
        (TransformSpec(name="HorizontalFlip", params={"q": 1}), "'q'"),
        (TransformSpec(name="HorizontalFlip", params={"p": 3}), "less than or equal to 1"),
    ],
)
def test_bad_transform_is_one_sentence_naming_it_and_the_version(spec, fragment) -> None:
    with pytest.raises(ParamsError) as caught:
        augment.build_policy(AugmentSection(transforms=(spec,)), seed=0)
    assert fragment in str(caught.value)
    assert f"albumentations {A.__version__}" in str(caught.value)


def test_saved_policy_reloads_and_gives_the_same_views(tmp_path: Path) -> None:
    policy = augment.build_policy(AugmentSection(preset="heavy"), seed=7)
    file = tmp_path / "policy.json"
    A.save(policy, str(file), data_format="json")
    loaded = augment.load_policy(file)
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    for seed in (1, 2, 3):
        np.testing.assert_array_equal(
            augment.augment_image(policy, image, seed), augment.augment_image(loaded, image, seed)
        )
    views = {augment.augment_image(policy, image, s).tobytes() for s in range(8)}
    assert len(views) > 1  # the seed really changes the view
