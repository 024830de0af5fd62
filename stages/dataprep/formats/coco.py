"""COCO detection JSON, in the layouts exporters write.

- one JSON at the root (``annotations.json``, ``_annotations.coco.json`` or the one COCO
  ``*.json`` there), images beside it or in ``images/``;
- the standard layout: ``annotations/instances_<name>.json`` beside ``<name>/`` or
  ``images/<name>/`` image folders (``train2017`` etc. also name the split);
- Roboflow: ``train/``, ``valid/``, ``test/`` each with ``_annotations.coco.json``: a
  predefined split.

A file that cannot be read as COCO is rejected (one sentence with the position); a bad
annotation inside a good file only drops that box, into the quarantine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from stages.core.contracts import QuarantineEntry
from stages.core.errors import DataError
from stages.core.params import DataSection, IngestSection
from stages.dataprep.formats.base import (
    TOO_DEEP,
    BoxRecord,
    ShapeRecord,
    SourceItem,
    SourceScan,
    locate,
    named_annotation_file,
    orphaned_boxes,
    problem_detail,
    read_annotation_json,
    rel,
    split_of,
    unique_dirs,
)
from stages.dataprep.shapes import coco_rle, rle_encode

ROOT_NAMES = ("annotations.json", "_annotations.coco.json")
STAGE = "ingest"
_KEY = {key: re.compile(rb'"' + key.encode() + rb'"\s*:') for key in ("images", "annotations")}


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class CocoImage(_Loose):
    id: int | str
    file_name: str
    width: int | None = None
    height: int | None = None


class CocoAnnotation(_Loose):
    id: int | str | None = None
    image_id: int | str
    category_id: int | str
    bbox: Any = None  # checked per annotation: a bad one is quarantined, not fatal
    segmentation: Any = None  # polygons [[x, y, ...], ...] or RLE {"counts", "size"}; checked likewise
    iscrowd: int | bool = 0


class CocoCategory(_Loose):
    id: int | str
    name: str
    supercategory: str | None = None


class CocoFile(_Loose):
    images: list[CocoImage]
    annotations: list[CocoAnnotation]
    categories: list[CocoCategory]


_BBOX = TypeAdapter(tuple[float, float, float, float])


@dataclass
class _Parsed:
    path: Path
    split: str | None
    doc: CocoFile
    categories: dict[int | str, str] = field(default_factory=dict)


def looks_like_coco(path: Path, chunk_size: int = 1 << 22) -> bool:
    """True when the file has top-level-looking ``"images":`` and ``"annotations":`` keys.

    Scans bytes instead of parsing, so detection stays cheap on a 500 MB file; the reader
    parses and validates the file properly afterwards.
    """
    found: set[str] = set()
    tail = b""
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(chunk_size):
                window = tail + chunk
                found |= {key for key, pattern in _KEY.items() if pattern.search(window)}
                if len(found) == len(_KEY):
                    return True
                tail = window[-64:]
    except OSError:
        return False
    return False


def find_files(root: Path, data: DataSection | None = None) -> list[tuple[Path, str | None]]:
    """The COCO files of a source and the split each one declares (empty when there are none)."""
    if data is not None and data.annotations is not None:
        file = named_annotation_file(root, data.annotations, "a JSON file")
        return [(file, split_of(_suffix(file)))]
    roboflow = [
        (d / "_annotations.coco.json", split_of(d.name))
        for d in sorted(root.iterdir())
        if d.is_dir() and split_of(d.name) and (d / "_annotations.coco.json").is_file()
    ]
    if roboflow:
        return roboflow
    for name in ROOT_NAMES:
        if (root / name).is_file():
            return [(root / name, None)]
    at_root = [p for p in sorted(root.glob("*.json")) if p.is_file() and looks_like_coco(p)]
    if len(at_root) > 1:
        names = ", ".join(p.name for p in at_root)
        raise DataError(
            f"{root}: several COCO files at the root ({names}); set data.annotations to the one to import."
        )
    if at_root:
        return [(at_root[0], None)]
    folder = root / "annotations"
    if not folder.is_dir():
        return []
    candidates = [p for p in sorted(folder.glob("*.json")) if p.is_file() and looks_like_coco(p)]
    instances = [p for p in candidates if p.name.startswith("instances_")]
    # The official layout also has captions_* and person_keypoints_* files: boxes live in instances_*.
    return [(p, split_of(_suffix(p))) for p in (instances or candidates)]


def scan(root: Path, data: DataSection, params: IngestSection) -> SourceScan:
    """Read every COCO file of the source into items with boxes."""
    files = find_files(root, data)
    if not files:
        raise DataError(
            f"{root}: no COCO JSON found (looked for annotations.json, _annotations.coco.json, *.json with "
            "'images' and 'annotations', annotations/instances_*.json); set data.annotations to the file."
        )
    parsed = [_parse(root, path, split) for path, split in files]
    categories = _merge_categories(root, parsed)
    used = {a.category_id for p in parsed for a in p.doc.annotations}
    out = SourceScan(classes=_class_order(categories, used, parsed))
    extensions = {e.lower() for e in params.image_extensions}
    for p in parsed:
        _scan_file(root, p, categories, extensions, out)
    return out


def _suffix(path: Path) -> str:
    """``instances_train2017.json`` -> ``train2017``."""
    stem = path.stem
    return stem.split("_", 1)[1] if "_" in stem else stem


def _parse(root: Path, path: Path, split: str | None) -> _Parsed:
    name = rel(root, path)
    raw = read_annotation_json(root, path, name)
    if not isinstance(raw, dict) or not {"images", "annotations"} <= raw.keys():
        raise DataError(
            f"{name}: not a COCO file (it needs top-level 'images', 'annotations' and 'categories'); "
            "point data.annotations at the COCO export."
        )
    raw.setdefault("categories", [])
    try:
        doc = CocoFile.model_validate(raw)
    except ValidationError as exc:
        raise DataError(f"{name}: {_describe(exc, raw)}") from None
    except RecursionError:
        raise DataError(TOO_DEEP.format(name=name)) from None
    _refuse_duplicate_ids(name, [i.id for i in doc.images], "image", "images")
    _refuse_duplicate_ids(name, [c.id for c in doc.categories], "category", "categories")
    return _Parsed(path, split, doc, {c.id: c.name for c in doc.categories})


def _describe(exc: ValidationError, raw: dict) -> str:
    """``images[3] (id 7): 'file_name' is missing; ...`` from pydantic's first error."""
    error = exc.errors()[0]
    loc = list(error["loc"])
    where = str(loc[0]) if loc else "(top level)"
    if len(loc) >= 2 and isinstance(loc[1], int):
        entry = raw.get(str(loc[0]), [None])[loc[1]] if isinstance(raw.get(str(loc[0])), list) else None
        ident = f" (id {entry['id']})" if isinstance(entry, dict) and "id" in entry else ""
        where = f"{loc[0]}[{loc[1]}]{ident}"
    key = ".".join(str(part) for part in loc[2:])
    what = f"'{key}' {error['msg'].lower()}" if key else error["msg"].lower()
    return f"{where}: {what}; fix that entry or export the annotations again."


