"""The split audit: counts per split, and every identical, near-duplicate, group or name-twin
pair that crosses splits; and the clusterings and splits that cannot be what the user asked for.
"""

from __future__ import annotations

import re
from itertools import combinations
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from stages.core.contracts import SPLIT_NAMES
from stages.core.layout import Layout
from stages.core.params import SplitSection
from stages.dataprep.groups import GroupAssignment
from stages.dataprep.near_duplicates import (
    connected_labels,
)
from stages.dataprep.splitting import SplitPlan, class_membership

# A file name's twin key: the name without a vendor tail (Roboflow writes ``<stem>_<ext>.rf.<hash>.jpg``)
# and without one numbered view suffix (``_scaled_1``, ``_tile_2``, ``-crop3``: a word from ``VIEW_WORDS``,
# so ordinary numbering such as ``cat_1``/``cat_2`` or ``frame-07`` is never read as twins).
# Two files with the same key in two splits are usually two views of one photo that perceptual
# hashes cannot see (measured on facade_seg: a ``_scaled_0``/``_scaled_1`` pair, two crops of
# one photo, is 32 pHash bits apart).
# The same pattern, given to ``split.groups`` (rule regex), keeps such twins in one split.
VIEW_WORDS = "scaled|resized|crop|cropped|tile|patch|rot|rotated|flip|flipped|aug|augmented|copy|view|part"
TWIN_PATTERN = (
    rf"(?i)(?P<group>[^/]+?)(?:[_-](?:{VIEW_WORDS})[_-]?\d{{1,2}})?(?:_(?:png|jpe?g|bmp|tiff?|webp|gif))*"
    r"(?:\.rf\.[0-9a-f]{8,})?\.[a-z0-9]+$"
)
_TWIN = re.compile(TWIN_PATTERN)
MAX_TWIN_FAMILY = 16  # a key shared by more files is a naming scheme (shot_1 .. shot_99), not twins
DEGENERATE_CLUSTER_SHARE = 0.5  # one near-duplicate cluster above this share of the images: degenerate
FRACTION_SLACK = 0.05  # a split further than this from split.fractions is reported


def twin_key(path: str) -> str | None:
    """The key a file shares with its name twins, or None when nothing in its name was stripped.

    Examples:
        >>> twin_key("train/IMG_0884_scaled_0_png_jpg.rf.a146c1acdea630c4a485c2e552ba3995.jpg")
        'IMG_0884'
        >>> twin_key("test/0001.jpg") is None
        True
    """
    name = PurePosixPath(path).name
    match = _TWIN.search(name)
    if match is None or match.group("group") == PurePosixPath(name).stem:
        return None
    return match.group("group")


def name_twin_pairs(frame: pd.DataFrame) -> list[dict]:
    """Pairs of files in two splits whose names share a ``twin_key`` (not identical, not one group).

    ``frame`` needs ``path``, ``split`` and ``sha256``; ``group`` is used when present.
    """
    paths = [str(p) for p in frame["path"]]
    keys = pd.Series([twin_key(p) for p in paths], index=frame.index, dtype="object")
    stems = pd.Series([PurePosixPath(p).stem for p in paths], index=frame.index, dtype="object")
    # A twin family: files whose key is their key or their plain stem (IMG_1.jpg and IMG_1_scaled_0.jpg).
    family = keys.fillna(stems)
    stripped = family[keys.notna()].unique()
    rows = frame.assign(family=family)[family.isin(stripped)]
    found: list[dict] = []
    for key, members in rows.groupby("family", sort=True):
        if len(members) > MAX_TWIN_FAMILY or members["split"].nunique() < 2:
            continue
        records = members.sort_values("path").to_dict("records")
        for a, b in combinations(records, 2):
            same_group = "group" in a and pd.notna(a["group"]) and a["group"] == b.get("group")
            if a["split"] == b["split"] or a["sha256"] == b["sha256"] or same_group:
                continue
            entry = _pair_entry("name", a["path"], b["path"], a["split"], b["split"], {})
            found.append({k: v for k, v in entry.items() if k != "distance"} | {"key": str(key)})
    return found


# --- audit -----------------------------------------------------------------------------------


