"""Hostile or broken input ends in a quarantine row or one sentence, never a traceback (issue 17).

Each test here crashed a stage, or let something through, before the fix it names.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import yaml
from PIL import Image

import stages.ingest
import stages.split
import stages.validate
from stages.core.errors import DataError, ParamsError, UserError
from stages.core.params import IngestSection, Params, parse_params
from stages.dataprep import imaging, integrity
from stages.dataprep.integrity import IntegrityFacts
from tests.conftest import (
    detect_params,
    fast_params,
    guard_sources,
    make_classify_source,
    voc_xml,
    write_coco,
    write_image,
    write_voc,
    write_yolo,
)

LONG = "x" * 300 + ".png"  # one name over the 255-byte limit of every common file system


@pytest.fixture(autouse=True)
def _source_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    guard_sources(monkeypatch)


def _one_sentence(message: str) -> None:
    assert "\n" not in message and "Traceback" not in message
    assert message.rstrip().endswith("."), message


def _quarantine(result) -> dict[str, tuple[str, str]]:
    return {r.path: (r.reason, r.detail) for r in result.quarantine.itertuples()}


# --- images are opened by allowed format only ---------------------------------------------------


def _fits(path: Path) -> Path:
    cards = [
        "SIMPLE  =                    T",
        "BITPIX  =                    8",
        "NAXIS   =                    2",
    ]
    cards += ["NAXIS1  =                   48", "NAXIS2  =                   40", "END"]
    header = "".join(card.ljust(80) for card in cards).ljust(2880).encode("ascii")
    path.write_bytes(header + bytes(48 * 40).ljust(2880, b"\0"))
    return path


def _foreign(path: Path, fmt: str) -> Path:
    """A real image of Pillow format ``fmt`` under a name with an allowed extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "FITS":
        return _fits(path)
    Image.new("RGB", (48, 40), (200, 30, 30)).save(path, format=fmt)
    return path


@pytest.mark.parametrize("fmt", ["EPS", "SGI", "FITS", "PCX"])
def test_an_image_of_a_format_outside_the_list_is_quarantined_unopened(
    tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_classify_source(tmp_path / "source", per_class=2)
    _foreign(source / "cat" / "foreign.jpg", fmt)
    write_image(source / "dog" / "png_named.jpg", seed=5, fmt="PNG")  # a PNG named .jpg stays usable
    # The refused format's parser must never run: make every non-allowed plugin explode if it did.
    Image.init()
    for name, (_, accept) in list(Image.OPEN.items()):
        if name not in imaging.allowed_formats():

            def boom(*args, _name=name, **kwargs):
                raise AssertionError(f"the {_name} plugin was run")

            monkeypatch.setitem(Image.OPEN, name, (boom, accept))
    result = stages.ingest.run(fast_params(tmp_path, source))
    reason, detail = _quarantine(result)["cat/foreign.jpg"]
    assert reason == "format_not_allowed"
    assert fmt in detail and "ingest.image_extensions" in detail
    assert "dog/png_named.jpg" in set(result.manifest["path"])


def test_validate_decodes_only_the_allowed_formats(tmp_path: Path) -> None:
    source = make_classify_source(tmp_path / "source", per_class=2)
    params = fast_params(tmp_path, source)
    stages.ingest.run(params)
    # The file is swapped for an SGI image after ingest: validate must refuse it without decoding.
    target = source / "cat" / "img_000.png"
    _foreign(target, "SGI")
    result = stages.validate.run(params)
    assert _quarantine(result)["cat/img_000.png"][0] == "format_not_allowed"


def test_the_allowed_formats_follow_ingest_image_extensions(tmp_path: Path) -> None:
    png = write_image(tmp_path / "png_named.jpg", seed=5, fmt="PNG")
    assert imaging.read_header(png, imaging.allowed_formats([".jpg", ".png"])).format == "PNG"
    with pytest.raises(imaging.ImageReadError) as caught:
        imaging.read_header(png, imaging.allowed_formats([".jpg"]))
    assert caught.value.reason == "format_not_allowed" and "PNG" in caught.value.detail
    assert imaging.allowed_formats([".JPG", ".tiff", ".tif"]) == ("JPEG", "TIFF")
    assert IngestSection().image_extensions == imaging.DEFAULT_IMAGE_EXTENSIONS  # callers without params


# --- names over 255 bytes -------------------------------------------------------------------------


def test_coco_file_name_over_255_bytes_is_quarantined(tmp_path: Path) -> None:
    source = tmp_path / "source"
    doc = write_coco(source)
    doc["images"][0]["file_name"] = LONG
    (source / "annotations.json").write_text(json.dumps(doc), encoding="utf-8")
    result = stages.ingest.run(detect_params(tmp_path, source))
    reason, detail = _quarantine(result)[LONG]
    assert reason == "name_too_long" and "255 bytes" in detail
    assert len(result.manifest) == 3


def test_voc_filename_over_255_bytes_is_quarantined(tmp_path: Path) -> None:
    source = write_voc(tmp_path / "source")
    (source / "Annotations" / "long.xml").write_text(voc_xml(LONG, (64, 48), []), encoding="utf-8")
    (source / "Annotations" / "stem.xml").write_text(voc_xml("y" * 300, (64, 48), []), encoding="utf-8")
    result = stages.ingest.run(detect_params(tmp_path, source))
    rows = _quarantine(result)
    assert rows["Annotations/long.xml"][0] == "name_too_long"
    assert rows["Annotations/stem.xml"][0] == "name_too_long"
    assert len(result.manifest) == 4


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".txt"])
def test_data_annotations_over_255_bytes_is_one_sentence(tmp_path: Path, suffix: str) -> None:
    source = tmp_path / "source"
    write_coco(source)
    params = detect_params(tmp_path, source, data={"annotations": "a" * 300 + suffix, "format": "coco"})
    with pytest.raises(DataError, match="255 bytes") as caught:
        stages.ingest.run(params)
    _one_sentence(str(caught.value))


