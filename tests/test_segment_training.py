"""The segmenter and its training (``data.task: segment``) on tiny generated images with drawn shapes.

The data bypass ingest/validate/split: manifest, splits, shapes, classes and the augment policy
are written in the contract's formats, so these tests exercise the model, the loop and the
checkpoint only. Every image is 64 px and the encoder is the offline EfficientNet-Lite0.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from stages import train
from stages.core.contracts import image_id_from_sha256, manifest_frame, shapes_frame, write_parquet
from stages.core.errors import UserError
from stages.core.layout import Layout
from stages.core.params import Params
from stages.dataprep.segment_preprocess import resize_mask, restore_mask, segment_input
from stages.dataprep.semantic_masks import IGNORE_INDEX, MaskStore
from stages.engine.segmentation.inference import predict_masks
from stages.engine.segmentation.trainer import (
    SegmentResult,
    median_frequency_weights,
    miou_and_accuracy,
    segmentation_loss,
)
from stages.engine.strategies import apply_freeze, body_block_count, set_train_mode, trainable_blocks
from stages.metrics.segmentation import confusion, headline_values
from stages.models.backbones import create_classifier
from stages.models.segmenters import create_segmenter, encoder_of, load_segmenter
from tests.conftest import fast_params

SIZE = 64
CLASSES = ["box", "disc"]  # model classes: background, box, disc
MODEL_CLASSES = ["background", *CLASSES]


def _circle(cx: float, cy: float, r: float, n: int = 16) -> list[float]:
    angles = [2 * math.pi * k / n for k in range(n)]
    return [v for a in angles for v in (cx + r * math.cos(a), cy + r * math.sin(a))]


def make_segment_data(root: Path, out: Layout, train_n: int = 16, val_n: int = 6, seed: int = 0) -> None:
    """Noise images with a red rectangle (box) and a blue disc, plus the contract's files."""
    rng = np.random.default_rng(seed)
    manifest, shapes, splits = [], [], []
    for i in range(train_n + val_n):
        pixels = rng.integers(0, 110, size=(SIZE, SIZE, 3)).astype(np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        x0, y0 = (int(v) for v in rng.integers(2, 24, size=2))
        w, h = (int(v) for v in rng.integers(14, 26, size=2))
        rect = [x0, y0, x0 + w, y0, x0 + w, y0 + h, x0, y0 + h]
        cx, cy, r = float(rng.integers(36, 50)), float(rng.integers(36, 50)), float(rng.integers(7, 12))
        disc = _circle(cx, cy, r)
        draw.polygon(rect, fill=(220, 40, 40))
        draw.polygon(disc, fill=(40, 40, 220))
        name = f"img_{i:03d}.png"
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        image_id = image_id_from_sha256(sha)
        manifest.append(
            {
                "image_id": image_id,
                "path": name,
                "sha256": sha,
                "width": SIZE,
                "height": SIZE,
                "label": "",
                "group": "",
                "split": "",
                "source": "test",
            }
        )
        for z, (cls, points) in enumerate((("box", rect), ("disc", disc))):
            xs, ys = points[0::2], points[1::2]
            shapes.append(
                {
                    "image_id": image_id,
                    "class_name": cls,
                    "kind": "polygon",
                    "points": [float(v) for v in points],
                    "counts": None,
                    "iscrowd": False,
                    "occluded": False,
                    "z_order": z,
                    "attributes": "{}",
                    "x_min": min(xs),
                    "y_min": min(ys),
                    "x_max": max(xs),
                    "y_max": max(ys),
                }
            )
        splits.append({"image_id": image_id, "split": "train" if i < train_n else "val"})
    write_parquet(manifest_frame(manifest), out.manifest)
    write_parquet(shapes_frame(shapes), out.shapes)
    import pandas as pd

    write_parquet(pd.DataFrame(splits), out.splits)
    out.classes.parent.mkdir(parents=True, exist_ok=True)
    out.classes.write_text(json.dumps(CLASSES), encoding="utf-8")
    out.augment_policy.parent.mkdir(parents=True, exist_ok=True)
    A.save(A.Compose([A.HorizontalFlip(p=0.5)], seed=seed), str(out.augment_policy), data_format="json")


def segment_params(tmp_path: Path, train_n: int = 16, **train_values) -> Params:
    source = tmp_path / "source"
    values = {
        "strategy": "full",
        "epochs": 6,
        "batch_size": 8,
        "lr": 0.003,
        "backbone_lr_mult": 1.0,
        "patience": 10,
        "monitor": "val_miou",
        "segmenter": {"image_size": SIZE, "decoder": "unet"},
        **train_values,
    }
    params = fast_params(tmp_path, source, data={"task": "segment"}, train=values)
    layout = Layout(params.paths)
    if not layout.manifest.is_file():
        make_segment_data(source, layout, train_n=train_n)
    return params


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    tmp_path = tmp_path_factory.mktemp("segment")
    params = segment_params(tmp_path)
    return params, train.run(params)


def _val_truth(params: Params) -> tuple[list[Path], list[np.ndarray]]:
    layout = Layout(params.paths)
    manifest = pd_read(layout.manifest).merge(pd_read(layout.splits), on="image_id", suffixes=("_m", ""))
    val = manifest[manifest["split"] == "val"].sort_values("image_id")
    store = MaskStore(layout.paths.cache / "masks", pd_read(layout.shapes), CLASSES, "area")
    files = [params.data.source / p for p in val["path"]]
    truth = [store.mask(i, s, SIZE, SIZE) for i, s in zip(val["image_id"], val["sha256"], strict=True)]
    return files, truth


def pd_read(path: Path):
    import pandas as pd

    return pd.read_parquet(path)


# --- preprocessing -------------------------------------------------------------------------------


def test_segment_input_resizes_and_normalises() -> None:
    image = np.full((30, 50, 3), 255, dtype=np.uint8)
    image[:, :25] = 0
    x = segment_input(image, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    assert x[:, :, 0].max() == pytest.approx(-1.0) and x[:, :, -1].min() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="RGB"):
        segment_input(image[:, :, 0], 32, (0.5,) * 3, (0.5,) * 3)


def test_masks_resize_nearest_and_restore_to_the_image_size() -> None:
    mask = np.zeros((40, 60), dtype=np.uint8)
    mask[10:30, 15:45] = 2
    mask[0, 0] = IGNORE_INDEX
    small = resize_mask(mask, 32)
    assert small.shape == (32, 32) and small.dtype == np.uint8
    assert set(np.unique(small)) <= {0, 2, IGNORE_INDEX}  # no interpolated class
    back = restore_mask(small, 40, 60)
    assert back.shape == (40, 60) and set(np.unique(back)) <= {0, 2, IGNORE_INDEX}
    assert (back == mask).mean() > 0.95
    assert restore_mask(mask, 40, 60) is not mask and np.array_equal(restore_mask(mask, 40, 60), mask)


# --- model ---------------------------------------------------------------------------------------


def test_offline_weights_load_into_the_encoder_and_none_is_random() -> None:
    bundled = create_classifier("efficientnet_lite0", "offline", 0).model.state_dict()
    offline = create_segmenter("efficientnet_lite0", "offline", "unet", 3, SIZE)
    encoder = encoder_of(offline.model).state_dict()
    assert len(encoder) > 100 and all(torch.equal(bundled[k], v) for k, v in encoder.items())
    assert offline.preprocessing == {"input_size": SIZE, "mean": [0.5] * 3, "std": [0.5] * 3}
    assert offline.weights_id.startswith("efficientnet_lite0:")
    random = encoder_of(create_segmenter("efficientnet_lite0", "none", "fpn", 3, SIZE).model)
    assert not torch.equal(random.state_dict()["conv_stem.weight"], bundled["conv_stem.weight"])
    with pytest.raises(UserError, match="hub"):
        create_segmenter("efficientnet_lite0", "hub", "unet", 3, SIZE)


@pytest.mark.parametrize("decoder", ["unet", "fpn", "deeplabv3plus"])
def test_every_decoder_gives_a_logit_map_per_class(decoder: str) -> None:
    model = create_segmenter("efficientnet_lite0", "none", decoder, 3, SIZE).model.eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, SIZE, SIZE)).shape == (2, 3, SIZE, SIZE)


