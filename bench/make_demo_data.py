"""Build the small demo datasets under ``data/demo/`` from the shared public sources.

Why this script exists: the repository ships a tiny classification set (ants vs bees) and a
tiny detection set (raccoons, Pascal VOC) so that the pipeline, its tests and its tutorials
run without downloading anything. Those files are derived data, so they must be
regenerable from the public sources they come from. This script is that recipe: it picks
the images deterministically (sorted paths, evenly spaced picks, no randomness), downscales
and re-encodes them, rescales the VOC boxes, and writes ``README.md`` (provenance, licences,
counts) and ``sources.csv`` (one row per output file with the sha256 of its source file).
Run it again with the same Pillow build and it writes the same bytes.

Usage (from the repository root)::

    uv run python bench/make_demo_data.py
    uv run python bench/make_demo_data.py --shared ../shared/datasets --out data/demo
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import re
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

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
JPEG_QUALITY = 85
PHOTO_SUFFIXES = {".jpg", ".jpeg"}
KNOWN_PLACEHOLDERS = {"imageNotFound.gif"}  # Flickr "image not found" page, not a photo

# Provenance, copied from the shared READMEs (shared/datasets/*/README.md).
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
        im = im.resize(size, Image.LANCZOS)
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
        ann = DET.parse(xml_path).getroot()
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


def verify(out: Path) -> None:
    """Re-open every output image and check every VOC box lies inside its image."""
    for path in sorted(out.rglob("*.jpg")):
        with Image.open(path) as im:
            im.load()
            if im.format != "JPEG" or im.mode != "RGB" or im.getexif():
                raise SystemExit(f"{path}: unexpected format/mode/EXIF")
    for xml_path in sorted((out / "detect" / "Annotations").glob("*.xml")):
        ann = DET.parse(xml_path).getroot()
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
    skipped = "\n".join(f"- `{src}`: {why}" for src, why in report.skipped) or "- none"
    text = f"""# Demo datasets

Small subsets of two public datasets, so that the pipeline, its tests and its tutorials can
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

## Source files skipped

{skipped}
"""
    (out / "README.md").write_text(text)


def main() -> None:
    """Parse arguments, rebuild ``classify/`` and ``detect/``, write README and sources.csv."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shared",
        type=Path,
        default=REPO_ROOT / "../shared/datasets",
        help="folder holding hymenoptera/ and raccoon_voc/ (default: ../shared/datasets)",
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "data/demo", help="output folder (data/demo)")
    parser.add_argument("--quality", type=int, default=JPEG_QUALITY, help="JPEG quality")
    args = parser.parse_args()
    shared: Path = args.shared.resolve()
    out: Path = args.out.resolve()

    for sub in ("classify", "detect"):  # this script owns these folders: start clean
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    out.mkdir(parents=True, exist_ok=True)

    report = Report()
    make_classify(shared / "hymenoptera", out, args.quality, report)
    make_detect(shared / "raccoon_voc", out, args.quality, report)
    verify(out)

    with (out / "sources.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(report.rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(report.rows)
    write_readme(out, report, args.quality)

    for sub in ("classify/ants", "classify/bees", "detect/JPEGImages", "detect/Annotations"):
        print(f"{sub}: {sum(1 for _ in (out / sub).iterdir())} files")
    print(f"boxes: {report.n_boxes}; total: {dir_bytes(out) / 1e6:.2f} MB")
    for src, why in report.skipped:
        print(f"skipped {src}: {why}")


if __name__ == "__main__":
    main()