# --- malformed annotation files --------------------------------------------------------------------


def test_voc_xml_with_an_unknown_encoding_quarantines_that_file_only(tmp_path: Path) -> None:
    source = write_voc(tmp_path / "source")
    xml = source / "Annotations" / "a.xml"
    xml.write_text(
        '<?xml version="1.0" encoding="bogus"?>' + xml.read_text(encoding="utf-8"), encoding="utf-8"
    )
    result = stages.ingest.run(detect_params(tmp_path, source))
    reason, detail = _quarantine(result)["Annotations/a.xml"]
    assert reason == "annotation_unreadable" and "bogus" in detail
    assert len(result.manifest) == 3


def test_deeply_nested_coco_json_is_one_sentence(tmp_path: Path) -> None:
    source = tmp_path / "source"
    write_coco(source)
    depth = 100_000
    (source / "annotations.json").write_text(
        '{"images": [], "categories": [], "annotations": ' + "[" * depth + "]" * depth + "}", encoding="utf-8"
    )
    with pytest.raises(DataError, match="nested too deeply") as caught:
        stages.ingest.run(detect_params(tmp_path, source))
    _one_sentence(str(caught.value))


@pytest.mark.parametrize("fmt", ["coco", "voc", "folder"])
def test_a_source_spelt_with_an_inner_dotdot_imports(tmp_path: Path, fmt: str) -> None:
    real = tmp_path / "data" / "source"
    if fmt == "coco":
        write_coco(real)
    elif fmt == "voc":
        write_voc(real)
    else:
        make_classify_source(real, per_class=2)
    (tmp_path / "elsewhere").mkdir()
    spelt = tmp_path / "elsewhere" / ".." / "data" / "source"
    task = {"data": {"task": "classify" if fmt == "folder" else "detect"}}
    result = stages.ingest.run(fast_params(tmp_path, spelt, **task))
    assert len(result.manifest) == 4
    assert not any(".." in p for p in result.manifest["path"])


def test_an_annotation_path_that_leaves_and_reenters_the_source_is_spelt_from_the_root(
    tmp_path: Path,
) -> None:
    source = tmp_path / "source"
    doc = write_coco(source)
    doc["images"][0]["file_name"] = "../source/images/a.png"
    (source / "annotations.json").write_text(json.dumps(doc), encoding="utf-8")
    result = stages.ingest.run(detect_params(tmp_path, source))
    assert "images/a.png" in set(result.manifest["path"])


