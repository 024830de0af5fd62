"""Vendor splits and fixed cameras: degenerate hash clusters are reported with their fix, the
embedding check tells a copy from a moved piece, and name twins across a vendor's split are caught."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stages import ingest, split, validate
from stages.core.errors import DataError
from stages.core.layout import Layout
from stages.core.params import SplitSection
from stages.dataprep.leakage import TWIN_PATTERN, name_twin_pairs, twin_key
from stages.dataprep.pair_features import backbone_embedder, confirm_pairs
from tests.conftest import detect_params, fast_params, write_coco
from tests.scenes import save, scene

# --- a fixed camera: one background, a piece moved between shots -------------------------------


def _board(position: tuple[int, int], piece: int = 5, size: int = 64) -> Image.Image:
    """The tripod shot: a fixed scene with one small red piece at ``position``."""
    pixels = np.asarray(scene(7, (size, size))).copy()
    y, x = position
    pixels[y : y + piece, x : x + piece] = (200, 60, 60)
    return Image.fromarray(pixels)


def _copy(image: Image.Image, quality: int | None = None) -> Image.Image:
    """A true copy: resized by 5 %, and re-encoded at JPEG ``quality`` when given."""
    resized = image.resize((image.width * 95 // 100, image.height * 95 // 100), Image.Resampling.LANCZOS)
    if quality is None:
        return resized
    buffer = io.BytesIO()
    resized.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _fixed_camera_source(root: Path, shots: int = 30, others: int = 6, piece: int = 5) -> None:
    """``shots`` tripod shots (the piece moved) and ``others`` unrelated photos, in two classes."""
    rng = np.random.default_rng(0)
    for shot in range(shots):
        y, x = (int(v) for v in rng.integers(0, 64 - piece, 2))
        save(_board((y, x), piece), root / ("left" if shot % 2 else "right") / f"shot{shot:02d}.png")
    for i in range(others):
        save(scene(700 + i, (64, 64)), root / ("left" if i % 2 else "right") / f"other{i}.png")


def test_a_degenerate_clustering_is_reported_with_the_param_that_fixes_it(tmp_path: Path) -> None:
    source = tmp_path / "source"
    _fixed_camera_source(source)
    params = fast_params(tmp_path, source)
    ingest.run(params)
    validate.run(params)
    result = split.run(params)
    near = result.audit["near_duplicates"]
    assert near["degenerate"] is True and near["largest_cluster"] > near["images"] / 2
    degenerate = [
        w for w in result.audit["warnings"] if w.startswith("near-duplicate clustering is degenerate")
    ]
    assert len(degenerate) == 1 and "split.near_duplicates.confirm: embedding" in degenerate[0]
    # and the split sizes that follow from it are said, not silent
    assert result.audit["fractions_missed"] is True
    assert any("for the asked 70%/15%/15%" in w for w in result.audit["warnings"])
    written = json.loads(Layout(params.paths).split_audit.read_text())
    assert written["near_duplicates"]["degenerate"] is True

    only_shots = tmp_path / "only_shots"  # nothing but the tripod: one unit, no split at all
    _fixed_camera_source(only_shots, others=0)
    params = fast_params(tmp_path / "b", only_shots)
    ingest.run(params)
    validate.run(params)
    with pytest.raises(DataError, match=r"degenerate.*split\.near_duplicates\.confirm: embedding"):
        split.run(params)


def test_an_ordinary_clustering_is_not_called_degenerate(tmp_path: Path) -> None:
    source = tmp_path / "source"
    for i in range(24):  # distinct scenes, one resized copy
        save(scene(500 + i, (64, 64)), source / ("a" if i % 2 else "b") / f"{i}.png")
    save(_copy(scene(500, (64, 64)), quality=60), source / "b" / "0_copy.png")
    params = fast_params(tmp_path, source)
    ingest.run(params)
    validate.run(params)
    audit = split.run(params).audit
    assert audit["near_duplicates"]["pairs"] >= 1 and audit["near_duplicates"]["degenerate"] is False
    assert not any("degenerate" in w for w in audit["warnings"])


def _rows(ids: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"image_id": ids, "path": [f"{i}.png" for i in ids], "sha256": [i * 8 for i in ids]})


def test_confirm_pairs_keeps_pairs_whose_features_are_near_and_drops_the_rest() -> None:
    manifest = _rows(["a", "b", "c"])
    features = {"a": [1.0, 0.0, 0.0], "b": [0.99, 0.05, 0.0], "c": [0.6, 0.8, 0.0]}
    seen: list[list[str]] = []

    def embed(rows: pd.DataFrame) -> np.ndarray:
        seen.append(rows["image_id"].tolist())
        return np.array([features[i] for i in rows["image_id"]])

    pairs = pd.DataFrame({"image_id_a": ["a", "a"], "image_id_b": ["b", "c"], "phash": [3, 9]})
    kept, summary = confirm_pairs(pairs, manifest, embed, 0.97)
    assert kept[["image_id_a", "image_id_b"]].values.tolist() == [["a", "b"]]
    assert kept["similarity"].iloc[0] == pytest.approx(0.99 / np.hypot(0.99, 0.05), abs=1e-6)
    assert summary == {
        "hash_pairs": 2,
        "confirmed": 1,
        "min_similarity": 0.97,
        "images_embedded": 3,
    }
    assert seen == [["a", "b", "c"]]  # only images in a pair, sorted by id
    empty, summary = confirm_pairs(pairs.iloc[:0], manifest, embed, 0.97)
    assert empty.empty and summary["confirmed"] == 0 and len(seen) == 1  # nothing embedded


def test_the_real_backbone_keeps_a_resized_copy_and_drops_a_moved_piece(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shot = _board((20, 20), piece=32, size=128)
    save(shot, source / "shot.png")
    save(_copy(shot), source / "copy.png")
    save(_board((80, 84), piece=32, size=128), source / "moved.png")
    manifest = _rows(["copy", "moved", "shot"])
    manifest["sha256"] = [f"{i:064d}" for i in range(3)]
    params = fast_params(tmp_path, source)  # efficientnet_lite0 at 64 px, CPU
    pairs = pd.DataFrame({"image_id_a": ["copy", "moved"], "image_id_b": ["shot", "shot"]})
    threshold = SplitSection().near_duplicates.embedding_min_similarity
    kept, summary = confirm_pairs(pairs, manifest, backbone_embedder(params), threshold)
    assert kept[["image_id_a", "image_id_b"]].values.tolist() == [["copy", "shot"]], kept
    assert summary["images_embedded"] == 3


def test_confirm_embedding_splits_a_fixed_camera_set_by_fractions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "source"
    _fixed_camera_source(source)
    asked: list[int] = []

    def embedder(params):  # features injected: every image its own direction, so no pair is confirmed
        def embed(rows: pd.DataFrame) -> np.ndarray:
            asked.append(len(rows))
            return np.eye(len(rows))

        return embed

    monkeypatch.setattr(split, "backbone_embedder", embedder)
    params = fast_params(tmp_path, source, split={"near_duplicates": {"confirm": "embedding"}})
    ingest.run(params)
    validate.run(params)
    audit = split.run(params).audit
    near = audit["near_duplicates"]
    assert asked == [30]  # the tripod shots, the images in some hash pair
    assert near["embedding"]["largest_hash_cluster"] == 30 and near["embedding"]["confirmed"] == 0
    assert near["degenerate"] is False and near["largest_cluster"] == 1
    assert audit["fractions_missed"] is False


# --- name twins: a Roboflow export whose split separates two crops of one photo -----------------

RF = "_png_jpg.rf.{:032x}.jpg"


def _roboflow_export(root: Path) -> dict[str, str]:
    """train/valid/test with ``_annotations.coco.json``; photo p07's two crops sit in train and test."""
    placement = {f"p{i:02d}": "train" for i in range(10)} | {"p10": "valid", "p11": "valid", "p12": "test"}
    files: dict[str, list] = {"train": [], "valid": [], "test": []}
    where: dict[str, str] = {}
    for photo, folder in placement.items():
        for crop in (0, 1):
            side = "test" if (photo, crop) == ("p07", 1) else folder
            digest = int(hashlib.md5(f"{photo}{crop}".encode()).hexdigest(), 16)
            name = f"{photo}_scaled_{crop}" + RF.format(digest)
            files[side].append((name, (48, 48), [("window", 4, 4, 30, 30)]))
            save(scene(len(where) + 900, (48, 48)), root / side / name)  # two crops: distinct pixels
            where[name] = side
    for side, spec in files.items():
        write_coco(root / side, spec, ["window"], "_annotations.coco.json", ".", write_images=False)
    return where


