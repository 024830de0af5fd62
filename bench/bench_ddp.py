"""Classifier DDP on CPU: ``train.distributed.nproc`` 1 vs 2 on hymenoptera (gloo).

Each run is the real stage command (``python -m stages.train --params ...``): the 2-process run
relaunches itself under torchrun. The data is prepared once; every run trains from a cold run
cache with the same global batch. Images/s is rank 0's per-epoch log time (train + sharded
validation) over the train split; wall is the whole command (interpreter and torchrun start-up
included). Runs alternate (1, 2, 1, 2, ...) so load from other processes hits both sides.

    uv run python bench/bench_ddp.py [--repeats 2] [--epochs 2] [--image-size 128] [--configs 1x2 1x1 2x1]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO_ROOT, SHARED_DATASETS, markdown_table, write_section
from stages import augment, ingest, split, validate
from stages.core.layout import Layout
from stages.core.params import Params, parse_params

SECTION = "DDP on CPU"
EPOCH_LINE = re.compile(r"epoch (\d+): train loss .*, \d+ trainable, ([\d.]+) s$", re.M)


def run_params(work: Path, run: str, nproc: int, threads: int, args: argparse.Namespace) -> Params:
    raw: dict[str, Any] = {
        "data": {"source": str(SHARED_DATASETS / "hymenoptera"), "format": "auto", "task": "classify"},
        "paths": {k: str(work / k) for k in ("interim", "processed")}
        | {k: str(work / run / k) for k in ("models", "reports", "cache")},  # each run cold
        "validate": {"workers": 2},
        "train": {
            "backbone": "efficientnet_lite0",
            "strategy": "full",
            "image_size": args.image_size,
            "epochs": args.epochs,
            "batch_size": 32,
            "device": "cpu",
            "threads": threads,
            "distributed": {"nproc": nproc},
        },
    }
    return parse_params(raw)


def train_once(params: Params, work: Path, name: str) -> dict[str, float]:
    file = work / f"{name}.yaml"
    file.write_text(yaml.safe_dump(params.model_dump(mode="json", by_alias=True)), encoding="utf-8")
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "stages.train", "--params", str(file)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(done.stdout[-3000:] + done.stderr[-3000:])
    epoch_s = [float(m.group(2)) for m in EPOCH_LINE.finditer(done.stdout + done.stderr)]
    layout = Layout(params.paths)
    n_train = int((pd.read_parquet(layout.splits)["split"] == "train").sum())
    metrics = json.loads((layout.train_log_dir / "metrics.json").read_text(encoding="utf-8"))
    return {
        "img_s": n_train / statistics.median(epoch_s),
        "wall": wall,
        "val_loss": metrics["val"]["loss"],
        "val_acc": metrics["val"]["accuracy"],
        "n_train": n_train,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Classifier DDP on CPU: nproc 1 vs 2 on hymenoptera.")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument(
        "--configs", nargs="+", default=["1x2", "1x1", "2x1"], help="processes x threads each"
    )
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    configs = [tuple(int(n) for n in c.split("x")) for c in args.configs]
    results: dict[tuple[int, ...], list[dict[str, float]]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepared = run_params(work, "prep", 1, 1, args)
        for stage in (ingest, validate, split, augment):
            stage.run(prepared)
        for repeat in range(args.repeats):
            for nproc, threads in configs:
                name = f"{nproc}x{threads}-r{repeat}"
                params = run_params(work, name, nproc, threads, args)
                results[nproc, threads].append(train_once(params, work, name))
                print(name, results[nproc, threads][-1], flush=True)
    base = statistics.median(r["img_s"] for r in results[configs[0]])
    rows = []
    for (nproc, threads), runs in results.items():
        img_s = statistics.median(r["img_s"] for r in runs)
        rows.append(
            [
                f"{nproc} x {threads} thread(s)",
                f"{img_s:.1f}",
                f"{img_s / base:.2f}",
                f"{statistics.median(r['wall'] for r in runs):.0f} s",
                " / ".join(f"{r['val_loss']:.4f}" for r in runs),
                " / ".join(f"{r['val_acc']:.3f}" for r in runs),
            ]
        )
    n_train = results[configs[0]][0]["n_train"]
    body = (
        f"`bench/bench_ddp.py --repeats {args.repeats} --epochs {args.epochs} --image-size "
        f"{args.image_size}`: hymenoptera ({n_train:.0f} train images), EfficientNet-Lite0 (offline "
        f"weights), strategy full, global batch 32, {args.epochs} epochs at {args.image_size} px, "
        "gloo on a 2-core CPU shared with other jobs; the stage command each time, runs alternating. "
        "Images/s: median of rank 0's epoch times (train + sharded validation); val figures per run.\n\n"
        + markdown_table(
            ["processes", "img/s", f"vs {args.configs[0]}", "stage wall", "final val loss", "final val acc"],
            rows,
        )
    )
    print(body)
    if not args.no_docs:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
