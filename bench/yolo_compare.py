"""Pipeline detector against bare ultralytics on the same exported split (``bench_yolo.py --compare``).

Per seed ``s`` (``base.seed = s``, so the split changes with the seed too; both arms share it):

- **pipeline**: ingest -> validate -> split -> augment -> train -> evaluate in a work dir, exactly as
  ``dvc repro`` runs them (ultralytics' built-in augmentations plus the saved default policy);
- **bare**: ``YOLO(<offline checkpoint file>).train(data=<yaml: our exported train / val folders>,
  epochs, imgsz, batch, seed=s, deterministic=True, plots=False)``: ultralytics' defaults otherwise,
  no policy, no trainer class of ours. ``workers`` and ``device`` match the pipeline's (0, cpu).

Each arm's best.pt is scored on our exported TEST images twice: ultralytics ``model.val`` (its
rectangular letterboxed batches, conf 0.001, NMS IoU 0.7, its own AP integration) and our evaluate
code (image by image, torchmetrics/pycocotools). Rows x columns = training x scoring, so a gap can
be put down to one or the other. Nothing downloads: the start weights are a file, ultralytics runs
under the pipeline's offline settings, and its logger integrations (DVCLive, MLflow, ...) are
switched off in memory so the bare run cannot touch the repository's ``dvc.yaml``.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from bench.common import SHARED_DATASETS, markdown_table
from stages.core.params import Params, parse_params

ARMS = ("pipeline", "bare")
SCORERS = ("ours", "ultralytics")
INTEGRATIONS = ("dvc", "mlflow", "clearml", "comet", "raytune", "tensorboard", "wandb")


def raccoon_params(paths: dict[str, str], epochs: int, imgsz: int, batch: int, **detector: Any) -> dict:
    """raccoon_voc on the CPU with a small detector budget: both YOLO benches start from this."""
    return {
        "data": {"source": str(SHARED_DATASETS / "raccoon_voc"), "format": "voc", "task": "detect",
                 "annotations": None},
        "paths": paths,
        "validate": {"workers": 2},
        "augment": {"preview": {"images": 2, "views": 1}},
        "train": {"device": "cpu", "num_workers": 0, "detector": {
            "epochs": epochs, "image_size": imgsz, "batch": batch, "ultralytics": {"plots": False},
            **detector}},
        "evaluate": {"bootstrap": 1000},
    }  # fmt: skip


def compare_params(work: Path, seed: int, epochs: int, imgsz: int, batch: int, outputs: Path) -> Params:
    """The pipeline's params for one seed; models and reports go under ``outputs`` (one per arm)."""
    paths = {k: str(work / k) for k in ("interim", "processed", "cache")}
    paths |= {k: str(outputs / k) for k in ("models", "reports")}
    raw = raccoon_params(paths, epochs, imgsz, batch, weights="offline")
    raw["base"] = {"seed": seed}
    raw["evaluate"]["split"] = "test"
    return parse_params(raw)


def data_yaml(export: Path, val_folder: str, target: Path) -> Path:
    """A data.yaml over our export: train = its train images, val = ``val_folder`` (val or test)."""
    exported = yaml.safe_load((export / "data.yaml").read_text(encoding="utf-8"))
    spec = {"path": str(export.resolve()), "train": "images/train", "val": val_folder,
            "names": exported["names"], "nc": exported["nc"]}  # fmt: skip
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return target


@contextmanager
def integrations_off() -> Iterator[None]:
    """ultralytics' logger integrations off in memory (its settings file says dvc: true)."""
    from ultralytics.utils import SETTINGS

    was = {k: SETTINGS.get(k) for k in INTEGRATIONS}
    for key in INTEGRATIONS:
        dict.__setitem__(SETTINGS, key, False)  # JSONDict.__setitem__ would rewrite the file
    try:
        yield
    finally:
        for key, value in was.items():
            dict.__setitem__(SETTINGS, key, value)


