"""Build the small demo datasets under ``data/demo/`` from the shared public sources.

Why this script exists: the repository ships a tiny classification set (ants vs bees), a
tiny detection set (raccoons, Pascal VOC) and a tiny semantic segmentation set (building
facades, Roboflow COCO polygons) so that the pipeline, its tests and its tutorials run
without downloading anything. Those files are derived data, so they must be
regenerable from the public sources they come from. This script is that recipe: it picks
the images deterministically (sorted paths, evenly spaced picks, no randomness), downscales
and re-encodes them, rescales the VOC boxes and the COCO polygons, and writes ``README.md``
(provenance, licences, counts) and ``sources.csv`` (one row per output file with the sha256
of its source file).
Run it again with the same Pillow build and it writes the same bytes.

Usage (from the repository root)::

    uv run python bench/make_demo_data.py
    uv run python bench/make_demo_data.py --shared ../shared/datasets --out data/demo
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as DET
from PIL import Image, ImageOps

REPO_ROOT = Path(__file__).resolve().parents[1]

CLASSIFY_CLASSES = ("ants", "bees")
CLASSIFY_PER_CLASS = 50  # images per class
CLASSIFY_LONG_SIDE = 192  # px, longer side after downscaling
DETECT_IMAGES = 40
DETECT_LONG_SIDE = 320  # px
DETECT_CLASS = "raccoon"
VOC_CORNERS = ("xmin", "ymin", "xmax", "ymax")
SEGMENT_TWIN_PHOTOS = 12  # photos kept with both their _scaled_0 and _scaled_1 images
SEGMENT_SINGLE_PHOTOS = 16  # photos the vendor ships as one image
SEGMENT_LONG_SIDE = 256  # px
SEGMENT_SPLITS = ("train", "valid", "test")  # the vendor's folders, pooled
COCO_FILE = "_annotations.coco.json"
# The photo a Roboflow file name comes from: X_scaled_0_png_jpg.rf.<hash>.jpg and X_scaled_1_... -> X.
# The same pattern, as split.groups.pattern, keeps both halves of a photo on one side of the split.
TWIN_PATTERN = r"(?P<group>[^/]+)_scaled_\d+_"
JPEG_QUALITY = 85
PHOTO_SUFFIXES = {".jpg", ".jpeg"}
KNOWN_PLACEHOLDERS = {"imageNotFound.gif"}  # Flickr "image not found" page, not a photo

# Provenance, copied from the shared READMEs (shared/datasets/*/README.md).
FACADE_REPO = "a-hwang/building-facade-segmentation"
HYMENOPTERA_REPO = "zhangtao7750/syn"
HYMENOPTERA_COMMIT = "f0503091488f67b6809a6da2eaa43c25f2f277fc"
RACCOON_REPO = "datitran/raccoon_dataset"
RACCOON_COMMIT = "93938849301895fb73909842ba04af9b602f677a"


@dataclass
class Report:
    """What was written and what was skipped, for the README and the console."""

    rows: list[dict[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    candidates: dict[str, int] = field(default_factory=dict)
    n_boxes: int = 0
    n_shapes: int = 0  # segment: COCO annotations (polygons) kept
    twin_photos: int = 0  # segment: photos kept with both halves
    seg_classes: dict[str, int] = field(default_factory=dict)  # segment: annotations per class


def sha256_of(path: Path) -> str:
    """Return the hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_manifest(root: Path) -> dict[str, str]:
    """Read ``MANIFEST.sha256`` (``<sha>  ./rel/path``) into {rel/path: sha}."""
    out: dict[str, str] = {}
    for line in (root / "MANIFEST.sha256").read_text().splitlines():
        if line.strip():
            digest, rel = line.split(maxsplit=1)
            out[rel.strip().removeprefix("./")] = digest
    return out


def check_source(path: Path, root: Path, manifest: dict[str, str]) -> str:
    """Return the file's sha256 after checking it against the source manifest."""
    digest = sha256_of(path)
    expected = manifest.get(path.relative_to(root).as_posix())
    if expected != digest:
        raise SystemExit(f"{path}: sha256 {digest} does not match MANIFEST ({expected})")
    return digest


