"""Stage ``split``: train/val/test without leakage, seeded, stratified, and audited.

Images that must not be separated are joined into split units: identical bytes (same
sha256), near-duplicates (perceptual hashes within ``split.near_duplicates.max_distance``,
found by ``stages.dataprep.near_duplicates``) and groups (``split.groups``,
``stages.dataprep.groups``). A unit
never crosses splits. scikit-learn's ``StratifiedGroupKFold`` deals the units into folds,
stratified on the label (detection: on the image's class set), and whole folds are then
allocated to train/val/test to match ``split.fractions``.

A predefined split (folders, a manifest column or ``split.predefined_file``) is honoured by
default. When it has only train and val, its val becomes the test set (held-out evaluation)
and val is carved from train, leakage-aware. Either way the audit lists every cross-split
pair of identical or near-duplicate images and every group found in two splits
(``reports/leakage.json`` and a contact sheet), and the stage fails when they exceed
``split.leakage``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from stages.core.errors import DataError
from stages.core.params import NearDuplicateSection, SplitSection
from stages.dataprep.groups import match_paths, read_path_mapping
from stages.dataprep.near_duplicates import (
    compute_hashes,
    connected_labels,
    edges_from_keys,
    near_duplicate_pairs,
)

log = logging.getLogger("stages.split")


SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
UNLABELLED = "(no label)"
NO_BOXES = "(no boxes)"
MAX_FOLDS = 20  # fold granularity 5 %: 0.7/0.15/0.15 is 14/3/3 folds
FRACTION_TOLERANCE = 0.005  # the fewest folds whose shares are this close to split.fractions
MIN_CLASS_SET_IMAGES = 10  # detection: rarer class sets stratify on their rarest class instead
PAIR_ID_COLUMNS = ["image_id_a", "image_id_b"]


@dataclass(frozen=True)
class SplitPlan:
    """What ``assign_splits`` decided."""

    splits: pd.DataFrame  # image_id, split; sorted by image_id
    units: pd.Series  # image_id -> split unit (images that must stay together share one)
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    predefined: bool = False  # the source's split was honoured (its sizes are the source's, not fractions)


# --- inputs to the split ---------------------------------------------------------------------


def predefined_from_file(manifest: pd.DataFrame, file: Path) -> pd.Series:
    """The split each manifest image has in ``file`` (CSV with ``path`` and ``split`` columns)."""
    mapping = read_path_mapping(file, "path", "split", "split.predefined_file")
    unknown = sorted({v for v in mapping.values() if v.lower() not in SPLIT_ALIASES})
    if unknown:
        raise DataError(
            f"{file}: split value {unknown[0]!r} is not one of train, val, test; fix the split column."
        )
    splits = match_paths(manifest["path"].astype("string"), mapping)
    if splits.isna().all():
        raise DataError(
            f"{file}: names none of the {len(manifest)} images; its path column must hold paths "
            "relative to data.source (or file names)."
        )
    return splits


@dataclass(frozen=True)
class Exclusion:
    """What ``split.exclude`` removed: the images left out, and the entries that named none."""

    file: str | None
    excluded: pd.DataFrame  # image_id, path of the images left out
    unmatched: tuple[str, ...] = ()

    def audit(self) -> dict:
        return {
            "file": self.file,
            "images": len(self.excluded),
            "paths": sorted(self.excluded["path"].astype(str)),
            "unmatched": list(self.unmatched),
        }


def read_exclude(file: Path) -> list[str]:
    """An exclude file's entries: one path or image_id per line; blank lines and ``#`` comments skipped."""
    if not file.is_file():
        raise DataError(
            f"{file}: split.exclude names a file that does not exist; create it (one image path or "
            "image_id per line; an empty file excludes nothing)."
        )
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{file}: split.exclude cannot be read ({exc}); save it as UTF-8 text.") from None
    entries = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return list(dict.fromkeys(e.removeprefix("./") for e in entries if e))