def in_training_val(results_csv: Path) -> dict[str, float]:
    """ultralytics' own val mAP (on our val split) at the epoch it kept as best.pt, and per epoch."""
    from stages.engine.yolo.trainer import best_row, read_results

    history = read_results(results_csv)
    epoch, _ = best_row(history)
    row = history[history["epoch"] == epoch].iloc[0]
    curve = [round(float(v), 3) for v in history["val/map50"]]
    return {"val_map50": float(row["val/map50"]), "val_map50_95": float(row["val/map50_95"]),
            "best_epoch": epoch, "val_map50_by_epoch": curve}  # fmt: skip


def bare_train(params: Params, export: Path, work: Path) -> tuple[float, Path]:
    """Plain ``YOLO(file).train(...)`` on our exported train/val folders; returns (wall, best.pt)."""
    from ultralytics import YOLO

    from stages.engine.yolo.trainer import offline_checkpoint, ultralytics_offline

    det = params.train.detector
    data = data_yaml(export, "images/val", work / "train.yaml")
    started = time.perf_counter()
    with ultralytics_offline(None), integrations_off():
        YOLO(str(offline_checkpoint())).train(
            data=str(data), epochs=det.epochs, imgsz=det.image_size, batch=det.batch,
            seed=params.base.seed, deterministic=True, plots=False, device="cpu", workers=0,
            project=str(work.resolve()), name="run", exist_ok=True, verbose=False,
        )  # fmt: skip
    return time.perf_counter() - started, work / "run" / "weights" / "best.pt"


def ultralytics_score(weights: Path, export: Path, imgsz: int, batch: int, work: Path) -> dict[str, float]:
    """``YOLO(weights).val`` on our exported test images with ultralytics' defaults (conf 0.001, iou 0.7)."""
    from ultralytics import YOLO

    from stages.engine.yolo.trainer import ultralytics_offline

    data = data_yaml(export, "images/test", work / "test.yaml")
    started = time.perf_counter()
    with ultralytics_offline(None), integrations_off():
        result = YOLO(str(weights)).val(
            data=str(data), imgsz=imgsz, batch=batch, device="cpu", workers=0, plots=False,
            project=str(work.resolve()), name="val", exist_ok=True, verbose=False,
        )  # fmt: skip
    box = result.box
    return {"map50": float(box.map50), "map50_95": float(box.map), "precision": float(box.mp),
            "recall": float(box.mr), "wall": time.perf_counter() - started}  # fmt: skip


def ours_score(params: Params) -> dict[str, float]:
    """Our evaluate stage on ``paths.models/detector.pt`` (headline metrics and their intervals)."""
    from stages import evaluate

    started = time.perf_counter()
    metrics = evaluate.run(params).metrics
    kept = {k: float(v) for k, v in metrics.items() if k.startswith(("map", "precision", "recall"))}
    return kept | {"wall": time.perf_counter() - started}


def run_seed(root: Path, seed: int, epochs: int, imgsz: int, batch: int) -> dict[str, Any]:
    """Both arms for one seed, each scored both ways."""
    from stages import augment, ingest, split, train, validate
    from stages.core.contracts import read_classes
    from stages.core.layout import Layout
    from stages.engine.yolo.trainer import save_detector

    work = root / f"seed{seed}"
    params = compare_params(work, seed, epochs, imgsz, batch, work)
    layout = Layout(params.paths)
    started = time.perf_counter()
    for stage in (ingest, validate, split, augment):
        stage.run(params)
    prep = time.perf_counter() - started

    started = time.perf_counter()
    result = train.run(params)
    pipeline_train = time.perf_counter() - started
    export = layout.yolo_dataset
    counts = {k: len(list((export / "images" / k).glob("*"))) for k in ("train", "val", "test")}
    out: dict[str, Any] = {"seed": seed, "split": counts, "prep_wall": prep}
    out["pipeline"] = {
        "train_wall": pipeline_train, **in_training_val(result.run_dir / "results.csv"),
        "ours": ours_score(params),
        "ultralytics": ultralytics_score(layout.detector, export, imgsz, batch, work / "score_pipeline"),
    }  # fmt: skip
    print(f"seed {seed} pipeline", json.dumps(out["pipeline"]), flush=True)

    bare_dir = work / "bare"
    bare_wall, best = bare_train(params, export, bare_dir)
    bare_params = compare_params(work, seed, epochs, imgsz, batch, bare_dir)
    classes = read_classes(layout.classes)
    meta = {"task": "detect", "classes": classes, "weights": "offline", "image_size": imgsz,
            "conf": params.train.detector.conf, "seed": seed}  # fmt: skip
    save_detector(best, meta, Layout(bare_params.paths).detector)
    out["bare"] = {
        "train_wall": bare_wall, **in_training_val(bare_dir / "run" / "results.csv"),
        "ours": ours_score(bare_params),
        "ultralytics": ultralytics_score(best, export, imgsz, batch, work / "score_bare"),
    }  # fmt: skip
    print(f"seed {seed} bare", json.dumps(out["bare"]), flush=True)
    return out


