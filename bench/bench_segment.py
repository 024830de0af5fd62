"""Semantic segmentation on facade_seg: what the leaky vendor split hides, and which encoder strategy wins.

``../shared/datasets/facade_seg`` (Roboflow COCO export, 598 images of 411 photos, 10 classes,
CC BY 4.0) ships a train/valid/test split in which 79 photos have their two halves
(``X_scaled_0`` / ``X_scaled_1``, overlapping crops of one shot) on different sides. This
script builds two project copies in a work folder and runs the real stages through their
``run(params)`` functions (ingest, validate, split, augment, train, evaluate) with
``data.task: segment``:

- ``leaky``: the vendor split as it is (``split.honour_predefined: true``); the leakage audit
  is told the photo groups (same regex) but tolerates every leak, so it only counts them;
- ``grouped``: a fresh split grouped by photo (``split.groups`` regex on the file name,
  ``honour_predefined: false``) with the vendor's fractions (407/108/83 of 598).

On the grouped split the same decoder trains from the offline ImageNet encoder with
``linear_probe`` (encoder frozen), ``partial`` and ``full``, and from a randomly initialised
encoder (``full``, ``train.weights: none``; its encoder LR multiplier is ``--scratch-lr-mult``,
1.0 by default: a random encoder has nothing to preserve); all at the same epochs, image
size and batch on the CPU. The ``--leaky-strategies`` also train on the leaky split, for the
side-by-side comparison. Every run: test mIoU with its bootstrap interval (the evaluate
stage's), per-class IoU, wall time of train and evaluate. Early stopping is off
(``patience`` = epochs) so every run trains the same number of epochs; the model kept is the
best epoch on val mIoU.

    uv run --frozen python -m bench.bench_segment [--epochs 10] [--image-size 128] [--batch 16]
        [--strategies linear_probe partial full scratch] [--leaky-strategies full]
        [--limit N] [--work DIR] [--no-docs]
    uv run --frozen python -m bench.bench_segment --render   # docs table from bench/results only

Raw results: ``bench/results/segment.json`` (runs keyed by split and strategy; a rerun replaces
its own keys and keeps the others); the table goes into docs/benchmarks.md. ``--limit N``
keeps about N images (whole photos, evenly spaced, vendor folders kept) for a smoke run; a
limited run only prints (no results file, no docs).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import stages  # noqa: F401  (offline environment)
from bench.common import REPO_ROOT, SHARED_DATASETS, markdown_table, write_section
from stages import augment, evaluate, ingest, split, train, validate
from stages.core.layout import Layout
from stages.core.params import Params, parse_params

SECTION = "Semantic segmentation on facade_seg (leaky vs grouped split, encoder strategies)"
SOURCE = SHARED_DATASETS / "facade_seg"
RESULTS = REPO_ROOT / "bench" / "results" / "segment.json"
VENDOR_SPLITS = ("train", "valid", "test")
COCO_FILE = "_annotations.coco.json"
# X_scaled_0_png_jpg.rf.<hash>.jpg and X_scaled_1_png_jpg.rf.<hash>.jpg -> group X (one photo).
PHOTO_PATTERN = r"(?P<group>[^/]+)_scaled_\d+_"
TOLERATE_ALL = 10**9
# Run name -> (strategy, weights). "scratch" is full fine-tuning of a randomly initialised encoder.
STRATEGIES: dict[str, tuple[str, str]] = {
    "linear_probe": ("linear_probe", "offline"),
    "partial": ("partial", "offline"),
    "full": ("full", "offline"),
    "scratch": ("full", "none"),
}
LABELS = {
    "linear_probe": "linear_probe (encoder frozen)",
    "partial": "partial (top 2 encoder blocks)",
    "full": "full",
    "scratch": "full, random-init encoder",
}
RUN_DIRS = ("models", "reports", "cache")  # per training run; interim/processed are per split


# ---------------------------------------------------------------- the source


def vendor_counts(source: Path) -> dict[str, int]:
    """Images per vendor folder (train/valid/test), from the COCO files."""
    return {
        name: len(json.loads((source / name / COCO_FILE).read_text(encoding="utf-8"))["images"])
        for name in VENDOR_SPLITS
    }


def photo_of(name: str) -> str:
    """The photo a file name belongs to (``PHOTO_PATTERN``), the name itself when it has none."""
    match = re.search(PHOTO_PATTERN, name)
    return match.group("group") if match else name


def limited_source(source: Path, limit: int, dest: Path) -> Path:
    """A copy of ``source`` with about ``limit`` images: whole photos, evenly spaced, vendor folders kept."""
    docs = {n: json.loads((source / n / COCO_FILE).read_text(encoding="utf-8")) for n in VENDOR_SPLITS}
    photos: dict[str, int] = {}
    for doc in docs.values():
        for image in doc["images"]:
            key = photo_of(image["file_name"])
            photos[key] = photos.get(key, 0) + 1
    keys = sorted(photos)
    average = sum(photos.values()) / len(keys)
    k = max(3, min(len(keys), round(limit / average)))
    chosen = {keys[i * len(keys) // k] for i in range(k)}
    for name, doc in docs.items():
        images = [i for i in doc["images"] if photo_of(i["file_name"]) in chosen]
        ids = {i["id"] for i in images}
        (dest / name).mkdir(parents=True, exist_ok=True)
        for image in images:
            shutil.copyfile(source / name / image["file_name"], dest / name / image["file_name"])
        kept = {
            **doc,
            "images": images,
            "annotations": [a for a in doc["annotations"] if a["image_id"] in ids],
        }
        (dest / name / COCO_FILE).write_text(json.dumps(kept), encoding="utf-8")
    return dest


def vendor_fractions(counts: dict[str, int]) -> dict[str, float]:
    """The vendor's train/valid/test shares, as split.fractions (summing to exactly 1)."""
    total = sum(counts.values())
    val, test = round(counts["valid"] / total, 6), round(counts["test"] / total, 6)
    return {"train": round(1.0 - val - test, 6), "val": val, "test": test}


