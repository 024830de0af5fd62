"""One tiny generated detection/segmentation dataset, written the way each labelling tool exports it.

``SPEC`` holds upright boxes and polygons (float pixels) on three small images whose names
carry spaces and parentheses; each writer saves the images under ``images/`` and the
annotations in its tool's own layout and units, so every import must come back to the same
manifest, boxes and shapes. The RLE encoders here exist only to build test inputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np

from tests.conftest import write_image

CLASSES = ["bird", "cat"]


@dataclass(frozen=True)
class Obj:
    kind: str  # "box" or "polygon"
    cls: str
    coords: tuple[float, ...]  # box: x0, y0, x1, y1; polygon: x0, y0, x1, y1, ...


@dataclass(frozen=True)
class Img:
    name: str
    size: tuple[int, int]
    objects: tuple[Obj, ...]


SPEC = [
    Img(
        "a (1).png",
        (64, 48),
        (
            Obj("box", "cat", (4.25, 6.5, 30.75, 40.0)),
            Obj("polygon", "bird", (40.5, 5.0, 60.0, 8.25, 50.125, 30.0)),
        ),
    ),
    Img("b c.png", (56, 40), (Obj("polygon", "cat", (2.0, 2.0, 20.0, 2.0, 20.0, 18.5, 2.0, 18.5)),)),
    Img("d.png", (48, 48), (Obj("box", "bird", (10.0, 12.0, 20.5, 33.0)),)),
]


def write_images(source: Path) -> None:
    for index, image in enumerate(SPEC):
        write_image(source / "images" / image.name, seed=index, size=image.size)


def write_coco(source: Path) -> Path:
    write_images(source)
    images, annotations = [], []
    for image_id, image in enumerate(SPEC, start=1):
        images.append(
            {"id": image_id, "file_name": image.name, "width": image.size[0], "height": image.size[1]}
        )
        for obj in image.objects:
            ann: dict = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": CLASSES.index(obj.cls) + 1,
            }
            if obj.kind == "box":
                x0, y0, x1, y1 = obj.coords
                ann["bbox"] = [x0, y0, x1 - x0, y1 - y0]
            else:
                ann["segmentation"] = [list(obj.coords)]
            annotations.append(ann)
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]
    doc = {"images": images, "annotations": annotations, "categories": categories}
    (source / "annotations.json").write_text(json.dumps(doc), encoding="utf-8")
    return source


def write_yolo(source: Path) -> Path:
    write_images(source)
    (source / "labels").mkdir(parents=True, exist_ok=True)
    (source / "data.yaml").write_text(f"names: {json.dumps(CLASSES)}\n", encoding="utf-8")
    for image in SPEC:
        w, h = image.size
        rows = []
        for obj in image.objects:
            cls = CLASSES.index(obj.cls)
            if obj.kind == "box":
                x0, y0, x1, y1 = obj.coords
                values = [(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h]
            else:
                values = [v / (w if i % 2 == 0 else h) for i, v in enumerate(obj.coords)]
            rows.append(" ".join([str(cls), *(repr(v) for v in values)]))
        (source / "labels" / Path(image.name).with_suffix(".txt")).write_text(
            "\n".join(rows) + "\n", encoding="utf-8"
        )
    return source


def write_voc(source: Path) -> Path:
    """Pascal VOC carries boxes only: a polygon is written as its tight box (what a detector reads)."""
    write_images(source)
    (source / "annotations").mkdir(parents=True, exist_ok=True)
    for image in SPEC:
        w, h = image.size
        objects = []
        for obj in image.objects:
            xs, ys = obj.coords[0::2], obj.coords[1::2]
            x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
            objects.append(
                f"<object><name>{obj.cls}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
                f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
            )
        xml = (
            f"<annotation><filename>{image.name}</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>{''.join(objects)}</annotation>"
        )
        (source / "annotations" / Path(image.name).with_suffix(".xml")).write_text(xml, encoding="utf-8")
    return source


def cvat_xml(images: list[str], labels: list[str] = CLASSES, project: bool = False) -> str:
    """A CVAT for images 1.1 document around ``<image>`` elements."""
    label_xml = "".join(f"<label><name>{name}</name><attributes/></label>" for name in labels)
    owner = (
        f"<project><name>p</name><labels>{label_xml}</labels><tasks><task><id>1</id></task></tasks></project>"
        if project
        else f"<task><id>1</id><name>t</name><labels>{label_xml}</labels></task>"
    )
    body = "".join(images)
    head = '<?xml version="1.0" encoding="utf-8"?>\n<annotations><version>1.1</version>'
    return f"{head}<meta>{owner}</meta>{body}</annotations>"


def cvat_image(index: int, image: Img, subset: str = "") -> str:
    parts = []
    for obj in image.objects:
        if obj.kind == "box":
            x0, y0, x1, y1 = obj.coords
            parts.append(
                f'<box label="{obj.cls}" occluded="0" xtl="{x0}" ytl="{y0}" xbr="{x1}" ybr="{y1}" '
                'z_order="0"/>'
            )
        else:
            points = ";".join(f"{x},{y}" for x, y in zip(obj.coords[0::2], obj.coords[1::2], strict=True))
            parts.append(
                f'<polygon label="{obj.cls}" occluded="1" points="{points}" z_order="2">'
                '<attribute name="colour">red</attribute></polygon>'
            )
    subset_attr = f' subset="{subset}"' if subset else ""
    w, h = image.size
    opening = f'<image id="{index}" name="{image.name}"{subset_attr} width="{w}" height="{h}">'
    return f"{opening}{''.join(parts)}</image>"


def write_cvat(source: Path) -> Path:
    write_images(source)
    doc = cvat_xml([cvat_image(i, image) for i, image in enumerate(SPEC)])
    (source / "annotations.xml").write_text(doc, encoding="utf-8")
    return source


def cvat_rle(mask: np.ndarray) -> tuple[list[int], int, int, int, int]:
    """CVAT's ``rle, left, top, width, height``: runs over the mask's tight box, background first."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    top, left, bottom, right = int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1
    flat = mask[top:bottom, left:right].reshape(-1)
    runs, value, count = [], 0, 0
    for pixel in flat:
        if pixel == value:
            count += 1
        else:
            runs.append(count)
            value, count = int(pixel), 1
    runs.append(count)
    return runs, left, top, right - left, bottom - top


