"""Which labels look wrong: out-of-fold probabilities from K linear heads, ranked by cleanlab.

Every train and val image is scored by a linear head (``fit_linear_head``, the linear probe's)
trained on the cached backbone features of the OTHER folds. Folds are dealt over the split's
units (identical images, near-duplicates and groups joined), so neither an image nor its
near-duplicate can vouch for its own label. cleanlab's confident learning
(``find_label_issues``) then picks the likely errors, ranked by label quality (the
out-of-fold probability of the given label), and ``estimate_joint`` gives the noise rate per
class pair. Near-duplicate clusters whose members carry different labels need no model: they
are listed first, as certain conflicts. Nothing here edits the data: a team acts through
``split.exclude``. torch, cleanlab and scikit-learn are imported where they are used.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from stages.core.layout import Layout
from stages.core.params import LabelIssuesSection, Params, TrainSection

CONFLICT = "near-duplicate conflict"
CONFIDENT_LEARNING = "confident learning"
COLUMNS = ["rank", "path", "image_id", "split", "given", "suggested", "quality", "reason", "cluster"]


@dataclass(frozen=True)
class LabelIssues:
    """The suspects (``COLUMNS``, rank 1 first), every scored image's quality, and the noise estimate."""

    suspects: pd.DataFrame
    scores: pd.DataFrame  # every scored image: image_id, path, given, suggested, quality, fold
    classes: list[str]  # the classes of ``joint``'s rows and columns
    joint: np.ndarray  # estimated p(given label, true label)
    folds: int


def grouped_folds(labels: np.ndarray, units: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold index per image: ``StratifiedGroupKFold`` over the split units, so a unit never spans two folds.

    ``k`` drops to the number of units when there are fewer; stratification is best effort.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    n_units = len(np.unique(units))
    k = min(k, n_units)
    if k < 2:
        raise ValueError(f"out-of-fold scores need at least 2 independent units, got {n_units}")
    folds = np.full(len(labels), -1, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a class with fewer than k members
        for fold, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels, units)):
            folds[held] = fold
    return folds


def head_config(cfg: LabelIssuesSection) -> TrainSection:
    """The fold heads' training: AdamW with a cosine schedule, no smoothing (its probabilities are scored)."""
    return TrainSection.model_validate(
        {
            "optimizer": "adamw",
            "lr": cfg.lr,
            "weight_decay": cfg.weight_decay,
            "batch_size": cfg.batch_size,
            "schedule": "cosine",
            "label_smoothing": 0.0,
        }
    )


def out_of_fold_probabilities(
    features: np.ndarray,
    labels: np.ndarray,
    folds: np.ndarray,
    num_classes: int,
    cfg: LabelIssuesSection,
    seed: int,
) -> np.ndarray:
    """Class probabilities of every image from the head trained on the other folds only."""
    import torch  # here, not at the top: the stage's entry point imports this module cheaply

    from stages.engine.linear_probe import fit_linear_head

    train_cfg = head_config(cfg)
    probs = np.zeros((len(labels), num_classes), dtype=np.float64)
    threads = torch.get_num_threads()
    # A linear head on a few hundred vectors is far faster on one thread: on a busy CPU, torch's
    # worker threads spin and wait (measured: 4.6 s vs 0.06 s per head); one thread is also
    # bit-reproducible.
    torch.set_num_threads(1)
    try:
        for fold in np.unique(folds):
            held = folds == fold
            fit = fit_linear_head(
                features[~held],
                labels[~held],
                None,
                None,
                num_classes,
                train_cfg,
                cfg.epochs,
                None,
                seed + int(fold),
            )
            with torch.no_grad():
                x = torch.tensor(features[held], dtype=torch.float32)
                logits = x @ fit.best_state["weight"].T + fit.best_state["bias"]
                probs[held] = torch.softmax(logits.double(), dim=1).numpy()
    finally:
        torch.set_num_threads(threads)
    return probs


def conflicts(frame: pd.DataFrame) -> pd.Series:
    """True for every image in a near-duplicate cluster whose members carry more than one label."""
    labels_per_cluster = frame.groupby("cluster")["given"].transform("nunique")
    return labels_per_cluster > 1


