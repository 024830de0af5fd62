"""Pascal VOC XML: ``Annotations/*.xml`` with ``JPEGImages/`` (or ``annotations/`` + ``images/``).

The image is the XML's ``filename`` looked up in the images folder (``<path>`` is ignored:
exporters leave stale absolute paths there). XML is parsed with defusedxml: a file that
declares entities or reaches for external resources is quarantined, never expanded. Float
coordinates and ``difficult``/``truncated`` flags are kept. ``ImageSets/Main/{train,val,
test}.txt`` declare a predefined split when present. Class order: sorted names.
"""

from __future__ import annotations

import math
from pathlib import Path, PurePosixPath
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from stages.core.contracts import QuarantineEntry
from stages.core.errors import DataError
from stages.core.params import DataSection, IngestSection
from stages.dataprep.formats.base import (
    BoxRecord,
    SourceItem,
    SourceScan,
    inside_root,
    locate,
    problem_detail,
    refuse_outside_folder,
    rel,
    unique_dirs,
)

STAGE = "ingest"
ANNOTATION_DIRS = ("Annotations", "annotations")
IMAGE_DIRS = ("JPEGImages", "images", "Images")
_CORNERS = ("xmin", "ymin", "xmax", "ymax")


def annotation_dir(root: Path) -> Path | None:
    """The folder of XML files, if the source has one with at least one ``.xml``."""
    for name in ANNOTATION_DIRS:
        folder = root / name
        if folder.is_dir() and any(folder.glob("*.xml")):
            return folder
    return None


def scan(root: Path, data: DataSection, params: IngestSection) -> SourceScan:
    """Parse every XML in the annotation folder into an item with boxes."""
    folder = annotation_dir(root)
    if folder is None:
        raise DataError(
            f"{root}: no .xml files in Annotations/ or annotations/; put the VOC XML files there or set "
            "data.format."
        )
    refuse_outside_folder(root, folder)
    for name in IMAGE_DIRS:
        refuse_outside_folder(root, root / name)
    bases = unique_dirs([root / name for name in IMAGE_DIRS] + [root])
    splits = _image_sets(root)
    extensions = {e.lower() for e in params.image_extensions}
    out = SourceScan()
    names: set[str] = set()
    claimed: set[Path] = set()
    for xml in sorted(folder.rglob("*")):
        if xml.is_dir():
            continue
        xml_rel = rel(root, xml)
        if xml.suffix.lower() != ".xml":
            out.ignored.append(xml_rel)  # README, .DS_Store, classes.txt ...
            continue
        item = _read_xml(root, xml, xml_rel, bases, splits, extensions, out)
        if item is not None:
            claimed.add(item.file)
            names.update(b.class_name for b in item.boxes or ())
            out.items.append(item)
    _note_unannotated(root, bases, claimed, extensions, out)
    out.classes = sorted(names)
    return out


def _image_sets(root: Path) -> dict[str, str]:
    """Stem -> split from ``ImageSets/Main/{train,val,test}.txt`` (``trainval`` is not a split)."""
    folder = root / "ImageSets" / "Main"
    stems: dict[str, str] = {}
    for split in ("train", "val", "test"):
        file = folder / f"{split}.txt"
        if file.is_file() and inside_root(root, file):
            for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.strip():
                    stems.setdefault(line.strip(), split)  # whole line: names may hold spaces
    return stems


