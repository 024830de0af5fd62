"""Image I/O rules shared by every stage: EXIF orientation, conversion to RGB, clear read errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages.dataprep.imaging import ImageReadError, load_rgb, read_header
from tests.conftest import write_image

ORIENTATION = 0x0112


def _halves(width: int, height: int, left: tuple, right: tuple) -> Image.Image:
    """Left half one colour, right half another: big blocks survive JPEG compression."""
    pixels = np.zeros((height, width, 3), dtype="uint8")
    pixels[:, : width // 2] = left
    pixels[:, width // 2 :] = right
    return Image.fromarray(pixels, "RGB")


def _close(pixel: tuple, expected: tuple, tolerance: int = 40) -> bool:
    return all(abs(int(a) - int(b)) <= tolerance for a, b in zip(pixel, expected, strict=True))


def _save_16bit(path: Path, values: np.ndarray) -> Path:
    Image.fromarray(values.astype(np.uint16)).save(path)
    return path


def test_header_reports_display_size_after_exif_rotation(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # stored landscape, displayed rotated 90° clockwise
    path = tmp_path / "rotated.jpg"
    _halves(48, 32, (255, 0, 0), (0, 0, 255)).save(path, exif=exif)
    with Image.open(path) as raw:
        assert raw.size == (48, 32)  # the stored pixels really are landscape

    header = read_header(path)
    assert (header.width, header.height) == (32, 48)
    assert header.format == "JPEG" and header.frames == 1

    image = load_rgb(path)
    assert image.size == (header.width, header.height)
    # Rotating clockwise puts the stored left half (red) on top, the right half (blue) below.
    assert _close(image.getpixel((16, 4)), (255, 0, 0))
    assert _close(image.getpixel((16, 44)), (0, 0, 255))


def test_header_without_orientation_keeps_stored_size(tmp_path: Path) -> None:
    path = write_image(tmp_path / "plain.jpg", seed=1, size=(48, 32))
    header = read_header(path)
    assert (header.width, header.height) == (48, 32)
    assert header.mode == "RGB"


def test_cmyk_is_converted_to_rgb(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (24, 24), (0, 255, 255, 0)).save(path)  # pure red in print colours
    assert read_header(path).mode == "CMYK"
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (24, 24)
    assert _close(image.getpixel((12, 12)), (255, 0, 0))


def test_grayscale_is_converted_to_rgb(tmp_path: Path) -> None:
    path = tmp_path / "gray.png"
    Image.new("L", (24, 20), 77).save(path)
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (24, 20)
    assert image.getpixel((3, 3)) == (77, 77, 77)


def test_16bit_grayscale_is_scaled_to_8_bits_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 1000, 16384, 32768], [40000, 50000, 60000, 65535]])
    path = _save_16bit(tmp_path / "deep.png", np.repeat(np.repeat(values, 4, 0), 4, 1))
    assert read_header(path).mode.startswith("I")
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (16, 8)
    channel = np.asarray(image)[::4, ::4, 0].astype(int)
    expected = np.round(values / 65535 * 255)
    assert np.abs(channel - expected).max() <= 1  # clipping would give 255 for all but 0
    assert len(np.unique(channel)) == values.size  # distinct levels stay distinct
    assert (np.asarray(image)[..., 0] == np.asarray(image)[..., 2]).all()  # still gray


def test_dark_16bit_image_stays_dark(tmp_path: Path) -> None:
    path = _save_16bit(tmp_path / "dark.png", np.full((8, 8), 1000))
    image = load_rgb(path)
    assert np.asarray(image).max() <= round(1000 / 65535 * 255) + 1


def test_palette_image_is_converted_to_rgb(tmp_path: Path) -> None:
    image = Image.new("P", (20, 20), 1)
    image.putpalette([0, 0, 0, 12, 200, 99] + [0, 0, 0] * 254)
    image.putpixel((0, 0), 0)
    path = tmp_path / "palette.png"
    image.save(path)
    assert read_header(path).mode == "P"
    rgb = load_rgb(path)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((5, 5)) == (12, 200, 99)
    assert rgb.getpixel((0, 0)) == (0, 0, 0)


def test_transparent_palette_entry_is_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("P", (20, 20), 1)
    image.putpalette([0, 0, 0, 12, 200, 99] + [0, 0, 0] * 254)
    image.putpixel((0, 0), 0)
    path = tmp_path / "palette_alpha.png"
    image.save(path, transparency=0)  # index 0 (black) is transparent
    rgb = load_rgb(path)
    assert rgb.getpixel((0, 0)) == (255, 255, 255)
    assert rgb.getpixel((5, 5)) == (12, 200, 99)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_white(tmp_path: Path, mode: str) -> None:
    rgba = Image.new("RGBA", (20, 20), (10, 200, 30, 0))  # fully transparent
    rgba.putpixel((1, 1), (10, 200, 30, 255))  # opaque
    rgba.putpixel((2, 2), (0, 0, 0, 128))  # half-transparent black
    path = tmp_path / f"alpha_{mode}.png"
    rgba.convert(mode).save(path)
    image = load_rgb(path)
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)  # not the hidden colour, not black
    opaque = (10, 200, 30) if mode == "RGBA" else (rgba.convert("L").getpixel((1, 1)),) * 3
    assert image.getpixel((1, 1)) == opaque
    assert all(120 <= v <= 135 for v in image.getpixel((2, 2)))  # half black on white is gray


def test_png_with_a_jpg_name_is_read_by_content(tmp_path: Path) -> None:
    path = write_image(tmp_path / "actually_png.jpg", seed=3, size=(30, 20), fmt="PNG")
    header = read_header(path)
    assert header.format == "PNG" and (header.width, header.height) == (30, 20)
    with Image.open(path) as original:
        expected = np.asarray(original.convert("RGB"))
    assert np.array_equal(np.asarray(load_rgb(path)), expected)  # lossless: exact pixels


@pytest.mark.parametrize("reader", [read_header, load_rgb])
def test_text_file_named_jpg_is_not_an_image(tmp_path: Path, reader) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("these are not pixels\n", encoding="utf-8")
    with pytest.raises(ImageReadError) as caught:
        reader(path)
    assert caught.value.reason == "not_an_image"
    assert "notes.jpg" in caught.value.detail


def test_zero_byte_file_is_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError) as caught:
        read_header(path)
    assert caught.value.reason == "empty_file"
    assert "empty.jpg" in caught.value.detail


def test_truncated_jpeg_has_a_header_but_does_not_decode(tmp_path: Path) -> None:
    whole = write_image(tmp_path / "whole.jpg", seed=5, size=(64, 64))
    data = whole.read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    assert (read_header(path).width, read_header(path).height) == (64, 64)
    with pytest.raises(ImageReadError) as caught:
        load_rgb(path)
    assert caught.value.reason == "corrupt"
    assert "truncated.jpg" in caught.value.detail


def test_animated_gif_counts_frames_and_loads_the_first(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (20, 16), (255, 0, 0)), Image.new("RGB", (20, 16), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    header = read_header(path)
    assert header.frames == 2 and header.format == "GIF"
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (20, 16)
    assert image.getpixel((10, 8)) == (255, 0, 0)


def test_reading_does_not_modify_the_file(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    path = tmp_path / "rotated.jpg"
    _halves(32, 24, (0, 255, 0), (255, 255, 0)).save(path, exif=exif)
    before = path.read_bytes()
    read_header(path)
    load_rgb(path)
    assert path.read_bytes() == before


def test_png_header_is_read_without_decoding_the_pixels(tmp_path: Path) -> None:
    """Pillow's PNG ``getexif()`` decodes the whole file; the header read must not (ingest speed)."""
    whole = write_image(tmp_path / "whole.png", seed=6, size=(64, 48))
    data = whole.read_bytes()
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) // 2])
    header = read_header(path)  # would raise if it decoded the missing half
    assert (header.width, header.height, header.orientation) == (64, 48, 1)
    with pytest.raises(ImageReadError):
        load_rgb(path)


