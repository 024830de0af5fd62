"""Box label-issue detection on real data with planted errors: does ``box_issues`` find them?

coco128 cut to two classes (person, car: the images holding either, every other class's boxes
dropped) in YOLO layout. The copy is split once (seed 42; fractions 0.6 / 0.3 / 0.1 so val
holds enough boxes), then in the VAL split only, a number of boxes get the other class (planted
swaps) and as many are deleted (planted missing boxes); every image keeps its split
(``split.predefined_file``). The pipeline trains a small detector briefly on the CPU (train
labels are clean) and ``stages.box_issues`` scores the val boxes against its held-out
predictions. We report precision and recall of the planted errors among the top k = 2 x planted
candidates, and how many the stage's default threshold lists. A planted swap is found when a
candidate sits on its box (IoU >= 0.9 with the given box); a deleted box when a ``missing``
candidate's predicted box overlaps it (IoU >= 0.5).

    .venv/bin/python bench/bench_box_issues.py [--plant 8] [--epochs 6] [--imgsz 320]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import stages  # noqa: F401  (offline environment)
from bench.common import SHARED_DATASETS, markdown_table, write_section
from stages import augment, box_issues, ingest, split, train, validate
from stages.core.contracts import read_parquet
from stages.core.layout import Layout
from stages.core.params import Params, parse_params
from stages.engine.box_issues import BOX, PRED_BOX, box_iou

SECTION = "Label-issue detection: boxes (planted swaps and deletions)"
COCO128 = SHARED_DATASETS / "coco128"
KEEP = {0: 0, 2: 1}  # coco class id -> ours
NAMES = ["person", "car"]


def two_class_copy(target: Path) -> int:
    """coco128's images holding a person or a car, flat, with only those boxes (YOLO txt)."""
    (target / "images").mkdir(parents=True)
    (target / "labels").mkdir()
    kept = 0
    for label in sorted((COCO128 / "labels").rglob("*.txt")):
        rows = [r.split() for r in label.read_text(encoding="utf-8").splitlines() if r.strip()]
        rows = [[str(KEEP[int(r[0])]), *r[1:]] for r in rows if int(r[0]) in KEEP]
        image = COCO128 / "images" / label.parent.name / f"{label.stem}.jpg"
        if not rows or not image.is_file():
            continue
        shutil.copy2(image, target / "images" / image.name)
        (target / "labels" / label.name).write_text(
            "".join(" ".join(r) + "\n" for r in rows), encoding="utf-8"
        )
        kept += 1
    (target / "data.yaml").write_text(yaml.safe_dump({"names": NAMES, "nc": len(NAMES)}), encoding="utf-8")
    return kept


def make_params(source: Path, work: Path, epochs: int, imgsz: int, **split_cfg: Any) -> Params:
    raw: dict[str, Any] = {
        "data": {"source": str(source), "format": "yolo", "task": "detect", "annotations": None},
        "paths": {k: str(work / k) for k in ("interim", "processed", "models", "reports", "cache")},
        "validate": {"workers": 2},
        "split": {"fractions": {"train": 0.6, "val": 0.3, "test": 0.1}} | split_cfg,
        "augment": {"preview": {"images": 2, "views": 1}},
        "train": {
            "device": "cpu",
            "num_workers": 0,
            "detector": {
                "weights": "offline",
                "epochs": epochs,
                "image_size": imgsz,
                "batch": 8,
                "ultralytics": {"plots": False},
            },
        },
        "label_issues": {"box_threshold": 1.0},  # every candidate listed: the bench ranks them all
    }
    return parse_params(raw)


