"""Augmentation throughput: the saved policy on real photos at 224 px, against the bare library.

What it measures, on ``--images`` hymenoptera training photos decoded and resized to 224 x 224
once (so decoding is not part of the figures), for the ``default`` preset:

- the bare albumentations ``Compose`` call against our ``augment_image`` wrapper (which gives
  the Compose a fresh random stream per image), with the same random draws, so the ratio is
  the wrapper's overhead and not luck in which transforms fired;
- images/s in one process, and through a torch ``DataLoader`` with 0 workers (in-process) and
  with ``os.cpu_count()`` persistent workers (as the fine-tuning trainer can use), steady state;
- the share of a training step: augmenting a batch of 32 against an EfficientNet-Lite0
  forward + backward + SGD step on 32 x 3 x 224 x 224 on the CPU.

The machine these run on is shared with other jobs, so:
- every measurement is taken once per round, rounds repeat ``--repeats`` times, and the
  tables show medians over rounds: all figures of one table saw the same load;
- single-process figures use CPU time (``time.process_time``), which other processes barely
  disturb; DataLoader figures need wall time and move with the machine's load (printed);
- torch runs on one intra-op thread (DataLoader workers do anyway): on 2 busy cores, torch's
  two spinning OpenMP threads made even collating one batch a hundred times slower (96 ms
  against 0.8 ms), which would measure contention, not augmentation.

    uv run python bench/bench_augment.py [--images 64] [--repeats 5] [--passes 8] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import albumentations as A
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import stages  # noqa: F401  (offline environment)
from bench.common import SHARED_DATASETS, markdown_table, write_section
from stages.core.params import AugmentSection
from stages.dataprep.augmentation import PRESETS, augment_image, build_policy, reseed
from stages.dataprep.imaging import load_rgb

SIZE = 224
BATCH = 32


def load_images(count: int) -> list[np.ndarray]:
    """Evenly spaced training photos, decoded with the pipeline's reader and resized to SIZE."""
    files = sorted((SHARED_DATASETS / "hymenoptera").glob("train/*/*.jpg"))
    if not files:
        sys.exit(f"no images under {SHARED_DATASETS / 'hymenoptera'}; set SHARED_DATASETS.")
    picked = [files[i] for i in np.linspace(0, len(files) - 1, min(count, len(files))).round().astype(int)]
    return [np.array(load_rgb(f).resize((SIZE, SIZE), Image.BILINEAR)) for f in picked]


def cpu_seconds(fn: Callable[[], object]) -> float:
    started = time.process_time()
    fn()
    return time.process_time() - started


