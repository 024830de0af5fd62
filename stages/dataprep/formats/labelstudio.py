"""Label Studio exports: JSON (tasks with ``data`` and ``annotations[].result[]``) and JSON-MIN.

Regions are in percent of ``original_width``/``original_height``: ``rectanglelabels`` (x, y,
width, height; a rotated rectangle is quarantined), ``polygonlabels`` (``points``) and
``brushlabels`` (Label Studio's RLE, decoded here into a COCO RLE shape); ``choices`` is a
classification label. Image URLs (``/data/upload/N/<hash>-name``, ``/data/local-files/?d=``,
``http(s)://``, plain paths) are matched to files under the source by relative path, then by
base name. Cancelled annotations are skipped; of several, the ground-truth one wins, else the
latest. Class order: sorted names.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from stages.core.contracts import QuarantineEntry
from stages.core.errors import DataError
from stages.core.params import DataSection, IngestSection
from stages.dataprep.formats.base import (
    BoxRecord,
    ShapeRecord,
    SourceItem,
    SourceScan,
    named_annotation_file,
    read_annotation_json,
    rel,
    single_label,
)
from stages.dataprep.shapes import labelstudio_mask, rle_encode

STAGE = "ingest"
_TOLERANCE = 1e-6  # percent: exporters write 100.00000001 at the edge
_UPLOAD = re.compile(r"^[0-9a-f]{8}-(.+)$")  # /data/upload/N/<8 hex>-<original name>
_MIN_META = {
    "id",
    "annotator",
    "annotation_id",
    "created_at",
    "updated_at",
    "lead_time",
    "drafts",
    "predictions",
}
_REGION_TYPES = ("rectanglelabels", "polygonlabels", "brushlabels", "choices")


def looks_like_labelstudio(path: Path) -> bool:
    """True for a JSON list whose first kilobytes read like a Label Studio export (full or MIN)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(65536).lstrip()
    except OSError:
        return False
    if not head.startswith(b"["):
        return False
    full = b'"annotations"' in head and (b'"result"' in head or b'"data"' in head)
    return full or b'"annotation_id"' in head


def find_file(root: Path, data: DataSection | None = None) -> Path | None:
    """The one Label Studio JSON at the root (or the one data.annotations names)."""
    if data is not None and data.annotations is not None:
        return named_annotation_file(root, data.annotations, "the Label Studio JSON export")
    found = [p for p in sorted(root.glob("*.json")) if p.is_file() and looks_like_labelstudio(p)]
    if len(found) > 1:
        raise DataError(
            f"{root}: several Label Studio exports at the root ({', '.join(p.name for p in found)}); set "
            "data.annotations to the one to import."
        )
    return found[0] if found else None


def scan(root: Path, data: DataSection, params: IngestSection) -> SourceScan:
    """Read every task of the export into items: boxes and shapes (detect) or choices (classify)."""
    file = find_file(root, data)
    if file is None:
        raise DataError(
            f"{root}: no Label Studio JSON export at the root; export the project as JSON or JSON-MIN into "
            "data.source, or set data.annotations to it."
        )
    name = rel(root, file)
    tasks = _load(root, file, name)
    extensions = {e.lower() for e in params.image_extensions}
    files = _image_index(root, extensions, params.ignore_files)
    out = SourceScan()
    several = skipped = 0
    for index, task in enumerate(tasks):
        where = f"{name} task {task.get('id', f'#{index}') if isinstance(task, dict) else f'#{index}'}"
        if not isinstance(task, dict):
            out.quarantine.append(
                QuarantineEntry(
                    name, "annotation_malformed", f"{where} is not an object.", STAGE, "annotation", where
                )
            )
            continue
        url, results, note = _task_results(task, extensions)
        several += note
        if results is None:
            skipped += 1
            continue
        image, problem = _resolve(url, files, root)
        if image is None:
            detail = f"{where} names image {url!r}, {problem}"
            out.quarantine.append(QuarantineEntry(url or name, "missing_file", detail, STAGE, "image", where))
            continue
        _read_task(root, image, results, where, name, data.task, out)
    if skipped:
        out.warnings.append(
            f"{skipped} tasks of {name} have no annotation that was not cancelled and were not imported."
        )
    if several:
        out.warnings.append(
            f"{several} tasks of {name} have several annotations; the ground-truth one was taken, else the "
            "latest."
        )
    out.classes = sorted(
        {b.class_name for i in out.items for b in i.boxes or ()}
        | {s.class_name for i in out.items for s in i.shapes}
    )
    return out


