"""The statistics of the metric gate: a paired bootstrap of the difference, McNemar's exact test,
the non-inferiority rule, and the smallest drop a test set can detect (docs/gate.md).

Both runs scored the same images, so the question is about the difference image by image:
one set of resampled image indices is applied to both runs (``classification.resample_weights``
with the base's seed), each metric is recomputed on both from the per-image records
(``stages/metrics/paired.py``), and the percentiles of new minus base give the interval. What a
resample does not change (the images both runs got right) cancels, which is what makes the
paired interval far narrower than either run's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stages.metrics.classification import resample_weights
from stages.metrics.paired import ClassifyRecords, Records

BLOCK = 250  # resamples per block (memory: BLOCK x images weights, and detection's matches)
# Detection: the detectable-drop search recomputes mAP for about 2 log2(images) degraded copies,
# so it uses only the first resamples (a whole bootstrap of mAP costs about 1 s per 1000
# detections on one CPU core); the verdict itself always uses them all.
SEARCH_RESAMPLES_DETECT = 200
EPSILON = 1e-9  # differences of values rounded to 6 decimals: equal must compare equal

# Verdicts of the non-inferiority rule, in gain units (new - base, sign-flipped when lower is better).
PASS, REGRESSION, INCONCLUSIVE_FAIL, INCONCLUSIVE_PASS = (
    "pass",
    "regression",
    "inconclusive-fail",
    "inconclusive-pass",
)


@dataclass(frozen=True)
class Paired:
    """One metric on both runs: point values, the point difference and its paired interval."""

    base: float
    new: float
    low: float | None  # percentile interval of new - base (None without resamples)
    high: float | None

    @property
    def change(self) -> float:
        return self.new - self.base


def _samples(records: Records, weights: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, len(weights), BLOCK):
        for name, values in records.values(weights[start : start + BLOCK], names).items():
            parts[name].append(values)
    return {name: np.concatenate(v) if v else np.zeros(0) for name, v in parts.items()}


def _interval(differences: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    kept = differences[~np.isnan(differences)]
    if not len(kept):
        return None, None
    alpha = (1 - confidence) / 2
    return float(np.quantile(kept, alpha)), float(np.quantile(kept, 1 - alpha))


class Bootstrap:
    """The paired bootstrap of one base run: its resampled values are computed once and reused
    for the new run and for every degraded copy the detectable-drop search tries."""

    def __init__(self, base: Records, names: Sequence[str], resamples: int, confidence: float, seed: int):
        self.base, self.names, self.confidence = base, list(names), confidence
        n = len(base.ids)
        self.weights = resample_weights(n, resamples, seed) if resamples else np.zeros((0, n))
        self.ones = np.ones((1, n))
        self.base_point = {k: float(v[0]) for k, v in base.values(self.ones, self.names).items()}
        self.base_samples = _samples(base, self.weights, self.names)

    def first(self, resamples: int) -> Bootstrap:
        """The same bootstrap cut to its first ``resamples`` resamples (nothing recomputed)."""
        cut = object.__new__(Bootstrap)
        cut.__dict__.update(self.__dict__)
        cut.weights = self.weights[:resamples]
        cut.base_samples = {k: v[:resamples] for k, v in self.base_samples.items()}
        return cut

    def compare(self, new: Records, names: Sequence[str] | None = None) -> dict[str, Paired]:
        names = self.names if names is None else list(names)
        point = {k: float(v[0]) for k, v in new.values(self.ones, names).items()}
        samples = _samples(new, self.weights, names)
        out = {}
        for name in names:
            low, high = _interval(samples[name] - self.base_samples[name], self.confidence)
            out[name] = Paired(self.base_point[name], point[name], low, high)
        return out


def rule(paired: Paired, tolerance: float, higher: bool, intervals: bool = True) -> str:
    """The non-inferiority rule on the gain (the change, sign-flipped when lower is better):
    pass when the whole interval is at or above ``-tolerance``, regression when it is entirely
    below; otherwise inconclusive, failing when the point gain itself is below ``-tolerance``.
    Without an interval the point gain decides (pass or regression)."""
    sign = 1.0 if higher else -1.0
    gain = sign * paired.change
    if not intervals or paired.low is None or paired.high is None:
        return PASS if gain >= -tolerance - EPSILON else REGRESSION
    low, high = sorted((sign * paired.low, sign * paired.high))
    if low >= -tolerance - EPSILON:
        return PASS
    if high < -tolerance - EPSILON:
        return REGRESSION
    return INCONCLUSIVE_FAIL if gain < -tolerance - EPSILON else INCONCLUSIVE_PASS


@dataclass(frozen=True)
class McNemar:
    newly_wrong: int  # right on the base, wrong here
    newly_right: int
    p_value: float


def mcnemar(base: ClassifyRecords, new: ClassifyRecords) -> McNemar:
    """McNemar's exact test on the images the two runs disagree about (two-sided binomial)."""
    from scipy.stats import binomtest

    right_before, right_now = base.label == base.prediction, new.label == new.prediction
    wrong, right = int((right_before & ~right_now).sum()), int((~right_before & right_now).sum())
    p = binomtest(right, wrong + right, 0.5).pvalue if wrong + right else 1.0
    return McNemar(wrong, right, float(p))


def detectable_drops(
    bootstrap: Bootstrap, rules: dict[str, tuple[float, bool]], seed: int
) -> dict[str, tuple[float, int] | None]:
    """Per metric, the smallest drop of its point value that this test set flags as a regression.

    A degraded copy of the base loses ``k`` images it got right (classify: predicted as another
    class; detect: every detection of the image misses), chosen in a seeded order; the smallest
    ``k`` whose paired interval lies entirely below ``-tolerance`` is found by bisection, and
    (the metric's drop at that ``k``, ``k``) is returned (detection: on the first
    ``SEARCH_RESAMPLES_DETECT`` resamples). None: even losing every image would not be flagged,
    or the metric does not move when images are lost (log loss, ECE: per-image losses and
    confidences are kept). ``rules``: name -> (tolerance, higher is better).
    """
    base = bootstrap.base
    if not isinstance(base, ClassifyRecords):
        bootstrap = bootstrap.first(SEARCH_RESAMPLES_DETECT)
    order = base.candidates(seed)
    moving = [n for n in rules if n not in ("log_loss", "ece")]
    cache: dict[int, dict[str, Paired]] = {}

    def at(k: int) -> dict[str, Paired]:
        if k not in cache:
            cache[k] = bootstrap.compare(base.degrade(order[:k]), moving)
        return cache[k]

    out: dict[str, tuple[float, int] | None] = dict.fromkeys(rules)
    if not len(order) or not len(bootstrap.weights):
        return out
    for name in moving:
        tolerance, higher = rules[name]
        flagged = lambda k, n=name, t=tolerance, h=higher: rule(at(k)[n], t, h) == REGRESSION  # noqa: E731
        if not flagged(len(order)):
            continue
        low, high = 0, len(order)  # flagged(high) holds; flagged(low) does not (k = 0 is the base)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if flagged(middle) else (middle, high)
        out[name] = (abs(at(high)[name].change), high)
    return out