def test_strategies_freeze_the_encoder_blocks() -> None:
    model = create_segmenter("efficientnet_lite0", "none", "unet", 3, SIZE).model
    blocks = body_block_count(model)
    assert blocks == 8  # stem + blocks.0..6

    def trains(prefix: str) -> set[bool]:
        return {p.requires_grad for n, p in model.named_parameters() if n.startswith(prefix)}

    cfg = segment_params_cfg(strategy="linear_probe")
    frozen = apply_freeze(model, trainable_blocks(cfg, 0, blocks))
    assert trains("encoder.") == {False}
    assert trains("decoder.") == {True} and trains("segmentation_head.") == {True}
    set_train_mode(model, frozen)
    assert not model.get_submodule("encoder.model.bn1").training  # frozen BN statistics stay frozen
    assert model.get_submodule("decoder.blocks.0.conv1.1").training

    cfg = segment_params_cfg(strategy="partial", unfreeze_blocks=2)
    apply_freeze(model, trainable_blocks(cfg, 0, blocks))
    for i in range(7):
        assert trains(f"encoder.model.blocks.{i}.") == {i >= 5}
    assert trains("encoder.model.conv_stem") == {False} and trains("decoder.") == {True}

    cfg = segment_params_cfg(strategy="full")
    apply_freeze(model, trainable_blocks(cfg, 0, blocks))
    assert trains("encoder.") == {True}