def _refuse_duplicate_ids(name: str, ids: list, kind: str, key: str) -> None:
    first: dict[Any, int] = {}
    for index, ident in enumerate(ids):
        if ident in first:
            raise DataError(
                f"{name}: {kind} id {ident!r} appears twice ({key}[{first[ident]}] and {key}[{index}]); "
                f"give each {kind} a unique id and export again."
            )
        first[ident] = index


def _merge_categories(root: Path, parsed: list[_Parsed]) -> dict[int | str, str]:
    """One id -> name table for all files; the same id with two names is refused."""
    merged: dict[int | str, str] = {}
    origin: dict[int | str, str] = {}
    for p in parsed:
        for ident, name in p.categories.items():
            if ident in merged and merged[ident] != name:
                raise DataError(
                    f"{rel(root, p.path)}: category id {ident!r} is '{name}' here but '{merged[ident]}' in "
                    f"{origin[ident]}; export all splits with the same categories."
                )
            merged[ident] = name
            origin.setdefault(ident, rel(root, p.path))
    return merged


def _class_order(categories: dict[int | str, str], used: set, parsed: list[_Parsed]) -> list[str]:
    """Category names by ascending id; drops Roboflow's unused parent category (see docs)."""
    parents = {c.supercategory for p in parsed for c in p.doc.categories if c.supercategory}
    names: list[str] = []
    for ident in sorted(categories, key=lambda i: (isinstance(i, str), i)):
        name = categories[ident]
        if ident not in used and name in parents:
            continue  # e.g. Roboflow's category 0, the dataset name that the real classes point to
        if name not in names:
            names.append(name)
    return names