# ---------------------------------------------------------------- params


def split_sections(kind: str, fractions: dict[str, float]) -> dict[str, Any]:
    """The ``split`` section of the leaky (vendor) or grouped (by photo) copy."""
    groups = {"rule": "regex", "pattern": PHOTO_PATTERN}
    if kind == "leaky":
        tolerate = {
            "max_exact_pairs": TOLERATE_ALL,
            "max_near_pairs": TOLERATE_ALL,
            "max_groups": TOLERATE_ALL,
            "max_name_twins": TOLERATE_ALL,
        }
        return {"honour_predefined": True, "groups": groups, "leakage": tolerate}
    return {"honour_predefined": False, "groups": groups, "fractions": fractions}


def make_params(
    source: Path,
    split_dir: Path,
    run_dir: Path,
    split_cfg: dict[str, Any],
    args: argparse.Namespace,
    run: str,
) -> Params:
    """Params of one run: the split's interim/processed, the run's own models/reports/cache."""
    strategy, weights = STRATEGIES[run]
    paths = {name: str(split_dir / name) for name in ("interim", "processed")}
    paths |= {name: str(run_dir / name) for name in RUN_DIRS}
    raw: dict[str, Any] = {
        "base": {"seed": args.seed},
        "data": {"source": str(source), "format": "coco", "task": "segment"},
        "paths": paths,
        "validate": {"workers": args.workers},
        "split": split_cfg,
        "train": {
            "backbone": args.backbone,
            "weights": weights,
            "strategy": strategy,
            "epochs": args.epochs,
            "batch_size": args.batch,
            "patience": args.epochs,  # no early stop: every run trains the same epochs
            "monitor": "val_miou",
            "device": "cpu",
            "threads": args.threads,
            "segmenter": {"decoder": args.decoder, "image_size": args.image_size},
        },
        "evaluate": {"split": "test", "bootstrap": args.bootstrap},
    }
    if run == "scratch":
        raw["train"]["backbone_lr_mult"] = args.scratch_lr_mult
    return parse_params(raw)


# ---------------------------------------------------------------- running


