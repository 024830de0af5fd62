"""Bootstrap cost of the evaluate stage's metrics: the exact cases the metric tests check, timed here
because wall-clock limits do not belong in tests.

Classification: ``summarise`` on 150 images, 5 classes, top-3, 1000 resamples (the case of
tests/test_evaluate_metrics.py). Detection: ``bootstrap`` on 300 images, 3 classes, 1000 resamples
(tests/test_detect_evaluate.py). Each is set against the naive way, one metric call per resample,
estimated as 1000 x the median of one call (sklearn-based ``point_metrics``; torchmetrics' mAP).
Medians of ``--repeats`` runs, wall and CPU seconds of this process.

    uv run python bench/bench_evaluate.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("TQDM_DISABLE", "1")

import stages  # noqa: F401  (offline environment)
from bench.common import markdown_table, write_section
from stages.metrics import classification as cm
from stages.metrics import detection as dm
from tests.test_detect_evaluate import _random_case  # the tests' own synthetic cases
from tests.test_evaluate_metrics import _noisy

SECTION = "Evaluation bootstrap (bench/bench_evaluate.py)"
RESAMPLES = 1000


def wall_and_cpu(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``repeats`` calls (CPU time is steadier on a shared machine)."""
    wall, cpu = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return statistics.median(wall), statistics.median(cpu)


def classification_rows(repeats: int) -> list[list[object]]:
    y, p = _noisy(150, 5, seed=2)
    options = cm.Options(top_k=3, resamples=RESAMPLES)
    ours = wall_and_cpu(lambda: cm.summarise(y, p, list("abcde"), options), repeats)
    one = wall_and_cpu(lambda: cm.point_metrics(y, p, options), repeats)
    return [
        ["classification: `summarise`", 150, RESAMPLES, f"{ours[0]:.2f}", f"{ours[1]:.2f}"],
        ["classification: 1000 x `point_metrics` (estimate)", 150, RESAMPLES,
         f"{one[0] * RESAMPLES:.1f}", f"{one[1] * RESAMPLES:.1f}"],
    ]  # fmt: skip


def detection_rows(repeats: int) -> list[list[object]]:
    truths, predictions = _random_case(4, n_images=300)
    matches = dm.match_all(truths, predictions, ["a", "b", "c"])
    ours = wall_and_cpu(lambda: dm.bootstrap(matches, 0.25, RESAMPLES, 0.95, seed=42), repeats)
    one = wall_and_cpu(lambda: dm.torchmetrics_map(truths, predictions), repeats)
    return [
        ["detection: `bootstrap` (matching done once)", 300, RESAMPLES, f"{ours[0]:.2f}", f"{ours[1]:.2f}"],
        ["detection: 1000 x torchmetrics mAP (estimate)", 300, RESAMPLES,
         f"{one[0] * RESAMPLES:.0f}", f"{one[1] * RESAMPLES:.0f}"],
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = classification_rows(args.repeats) + detection_rows(args.repeats)
    table = markdown_table(["case", "images", "resamples", "wall s (median)", "CPU s (median)"], rows)
    print(table)
    body = (
        f"Measured by `bench/bench_evaluate.py` (`--repeats {args.repeats}`) on this 2-core machine while "
        "other work ran on it: medians of the runs, wall and CPU seconds of the process. The cases are "
        "the ones `tests/test_evaluate_metrics.py` and `tests/test_detect_evaluate.py` check for "
        "correctness; their former wall-clock limits (5 s and 30 s) now live here. The estimates are "
        "1000 x the median of one call, the cost of bootstrapping by recomputing each resample.\n\n" + table
    )
    write_section(SECTION, body)


if __name__ == "__main__":
    main()
