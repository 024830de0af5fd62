"""Classifier-training benchmarks: our loop against a bare timm + torch loop, and the
cached linear probe against re-running the frozen backbone every epoch.

Both comparisons run interleaved in one process on the same images, so the ratio holds on
a shared, noisy machine; each figure is the median of ``--repeats`` runs.

    uv run python bench/bench_train.py [--images 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

import stages  # noqa: F401  (offline environment)
from bench.common import SHARED_DATASETS, markdown_table, write_section
from stages.core.hashing import sha256_file
from stages.core.params import TrainSection
from stages.dataprep.torch_datasets import ImageDataset
from stages.engine.linear_probe import fit_linear_head
from stages.engine.loop import fine_tune
from stages.models.backbones import create_classifier, pooled_features
from stages.models.feature_cache import FeatureCache, FeatureRequest


def hymenoptera_rows(limit: int) -> tuple[pd.DataFrame, Path]:
    root = SHARED_DATASETS / "hymenoptera"
    files = sorted(p for p in root.glob("train/*/*") if p.suffix.lower() in {".jpg", ".jpeg"})
    picked = [files[i] for i in np.linspace(0, len(files) - 1, min(limit, len(files))).round().astype(int)]
    rows = pd.DataFrame(
        {
            "path": [p.relative_to(root).as_posix() for p in picked],
            "sha256": [sha256_file(p) for p in picked],
            "label": [p.parent.name for p in picked],
        }
    )
    return rows, root


def bare_epoch(model: nn.Module, dataset: ImageDataset, batch_size: int, lr: float) -> float:
    """The reference: a plain timm/torch loop over the same decoded, preprocessed images."""
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    started = time.perf_counter()
    for images, targets in loader:
        optimizer.zero_grad()
        loss_fn(model(images), targets).backward()
        optimizer.step()
    return time.perf_counter() - started


def ours_epoch(model: nn.Module, dataset: ImageDataset, cfg: TrainSection, state_dir: Path) -> float:
    started = time.perf_counter()
    fine_tune(
        model,
        dataset,
        None,
        cfg,
        seed=0,
        device=torch.device("cpu"),
        state_file=state_dir / f"{time.monotonic_ns()}.pt",
    )
    return time.perf_counter() - started


def loop_throughput(rows: pd.DataFrame, root: Path, repeats: int, batch_size: int) -> list[list[object]]:
    classes = sorted(rows["label"].unique())
    backbone = create_classifier("efficientnet_lite0", "offline", len(classes))
    dataset = ImageDataset(rows, root, classes, backbone.preprocessing)  # no augmentation in either
    cfg = TrainSection(
        strategy="full",
        epochs=1,
        batch_size=batch_size,
        lr=1e-4,
        backbone_lr_mult=1.0,
        weight_decay=0.0,
        schedule="constant",
    )
    bare, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        bare_epoch(backbone.model, dataset, batch_size, 1e-4)  # warm-up
        for _ in range(repeats):
            bare.append(bare_epoch(backbone.model, dataset, batch_size, 1e-4))
            ours.append(ours_epoch(backbone.model, dataset, cfg, Path(tmp)))
    n = len(dataset)
    bare_ips, ours_ips = n / statistics.median(bare), n / statistics.median(ours)
    return [
        [
            "training loop, full fine-tuning, 224 px, batch 32",
            f"{bare_ips:.1f} img/s (bare timm + torch)",
            f"{ours_ips:.1f} img/s (stages.engine.loop)",
            f"{ours_ips / bare_ips:.2f}",
            ">= 0.95",
        ]
    ]


def probe_speed(rows: pd.DataFrame, root: Path, repeats: int) -> list[list[object]]:
    classes = sorted(rows["label"].unique())
    index = {c: i for i, c in enumerate(classes)}
    y = rows["label"].map(index).to_numpy(dtype=np.int64)
    backbone = create_classifier("efficientnet_lite0", "offline", len(classes))
    cfg = TrainSection(epochs=1, batch_size=32)
    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(Path(tmp), backbone, "efficientnet_lite0", None, 0)
        requests = [FeatureRequest(root / p, s, 0) for p, s in zip(rows["path"], rows["sha256"], strict=True)]
        cache.get(requests, torch.device("cpu"), 32, "features")  # fill the cache once

        def cached_epoch() -> float:
            started = time.perf_counter()
            x = cache.get(requests, torch.device("cpu"), 32, "features")
            fit_linear_head(x, y, None, None, len(classes), cfg, 1, None, 0)
            return time.perf_counter() - started

        dataset = ImageDataset(rows, root, classes, backbone.preprocessing)
        head = nn.Linear(1280, len(classes))
        optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)

        def backbone_epoch() -> float:
            started = time.perf_counter()
            model = backbone.model.eval()
            for images, targets in DataLoader(dataset, batch_size=32, shuffle=True):
                with torch.no_grad():
                    features = pooled_features(model, images)
                optimizer.zero_grad()
                nn.functional.cross_entropy(head(features), targets).backward()
                optimizer.step()
            return time.perf_counter() - started

        cached = statistics.median(cached_epoch() for _ in range(repeats))
        live = statistics.median(backbone_epoch() for _ in range(repeats))
    return [
        [
            f"linear-probe epoch over {len(rows)} images",
            f"{live:.2f} s (frozen backbone every epoch)",
            f"{cached:.3f} s (feature cache)",
            f"{live / cached:.0f}x",
            ">= 10x",
        ]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows, root = hymenoptera_rows(args.images)
    table = loop_throughput(rows, root, args.repeats, 32) + probe_speed(rows, root, args.repeats)
    body = (
        f"`bench/bench_train.py --images {args.images} --repeats {args.repeats}`: "
        f"{len(rows)} hymenoptera training images, EfficientNet-Lite0 (offline weights), CPU, "
        "2 threads, medians; the two sides of each row alternate in one process.\n\n"
        + markdown_table(["what", "baseline", "ours", "ratio", "target"], table)
    )
    print(body)
    write_section("Classifier training loop", body)


if __name__ == "__main__":
    main()