def run_compare(seeds: list[int], epochs: int, imgsz: int, batch: int, root: Path, out: Path) -> dict:
    """All seeds in sequence; the JSON is rewritten after each seed, so a cut-short run keeps its seeds."""
    import os
    import platform

    results: dict[str, Any] = {
        "mode": "compare",
        "settings": {"epochs": epochs, "imgsz": imgsz, "batch": batch, "seeds": seeds},
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared)",
        "runs": [],
    }
    for seed in seeds:
        started = time.perf_counter()
        results["runs"].append(run_seed(root, seed, epochs, imgsz, batch))
        results["runs"][-1]["seed_wall"] = time.perf_counter() - started
        out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return results


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def render_compare(results: dict, conclusion: str = "") -> str:
    """The docs section: per-seed 2x2 (training x scoring), medians, paired gaps, wall times."""
    runs, s = results["runs"], results["settings"]

    def cell(run: dict, arm: str, scorer: str, key: str) -> str:
        value = run[arm][scorer][key]
        if scorer == "ours" and f"{key}_ci_low" in run[arm][scorer]:
            a = run[arm][scorer]
            return f"{value:.3f} [{a[key + '_ci_low']:.3f}, {a[key + '_ci_high']:.3f}]"
        return f"{value:.3f}"

    rows = []
    for run in runs:
        for arm in ARMS:
            a = run[arm]
            scores = [cell(run, arm, sc, key) for key in ("map50", "map50_95") for sc in SCORERS]
            rows.append([run["seed"], arm, f"{a['train_wall']:.0f}", f"{a['val_map50']:.3f}", *scores])
    for arm in ARMS:
        med = {
            (sc, k): _median([r[arm][sc][k] for r in runs]) for sc in SCORERS for k in ("map50", "map50_95")
        }
        wall = _median([r[arm]["train_wall"] for r in runs])
        rows.append([f"**median of {len(runs)}**", arm, f"{wall:.0f}",
                     f"{_median([r[arm]['val_map50'] for r in runs]):.3f}",
                     f"**{med['ours', 'map50']:.3f}**", f"**{med['ultralytics', 'map50']:.3f}**",
                     f"{med['ours', 'map50_95']:.3f}", f"{med['ultralytics', 'map50_95']:.3f}"])  # fmt: skip
    table = markdown_table(
        ["seed", "trained by", "train wall (s)", "val mAP50 (ultralytics, in training)",
         "test mAP50, our evaluate [95% CI]", "test mAP50, ultralytics val",
         "test mAP50-95, our evaluate [95% CI]", "test mAP50-95, ultralytics val"],
        rows,
    )  # fmt: skip

    def gaps(scorer: str, key: str) -> list[float]:
        return [r["bare"][scorer][key] - r["pipeline"][scorer][key] for r in runs]

    def scorer_gaps(arm: str, key: str) -> list[float]:
        return [r[arm]["ultralytics"][key] - r[arm]["ours"][key] for r in runs]

    def fmt(values: list[float]) -> str:
        return f"{_median(values):+.3f} ({', '.join(f'{v:+.3f}' for v in values)})"

    gap_table = markdown_table(
        ["difference (median over seeds; per seed)", "mAP50", "mAP50-95"],
        [
            ["training: bare - pipeline, scored by our evaluate", fmt(gaps("ours", "map50")),
             fmt(gaps("ours", "map50_95"))],
            ["training: bare - pipeline, scored by ultralytics val", fmt(gaps("ultralytics", "map50")),
             fmt(gaps("ultralytics", "map50_95"))],
            ["scoring: ultralytics val - our evaluate, pipeline model", fmt(scorer_gaps("pipeline", "map50")),
             fmt(scorer_gaps("pipeline", "map50_95"))],
            ["scoring: ultralytics val - our evaluate, bare model", fmt(scorer_gaps("bare", "map50")),
             fmt(scorer_gaps("bare", "map50_95"))],
        ],
    )  # fmt: skip
    curves = markdown_table(
        ["seed", "trained by", "val mAP50 per epoch (ultralytics, our val split)", "best.pt = epoch"],
        [[r["seed"], arm, " -> ".join(f"{v:.2f}" for v in r[arm]["val_map50_by_epoch"]), r[arm]["best_epoch"]]
         for r in runs for arm in ARMS if "val_map50_by_epoch" in r[arm]],
    )  # fmt: skip
    splits = "; ".join(
        f"seed {r['seed']}: {r['split']['train']}/{r['split']['val']}/{r['split']['test']}" for r in runs
    )
    walls = markdown_table(
        ["per seed (median, s)", "prep (ingest..augment)", "train", "score: our evaluate",
         "score: ultralytics val"],
        [
            ["pipeline", f"{_median([r['prep_wall'] for r in runs]):.0f}",
             f"{_median([r['pipeline']['train_wall'] for r in runs]):.0f}",
             f"{_median([r['pipeline']['ours']['wall'] for r in runs]):.1f}",
             f"{_median([r['pipeline']['ultralytics']['wall'] for r in runs]):.1f}"],
            ["bare ultralytics", "(uses the pipeline's export)",
             f"{_median([r['bare']['train_wall'] for r in runs]):.0f}",
             f"{_median([r['bare']['ours']['wall'] for r in runs]):.1f}",
             f"{_median([r['bare']['ultralytics']['wall'] for r in runs]):.1f}"],
        ],
    )  # fmt: skip
    body = (
        f"raccoon_voc, {s['epochs']} epochs, imgsz {s['imgsz']}, batch {s['batch']}, "
        f"CPU ({results['machine']}, run under `nice -n 10` beside other jobs), "
        f"seeds {', '.join(str(r['seed']) for r in runs)}. "
        "Per seed, `base.seed` is the seed of the split and of training, so each seed has its own "
        f"split (train/val/test images: {splits}) and both arms train on exactly that export. "
        "**pipeline**: ingest -> validate -> split -> augment -> train -> evaluate with the repository "
        "defaults (offline YOLOv8s-size checkpoint, ultralytics' built-in augmentations on, plus the "
        "`default` augment policy through `PolicyStep`). **bare**: `YOLO(<the same checkpoint file>)"
        ".train(data=<our train/val folders>, epochs, imgsz, batch, seed, deterministic=True, "
        "plots=False, workers=0, device=cpu)`, ultralytics' defaults otherwise (no policy). Both "
        "best.pt files are scored on the same test images by **our evaluate** (image by image, "
        "torchmetrics/pycocotools, 101-point COCO AP, bootstrap 1000 for the interval) and by "
        "**ultralytics val** (`model.val` on a yaml whose val is our test folder: rectangular "
        "letterboxed batches, conf 0.001, NMS IoU 0.7, its own AP integration).\n\n"
        f"{table}\n\n{gap_table}\n\nTraining curves (best.pt is the epoch of highest val mAP50-95):\n\n"
        f"{curves}\n\nWall time:\n\n{walls}\n\n"
        + (f"{conclusion.strip()}\n\n" if conclusion else "")
        + "Reproduce (17 to 25 min a seed here, on 2 cores shared with other jobs): "
        "`nice -n 10 uv run python bench/bench_yolo.py "
        f"--compare --seeds {' '.join(str(x) for x in s['seeds'])} --epochs {s['epochs']} "
        f"--imgsz {s['imgsz']} "
        "--out /tmp/bench_yolo_compare.json --write`; "
        "`--render /tmp/bench_yolo_compare.json --conclusion FILE --write` re-renders."
    )
    return body