def audit_splits(
    manifest: pd.DataFrame, splits: pd.DataFrame, membership: pd.DataFrame | None = None
) -> dict:
    """Images and class counts per split, and how far each split's class shares are from the whole.

    A class's share is the fraction of a split's images that contain it (for classification:
    have that label); the deviation is the largest absolute difference from the whole set.
    """
    if membership is None:
        membership = class_membership(manifest)
    joined = manifest[["image_id", "sha256"]].merge(splits, on="image_id")
    total = len(joined)
    per_image = membership.merge(joined[["image_id", "split"]], on="image_id")
    overall = per_image["class"].value_counts() / max(total, 1)
    per_split: dict[str, dict] = {}
    max_deviation = 0.0
    for name in SPLIT_NAMES:
        images = int((joined["split"] == name).sum())
        if not images:
            continue
        counts = per_image.loc[per_image["split"] == name, "class"].value_counts()
        share = counts.reindex(overall.index, fill_value=0) / images
        deviation = float((share - overall).abs().max()) if len(overall) else 0.0
        max_deviation = max(max_deviation, deviation)
        per_split[name] = {
            "images": images,
            "fraction": round(images / total, 4),
            "class_counts": {str(k): int(v) for k, v in sorted(counts.items())},
            "max_class_share_deviation": round(deviation, 4),
        }
    crossing = joined.groupby("sha256")["split"].nunique()
    return {
        "splits": per_split,
        "max_class_share_deviation": round(max_deviation, 4),
        "exact_duplicates_across_splits": int((crossing > 1).sum()),
        "warnings": [],
        "notes": [],
    }


def audit_leakage(
    manifest: pd.DataFrame, splits: pd.DataFrame, pairs: pd.DataFrame | None, params: SplitSection
) -> dict:
    """Every cross-split pair of identical or near-duplicate images, and every group in two splits.

    Returns the content of ``reports/leakage.json``: ``counts``, ``pairs`` (identical first,
    then by distance; each with both paths, both splits and the distance per hash) and ``groups``.
    """
    columns = ["image_id", "path", "sha256"] + (["group"] if "group" in manifest else [])
    frame = manifest[columns].merge(splits, on="image_id")
    frame["image_id"] = frame["image_id"].astype("string")
    kinds = sorted(params.near_duplicates.max_distance) if params.near_duplicates.enabled else []

    same = frame.merge(frame, on="sha256", suffixes=("_a", "_b"))
    same = same[(same["image_id_a"] < same["image_id_b"]) & (same["split_a"] != same["split_b"])]
    exact = same.sort_values(["path_a", "path_b"])[["path_a", "path_b", "split_a", "split_b"]]
    entries = [
        _pair_entry("exact", path_a, path_b, split_a, split_b, dict.fromkeys(kinds, 0))
        for path_a, path_b, split_a, split_b in exact.itertuples(index=False, name=None)
    ]
    near_count = 0
    if pairs is not None and len(pairs):
        info = frame.set_index("image_id")
        a, b = info.loc[pairs["image_id_a"]], info.loc[pairs["image_id_b"]]
        crossing = (a["split"].to_numpy() != b["split"].to_numpy()) & (
            a["sha256"].to_numpy() != b["sha256"].to_numpy()
        )
        near = pd.DataFrame(
            {
                "path_a": a["path"].to_numpy()[crossing],
                "path_b": b["path"].to_numpy()[crossing],
                "split_a": a["split"].to_numpy()[crossing],
                "split_b": b["split"].to_numpy()[crossing],
            }
        )
        dist_columns = [k for k in kinds if k in pairs]
        for kind in dist_columns:
            near[kind] = pairs[kind].to_numpy()[crossing]
        near["total"] = near[dist_columns].sum(axis=1) if dist_columns else 0
        near = near.sort_values(["total", "path_a", "path_b"], kind="stable")
        near_count = len(near)
        entries += [
            _pair_entry(
                "near",
                row["path_a"],
                row["path_b"],
                row["split_a"],
                row["split_b"],
                {k: int(row[k]) for k in dist_columns},
            )
            for row in near.to_dict("records")
        ]
    twins = name_twin_pairs(frame)
    group_entries = []
    if "group" in frame:
        grouped = frame.dropna(subset=["group"]).groupby("group")["split"]
        for name, values in grouped:
            counts = values.value_counts()
            if len(counts) > 1:
                group_entries.append(
                    {"group": str(name), "splits": {str(k): int(v) for k, v in sorted(counts.items())}}
                )
    return {
        "max_distance": dict(params.near_duplicates.max_distance) if kinds else {},
        "tolerance": params.leakage.model_dump(exclude={"sheet_pairs"}),
        "counts": {
            "exact_pairs": len(same),
            "near_pairs": near_count,
            "groups": len(group_entries),
            "name_twins": len(twins),
        },
        "pairs": entries,
        "groups": group_entries,
        "name_twins": twins,
    }