def prepare_split(params: Params) -> dict[str, Any]:
    """ingest, validate, split and augment once per split copy; returns the split's facts."""
    ingest.run(params)
    validate.run(params)
    result = split.run(params)
    augment.run(params)
    counts = result.splits["split"].value_counts()
    leaks = result.leakage.get("counts", {})
    groups = result.audit.get("groups", {})
    return {
        "sizes": {name: int(counts.get(name, 0)) for name in ("train", "val", "test")},
        "leakage": {k: int(v) for k, v in leaks.items() if isinstance(v, (int, float))},
        "groups": int(groups.get("groups", 0)) if isinstance(groups, dict) else 0,
    }


def twin_breakdown(params: Params) -> dict[str, Any]:
    """The run's test mIoU on the test images whose photo also has an image in train ("twinned":
    the model saw the other half) and on the rest ("clean"): one model, one test set, so the gap
    is the leak alone, not a harder or easier test set. From ``per_image.json`` (no rerun)."""
    from stages.core.contracts import read_parquet
    from stages.metrics.segmentation import bootstrap, from_sparse, headline_values

    layout = Layout(params.paths)
    frame = read_parquet(layout.manifest).merge(
        read_parquet(layout.splits), on="image_id", suffixes=("_s", "")
    )
    train_photos = {photo_of(Path(p).name) for p in frame.loc[frame["split"] == "train", "path"]}
    photo = {str(i): photo_of(Path(p).name) for i, p in zip(frame["image_id"], frame["path"], strict=True)}
    document = json.loads((layout.metrics.parent / "per_image.json").read_text(encoding="utf-8"))
    n = len(document["classes"])
    out: dict[str, Any] = {}
    for name, wanted in (("twinned", True), ("clean", False)):
        chosen = [r for r in document["images"] if (photo[str(r["id"])] in train_photos) == wanted]
        if not chosen:
            continue
        stack = np.stack([from_sparse(r["confusion"], n) for r in chosen])
        low, high = bootstrap(stack, 1000, 0.95, 0)[0].get("miou", (None, None))
        out[name] = {
            "images": len(chosen),
            "miou": float(headline_values(stack.sum(axis=0))["miou"]),
            "miou_ci_low": low,
            "miou_ci_high": high,
        }
    return out


def train_and_score(params: Params) -> dict[str, Any]:
    """Train and evaluate one run; wall times, headline metrics and the per-class rows."""
    started = time.perf_counter()
    trained = train.run(params)
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    scored = evaluate.run(params).metrics
    evaluate_s = time.perf_counter() - started
    layout = Layout(params.paths)
    per_class = json.loads((layout.plots_dir / "per_class.json").read_text(encoding="utf-8"))
    keep = ("miou", "pixel_accuracy", "mean_accuracy", "dice_macro", "fw_iou")
    metrics = {k: v for k, v in scored.items() if k.split("_ci_")[0] in keep}
    best_epoch = getattr(trained, "best_epoch", None)
    return {
        "metrics": metrics,
        "per_class": per_class,
        "train_s": round(train_s, 1),
        "evaluate_s": round(evaluate_s, 1),
        "best_epoch": best_epoch if isinstance(best_epoch, int) else None,
    }


def run_all(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    source = SOURCE
    if args.limit:
        source = limited_source(SOURCE, args.limit, work / "source")
    counts = vendor_counts(source)
    fractions = vendor_fractions(counts)
    wanted = {"grouped": list(args.strategies), "leaky": list(args.leaky_strategies)}
    out: dict[str, Any] = {"splits": {}, "runs": {}}
    for kind in ("leaky", "grouped"):
        if not wanted[kind]:
            continue
        split_dir = work / kind
        split_cfg = split_sections(kind, fractions)
        first = make_params(source, split_dir, split_dir / "prepare", split_cfg, args, wanted[kind][0])
        started = time.perf_counter()
        facts = prepare_split(first)
        facts["prepare_s"] = round(time.perf_counter() - started, 1)
        out["splits"][kind] = facts
        print(f"{kind}: {facts}", flush=True)
        for run in wanted[kind]:
            params = make_params(source, split_dir, split_dir / run, split_cfg, args, run)
            record = train_and_score(params)
            if kind == "leaky":
                record["twins"] = twin_breakdown(params)
            record |= {
                "split": kind,
                "run": run,
                "strategy": STRATEGIES[run][0],
                "weights": STRATEGIES[run][1],
            }
            out["runs"][f"{kind}/{run}"] = record
            m = record["metrics"]
            print(
                f"{kind}/{run}: test mIoU {m.get('miou')} [{m.get('miou_ci_low')}, {m.get('miou_ci_high')}], "
                f"train {record['train_s']:.0f} s, evaluate {record['evaluate_s']:.0f} s",
                flush=True,
            )
    out["vendor_counts"] = counts
    out["fractions"] = fractions
    return out


# ---------------------------------------------------------------- tables


def fmt_ci(metrics: dict[str, Any], name: str = "miou") -> str:
    value, low, high = metrics.get(name), metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
    if value is None:
        return "n/a"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]" if low is not None and high is not None else f"{value:.3f}"