def test_twin_key_strips_vendor_tails_and_numbered_suffixes_only() -> None:
    assert twin_key("train/IMG_0884_scaled_0_png_jpg.rf.a146c1acdea630c4a485c2e552ba3995.jpg") == "IMG_0884"
    assert twin_key("a/b/board_tile_12.png") == "board"
    assert twin_key("valid/cat_png.rf.0123456789abcdef.jpg") == "cat"  # Roboflow augmentations of cat.png
    assert twin_key("train/0001.jpg") is None and twin_key("img_7.jpg") is None
    # Ordinary numbering is not a view of one photo: cat_1 and cat_2 in two splits are no twins.
    assert twin_key("cat/cat_photo_1.jpg") is None and twin_key("frame-07.png") is None
    frame = pd.DataFrame(
        {
            "path": ["train/x_scaled_0.jpg", "test/x_scaled_1.jpg", "train/0001.jpg", "test/0001.jpg"],
            "split": ["train", "test", "train", "test"],
            "sha256": ["1", "2", "3", "4"],
        }
    )
    assert [(p["a"], p["b"], p["key"]) for p in name_twin_pairs(frame)] == [
        ("train/x_scaled_0.jpg", "test/x_scaled_1.jpg", "x")
    ]
    frame["group"] = pd.array(["g", "g", None, None], dtype="string")
    assert name_twin_pairs(frame) == []  # one group: the group audit's business