def plant(clean: pd.DataFrame, boxes: pd.DataFrame, source: Path, noisy: Path, n: int, seed: int):
    """Copy ``source`` to ``noisy``; in val, swap the class of ``n`` boxes and delete ``n`` others.

    Returns the predefined split rows and the planted boxes (path, kind, class, pixel xyxy).
    """
    shutil.copytree(source, noisy)
    rng = np.random.default_rng(seed)
    val = clean[clean["split"] == "val"]
    pool = boxes.merge(val[["image_id", "width", "height"]], on="image_id")
    pool = pool.sort_values(["image_id", *BOX]).reset_index(drop=True)
    chosen = rng.choice(len(pool), size=2 * n, replace=False)
    paths = dict(zip(clean["image_id"], clean["path"], strict=True))
    planted = []
    for order, index in enumerate(chosen):
        row = pool.iloc[int(index)]
        planted.append(
            {
                "path": paths[row["image_id"]],
                "kind": "swap" if order < n else "missing",
                "class": row["class_name"],
            }
            | {k: float(row[k]) for k in BOX}
            | {"width": float(row["width"]), "height": float(row["height"])}
        )
    for path in sorted({p["path"] for p in planted}):
        rewrite_label(noisy, path, [p for p in planted if p["path"] == path])
    return clean[["path", "split"]].copy(), planted


def rewrite_label(root: Path, image_path: str, changes: list[dict]) -> None:
    """Apply the planted swaps and deletions to one YOLO label file (boxes matched by their pixels)."""
    label = root / "labels" / f"{Path(image_path).stem}.txt"
    out = []
    for line in label.read_text(encoding="utf-8").splitlines():
        cls, cx, cy, w, h = line.split()
        change = next((c for c in changes if _same(c, float(cx), float(cy), float(w), float(h))), None)
        if change is None:
            out.append(line)
        elif change["kind"] == "swap":
            out.append(" ".join([str(1 - int(cls)), cx, cy, w, h]))
    label.write_text("".join(f"{r}\n" for r in out), encoding="utf-8")


