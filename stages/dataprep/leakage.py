"""The split audit: counts per split, and every identical, near-duplicate or group pair
that crosses splits.
"""

from __future__ import annotations

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
        "counts": {"exact_pairs": len(same), "near_pairs": near_count, "groups": len(group_entries)},
        "pairs": entries,
        "groups": group_entries,
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
) -> dict:
    """The audit's account of clusters, groups, split units, leakage, notes and warnings."""
    near = params.near_duplicates
    found: list[str] = list(plan.warnings)
    ids = plan.units.index.to_numpy()
    if near.enabled and len(pairs):
        position = pd.Series(np.arange(len(ids)), index=ids)
        labels = connected_labels(
            len(ids),
            position[pairs["image_id_a"]].to_numpy(),
            position[pairs["image_id_b"]].to_numpy(),
        )
        sizes = np.bincount(labels)
        clusters = {
            "clusters": int((sizes > 1).sum()),
            "images_in_clusters": int(sizes[sizes > 1].sum()),
            "largest_cluster": int(sizes.max()),
        }
    else:
        clusters = {"clusters": 0, "images_in_clusters": 0, "largest_cluster": 1 if len(ids) else 0}
    group_sizes = grouping.groups.value_counts()
    unit_sizes = plan.units.value_counts()
    largest_unit = int(unit_sizes.max()) if len(unit_sizes) else 0
    smallest_share = min(s for s in params.fractions.model_dump().values() if s > 0)
    if len(ids) and largest_unit > smallest_share * len(ids):
        found.append(
            f"the largest set of images that must stay together holds {largest_unit} of {len(ids)} images, "
            f"more than the smallest split fraction ({smallest_share:g}); split sizes cannot match "
            "split.fractions (check split.groups, or lower split.near_duplicates.max_distance)."
        )
    if grouping.unmatched and grouping.rule not in ("source", "none"):
        found.append(
            f"split.groups (rule {grouping.rule}) gave no group to {grouping.unmatched} images; each "
            "of them is split on its own."
        )
    return {
        "near_duplicates": {
            "enabled": near.enabled,
            "max_distance": dict(near.max_distance) if near.enabled else {},
            "pairs": len(pairs),
            **clusters,
        },
        "groups": {
            "rule": grouping.rule,
            "groups": len(group_sizes),
            "largest_group": int(group_sizes.max()) if len(group_sizes) else 0,
            "images_without_group": int(grouping.groups.isna().sum()),
        },
        "units": {"count": len(unit_sizes), "largest": largest_unit},
        "leakage": leakage["counts"] | {"report": layout.leakage_report.as_posix()},
        "notes": list(plan.notes),
        "warnings": found,
    }


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
        "leaks": {k: audit["leakage"][k] for k in ("exact_pairs", "near_pairs", "groups")},
    }


def leakage_failure(counts: dict, params: SplitSection, layout: Layout) -> str | None:
    """One sentence when leaks exceed ``split.leakage``, else None."""
    tol = params.leakage
    limits = {"exact_pairs": tol.max_exact_pairs, "near_pairs": tol.max_near_pairs, "groups": tol.max_groups}
    if all(counts[k] <= limits[k] for k in limits):
        return None
    words = {
        "exact_pairs": "identical-image pairs",
        "near_pairs": "near-duplicate pairs",
        "groups": "groups",
    }
    found = ", ".join(f"{counts[k]} {words[k]} (tolerated: {limits[k]})" for k in limits if counts[k])
    return (
        f"leakage across splits: {found}; every one is listed in {layout.leakage_report} and the worst "
        f"pairs are drawn in {layout.leakage_sheet} (re-split with split.honour_predefined: false, or "
        "raise split.leakage)."
    )