def _read_xml(
    root: Path,
    xml: Path,
    xml_rel: str,
    bases: list[Path],
    splits: dict[str, str],
    extensions: set[str],
    out: SourceScan,
) -> SourceItem | None:
    def refuse(reason: str, detail: str) -> None:
        out.quarantine.append(QuarantineEntry(xml_rel, reason, detail, STAGE, "annotation", xml_rel))

    if not inside_root(root, xml):
        refuse(
            "outside_source", f"{xml_rel} is a link that points outside the source folder; it was not opened."
        )
        return None
    try:
        tree = SafeET.parse(xml, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        refuse(
            "unsafe_xml",
            f"{xml_rel} declares XML entities or external references ({type(exc).__name__}); it was not "
            "expanded: export the annotation again without a DTD.",
        )
        return None
    except ParseError as exc:
        line, column = exc.position
        refuse(
            "annotation_unreadable", f"{xml_rel} is not well-formed XML at line {line}, column {column + 1}."
        )
        return None
    except (LookupError, ValueError) as exc:  # encoding="bogus" and the like: only this file is lost
        refuse(
            "annotation_unreadable",
            f"{xml_rel} cannot be decoded ({exc}); save it again as UTF-8 with a standard encoding "
            "declaration.",
        )
        return None
    except RecursionError:
        refuse("annotation_unreadable", f"{xml_rel} nests elements too deeply to parse; export it again.")
        return None
    annotation = tree.getroot()
    assert annotation is not None, "a parsed XML document always has a root element"
    if annotation.tag != "annotation":
        refuse("not_voc_annotation", f"{xml_rel} has root <{annotation.tag}>, not a VOC <annotation>.")
        return None
    filename = (annotation.findtext("filename") or "").strip()
    candidates = [filename] if filename else []
    if not filename or not PurePosixPath(filename.replace("\\", "/")).suffix:
        stem = filename or xml.stem  # some exports write the stem only
        candidates += [stem + ext for ext in sorted(extensions)]
    file, problem = None, "missing_file"
    for name in candidates:
        file, problem = locate(root, bases, name)
        if file is not None or problem == "outside_source":
            break
    if file is None:
        looked = ", ".join(rel(root, b) or "." for b in bases)
        assert problem is not None, "locate names a problem whenever it finds no file"
        refuse(problem, problem_detail(problem, f"{xml_rel} names image", filename or xml.stem, looked))
        return None
    image_rel = rel(root, file)
    boxes: list[BoxRecord] = []
    for number, obj in enumerate(annotation.findall("object"), start=1):
        where = f"{xml_rel} object {number}"
        parsed = _parse_object(obj, where)
        if isinstance(parsed, BoxRecord):
            boxes.append(parsed)
        else:
            out.quarantine.append(QuarantineEntry(image_rel, parsed[0], parsed[1], STAGE, "box", where))
    return SourceItem(
        file=file,
        rel_path=image_rel,
        label=None,
        split=splits.get(xml.stem) or splits.get(file.stem),
        group=None,
        source=xml_rel,
        boxes=tuple(boxes),
        declared_size=_declared_size(annotation),
    )


def _parse_object(obj: Element, where: str) -> BoxRecord | tuple[str, str]:
    name = (obj.findtext("name") or "").strip()
    if not name:
        return "box_malformed", f"{where} has no <name>; every VOC object needs a class name."
    box = obj.find("bndbox")
    if box is None:
        return "box_malformed", f"{where} ('{name}') has no <bndbox>; only boxes are imported."
    values = []
    for corner in _CORNERS:
        text = (box.findtext(corner) or "").strip()
        try:
            values.append(float(text))
        except ValueError:
            return (
                "box_malformed",
                f"{where} ('{name}') has <{corner}>{text}</{corner}>, which is not a number.",
            )
    return BoxRecord(
        name, *values, where=where, difficult=_flag(obj, "difficult"), truncated=_flag(obj, "truncated")
    )


def _flag(obj: Element, tag: str) -> bool:
    return (obj.findtext(tag) or "0").strip().lower() in {"1", "true", "yes"}


def _declared_size(annotation: Element) -> tuple[int, int] | None:
    try:
        width = float(annotation.findtext("size/width") or "nan")
        height = float(annotation.findtext("size/height") or "nan")
    except ValueError:
        return None
    if not (math.isfinite(width) and math.isfinite(height)) or width <= 0 or height <= 0:
        return None  # CVAT writes 0 when it did not know; the file's header decides anyway
    return round(width), round(height)


def _note_unannotated(
    root: Path, bases: list[Path], claimed: set[Path], extensions: set[str], out: SourceScan
) -> None:
    """Images no XML names are not imported; say how many (they may be missing annotations)."""
    folders = [b for b in bases if b != root]
    loose = sorted(
        f
        for folder in folders
        for f in folder.rglob("*")
        if f.is_file() and f.suffix.lower() in extensions and f not in claimed
    )
    if loose:
        out.warnings.append(
            f"{len(loose)} images have no XML in the annotation folder and were not imported "
            f"(first: {rel(root, loose[0])}); add an XML with no <object> for a background image."
        )
        out.ignored.extend(rel(root, f) for f in loose)
