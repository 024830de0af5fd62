"""The leakage contact sheet: the worst cross-split pairs side by side."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from stages.dataprep.imaging import ImageReadError, load_rgb

# --- contact sheet ---------------------------------------------------------------------------

_THUMB = 160
_TEXT_WIDTH = 520


def draw_contact_sheet(leakage: dict, source: Path, out: Path, limit: int) -> Path:
    """A PNG with the worst cross-split pairs side by side, or a one-line note when there are none."""
    pairs = leakage["pairs"][:limit]
    font = _font()
    row_height = _THUMB + 12
    width = 2 * (_THUMB + 8) + _TEXT_WIDTH
    height = len(pairs) * row_height + 36
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    counts = leakage["counts"]
    title = (
        f"{counts['exact_pairs']} identical and {counts['near_pairs']} near-duplicate pairs and "
        f"{counts['groups']} groups across splits" + (f"; the {len(pairs)} closest pairs:" if pairs else "")
    )
    draw.text((8, 8), title, fill="black", font=font)
    for row, pair in enumerate(pairs):
        top = 36 + row * row_height
        for column, path in enumerate((pair["a"], pair["b"])):
            sheet.paste(_thumbnail(source / path), (8 + column * (_THUMB + 8), top))
        distance = ", ".join(f"{k} {v}" for k, v in pair["distance"].items()) or "same bytes"
        lines = [
            f"{pair['kind']}: {distance}",
            f"{pair['split_a']}: {_shorten(pair['a'])}",
            f"{pair['split_b']}: {_shorten(pair['b'])}",
        ]
        draw.multiline_text(
            (2 * (_THUMB + 8) + 8, top + 8), "\n".join(lines), fill="black", font=font, spacing=6
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, format="PNG")
    return out


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=13)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _thumbnail(path: Path) -> Image.Image:
    try:
        image = load_rgb(path)
    except ImageReadError:
        return Image.new("RGB", (_THUMB, _THUMB), (200, 200, 200))
    return ImageOps.pad(image, (_THUMB, _THUMB), color=(255, 255, 255))


def _shorten(path: str, width: int = 64) -> str:
    return path if len(path) <= width else "..." + path[-(width - 3) :]
