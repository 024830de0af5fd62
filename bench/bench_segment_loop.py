"""Segmentation training loop throughput: ``stages.engine.loop.fine_tune`` against a bare smp + torch loop.

Both loops train the same model object (``stages.models.segmenters.create_segmenter``: the smp
decoder over the offline EfficientNet-Lite encoder, as the train stage builds it) with the same
batch size, image size, loss (cross-entropy, ignore index 255: ours is the train stage's
``segmentation_loss``, the bare loop ``nn.CrossEntropyLoss``), optimiser (AdamW, constant LR,
every parameter training: ``full``) and the same data: one in-memory ``Tensors`` of
facade_seg train images already decoded, resized and normalised (``segment_input``) with their
masks rasterised (``semantic_masks.rasterise``, area order) and resized (``resize_mask``). So
decoding, augmentation and mask caching are out of both measurements, and the ratio is what our
loop adds per step: parameter groups and LR schedule, freezing, the epoch sampler, loss
bookkeeping and the end-of-epoch checkpoint. Our loop runs one epoch of ``--steps`` batches
with no val set (as the train stage's path does per epoch, less validation). The two loops
alternate in one process (a warm-up of each first), and each figure is the median of
``--repeats`` runs, so the ratio holds on a shared, noisy machine.

    uv run --frozen python -m bench.bench_segment_loop [--steps 8] [--batch 8] [--image-size 128]
        [--repeats 5] [--threads N] [--no-docs]

Raw result: ``bench/results/segment_loop.json``; the table goes into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

import stages  # noqa: F401  (offline environment)
from bench.common import REPO_ROOT, SHARED_DATASETS, markdown_table, write_section
from stages.core.params import SegmenterSection, TrainSection
from stages.dataprep.segment_preprocess import resize_mask, segment_input
from stages.dataprep.semantic_masks import IGNORE_INDEX, rasterise, segment_classes

SECTION = "Segmentation training loop throughput (ours vs bare smp + torch)"
SOURCE = SHARED_DATASETS / "facade_seg" / "train"
RESULTS = REPO_ROOT / "bench" / "results" / "segment_loop.json"
TARGET_RATIO = 0.95
LR = 1e-4


class Tensors(Dataset):
    """In-memory (image, mask) pairs; takes a plain index (bare loop) or the ``EpochSampler``'s
    (index, epoch) key (our loop), as the stages' datasets do."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor) -> None:
        self.images, self.masks = images, masks

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i = key[0] if isinstance(key, tuple) else key
        return self.images[i], self.masks[i]


def read_coco() -> tuple[dict[str, Any], list[str]]:
    """facade_seg's train COCO file and the model classes (background, then the used categories)."""
    doc = json.loads((SOURCE / "_annotations.coco.json").read_text(encoding="utf-8"))
    names = {c["id"]: c["name"] for c in doc["categories"]}
    used = sorted({a["category_id"] for a in doc["annotations"]})
    return doc, segment_classes(list(dict.fromkeys(names[i] for i in used)))


def load_tensors(
    doc: dict[str, Any], classes: list[str], n: int, size: int, mean: list[float], std: list[float]
) -> Tensors:
    """The first ``n`` facade_seg train images (sorted by name) as normalised tensors + long masks."""
    names = {c["id"]: c["name"] for c in doc["categories"]}
    index = {name: i for i, name in enumerate(classes)}
    images = sorted(doc["images"], key=lambda i: i["file_name"])[:n]
    if len(images) < n:
        raise SystemExit(f"{SOURCE}: only {len(images)} images, --steps x --batch asks for {n}")
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in doc["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    xs, ys = [], []
    for image in images:
        rows = [
            {
                "class_name": names[a["category_id"]],
                "kind": "polygon",
                "points": part,
                "counts": None,
                "z_order": 0,
            }
            for a in by_image.get(image["id"], [])
            for part in a["segmentation"]
        ]
        shapes = pd.DataFrame(rows, columns=["class_name", "kind", "points", "counts", "z_order"])
        mask = rasterise(shapes, image["height"], image["width"], index, "area")
        with Image.open(SOURCE / image["file_name"]) as im:
            pixels = np.asarray(im.convert("RGB"))
        xs.append(torch.from_numpy(segment_input(pixels, size, mean, std)))
        ys.append(torch.from_numpy(resize_mask(mask, size).astype(np.int64)))
    return Tensors(torch.stack(xs), torch.stack(ys))


def bare_epoch(model: nn.Module, dataset: Tensors, batch: int) -> float:
    """The reference: a plain torch loop over the same tensors (shuffled, every parameter training)."""
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(0))
    for parameter in model.parameters():
        parameter.requires_grad = True
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    loss_fn = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    model.train()
    started = time.perf_counter()
    for images, targets in loader:
        optimizer.zero_grad()
        loss_fn(model(images), targets).backward()
        optimizer.step()
    return time.perf_counter() - started


