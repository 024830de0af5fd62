"""CVAT for images 1.1 XML: ``annotations.xml`` beside ``images/`` (task, job or project export).

Each ``<image name width height subset>`` holds ``<box>`` (pixel corners), ``<polygon
points="x,y;x,y...">``, ``<mask rle left top width height>`` (CVAT's RLE, decoded here into
a COCO RLE shape) and ``<tag>`` (a classification label). ``<polyline>``, ``<points>`` and
the other shapes outline no region: they are quarantined with a reason. Class order: the
``<labels>`` of ``<meta>`` (task or project). ``subset`` (Train, Validation, Test) gives a
predefined split. ``occluded``, ``z_order`` and ``<attribute>`` children travel with the
shapes. XML is parsed with defusedxml; a file that is not CVAT's is refused in one sentence.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from stages.core.contracts import QuarantineEntry
from stages.core.errors import DataError
from stages.core.params import DataSection, IngestSection
from stages.dataprep.formats.base import (
    BoxRecord,
    ShapeRecord,
    SourceItem,
    SourceScan,
    inside_root,
    locate,
    named_annotation_file,
    problem_detail,
    rel,
    single_label,
    split_of,
    unique_dirs,
)
from stages.dataprep.shapes import cvat_mask, rle_encode

STAGE = "ingest"
FILE_NAME = "annotations.xml"
_NOT_REGIONS = ("polyline", "points", "ellipse", "cuboid", "skeleton")


def looks_like_cvat(path: Path) -> bool:
    """True when the XML's first kilobytes open ``<annotations>`` and hold a CVAT ``<version>``."""
    try:
        with path.open("rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return b"<annotations" in head and b"<version>" in head


def find_files(root: Path, data: DataSection | None = None) -> list[Path]:
    """The CVAT XML files of a source: data.annotations, ``annotations.xml`` at the root or one level down."""
    if data is not None and data.annotations is not None:
        return [named_annotation_file(root, data.annotations, "the CVAT annotations.xml")]
    if (root / FILE_NAME).is_file() and looks_like_cvat(root / FILE_NAME):
        return [root / FILE_NAME]
    return [p for p in sorted(root.glob(f"*/{FILE_NAME}")) if p.is_file() and looks_like_cvat(p)]


def scan(root: Path, data: DataSection, params: IngestSection) -> SourceScan:
    """Read every image of every CVAT XML into items: boxes and shapes (detect) or tags (classify)."""
    files = find_files(root, data)
    if not files:
        raise DataError(
            f"{root}: no CVAT annotations.xml found (at the root or one folder down); export the task as "
            "'CVAT for images 1.1' and unpack it there, or set data.annotations to the XML."
        )
    out = SourceScan()
    labels: list[str] = []
    for xml in files:
        annotations = _parse(root, xml)
        declared = _labels(annotations)
        labels += [name for name in declared if name not in labels]
        for image in annotations.iter("image"):
            _read_image(root, xml, image, declared, data.task, out)
    boxed = {b.class_name for i in out.items for b in i.boxes or ()}
    out.classes = labels or sorted(boxed | {s.class_name for i in out.items for s in i.shapes})
    return out


def _parse(root: Path, xml: Path) -> Element:
    name = rel(root, xml)
    if not inside_root(root, xml):
        raise DataError(f"{name} is a link that points outside the source folder; copy the file in instead.")
    try:
        tree = SafeET.parse(xml, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise DataError(
            f"{name} declares a DTD, XML entities or external references ({type(exc).__name__}); export the "
            "annotations again from CVAT."
        ) from None
    except ParseError as exc:
        line, column = exc.position
        raise DataError(
            f"{name} is not well-formed XML at line {line}, column {column + 1}; export it again."
        ) from None
    except (LookupError, ValueError, RecursionError) as exc:
        raise DataError(f"{name} cannot be read as XML ({type(exc).__name__}); export it again.") from None
    annotations = tree.getroot()
    assert annotations is not None, "a parsed XML document always has a root element"
    if annotations.tag != "annotations" or (
        annotations.find("image") is None and annotations.find("meta") is None
    ):
        raise DataError(
            f"{name} has root <{annotations.tag}>, not CVAT's <annotations> with <meta> and <image> "
            "elements; export as 'CVAT for images 1.1' or set data.format."
        )
    if annotations.find("track") is not None:
        raise DataError(
            f"{name} holds <track> elements (CVAT for video); export the task as 'CVAT for images 1.1'."
        )
    return annotations


def _labels(annotations: Element) -> list[str]:
    """Label names in the order ``<meta>`` lists them (task, job or project; each name once)."""
    names: list[str] = []
    meta = annotations.find("meta")
    for label in meta.iter("label") if meta is not None else ():
        name = (label.findtext("name") or "").strip()
        if name and name not in names:
            names.append(name)
    return names


def _read_image(root: Path, xml: Path, image: Element, labels: list[str], task: str, out: SourceScan) -> None:
    xml_rel = rel(root, xml)
    name = image.get("name", "")
    subset = image.get("subset") or ""
    where_image = f"{xml_rel} image id {image.get('id', '?')}"
    bases = unique_dirs(
        [xml.parent / "images" / subset, xml.parent / "images", xml.parent, root / "images", root]
        if subset
        else [xml.parent / "images", xml.parent, root / "images", root]
    )
    file, problem = locate(root, bases, name)
    shown = rel(root, file) if file is not None else name
    if file is None:
        assert problem is not None, "locate names a problem whenever it finds no file"
        looked = ", ".join(rel(root, b) or "." for b in bases)
        detail = problem_detail(problem, f"{where_image} names", name, looked)
        out.quarantine.append(QuarantineEntry(shown, problem, detail, STAGE, "image", where_image))
        return
    size = _size(image)
    boxes: list[BoxRecord] = []
    shapes: list[ShapeRecord] = []
    tags: list[str] = []
    for number, element in enumerate(image, start=1):
        where = f"{where_image} <{element.tag}> {number}"
        label = (element.get("label") or "").strip()
        if element.tag not in ("box", "polygon", "mask", "tag", *_NOT_REGIONS):
            continue
        if labels and label not in labels:
            item = "image" if element.tag == "tag" else "shape" if element.tag != "box" else "box"
            detail = f"{where} has label {label!r}, which <meta><labels> does not list."
            out.quarantine.append(QuarantineEntry(shown, "unknown_class", detail, STAGE, item, where))
            continue
        if element.tag == "tag":
            tags.append(label)
        elif element.tag in _NOT_REGIONS:
            detail = (
                f"{where} ('{label}') is a <{element.tag}>, which outlines no region; draw a box or polygon."
            )
            out.quarantine.append(QuarantineEntry(shown, "shape_unsupported", detail, STAGE, "shape", where))
        elif element.tag == "box":
            parsed = _box(element, label, where)
            if isinstance(parsed, BoxRecord):
                boxes.append(parsed)
            else:
                out.quarantine.append(QuarantineEntry(shown, parsed[0], parsed[1], STAGE, "box", where))
        else:
            shape = (
                _polygon(element, label, where)
                if element.tag == "polygon"
                else _mask(element, label, where, size)
            )
            if isinstance(shape, ShapeRecord):
                shapes.append(shape)
            else:
                out.quarantine.append(QuarantineEntry(shown, shape[0], shape[1], STAGE, "shape", where))
    split = split_of(subset) if subset else None
    if task == "classify":
        label = single_label(tags, "<tag>", where_image, shown)
        if isinstance(label, QuarantineEntry):
            out.quarantine.append(label)
        else:
            out.items.append(SourceItem(file, shown, label, split, None, xml_rel, declared_size=size))
        return
    out.items.append(
        SourceItem(
            file,
            shown,
            None,
            split,
            None,
            xml_rel,
            boxes=tuple(boxes),
            shapes=tuple(shapes),
            declared_size=size,
        )
    )


def _size(image: Element) -> tuple[int, int] | None:
    try:
        width, height = int(image.get("width", "")), int(image.get("height", ""))
    except ValueError:
        return None
    return (width, height) if width > 0 and height > 0 else None


def _attributes(element: Element) -> str:
    found = {a.get("name", ""): (a.text or "") for a in element.findall("attribute")}
    return json.dumps(found, sort_keys=True) if found else ""


def _number(element: Element, key: str) -> float:
    try:
        return float(element.get(key, ""))
    except ValueError:
        return math.nan


def _box(element: Element, label: str, where: str) -> BoxRecord | tuple[str, str]:
    corners = [_number(element, k) for k in ("xtl", "ytl", "xbr", "ybr")]
    if any(math.isnan(v) for v in corners):
        return "box_malformed", f"{where} ('{label}') lacks one of xtl, ytl, xbr, ybr as a number."
    rotation = _number(element, "rotation")
    if math.isfinite(rotation) and rotation % 360:
        return (
            "box_rotated",
            f"{where} ('{label}') is rotated by {rotation:g} degrees; only upright boxes are read.",
        )
    return BoxRecord(label, *corners, where=where)


def _polygon(element: Element, label: str, where: str) -> ShapeRecord | tuple[str, str]:
    text = (element.get("points") or "").strip()
    values: list[float] = []
    try:
        for pair in filter(None, text.split(";")):
            x, y = pair.split(",")
            values += [float(x), float(y)]
    except ValueError:
        return "shape_malformed", f"{where} ('{label}') has points {text[:60]!r}; CVAT writes 'x,y;x,y;...'."
    if not values:
        return "shape_too_few_points", f"{where} ('{label}') has no points."
    return ShapeRecord(
        label,
        where,
        points=tuple(values),
        occluded=element.get("occluded") == "1",
        z_order=int(_number(element, "z_order")) if math.isfinite(_number(element, "z_order")) else 0,
        attributes=_attributes(element),
    )


def _mask(
    element: Element, label: str, where: str, size: tuple[int, int] | None
) -> ShapeRecord | tuple[str, str]:
    if size is None:
        return "shape_malformed", f"{where} ('{label}') is a mask on an <image> without width and height."
    try:
        runs = [int(v) for v in (element.get("rle") or "").replace(" ", "").split(",") if v]
        left, top, width, height = (int(element.get(k, "")) for k in ("left", "top", "width", "height"))
        if not runs or min(runs) < 0:
            raise ValueError("its rle is empty or holds a negative run")
        mask = cvat_mask(runs, left, top, width, height, *size)
    except ValueError as exc:
        return "shape_malformed", f"{where} ('{label}') has a mask CVAT's RLE cannot describe ({exc})."
    return ShapeRecord(
        label,
        where,
        counts=rle_encode(mask),
        mask_size=(size[1], size[0]),
        occluded=element.get("occluded") == "1",
        z_order=int(_number(element, "z_order")) if math.isfinite(_number(element, "z_order")) else 0,
        attributes=_attributes(element),
    )
