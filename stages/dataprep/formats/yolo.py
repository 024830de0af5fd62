"""YOLO txt labels: ``images/`` beside ``labels/`` (optionally with split subfolders).

Layouts: ``images/*.jpg`` + ``labels/*.txt``; ultralytics' ``images/train/`` +
``labels/train/`` (also ``train2017``...); Roboflow's ``train/images`` + ``train/labels``.
Class names come from the dataset YAML (``data.yaml``, ``dataset.yaml``, the one root YAML
with ``names``, or ``data.annotations``) or ``classes.txt``. Each label row is
``class cx cy w h``, normalised to 0..1. An image without a label file (or with an empty
one) is a background image; a label file without an image is quarantined.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from stages.core.contracts import QuarantineEntry
from stages.core.errors import DataError
from stages.core.params import DataSection, IngestSection
from stages.dataprep.formats.base import (
    BoxRecord,
    ShapeRecord,
    SourceItem,
    SourceScan,
    inside_root,
    is_split_folder,
    named_annotation_file,
    refuse_outside_folder,
    rel,
    split_of,
)

STAGE = "ingest"
YAML_NAMES = ("data.yaml", "dataset.yaml", "data.yml", "dataset.yml")
_TOLERANCE = 1e-6  # exporters write 1.0000001 for a box touching the edge


def image_label_dirs(root: Path) -> list[tuple[Path, Path, str | None]]:
    """``(images folder, labels folder, split)`` for every part of a YOLO source."""
    images, labels = root / "images", root / "labels"
    if images.is_dir():
        parts = sorted(d for d in images.iterdir() if is_split_folder(d))
        loose = [f for f in images.iterdir() if f.is_file()]
        if parts and not loose:
            return [(d, labels / d.name, split_of(d.name)) for d in parts]
        return [(images, labels, None)]
    return [
        (d / "images", d / "labels", split_of(d.name))
        for d in sorted(root.iterdir())
        if is_split_folder(d) and (d / "images").is_dir()
    ]


def find_yaml(root: Path, data: DataSection | None = None) -> Path | None:
    """The dataset YAML that names the classes, if the source has one."""
    if data is not None and data.annotations is not None:
        return named_annotation_file(root, data.annotations, "the dataset YAML")
    for name in YAML_NAMES:
        if (root / name).is_file():
            return root / name
    with_names = [p for p in sorted([*root.glob("*.yaml"), *root.glob("*.yml")]) if _has_names(p)]
    return with_names[0] if len(with_names) == 1 else None


def scan(root: Path, data: DataSection, params: IngestSection) -> SourceScan:
    """Pair every image with its label file and parse the rows into boxes."""
    parts = image_label_dirs(root)
    if not parts:
        raise DataError(
            f"{root}: no YOLO images/ folder found (images/ + labels/, or train/images + train/labels); "
            "check data.source or set data.format."
        )
    names = class_names(root, data)
    out = SourceScan(classes=names)
    extensions = {e.lower() for e in params.image_extensions}
    for images_dir, labels_dir, split in parts:
        refuse_outside_folder(root, images_dir)
        refuse_outside_folder(root, labels_dir)
        matched: set[Path] = set()
        for file in sorted(images_dir.rglob("*")):
            if file.is_dir():
                continue
            image_rel = rel(root, file)
            if not inside_root(root, file):
                out.quarantine.append(_outside(image_rel, "image"))
                continue
            if file.name in params.ignore_files or file.suffix.lower() not in extensions:
                out.ignored.append(image_rel)
                continue
            label = (labels_dir / file.relative_to(images_dir)).with_suffix(".txt")
            matched.add(label)
            read = _read_labels(root, label, image_rel, names, out) if label.is_file() else ((), ())
            if read is None:
                continue  # the label file itself was refused; the image goes with it
            boxes, shapes = read
            out.items.append(
                SourceItem(
                    file=file,
                    rel_path=image_rel,
                    label=None,
                    split=split,
                    group=None,
                    source=rel(root, label) if label.is_file() else "yolo (no label file)",
                    boxes=boxes,
                    shapes=shapes,
                    box_frame="displayed",
                )
            )
        _orphan_labels(root, labels_dir, matched, params, out)
    return out


def class_names(root: Path, data: DataSection | None = None) -> list[str]:
    """Names from the dataset YAML (list or ``{index: name}``) or ``classes.txt``."""
    file = find_yaml(root, data)
    if file is not None:
        return _names_from_yaml(root, file)
    for candidate in (root / "classes.txt", root / "labels" / "classes.txt", root / "obj.names"):
        if candidate.is_file() and inside_root(root, candidate):
            try:
                text = candidate.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{rel(root, candidate)}: not UTF-8 text (byte {exc.start}); save it again as UTF-8, "
                    "one class name per line."
                ) from None
            names = [n for n in (line.strip() for line in text.splitlines()) if n]
            if not names:
                raise DataError(f"{rel(root, candidate)} is empty; write one class name per line.")
            return names
    raise DataError(
        f"{root}: no class names for the YOLO labels; add data.yaml with 'names: [...]' or a classes.txt "
        "with one name per line (or set data.annotations to your dataset YAML)."
    )


def _has_names(path: Path) -> bool:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, OSError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(loaded, dict) and "names" in loaded


def _names_from_yaml(root: Path, file: Path) -> list[str]:
    name = rel(root, file)
    if not inside_root(root, file):
        raise DataError(f"{name} is a link that points outside the source folder; copy the file in instead.")
    try:
        loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise DataError(f"{name}: invalid YAML{where}; fix the syntax there.") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{name}: not UTF-8 text (byte {exc.start}); save it again as UTF-8.") from None
    except RecursionError:
        raise DataError(f"{name}: YAML nested too deeply to read; write 'names' as a flat list.") from None
    names = loaded.get("names") if isinstance(loaded, dict) else None
    if isinstance(names, dict):
        names = _indexed_names(name, names)
    if not isinstance(names, list) or not names or not all(isinstance(n, str | int) for n in names):
        raise DataError(f"{name}: no 'names' list of class names; add 'names: [cat, dog, ...]'.")
    count = loaded.get("nc")
    if count is not None and count != len(names):
        raise DataError(f"{name}: nc is {count} but 'names' lists {len(names)} classes; make them agree.")
    return [str(n) for n in names]


def _indexed_names(name: str, names: dict) -> list:
    """``{0: cat, "1": dog}`` -> ``[cat, dog]`` (keys read with ``int``, as ultralytics does).

    Gaps, negative or non-numeric keys, and two keys for one index (``"1"`` and ``"01"``) are refused.
    """
    by_index: dict[int, object] = {}
    for key, value in names.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            index = -1
        if index in by_index or isinstance(key, bool) or index < 0:
            raise DataError(
                f"{name}: 'names' key {key!r} is not a distinct index 0..{len(names) - 1}; number the "
                "classes 0, 1, 2 ... once each."
            )
        by_index[index] = value
    if sorted(by_index) != list(range(len(names))):
        raise DataError(
            f"{name}: 'names' must map the indices 0..{len(names) - 1} to names; number them from 0."
        )
    return [by_index[i] for i in range(len(names))]


def _read_labels(
    root: Path, label: Path, image_rel: str, names: list[str], out: SourceScan
) -> tuple[tuple[BoxRecord, ...], tuple[ShapeRecord, ...]] | None:
    """Parse one label file into boxes and (YOLO-seg) polygons; bad rows are quarantined one by one."""
    label_rel = rel(root, label)
    if not inside_root(root, label):
        out.quarantine.append(_outside(label_rel, "annotation"))
        out.quarantine.append(
            QuarantineEntry(
                image_rel,
                "annotation_unusable",
                f"the labels of {image_rel} ({label_rel}) point outside the source folder.",
                STAGE,
                "image",
                label_rel,
            )
        )
        return None
    try:
        text = label.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        out.quarantine.append(
            QuarantineEntry(
                image_rel,
                "annotation_unreadable",
                f"{label_rel} is not UTF-8 text (byte {exc.start}); write it again as plain text.",
                STAGE,
                "image",
                label_rel,
            )
        )
        return None
    boxes: list[BoxRecord] = []
    shapes: list[ShapeRecord] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{label_rel} line {number}"
        parsed = (
            _parse_polygon_row(line, where, names)
            if len(line.split()) > 5
            else _parse_row(line, where, names)
        )
        if isinstance(parsed, BoxRecord):
            boxes.append(parsed)
        elif isinstance(parsed, ShapeRecord):
            shapes.append(parsed)
        else:
            item = "shape" if parsed[0] != "box_malformed" and len(line.split()) > 5 else "box"
            out.quarantine.append(QuarantineEntry(image_rel, parsed[0], parsed[1], STAGE, item, where))
    return tuple(boxes), tuple(shapes)


def _parse_polygon_row(line: str, where: str, names: list[str]) -> ShapeRecord | tuple[str, str]:
    """YOLO-seg ``class x1 y1 x2 y2 ...`` (normalised) -> a polygon; ingest derives its tight box."""
    fields = line.split()
    if len(fields) % 2 == 0 or len(fields) < 7:
        return (
            "box_malformed",
            f"{where} has {len(fields)} fields; a YOLO row is 'class cx cy w h' (5) or a YOLO-seg polygon "
            "'class x1 y1 x2 y2 x3 y3 ...' (an odd count, at least 7).",
        )
    try:
        index = float(fields[0])
        points = tuple(float(v) for v in fields[1:])
    except ValueError:
        return "shape_malformed", f"{where} holds a value that is not a number ({line.strip()[:60]!r})."
    if not index.is_integer() or not 0 <= index < len(names):
        return (
            "unknown_class",
            f"{where} has class {fields[0]}, outside 0..{len(names) - 1} of the {len(names)} class names.",
        )
    if all(math.isfinite(v) for v in points) and max(points) > 1 + _TOLERANCE:
        return (
            "shape_not_normalized",
            f"{where} has values above 1: pixel coordinates, but YOLO-seg points are fractions of the image "
            "size; divide by the image width and height.",
        )
    return ShapeRecord(names[int(index)], where, points=points, normalized=True)


def _parse_row(line: str, where: str, names: list[str]) -> BoxRecord | tuple[str, str]:
    """``class cx cy w h`` -> a box in fractions of the image, or ``(reason, detail)``."""
    fields = line.split()
    if len(fields) != 5:
        return (
            "box_malformed",
            f"{where} has {len(fields)} fields; a YOLO detection row is 'class cx cy w h' (5 fields, "
            "segmentation polygons are not imported).",
        )
    try:
        index = float(fields[0])
        cx, cy, w, h = (float(v) for v in fields[1:])
    except ValueError:
        return "box_malformed", f"{where} is {line.strip()!r}, which is not five numbers."
    if not index.is_integer() or not 0 <= index < len(names):
        return (
            "unknown_class",
            f"{where} has class {fields[0]}, outside 0..{len(names) - 1} of the {len(names)} class names.",
        )
    values = (cx, cy, w, h)
    if all(math.isfinite(v) for v in values) and max(values) > 1 + _TOLERANCE:
        return (
            "box_not_normalized",
            f"{where} has values above 1 ({line.strip()}): pixel coordinates, but YOLO rows are fractions "
            "of the image size; divide by the image width and height.",
        )
    return BoxRecord(
        names[int(index)], cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, where, normalized=True
    )


def _orphan_labels(
    root: Path, labels_dir: Path, matched: set[Path], params: IngestSection, out: SourceScan
) -> None:
    """Label files with no image: each is quarantined (its boxes cannot be used)."""
    if not labels_dir.is_dir():
        return
    for file in sorted(labels_dir.rglob("*")):
        if file.is_dir() or file in matched:
            continue
        file_rel = rel(root, file)
        if file.suffix.lower() != ".txt" or file.name in {"classes.txt", *params.ignore_files}:
            out.ignored.append(file_rel)  # e.g. ultralytics' labels.cache
            continue
        if not inside_root(root, file):
            out.quarantine.append(_outside(file_rel, "annotation"))
            continue
        rows = sum(
            1 for line in file.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()
        )
        out.quarantine.append(
            QuarantineEntry(
                file_rel,
                "label_without_image",
                f"{file_rel} has {rows} label rows but no image with the same name in the images folder.",
                STAGE,
                "annotation",
                file_rel,
            )
        )


def _outside(path: str, item: str) -> QuarantineEntry:
    return QuarantineEntry(
        path,
        "outside_source",
        f"{path} is a link that points outside the source folder; it was not opened.",
        STAGE,
        item,
        path if item == "annotation" else "",
    )