def _pair_entry(kind: str, a: str, b: str, split_a: str, split_b: str, distance: dict[str, int]) -> dict:
    if SPLIT_NAMES.index(split_b) < SPLIT_NAMES.index(split_a):  # train side first
        a, b, split_a, split_b = b, a, split_b, split_a
    return {
        "kind": kind,
        "a": str(a),
        "b": str(b),
        "split_a": str(split_a),
        "split_b": str(split_b),
        "distance": distance,
    }


def describe_plan(
    plan: SplitPlan,
    pairs: pd.DataFrame,
    grouping: GroupAssignment,
    params: SplitSection,
    leakage: dict,
    layout: Layout,
    confirmation: dict | None = None,
) -> dict:
    """The audit's account of clusters, groups, split units, leakage, notes and warnings.

    ``confirmation`` (from ``stages.dataprep.pair_features.confirm_pairs``) says how many hash
    pairs the embedding check saw and kept.
    """
    near = params.near_duplicates
    found: list[str] = list(plan.warnings)
    ids = plan.units.index.to_numpy()
    clusters = cluster_summary(ids, pairs) if near.enabled else cluster_summary(ids, pairs.iloc[:0])
    degenerate = degenerate_sentence(clusters, params)
    if degenerate:
        found.append(degenerate)
    group_sizes = grouping.groups.value_counts()
    unit_sizes = plan.units.value_counts()
    largest_unit = int(unit_sizes.max()) if len(unit_sizes) else 0
    missed = None if plan.predefined else fraction_miss(plan.splits, params, largest_unit, bool(degenerate))
    if missed:
        found.append(missed)
    if grouping.unmatched and grouping.rule not in ("source", "none"):
        found.append(
            f"split.groups (rule {grouping.rule}) gave no group to {grouping.unmatched} images; each "
            "of them is split on its own."
        )
    return {
        "near_duplicates": {
            "enabled": near.enabled,
            "max_distance": dict(near.max_distance) if near.enabled else {},
            "confirm": near.confirm,
            "pairs": len(pairs),
            **clusters,
            "degenerate": bool(degenerate),
            **({"embedding": confirmation} if confirmation else {}),
        },
        "groups": {
            "rule": grouping.rule,
            "groups": len(group_sizes),
            "largest_group": int(group_sizes.max()) if len(group_sizes) else 0,
            "images_without_group": int(grouping.groups.isna().sum()),
        },
        "units": {"count": len(unit_sizes), "largest": largest_unit},
        "fractions_missed": bool(missed),
        "leakage": leakage["counts"] | {"report": layout.leakage_report.as_posix()},
        "notes": list(plan.notes),
        "warnings": found,
    }


def cluster_summary(ids: np.ndarray, pairs: pd.DataFrame) -> dict:
    """Near-duplicate clusters (connected components of the pairs, groups not counted) and the largest."""
    if not len(pairs) or not len(ids):
        largest = 1 if len(ids) else 0
        return {"clusters": 0, "images_in_clusters": 0, "largest_cluster": largest, "images": len(ids)}
    position = pd.Series(np.arange(len(ids)), index=ids)
    labels = connected_labels(
        len(ids), position[pairs["image_id_a"]].to_numpy(), position[pairs["image_id_b"]].to_numpy()
    )
    sizes = np.bincount(labels)
    return {
        "clusters": int((sizes > 1).sum()),
        "images_in_clusters": int(sizes[sizes > 1].sum()),
        "largest_cluster": int(sizes.max()),
        "images": len(ids),
    }