@pytest.mark.parametrize("names_file", ["data.yaml", "classes.txt"])
def test_yolo_names_file_that_is_not_utf8_is_one_sentence(tmp_path: Path, names_file: str) -> None:
    source = write_yolo(tmp_path / "source", names_file=names_file)
    (source / names_file).write_bytes(
        b"names: [caf\xe9, dog]\n" if names_file == "data.yaml" else b"caf\xe9\ndog\n"
    )
    with pytest.raises(DataError, match="not UTF-8") as caught:
        stages.ingest.run(detect_params(tmp_path, source))
    assert names_file in str(caught.value)
    _one_sentence(str(caught.value))


@pytest.mark.parametrize(
    "names",
    [
        {"0": "bird", "1": "cat", "01": "dog"},
        {"0": "bird", "2": "cat"},
        {0: "bird", "x": "cat"},
        {-1: "a", 0: "b"},
    ],
)
def test_yolo_names_whose_keys_are_not_distinct_indices_is_one_sentence(tmp_path: Path, names: dict) -> None:
    source = write_yolo(tmp_path / "source")
    (source / "data.yaml").write_text(yaml.safe_dump({"names": names}), encoding="utf-8")
    with pytest.raises(DataError, match="'names'") as caught:
        stages.ingest.run(detect_params(tmp_path, source))
    _one_sentence(str(caught.value))


@pytest.mark.parametrize("names", [{"1": "cat", "0": "bird"}, {"0": "bird", "01": "cat"}])
def test_yolo_names_with_string_indices_import_as_ultralytics_reads_them(tmp_path: Path, names: dict) -> None:
    source = write_yolo(tmp_path / "source")
    (source / "data.yaml").write_text(yaml.safe_dump({"names": names}), encoding="utf-8")
    assert stages.ingest.run(detect_params(tmp_path, source)).classes == [
        "bird",
        "cat",
    ]  # int(key), as ultralytics


# --- group and predefined-split CSVs ---------------------------------------------------------------

BAD_CSVS = {
    "empty": b"",
    "ragged": b'path,group\n"cat/img_000.png,a\nx,y,z,w\n',
    "binary": b"path,group\n\xff\xfe\x00bad\n",
    "nul": b"path,group\ncat/img_000.png,a\x00\x00,\n" + b"\x00" * 10,
}