def rank_issues(frame: pd.DataFrame, probs: np.ndarray, classes: list[str], folds: int) -> LabelIssues:
    """Conflicts first, then cleanlab's issues by label quality (lowest first).

    ``frame`` has one row per scored image: image_id, path, split, given (a class name), cluster
    and fold; ``probs`` its out-of-fold probabilities over ``classes``. Classes no scored image
    carries are dropped before cleanlab (it needs every class it is told about).
    """
    from cleanlab.count import estimate_joint
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    present = [c for c in classes if (frame["given"] == c).any()]
    columns = [classes.index(c) for c in present]
    sub = probs[:, columns]
    sub = sub / np.maximum(sub.sum(axis=1, keepdims=True), 1e-12)
    y = frame["given"].map({c: i for i, c in enumerate(present)}).to_numpy(dtype=np.int64)
    quality = get_label_quality_scores(y, sub, method="self_confidence")
    scores = frame.assign(
        suggested=[present[i] for i in sub.argmax(axis=1)],
        quality=quality,
        conflict=conflicts(frame),
    )
    flagged = np.zeros(len(frame), dtype=bool)
    if len(present) >= 2:
        flagged[find_label_issues(y, sub, filter_by="prune_by_noise_rate", n_jobs=1)] = True
        joint = estimate_joint(y, sub)
    else:
        joint = np.ones((len(present), len(present)))
    scores["issue"] = flagged
    chosen = scores[scores["conflict"] | scores["issue"]].copy()
    chosen["reason"] = np.where(chosen["conflict"], CONFLICT, CONFIDENT_LEARNING)
    chosen = chosen.sort_values(
        ["conflict", "quality", "image_id"], ascending=[False, True, True], kind="stable"
    ).reset_index(drop=True)
    chosen["rank"] = np.arange(1, len(chosen) + 1)
    return LabelIssues(chosen[COLUMNS], scores, present, joint, folds)


def noise_rates(issues: LabelIssues) -> list[dict]:
    """Off-diagonal class pairs with an estimated share of mislabels: p(true | given), largest first."""
    joint = issues.joint
    rows = joint.sum(axis=1, keepdims=True)
    rates = joint / np.maximum(rows, 1e-12)
    pairs = [
        {"given": issues.classes[i], "true": issues.classes[j], "rate": float(rates[i, j])}
        for i, j in np.ndindex(rates.shape)
        if i != j and rates[i, j] > 0
    ]
    return sorted(pairs, key=lambda p: (-p["rate"], p["given"], p["true"]))


def clean_features(params: Params, rows: pd.DataFrame, num_classes: int) -> np.ndarray:
    """The clean-view (view 0) backbone features of ``rows``, from the feature cache ``train`` shares."""
    from stages.engine.device import resolve_device
    from stages.models.backbones import create_classifier
    from stages.models.feature_cache import FeatureCache, FeatureRequest

    cfg = params.train
    backbone = create_classifier(cfg.backbone, cfg.weights, num_classes, cfg.image_size)
    # No policy: only view 0 is asked for, whose cache name (and vector) train's probe uses too.
    cache = FeatureCache(Layout(params.paths).feature_cache, backbone, cfg.backbone, None, params.base.seed)
    requests = [
        FeatureRequest(params.data.source / path, sha, 0)
        for path, sha in zip(rows["path"], rows["sha256"], strict=True)
    ]
    device = resolve_device(cfg.device)
    return cache.get(requests, device, cfg.feature_batch_size, "label_issues: features")


def score_labels(params: Params, rows: pd.DataFrame, classes: list[str]) -> LabelIssues:
    """Out-of-fold scores and cleanlab's ranking for ``rows`` (image_id, path, sha256, label, split,
    unit, cluster), sorted by image_id so the folds do not depend on input order."""
    rows = rows.sort_values("image_id", kind="stable").reset_index(drop=True)
    cfg = params.label_issues
    y = rows["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=np.int64)
    folds = grouped_folds(y, rows["unit"].to_numpy(), cfg.folds, params.base.seed)
    features = clean_features(params, rows, len(classes))
    probs = out_of_fold_probabilities(features, y, folds, len(classes), cfg, params.base.seed)
    frame = pd.DataFrame(
        {
            "image_id": rows["image_id"].astype(str),
            "path": rows["path"].astype(str),
            "split": rows["split"].astype(str),
            "given": rows["label"].astype(str),
            "cluster": rows["cluster"].astype("int64"),
            "fold": folds,
        }
    )
    return rank_issues(frame, probs, classes, int(folds.max()) + 1)