def largest_classes(run: dict[str, Any], k: int = 3) -> list[str]:
    """The ``k`` classes with the most test pixels (background left out: it is what no shape covers)."""
    rows = [r for r in run["per_class"] if r.get("class") != "background"]
    return [r["class"] for r in sorted(rows, key=lambda r: -int(r.get("pixels", 0)))[:k]]


def class_iou(run: dict[str, Any], name: str) -> str:
    row = next((r for r in run["per_class"] if r.get("class") == name), None)
    if row is None or row.get("iou") is None:
        return "n/a"
    return f"{row['iou']:.3f}"


def render(results: dict[str, Any]) -> str:
    """The markdown body of the docs section, from ``segment.json``."""
    runs: dict[str, Any] = results["runs"]
    grouped = [runs[f"grouped/{r}"] for r in STRATEGIES if f"grouped/{r}" in runs]
    reference = grouped[0] if grouped else next(iter(runs.values()))
    top = largest_classes(reference)
    cfg = results["config"]
    header = [
        "split",
        "encoder / strategy",
        "test mIoU [95% CI]",
        *[f"IoU {c}" for c in top],
        "pixel acc",
        "train min",
        "evaluate s",
    ]
    rows = []
    for kind in ("grouped", "leaky"):
        for name in STRATEGIES:
            run = runs.get(f"{kind}/{name}")
            if run is None:
                continue
            m = run["metrics"]
            rows.append(
                [
                    kind,
                    LABELS[name],
                    fmt_ci(m),
                    *[class_iou(run, c) for c in top],
                    f"{m['pixel_accuracy']:.3f}" if m.get("pixel_accuracy") is not None else "n/a",
                    f"{run['train_s'] / 60:.1f}",
                    f"{run['evaluate_s']:.0f}",
                ]
            )
    splits = results["splits"]
    facts = []
    for kind, facts_of in splits.items():
        sizes = facts_of["sizes"]
        leaks = facts_of.get("leakage", {})
        facts.append(
            f"- {kind}: train/val/test {sizes['train']}/{sizes['val']}/{sizes['test']}; across splits "
            f"{leaks.get('groups', 0)} photos (groups), {leaks.get('name_twins', 0)} name twins, "
            f"{leaks.get('near_pairs', 0)} near-duplicate pairs, "
            f"{leaks.get('exact_pairs', 0)} identical pairs."
        )
    pairs = []
    for name in STRATEGIES:
        if f"leaky/{name}" in runs and f"grouped/{name}" in runs:
            leaky, fair = runs[f"leaky/{name}"]["metrics"], runs[f"grouped/{name}"]["metrics"]
            pairs.append(
                f"- {LABELS[name]}: leaky vendor split {fmt_ci(leaky)}, grouped by photo {fmt_ci(fair)}: "
                f"the vendor split reports {leaky['miou'] - fair['miou']:+.3f} mIoU (different test sets: "
                "the leaky one holds halves of photos whose other half is in train)."
            )
    intro = (
        f"`python -m bench.bench_segment --epochs {cfg['epochs']} --image-size {cfg['image_size']} "
        f"--batch {cfg['batch']}` on `facade_seg` (598 images of 411 photos, 10 classes + background): "
        f"{cfg['decoder']} decoder over {cfg['backbone']}, CPU ({cfg['cpus']} cores, torch threads "
        f"{cfg['threads'] or 'default'}), {cfg['epochs']} epochs at {cfg['image_size']} px, "
        f"batch {cfg['batch']}, "
        "no early stopping (the best val-mIoU epoch is kept), default augmentation and LR (AdamW 1e-3, "
        f"encoder x0.1; the random-init encoder x{cfg['scratch_lr_mult']}); test mIoU from the evaluate "
        f"stage with its {cfg['bootstrap']}-resample per-image bootstrap interval; masks drawn in area order "
        "(windows over facades). Grouped split: "
        f"`split.groups: {{rule: regex, pattern: '{PHOTO_PATTERN}'}}`, "
        "`honour_predefined: false`, the vendor's fractions. Per-class IoU of the three classes with the "
        "most test pixels of the grouped split (background aside)."
    )
    twins = []
    for name in STRATEGIES:
        found = runs.get(f"leaky/{name}", {}).get("twins") or {}
        if {"twinned", "clean"} <= set(found):
            t, c = found["twinned"], found["clean"]
            twins.append(
                f"- {LABELS[name]} trained on the vendor split, its own test set: the {t['images']} test "
                f"images whose photo's other half is in train score {fmt_ci(t)}, the {c['images']} others "
                f"{fmt_ci(c)} ({t['miou'] - c['miou']:+.3f}: what the leak adds, one model, one test set)."
            )
    body = [intro, markdown_table(header, rows), "Splits:", "\n".join(facts)]
    if twins:
        body += ["Inside the leaky test set:", "\n".join(twins)]
    if pairs:
        body += ["Leaky vs grouped, same strategy:", "\n".join(pairs)]
    return "\n\n".join(body)