def apply_exclude(
    manifest: pd.DataFrame, entries: list[str], file: str | None = None
) -> tuple[pd.DataFrame, Exclusion]:
    """The manifest without the images an entry names exactly: by path (relative to data.source) or id."""
    paths = manifest["path"].astype("string")
    ids = manifest["image_id"].astype("string")
    wanted = set(entries)
    drop = (paths.isin(wanted) | ids.isin(wanted)).to_numpy(dtype=bool)
    known = set(paths.dropna()) | set(ids.dropna())
    unmatched = tuple(e for e in entries if e not in known)
    excluded = manifest.loc[drop, ["image_id", "path"]].reset_index(drop=True)
    return manifest.loc[~drop].reset_index(drop=True), Exclusion(file, excluded, unmatched)


def stratum_labels(manifest: pd.DataFrame, boxes: pd.DataFrame | None = None) -> pd.Series:
    """What each image is stratified on, indexed by image_id.

    Classification: its label. Detection (``boxes`` given): its sorted class set, e.g.
    ``cat|dog``; a set seen on fewer than ``MIN_CLASS_SET_IMAGES`` images falls back to its
    rarest class, so rare combinations do not become strata of one.
    """
    ids = manifest["image_id"].astype("string")
    if boxes is None:
        labels = manifest["label"].astype("string").fillna(UNLABELLED)
        return pd.Series(labels.to_numpy(), index=pd.Index(ids, name="image_id"), dtype="string")
    present = boxes[["image_id", "class_name"]].drop_duplicates()
    frequency = present["class_name"].value_counts()
    sets = present.groupby("image_id")["class_name"].agg(lambda s: tuple(sorted(s)))
    chosen = sets.reindex(ids.to_numpy())
    set_counts = chosen.dropna().map("|".join).value_counts()

    def stratum(classes: tuple[str, ...] | float) -> str:
        if not isinstance(classes, tuple):
            return NO_BOXES
        name = "|".join(classes)
        if len(classes) == 1 or set_counts.get(name, 0) >= MIN_CLASS_SET_IMAGES:
            return name
        return min(classes, key=lambda c: (frequency[c], c))

    return pd.Series([stratum(c) for c in chosen], index=pd.Index(ids, name="image_id"), dtype="string")


