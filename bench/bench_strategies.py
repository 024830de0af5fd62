"""Fine-tuning strategy study on real data: every strategy, the same budget, several seeds.

Runs ``pipelines.strategy_study`` (the train and evaluate stages, in-process) on hymenoptera
(its ``val/`` folder, 153 images, held out as the test set) and on eth80_subset (split by
object, ``split.groups.rule: parent``, as in bench/leakage_cost.py). The split is made once per
dataset with seed 42; the seeds vary training only.

    .venv/bin/python bench/bench_strategies.py [--datasets hymenoptera eth80] [--seeds 0 1 2]
        [--epochs 2] [--probe-epochs 30] [--image-size 64] [--backbone efficientnet_lite0]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import stages  # noqa: F401  (offline environment)
from bench.common import SHARED_DATASETS, write_section
from stages import augment, ingest, split, validate
from stages.core.params import Params, parse_params

SECTION = "Fine-tuning strategy study (several seeds)"
# Dataset -> (source folder, split section): eth80 is split by object (the group), as in leakage_cost.
DATASETS: dict[str, tuple[Path, dict[str, Any]]] = {
    "hymenoptera": (SHARED_DATASETS / "hymenoptera", {}),
    "eth80": (
        SHARED_DATASETS / "eth80_subset" / "images",
        {"groups": {"rule": "parent"}, "near_duplicates": {"enabled": False}},
    ),
}


def dataset_params(name: str, work: Path, **sections: dict[str, Any]) -> Params:
    """Repository defaults, CPU, EfficientNet-Lite0, clean views only; every path under ``work``."""
    source, split_cfg = DATASETS[name]
    raw: dict[str, Any] = {
        "data": {"source": str(source), "format": "auto", "task": "classify"},
        "paths": {k: str(work / k) for k in ("interim", "processed", "models", "reports", "cache")},
        "validate": {"workers": 2},
        "split": split_cfg,
        "train": {"backbone": "efficientnet_lite0", "aug_views": 0, "device": "cpu"},
        "evaluate": {"bootstrap": 1000},
    }
    for key, values in sections.items():
        raw.setdefault(key, {}).update(values)
    return parse_params(raw)


def prepare(params: Params) -> None:
    for stage in (ingest, validate, split, augment):
        stage.run(params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2, help="end-to-end epochs")
    parser.add_argument("--probe-epochs", type=int, default=30, help="linear probe / lp_ft probe epochs")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    from pipelines import strategy_study

    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for name in args.datasets:
            started = time.perf_counter()
            params = dataset_params(
                name,
                work / name,
                train={"backbone": args.backbone, "image_size": args.image_size},
                tune={
                    "study": {
                        "seeds": args.seeds,
                        "epochs": args.epochs,
                        "probe_epochs": args.probe_epochs,
                    }
                },
            )
            prepare(params)
            result = strategy_study.run(params)
            minutes = (time.perf_counter() - started) / 60
            print(result.table, flush=True)
            parts.append(f"**{name}** ({minutes:.1f} min including ingest/validate/split):\n\n{result.table}")
    body = "\n\n".join(
        [
            f"`bench/bench_strategies.py --seeds {' '.join(map(str, args.seeds))} --epochs {args.epochs} "
            f"--probe-epochs {args.probe_epochs} --image-size {args.image_size} --backbone {args.backbone}`, "
            "which runs `pipelines.strategy_study` (the train and evaluate stages in-process): CPU, 2 cores "
            "shared with other jobs; every strategy gets "
            f"{args.epochs} end-to-end epochs at {args.image_size} px (lp_ft after its probe phase), the "
            f"linear probe and lp_ft's probe phase {args.probe_epochs} epochs on cached clean-view features "
            "(`aug_views: 0`); other train params are the repository defaults (AdamW, lr 0.001, cosine, "
            "early stopping on val loss). Test accuracy over the seeds (training randomness only: one split "
            "per dataset, made with seed 42). hymenoptera: its `val/` folder (153 images) is the test set, "
            "val carved from train. eth80_subset: split by object (`split.groups.rule: parent`, "
            "near-duplicate search off), 0.7/0.15/0.15. Train wall is the median over seeds (the first "
            "linear-probe run also computes the feature cache).",
            *parts,
        ]
    )
    print(body)
    if not args.no_docs:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
