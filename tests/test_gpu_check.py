"""bench/gpu_check.sh: its dry run passes every step on the CPU, a failure stops it naming the step,
and the pack for a GPU machine without network scales boxes with images and fits each transfer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest
from PIL import Image

from bench.gpu_check_pack import downscale_voc, size_mib, split_parts
from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "bench" / "gpu_check.sh"
STEPS = [
    "setup",
    "environment",
    "classify_linear_probe",
    "classify_full",
    "loop_throughput",
    "detector",
    "onnx_cuda",
]


def run_check(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args],
        env={
            **os.environ,
            "OUT": str(tmp_path / "out"),
            "GPU_CHECK_WORK": str(tmp_path / "work"),
            "GPU_CHECK_PYTHON": sys.executable,
            **env,
        },
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def results(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "out" / "gpu_check.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_dry_run_passes_every_step_on_the_cpu(tmp_path: Path) -> None:
    done = run_check(tmp_path, "--dry-run")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = results(tmp_path)
    assert (result["mode"], result["status"]) == ("dry-run", "ok")
    rows = {row["step"]: row for row in result["steps"]}
    assert list(rows) == STEPS
    export_exists = (REPO_ROOT / "stages" / "export.py").is_file()
    for name, row in rows.items():
        # the one allowed skip: no export stage yet, recorded as such
        expected = "skipped" if name == "onnx_cuda" and not export_exists else "ok"
        assert row["status"] == expected, row
        assert 0 <= row["seconds"] <= row["limit_s"], row
        assert row["key"], row
    assert 0.0 <= rows["classify_linear_probe"]["accuracy"] <= 1.0
    assert rows["classify_linear_probe"]["test_images"] > 0
    assert 0.0 <= rows["classify_full"]["accuracy"] <= 1.0
    assert rows["loop_throughput"]["device_images_per_s"] > 0
    assert rows["loop_throughput"]["cpu_images_per_s"] > 0
    detector = rows["detector"]
    assert detector["epochs"] == 1 and detector["epoch_seconds"][0] > 0
    assert detector["amp_check"] == "not run (CPU)"  # AMP is CUDA-only
    assert detector["new_model_files"] == []
    # one line per step on stdout, and the Markdown table has a row per step
    assert [line.split()[0] for line in done.stdout.splitlines()] == STEPS
    table = (tmp_path / "out" / "gpu_check.md").read_text(encoding="utf-8")
    for name in STEPS:
        assert f"| {name} | {rows[name]['status']} |" in table
    # the stages ran in the scratch copy, which now holds their outputs
    assert (tmp_path / "work" / "classify" / "models").is_dir()
    assert (tmp_path / "work" / "detect" / "reports" / "metrics.json").is_file()


def test_a_failing_step_stops_the_run_and_is_named(tmp_path: Path) -> None:
    """Without --dry-run on a CPU machine the environment step fails (no CUDA); on a GPU machine
    the datasets are missing. Either way the run stops there, exit 1, the step named."""
    done = run_check(tmp_path, GPU_CHECK_DATASETS=str(tmp_path / "no-datasets"))
    assert done.returncode == 1
    import torch

    failing = "classify_linear_probe" if torch.cuda.is_available() else "environment"
    assert f"gpu_check: FAIL at step {failing}:" in done.stderr
    result = results(tmp_path)
    assert result["status"] == f"FAIL at {failing}"
    assert result["steps"][-1]["step"] == failing and result["steps"][-1]["status"] == "FAIL"
    assert [row["step"] for row in result["steps"]] == STEPS[: STEPS.index(failing) + 1]
    assert f"| {failing} | FAIL |" in (tmp_path / "out" / "gpu_check.md").read_text(encoding="utf-8")


def test_a_setup_failure_writes_results_too(tmp_path: Path) -> None:
    done = run_check(tmp_path, "--dry-run", GPU_CHECK_FAIL="setup")
    assert done.returncode == 1
    assert "gpu_check: FAIL at step setup: forced by GPU_CHECK_FAIL" in done.stderr
    assert results(tmp_path)["steps"] == [
        {"step": "setup", "status": "FAIL", "limit_s": 120, "seconds": pytest.approx(0, abs=5),
         "error": "forced by GPU_CHECK_FAIL"}
    ]  # fmt: skip


def test_unknown_arguments_are_refused(tmp_path: Path) -> None:
    done = run_check(tmp_path, "--gpu")
    assert done.returncode == 2 and "unknown argument '--gpu'" in done.stderr


def test_voc_downscale_scales_boxes_with_the_image(tmp_path: Path) -> None:
    source = tmp_path / "voc"
    (source / "images").mkdir(parents=True)
    (source / "annotations").mkdir()
    (source / "LICENSE").write_text("MIT\n")
    Image.new("RGB", (1280, 960), "gray").save(source / "images" / "a.jpg")
    Image.new("RGB", (320, 200), "gray").save(source / "images" / "b.jpg")
    for name, (w, h), box in [("a", (1280, 960), (100, 201, 1280, 960)), ("b", (320, 200), (3, 4, 300, 190))]:
        (source / "annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.jpg</filename><size><width>{w}</width><height>{h}</height>"
            "<depth>3</depth></size><object><name>raccoon</name><bndbox>"
            + "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True))
            + "</bndbox></object></annotation>"
        )
    target = tmp_path / "out"
    downscale_voc(source, target, long_side=640)
    with Image.open(target / "images" / "a.jpg") as image:
        assert image.size == (640, 480)
    with Image.open(target / "images" / "b.jpg") as image:
        assert image.size == (320, 200)  # never upscaled
    assert voc_boxes(target / "annotations" / "a.xml") == ((640, 480), [(50, 100, 640, 480)])  # 100.5 -> 100
    assert voc_boxes(target / "annotations" / "b.xml") == ((320, 200), [(3, 4, 300, 190)])


def voc_boxes(path: Path) -> tuple[tuple[int, int], list[tuple[int, ...]]]:
    root = ElementTree.parse(path).getroot()
    size = (int(root.findtext("size/width") or 0), int(root.findtext("size/height") or 0))
    keys = ("xmin", "ymin", "xmax", "ymax")
    return size, [tuple(int(box.findtext(k) or -1) for k in keys) for box in root.iter("bndbox")]


def test_pack_parts_each_fit_one_transfer(tmp_path: Path) -> None:
    build = tmp_path / "build"
    for folder, name, mib in [
        ("weights", "best.pt", 3.0),
        ("datasets/x", "img.jpg", 2.0),
        ("wheels", "big-1-py3-none-any.whl", 6.0),
        ("wheels", "mid-1-py3-none-any.whl", 4.0),
        ("wheels", "small-1-py3-none-any.whl", 1.0),
    ]:
        (build / folder).mkdir(parents=True, exist_ok=True)
        (build / folder / name).write_bytes(b"\0" * int(mib * 2**20))
    parts = split_parts(build, tmp_path / "pack", capacity_mib=7.0)
    assert not build.exists()
    for part, used in parts.items():
        assert used <= 7.0 and size_mib(tmp_path / "pack" / part) == pytest.approx(used)
    assert (tmp_path / "pack" / "run" / "weights" / "best.pt").is_file()
    assert (tmp_path / "pack" / "run" / "datasets" / "x" / "img.jpg").is_file()
    wheels = sorted(p.name for p in (tmp_path / "pack").glob("*/wheels/*.whl"))
    assert len(wheels) == 3 and set(parts) == {"run", "install1", "install2"}
