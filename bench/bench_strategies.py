"""Time to accuracy on hymenoptera: the whole pipeline (ingest to evaluate) per strategy.

The dataset's own ``val/`` folder (153 images) is the held-out test set; the split stage
carves the validation subset for model selection from ``train/``. Every strategy runs the
real stage functions with the repository's default params plus the overrides in the table.

    SHARED_DATASETS=../shared/datasets uv run python bench/bench_strategies.py [--strategies ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

import stages  # noqa: F401  (offline environment)
from bench.common import REPO_ROOT, SHARED_DATASETS, markdown_table, write_section
from stages import augment, evaluate, ingest, split, train, validate
from stages.params import parse_params

# End-to-end strategies get the same small budget of epochs; the probes train on the cache.
OVERRIDES: dict[str, dict] = {
    "linear_probe": {},
    "lp_ft": {"epochs": 3},
    "partial": {"epochs": 3},
    "gradual": {"epochs": 3, "unfreeze_every": 1},
    "discriminative": {"epochs": 3},
    "full": {"epochs": 3},
}


def run_pipeline(strategy: str, workdir: Path, backbone: str) -> dict:
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))
    raw["data"]["source"] = str(SHARED_DATASETS / "hymenoptera")
    raw["paths"] = {k: str(workdir / k) for k in ("interim", "processed", "models", "reports", "cache")}
    raw["train"].update({"strategy": strategy, "backbone": backbone, "device": "cpu"})
    raw["train"].update(OVERRIDES[strategy])
    params = parse_params(raw)
    timings = {}
    started = time.perf_counter()
    for stage in (ingest, validate, split, augment, train, evaluate):
        t = time.perf_counter()
        result = stage.run(params)
        timings[stage.__name__.split(".")[-1]] = time.perf_counter() - t
        if stage is train:
            trainable = result.trainable_params
    metrics = json.loads((workdir / "reports" / "metrics.json").read_text())
    return {
        "strategy": strategy,
        "accuracy": metrics["accuracy"],
        "ci": (metrics["accuracy_ci_low"], metrics["accuracy_ci_high"]),
        "images": metrics["images"],
        "wall": time.perf_counter() - started,
        "train": timings["train"],
        "trainable": trainable,
        "overrides": OVERRIDES[strategy],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--strategies", nargs="*", default=list(OVERRIDES))
    parser.add_argument("--backbone", default="efficientnet_lite0")
    args = parser.parse_args()
    rows = []
    for strategy in args.strategies:
        with tempfile.TemporaryDirectory() as tmp:
            result = run_pipeline(strategy, Path(tmp), args.backbone)
        print(json.dumps(result))
        rows.append(
            [
                strategy,
                json.dumps(result["overrides"]) if result["overrides"] else "defaults",
                f"{result['accuracy']:.3f} [{result['ci'][0]:.3f}, {result['ci'][1]:.3f}]",
                result["images"],
                f"{result['wall']:.0f} s",
                f"{result['train']:.0f} s",
                f"{result['trainable']:,}",
            ]
        )
    body = (
        f"`bench/bench_strategies.py --backbone {args.backbone}`: hymenoptera, its `val/` folder "
        "(153 images) held out as the test set, the whole pipeline in-process from a cold cache "
        "(ingest, validate, split, augment, train, evaluate), CPU (2 cores, shared machine), one run "
        "each, seed 42. Accuracy with its 95% bootstrap interval; trainable parameters at the best "
        "epoch (gradual unfreezes as it goes); end-to-end strategies get 3 epochs at 224 px.\n\n"
        + markdown_table(
            [
                "strategy",
                "train overrides",
                "test accuracy",
                "test images",
                "pipeline wall",
                "train wall",
                "trainable params",
            ],
            rows,
        )
    )
    print(body)
    write_section(f"Fine-tuning strategies on hymenoptera ({args.backbone})", body)


if __name__ == "__main__":
    main()
