"""``workers: auto`` sizes the process pools from the machine; the count never changes a result."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from stages.core import workers
from stages.core.hashing import sha256_file
from stages.core.params import IngestSection, NearDuplicateSection, ValidateSection, load_params
from stages.core.workers import resolve_workers, usable_cores
from stages.dataprep import integrity
from stages.dataprep.file_facts import read_files
from stages.dataprep.imaging import allowed_formats
from stages.dataprep.importing import read_file
from stages.dataprep.near_duplicates import compute_hashes
from tests.conftest import REPO_ROOT, write_image

SECTIONS = (IngestSection, ValidateSection, NearDuplicateSection)


def test_auto_is_the_cores_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert usable_cores() == 3
    assert resolve_workers("auto") == resolve_workers(None) == 3
    monkeypatch.delattr(workers.os, "sched_getaffinity", raising=False)  # macOS, Windows
    monkeypatch.setattr(workers.os, "cpu_count", lambda: 7)
    assert resolve_workers("auto") == 7


@pytest.mark.parametrize("section", SECTIONS)
def test_auto_is_the_default_and_a_number_overrides(section) -> None:
    assert section().workers == "auto"
    assert section(workers=None).workers == "auto"
    assert section(workers=3).workers == 3
    assert resolve_workers(section(workers=3).workers) == 3


@pytest.mark.parametrize("section", SECTIONS)
@pytest.mark.parametrize("bad", [0, -2, "many", 1.5])
def test_zero_negative_or_a_word_is_one_clear_sentence(section, bad) -> None:
    with pytest.raises(ValidationError, match=r"workers must be 'auto' \(one process per usable core\)"):
        section(workers=bad)


def test_params_yaml_ships_auto() -> None:
    params = load_params(REPO_ROOT / "params.yaml")
    assert params.ingest.workers == params.validate_.workers == params.split.near_duplicates.workers == "auto"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """More files than every pool's threshold (ingest 64, validate 16, hashes 32), one unreadable."""
    root = tmp_path_factory.mktemp("images")
    files = [write_image(root / f"img_{i:03d}.png", seed=i, size=(24, 20)) for i in range(70)]
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return [*files, root / "broken.png"]


def test_ingest_reads_the_same_facts_with_one_or_two_workers(images: list[Path]) -> None:
    formats = allowed_formats()
    one = list(read_files(read_file, images, formats, 1))
    two = list(read_files(read_file, images, formats, 2))
    assert one == two
    assert one[0].sha256 == sha256_file(images[0]) and one[-1].reason == "not_an_image"


def test_validate_and_split_hashes_are_the_same_with_one_or_two_workers(
    images: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shas = [sha256_file(f) for f in images]
    one = integrity.check_images(images, shas, ValidateSection(workers=1), tmp_path / "a")
    two = integrity.check_images(images, shas, ValidateSection(workers=2), tmp_path / "b")
    assert one == two and not one[-1].ok
    hashes_one = compute_hashes(images[:-1], shas[:-1], ("phash",), tmp_path / "h1", workers=1)
    hashes_two = compute_hashes(images[:-1], shas[:-1], ("phash",), tmp_path / "h2", workers="auto")
    assert (hashes_one["phash"] == hashes_two["phash"]).all()

    # The caches do not know the worker count: a rerun with another count decodes nothing.
    def no_decoding(*args: object) -> None:
        raise AssertionError("decoded again although only validate.workers changed")

    monkeypatch.setattr(integrity, "inspect_image", no_decoding)
    assert integrity.check_images(images, shas, ValidateSection(workers=1), tmp_path / "b") == two


def test_auto_starts_one_process_per_core(images: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Guard against the pool silently never running: ``auto`` on 3 cores starts 3 processes."""
    from concurrent.futures import ProcessPoolExecutor

    from stages.dataprep import file_facts

    made: list[int | None] = []

    class Recording(ProcessPoolExecutor):
        def __init__(self, max_workers: int | None = None) -> None:
            made.append(max_workers)
            super().__init__(max_workers=max_workers)

    monkeypatch.setattr(file_facts, "ProcessPoolExecutor", Recording)
    monkeypatch.setattr(workers, "usable_cores", lambda: 3)
    assert len(list(read_files(read_file, images, allowed_formats(), "auto"))) == len(images)
    list(read_files(read_file, images, allowed_formats(), 1))
    assert made == [3]