def _ls_region(kind: str, obj: Obj, size: tuple[int, int]) -> dict:
    w, h = size
    if kind == "rectanglelabels":
        x0, y0, x1, y1 = obj.coords
        value = {
            "x": x0 / w * 100,
            "y": y0 / h * 100,
            "width": (x1 - x0) / w * 100,
            "height": (y1 - y0) / h * 100,
        }
        value["rotation"] = 0
    else:
        pairs = zip(obj.coords[0::2], obj.coords[1::2], strict=True)
        value = {"points": [[x / w * 100, y / h * 100] for x, y in pairs], "closed": True}
    return value | {kind: [obj.cls]}


def labelstudio_tasks(minimal: bool = False) -> list[dict]:
    tasks = []
    for index, image in enumerate(SPEC, start=1):
        url = (
            f"/data/local-files/?d={quote('data/images/' + image.name)}"
            if minimal
            else f"/data/upload/7/{index:08x}-{image.name}"
        )
        regions = []
        for obj in image.objects:
            kind = "rectanglelabels" if obj.kind == "box" else "polygonlabels"
            regions.append((kind, _ls_region(kind, obj, image.size)))
        size = {"original_width": image.size[0], "original_height": image.size[1]}
        if minimal:
            tasks.append(
                {
                    "image": url,
                    "id": index,
                    "label": [value | size for _, value in regions],
                    "annotator": 1,
                    "annotation_id": index,
                }
            )
        else:
            result = [
                {
                    "id": f"r{n}",
                    "type": kind,
                    "from_name": "label",
                    "to_name": "image",
                    "value": value,
                    **size,
                }
                for n, (kind, value) in enumerate(regions)
            ]
            annotation = {
                "id": index,
                "result": result,
                "was_cancelled": False,
                "ground_truth": False,
                "created_at": "2024-01-01T00:00:00Z",
                "updated_at": "2024-01-01T00:00:00Z",
            }
            tasks.append(
                {"id": index, "data": {"image": url}, "annotations": [annotation], "predictions": []}
            )
    return tasks


def write_labelstudio(source: Path, minimal: bool = False, tasks: list[dict] | None = None) -> Path:
    write_images(source)
    doc = tasks if tasks is not None else labelstudio_tasks(minimal)
    (source / ("export-min.json" if minimal else "export.json")).write_text(json.dumps(doc), encoding="utf-8")
    return source


def labelstudio_rle(mask: np.ndarray) -> list[int]:
    """Label Studio's brush RLE of a binary mask (the RGBA canvas, alpha 255 where set).

    thi.ng rle-pack stream: 32-bit count, 5-bit word size - 1 (8 bits), four 4-bit run
    sizes - 1 (all 16 bits), then repeat chunks ``1, size index 3, run - 1, value``.
    """
    canvas = np.zeros((*mask.shape, 4), dtype=np.uint8)
    canvas[mask > 0] = 255
    flat = canvas.reshape(-1)
    bits = f"{flat.size:032b}{7:05b}" + f"{15:04b}" * 4
    start = 0
    while start < flat.size:
        end = start + 1
        while end < flat.size and flat[end] == flat[start] and end - start < 1 << 16:
            end += 1
        bits += f"1{3:02b}{end - start - 1:016b}{int(flat[start]):08b}"
        start = end
    bits += "0" * (-len(bits) % 8)
    return [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]


def write_mask_pngs(source: Path, masks: dict[str, np.ndarray], classes: list[str]) -> Path:
    """A mask-PNG source: ``images/`` from ``SPEC``, ``masks/<stem>.png`` (pixel = class index) and
    classes.txt."""
    from PIL import Image

    write_images(source)
    (source / "masks").mkdir(parents=True, exist_ok=True)
    for name, values in masks.items():
        Image.fromarray(values.astype(np.uint8), "L").save(source / "masks" / Path(name).with_suffix(".png"))
    (source / "classes.txt").write_text("\n".join(classes) + "\n", encoding="utf-8")
    return source
