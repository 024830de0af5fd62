"""Run the saved augmentation policy inside ultralytics' YOLO training pipeline.

This module imports ultralytics (AGPL-3.0), so only the detector side may import it;
``stages/augment.py`` never does.

What the pinned ultralytics (8.4.x) offers, and what we use (docs/architecture.md,
"Augmentation"):

- Its training transforms are ``Mosaic -> RandomPerspective (letterbox to imgsz) -> MixUp ->
  CutMix -> Albumentations -> RandomHSV -> RandomFlip x2 -> Format``, rebuilt by
  ``YOLODataset.build_transforms`` (also when mosaic closes). Validation datasets get
  ``LetterBox -> Format`` only, so they are never augmented.
- ``model.train(augmentations=[...])`` hands a list of albumentations transforms to its
  ``Albumentations`` step, which composes them with its own ``BboxParams`` (YOLO format, no
  visibility or area limits, no clipping) and feeds them BGR images.
- ``PolicyStep`` is that same step running a copy of our policy with our box rules, on RGB
  pixels (it swaps channels in and out, since ultralytics decodes with OpenCV).
- ``PolicyDetectionTrainer`` (made by ``trainer_for``) installs ``PolicyStep`` into the
  training dataset when it is built and again after mosaic closes, before any worker
  process starts; ``train_overrides`` records the policy in ultralytics' own ``augmentations``
  argument (so ``args.yaml`` and checkpoints show it) and switches off ultralytics' built-in
  augmentations, so the saved policy is exactly what changes the training images.

Usage (the detector trainer)::

    policy = load_policy(layout.augment_policy)
    YOLO(weights_file).train(trainer=trainer_for(policy), data=..., **train_overrides(policy))
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

import albumentations as A
import numpy as np
import torch
from ultralytics.data.augment import Albumentations
from ultralytics.data.augment import Compose as UltralyticsCompose
from ultralytics.models.yolo.detect import DetectionTrainer

from stages.core.params import BboxSection
from stages.dataprep.augmentation import bbox_params, reseed

# ultralytics' own augmentation hyper-parameters that would add to (or repeat) the policy.
# With these off, the only random change to a training image is the saved policy; mosaic has
# nothing to close, so close_mosaic is off as well. Pass keep_builtin=True to train_overrides
# to keep ultralytics' defaults (mosaic and friends) in addition to the policy.
BUILTIN_AUGMENTATION_OFF: dict[str, float | int] = {
    "hsv_h": 0.0,
    "hsv_s": 0.0,
    "hsv_v": 0.0,
    "degrees": 0.0,
    "translate": 0.0,
    "scale": 0.0,
    "shear": 0.0,
    "perspective": 0.0,
    "flipud": 0.0,
    "fliplr": 0.0,
    "bgr": 0.0,
    "mosaic": 0.0,
    "mixup": 0.0,
    "cutmix": 0.0,
    "copy_paste": 0.0,
    "close_mosaic": 0,
}
# The label fields ultralytics' Albumentations step passes along with the boxes.
ULTRALYTICS_LABEL_FIELDS = ["class_labels", "idx"]
# ultralytics' DVCLive integration: at the end of training it rewrites the repository's dvc.yaml
# and runs `dvc exp save` (a checkout round trip of the whole working tree). The pipeline logs
# through its own DVCLive code, so our trainer never registers these callbacks.
DVC_CALLBACKS_MODULE = "ultralytics.utils.callbacks.dvc"


def copy_transforms(policy: A.Compose) -> list:
    """Fresh copies of the policy's transforms (a Compose takes ownership of the ones it holds)."""
    return [A.from_dict(A.to_dict(t)) for t in policy.transforms]


def box_rules(policy: A.Compose) -> BboxSection:
    """The visibility and area limits the policy was saved with (defaults for a classify policy)."""
    processor = policy.processors.get("bboxes")
    if processor is None:
        return BboxSection()
    return BboxSection(min_visibility=processor.params.min_visibility, min_area=processor.params.min_area)


class PolicyStep(Albumentations):
    """ultralytics' ``Albumentations`` step, running our policy with our box rules on RGB pixels.

    Everything ultralytics does around the call (boxes to normalised xywh and back, segments,
    keypoints, dropping the classes of dropped boxes) is its own code, inherited unchanged.

    Examples:
        >>> step = PolicyStep(load_policy(Path("data/processed/augment/policy.json")))
        >>> labels = step(labels)  # a YOLODataset labels dict: img (BGR), cls, instances
    """

    def __init__(self, policy: A.Compose) -> None:
        super().__init__(p=1.0, transforms=copy_transforms(policy))
        if self.transform is None:  # albumentations missing or the step refused the transforms
            raise RuntimeError("ultralytics could not build its Albumentations step from the policy.")
        rules = box_rules(policy)
        if self.contains_spatial:  # same shape of Compose as ultralytics builds, with our box rules
            ours = bbox_params(rules)
            self.transform = A.Compose(
                copy_transforms(policy),
                bbox_params=A.BboxParams(
                    format="yolo",
                    label_fields=ULTRALYTICS_LABEL_FIELDS,
                    min_visibility=ours.min_visibility,
                    min_area=ours.min_area,
                    clip=ours.clip,
                ),
                keypoint_params=A.KeypointParams(format="xy", remove_invisible=False, label_fields=["pidx"]),
            )
        self.rules = rules

    def __call__(self, labels: dict[str, Any]) -> dict[str, Any]:
        seed = torch.initial_seed()  # differs per DataLoader worker; ultralytics seeds the same way
        if self.transform.seed != seed:  # once per process, with one stream for all transforms
            self.transform.set_random_seed(seed)  # sets .seed, which ultralytics' own check reads
            reseed(self.transform, seed)
        image = labels["img"]
        colour = image.ndim == 3 and image.shape[2] == 3
        if colour:  # ultralytics decodes BGR; the policy (and its preview) works on RGB
            labels["img"] = np.ascontiguousarray(image[..., ::-1])
        labels = super().__call__(labels)
        if colour:
            labels["img"] = np.ascontiguousarray(labels["img"][..., ::-1])
        if labels["img"].shape[:2] != image.shape[:2]:
            raise ValueError(
                f"the augmentation policy changed the training image size from {image.shape[:2]} to "
                f"{labels['img'].shape[:2]}; inside ultralytics every image must keep imgsz, so leave out "
                "crops and resizes (ultralytics letterboxes before the policy runs)."
            )
        return labels