def class_membership(manifest: pd.DataFrame, boxes: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (image_id, class) the image contains: its label, or each class it has boxes of."""
    if boxes is None:
        frame = manifest[["image_id", "label"]].dropna().rename(columns={"label": "class"})
    else:
        frame = boxes[["image_id", "class_name"]].drop_duplicates().rename(columns={"class_name": "class"})
    return frame.astype("string").reset_index(drop=True)


def find_near_duplicates(
    manifest: pd.DataFrame, source: Path, cfg: NearDuplicateSection, cache_dir: Path
) -> pd.DataFrame:
    """Near-duplicate pairs by image_id (``image_id_a < image_id_b``) with a distance column per hash."""
    if not cfg.enabled or len(manifest) < 2:
        return pd.DataFrame({c: pd.Series(dtype="string") for c in PAIR_ID_COLUMNS})
    ordered = manifest.sort_values("image_id", kind="stable").reset_index(drop=True)
    kinds = sorted(cfg.max_distance)
    files = [source / p for p in ordered["path"]]
    hashes = compute_hashes(files, ordered["sha256"].tolist(), kinds, cache_dir, cfg.workers)
    found = near_duplicate_pairs(hashes, cfg.max_distance)
    ids = ordered["image_id"].astype("string").to_numpy()
    pairs = pd.DataFrame(
        {
            "image_id_a": pd.array(ids[found["i"].to_numpy()], dtype="string"),
            "image_id_b": pd.array(ids[found["j"].to_numpy()], dtype="string"),
        }
    )
    for kind in kinds:
        pairs[kind] = found[kind].to_numpy()
    log.info("%d near-duplicate pairs within %s", len(pairs), _thresholds(cfg))
    return pairs


# --- the split -------------------------------------------------------------------------------


def unit_table(manifest: pd.DataFrame, plan: SplitPlan, pairs: pd.DataFrame | None = None) -> pd.DataFrame:
    """image_id -> split unit and near-duplicate cluster (identical or near-duplicate images only,
    not groups): label_issues folds by unit and calls differing labels inside a cluster conflicts."""
    clusters = split_units(manifest.drop(columns=["group"], errors="ignore"), pairs)
    frame = pd.DataFrame({"image_id": pd.array(plan.units.index.to_numpy(), dtype="string")})
    frame["unit"] = plan.units.to_numpy().astype("int64")
    frame["cluster"] = clusters.reindex(frame["image_id"].to_numpy()).to_numpy().astype("int64")
    return frame


def split_units(manifest: pd.DataFrame, pairs: pd.DataFrame | None = None) -> pd.Series:
    """Connected components of same-sha256, same-group and near-duplicate links, by image_id.

    Unit ids are numbered by each unit's smallest image_id, so they depend on the content only.
    """
    frame = manifest.sort_values("image_id", kind="stable").reset_index(drop=True)
    ids = frame["image_id"].astype("string")
    edges = [edges_from_keys(frame["sha256"].astype("string"))]
    if "group" in frame:
        edges.append(edges_from_keys(frame["group"].astype("string")))
    if pairs is not None and len(pairs):
        position = pd.Series(np.arange(len(ids)), index=ids.to_numpy())
        known = pairs["image_id_a"].isin(position.index) & pairs["image_id_b"].isin(position.index)
        edges.append(
            (
                position[pairs.loc[known, "image_id_a"]].to_numpy(),
                position[pairs.loc[known, "image_id_b"]].to_numpy(),
            )
        )
    i = np.concatenate([e[0] for e in edges])
    j = np.concatenate([e[1] for e in edges])
    labels = connected_labels(len(ids), i, j)
    return pd.Series(labels, index=pd.Index(ids.to_numpy(), name="image_id"), name="unit")


def assign_splits(
    manifest: pd.DataFrame,
    params: SplitSection,
    seed: int,
    pairs: pd.DataFrame | None = None,
    strata: pd.Series | None = None,
) -> SplitPlan:
    """Assign every image to train, val or test; same inputs, params and seed give the same plan.

    Args:
        manifest: needs ``image_id``, ``sha256``, ``label``; ``group`` and ``split``
            (predefined) are used when present. Row order does not matter.
        params: the ``split`` params section.
        seed: ``base.seed``.
        pairs: near-duplicate pairs (``image_id_a``, ``image_id_b``), kept in one split.
        strata: image_id -> what to stratify on (default: the label).

    Returns:
        A ``SplitPlan``: image_id -> split, the split units, and notes for the report.
    """
    if len(manifest) < 3:
        raise DataError(f"only {len(manifest)} valid images; splitting into train/val/test needs at least 3.")
    frame = manifest.sort_values("image_id", kind="stable").reset_index(drop=True)
    ids = frame["image_id"].astype("string")
    units = split_units(frame, pairs)
    unit = units.to_numpy()
    if strata is None:
        strata = stratum_labels(frame)
    codes = pd.factorize(strata.reindex(ids.to_numpy()).fillna(UNLABELLED))[0]
    fr = params.fractions
    targets = {"train": fr.train, "val": fr.val, "test": fr.test}
    notes: list[str] = []
    found_warnings: list[str] = []

    source = frame["split"] if "split" in frame and params.honour_predefined else None
    predefined = _normalise_splits(source) if source is not None else pd.Series(pd.NA, index=frame.index)
    assigned = predefined.to_numpy(dtype=object)
    given = ~pd.isna(assigned)
    if not given.any():
        assigned = _allocate(unit, codes, targets, seed, found_warnings)
    else:
        present = set(assigned[given])
        if "train" not in present:
            raise DataError(
                f"the source predefines {', '.join(sorted(present))} but no train split; add one or set "
                "split.honour_predefined: false."
            )
        if "test" not in present and "val" in present:
            assigned[assigned == "val"] = "test"
            notes.append(
                f"The source predefines only train and val: its val ({int((assigned == 'test').sum())} "
                "images) is used as the test set (held-out evaluation), and the val split for model "
                "selection is carved from its train."
            )
        free = pd.isna(assigned)
        if free.any():
            _fill_free(assigned, unit, codes, targets, seed, found_warnings)
            notes.append(f"{int(free.sum())} images had no predefined split and were split by fractions.")
        if "test" not in present and "val" not in present:
            carve = assigned == "train"
            assigned[carve] = _allocate(unit[carve], codes[carve], targets, seed, found_warnings)
            notes.append(
                f"The source predefines only train: test ({int((assigned == 'test').sum())}) and val "
                f"({int((assigned == 'val').sum())}) were carved from it by split.fractions."
            )
        elif fr.val > 0 and "val" not in set(assigned[given]):
            carve = assigned == "train"
            sub = {"train": fr.train, "val": fr.val}
            assigned[carve] = _allocate(unit[carve], codes[carve], sub, seed, found_warnings)
            notes.append(
                f"val ({int((assigned == 'val').sum())} images) was carved from the source's train, "
                f"{fr.val / (fr.train + fr.val):.0%} of it, keeping near-duplicates and groups together."
            )
    splits = pd.DataFrame({"image_id": ids, "split": pd.array(assigned, dtype="string")})
    return SplitPlan(splits, units, tuple(notes), tuple(found_warnings), predefined=bool(given.any()))


def _normalise_splits(column: pd.Series) -> pd.Series:
    values = column.astype("string").str.strip().str.lower()
    mapped = values.map(SPLIT_ALIASES, na_action="ignore")
    unknown = values.notna() & mapped.isna()
    if unknown.any():
        raise DataError(
            f"predefined split {values[unknown].iloc[0]!r} is not train, val or test; rename it or set "
            "split.honour_predefined: false."
        )
    return mapped.astype("string")


def _fill_free(
    assigned: np.ndarray, unit: np.ndarray, codes: np.ndarray, targets: dict, seed: int, found: list[str]
) -> None:
    """Images without a predefined split: follow their unit's predefined split, else split by fractions."""
    given = ~pd.isna(assigned)
    votes = pd.DataFrame({"unit": unit[given], "split": assigned[given]})
    unit_split = votes.groupby("unit")["split"].agg(lambda s: s.value_counts().sort_index().idxmax())
    free = pd.isna(assigned)
    follow = free & np.isin(unit, unit_split.index.to_numpy())
    assigned[follow] = unit_split.reindex(unit[follow]).to_numpy()
    rest = free & ~follow
    if rest.any():
        assigned[rest] = _allocate(unit[rest], codes[rest], targets, seed, found)


def _allocate(
    units: np.ndarray, codes: np.ndarray, targets: dict[str, float], seed: int, found: list[str]
) -> np.ndarray:
    """Split name per row: ``StratifiedGroupKFold`` folds over the units, allocated to the targets."""
    from sklearn.model_selection import StratifiedGroupKFold  # 1-2 s of imports, paid only when splitting

    names = [name for name, share in targets.items() if share > 0]
    total = sum(targets[name] for name in names)
    weights = {name: targets[name] / total for name in names}
    n_units = len(np.unique(units))
    if n_units < len(names):
        raise DataError(
            f"only {n_units} independent groups of images (after joining duplicates, near-duplicates and "
            f"split.groups) to deal into {', '.join(names)}; add data or loosen split.groups and "
            "split.near_duplicates."
        )
    k = fold_count(list(weights.values()), n_units)
    _, y = np.unique(codes, return_inverse=True)
    if np.bincount(y).max() < k:
        y = np.zeros_like(y)
        found.append(f"no class has {k} images: the split is grouped but not stratified.")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # thin classes: the audit reports the deviation
        folds = [test for _, test in splitter.split(np.zeros(len(y)), y, units)]
    fold_classes = np.stack([np.bincount(y[f], minlength=y.max() + 1) for f in folds])
    allocation = allocate_folds(fold_classes, weights)
    result = np.empty(len(units), dtype=object)
    for fold, name in zip(folds, allocation, strict=True):
        result[fold] = name
    return result


def fold_count(weights: list[float], n_units: int) -> int:
    """The fewest folds (at most ``MAX_FOLDS`` and ``n_units``) whose whole-fold shares fit ``weights``."""
    best: tuple[float, int] | None = None
    for k in range(len(weights), min(MAX_FOLDS, n_units) + 1):
        counts = _fold_shares(weights, k)
        error = max(abs(c / k - w) for c, w in zip(counts, weights, strict=True))
        if error <= FRACTION_TOLERANCE:
            return k
        if best is None or error < best[0] - 1e-12:
            best = (error, k)
    assert best is not None
    return best[1]


def _fold_shares(weights: list[float], k: int) -> list[int]:
    """Largest-remainder rounding of ``weights * k`` with at least one fold each."""
    exact = [w * k for w in weights]
    counts = [max(1, int(x)) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: -(exact[i] - int(exact[i])))
    for i in order:
        if sum(counts) >= k:
            break
        counts[i] += 1
    while sum(counts) > k:
        i = max((i for i in range(len(counts)) if counts[i] > 1), key=lambda i: counts[i] - exact[i])
        counts[i] -= 1
    return counts


def allocate_folds(fold_classes: np.ndarray, weights: dict[str, float]) -> list[str]:
    """Give each fold to a split so each split's size and class shares approach its weight.

    ``fold_classes`` is folds x classes (image counts). A fold is described by the share of
    every class it holds plus its share of all images (weighted like all classes together);
    the error of an allocation is the squared distance of each split's sum from its weight.
    Largest folds go first, each to the split whose error it reduces most; then single moves
    and pairwise swaps of folds are applied while they reduce the error. A fold holding a
    very large unit therefore lands in the largest split, and every split with a positive
    weight keeps at least one non-empty fold when there are enough.
    """
    counts = np.asarray(fold_classes, dtype=float).reshape(len(fold_classes), -1)
    names = list(weights)
    sizes = counts.sum(axis=1)
    n_classes = counts.shape[1]
    vectors = np.column_stack(
        [counts / np.maximum(counts.sum(axis=0), 1), np.sqrt(n_classes) * sizes / max(sizes.sum(), 1)]
    )
    share = np.array([weights[name] for name in names])
    target = share[:, None] * np.append(np.ones(n_classes), np.sqrt(n_classes))
    got = np.zeros_like(target)
    owner = np.full(len(sizes), -1)
    for fold in sorted(range(len(sizes)), key=lambda f: (-sizes[f], f)):
        if sizes[fold] == 0:
            continue
        gains = 2 * (target - got) @ vectors[fold] - vectors[fold] @ vectors[fold]
        owner[fold] = int(np.argmax(gains))  # ties go to the first split in ``weights``
        got[owner[fold]] += vectors[fold]
    for index in range(len(names)):  # every split gets a fold, taken from the one with the most
        held = np.bincount(owner[owner >= 0], minlength=len(names))
        if held[index] or held.max() < 2:
            continue
        donor = int(np.argmax(held))
        fold = min(np.flatnonzero(owner == donor), key=lambda f: (sizes[f], f))
        owner[fold] = index
        got[donor] -= vectors[fold]
        got[index] += vectors[fold]
    _improve(owner, vectors, target, got)
    return [names[max(o, 0)] for o in owner]


def _improve(owner: np.ndarray, vectors: np.ndarray, target: np.ndarray, got: np.ndarray) -> None:
    """Local search on the allocation: single moves and pairwise swaps while the error drops."""

    def error(rows: list[int]) -> float:
        return float(((target[rows] - got[rows]) ** 2).sum())

    folds = [f for f in range(len(owner)) if owner[f] >= 0]
    for _ in range(100):  # each pass lowers the error; a few passes reach a local optimum
        improved = False
        for f in folds:
            a = owner[f]
            if (owner == a).sum() < 2:
                continue
            for b in range(len(target)):
                if b == a:
                    continue
                before = error([a, b])
                got[a] -= vectors[f]
                got[b] += vectors[f]
                if error([a, b]) < before - 1e-12:
                    owner[f], improved = b, True
                    break
                got[a] += vectors[f]
                got[b] -= vectors[f]
        for f, g in combinations(folds, 2):
            a, b = owner[f], owner[g]
            if a == b:
                continue
            before = error([a, b])
            delta = vectors[g] - vectors[f]
            got[a] += delta
            got[b] -= delta
            if error([a, b]) < before - 1e-12:
                owner[f], owner[g], improved = b, a, True
            else:
                got[a] -= delta
                got[b] += delta
        if not improved:
            return


def _thresholds(cfg: NearDuplicateSection) -> str:
    return ", ".join(f"{k} <= {v}" for k, v in sorted(cfg.max_distance.items()))