def test_name_twins_across_a_vendor_split_fail_the_audit_and_the_regex_rule_keeps_them_together(
    tmp_path: Path,
) -> None:
    source = tmp_path / "export"
    where = _roboflow_export(source)
    params = detect_params(tmp_path, source)
    ingest.run(params)
    validate.run(params)
    layout = Layout(params.paths)
    with pytest.raises(DataError) as failure:
        split.run(params)
    message = str(failure.value)
    assert "1 name twins" in message and "rule: regex" in message and TWIN_PATTERN in message
    twins = json.loads(layout.leakage_report.read_text())["name_twins"]
    assert [(Path(t["a"]).name[:12], Path(t["b"]).name[:12], t["key"]) for t in twins] == [
        ("p07_scaled_0", "p07_scaled_1", "p07")
    ]

    regrouped = params.split.model_copy(
        update={
            "honour_predefined": False,
            "groups": params.split.groups.model_copy(update={"rule": "regex", "pattern": TWIN_PATTERN}),
        }
    )
    result = split.run(params.model_copy(update={"split": regrouped}))
    assert result.leakage["counts"]["name_twins"] == 0 and result.leakage["counts"]["groups"] == 0
    assert result.audit["groups"]["groups"] == len(where) // 2  # one group per photo
    paths = pd.read_parquet(layout.manifest).merge(result.splits, on="image_id")
    paths["photo"] = paths["path"].str.extract(r"(p\d\d)_scaled")[0]
    assert (paths.groupby("photo")["split_y"].nunique() == 1).all()
