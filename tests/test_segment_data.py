"""data.task segment up to augment: shapes -> class maps (draw order, RLE, ignore), the mask cache,
every mask source through ingest -> validate -> split -> augment, and what is refused."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import pytest
from albumentations.core.type_definitions import Targets
from PIL import Image

from stages import augment, ingest, split, validate
from stages.core.contracts import read_classes, read_parquet
from stages.core.errors import DataError, ParamsError
from stages.core.layout import Layout
from stages.core.params import AugmentSection, TransformSpec
from stages.dataprep import augmentation, semantic_masks
from stages.dataprep.semantic_masks import IGNORE_INDEX, MaskStore, rasterise, segment_classes
from stages.dataprep.shapes import polygon_mask, rle_encode
from stages.reporting import previews
from tests import annotation_writers as writers
from tests.conftest import (
    fast_params,
    guard_sources,
    make_classify_source,
    tree_digest,
    write_yolo,
)

CLASSES = writers.CLASSES  # bird, cat
MODEL = segment_classes(CLASSES)  # background, bird, cat
INDEX = {name: i for i, name in enumerate(MODEL)}


@pytest.fixture(autouse=True)
def _source_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    guard_sources(monkeypatch)


def _rect(x0: float, y0: float, x1: float, y1: float) -> tuple[float, ...]:
    return (x0, y0, x1, y0, x1, y1, x0, y1)


def _seg_spec() -> list[writers.Img]:
    """12 small images, each a large rectangle of one class, most with a smaller one of the other on
    top (a window on a facade); the last image has no shape (a background image)."""
    spec = []
    for i in range(11):
        w, h = (32, 32) if i % 2 == 0 else (64, 32)
        big, small = ("cat", "bird") if i % 3 else ("bird", "cat")
        objects = [writers.Obj("polygon", big, _rect(2, 4, w - 6, h - 2))]
        if i % 4 != 3:
            objects.append(writers.Obj("polygon", small, _rect(8, 10, 16, 20)))
        spec.append(writers.Img(f"seg {i:02d}.png", (w, h), tuple(objects)))
    spec.append(writers.Img("seg empty.png", (32, 32), ()))
    return spec


SEG_SPEC = _seg_spec()


def _expected(image: writers.Img) -> np.ndarray:
    """The class map drawn by hand: integer rectangles cover [y0:y1, x0:x1]; larger first."""
    out = np.zeros((image.size[1], image.size[0]), np.uint8)
    for obj in sorted(
        image.objects, key=lambda o: -(o.coords[2] - o.coords[0]) * (o.coords[5] - o.coords[1])
    ):
        x0, y0, x1, _, _, y1, _, _ = (int(v) for v in obj.coords)
        out[y0:y1, x0:x1] = INDEX[obj.cls]
    return out


def _seg_params(tmp_path: Path, source: Path, **data):
    return fast_params(
        tmp_path,
        source,
        data={"task": "segment", **data},
        validate={"min_images_per_class": 1},
        augment={"preset": "default", "preview": {"images": 2, "views": 2}},
    )


def _shape_rows(*rows: dict) -> pd.DataFrame:
    base = {"kind": "polygon", "points": None, "counts": None, "z_order": 0}
    return pd.DataFrame([base | {"image_id": "x"} | r for r in rows])


# ---- rasterise ----------------------------------------------------------------------------


def test_segment_classes_put_background_first_once() -> None:
    assert segment_classes(["wall", "window"]) == ["background", "wall", "window"]
    assert segment_classes(["wall", "background", "window"]) == ["background", "wall", "window"]
    assert segment_classes(segment_classes(["a"])) == ["background", "a"]


def test_area_order_puts_the_small_shape_on_top_and_z_order_follows_the_layers() -> None:
    shapes = _shape_rows(
        {"class_name": "bird", "points": list(_rect(6, 6, 10, 10)), "z_order": 0},  # small, first
        {"class_name": "cat", "points": list(_rect(0, 0, 16, 16)), "z_order": 1},  # large, above it
    )
    by_area = rasterise(shapes, 16, 20, INDEX, "area")
    assert (by_area[6:10, 6:10] == INDEX["bird"]).all()  # the window stays on the facade
    assert by_area[0, 0] == INDEX["cat"] and (by_area[:, 16:] == 0).all()  # background where no shape
    by_layer = rasterise(shapes, 16, 20, INDEX, "z_order")
    assert (by_layer[:16, :16] == INDEX["cat"]).all()  # the higher layer covers the window
    tied = shapes.assign(z_order=0)  # equal layers: file order, the later row wins
    assert (rasterise(tied, 16, 20, INDEX, "z_order")[:16, :16] == INDEX["cat"]).all()
    with pytest.raises(ValueError, match="draw_order"):
        rasterise(shapes, 16, 20, INDEX, "biggest")


def test_rle_and_polygon_shapes_mix_and_unknown_classes_are_ignored() -> None:
    disc = np.zeros((12, 14), np.uint8)
    disc[2:9, 3:7] = 1
    triangle = [8.0, 1.0, 13.0, 1.0, 13.0, 10.0]
    shapes = _shape_rows(
        {"class_name": "cat", "kind": "rle", "counts": rle_encode(disc)},
        {"class_name": "bird", "points": triangle},
        {"class_name": "dropped class", "points": list(_rect(0, 10, 3, 12))},
        {"class_name": "background", "points": list(_rect(3, 2, 4, 3))},  # explicit background erases
    )
    mask = rasterise(shapes, 12, 14, INDEX, "area")
    expected = np.zeros((12, 14), np.uint8)
    expected[disc == 1] = INDEX["cat"]
    expected[polygon_mask(triangle, 12, 14) == 1] = INDEX["bird"]
    expected[10:12, 0:3] = IGNORE_INDEX
    expected[2:3, 3:4] = 0
    assert mask.dtype == np.uint8 and np.array_equal(mask, expected)
    assert (rasterise(shapes.iloc[0:0], 5, 6, INDEX, "area") == 0).all()  # no shape: all background


# ---- the mask cache -----------------------------------------------------------------------


def test_mask_store_caches_by_content_and_never_writes_into_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "x.png").write_bytes(b"untouched")
    before = tree_digest(source)
    shapes = _shape_rows(
        {"class_name": "bird", "points": list(_rect(6, 6, 10, 10)), "z_order": 0},
        {"class_name": "cat", "points": list(_rect(0, 0, 16, 16)), "z_order": 1},
    )
    cache = tmp_path / "cache" / "masks"
    store = MaskStore(cache, shapes, CLASSES, "area")
    first = store.mask("x", "sha-x", 16, 20)
    files = sorted(cache.rglob("*.png"))
    assert len(files) == 1 and not list(cache.rglob("*.tmp"))
    assert np.array_equal(np.asarray(Image.open(files[0])), first)

    def refuse(*args, **kwargs):
        raise AssertionError("rasterised again although the mask is cached")

    monkeypatch.setattr(semantic_masks, "rasterise", refuse)
    again = pickle.loads(pickle.dumps(store))  # a DataLoader worker's copy reads the same cache
    assert np.array_equal(again.mask("x", "sha-x", 16, 20), first)
    monkeypatch.undo()
    guard_sources(monkeypatch)

    key = store.key("x", "sha-x", 16, 20)
    moved = _shape_rows(
        {"class_name": "bird", "points": list(_rect(6, 6, 11, 10)), "z_order": 0},
        {"class_name": "cat", "points": list(_rect(0, 0, 16, 16)), "z_order": 1},
    )
    others = {
        "draw order": MaskStore(cache, shapes, CLASSES, "z_order").key("x", "sha-x", 16, 20),
        "shapes": MaskStore(cache, moved, CLASSES, "area").key("x", "sha-x", 16, 20),
        "classes": MaskStore(cache, shapes, ["cat", "bird"], "area").key("x", "sha-x", 16, 20),
        "pixels": store.key("x", "sha-y", 16, 20),
    }
    assert all(other != key for other in others.values()), others
    assert not np.array_equal(MaskStore(cache, shapes, CLASSES, "z_order").mask("x", "sha-x", 16, 20), first)
    assert (store.mask("no shapes", "sha-z", 4, 4) == 0).all()
    assert tree_digest(source) == before


# ---- every mask source: ingest -> validate -> split -> augment -------------------------------


def _coco_rle(source: Path) -> Path:
    """COCO with every polygon stored as compressed RLE (what pycocotools writes)."""
    writers.write_coco(source)
    doc = json.loads((source / "annotations.json").read_text(encoding="utf-8"))
    sizes = {image["id"]: (image["height"], image["width"]) for image in doc["images"]}
    for ann in doc["annotations"]:
        height, width = sizes[ann["image_id"]]
        mask = polygon_mask(ann.pop("segmentation")[0], height, width)
        ann["segmentation"] = {"counts": rle_encode(mask), "size": [height, width]}
    (source / "annotations.json").write_text(json.dumps(doc), encoding="utf-8")
    return source


def _mask_pngs(source: Path) -> Path:
    masks = {image.name: _expected(image) for image in SEG_SPEC}
    return writers.write_mask_pngs(source, masks, MODEL)


SOURCES = {
    "coco": writers.write_coco,
    "coco-rle": _coco_rle,
    "yolo": writers.write_yolo,
    "cvat": writers.write_cvat,
    "labelstudio": writers.write_labelstudio,
    "masks": _mask_pngs,
}


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_every_mask_source_runs_to_augment_and_rasterises_the_drawn_shapes(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writers, "SPEC", SEG_SPEC)
    source = SOURCES[name](tmp_path / "source")
    params = _seg_params(tmp_path, source)
    imported = ingest.run(params)
    assert imported.format == name.split("-")[0]
    assert imported.quarantine.empty, imported.quarantine.to_dict("records")
    assert imported.classes == CLASSES and len(imported.manifest) == len(SEG_SPEC)
    validated = validate.run(params)
    assert len(validated.manifest) == len(SEG_SPEC)  # the background image is kept
    layout = Layout(params.paths)
    assert validated.report["class_counts"] == {"bird": 10, "cat": 10}  # counted from the shapes' boxes

    shapes = read_parquet(layout.shapes)
    store = MaskStore(layout.mask_cache, shapes, read_classes(layout.classes), "area")
    assert store.classes == MODEL
    by_name = {image.name: image for image in SEG_SPEC}
    for row in validated.manifest.itertuples():
        height, width = int(row.height), int(row.width)  # pyright: ignore[reportArgumentType]
        mask = store.mask(str(row.image_id), str(row.sha256), height, width)
        expected = _expected(by_name[Path(str(row.path)).name])
        assert np.array_equal(mask, expected), (name, row.path, np.argwhere(mask != expected)[:5])

    result = split.run(params)
    assert set(result.splits["split"]) == {"train", "val", "test"}
    audit = json.loads(layout.split_audit.read_text(encoding="utf-8"))
    assert set(audit["splits"]["train"]["class_counts"]) == {"bird", "cat"}  # stratified on classes present

    augmented = augment.run(params)
    assert augmented.task == "segment" and augmented.preview_file is not None
    assert augmented.preview_file.is_file() and Image.open(augmented.preview_file).size[0] > 200
    policy = augmentation.load_policy(augmented.policy_file)
    image = np.zeros((32, 32, 3), np.uint8)
    for seed in range(5):
        _, moved = augmentation.augment_pair(policy, image, _expected(SEG_SPEC[0]), seed)
        assert set(np.unique(moved)) <= {0, INDEX["bird"], INDEX["cat"], IGNORE_INDEX}  # nearest: no blends


# ---- refusals -----------------------------------------------------------------------------


def test_a_source_without_shapes_is_refused_in_one_sentence(tmp_path: Path) -> None:
    folder = make_classify_source(tmp_path / "folder", per_class=2)
    with pytest.raises(DataError, match=r"data.task is segment but data.source is a folder-per-class") as exc:
        ingest.run(_seg_params(tmp_path / "a", folder))
    assert str(exc.value).count(". ") == 0 and "COCO segmentation" in str(exc.value)
    with pytest.raises(DataError, match="Pascal VOC XML, which holds boxes only"):
        ingest.run(_seg_params(tmp_path / "b", writers.write_voc(tmp_path / "voc")))
    with pytest.raises(DataError, match=r"'yolo' annotations in data.source hold no polygon, RLE or mask"):
        ingest.run(_seg_params(tmp_path / "c", write_yolo(tmp_path / "yolo")))


def test_boxes_without_shapes_beside_shapes_are_named_in_a_warning(tmp_path: Path) -> None:
    source = writers.write_coco(tmp_path / "source")  # the shared spec: two boxes, two polygons
    result = ingest.run(_seg_params(tmp_path, source))
    assert any("2 boxes in data.source have no polygon or mask" in w for w in result.summary["warnings"])


# ---- the policy moves masks ---------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(augmentation.PRESETS))
def test_every_preset_builds_for_segment_with_nearest_masks(preset: str) -> None:
    policy = augmentation.build_policy(
        AugmentSection.model_validate({"preset": preset}), seed=0, task="segment"
    )
    assert "bboxes" not in policy.processors
    for transform in policy.transforms:
        if hasattr(transform, "mask_interpolation"):
            assert transform.mask_interpolation == 0  # type: ignore[attr-defined]
        if hasattr(transform, "border_mode") and hasattr(transform, "fill_mask"):
            assert transform.fill_mask == IGNORE_INDEX  # type: ignore[attr-defined]


def test_image_and_mask_move_together_and_the_border_is_ignored() -> None:
    image = np.zeros((24, 32, 3), np.uint8)
    image[4:10, 2:8] = 255
    mask = np.zeros((24, 32), np.uint8)
    mask[4:10, 2:8] = 2
    flip = augmentation.build_policy(
        AugmentSection(transforms=(TransformSpec(name="HorizontalFlip", params={"p": 1}),)),
        seed=0,
        task="segment",
    )
    out_image, out_mask = augmentation.augment_pair(flip, image, mask, seed=3)
    assert np.array_equal(out_mask == 2, out_image[..., 0] == 255) and out_mask[4, 31 - 2] == 2
    shift = AugmentSection(
        transforms=(
            TransformSpec(name="Affine", params={"translate_px": {"x": 6, "y": 0}, "rotate": 7, "p": 1}),
        )
    )
    _, moved = augmentation.augment_pair(
        augmentation.build_policy(shift, seed=0, task="segment"), image, mask, seed=1
    )
    assert set(np.unique(moved)) <= {0, 2, IGNORE_INDEX} and (moved[:, :6] == IGNORE_INDEX).any()
    with pytest.raises(ValueError, match="mask"):
        augmentation.augment_pair(flip, image, mask[:, :5], seed=0)


def test_a_transform_that_cannot_move_masks_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    class BoxOnlyShift(A.DualTransform):
        _targets = (Targets.IMAGE, Targets.BBOXES)

    monkeypatch.setattr(A, "BoxOnlyShift", BoxOnlyShift, raising=False)
    section = AugmentSection(transforms=(TransformSpec(name="BoxOnlyShift", params={}),))
    with pytest.raises(ParamsError, match="'BoxOnlyShift' moves pixels but not masks") as exc:
        augmentation.build_policy(section, seed=0, task="segment")
    assert "data.task: segment" in str(exc.value) and "leave it out" in str(exc.value)
    blended = AugmentSection(transforms=(TransformSpec(name="Affine", params={"mask_interpolation": 1}),))
    with pytest.raises(ParamsError, match="Affine has mask_interpolation 1"):
        augmentation.build_policy(blended, seed=0, task="segment")


def test_the_preview_lays_the_mask_over_each_view(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writers, "SPEC", SEG_SPEC[:2])
    source = writers.write_coco(tmp_path / "source")
    params = _seg_params(tmp_path, source)
    ingest.run(params)
    layout = Layout(params.paths)
    manifest = read_parquet(layout.ingest_manifest)
    shapes = read_parquet(layout.ingest_shapes)
    policy = augmentation.build_policy(params.augment, 0, task="segment")
    drawn: list[np.ndarray] = []
    real = previews._overlay
    monkeypatch.setattr(previews, "_overlay", lambda m: drawn.append(m) or real(m))
    out = previews.render_preview(
        policy, manifest, params, tmp_path / "p.png", shapes=shapes, classes=CLASSES
    )
    assert out is not None and out.is_file()
    assert len(drawn) == 2 * 3  # two images, original and two views each
    layer = real(_expected(SEG_SPEC[0]))
    assert layer.shape == (32, 32, 4) and layer[0, 0, 3] == 0 and 0 < layer[12, 12, 3] < 1  # see-through