def _load(root: Path, file: Path, name: str) -> list:
    tasks = read_annotation_json(root, file, name)
    if not isinstance(tasks, list):
        raise DataError(
            f"{name}: not a Label Studio export (a JSON list of tasks); export as JSON or JSON-MIN."
        )
    return tasks


def _task_results(task: dict, extensions: set[str]) -> tuple[str, list[dict] | None, int]:
    """The image URL, the chosen annotation's results (None: all cancelled) and 1 when there was a choice."""
    if isinstance(task.get("data"), dict):  # full JSON export
        url = _image_url(task["data"], extensions)
        annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
        live = [a for a in annotations if not a.get("was_cancelled")]
        if not live:
            return url, None, 0  # never annotated, or only cancelled: not a background image
        truth = [a for a in live if a.get("ground_truth")]
        latest = sorted(
            truth or live,
            key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), str(a.get("id", ""))),
        )
        chosen = latest[-1] if latest else {}
        results = [r for r in chosen.get("result") or [] if isinstance(r, dict)]
        return url, results, int(len(live) > 1)
    url = _image_url(task, extensions)  # JSON-MIN: one record per annotation, results under their tag names
    results: list[dict] = []
    for key, value in task.items():
        if key in _MIN_META or (isinstance(value, str) and value == url):
            continue
        regions = value if isinstance(value, list) else [value]
        for region in regions:
            if isinstance(region, str):
                results.append({"type": "choices", "value": {"choices": [region]}})
            elif isinstance(region, dict):
                results.extend(_min_region(region))
    if not results and "annotation_id" not in task:
        return url, None, 0  # a task nobody annotated
    return url, results, 0


def _min_region(region: dict) -> list[dict]:
    """A JSON-MIN region back into the full export's ``{type, value, original_*}`` form."""
    size = {k: region.get(k) for k in ("original_width", "original_height")}
    kinds = [t for t in _REGION_TYPES if t in region]
    return [{"type": t, "value": region, **size} for t in kinds[:1]]


def _image_url(data: dict, extensions: set[str]) -> str:
    if isinstance(data.get("image"), str):
        return data["image"]
    for value in data.values():
        if isinstance(value, str) and PurePosixPath(urlparse(value).path).suffix.lower() in extensions:
            return value
    return ""


def _image_index(
    root: Path, extensions: set[str], ignore: tuple[str, ...] | list[str]
) -> dict[str, list[Path]]:
    """Every image under the source by relative path and by base name."""
    index: dict[str, list[Path]] = defaultdict(list)
    for file in sorted(root.rglob("*")):
        if file.is_file() and file.suffix.lower() in extensions and file.name not in ignore:
            index[rel(root, file)].append(file)
            index[file.name].append(file)
    return index


def _candidates(url: str) -> list[str]:
    """Names to look up for a Label Studio image URL, most specific first."""
    parsed = urlparse(url)
    if parsed.path.startswith("/data/local-files/"):
        path = unquote(parse_qs(parsed.query).get("d", [""])[0])
    else:
        path = unquote(parsed.path)
    parts = PurePosixPath(path.replace("\\", "/")).parts
    names = ["/".join(parts[i:]) for i in range(len(parts)) if parts[i] != "/"]
    base = parts[-1] if parts else ""
    upload = _UPLOAD.match(base)
    if parsed.path.startswith("/data/upload/") and upload:
        names.insert(0, upload.group(1))  # the file as it was before Label Studio prefixed a hash
    return names


def _resolve(url: str, files: dict[str, list[Path]], root: Path) -> tuple[Path | None, str]:
    if not url:
        return None, "no image URL in the task's data; export with the image field."
    for name in _candidates(url):
        found = files.get(name, [])
        if len(found) == 1:
            return found[0], ""
        if len(found) > 1:
            shown = ", ".join(rel(root, f) for f in found[:3])
            return (
                None,
                f"which matches several files ({shown}); keep one file of that name under data.source.",
            )
    return None, "which is not under data.source (looked by relative path and base name); copy the image in."


