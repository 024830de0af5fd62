"""Label-issue detection on real data with planted flips: does it find them, and does leaving
them out help?

For hymenoptera and eth80_subset (split by object, as in bench/bench_strategies.py): split a
copy once (seed 42), then move 5 % of the train and val images into another class's folder (a
planted label flip; the test split is never touched) and keep every image in its split
(``split.predefined_file``). ``stages.label_issues`` scores the noisy copy; we report precision
and recall of the planted flips among the top k = 2 x planted suspects by label quality, and
the test accuracy (bootstrap interval) of a linear probe trained on the noisy labels, after
excluding those k suspects (``split.exclude``), and on the clean labels.

    .venv/bin/python bench/bench_label_issues.py [--datasets hymenoptera eth80] [--rate 0.05]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import stages  # noqa: F401  (offline environment)
from bench.common import SHARED_DATASETS, markdown_table, write_section
from stages import augment, evaluate, ingest, label_issues, split, train, validate
from stages.core.contracts import read_classes, read_parquet
from stages.core.layout import Layout
from stages.core.params import Params, parse_params
from stages.engine.label_issues import score_labels

SECTION = "Label-issue detection (planted label flips)"
DATASETS: dict[str, tuple[Path, dict[str, Any]]] = {
    "hymenoptera": (SHARED_DATASETS / "hymenoptera", {}),
    "eth80": (
        SHARED_DATASETS / "eth80_subset" / "images",
        {"groups": {"rule": "parent"}, "near_duplicates": {"enabled": False}},
    ),
}


def make_params(name: str, source: Path, work: Path, **split_cfg: Any) -> Params:
    """Repository defaults on CPU with EfficientNet-Lite0 at its default size, clean views only."""
    raw: dict[str, Any] = {
        "data": {"source": str(source), "format": "auto", "task": "classify"},
        "paths": {k: str(work / k) for k in ("interim", "processed", "models", "reports")}
        | {"cache": str(work.parent / "cache")},  # one feature cache for every run of a dataset
        "validate": {"workers": 2},
        "split": DATASETS[name][1] | split_cfg,
        "train": {"backbone": "efficientnet_lite0", "aug_views": 0, "device": "cpu"},
        "evaluate": {"bootstrap": 1000},
    }
    return parse_params(raw)


def assigned(layout: Layout) -> pd.DataFrame:
    manifest = read_parquet(layout.manifest)
    return manifest.merge(read_parquet(layout.splits), on="image_id", suffixes=("_source", ""))


def plant(clean: pd.DataFrame, source: Path, noisy: Path, classes: list[str], rate: float, seed: int):
    """Copy ``source`` to ``noisy`` moving ``rate`` of the train+val images to another class folder.

    The class is a path component (``train/ants/x.jpg``, ``apple/apple1/x.png``); it is swapped
    for another class name. Returns the predefined split CSV rows and the planted new paths.
    """
    shutil.copytree(source, noisy)
    rng = np.random.default_rng(seed)
    pool = clean[clean["split"].isin(["train", "val"])].sort_values("image_id")
    chosen = set(rng.choice(pool.index.to_numpy(), size=round(rate * len(pool)), replace=False).tolist())
    rows, planted = [], []
    for index, row in clean.iterrows():
        path = str(row["path"])
        if index in chosen:
            parts = path.split("/")
            at = parts.index(str(row["label"]))
            others = [c for c in classes if c != row["label"]]
            parts[at] = others[int(rng.integers(len(others)))]
            new = "/".join(parts)
            (noisy / new).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(noisy / path, noisy / new)
            planted.append(new)
            path = new
        rows.append({"path": path, "split": row["split"]})
    return pd.DataFrame(rows), planted


def accuracy(params: Params) -> dict[str, float]:
    for stage in (ingest, validate, split, augment, train, evaluate):
        stage.run(params)
    metrics = json.loads(Layout(params.paths).metrics.read_text(encoding="utf-8"))
    return {k: metrics[k] for k in ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "images")}


def run_dataset(name: str, root: Path, rate: float) -> dict[str, Any]:
    source = DATASETS[name][0]
    clean_params = make_params(name, source, root / "clean")
    for stage in (ingest, validate, split):
        stage.run(clean_params)
    clean = assigned(Layout(clean_params.paths))
    classes = read_classes(Layout(clean_params.paths).classes)
    predefined, planted = plant(clean, source, root / "noisy_src", classes, rate, seed=0)
    split_csv = root / "predefined.csv"
    predefined.to_csv(split_csv, index=False)

    noisy = make_params(name, root / "noisy_src", root / "noisy", predefined_file=str(split_csv))
    for stage in (ingest, validate, split):
        stage.run(noisy)
    started = time.perf_counter()
    result = label_issues.run(noisy)
    seconds = time.perf_counter() - started
    layout = Layout(noisy.paths)
    rows = assigned(layout).merge(read_parquet(layout.split_units), on="image_id")
    rows = rows[rows["split"].isin(["train", "val"])]
    scores = score_labels(noisy, rows, read_classes(layout.classes)).scores  # every image, cached features
    k = 2 * len(planted)
    top = scores.sort_values(["quality", "image_id"]).head(k)
    hits = int(top["path"].isin(planted).sum())
    flagged = pd.read_csv(layout.label_issues)
    flagged_hits = int(flagged["path"].isin(planted).sum())

    exclude = root / "exclude.txt"
    exclude.write_text("".join(f"{p}\n" for p in top["path"]), encoding="utf-8")
    excluded = make_params(
        name, root / "noisy_src", root / "excluded", predefined_file=str(split_csv), exclude=str(exclude)
    )
    return {
        "dataset": name,
        "scored": result.scored,
        "planted": len(planted),
        "k": k,
        "precision": hits / k,
        "recall": hits / len(planted),
        "flagged": len(flagged),
        "flagged_recall": flagged_hits / len(planted),
        "seconds": seconds,
        "noisy": accuracy(noisy),
        "excluded": accuracy(excluded),
        "clean": accuracy(clean_params),
    }


def fmt(acc: dict[str, float]) -> str:
    return f"{acc['accuracy']:.3f} ({acc['accuracy_ci_low']:.3f}–{acc['accuracy_ci_high']:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--rate", type=float, default=0.05)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-label-issues-") as tmp:
        for name in args.datasets:
            results.append(run_dataset(name, Path(tmp) / name, args.rate))
            print(json.dumps(results[-1], indent=1))
    header = [
        "dataset",
        "train+val scored",
        "planted flips",
        "k",
        "precision@k",
        "recall@k",
        "cleanlab flagged (recall)",
        "stage s",
        "test acc noisy",
        "excluding top-k",
        "clean labels",
    ]
    table = markdown_table(
        header,
        [
            [
                r["dataset"],
                r["scored"],
                r["planted"],
                r["k"],
                f"{r['precision']:.2f}",
                f"{r['recall']:.2f}",
                f"{r['flagged']} ({r['flagged_recall']:.2f})",
                f"{r['seconds']:.1f}",
                fmt(r["noisy"]),
                fmt(r["excluded"]),
                fmt(r["clean"]),
            ]
            for r in results
        ],
    )
    body = (
        f"`bench/bench_label_issues.py`: {args.rate:.0%} of the train and val images of a copy moved into "
        "another class's folder (the test split untouched, every image kept in its split); "
        "`stages.label_issues` with its defaults (5 grouped folds, linear heads on EfficientNet-Lite0 "
        "features at 224 px, CPU). precision/recall@k: planted flips among the k = 2 x planted images of "
        "lowest label quality. cleanlab flagged: the size of `reports/label_issues.csv` and the share of "
        "the flips in it. Test accuracy (95 % bootstrap interval) of a linear probe (train defaults, no "
        "augmented views) on the noisy labels, after `split.exclude` of the top k, and on the clean labels. "
        "stage s: the label_issues stage, features computed (a cold feature cache).\n\n" + table
    )
    write_section(SECTION, body)
    print(body)


if __name__ == "__main__":
    main()
