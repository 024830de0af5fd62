"""Shared fixtures: tiny generated datasets and params that point every path into tmp_path."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import stages  # noqa: F401  (applies the offline environment before anything else)
from stages.core.params import Params, parse_params

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_image(
    path: Path,
    seed: int,
    size: tuple[int, int] = (48, 40),
    tint=(0, 0, 0),
    mode: str = "RGB",
    fmt: str | None = None,
) -> Path:
    """A small noisy image whose mean colour is pulled towards ``tint`` (so classes differ)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 120, size=(size[1], size[0], 3)) + np.array(tint)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype("uint8"), "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)
    return path


def make_classify_source(
    root: Path, per_class: int = 12, classes: dict | None = None, size: tuple[int, int] = (48, 40)
) -> Path:
    """``root/<class>/img_<i>.png`` with a distinct colour per class."""
    classes = classes or {"cat": (130, 0, 0), "dog": (0, 0, 130)}
    for c, (name, tint) in enumerate(classes.items()):
        for i in range(per_class):
            write_image(root / name / f"img_{i:03d}.png", seed=1000 * c + i, size=size, tint=tint)
    return root


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root (to prove a stage never writes into its input)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def fast_params(tmp_path: Path, source: Path, **sections: dict[str, Any]) -> Params:
    """Params for quick tests: tiny images, few epochs, every output under tmp_path."""
    raw: dict[str, Any] = {
        "data": {"source": str(source), "format": "auto", "task": "classify"},
        "paths": {
            name: str(tmp_path / "out" / name)
            for name in ("interim", "processed", "models", "reports", "cache")
        },
        "validate": {"workers": 1},
        "augment": {"preview": {"images": 2, "views": 2}},
        "train": {
            "backbone": "efficientnet_lite0",  # half the compute of the default Lite2
            "image_size": 64,
            "epochs": 8,
            "aug_views": 1,
            "patience": 3,
            "feature_batch_size": 16,
            "device": "cpu",
        },
        "evaluate": {"bootstrap": 50},
    }
    for key, values in sections.items():
        raw.setdefault(key, {}).update(values)
    return parse_params(raw)


@pytest.fixture
def classify_source(tmp_path: Path) -> Path:
    return make_classify_source(tmp_path / "source")


# --- detection sources: one spec, written in each annotation format -------------------------

DetectImage = tuple[str, tuple[int, int], list[tuple[str, float, float, float, float]]]
"""``(file name, (width, height), [(class, x_min, y_min, x_max, y_max), ...])`` in pixels."""

DETECT_SPEC: list[DetectImage] = [
    ("a.png", (64, 48), [("bird", 8, 6, 40, 30), ("cat", 32, 12, 64, 48)]),
    ("b.png", (48, 64), [("cat", 4, 8, 28, 40)]),
    ("c.png", (64, 64), []),  # a background image
    ("d é.png", (32, 48), [("bird", 0, 0, 16, 24), ("bird", 16, 24, 32, 48)]),
]
DETECT_CLASSES = ["bird", "cat"]  # sorted, so COCO/YOLO order equals VOC's sorted order


def write_detect_images(folder: Path, spec: list[DetectImage] = DETECT_SPEC) -> None:
    for index, (name, size, _) in enumerate(spec):
        write_image(folder / name, seed=300 + index, size=size)


def write_coco(
    root: Path,
    spec: list[DetectImage] = DETECT_SPEC,
    classes: list[str] = DETECT_CLASSES,
    json_name: str = "annotations.json",
    image_dir: str = "images",
    write_images: bool = True,
) -> dict:
    """A COCO export: ``<root>/<json_name>`` with images under ``<root>/<image_dir>``; returns the dict."""
    if write_images:
        write_detect_images(root / image_dir, spec)
    doc: dict = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i + 1, "name": n, "supercategory": "thing"} for i, n in enumerate(classes)],
    }
    for image_id, (name, (w, h), boxes) in enumerate(spec, start=1):
        doc["images"].append({"id": image_id, "file_name": name, "width": w, "height": h})
        for cls, x0, y0, x1, y1 in boxes:
            doc["annotations"].append(
                {
                    "id": len(doc["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": classes.index(cls) + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "iscrowd": 0,
                }
            )
    (root / json_name).parent.mkdir(parents=True, exist_ok=True)
    import json

    (root / json_name).write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return doc


def yolo_row(cls: int, box: tuple[float, float, float, float], size: tuple[int, int]) -> str:
    x0, y0, x1, y1 = box
    w, h = size
    return f"{cls} {(x0 + x1) / 2 / w!r} {(y0 + y1) / 2 / h!r} {(x1 - x0) / w!r} {(y1 - y0) / h!r}"


def write_yolo(
    root: Path,
    spec: list[DetectImage] = DETECT_SPEC,
    classes: list[str] = DETECT_CLASSES,
    split: str | None = None,
    names_file: str = "data.yaml",
) -> Path:
    """``images/[split/]`` + ``labels/[split/]`` + ``data.yaml`` (or ``classes.txt``); background: no file."""
    sub = Path(split) if split else Path()
    write_detect_images(root / "images" / sub, spec)
    for name, size, boxes in spec:
        if boxes:
            rows = [yolo_row(classes.index(c), (x0, y0, x1, y1), size) for c, x0, y0, x1, y1 in boxes]
            label = root / "labels" / sub / Path(name).with_suffix(".txt")
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("\n".join(rows) + "\n", encoding="utf-8")
    if names_file == "data.yaml":
        import yaml

        (root / "data.yaml").write_text(
            yaml.safe_dump({"names": classes, "nc": len(classes)}), encoding="utf-8"
        )
    else:
        (root / names_file).write_text("\n".join(classes) + "\n", encoding="utf-8")
    return root


def voc_xml(name: str, size: tuple[int, int], boxes: list, flags: tuple[int, int] = (0, 0)) -> str:
    objects = "".join(
        f"<object><name>{c}</name><truncated>{flags[0]}</truncated><difficult>{flags[1]}</difficult>"
        f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for c, x0, y0, x1, y1 in boxes
    )
    return (
        f"<annotation><folder>JPEGImages</folder><filename>{name}</filename>"
        f"<path>/Users/someone/Desktop/{name}</path>"
        f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
        f"{objects}</annotation>"
    )


def write_voc(
    root: Path,
    spec: list[DetectImage] = DETECT_SPEC,
    annotations: str = "Annotations",
    images: str = "JPEGImages",
) -> Path:
    """One XML per image (stale absolute ``<path>`` included, as exporters leave it)."""
    write_detect_images(root / images, spec)
    (root / annotations).mkdir(parents=True, exist_ok=True)
    for name, size, boxes in spec:
        xml = root / annotations / Path(name).with_suffix(".xml")
        xml.write_text(voc_xml(name, size, boxes), encoding="utf-8")
    return root


def detect_params(tmp_path: Path, source: Path, **sections: dict[str, Any]) -> Params:
    """``fast_params`` for a detection source."""
    data = {"task": "detect", **sections.pop("data", {})}
    return fast_params(tmp_path, source, data=data, **sections)


def guard_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``stages.ingest.run`` / ``stages.validate.run`` call then checks that it left
    ``data.source`` byte-identical (use from an autouse fixture)."""
    import stages.ingest
    import stages.validate

    for module in (stages.ingest, stages.validate):

        def checked(params: Params, _real=module.run):
            source = Path(params.data.source)
            before = tree_digest(source) if source.is_dir() else None
            try:
                return _real(params)
            finally:
                if before is not None:
                    assert tree_digest(source) == before, f"a stage wrote into {source}"

        monkeypatch.setattr(module, "run", checked)