def wall_seconds(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


class AugmentedArrays(Dataset):
    """What a DataLoader worker does for augmentation alone: reseed, augment, hand back a tensor."""

    def __init__(self, images: list[np.ndarray], policy: A.Compose, length: int) -> None:
        self.images = images
        self.policy = policy
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(augment_image(self.policy, self.images[i % len(self.images)], seed=i))


def loader_epoch(
    images: list[np.ndarray], policy: A.Compose, workers: int, length: int
) -> Callable[[], None]:
    """One epoch through a DataLoader; the first call (warm-up) starts persistent workers."""
    loader = DataLoader(
        AugmentedArrays(images, policy, length),
        batch_size=BATCH,
        num_workers=workers,
        persistent_workers=workers > 0,
    )

    def epoch() -> None:
        for _ in loader:
            pass

    epoch()
    return epoch


def training_step() -> Callable[[], None]:
    """EfficientNet-Lite0 forward + backward + SGD step on one batch (random weights and inputs:
    the cost does not depend on them)."""
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=2).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    batch = torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    target = torch.zeros(BATCH, dtype=torch.long)

    def step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(batch), target).backward()
        optimizer.step()

    step()  # warm-up (allocator, kernels)
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="rounds; tables show medians over rounds")
    parser.add_argument("--passes", type=int, default=8, help="passes over the images per measurement")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()

    torch.set_num_threads(1)
    images = load_images(args.images)
    n = len(images)
    calls = n * args.passes
    cores = os.cpu_count() or 1
    policies = {
        name: build_policy(AugmentSection(preset=name), seed=0) for name in ("light", "default", "heavy")
    }
    policy = policies["default"]

    # The bare call gets exactly ours' random draws (so both do the same work), from generators
    # made before the clock starts; handing them over is an attribute assignment per transform.
    streams = [(np.random.default_rng(i), random.Random(i)) for i in range(calls)]

    def bare() -> None:
        for i in range(calls):
            policy.set_random_state(*streams[i])
            policy(image=images[i % n])

    def ours(p: A.Compose = policy) -> None:
        for i in range(calls):
            augment_image(p, images[i % n], seed=i)

    def reseed_only() -> None:
        for i in range(calls):
            reseed(policy, i)

    def augment_batch() -> None:
        for i in range(BATCH):
            augment_image(policy, images[i % n], seed=i)

    measures: dict[str, Callable[[], float]] = {
        "bare": lambda: cpu_seconds(bare) / calls,
        "ours": lambda: cpu_seconds(ours) / calls,
        "reseed": lambda: cpu_seconds(reseed_only) / calls,
        **{f"preset {k}": (lambda p=p: cpu_seconds(lambda: ours(p)) / calls) for k, p in policies.items()},
        "augment batch": lambda: cpu_seconds(augment_batch),
    }
    step = training_step()
    measures["step"] = lambda: cpu_seconds(step)
    for workers in (0, cores):
        epoch = loader_epoch(images, policy, workers, calls)
        measures[f"loader {workers}"] = lambda epoch=epoch: wall_seconds(epoch) / calls
    ours(), bare()  # warm-up

    samples: dict[str, list[float]] = defaultdict(list)
    loads = []
    for _ in range(args.repeats):
        for name, measure in measures.items():
            samples[name].append(measure())
        loads.append(os.getloadavg()[0])
    med = {name: statistics.median(values) for name, values in samples.items()}
    share = med["augment batch"] / (med["augment batch"] + med["step"])
    ratios = [o / b for o, b in zip(samples["ours"], samples["bare"], strict=True)]

    rows = [
        ["bare `Compose(image=...)`, 1 process (CPU time)", f"{1 / med['bare']:,.0f}", "1.00"],
        [
            "our `augment_image`, 1 process (CPU time)",
            f"{1 / med['ours']:,.0f}",
            f"{med['ours'] / med['bare']:.2f} (rounds: {min(ratios):.2f}-{max(ratios):.2f})",
        ],
        [
            f"of which the reseed: {med['reseed'] * 1e6:,.0f} µs per image",
            "",
            f"{med['reseed'] / med['bare']:.2f}",
        ],
        ["`DataLoader`, 0 workers (wall time)", f"{1 / med['loader 0']:,.0f}", ""],
        [f"`DataLoader`, {cores} workers = all cores (wall time)", f"{1 / med[f'loader {cores}']:,.0f}", ""],
    ]
    table = markdown_table(["default preset, 224 x 224 px", "images/s", "time vs bare"], rows)
    step_rows = [
        [f"augment {BATCH} images, default preset", f"{med['augment batch'] * 1000:,.0f} ms"],
        [f"EfficientNet-Lite0 forward + backward + SGD step, batch {BATCH}", f"{med['step'] * 1000:,.0f} ms"],
        ["augmentation / (augmentation + step), not overlapped", f"{share:.1%}"],
    ]
    step_table = markdown_table(["one training step at 224 px, 1 thread (CPU time)", "median"], step_rows)
    preset_table = markdown_table(
        ["preset, 1 process (CPU time)", "images/s"],
        [[f"`{k}` ({len(PRESETS[k])} transforms)", f"{1 / med[f'preset {k}']:,.0f}"] for k in policies],
    )
    speedup = med["loader 0"] / med[f"loader {cores}"]
    if speedup > 1.1:
        workers_note = f"{cores} DataLoader workers ran {speedup:.1f}x the in-process rate."
    else:
        workers_note = (
            f"{cores} DataLoader workers ran {speedup:.1f}x the in-process rate: the other jobs held the "
            "cores, so the workers added inter-process copies without free cores to run on."
        )
    command = f"bench/bench_augment.py --images {n} --repeats {args.repeats} --passes {args.passes}"
    body = f"""Script: `{command}`.
{n} hymenoptera training photos decoded and resized to 224 x 224 once (decoding is not in
these figures); albumentations {A.__version__}, torch {torch.__version__} on 1 intra-op thread;
{cores} CPU cores shared with other jobs (1-minute load average {min(loads):.1f} to
{max(loads):.1f} during the rounds). Medians of {args.repeats} rounds; each round measures
every row once ({calls} images per row), so the rows of a table saw the same load.
Single-process rows are CPU time; DataLoader rows are wall time. The bare call gets the same
random draws as ours, so both do the same work.

{table}

{step_table}

{preset_table}

Reading: our wrapper costs {med["ours"] / med["bare"]:.2f}x the bare call; the reseed that
makes a view depend only on its image and seed is {med["reseed"] * 1e6:,.0f} µs per image.
Augmenting a batch of {BATCH} takes {share:.1%} of a CPU fine-tuning step even without overlap,
so on a CPU the model, not the augmentation, sets the pace (and DataLoader workers overlap it
with the step). {workers_note} On a GPU the step is one to two orders of magnitude shorter, so
augmentation and decoding set the pace there: give the DataLoader every free core.
"""
    print(body)
    if not args.no_write:
        write_section("Augmentation throughput", body)
        print("wrote the 'Augmentation throughput' section of docs/benchmarks.md")


if __name__ == "__main__":
    main()