def degenerate_sentence(clusters: dict, params: SplitSection) -> str | None:
    """One sentence when one near-duplicate cluster holds more than half the images, else None.

    Half, not a split fraction: a cluster that size is not a set of copies but a sign that the
    hashes cannot tell this dataset's images apart (one tripod, pieces moved between shots), and
    every pair the audit then reports across a vendor's split is noise. The split-size check
    (``fraction_miss``) covers smaller clusters that still push a split off its fraction.
    """
    largest, images = clusters["largest_cluster"], clusters["images"]
    if images < 4 or largest <= DEGENERATE_CLUSTER_SHARE * images:
        return None
    near = params.near_duplicates
    if near.confirm == "none":
        fix = (
            "set split.near_duplicates.confirm: embedding (a hash pair then also needs near backbone "
            "features, which tells a re-encoded copy from the same scene changed) or lower "
            "split.near_duplicates.max_distance"
        )
    else:
        fix = (
            f"raise split.near_duplicates.embedding_min_similarity (now {near.embedding_min_similarity:g}) "
            "or lower split.near_duplicates.max_distance"
        )
    return (
        f"near-duplicate clustering is degenerate: one cluster holds {largest} of {images} images "
        f"({largest / images:.0%}), so the perceptual hashes cannot tell these images apart (a fixed "
        f"camera?); {fix}."
    )


def fraction_miss(
    splits: pd.DataFrame, params: SplitSection, largest_unit: int, degenerate: bool
) -> str | None:
    """One sentence when a split dealt by fractions is more than ``FRACTION_SLACK`` off its fraction."""
    asked = params.fractions.model_dump()
    counts = splits["split"].value_counts()
    total = max(len(splits), 1)
    got = {name: int(counts.get(name, 0)) for name in SPLIT_NAMES}
    if all(abs(got[name] / total - asked[name]) <= FRACTION_SLACK for name in SPLIT_NAMES):
        return None
    sizes = " / ".join(f"{name} {got[name]}" for name in SPLIT_NAMES)
    wanted = "/".join(f"{asked[name]:.0%}" for name in SPLIT_NAMES)
    cause = (
        "the degenerate near-duplicate cluster above"
        if degenerate
        else "check split.groups, or lower split.near_duplicates.max_distance"
    )
    return (
        f"the split came out {sizes} for the asked {wanted}: the largest set of images that must stay "
        f"together holds {largest_unit} of {total} images ({cause})."
    )


def split_metrics(audit: dict) -> dict:
    """The numbers worth diffing across commits (``dvc metrics diff``)."""
    return {
        "images": {name: info["images"] for name, info in audit["splits"].items()},
        "fraction": {name: info["fraction"] for name, info in audit["splits"].items()},
        "max_class_share_deviation": audit["max_class_share_deviation"],
        "near_duplicate_pairs": audit["near_duplicates"]["pairs"],
        "clusters_merged": audit["near_duplicates"]["clusters"],
        "images_in_clusters": audit["near_duplicates"]["images_in_clusters"],
        "groups": audit["groups"]["groups"],
        "split_units": audit["units"]["count"],
        "leaks": {
            k: audit["leakage"].get(k, 0) for k in ("exact_pairs", "near_pairs", "groups", "name_twins")
        },
    }


def leakage_failure(
    counts: dict, params: SplitSection, layout: Layout, degenerate: str | None = None
) -> str | None:
    """One sentence when leaks exceed ``split.leakage``, else None; ``degenerate`` leads the advice."""
    tol = params.leakage
    limits = {
        "exact_pairs": tol.max_exact_pairs,
        "near_pairs": tol.max_near_pairs,
        "groups": tol.max_groups,
        "name_twins": tol.max_name_twins,
    }
    if all(counts.get(k, 0) <= limits[k] for k in limits):
        return None
    words = {
        "exact_pairs": "identical-image pairs",
        "near_pairs": "near-duplicate pairs",
        "groups": "groups",
        "name_twins": "name twins (files named alike)",
    }
    found = ", ".join(f"{counts[k]} {words[k]} (tolerated: {limits[k]})" for k in limits if counts.get(k))
    advice = ["re-split with split.honour_predefined: false, or raise split.leakage"]
    if counts.get("name_twins", 0) > limits["name_twins"]:
        advice.insert(
            0,
            "name twins are usually views of one photo: keep them in one split with split.groups: "
            f"{{rule: regex, pattern: '{TWIN_PATTERN}'}} and split.honour_predefined: false (README, "
            "Splitting without leakage)",
        )
    if degenerate:
        advice.insert(0, degenerate.rstrip("."))
    return (
        f"leakage across splits: {found}; every one is listed in {layout.leakage_report} and the worst "
        f"pairs are drawn in {layout.leakage_sheet} ({'; '.join(advice)})."
    )