def segment_params_cfg(**values):
    from stages.core.params import TrainSection

    return TrainSection(**values)


def test_loss_skips_ignored_pixels_and_adds_dice() -> None:
    from stages.core.params import SegmenterSection

    logits = torch.randn(2, 3, 8, 8)
    targets = torch.randint(0, 3, (2, 8, 8))
    ignored = targets.clone()
    ignored[:, :4] = IGNORE_INDEX
    ce = segmentation_loss(SegmenterSection(), 0.0, None, torch.device("cpu"))
    expected = torch.nn.functional.cross_entropy(logits[:, :, 4:], targets[:, 4:])
    torch.testing.assert_close(ce(logits, ignored), expected)
    dice = segmentation_loss(
        SegmenterSection(loss="ce_dice", dice_weight=2.0), 0.0, None, torch.device("cpu")
    )
    assert dice(logits, ignored) > ce(logits, ignored)
    with pytest.raises(ValueError, match="multiple of 32"):
        SegmenterSection(image_size=100)


def test_training_miou_agrees_with_evaluate_metrics() -> None:
    rng = np.random.default_rng(0)
    truth, pred = rng.integers(0, 4, (2, 32, 32)).astype(np.uint8)
    pred[pred == 3] = 2  # class 3 only in the truth; nothing in class 3's prediction
    truth[truth == 1] = 0  # class 1 only predicted
    cm = confusion(truth, pred, 5)  # class 4 nowhere: left out of the mean
    values = headline_values(cm)
    miou, accuracy = miou_and_accuracy(cm)
    assert miou == pytest.approx(float(values["miou"])) and accuracy == pytest.approx(
        float(values["pixel_accuracy"])
    )


def test_median_frequency_weights() -> None:
    weights = median_frequency_weights(np.array([800, 100, 100, 0]))
    np.testing.assert_allclose(weights, [0.125, 1.0, 1.0, 1.0])


# --- training ------------------------------------------------------------------------------------


def test_training_beats_a_constant_predictor_and_the_checkpoint_predicts_the_same(trained) -> None:
    params, result = trained
    layout = Layout(params.paths)
    files, truth = _val_truth(params)
    constant = headline_values(np.sum([confusion(t, np.zeros_like(t), 3) for t in truth], axis=0))["miou"]
    assert result.best_val_miou is not None
    assert result.best_val_miou > float(constant) + 0.2, (result.best_val_miou, constant)

    model, meta = load_segmenter(layout.segmenter)
    assert meta["task"] == "segment" and meta["classes"] == MODEL_CLASSES
    assert meta["decoder"] == "unet" and meta["ignore_index"] == IGNORE_INDEX
    assert meta["preprocessing"] == {"input_size": SIZE, "mean": [0.5] * 3, "std": [0.5] * 3}
    torch.load(layout.segmenter, weights_only=True)  # tensors and JSON only
    masks = list(predict_masks(model, meta, files, torch.device("cpu"), batch=4))
    assert [m.shape for m in masks] == [(SIZE, SIZE)] * len(files)
    # The training size is the image size here, so the reloaded model's val mIoU is the recorded one.
    scored = headline_values(np.sum([confusion(t, p, 3) for t, p in zip(truth, masks, strict=True)], axis=0))[
        "miou"
    ]
    assert float(scored) == pytest.approx(result.best_val_miou, abs=1e-6)
    again = list(predict_masks(load_segmenter(layout.segmenter)[0], meta, files[:2], torch.device("cpu"), 1))
    assert all(np.array_equal(a, b) for a, b in zip(again, masks, strict=False))

    run = json.loads((layout.train_log_dir / "run.json").read_text())
    assert run["task"] == "segment" and run["strategy"] == "full"
    assert (layout.train_log_dir / "metrics.json").is_file()
    assert "val_miou" in str(result) or "val mIoU" in str(result)


