"""YOLO detector benchmarks on raccoon_voc (CPU, small image size, few epochs).

1. Orchestration overhead: our ``train`` stage (export check, fingerprint, policy trainer, DVCLive,
   detector.pt) against bare ``YOLO(weights).train(...)`` with the same exported data, the same
   start weights and the same arguments (the policy goes to ultralytics' own ``augmentations``).
2. Transfer: the offline YOLOv8s-size checkpoint against the same architecture from scratch
   (``yolov8s.yaml``), and a frozen backbone (``freeze: 10``) against full fine-tuning, all through
   our stages, scored by our evaluate stage on the test split.
3. Like for like (``--compare``): per seed, the whole pipeline (ingest -> ... -> evaluate) and bare
   ``YOLO(offline checkpoint).train(...)`` on the SAME exported split (train/val folders of our
   export), same epochs, imgsz, batch and seed; both best.pt files are then scored on our test
   images twice, by ultralytics' ``val`` and by our evaluate code (torchmetrics/pycocotools), so a
   gap can be split into "training differs" and "scoring differs".

    uv run python bench/bench_yolo.py [--epochs 5] [--imgsz 256] [--write]
    nice -n 10 uv run python bench/bench_yolo.py --compare --seeds 0 1 2 --imgsz 320 \
        --out /tmp/bench_yolo_compare.json [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import stages  # noqa: F401  (offline environment)
from bench.common import markdown_table, write_section
from bench.yolo_compare import raccoon_params, render_compare, run_compare
from stages.core.params import Params, parse_params

SECTION = "YOLO detector (bench/bench_yolo.py)"
COMPARE_SECTION = "YOLO detector: pipeline vs bare ultralytics (bench/bench_yolo.py --compare)"


def make_params(root: Path, name: str, epochs: int, imgsz: int, batch: int, **detector) -> Params:
    paths = {k: str(root / "shared" / k) for k in ("interim", "processed")}
    paths |= {k: str(root / name / k) for k in ("models", "reports", "cache")}
    return parse_params(raccoon_params(paths, epochs, imgsz, batch, **detector))


def prepare(params: Params) -> dict[str, float]:
    from stages import augment, ingest, split, validate

    times = {}
    for stage in (ingest, validate, split, augment):
        started = time.perf_counter()
        stage.run(params)
        times[stage.__name__.split(".")[-1]] = time.perf_counter() - started
    return times


def ours(params: Params) -> tuple[float, dict]:
    from stages import evaluate, train

    started = time.perf_counter()
    train.run(params)
    wall = time.perf_counter() - started
    metrics = evaluate.run(params).metrics
    return wall, metrics


def bare(params: Params, project: Path) -> float:
    """The same ultralytics call without our stage: same data.yaml, weights and arguments."""
    from ultralytics import YOLO

    from stages.core.layout import Layout
    from stages.dataprep.augmentation import load_policy
    from stages.engine.yolo.trainer import resolve_weights, train_arguments, ultralytics_offline

    layout = Layout(params.paths)
    args = train_arguments(
        params, layout.yolo_dataset / "data.yaml", project / "bare", load_policy(layout.augment_policy)
    )
    started = time.perf_counter()
    with ultralytics_offline(None):
        YOLO(str(resolve_weights(params.train.detector.weights))).train(**args)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--imgsz", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--write", action="store_true", help="write the docs/benchmarks.md section")
    parser.add_argument("--out", type=Path, default=None, help="also save the raw results as JSON")
    parser.add_argument("--render", type=Path, default=None, help="only render a saved --out file")
    parser.add_argument("--compare", action="store_true", help="pipeline vs bare ultralytics, per seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="--compare: seeds")
    parser.add_argument("--conclusion", type=Path, default=None, help="--compare: paragraph to append")
    args = parser.parse_args()
    if args.render:
        results = json.loads(args.render.read_text(encoding="utf-8"))
        compare = results.get("mode") == "compare"
        if compare:
            body = render_compare(results, _text(args.conclusion))
        else:
            body = render(results, results["settings"])
        print(body)
        if args.write:
            write_section(COMPARE_SECTION if compare else SECTION, body)
        return
    if args.compare:
        root = Path(tempfile.mkdtemp(prefix="bench_yolo_compare_"))
        out = args.out or root / "results.json"
        results = run_compare(args.seeds, args.epochs, args.imgsz, args.batch, root, out)
        body = render_compare(results, _text(args.conclusion))
        print(body)
        if args.write:
            write_section(COMPARE_SECTION, body)
        return
    root = Path(tempfile.mkdtemp(prefix="bench_yolo_"))
    common = {"epochs": args.epochs, "imgsz": args.imgsz, "batch": args.batch}
    runs = {
        "pretrained": make_params(root, "pretrained", **common),
        "scratch": make_params(root, "scratch", weights="yolov8s.yaml", **common),
        "frozen": make_params(root, "frozen", freeze=10, **common),
    }
    prep = prepare(runs["pretrained"])
    from stages.core.contracts import read_classes, read_parquet
    from stages.core.layout import Layout
    from stages.dataprep.yolo_export import export_dataset

    layout = Layout(runs["pretrained"].paths)
    frame = read_parquet(layout.manifest).merge(read_parquet(layout.splits), on="image_id",
                                                suffixes=("_source", ""))  # fmt: skip
    started = time.perf_counter()
    export = export_dataset(frame, read_parquet(layout.boxes), read_classes(layout.classes),
                            runs["pretrained"].data.source, layout.yolo_dataset)  # fmt: skip
    prep["first export"] = time.perf_counter() - started

    results: dict[str, dict] = {}
    bare_wall = bare(runs["pretrained"], root)
    for name, params in runs.items():
        wall, metrics = ours(params)
        results[name] = {
            "wall": wall,
            **{k: metrics[k] for k in metrics if k.startswith(("map", "prec", "rec"))},
        }
        print(name, json.dumps(results[name]), flush=True)
    results["bare"] = {"wall": bare_wall}
    results["prep"] = prep
    results["export"] = str(export)
    results["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared)"
    results["split"] = export.images
    results["settings"] = {"epochs": args.epochs, "imgsz": args.imgsz, "batch": args.batch}
    if args.out:
        args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    body = render(results, results["settings"])
    print(body)
    if args.write:
        write_section(SECTION, body)


def _text(path: Path | None) -> str:
    return path.read_text(encoding="utf-8") if path else ""


def render(results: dict, settings: dict) -> str:
    bare_wall = results["bare"]["wall"]
    prep = results["prep"]

    def ci(r: dict, key: str) -> str:
        return f"{r[key]:.3f} [{r[key + '_ci_low']:.3f}, {r[key + '_ci_high']:.3f}]"

    overhead = markdown_table(
        ["run", "wall (s)", "ratio"],
        [["bare `YOLO(best.pt).train(...)`", f"{bare_wall:.1f}", "1.00"],
         ["our `train` stage (same data, weights, arguments)", f"{results['pretrained']['wall']:.1f}",
          f"{results['pretrained']['wall'] / bare_wall:.3f}"]],
    )  # fmt: skip
    transfer = markdown_table(
        ["start", "train wall (s)", "test mAP50 [95% CI]", "test mAP50-95 [95% CI]", "P", "R"],
        [
            [label, f"{results[k]['wall']:.1f}", ci(results[k], "map50"), ci(results[k], "map50_95"),
             f"{results[k]['precision']:.3f}", f"{results[k]['recall']:.3f}"]
            for k, label in (("pretrained", "offline checkpoint, full fine-tuning"),
                             ("frozen", "offline checkpoint, `freeze: 10` (backbone frozen)"),
                             ("scratch", "`yolov8s.yaml` from scratch"))
        ],
    )  # fmt: skip
    body = (
        f"raccoon_voc (200 images, 1 class; split {results['split']}), CPU ({results['machine']}), "
        f"imgsz {settings['imgsz']}, batch {settings['batch']}, {settings['epochs']} epochs, seed 42, "
        "ultralytics defaults otherwise (HSV, flip, scale, translate on; mosaic off because "
        "`close_mosaic: 10` covers every epoch of so short a run), plus the default augment policy. "
        "One process, runs in sequence; the dataset was exported once before the timed runs (first "
        f"export {prep['first export']:.1f} s). The bare run gets the policy through ultralytics' own "
        "`augmentations` step, ours through `PolicyStep` (our box rules and seeding), so their "
        "augmentation draws, and hence their losses, differ.\n\n"
        f"Orchestration overhead (target <= 1.05):\n\n{overhead}\n\n"
        f"Transfer (scored by our evaluate stage on the test split, bootstrap 1000):\n\n{transfer}\n\n"
        "Reproduce: `uv run python bench/bench_yolo.py --write`."
    )
    return body


if __name__ == "__main__":
    main()