def evenly_spaced(items: list[Path], k: int) -> list[Path]:
    """Pick ``k`` items at evenly spaced indices ``i * n // k`` (deterministic)."""
    n = len(items)
    if n < k:
        raise SystemExit(f"need {k} items, only {n} available")
    return [items[i * n // k] for i in range(k)]


def sanitise_stem(stem: str) -> str:
    """Replace every character outside ``[A-Za-z0-9_-]`` with ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", stem)


def natural_key(path: Path) -> tuple[str, int]:
    """Sort ``raccoon-2`` before ``raccoon-10``."""
    match = re.fullmatch(r"(.*?)(\d+)", path.stem)
    return (match.group(1), int(match.group(2))) if match else (path.stem, -1)


def shrink(im: Image.Image, long_side: int) -> Image.Image:
    """Apply EXIF orientation, convert to RGB, downscale to ``long_side`` (never upscale)."""
    im = ImageOps.exif_transpose(im).convert("RGB")
    w, h = im.size
    scale = long_side / max(w, h)
    if scale < 1:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        im = im.resize(size, Image.Resampling.LANCZOS)
    return im


def save_jpeg(im: Image.Image, path: Path, quality: int) -> None:
    """Save as baseline JPEG with no EXIF, ICC profile or comment."""
    im.info = {}
    im.save(path, "JPEG", quality=quality, optimize=True)


def is_photo(path: Path) -> str | None:
    """Return ``None`` for a usable JPEG photo, else the reason to skip it."""
    if path.name in KNOWN_PLACEHOLDERS:
        return "Flickr 'image not found' placeholder (GIF), not a photo"
    if path.suffix.lower() not in PHOTO_SUFFIXES:
        return f"not a JPEG file ({path.suffix})"
    with Image.open(path) as im:
        if im.format != "JPEG":
            return f"decodes as {im.format}, not JPEG"
    return None


def make_classify(src: Path, out: Path, quality: int, report: Report) -> None:
    """Write ``out/classify/<class>/*.jpg`` from hymenoptera train/ and val/ pooled."""
    manifest = load_manifest(src)
    for cls in CLASSIFY_CLASSES:
        files = sorted(
            (p for split in ("train", "val") for p in (src / split / cls).iterdir()),
            key=lambda p: p.relative_to(src).as_posix(),
        )
        photos: list[Path] = []
        for path in files:
            reason = is_photo(path)
            if reason is None:
                photos.append(path)
            else:
                report.skipped.append((f"hymenoptera/{path.relative_to(src).as_posix()}", reason))
        report.candidates[f"classify/{cls}"] = len(photos)
        dest = out / "classify" / cls
        dest.mkdir(parents=True)
        used: set[str] = set()
        for path in evenly_spaced(photos, CLASSIFY_PER_CLASS):
            stem = sanitise_stem(path.stem)
            if stem in used:
                raise SystemExit(f"duplicate output name {stem!r} for {path}")
            used.add(stem)
            digest = check_source(path, src, manifest)
            with Image.open(path) as im:
                orig = im.size
                small = shrink(im, CLASSIFY_LONG_SIDE)
            target = dest / f"{stem}.jpg"
            save_jpeg(small, target, quality)
            report.rows.append(
                {
                    "output": target.relative_to(out).as_posix(),
                    "source": f"hymenoptera/{path.relative_to(src).as_posix()}",
                    "source_sha256": digest,
                    "source_size": f"{orig[0]}x{orig[1]}",
                    "output_size": f"{small.width}x{small.height}",
                    "boxes": "",
                }
            )


def voc_root(path: Path) -> ET.Element:
    """The ``<annotation>`` element of a VOC XML file."""
    root = DET.parse(path).getroot()
    if root is None:
        raise SystemExit(f"{path}: empty XML")
    return root


def read_box(obj: ET.Element) -> tuple[float, float, float, float]:
    """Return the ``<bndbox>`` corners of a VOC ``<object>`` as floats."""
    xmin, ymin, xmax, ymax = (float(obj.findtext(f"bndbox/{k}", "nan")) for k in VOC_CORNERS)
    return xmin, ymin, xmax, ymax


def scale_box(
    box: tuple[float, float, float, float], sx: float, sy: float, w: int, h: int
) -> tuple[int, int, int, int]:
    """Scale VOC corners, round to integers and clip so 0 <= min < max <= size."""
    xmin, ymin, xmax, ymax = box
    x0 = min(max(round(xmin * sx), 0), w - 1)
    y0 = min(max(round(ymin * sy), 0), h - 1)
    x1 = min(max(round(xmax * sx), x0 + 1), w)
    y1 = min(max(round(ymax * sy), y0 + 1), h)
    return x0, y0, x1, y1


def voc_xml(filename: str, size: tuple[int, int], objects: list[dict[str, str]]) -> ET.Element:
    """Build a Pascal VOC ``<annotation>`` element (no ``<path>``)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = filename
    ET.SubElement(ET.SubElement(root, "source"), "database").text = "Unknown"
    size_el = ET.SubElement(root, "size")
    ET.SubElement(size_el, "width").text = str(size[0])
    ET.SubElement(size_el, "height").text = str(size[1])
    ET.SubElement(size_el, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "0"
    for obj in objects:
        obj_el = ET.SubElement(root, "object")
        for key in ("name", "pose", "truncated", "difficult"):
            ET.SubElement(obj_el, key).text = obj[key]
        box_el = ET.SubElement(obj_el, "bndbox")
        for key in VOC_CORNERS:
            ET.SubElement(box_el, key).text = obj[key]
    ET.indent(root, space="\t")
    return root


def make_detect(src: Path, out: Path, quality: int, report: Report) -> None:
    """Write ``out/detect/{Annotations,JPEGImages}`` from raccoon_voc, boxes rescaled."""
    manifest = load_manifest(src)
    unique: list[Path] = []
    first_of: dict[str, Path] = {}
    for path in sorted((src / "images").glob("*.jpg"), key=natural_key):
        digest = sha256_of(path)
        if digest in first_of:
            reason = f"byte-identical duplicate of {first_of[digest].name} (kept the first)"
            report.skipped.append((f"raccoon_voc/images/{path.name}", reason))
            continue
        first_of[digest] = path
        unique.append(path)
    report.candidates["detect"] = len(unique)
    img_dir, ann_dir = out / "detect" / "JPEGImages", out / "detect" / "Annotations"
    img_dir.mkdir(parents=True)
    ann_dir.mkdir(parents=True)
    for path in evenly_spaced(unique, DETECT_IMAGES):
        digest = check_source(path, src, manifest)
        xml_path = src / "annotations" / f"{path.stem}.xml"
        check_source(xml_path, src, manifest)
        ann = voc_root(xml_path)
        with Image.open(path) as im:
            if im.getexif().get(0x0112, 1) != 1:
                raise SystemExit(f"{path}: EXIF rotation makes the VOC boxes ambiguous")
            orig = im.size
            small = shrink(im, DETECT_LONG_SIDE)
        xml_w, xml_h = int(ann.findtext("size/width", "0")), int(ann.findtext("size/height", "0"))
        if (xml_w, xml_h) != orig:
            raise SystemExit(f"{xml_path}: <size> {xml_w}x{xml_h} != image {orig}")
        sx, sy = small.width / orig[0], small.height / orig[1]
        objects = []
        for obj in ann.iterfind("object"):
            box = scale_box(read_box(obj), sx, sy, small.width, small.height)
            objects.append(
                {
                    "name": DETECT_CLASS,
                    "pose": obj.findtext("pose") or "Unspecified",
                    "truncated": obj.findtext("truncated") or "0",
                    "difficult": obj.findtext("difficult") or "0",
                    **dict(zip(VOC_CORNERS, map(str, box), strict=True)),
                }
            )
        stem = sanitise_stem(path.stem)
        save_jpeg(small, img_dir / f"{stem}.jpg", quality)
        root = voc_xml(f"{stem}.jpg", small.size, objects)
        (ann_dir / f"{stem}.xml").write_text(ET.tostring(root, encoding="unicode") + "\n")
        report.n_boxes += len(objects)
        report.rows.append(
            {
                "output": f"detect/JPEGImages/{stem}.jpg",
                "source": f"raccoon_voc/images/{path.name}",
                "source_sha256": digest,
                "source_size": f"{orig[0]}x{orig[1]}",
                "output_size": f"{small.width}x{small.height}",
                "boxes": str(len(objects)),
            }
        )
    shutil.copyfile(src / "LICENSE", out / "detect" / "LICENSE")


def photo_of(name: str) -> str:
    """The photo a Roboflow file name belongs to (``TWIN_PATTERN``); the name itself without it."""
    match = re.search(TWIN_PATTERN, name)
    return match.group("group") if match else name


def scale_points(points: list[float], sx: float, sy: float, w: int, h: int) -> list[float]:
    """Scale a flat COCO polygon ``[x1, y1, x2, y2, ...]`` and clip it to the image, 3 decimals."""
    out: list[float] = []
    for i, v in enumerate(points):
        scale, limit = (sx, w) if i % 2 == 0 else (sy, h)
        out.append(round(min(max(v * scale, 0.0), float(limit)), 3))
    return out


def make_segment(src: Path, out: Path, quality: int, report: Report) -> None:
    """Write ``out/segment/`` (images + one pooled ``_annotations.coco.json``) from facade_seg.

    Whole photos are picked, both halves of a photo that has two: the demo then shows what
    ``split.groups`` with ``TWIN_PATTERN`` does (keep them on one side), and the vendor's
    train/valid/test folders are pooled so the split stage makes the split.
    """
    manifest = load_manifest(src)
    docs = {name: json.loads((src / name / COCO_FILE).read_text()) for name in SEGMENT_SPLITS}
    for name in SEGMENT_SPLITS:
        check_source(src / name / COCO_FILE, src, manifest)
    categories = docs[SEGMENT_SPLITS[0]]["categories"]
    if any(doc["categories"] != categories for doc in docs.values()):
        raise SystemExit(f"{src}: the splits' COCO files list different categories")
    names = {c["id"]: c["name"] for c in categories}
    photos: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for name, doc in docs.items():
        for image in doc["images"]:
            photos.setdefault(photo_of(image["file_name"]), []).append((name, image))
    keys = sorted(photos)
    twins = [k for k in keys if len(photos[k]) == 2]
    singles = [k for k in keys if len(photos[k]) == 1]
    report.candidates["segment"] = sum(len(v) for v in photos.values())
    report.candidates["segment/photos"] = len(keys)
    report.candidates["segment/twins"] = len(twins)
    report.candidates["segment/twins_split"] = sum(len({s for s, _ in photos[k]}) > 1 for k in twins)
    chosen = sorted(
        [*evenly_spaced_keys(twins, SEGMENT_TWIN_PHOTOS), *evenly_spaced_keys(singles, SEGMENT_SINGLE_PHOTOS)]
    )
    report.twin_photos = SEGMENT_TWIN_PHOTOS
    dest = out / "segment"
    dest.mkdir(parents=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    entries = sorted((e for k in chosen for e in photos[k]), key=lambda e: e[1]["file_name"])
    for split_name, image in entries:
        path = src / split_name / image["file_name"]
        if not re.fullmatch(r"[A-Za-z0-9_.-]+\.jpg", path.name):
            raise SystemExit(f"{path}: unexpected characters in the file name (it is kept as it is)")
        digest = check_source(path, src, manifest)
        with Image.open(path) as im:
            if im.getexif().get(0x0112, 1) != 1:
                raise SystemExit(f"{path}: EXIF rotation makes the COCO polygons ambiguous")
            orig = im.size
            small = shrink(im, SEGMENT_LONG_SIDE)
        if (image["width"], image["height"]) != orig:
            raise SystemExit(f"{path}: COCO size {image['width']}x{image['height']} != image {orig}")
        sx, sy = small.width / orig[0], small.height / orig[1]
        save_jpeg(small, dest / path.name, quality)
        new_id = len(images)
        images.append(
            {**image, "id": new_id, "width": small.width, "height": small.height}  # keeps license, date
        )
        kept = [a for a in docs[split_name]["annotations"] if a["image_id"] == image["id"]]
        for ann in kept:
            x, y, w, h = ann["bbox"]
            x0, y0 = scale_points([x, y], sx, sy, small.width, small.height)
            x1, y1 = scale_points([x + w, y + h], sx, sy, small.width, small.height)
            annotations.append(
                {
                    **ann,
                    "id": len(annotations),
                    "image_id": new_id,
                    "bbox": [x0, y0, round(x1 - x0, 3), round(y1 - y0, 3)],
                    "area": round(ann["area"] * sx * sy, 3),
                    "segmentation": [
                        scale_points(part, sx, sy, small.width, small.height) for part in ann["segmentation"]
                    ],
                }
            )
            cls = names[ann["category_id"]]
            report.seg_classes[cls] = report.seg_classes.get(cls, 0) + 1
        report.n_shapes += len(kept)
        report.rows.append(
            {
                "output": f"segment/{path.name}",
                "source": f"facade_seg/{split_name}/{path.name}",
                "source_sha256": digest,
                "source_size": f"{orig[0]}x{orig[1]}",
                "output_size": f"{small.width}x{small.height}",
                "boxes": str(len(kept)),
            }
        )
    first = docs[SEGMENT_SPLITS[0]]
    doc = {
        "info": first["info"],
        "licenses": first["licenses"],
        "categories": categories,  # category 0 (Roboflow's unused parent 'facade') kept as exported
        "images": images,
        "annotations": annotations,
    }
    (dest / COCO_FILE).write_text(json.dumps(doc, separators=(",", ":")) + "\n")


def evenly_spaced_keys(keys: list[str], k: int) -> list[str]:
    """``evenly_spaced`` for strings (photo keys)."""
    n = len(keys)
    if n < k:
        raise SystemExit(f"need {k} photos, only {n} available")
    return [keys[i * n // k] for i in range(k)]


def verify_segment(out: Path) -> None:
    """Check the pooled COCO file: every image present at its size, every polygon inside it."""
    folder = out / "segment"
    doc = json.loads((folder / COCO_FILE).read_text())
    sizes: dict[int, tuple[int, int]] = {}
    for image in doc["images"]:
        with Image.open(folder / image["file_name"]) as im:
            if im.size != (image["width"], image["height"]):
                raise SystemExit(f"{image['file_name']}: COCO size does not match the image")
            sizes[image["id"]] = im.size
    listed = {image["file_name"] for image in doc["images"]}
    on_disk = {p.name for p in folder.glob("*.jpg")}
    if listed != on_disk:
        raise SystemExit(f"{folder}: images on disk and in {COCO_FILE} differ")
    for ann in doc["annotations"]:
        w, h = sizes[ann["image_id"]]
        for part in ann["segmentation"]:
            xs, ys = part[0::2], part[1::2]
            if len(part) < 6 or len(part) % 2 or not (min(xs) >= 0 and max(xs) <= w):
                raise SystemExit(f"{COCO_FILE}: annotation {ann['id']} has a bad polygon")
            if not (min(ys) >= 0 and max(ys) <= h):
                raise SystemExit(f"{COCO_FILE}: annotation {ann['id']} has a polygon outside its image")
    groups: dict[str, int] = {}
    for name in listed:
        groups[photo_of(name)] = groups.get(photo_of(name), 0) + 1
    if any(count > 2 for count in groups.values()):
        raise SystemExit(f"{TWIN_PATTERN!r} puts more than two images in one photo")


def verify(out: Path) -> None:
    """Re-open every output image and check every VOC box lies inside its image."""
    for path in sorted(out.rglob("*.jpg")):
        with Image.open(path) as im:
            im.load()
            if im.format != "JPEG" or im.mode != "RGB" or im.getexif():
                raise SystemExit(f"{path}: unexpected format/mode/EXIF")
    for xml_path in sorted((out / "detect" / "Annotations").glob("*.xml")):
        ann = voc_root(xml_path)
        jpg = out / "detect" / "JPEGImages" / ann.findtext("filename", "")
        with Image.open(jpg) as im:
            w, h = im.size
        if (int(ann.findtext("size/width", "0")), int(ann.findtext("size/height", "0"))) != (w, h):
            raise SystemExit(f"{xml_path}: <size> does not match {jpg.name}")
        if ann.find("path") is not None:
            raise SystemExit(f"{xml_path}: has a <path> element")
        for obj in ann.iterfind("object"):
            x0, y0, x1, y1 = read_box(obj)
            inside = 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            integral = all(v.is_integer() for v in (x0, y0, x1, y1))
            if obj.findtext("name") != DETECT_CLASS or not (inside and integral):
                raise SystemExit(f"{xml_path}: bad object {(x0, y0, x1, y1)} in {w}x{h}")


def dir_bytes(path: Path) -> int:
    """Total size in bytes of the files under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def write_readme(out: Path, report: Report, quality: int) -> None:
    """Write ``out/README.md`` with provenance, licences, counts and the regeneration command."""
    n_cls = {c: sum(r["output"].startswith(f"classify/{c}/") for r in report.rows) for c in CLASSIFY_CLASSES}
    n_det = sum(r["output"].startswith("detect/") for r in report.rows)
    native = {
        sub: sum(r["output"].startswith(sub) and r["source_size"] == r["output_size"] for r in report.rows)
        for sub in ("classify/", "detect/")
    }
    kb_cls = dir_bytes(out / "classify") / 1000
    kb_det = dir_bytes(out / "detect") / 1000
    kb_seg = dir_bytes(out / "segment") / 1000
    n_seg = sum(r["output"].startswith("segment/") for r in report.rows)
    per_class = ", ".join(
        f"{name} {n}" for name, n in sorted(report.seg_classes.items(), key=lambda kv: -kv[1])
    )
    c = report.candidates
    skipped = "\n".join(f"- `{src}`: {why}" for src, why in report.skipped) or "- none"
    text = f"""# Demo datasets

Small subsets of three public datasets, so that the pipeline, its tests and its tutorials can
run without downloading anything. They are derived data: do not edit them by hand.
Regenerate them from the shared public copies (`../shared/datasets/`) with

```
uv run python bench/make_demo_data.py
```

The script picks files deterministically (sorted paths, evenly spaced picks `i * n // k`,
no randomness) and checks every source file against the source `MANIFEST.sha256`.
`sources.csv` maps each output image to its source file, its sha256 and both image sizes.

## `classify/`: ants vs bees (image classification)

- Layout: one flat folder per class, no train/val split:
  `classify/ants/*.jpg` ({n_cls["ants"]} images) and `classify/bees/*.jpg`
  ({n_cls["bees"]} images). About {kb_cls:.0f} kB.
- Source: the `hymenoptera_data` set of the PyTorch tutorial "Transfer Learning for
  Computer Vision" (download.pytorch.org/tutorial/hymenoptera_data.zip), as committed in
  GitHub `{HYMENOPTERA_REPO}` at commit `{HYMENOPTERA_COMMIT}`,
  path `hymenoptera_data/`.
- Licence: **not stated.** Neither that repository nor the PyTorch tutorial gives a
  licence for the images. They are a small subset of ImageNet, mostly Flickr photos
  whose photographers keep the copyright. Use them only as research and benchmarking
  data (ImageNet terms: non-commercial research and education).
- Selection: the original `train/` and `val/` folders pooled per class, sorted by
  relative path ({report.candidates["classify/ants"]} usable ants photos, \
{report.candidates["classify/bees"]} usable bees photos),
  then {CLASSIFY_PER_CLASS} evenly spaced picks per class. The original split is not kept.
- Transformations: EXIF orientation applied (`ImageOps.exif_transpose`), converted to RGB,
  downscaled with Lanczos so the longer side is {CLASSIFY_LONG_SIDE} px (never upscaled;
  {native["classify/"]} sources were already at most that size), saved as baseline JPEG quality \
{quality}
  with `optimize=True`. EXIF, ICC profiles and comments are dropped
  (pixel values are kept as stored, which is also what PIL/torchvision loaders see).
  File names keep the original stem with every character outside `[A-Za-z0-9_-]`
  replaced by `_`.

## `detect/`: raccoons (object detection, Pascal VOC)

- Layout: `detect/JPEGImages/*.jpg` and `detect/Annotations/*.xml` (same stem), one class
  `{DETECT_CLASS}`. {n_det} images, {report.n_boxes} boxes. About {kb_det:.0f} kB.
- Source: Dat Tran's raccoon dataset, GitHub `{RACCOON_REPO}` at commit
  `{RACCOON_COMMIT}` (`images/`, `annotations/`).
- Licence: **MIT**, Copyright (c) 2017 Dat Tran; the licence text is in `detect/LICENSE`
  and must travel with these files. The images were collected from Google and Pixabay and
  may carry their own rights.
- Selection: images sorted by their number (`raccoon-1` … `raccoon-200`); byte-identical
  duplicates dropped, keeping only the first of each sha256-identical group (their
  upstream boxes differ, so keeping both would give contradictory labels). That leaves
  {report.candidates["detect"]} images, of which {DETECT_IMAGES} evenly spaced picks are kept.
  Near-duplicates at other resolutions (pHash) were not removed.
- Transformations: converted to RGB (3 of the 200 sources are grayscale), downscaled with Lanczos so
  the longer side is {DETECT_LONG_SIDE} px, saved as baseline JPEG quality {quality} with
  `optimize=True`, no EXIF/ICC. Images are never upscaled: {native["detect/"]} of the
  {n_det} sources are already at most {DETECT_LONG_SIDE} px and keep their native size
  (only re-encoded). Each XML was rewritten: boxes scaled by the same factors
  as the image and rounded to integer pixel corners clipped so that
  `0 <= xmin < xmax <= width` and `0 <= ymin < ymax <= height`; `<filename>` is the new
  file name, `<folder>` is `JPEGImages`, `<size>` is the new size with depth 3, the stale
  absolute `<path>` is removed, and every object is named `{DETECT_CLASS}` (`pose`,
  `truncated`, `difficult` are copied).

## `segment/`: building facades (semantic segmentation, COCO polygons)

- Layout: a Roboflow-style COCO export pooled into one folder: `segment/*.jpg` and
  `segment/{COCO_FILE}` ({n_seg} images, {report.n_shapes} polygon annotations,
  {len(report.seg_classes)} classes). About {kb_seg:.0f} kB. Use it with
  `data.source: data/demo/segment`, `data.format: coco`, `data.task: segment`.
- Source: `facade_seg` (shared copy: every image already halved to 512 px by its curator),
  exported from roboflow.ai on 2023-07-11 from GitHub `{FACADE_REPO}`.
- Licence: **CC BY 4.0** (https://creativecommons.org/licenses/by/4.0/, stated in the COCO
  `licenses` block, kept in `{COCO_FILE}`). Attribution: a-hwang,
  building-facade-segmentation (GitHub `{FACADE_REPO}`), via Roboflow; images downscaled
  and subset here (changes listed below).
- Selection: the vendor's `train/`, `valid/` and `test/` pooled ({c["segment"]} images of
  {c["segment/photos"]} photos). A photo is the file name before `_scaled_<n>_`; {c["segment/twins"]} photos
  come as two images (`_scaled_0`, `_scaled_1`: overlapping left and right crops of one
  shot), and the vendor split puts the two halves of {c["segment/twins_split"]} of them on different sides.
  Photos sorted by that key; {SEGMENT_TWIN_PHOTOS} evenly spaced picks among the two-image photos
  (both images kept) and {SEGMENT_SINGLE_PHOTOS} among the one-image photos. The vendor split is
  dropped: the split stage makes its own, and keeps both halves of a photo on one side with
  `split.groups: {{rule: regex, pattern: '{TWIN_PATTERN}'}}`
  ({report.twin_photos} photos in the demo have two images).
- Annotations per class: {per_class}.
- Transformations: downscaled with Lanczos so the longer side is {SEGMENT_LONG_SIDE} px, saved as
  baseline JPEG quality {quality} with `optimize=True`, no EXIF/ICC; file names kept. The
  COCO file keeps the export's `info`, `licenses` and `categories` (including Roboflow's
  unused placeholder category 0 `facade`, which ingest skips), renumbers image and
  annotation ids, and scales every polygon vertex, `bbox` and `area` by the image's factor
  (coordinates rounded to 3 decimals, clipped to the image).

## Source files skipped

{skipped}
"""
    (out / "README.md").write_text(text)


def main() -> None:
    """Parse arguments, rebuild ``classify/``, ``detect/`` and ``segment/``, write README and sources.csv."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--shared",
        type=Path,
        default=REPO_ROOT / "../shared/datasets",
        help="folder holding hymenoptera/, raccoon_voc/ and facade_seg/ (default: ../shared/datasets)",
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "data/demo", help="output folder (data/demo)")
    parser.add_argument("--quality", type=int, default=JPEG_QUALITY, help="JPEG quality")
    args = parser.parse_args()
    shared: Path = args.shared.resolve()
    out: Path = args.out.resolve()

    for sub in ("classify", "detect", "segment"):  # this script owns these folders: start clean
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    out.mkdir(parents=True, exist_ok=True)

    report = Report()
    make_classify(shared / "hymenoptera", out, args.quality, report)
    make_detect(shared / "raccoon_voc", out, args.quality, report)
    make_segment(shared / "facade_seg", out, args.quality, report)
    verify(out)
    verify_segment(out)

    with (out / "sources.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(report.rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(report.rows)
    write_readme(out, report, args.quality)

    for sub in ("classify/ants", "classify/bees", "detect/JPEGImages", "detect/Annotations", "segment"):
        print(f"{sub}: {sum(1 for _ in (out / sub).iterdir())} files")
    print(f"boxes: {report.n_boxes}; polygons: {report.n_shapes}; total: {dir_bytes(out) / 1e6:.2f} MB")
    print(f"segment: {dir_bytes(out / 'segment') / 1e6:.2f} MB; annotations per class: {report.seg_classes}")
    for src, why in report.skipped:
        print(f"skipped {src}: {why}")


if __name__ == "__main__":
    main()