def _same(change: dict, cx: float, cy: float, w: float, h: float) -> bool:
    width, height = change["width"], change["height"]
    mine = np.array(
        [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
    )
    return bool(np.abs(mine - np.array([change[k] for k in BOX])).max() < 1.0)


def evaluate_ranking(candidates: pd.DataFrame, planted: list[dict], k: int) -> dict[str, Any]:
    """Planted errors found among the top ``k`` candidates (and their issue types)."""
    top = candidates.head(k)
    found, typed, hit_rows = 0, 0, set()
    for p in planted:
        box = np.array([[p[c] for c in BOX]])
        same = top[top["path"] == p["path"]]
        if p["kind"] == "swap":
            coords = same[BOX].to_numpy(np.float64)
        else:
            same = same[same["issue"] == "missing"]
            coords = same[PRED_BOX].to_numpy(np.float64)
        ious = box_iou(box, coords)[0] if len(same) else np.zeros(0)
        need = 0.9 if p["kind"] == "swap" else 0.5
        if (ious >= need).any():
            found += 1
            row = same.iloc[int(np.argmax(ious))]
            hit_rows.add(int(row["rank"]))
            typed += int(row["issue"] == p["kind"])
    return {"found": found, "typed": typed, "precision": len(hit_rows) / k, "recall": found / len(planted)}


def run(root: Path, n: int, epochs: int, imgsz: int, rescore: bool = False) -> dict[str, Any]:
    """The whole bench in ``root``; ``rescore``: reuse the detector a kept run trained there."""
    if not rescore:
        two_class_copy(root / "clean_src")
    images = len(list((root / "clean_src" / "images").iterdir()))
    clean = make_params(root / "clean_src", root / "clean", epochs, imgsz)
    for stage in () if rescore else (ingest, validate, split):
        stage.run(clean)
    layout = Layout(clean.paths)
    assigned = read_parquet(layout.manifest).merge(
        read_parquet(layout.splits), on="image_id", suffixes=("_s", "")
    )
    target = root / ("noisy_again" if rescore else "noisy_src")  # the same seeded plant
    predefined, planted = plant(assigned, read_parquet(layout.boxes), root / "clean_src", target, n, 0)
    split_csv = root / "predefined.csv"
    predefined.to_csv(split_csv, index=False)
    if rescore:
        shutil.rmtree(target)

    noisy = make_params(root / "noisy_src", root / "noisy", epochs, imgsz, predefined_file=str(split_csv))
    started = time.perf_counter()
    for stage in () if rescore else (ingest, validate, split, augment, train):
        stage.run(noisy)
    trained = time.perf_counter() - started
    started = time.perf_counter()
    result = box_issues.run(noisy)
    scored = time.perf_counter() - started
    layout = Layout(noisy.paths)
    candidates = pd.read_csv(layout.box_issues)
    curve = pd.read_csv(layout.train_log_dir / "plots" / "metrics" / "val" / "map50.tsv", sep="\t")
    k = 2 * len(planted)
    by_kind = {
        kind: evaluate_ranking(candidates, [p for p in planted if p["kind"] == kind], k)
        for kind in ("swap", "missing")
    }
    return {
        "images": images,
        "val_images": result.images,
        "val_boxes": result.boxes,
        "planted": len(planted),
        "k": k,
        "all": evaluate_ranking(candidates, planted, k),
        # a reviewer who reads only the swap and missing rows (badly placed boxes set aside)
        "swap_missing_rows": evaluate_ranking(
            candidates[candidates["issue"].isin(["swap", "missing"])], planted, k
        ),
        **by_kind,
        "listed_at_default": int((candidates["quality"] <= 0.5).sum()),
        "found_at_default": evaluate_ranking(
            candidates[candidates["quality"] <= 0.5], planted, len(candidates)
        )["found"],
        "val_map50": float(curve.iloc[:, -1].max()),  # the best epoch's, the checkpoint kept
        "train_s": trained,
        "stage_s": scored,
        "per_issue_top_k": candidates.head(k)["issue"].value_counts().to_dict(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plant", type=int, default=8, help="swaps planted, and as many boxes deleted")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--results", type=Path, help="re-write the table from a run's printed JSON")
    parser.add_argument("--keep", type=Path, help="work in this (new) folder and keep it, e.g. to re-score")
    parser.add_argument(
        "--rescore", action="store_true", help="with --keep: score the kept run's detector again"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.results:
        r = json.loads(args.results.read_text(encoding="utf-8"))
    elif args.keep:
        r = run(args.keep, args.plant, args.epochs, args.imgsz, rescore=args.rescore)
        print(json.dumps(r, indent=1))
    else:
        with tempfile.TemporaryDirectory(prefix="bench-box-issues-") as tmp:
            r = run(Path(tmp), args.plant, args.epochs, args.imgsz)
        print(json.dumps(r, indent=1))
    header = [
        "planted",
        "k",
        "precision@k",
        "recall@k",
        "found (right type)",
        "listed at 0.5 (planted in it)",
    ]
    rows = [
        [
            f"{label} ({n})",
            r["k"],
            f"{r[key]['precision']:.2f}",
            f"{r[key]['recall']:.2f}",
            f"{r[key]['found']} ({r[key]['typed']})",
            "" if key != "all" else f"{r['listed_at_default']} ({r['found_at_default']})",
        ]
        for label, key, n in (
            ("all", "all", r["planted"]),
            ("all, swap and missing rows only", "swap_missing_rows", r["planted"]),
            ("swapped class", "swap", r["planted"] // 2),
            ("deleted box", "missing", r["planted"] // 2),
        )
    ]
    train_time = (
        f"{r['train_s']:.0f} s for ingest to train"
        if r["train_s"] > 1
        else "trained by the kept run, re-scored"
    )
    body = (
        f"`bench/bench_box_issues.py --plant {args.plant} --epochs {args.epochs} --imgsz {args.imgsz}`: "
        f"coco128 cut to person and car ({r['images']} images), split 0.6 / 0.3 / 0.1 (seed 42); in the "
        f"val split only ({r['val_images']} images, {r['val_boxes']} given boxes after planting), "
        f"{args.plant} boxes get the other class and {args.plant} are deleted. The detector (offline "
        f"YOLOv8s-size weights) trains {args.epochs} epochs at {args.imgsz} px on the CPU on clean train "
        f"labels ({train_time}); `stages.box_issues` predicts val and ranks "
        f"every candidate ({r['stage_s']:.1f} s). Precision counts distinct candidates that hit a planted "
        "error among the top k = 2 x planted; per-kind rows use the same k (so their precision is at "
        f"most half). Top-k issue types: {json.dumps(r['per_issue_top_k'])}. Val mAP50 of the detector: "
        f"{r.get('val_map50', float('nan')):.3f}. One run (one seed): a detector trained for minutes on "
        "the CPU is the weak part, so read these as a floor.\n\n" + markdown_table(header, rows)
    )
    write_section(SECTION, body)


if __name__ == "__main__":
    main()