def _read_task(
    root: Path, image: Path, results: list[dict], where: str, name: str, task: str, out: SourceScan
) -> None:
    shown = rel(root, image)
    boxes: list[BoxRecord] = []
    shapes: list[ShapeRecord] = []
    choices: list[str] = []
    size: tuple[int, int] | None = None
    for number, result in enumerate(results, start=1):
        kind = str(result.get("type", ""))
        value = result.get("value") if isinstance(result.get("value"), dict) else {}
        assert isinstance(value, dict)
        here = f"{where} result {number}"
        if kind not in _REGION_TYPES:
            continue  # textarea, rating, keypoints ... carry no class region
        labels = value.get(kind)
        if not (isinstance(labels, list) and labels and all(isinstance(v, str) for v in labels)):
            detail = f"{here} has no '{kind}' label list."
            out.quarantine.append(QuarantineEntry(shown, "unknown_class", detail, STAGE, "shape", here))
            continue
        if kind == "choices":
            choices += labels
            continue
        width, height = result.get("original_width"), result.get("original_height")
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            detail = f"{here} has no original_width/original_height, which its percent values need."
            out.quarantine.append(
                QuarantineEntry(shown, "annotation_malformed", detail, STAGE, "shape", here)
            )
            continue
        size = (width, height)
        parsed = _region(kind, value, labels[0], here, width, height)
        item = "box" if kind == "rectanglelabels" else "shape"
        if isinstance(parsed, BoxRecord):
            boxes.append(parsed)
        elif isinstance(parsed, ShapeRecord):
            shapes.append(parsed)
        else:
            out.quarantine.append(QuarantineEntry(shown, parsed[0], parsed[1], STAGE, item, here))
    if task == "classify":
        label = single_label(choices, "choice", where, shown)
        if isinstance(label, QuarantineEntry):
            out.quarantine.append(label)
        else:
            out.items.append(SourceItem(image, shown, label, None, None, name))
        return
    out.items.append(
        SourceItem(
            image,
            shown,
            None,
            None,
            None,
            name,
            boxes=tuple(boxes),
            shapes=tuple(shapes),
            declared_size=size,
            box_frame="displayed",
        )
    )


def _region(
    kind: str, value: dict, label: str, here: str, width: int, height: int
) -> BoxRecord | ShapeRecord | tuple[str, str]:
    if kind == "rectanglelabels":
        numbers = [_float(value.get(k)) for k in ("x", "y", "width", "height")]
        if any(math.isnan(v) for v in numbers):
            return "box_malformed", f"{here} ('{label}') lacks x, y, width or height as numbers."
        rotation = _float(value.get("rotation", 0))
        if math.isfinite(rotation) and rotation % 360:
            return (
                "box_rotated",
                f"{here} ('{label}') is rotated by {rotation:g} degrees; only upright boxes are read.",
            )
        x, y, w, h = numbers
        if _not_percent([x, y, x + w, y + h]):
            return (
                "value_not_percent",
                f"{here} ('{label}') has values outside 0..100 ({x:g}, {y:g}, {w:g}, {h:g}): "
                "Label Studio writes percent of the image.",
            )
        return BoxRecord(label, x / 100, y / 100, (x + w) / 100, (y + h) / 100, here, normalized=True)
    if kind == "polygonlabels":
        points = value.get("points")
        flat = (
            [_float(v) for p in points for v in p]
            if isinstance(points, list) and all(isinstance(p, list) and len(p) == 2 for p in points)
            else []
        )
        if not flat or any(math.isnan(v) for v in flat):
            return "shape_malformed", f"{here} ('{label}') has no [[x, y], ...] points in percent."
        if _not_percent(flat):
            return (
                "value_not_percent",
                f"{here} ('{label}') has points outside 0..100: Label Studio writes percent of the image.",
            )
        return ShapeRecord(label, here, points=tuple(v / 100 for v in flat), normalized=True)
    rle = value.get("rle")
    if value.get("format", "rle") != "rle" or not isinstance(rle, list) or not rle:
        return "shape_malformed", f"{here} ('{label}') is a brush without an 'rle' list."
    try:
        mask = labelstudio_mask(rle, width, height)
    except ValueError as exc:
        return "shape_malformed", f"{here} ('{label}') has a brush RLE that cannot be decoded ({exc})."
    return ShapeRecord(label, here, counts=rle_encode(mask), mask_size=(height, width))


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def _not_percent(values: list[float]) -> bool:
    return not all(math.isfinite(v) and -_TOLERANCE <= v <= 100 + _TOLERANCE for v in values)