def test_finished_run_is_reused_and_a_killed_run_resumes(trained, tmp_path: Path) -> None:
    params, result = trained
    seen: list[int] = []
    train.run(params, on_epoch=lambda epoch, metrics: seen.append(epoch))  # finished: nothing trains
    assert seen == list(range(1, result.epochs_run + 1))

    other = segment_params(tmp_path, epochs=3)

    class Killed(Exception):
        pass

    def die_after_two(epoch: int, metrics: dict[str, float]) -> None:
        assert "val_miou" in metrics
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        train.run(other, on_epoch=die_after_two)
    state = next((Layout(other.paths).paths.cache / "seg_runs").glob("*/last.pt"))
    saved = torch.load(state, weights_only=True)
    assert saved["epoch"] == 2 and not saved["finished"]
    reported: list[tuple[int, float]] = []
    resumed = train.run(other, on_epoch=lambda epoch, m: reported.append((epoch, m["val_miou"])))
    assert [e for e, _ in reported] == [1, 2, 3]  # two restored, one trained
    assert resumed.epochs_run == 3
    assert torch.load(state, weights_only=True)["finished"]


def test_lp_ft_probes_with_a_frozen_encoder_then_fine_tunes(tmp_path: Path) -> None:
    params = segment_params(tmp_path, strategy="lp_ft", lp_epochs=1, epochs=1, monitor="val_loss")
    result = train.run(params)
    assert result.epochs_run == 2
    run_dir = next((params.paths.cache / "seg_runs").iterdir())
    probe = torch.load(run_dir / "probe.pt", weights_only=True)
    final = torch.load(run_dir / "last.pt", weights_only=True)
    assert probe["history"][0]["phase"] == "linear_probe" and final["history"][0]["phase"] == "lp_ft"
    assert probe["history"][0]["trainable_params"] < final["history"][0]["trainable_params"]
    key = "encoder.model.conv_stem.weight"
    assert not torch.equal(probe["model"][key], final["model"][key])  # the encoder moved in phase 2 only
    offline_init = create_segmenter("efficientnet_lite0", "offline", "unet", 3, SIZE).model.state_dict()[key]
    assert torch.equal(probe["model"][key], offline_init)


@pytest.mark.parametrize("imbalance", ["loss", "sampler"])
def test_deeplab_with_dice_and_class_weights_trains_on_an_odd_train_set(tmp_path: Path, imbalance) -> None:
    # 17 images, batch 8: the last batch of one would break DeepLabV3+'s pooled BatchNorm.
    params = segment_params(
        tmp_path,
        train_n=17,
        epochs=1,
        imbalance=imbalance,
        segmenter={"image_size": SIZE, "decoder": "deeplabv3plus", "loss": "ce_dice"},
    )
    result = train.run(params)
    assert isinstance(result, SegmentResult)
    assert result.epochs_run == 1 and result.best_val_miou is not None
    assert load_segmenter(result.checkpoint)[1]["decoder"] == "deeplabv3plus"


def test_refusals(tmp_path: Path) -> None:
    params = segment_params(tmp_path, distributed={"nproc": 2})
    with pytest.raises(UserError, match="distributed"):
        train.run(params)
    classify = fast_params(tmp_path, tmp_path / "source", train={"monitor": "val_miou"})
    with pytest.raises(UserError, match="val_miou"):
        train.run(classify)


def test_monitor_auto_watches_val_miou_where_it_is_measured_and_val_loss_elsewhere() -> None:
    from stages.engine.loop import EpochRecord, monitor_score

    segment = EpochRecord(
        3, "full", 0.5, val_loss=0.4, val_accuracy=0.9, lr=0.1, trainable_params=1, val_miou=0.7
    )
    classify = EpochRecord(3, "full", 0.5, val_loss=0.4, val_accuracy=0.9, lr=0.1, trainable_params=1)
    assert monitor_score(segment, "auto") == -0.7
    assert monitor_score(classify, "auto") == 0.4
    assert monitor_score(segment, "val_loss") == 0.4