def merge(path: Path, new: dict[str, Any]) -> dict[str, Any]:
    """Keep the runs of an earlier invocation that this one did not redo (same config only)."""
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old.get("config") == new["config"]:
            new["runs"] = old.get("runs", {}) | new["runs"]
            new["splits"] = old.get("splits", {}) | new["splits"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(new, indent=2) + "\n", encoding="utf-8")
    return new


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="~45 s each at 128 px on 2 cores (full)")
    parser.add_argument("--image-size", type=int, default=128, help="a multiple of 32")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--decoder", default="unet", choices=["unet", "fpn", "deeplabv3plus"])
    parser.add_argument("--strategies", nargs="*", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--leaky-strategies", nargs="*", default=["full"], choices=list(STRATEGIES))
    parser.add_argument(
        "--scratch-lr-mult", type=float, default=1.0, help="encoder LR multiplier, random init"
    )
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--workers", type=int, default=2, help="validate's decoding processes")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--limit", type=int, default=None, help="about this many images (smoke runs)")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--render", action="store_true", help="only rewrite the docs from the results")
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument(
        "--name",
        default="segment",
        help="results in bench/results/<name>.json and their own docs section (a second budget)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    results_file = RESULTS.with_name(f"{args.name}.json")
    section = SECTION if args.name == "segment" else f"{SECTION}: {args.name}"
    if args.render:
        write_section(section, render(json.loads(results_file.read_text(encoding="utf-8"))))
        return
    config = {
        "epochs": args.epochs,
        "image_size": args.image_size,
        "batch": args.batch,
        "backbone": args.backbone,
        "decoder": args.decoder,
        "scratch_lr_mult": args.scratch_lr_mult,
        "bootstrap": args.bootstrap,
        "threads": args.threads,
        "seed": args.seed,
        "limit": args.limit,
        "cpus": len(os.sched_getaffinity(0)),
        "machine": platform.processor() or platform.machine(),
    }
    with tempfile.TemporaryDirectory(prefix="bench_segment_") as tmp:
        work = args.work or Path(tmp)
        started = time.perf_counter()
        results = run_all(args, work)
        results["config"] = config
        results["minutes"] = round((time.perf_counter() - started) / 60, 1)
    if args.limit:  # a smoke run: print only
        print(json.dumps(results, indent=2))
        print(render(results))
        return
    results = merge(results_file, results)
    body = render(results)
    print(body)
    if not args.no_docs:
        write_section(section, body)


if __name__ == "__main__":
    main()