@pytest.fixture(scope="module")
def validated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A classify source taken through ingest and validate once for the CSV tests."""
    tmp = tmp_path_factory.mktemp("csv")
    source = make_classify_source(tmp / "source", per_class=4)
    params = fast_params(tmp, source)
    stages.ingest.run(params)
    stages.validate.run(params)
    return tmp, source


@pytest.mark.parametrize("kind", sorted(BAD_CSVS))
@pytest.mark.parametrize("which", ["groups", "predefined"])
def test_malformed_group_or_split_csv_is_one_sentence(
    validated: tuple[Path, Path], tmp_path: Path, kind: str, which: str
) -> None:
    tmp, source = validated
    csv = tmp_path / f"{kind}.csv"
    csv.write_bytes(BAD_CSVS[kind])
    section = (
        {"groups": {"rule": "csv", "file": str(csv)}} if which == "groups" else {"predefined_file": str(csv)}
    )
    params = fast_params(tmp, source, split=section)
    with pytest.raises(UserError) as caught:
        stages.split.run(params)
    assert csv.name in str(caught.value)
    _one_sentence(str(caught.value))


# --- validate survives one file that exhausts memory ---------------------------------------------


def test_memory_error_on_one_image_quarantines_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = make_classify_source(tmp_path / "source", per_class=3)
    params = fast_params(tmp_path, source)
    stages.ingest.run(params)
    real = imaging.load_rgb

    def exhausting(path: Path, *args):
        if path.name == "img_001.png" and path.parent.name == "cat":
            raise MemoryError
        return real(path, *args)

    monkeypatch.setattr(integrity, "load_rgb", exhausting)
    result = stages.validate.run(params)
    assert _quarantine(result)["cat/img_001.png"][0] == "out_of_memory"
    assert len(result.manifest) == 5


def _killed_on_one_file(path: Path, max_pixels: int, formats=None) -> IntegrityFacts:
    """Stands in for the decoder in a worker: the OOM killer takes the process on one file."""
    if path.name == "img_007.png" and path.parent.name == "dog":
        os.kill(os.getpid(), signal.SIGKILL)
    return REAL_INSPECT(path, max_pixels, formats)


REAL_INSPECT = integrity.inspect_image


def test_a_worker_killed_on_one_image_quarantines_it_and_the_rest_are_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_classify_source(tmp_path / "source", per_class=10)
    params = fast_params(tmp_path, source, validate={"workers": 2})
    stages.ingest.run(params)
    monkeypatch.setattr(integrity, "inspect_image", _killed_on_one_file)
    result = stages.validate.run(params)
    reason, detail = _quarantine(result)["dog/img_007.png"]
    assert reason == "decoder_crashed" and "img_007.png" in detail
    assert len(result.manifest) == 19


# --- an EXIF rotation the header read does not see ----------------------------------------------


def _png_with_late_exif(path: Path, size: tuple[int, int], orientation: int = 6) -> Path:
    """A PNG whose eXIf chunk (orientation 6: 90 degrees) follows the image data."""
    import struct
    import zlib

    write_image(path, seed=3, size=size)
    data = path.read_bytes()
    exif = Image.Exif()
    exif[0x0112] = orientation
    payload = exif.tobytes()
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload
    chunk += struct.pack(">I", zlib.crc32(b"eXIf" + payload) & 0xFFFFFFFF)
    end = data.rindex(b"IEND") - 4
    path.write_bytes(data[:end] + chunk + data[end:])
    return path


def test_png_with_exif_after_the_pixels_is_quarantined_when_it_has_boxes(tmp_path: Path) -> None:
    source = tmp_path / "source"
    write_coco(source)
    _png_with_late_exif(source / "images" / "a.png", (64, 48))
    with Image.open(source / "images" / "a.png") as check:
        assert check.size == (64, 48)  # the header: unrotated
    params = detect_params(tmp_path, source)
    stages.ingest.run(params)
    result = stages.validate.run(params)
    reason, detail = _quarantine(result)["images/a.png"]
    assert reason == "size_mismatch" and "48x64" in detail
    assert result.boxes is not None and "images/a.png" not in set(result.manifest["path"])


def test_png_with_exif_after_the_pixels_gets_its_size_fixed_without_boxes(tmp_path: Path) -> None:
    source = make_classify_source(tmp_path / "source", per_class=3)
    _png_with_late_exif(source / "cat" / "img_000.png", (48, 40))
    params = fast_params(tmp_path, source)
    stages.ingest.run(params)
    result = stages.validate.run(params)
    row = result.manifest.set_index("path").loc["cat/img_000.png"]
    assert (row["width"], row["height"]) == (40, 48)  # what every stage will decode


# --- links out of the source ----------------------------------------------------------------------


def test_a_class_folder_linked_to_the_filesystem_root_is_not_walked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_classify_source(tmp_path / "source", per_class=2)
    (source / "everything").symlink_to("/")
    walked: list[Path] = []
    real = Path.rglob

    def spying(self: Path, pattern: str):
        walked.append(self)
        return real(self, pattern)

    monkeypatch.setattr(Path, "rglob", spying)
    result = stages.ingest.run(fast_params(tmp_path, source))
    assert source / "everything" not in walked
    assert _quarantine(result)["everything"][0] == "outside_source"
    assert len(result.manifest) == 4


@pytest.mark.parametrize("folder", ["images", "labels"])
def test_a_yolo_folder_linked_out_of_the_source_is_one_sentence(tmp_path: Path, folder: str) -> None:
    source = write_yolo(tmp_path / "source")
    outside = tmp_path / "outside"
    (source / folder).rename(outside)
    (source / folder).symlink_to(outside)
    with pytest.raises(DataError, match="outside the source") as caught:
        stages.ingest.run(detect_params(tmp_path, source, data={"format": "yolo"}))
    _one_sentence(str(caught.value))


# --- outputs inside the source --------------------------------------------------------------------


@pytest.mark.parametrize("key", ["interim", "reports", "cache", "models"])
def test_an_output_folder_inside_data_source_is_refused_at_load(tmp_path: Path, key: str) -> None:
    source = make_classify_source(tmp_path / "source", per_class=1)
    raw = {"data": {"source": str(source)}, "paths": {key: str(source / "out")}}
    with pytest.raises(ParamsError, match=f"paths.{key}") as caught:
        parse_params(raw)
    _one_sentence(str(caught.value))
    assert isinstance(
        parse_params({"data": {"source": str(source)}, "paths": {key: str(tmp_path / "o")}}), Params
    )
