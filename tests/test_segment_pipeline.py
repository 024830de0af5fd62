"""``data.task: segment`` end to end on the committed facade demo, through ``dvc repro``.

One throwaway project (a copy of the code, dvc.yaml, the demo and a params file switched to
segment) is reproduced once per module; the tests then read its outputs: the metrics and their
intervals, the report's overlays, the ONNX export's parity, and that ``pipelines.predict`` on the
exported model and on the checkpoint gives back the masks evaluate scored.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import REPO_ROOT, tree_digest
from tests.test_pipeline import _dvc, _ran_stages, _sh

pytestmark = pytest.mark.slow

DEMO = "data/demo/segment"
# The vendor's scaled twins (`<photo>_scaled_0_png_jpg.rf.<hash>.jpg`, `..._scaled_1_...`) are one
# photo: the group rule keeps them on one side (README "Semantic segmentation").
PHOTO_GROUP = r"(?P<group>[^/]+)_scaled_\d+_"


def segment_params() -> dict:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["data"] = {"source": DEMO, "format": "coco", "task": "segment", "annotations": None}
    params["validate"]["workers"] = 1
    params["split"]["near_duplicates"]["workers"] = 1
    params["split"]["groups"] = {"rule": "regex", "pattern": PHOTO_GROUP}
    params["augment"]["preview"] = {"images": 2, "views": 1}
    params["train"].update(
        {"strategy": "full", "epochs": 3, "batch_size": 8, "device": "cpu"}  # monitor auto: val_miou
    )
    params["train"]["segmenter"].update({"decoder": "unet", "image_size": 64})
    params["evaluate"]["bootstrap"] = 100
    params["report"]["mistakes"] = 4
    params["export"]["calibration_images"] = 4
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("segment_project")
    for name in ("stages", "pipelines"):
        shutil.copytree(REPO_ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(REPO_ROOT / DEMO, root / DEMO)
    shutil.copy(REPO_ROOT / "data" / "exclude.txt", root / "data" / "exclude.txt")
    (root / "params.yaml").write_text(yaml.safe_dump(segment_params(), sort_keys=False), encoding="utf-8")
    (root / ".gitignore").write_text("__pycache__/\n/data/cache/\n", encoding="utf-8")
    _sh(root, "git", "init", "-q")
    _dvc(root, "init", "-q")
    _sh(root, "git", "add", "-A")
    _sh(root, "git", "commit", "-qm", "segment project")
    before = tree_digest(root / DEMO)
    first = _dvc(root, "repro").stdout
    assert tree_digest(root / DEMO) == before, "the pipeline wrote into the demo source"
    return root, first


def test_repro_runs_every_stage_and_a_second_repro_does_nothing(project: tuple[Path, str]) -> None:
    root, first = project
    assert {"ingest", "validate", "split", "augment", "train", "evaluate", "export", "report"} <= _ran_stages(
        first
    )
    assert "up to date" in _dvc(root, "status").stdout
    assert (root / "models" / "segmenter.pt").is_file()


def test_metrics_have_intervals_and_the_split_keeps_twins_together(project: tuple[Path, str]) -> None:
    root, _ = project
    metrics = json.loads((root / "reports" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["task"] == "segment" and metrics["split"] == "test" and metrics["images"] > 0
    for name in ("miou", "pixel_accuracy", "dice_macro"):
        assert 0.0 <= metrics[f"{name}_ci_low"] <= metrics[name] <= metrics[f"{name}_ci_high"] <= 1.0, name
    leakage = json.loads((root / "reports" / "leakage.json").read_text(encoding="utf-8"))
    assert leakage["counts"]["name_twins"] == 0 and leakage["counts"]["groups"] == 0
    per_class = json.loads((root / "reports" / "plots" / "per_class.json").read_text(encoding="utf-8"))
    assert per_class[0]["class"] == "background" and {"iou", "dice"} <= set(per_class[0])


def test_the_report_shows_the_overlays_and_the_model_card_the_task(project: tuple[Path, str]) -> None:
    root, _ = project
    page = (root / "reports" / "report.html").read_text(encoding="utf-8")
    assert "mIoU" in page and "data:image/png;base64" in page
    overlays = list((root / "reports" / "figures").glob("*overlay*.png"))
    assert overlays, sorted(p.name for p in (root / "reports" / "figures").iterdir())
    card = (root / "reports" / "model_card.md").read_text(encoding="utf-8")
    assert "segment" in card


def test_export_parity_and_predict_agree(project: tuple[Path, str], tmp_path: Path) -> None:
    root, _ = project
    report = json.loads((root / "reports" / "export.json").read_text(encoding="utf-8"))
    assert report["passed"] and report["task"] == "segment"
    assert report["pixel_agreement"] >= 0.999
    assert abs(report["miou_onnx"] - report["miou_pytorch"]) <= 0.001
    image = next((root / DEMO).glob("*.jpg"))
    answers = {}
    for model in ("export/model.onnx", "models/segmenter.pt"):
        out = tmp_path / f"{Path(model).stem}.jsonl"
        done = subprocess.run(
            [sys.executable, "-m", "pipelines.predict", model, str(image), "--out", str(out)],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        (record,) = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        answers[model] = record
    onnx, torch_ = answers["export/model.onnx"], answers["models/segmenter.pt"]
    assert onnx["error"] is None and onnx["regions"], onnx
    assert sum(r["pixels"] for r in onnx["regions"]) == onnx["width"] * onnx["height"]
    onnx_pixels = {r["class"]: r["pixels"] for r in onnx["regions"]}
    torch_pixels = {r["class"]: r["pixels"] for r in torch_["regions"]}
    total = onnx["width"] * onnx["height"]
    differing = sum(abs(onnx_pixels.get(c, 0) - torch_pixels.get(c, 0)) for c in onnx_pixels | torch_pixels)
    assert differing / total <= 0.002, (onnx_pixels, torch_pixels)
    assert np.isclose(sum(r["fraction"] for r in onnx["regions"]), 1.0, atol=1e-4)