def ours_epoch(model: nn.Module, dataset: Tensors, cfg: TrainSection, state_dir: Path) -> float:
    """One epoch of the stages' loop (no val set) with the train stage's loss, from a fresh state file."""
    from stages.engine.loop import fine_tune
    from stages.engine.segmentation.trainer import segmentation_loss

    started = time.perf_counter()
    fine_tune(
        model,
        dataset,
        None,
        cfg,
        seed=0,
        device=torch.device("cpu"),
        state_file=state_dir / f"{time.monotonic_ns()}.pt",
        loss_fn=segmentation_loss(SegmenterSection(), 0.0, None, torch.device("cpu")),  # ce, ignore 255
        drop_last=True,
    )
    return time.perf_counter() - started


def measure(args: argparse.Namespace) -> dict[str, Any]:
    try:
        from stages.models.segmenters import create_segmenter
    except ImportError as exc:
        raise SystemExit(f"stages.models.segmenters is not there yet ({exc}); nothing to measure.") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.steps * args.batch
    doc, classes = read_coco()
    num_classes = len(classes)
    build = create_segmenter(args.backbone, "offline", args.decoder, num_classes, args.image_size)
    prep = build.preprocessing
    dataset = load_tensors(doc, classes, n, args.image_size, list(prep["mean"]), list(prep["std"]))
    model = build.model
    cfg = TrainSection.model_validate(
        {
            "backbone": args.backbone,
            "strategy": "full",
            "epochs": 1,
            "batch_size": args.batch,
            "lr": LR,
            "backbone_lr_mult": 1.0,
            "weight_decay": 0.0,
            "schedule": "constant",
            "device": "cpu",
        }
    )
    bare, ours = [], []
    with tempfile.TemporaryDirectory(prefix="bench_segment_loop_") as tmp:
        bare_epoch(model, dataset, args.batch)  # warm-up of both
        ours_epoch(model, dataset, cfg, Path(tmp))
        for repeat in range(args.repeats):
            bare.append(bare_epoch(model, dataset, args.batch))
            ours.append(ours_epoch(model, dataset, cfg, Path(tmp)))
            print(f"repeat {repeat + 1}: bare {bare[-1]:.2f} s, ours {ours[-1]:.2f} s", flush=True)
    bare_ips, ours_ips = n / statistics.median(bare), n / statistics.median(ours)
    return {
        "config": {
            "steps": args.steps,
            "batch": args.batch,
            "image_size": args.image_size,
            "backbone": args.backbone,
            "decoder": args.decoder,
            "classes": num_classes,
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
            "cpus": len(os.sched_getaffinity(0)),
        },
        "bare_s": [round(t, 3) for t in bare],
        "ours_s": [round(t, 3) for t in ours],
        "bare_images_per_s": round(bare_ips, 2),
        "ours_images_per_s": round(ours_ips, 2),
        "ratio": round(ours_ips / bare_ips, 3),
        "target": TARGET_RATIO,
    }


def render(result: dict[str, Any]) -> str:
    cfg = result["config"]
    row: list[object] = [
        f"{cfg['decoder']} + {cfg['backbone']}, full, {cfg['image_size']} px, batch {cfg['batch']}, "
        f"{cfg['steps']} steps",
        f"{result['bare_images_per_s']:.1f} img/s (bare smp + torch)",
        f"{result['ours_images_per_s']:.1f} img/s (stages.engine.loop)",
        f"{result['ratio']:.2f}",
        f">= {result['target']}",
    ]
    intro = (
        f"`python -m bench.bench_segment_loop --steps {cfg['steps']} --batch {cfg['batch']} "
        f"--image-size {cfg['image_size']} --repeats {cfg['repeats']}`: CPU ({cfg['cpus']} cores, "
        f"{cfg['threads']} torch threads), the same model object, loss (cross-entropy, ignore 255), "
        "AdamW at a constant LR and the same pre-decoded in-memory tensors (facade_seg train images, "
        "normalised, masks rasterised) for both loops, so only the loop itself differs; ours includes "
        "its epoch-end checkpoint. Median of the repeats, the two loops alternating."
    )
    return intro + "\n\n" + markdown_table(["what", "baseline", "ours", "ratio", "target"], [row])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="batches per timed epoch")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--decoder", default="unet", choices=["unet", "fpn", "deeplabv3plus"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-docs", action="store_true", help="print only; no results file, no docs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    result = measure(args)
    body = render(result)
    print(body)
    if args.no_docs:
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    write_section(SECTION, body)


if __name__ == "__main__":
    main()