def test_png_with_an_exif_orientation_before_the_pixels_is_honoured(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = 8
    path = tmp_path / "rotated.png"
    _halves(48, 32, (255, 0, 0), (0, 0, 255)).save(path, exif=exif)
    header = read_header(path)
    assert (header.width, header.height, header.orientation) == (32, 48, 8)
    assert (header.stored_width, header.stored_height) == (48, 32)
    assert load_rgb(path).size == (32, 48)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_box_matches_exif_transpose_for_every_orientation(tmp_path: Path, orientation: int) -> None:
    from PIL import ImageOps

    from stages.dataprep.imaging import orient_box

    stored, box = (60, 40), (10, 5, 25, 30)
    pixels = np.zeros((stored[1], stored[0]), dtype="uint8")
    pixels[box[1] : box[3], box[0] : box[2]] = 255
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    path = tmp_path / "o.png"
    Image.fromarray(pixels).save(path, exif=exif)
    with Image.open(path) as image:
        shown = np.asarray(ImageOps.exif_transpose(image))
    ys, xs = np.nonzero(shown)
    assert orient_box(box, orientation, *stored) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_not_an_image_survives_ultralytics_patching_image_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ultralytics replaces ``PIL.Image.open`` with a wrapper that, on a file Pillow cannot
    identify, tries to install a HEIF plugin (an ImportError offline); it keeps the original."""
    import sys
    import types

    loaded = sys.modules.get("ultralytics.utils.patches")  # other tests may have imported it already
    original = getattr(loaded, "_image_open", None) or Image.open

    def patched(filename, *args, **kwargs):
        try:
            return original(filename, *args, **kwargs)
        except Image.UnidentifiedImageError:
            raise ModuleNotFoundError("No module named 'pi_heif'") from None

    fake = types.ModuleType("ultralytics.utils.patches")
    fake._image_open = original
    monkeypatch.setitem(sys.modules, "ultralytics.utils.patches", fake)
    monkeypatch.setattr(Image, "open", patched)
    path = tmp_path / "notes.jpg"
    path.write_text("these are not pixels\n", encoding="utf-8")
    for reader in (read_header, load_rgb):
        with pytest.raises(ImageReadError) as caught:
            reader(path)
        assert caught.value.reason == "not_an_image"
    assert read_header(write_image(tmp_path / "ok.png", seed=1)).format == "PNG"