def _scan_file(
    root: Path, p: _Parsed, categories: dict[int | str, str], extensions: set[str], out: SourceScan
) -> None:
    name = rel(root, p.path)
    suffix = _suffix(p.path)  # instances_train2017.json -> train2017/ or images/train2017/
    suffix_dirs = [root / suffix, root / "images" / suffix]
    bases = unique_dirs([p.path.parent, p.path.parent / "images", root, root / "images", *suffix_dirs])
    files: dict[int | str, Path | None] = {}
    shown: dict[int | str, str] = {}
    for image in p.doc.images:
        file, problem = locate(root, bases, image.file_name)
        files[image.id] = file
        shown[image.id] = rel(root, file) if file is not None else image.file_name
        if file is None:
            looked = ", ".join(rel(root, b) or "." for b in bases)
            assert problem is not None, "locate names a problem whenever it finds no file"
            detail = problem_detail(problem, f"{name} image id {image.id!r} names", image.file_name, looked)
            where = f"{name} image id {image.id}"
            out.quarantine.append(QuarantineEntry(shown[image.id], problem, detail, STAGE, "image", where))

    boxes: dict[int | str, list[BoxRecord]] = {image.id: [] for image in p.doc.images}
    shapes: dict[int | str, list[ShapeRecord]] = {image.id: [] for image in p.doc.images}
    for index, ann in enumerate(p.doc.annotations):
        where = f"{name} annotation id {ann.id if ann.id is not None else f'#{index}'}"
        path = shown.get(ann.image_id, name)
        found = _check_shapes(ann, where, categories, boxes)
        if isinstance(found, tuple):
            out.quarantine.append(QuarantineEntry(path, found[0], found[1], STAGE, "shape", where))
            found = []
        shapes.get(ann.image_id, []).extend(found)
        if ann.bbox in (None, []) and found:
            continue  # a segmentation without a bbox: ingest derives the tight box of each shape
        checked = _check_annotation(ann, where, categories, boxes)
        if isinstance(checked, BoxRecord):
            boxes[ann.image_id].append(checked)
        else:
            reason, detail = checked
            out.quarantine.append(QuarantineEntry(path, reason, detail, STAGE, "box", where))

    referenced: set[Path] = set()
    for image in p.doc.images:
        file = files[image.id]
        if file is None:
            out.quarantine.extend(orphaned_boxes(shown[image.id], boxes[image.id], "its image is not usable"))
            out.quarantine.extend(
                QuarantineEntry(
                    shown[image.id],
                    "image_quarantined",
                    f"{s.where} was dropped because its image is not usable.",
                    STAGE,
                    "shape",
                    s.where,
                )
                for s in shapes[image.id]
            )
            continue
        referenced.add(file)
        out.items.append(
            SourceItem(
                file=file,
                rel_path=shown[image.id],
                label=None,
                split=p.split,
                group=None,
                source=name,
                boxes=tuple(boxes[image.id]),
                shapes=tuple(shapes[image.id]),
                declared_size=(image.width, image.height) if image.width and image.height else None,
            )
        )
    unlisted = sorted(
        f
        for folder in {f.parent for f in referenced}
        for f in folder.iterdir()
        if f.is_file() and f.suffix.lower() in extensions and f not in referenced
    )
    if unlisted:
        out.warnings.append(
            f"{len(unlisted)} image files beside the images of {name} are not listed in it and were not "
            f"imported (first: {rel(root, unlisted[0])})."
        )
        out.ignored.extend(rel(root, f) for f in unlisted)


def _check_annotation(
    ann: CocoAnnotation, where: str, categories: dict[int | str, str], boxes: dict[int | str, list]
) -> BoxRecord | tuple[str, str]:
    """A box, or ``(reason, detail)`` saying why this annotation is dropped."""
    if ann.image_id not in boxes:
        return "unknown_image_id", f"{where} refers to image id {ann.image_id!r}, which is not in 'images'."
    if ann.category_id not in categories:
        return "unknown_class", f"{where} has category id {ann.category_id!r}, which is not in 'categories'."
    if ann.iscrowd:
        return (
            "crowd_region",
            f"{where} is a crowd region (iscrowd=1) over many objects; detectors skip these.",
        )
    try:
        x, y, w, h = _BBOX.validate_python(ann.bbox)
    except ValidationError:
        return (
            "box_malformed",
            f"{where} has bbox {ann.bbox!r}; COCO boxes are [x, y, width, height] numbers.",
        )
    return BoxRecord(categories[ann.category_id], x, y, x + w, y + h, where)


def _check_shapes(
    ann: CocoAnnotation, where: str, categories: dict[int | str, str], boxes: dict[int | str, list]
) -> list[ShapeRecord] | tuple[str, str]:
    """The annotation's polygons or RLE mask as shapes (none when it has no segmentation)."""
    seg = ann.segmentation
    if seg is None or seg == [] or ann.image_id not in boxes or ann.category_id not in categories:
        return []  # no segmentation, or the box check says what is wrong with the annotation
    name = categories[ann.category_id]
    crowd = bool(ann.iscrowd)
    has_box = ann.bbox not in (None, []) or crowd  # a crowd region never becomes a detection box
    if isinstance(seg, dict):
        size = seg.get("size")
        try:
            height, width = (int(v) for v in size) if isinstance(size, list) else (0, 0)
            counts = rle_encode(coco_rle(seg, height, width))
        except (ValueError, TypeError) as exc:
            return "shape_malformed", f"{where} has a segmentation RLE that cannot be read: {exc}."
        return [
            ShapeRecord(name, where, counts=counts, mask_size=(height, width), iscrowd=crowd, has_box=has_box)
        ]
    if not isinstance(seg, list) or not all(isinstance(part, list) for part in seg):
        return (
            "shape_malformed",
            f"{where} has segmentation {str(seg)[:60]!r}; COCO polygons are [[x1, y1, x2, y2, ...], ...].",
        )
    shapes: list[ShapeRecord] = []
    for number, part in enumerate(seg, start=1):
        if not all(type(v) in (int, float) for v in part):  # not bool, not a numeric string
            return "shape_malformed", f"{where} polygon {number} holds a value that is not a number."
        label = where if len(seg) == 1 else f"{where} polygon {number}"
        shapes.append(
            ShapeRecord(name, label, points=tuple(float(v) for v in part), iscrowd=crowd, has_box=has_box)
        )
    return shapes