def install_policy(dataset: Any, policy: A.Compose) -> int:
    """Replace every ``Albumentations`` step in a built training dataset's transforms with ``PolicyStep``.

    Args:
        dataset: an ultralytics ``YOLODataset`` built for training (``augment=True``).
        policy: the policy the augment stage saved (``stages.dataprep.augmentation.load_policy``).

    Returns:
        How many steps were replaced (1 for ultralytics' standard detection transforms).

    Raises:
        ValueError: the dataset was built for evaluation (its images must never be augmented),
            or its transforms have no ``Albumentations`` step to replace.
    """
    if not getattr(dataset, "augment", False):
        raise ValueError(
            "refusing to install the augmentation policy into a dataset built for evaluation "
            "(augment=False): val and test images are never augmented."
        )
    replaced = _replace_steps(dataset.transforms, policy)
    if replaced == 0:
        raise ValueError(
            "the dataset's transforms have no ultralytics Albumentations step to replace; "
            "this ultralytics version builds its training transforms differently."
        )
    return replaced


def _replace_steps(pipeline: Any, policy: A.Compose) -> int:
    steps = getattr(pipeline, "transforms", None)
    if not isinstance(pipeline, UltralyticsCompose) or not isinstance(steps, list):
        return 0
    replaced = 0
    for i, step in enumerate(steps):
        if isinstance(step, Albumentations) and not isinstance(step, PolicyStep):
            steps[i] = PolicyStep(policy)
            replaced += 1
        elif isinstance(step, PolicyStep):
            replaced += 1  # already ours (idempotent)
        else:
            replaced += _replace_steps(step, policy)
    return replaced


@contextmanager
def _dvc_integration_off() -> Iterator[None]:
    """Hide ``SETTINGS['dvc']`` in memory only; the user's ultralytics settings file is left alone."""
    from ultralytics.utils import SETTINGS

    was = SETTINGS.get("dvc")
    dict.__setitem__(SETTINGS, "dvc", False)  # JSONDict.__setitem__ would also rewrite the file
    try:
        yield
    finally:
        dict.__setitem__(SETTINGS, "dvc", was)


class PolicyDetectionTrainer(DetectionTrainer):
    """A ``DetectionTrainer`` whose training dataset runs the saved policy (use ``trainer_for``).

    The policy is installed when the training dataset is built (also on ultralytics' out-of-memory
    rebuild) and again after mosaic closes, in the main process before the dataloader's workers
    start, so every worker runs it. Validation datasets are left alone. ultralytics' DVCLive
    callbacks are removed (see ``DVC_CALLBACKS_MODULE``) whatever its settings file says.
    """

    policy_dict: ClassVar[Mapping[str, Any] | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        with _dvc_integration_off():  # ultralytics picks its integrations while the trainer is built
            super().__init__(*args, **kwargs)
        for event, functions in self.callbacks.items():  # and any a previous trainer left behind
            self.callbacks[event] = [
                f for f in functions if getattr(f, "__module__", "") != DVC_CALLBACKS_MODULE
            ]

    def policy(self) -> A.Compose:
        if self.policy_dict is None:
            raise RuntimeError(
                "PolicyDetectionTrainer needs a policy: build the class with trainer_for(policy)."
            )
        return A.from_dict(dict(self.policy_dict))

    def build_dataset(self, img_path: str, mode: str = "train", batch: int | None = None):
        dataset = super().build_dataset(img_path, mode, batch)
        if mode == "train":
            install_policy(dataset, self.policy())
        return dataset

    def _close_dataloader_mosaic(self) -> None:
        super()._close_dataloader_mosaic()  # rebuilds the dataset's transforms from ultralytics' defaults
        install_policy(self.train_loader.dataset, self.policy())


def trainer_for(policy: A.Compose) -> type[PolicyDetectionTrainer]:
    """A ``PolicyDetectionTrainer`` subclass bound to ``policy``, for ``YOLO(...).train(trainer=...)``.

    The policy travels as albumentations' own dict inside the class, so ultralytics' multi-GPU
    launcher (which pickles the trainer class with cloudpickle) carries it to every rank.
    """
    return type("PolicyDetectionTrainer", (PolicyDetectionTrainer,), {"policy_dict": A.to_dict(policy)})


def train_overrides(policy: A.Compose, keep_builtin: bool = False) -> dict[str, Any]:
    """Keyword arguments for ``YOLO(...).train``: the policy as ultralytics' ``augmentations``, builtins off.

    ``augmentations`` alone already makes ultralytics run the policy's transforms (with its own
    box rules); ``trainer_for`` then swaps in ours. Keeping it here records the policy in the
    run's ``args.yaml`` and checkpoints.
    """
    overrides: dict[str, Any] = {"augmentations": [A.to_dict(t) for t in policy.transforms]}
    if not keep_builtin:
        overrides.update(BUILTIN_AUGMENTATION_OFF)
    return overrides
