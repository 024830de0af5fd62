"""Augmentation policies: params -> an albumentations ``Compose``, saved, loaded and seeded per view.

The saved policy (albumentations' own serialisation) is exactly what the trainers apply, so
the preview a person looks at and the training run cannot disagree.

Classification policies change the image only. Detection policies (``data.task: detect``)
also carry albumentations' ``BboxParams``: boxes are absolute pixel corners (``pascal_voc``,
the layout of ``boxes.parquet``), clipped to the frame, and dropped when less than
``augment.bbox.min_visibility`` of a box stays in view or its area falls under
``augment.bbox.min_area`` pixels. A detection policy accepts only transforms that move boxes
with the pixels or change pixel values alone.

Segmentation policies (``data.task: segment``) move the class map with the image: every
geometric transform resamples it nearest-neighbour (class indices are never blended), and a
border the transform fills gets ``IGNORE_INDEX`` in the mask (unknown, not background)
unless the spec sets ``fill_mask``. A transform that does not move masks is refused.

This module never imports ultralytics (AGPL boundary): the YOLO side lives in
``stages/engine/yolo/augment.py``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from stages.core.errors import ParamsError
from stages.core.params import AugmentSection, BboxSection, TransformSpec

if TYPE_CHECKING:  # albumentations imports torch: imported below only where a policy is built or loaded
    import albumentations as A

BOX_FORMAT = "pascal_voc"  # (x_min, y_min, x_max, y_max) in pixels, as in boxes.parquet
LABEL_FIELD = "class_labels"
BOX_COLUMNS = ["x_min", "y_min", "x_max", "y_max"]
# Compositions an explicit list may nest: {name: OneOf, params: {transforms: [...], p: 0.5}}.
GROUPS = ("OneOf", "SomeOf", "RandomOrder", "OneOrOther", "Sequential")
# Transforms whose output is not an image array the trainers can use.
NOT_AN_IMAGE = ("ToTensorV2", "ToTensor3D")

# Mild, label-preserving policies for fine-tuning; no vertical flips (most photos have an "up").
# Every transform here either moves boxes with the pixels or changes pixel values only, so the
# same presets serve detection. Affine fills the border with black (never reflects it, which
# would mirror objects that have no box) and bounds rotated boxes by the inscribed ellipse,
# which keeps them tight.
PRESETS: dict[str, list[dict[str, Any]]] = {
    "none": [],
    "light": [
        {"name": "HorizontalFlip", "params": {"p": 0.5}},
        {
            "name": "RandomBrightnessContrast",
            "params": {"brightness_limit": 0.1, "contrast_limit": 0.1, "p": 0.3},
        },
    ],
    "default": [
        {"name": "HorizontalFlip", "params": {"p": 0.5}},
        {
            "name": "Affine",
            "params": {
                "scale": [0.9, 1.1],
                "translate_percent": [-0.05, 0.05],
                "rotate": [-10, 10],
                "rotate_method": "ellipse",
                "p": 0.5,
            },
        },
        {
            "name": "RandomBrightnessContrast",
            "params": {"brightness_limit": 0.2, "contrast_limit": 0.2, "p": 0.5},
        },
        {
            "name": "HueSaturationValue",
            "params": {"hue_shift_limit": 5, "sat_shift_limit": 15, "val_shift_limit": 10, "p": 0.3},
        },
    ],
    "heavy": [
        {"name": "HorizontalFlip", "params": {"p": 0.5}},
        {
            "name": "Affine",
            "params": {
                "scale": [0.8, 1.2],
                "translate_percent": [-0.1, 0.1],
                "rotate": [-20, 20],
                "shear": [-8, 8],
                "rotate_method": "ellipse",
                "p": 0.7,
            },
        },
        {
            "name": "ColorJitter",
            "params": {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.05, "p": 0.7},
        },
        {"name": "GaussianBlur", "params": {"blur_limit": [3, 5], "p": 0.2}},
        {
            "name": "CoarseDropout",
            "params": {
                "num_holes_range": [1, 4],
                "hole_height_range": [0.05, 0.15],
                "hole_width_range": [0.05, 0.15],
                "p": 0.3,
            },
        },
    ],
}


def transform_specs(params: AugmentSection) -> list[TransformSpec]:
    """The explicit list when given, else the named preset."""
    if params.transforms is not None:
        return list(params.transforms)
    return [TransformSpec.model_validate(spec) for spec in PRESETS[params.preset]]


def build_policy(params: AugmentSection, seed: int, task: str = "classify") -> A.Compose:
    """Instantiate each transform, failing with one sentence that names the bad one.

    Args:
        params: the ``augment`` section (a preset or an explicit list, and the bbox rules).
        seed: the Compose's own seed (the trainers reseed it per image and view).
        task: ``classify``, ``detect`` or ``segment``; ``detect`` adds ``BboxParams`` and refuses
            transforms that would move pixels without moving the boxes; ``segment`` refuses those
            that would move pixels without the mask, and resamples masks nearest-neighbour.

    Returns:
        The policy, ready for ``A.save`` and for ``augment_image`` / ``augment_sample`` /
        ``augment_pair``.

    Examples:
        >>> policy = build_policy(AugmentSection(preset="light"), seed=0, task="detect")
        >>> [type(t).__name__ for t in policy.transforms]
        ['HorizontalFlip', 'RandomBrightnessContrast']
    """
    import albumentations as A

    transforms = [build_transform(spec, task) for spec in transform_specs(params)]
    bbox = bbox_params(params.bbox) if task == "detect" else None
    return A.Compose(transforms, bbox_params=bbox, seed=seed)


def bbox_params(section: BboxSection) -> A.BboxParams:
    """Pixel corners, clipped to the frame, filtered by visibility and area after each transform."""
    import albumentations as A

    return A.BboxParams(
        format=BOX_FORMAT,
        label_fields=[LABEL_FIELD],
        min_visibility=section.min_visibility,
        min_area=section.min_area,
        clip=True,
    )


def build_transform(spec: TransformSpec, task: str = "classify") -> A.BasicTransform | A.BaseCompose:
    import albumentations as A

    cls = getattr(A, spec.name, None)
    if isinstance(cls, type) and spec.name in GROUPS:
        return _build_group(cls, spec, task)
    if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
        raise ParamsError(
            f"augment.transforms: '{spec.name}' is not a transform in albumentations "
            f"{A.__version__}; check the spelling against its documentation."
        )
    _check_targets(cls, task)
    params = _mask_params(cls, dict(spec.params)) if task == "segment" else dict(spec.params)
    try:
        return cls(**params, strict=True)
    except (ValueError, TypeError) as exc:
        raise ParamsError(
            f"augment.transforms: {spec.name}{spec.params} is invalid in albumentations "
            f"{A.__version__}: {_first_lines(exc)}"
        ) from None


def _build_group(cls: type, spec: TransformSpec, task: str) -> A.BaseCompose:
    import albumentations as A

    params = dict(spec.params)
    children = params.pop("transforms", None)
    if not isinstance(children, list) or not children:
        raise ParamsError(
            f"augment.transforms: {spec.name} needs params.transforms, a non-empty list of "
            "{name, params} transforms."
        )
    try:
        specs = [TransformSpec.model_validate(child) for child in children]
    except ValidationError:
        raise ParamsError(
            f"augment.transforms: every item of {spec.name}'s params.transforms must be "
            f"{{name: <albumentations transform>, params: {{...}}}}; got {children!r}."
        ) from None
    built = [build_transform(child, task) for child in specs]
    try:
        return cls(built, **params)
    except (ValueError, TypeError) as exc:
        raise ParamsError(
            f"augment.transforms: {spec.name}{params} is invalid in albumentations "
            f"{A.__version__}: {_first_lines(exc)}"
        ) from None


def _check_targets(cls: type, task: str) -> None:
    """Refuse transforms a trainer cannot use: no image out, or pixels moved without boxes / masks."""
    import albumentations as A
    from albumentations.core.type_definitions import Targets

    declared = getattr(cls, "_targets", ())
    targets = set(declared if isinstance(declared, tuple) else (declared,))
    listed = ", ".join(sorted(t.value for t in targets if t is not None)) or "none"
    if Targets.IMAGE not in targets or cls.__name__ in NOT_AN_IMAGE:
        raise ParamsError(
            f"augment.transforms: '{cls.__name__}' does not return an image array in albumentations "
            f"{A.__version__} (its targets: {listed}); the trainers need one, so leave it out."
        )
    if task == "detect" and not issubclass(cls, A.ImageOnlyTransform) and Targets.BBOXES not in targets:
        raise ParamsError(
            f"augment.transforms: '{cls.__name__}' moves pixels but not bounding boxes in albumentations "
            f"{A.__version__} (its targets: {listed}), so it cannot be used with data.task: detect."
        )
    if task == "segment" and not issubclass(cls, A.ImageOnlyTransform) and Targets.MASK not in targets:
        raise ParamsError(
            f"augment.transforms: '{cls.__name__}' moves pixels but not masks in albumentations "
            f"{A.__version__} (its targets: {listed}), so it cannot be used with data.task: segment; "
            "leave it out or pick a transform that lists mask among its targets."
        )


def _mask_params(cls: type, params: dict[str, Any]) -> dict[str, Any]:
    """Nearest-neighbour masks and an ignored border, set explicitly so the saved policy shows them."""
    import inspect

    import cv2

    from stages.dataprep.semantic_masks import IGNORE_INDEX

    accepted = inspect.signature(cls.__init__).parameters
    if "mask_interpolation" in accepted:
        chosen = params.setdefault("mask_interpolation", cv2.INTER_NEAREST)
        if chosen != cv2.INTER_NEAREST:
            raise ParamsError(
                f"augment.transforms: {cls.__name__} has mask_interpolation {chosen!r}, which would blend "
                f"class indices with data.task: segment; remove it or set it to {cv2.INTER_NEAREST} "
                "(nearest)."
            )
    if "fill_mask" in accepted and "border_mode" in accepted:
        params.setdefault("fill_mask", IGNORE_INDEX)
    return params


def _first_lines(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return " ".join(line.strip() for line in lines[:3])


def load_policy(path: Path) -> A.Compose:
    """Load the policy the augment stage saved."""
    import albumentations as A

    return A.load(str(path), data_format="json")


# Bump when the same (policy, seed) starts giving another view, so caches of augmented views
# (stages/models/feature_cache.py) can key on it. 2: one shared random stream per call (see ``reseed``).
VIEW_SEEDING_VERSION = 2


def reseed(policy: A.Compose, seed: int) -> None:
    """Give the policy one fresh random stream, shared by all its transforms in order.

    Not ``Compose.set_random_seed``: that gives every transform its own generator seeded with
    the same value, so after a per-call reseed their draws coincide (in the default preset the
    flip, the affine and the brightness change were then always applied together or not at all,
    3 of 16 combinations). With one shared stream each draw is a fresh number.
    """
    policy.set_random_state(np.random.default_rng(seed), random.Random(seed))


def augment_image(policy: A.Compose, image: np.ndarray, seed: int) -> np.ndarray:
    """Apply the policy with a per-call seed, so a view depends only on (image, seed).

    Works for detection policies too (with no boxes): geometry is then the same as for an
    image whose boxes ``augment_sample`` moves with the same seed.
    """
    reseed(policy, seed)
    processor = policy.processors.get("bboxes")
    if processor is None:
        return policy(image=image)["image"]
    no_labels = {field: [] for field in processor.params.label_fields or ()}
    return policy(image=image, bboxes=np.zeros((0, 4)), **no_labels)["image"]


def augment_sample(
    policy: A.Compose, image: np.ndarray, boxes: np.ndarray | Sequence, labels: Sequence, seed: int
) -> tuple[np.ndarray, np.ndarray, list]:
    """Apply a detection policy to an image and its boxes with a per-call seed.

    Args:
        policy: a policy built with ``task="detect"`` (it carries ``BboxParams``).
        image: H x W x C uint8 array.
        boxes: N x 4 absolute pixel corners ``(x_min, y_min, x_max, y_max)`` of ``image``.
        labels: N labels (class names or indices), kept in step with the boxes.
        seed: the view's seed; same (image, boxes, seed) gives the same output.

    Returns:
        ``(image, boxes, labels)``: boxes that left the frame are clipped, boxes that fell under
        the policy's visibility or area limits are dropped together with their labels.

    Examples:
        >>> import albumentations as A
        >>> policy = A.Compose([A.HorizontalFlip(p=1)], bbox_params=bbox_params(BboxSection()))
        >>> _, moved, _ = augment_sample(policy, np.zeros((10, 20, 3), np.uint8), [[2, 1, 6, 5]], ["a"], 0)
        >>> moved.round().tolist()
        [[14.0, 1.0, 18.0, 5.0]]
    """
    if "bboxes" not in policy.processors:
        raise ValueError(
            "augment_sample needs a detection policy (built with task='detect'); this has no BboxParams."
        )
    corners = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    names = list(labels)
    if len(names) != len(corners):
        raise ValueError(f"augment_sample got {len(corners)} boxes but {len(names)} labels.")
    reseed(policy, seed)
    out = policy(image=image, bboxes=corners, **{LABEL_FIELD: names})
    return out["image"], np.asarray(out["bboxes"], dtype=np.float64).reshape(-1, 4), list(out[LABEL_FIELD])


def augment_pair(
    policy: A.Compose, image: np.ndarray, mask: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Apply a segmentation policy to an image and its class map together, with a per-call seed.

    Args:
        policy: a policy built with ``task="segment"`` (masks resampled nearest-neighbour).
        image: H x W x C uint8 array.
        mask: H x W uint8 class map of ``image`` (``stages.dataprep.semantic_masks``).
        seed: the view's seed; same (image, mask, seed) gives the same output.

    Returns:
        ``(image, mask)``, moved by the same geometry; border the transform fills is
        ``IGNORE_INDEX`` in the mask.

    Examples:
        >>> import albumentations as A
        >>> flipped = augment_pair(A.Compose([A.HorizontalFlip(p=1)]), np.zeros((2, 3, 3), np.uint8),
        ...     np.array([[1, 0, 0], [2, 0, 0]], np.uint8), 0)[1]
        >>> flipped.tolist()
        [[0, 0, 1], [0, 0, 2]]
    """
    if mask.shape[:2] != image.shape[:2]:
        raise ValueError(f"augment_pair got a {mask.shape[:2]} mask for a {image.shape[:2]} image.")
    reseed(policy, seed)
    out = policy(image=image, mask=mask)
    return out["image"], np.asarray(out["mask"], dtype=np.uint8)
