"""Stage validate: full decodes, size rules, the report, and the content-addressed decode cache."""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import stages.ingest
import stages.validate
from stages.core.contracts import MANIFEST_COLUMNS, QUARANTINE_COLUMNS, read_parquet
from stages.core.layout import Layout
from stages.core.params import Params
from stages.dataprep import integrity
from tests.conftest import fast_params, guard_sources, make_classify_source, write_image


@pytest.fixture(autouse=True)
def _source_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    guard_sources(monkeypatch)


def _truncated_jpeg(path: Path, seed: int, size: tuple[int, int] = (64, 64)) -> Path:
    write_image(path, seed=seed, size=size)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _pipeline(tmp_path: Path, source: Path, **sections) -> tuple[Params, stages.validate.ValidateResult]:
    params = fast_params(tmp_path, source, **sections)
    stages.ingest.run(params)
    return params, stages.validate.run(params)


def _reasons(result: stages.validate.ValidateResult) -> dict[str, str]:
    return dict(zip(result.quarantine["path"], result.quarantine["reason"], strict=True))


def _count_inspections(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = stages.dataprep.integrity.inspect_image

    def counting(path: Path, max_pixels: int, *formats) -> stages.dataprep.integrity.IntegrityFacts:
        calls.append(Path(path))
        return real(path, max_pixels, *formats)

    monkeypatch.setattr(integrity, "inspect_image", counting)
    return calls


def test_truncated_jpeg_passes_ingest_but_is_corrupt_at_validate(tmp_path: Path) -> None:
    source = make_classify_source(tmp_path / "source", per_class=3)
    _truncated_jpeg(source / "cat" / "half.jpg", seed=7)

    params, result = _pipeline(tmp_path, source)
    ingested = read_parquet(Layout(params.paths).ingest_manifest)
    assert "cat/half.jpg" in set(ingested["path"])  # the header alone looked fine
    assert _reasons(result) == {"cat/half.jpg": "corrupt"}
    assert result.quarantine["stage"].tolist() == ["validate"]
    assert "half.jpg" in result.quarantine["detail"].iloc[0]
    assert "cat/half.jpg" not in set(result.manifest["path"])
    assert len(result.manifest) == 6


def test_oversized_image_is_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = make_classify_source(tmp_path / "source", per_class=3, size=(20, 20))
    write_image(source / "dog" / "huge.png", seed=8, size=(100, 100))

    decoded: list[str] = []
    real_load = integrity.load_rgb

    def recording_load(path: Path, *formats):
        decoded.append(Path(path).name)
        return real_load(path, *formats)

    monkeypatch.setattr(integrity, "load_rgb", recording_load)
    _, result = _pipeline(tmp_path, source, validate={"max_pixels": 1000})

    assert _reasons(result) == {"dog/huge.png": "too_many_pixels"}
    assert "huge.png" not in decoded
    assert len(decoded) == 6  # the small images were still fully decoded
    detail = result.quarantine["detail"].iloc[0]
    assert "10,000" in detail and "1,000" in detail
    assert len(result.manifest) == 6


def test_image_at_the_pixel_limit_is_decoded(tmp_path: Path) -> None:
    source = make_classify_source(tmp_path / "source", per_class=2, size=(20, 20))
    write_image(source / "dog" / "edge.png", seed=9, size=(25, 40))  # exactly 1000 pixels
    _, result = _pipeline(tmp_path, source, validate={"max_pixels": 1000})
    assert result.quarantine.empty
    assert "dog/edge.png" in set(result.manifest["path"])


def test_images_below_min_side_are_too_small(tmp_path: Path) -> None:
    source = make_classify_source(tmp_path / "source", per_class=2)
    write_image(source / "cat" / "narrow.png", seed=10, size=(15, 40))
    write_image(source / "cat" / "short.png", seed=11, size=(40, 15))
    write_image(source / "dog" / "just_enough.png", seed=12, size=(16, 40))

    _, result = _pipeline(tmp_path, source, validate={"min_side": 16})
    assert _reasons(result) == {"cat/narrow.png": "too_small", "cat/short.png": "too_small"}
    assert "dog/just_enough.png" in set(result.manifest["path"])
    assert result.quarantine["detail"].str.contains("validate.min_side = 16").all()


def _save_mode(path: Path, mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        ramp = np.linspace(0, 65535, 32 * 24).reshape(24, 32).astype(np.uint16)
        Image.fromarray(ramp).save(path)
    elif mode == "GIF":
        frames = [Image.new("RGB", (32, 24), (250, 0, 0)), Image.new("RGB", (32, 24), (0, 0, 250))]
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    elif mode == "EXIF6":
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.new("RGB", (32, 24), (0, 120, 0)).save(path, exif=exif)
    else:
        write_image(path, seed=len(mode), size=(32, 24), mode=mode)


def test_unusual_colour_modes_all_pass(tmp_path: Path) -> None:
    source = make_classify_source(tmp_path / "source", per_class=2)
    odd = {
        "cat/cmyk.jpg": "CMYK",
        "cat/gray.png": "L",
        "cat/deep.png": "I;16",
        "dog/palette.png": "P",
        "dog/alpha.png": "RGBA",
        "dog/anim.gif": "GIF",
        "dog/rotated.jpg": "EXIF6",
    }
    for rel, mode in odd.items():
        _save_mode(source / rel, mode)

    _, result = _pipeline(tmp_path, source)
    assert result.quarantine.empty, result.quarantine.to_dict("records")
    assert set(odd) <= set(result.manifest["path"])
    assert len(result.manifest) == 4 + len(odd)
    assert result.report["quarantined"] == {}


def test_outputs_and_report_count_reasons_and_warn_about_thin_classes(tmp_path: Path) -> None:
    source = make_classify_source(
        tmp_path / "source", per_class=6, classes={"cat": (120, 0, 0), "dog": (0, 0, 120)}
    )
    for i in range(3):  # dog keeps 3 of 6 valid images
        (source / "dog" / f"img_{i:03d}.png").unlink()
    _truncated_jpeg(source / "dog" / "broken_a.jpg", seed=20)
    _truncated_jpeg(source / "dog" / "broken_b.jpg", seed=21)
    write_image(source / "dog" / "tiny.png", seed=22, size=(8, 8))
    _truncated_jpeg(source / "owl" / "only.jpg", seed=23)  # a class with nothing valid

    params, result = _pipeline(tmp_path, source, validate={"min_images_per_class": 5})
    report = result.report
    assert report["images_in"] == 13
    assert report["images_valid"] == 9
    assert report["quarantined"] == {"corrupt": 3, "too_small": 1}
    assert report["class_counts"] == {"cat": 6, "dog": 3, "owl": 0}
    warned = " ".join(report["warnings"])
    assert len(report["warnings"]) == 2
    assert "'dog'" in warned and "'owl'" in warned and "'cat'" not in warned

    layout = Layout(params.paths)
    assert json.loads(layout.validation_report.read_text(encoding="utf-8")) == report
    written = read_parquet(layout.manifest)
    assert list(written.columns) == MANIFEST_COLUMNS
    pd.testing.assert_frame_equal(written, result.manifest, check_dtype=False)
    quarantine = read_parquet(layout.validate_quarantine)
    assert list(quarantine.columns) == QUARANTINE_COLUMNS
    assert len(quarantine) == 4 and (quarantine["stage"] == "validate").all()


def test_second_run_decodes_nothing_and_gives_the_same_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_classify_source(tmp_path / "source", per_class=3)
    _truncated_jpeg(source / "cat" / "half.jpg", seed=30)
    params, first = _pipeline(tmp_path, source)

    calls = _count_inspections(monkeypatch)
    again = stages.validate.run(params)
    assert calls == []
    pd.testing.assert_frame_equal(again.manifest, first.manifest)
    pd.testing.assert_frame_equal(again.quarantine, first.quarantine)
    assert again.report == first.report


def test_policy_params_reuse_the_cache_but_max_pixels_invalidates_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_classify_source(tmp_path / "source", per_class=3, size=(30, 20))
    write_image(source / "dog" / "big.png", seed=31, size=(40, 40))
    _pipeline(tmp_path, source, validate={"max_pixels": 10_000})
    calls = _count_inspections(monkeypatch)

    # min_side is policy applied to cached facts: no decoding, yet the outcome follows it.
    # (One class survives, so the enough_classes gate is moved to warn for this test.)
    stricter = stages.validate.run(
        fast_params(
            tmp_path, source, validate={"max_pixels": 10_000, "min_side": 25, "warn": ["enough_classes"]}
        )
    )
    assert calls == []
    assert set(_reasons(stricter).values()) == {"too_small"}
    assert set(stricter.manifest["path"]) == {"dog/big.png"}

    # max_pixels changes what decoding finds, so it is part of the cache key.
    lower = stages.validate.run(fast_params(tmp_path, source, validate={"max_pixels": 1000}))
    assert len(calls) == 7
    assert _reasons(lower) == {"dog/big.png": "too_many_pixels"}


def test_damaged_cache_entry_is_recomputed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = make_classify_source(tmp_path / "source", per_class=3)
    params, first = _pipeline(tmp_path, source)
    entries = sorted(Layout(params.paths).integrity_cache.rglob("*.json"))
    assert len(entries) == 6
    entries[0].write_text("{not json", encoding="utf-8")
    entries[1].write_text(json.dumps({"ok": True}), encoding="utf-8")

    calls = _count_inspections(monkeypatch)
    again = stages.validate.run(params)
    assert len(calls) == 2
    pd.testing.assert_frame_equal(again.manifest, first.manifest)


def test_parallel_decoding_matches_serial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = make_classify_source(tmp_path / "source", per_class=10)
    _truncated_jpeg(source / "cat" / "half.jpg", seed=40)
    write_image(source / "dog" / "tiny.png", seed=41, size=(8, 8))
    Image.new("CMYK", (30, 30), (0, 200, 200, 0)).save(source / "dog" / "cmyk.jpg")

    pools: list[int] = []

    class RecordingPool(ProcessPoolExecutor):
        def __init__(self, *args, **kwargs) -> None:
            pools.append(kwargs.get("max_workers", args[0] if args else None))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(integrity, "ProcessPoolExecutor", RecordingPool)
    _, serial = _pipeline(tmp_path / "serial", source, validate={"workers": 1})
    assert pools == []
    _, parallel = _pipeline(tmp_path / "parallel", source, validate={"workers": 2})
    assert pools == [2]

    pd.testing.assert_frame_equal(parallel.manifest, serial.manifest)
    pd.testing.assert_frame_equal(parallel.quarantine, serial.quarantine)
    assert parallel.report == serial.report
    assert _reasons(parallel) == {"cat/half.jpg": "corrupt", "dog/tiny.png": "too_small"}
    assert len(parallel.manifest) == 21
