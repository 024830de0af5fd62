"""Stage ``split``: train/val/test without leakage, seeded, stratified, and audited.

How units, folds and the audit work: ``stages/dataprep/splitting.py`` and ``stages/dataprep/leakage.py``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pandas as pd

from stages.core.cli import exit_with
from stages.core.contracts import SPLIT_NAMES, read_parquet, write_json, write_parquet
from stages.core.errors import DataError
from stages.core.layout import Layout
from stages.core.params import Params
from stages.core.params.base import uses_boxes
from stages.dataprep.groups import assign_groups
from stages.dataprep.leakage import (
    audit_leakage,
    audit_splits,
    cluster_summary,
    degenerate_sentence,
    describe_plan,
    leakage_failure,
    split_metrics,
)
from stages.dataprep.pair_features import backbone_embedder, confirm_pairs
from stages.dataprep.splitting import (
    apply_exclude,
    assign_splits,
    class_membership,
    find_near_duplicates,
    predefined_from_file,
    read_exclude,
    stratum_labels,
    unit_table,
)
from stages.reporting.contact_sheet import draw_contact_sheet

log = logging.getLogger("stages.split")
STAGE = "split"


@dataclass(frozen=True)
class SplitResult:
    splits: pd.DataFrame
    audit: dict
    leakage: dict = field(default_factory=dict)

    def __str__(self) -> str:
        counts = self.splits["split"].value_counts()
        sizes = ", ".join(f"{name} {int(counts.get(name, 0))}" for name in SPLIT_NAMES)
        near = self.audit.get("near_duplicates", {})
        leaks = self.audit.get("leakage", {})
        return (
            f"{sizes}; {near.get('clusters', 0)} near-duplicate clusters and "
            f"{self.audit.get('groups', {}).get('groups', 0)} groups kept whole; "
            f"{leaks.get('exact_pairs', 0)} identical and {leaks.get('near_pairs', 0)} near-duplicate "
            f"pairs, {leaks.get('groups', 0)} groups and {leaks.get('name_twins', 0)} name twins "
            "across splits"
        )


def run(params: Params) -> SplitResult:
    """Write ``splits.parquet``, the split audit and metrics, and the leakage report; fail on leaks."""
    layout = Layout(params.paths)
    cfg = params.split
    manifest = read_parquet(layout.manifest).sort_values("image_id", kind="stable").reset_index(drop=True)
    log.info("read %d images from %s", len(manifest), layout.manifest)
    manifest, exclusion = apply_exclude(manifest, read_exclude(cfg.exclude), cfg.exclude.as_posix())
    log.info("split.exclude (%s) leaves out %d images", cfg.exclude, len(exclusion.excluded))
    grouping = assign_groups(manifest, cfg.groups, params.data.source)
    manifest["group"] = grouping.groups
    if cfg.predefined_file is not None:
        manifest["split"] = predefined_from_file(manifest, params.data.source / cfg.predefined_file)
    detect = uses_boxes(params.data.task) and layout.boxes.is_file()
    boxes = read_parquet(layout.boxes) if detect else None
    if boxes is not None:  # an excluded image's boxes leave with it
        boxes = boxes[boxes["image_id"].isin(manifest["image_id"])].reset_index(drop=True)
    strata = stratum_labels(manifest, boxes)
    pairs = find_near_duplicates(manifest, params.data.source, cfg.near_duplicates, layout.hash_cache)
    confirmation = None
    if cfg.near_duplicates.enabled and cfg.near_duplicates.confirm == "embedding":
        hash_clusters = cluster_summary(manifest["image_id"].astype("string").to_numpy(), pairs)  # before
        pairs, confirmation = confirm_pairs(
            pairs, manifest, backbone_embedder(params), cfg.near_duplicates.embedding_min_similarity
        )
        confirmation["largest_hash_cluster"] = hash_clusters["largest_cluster"]

    ids = manifest["image_id"].astype("string").to_numpy()
    degenerate = (
        degenerate_sentence(cluster_summary(ids, pairs), cfg) if cfg.near_duplicates.enabled else None
    )
    try:
        plan = assign_splits(manifest, cfg, params.base.seed, pairs=pairs, strata=strata)
    except DataError as exc:
        if degenerate is None:
            raise
        raise DataError(f"{str(exc).rstrip('.')}: {degenerate}") from None
    leakage = audit_leakage(manifest, plan.splits, pairs, cfg)
    audit = audit_splits(manifest, plan.splits, class_membership(manifest, boxes))
    audit |= describe_plan(plan, pairs, grouping, cfg, leakage, layout, confirmation)
    audit["excluded"] = exclusion.audit()
    if exclusion.unmatched:
        audit["warnings"].append(
            f"{len(exclusion.unmatched)} entries of split.exclude ({cfg.exclude}) name no image, e.g. "
            f"{exclusion.unmatched[0]!r}; use paths relative to data.source or image ids."
        )
    for warning in audit["warnings"]:
        log.warning(warning)
    for note in audit["notes"]:
        log.info(note)

    write_parquet(plan.splits, layout.splits)
    write_parquet(unit_table(manifest, plan, pairs), layout.split_units)
    write_json(audit, layout.split_audit)
    write_json(split_metrics(audit), layout.split_metrics)
    write_json(leakage, layout.leakage_report)
    draw_contact_sheet(leakage, params.data.source, layout.leakage_sheet, cfg.leakage.sheet_pairs)
    log.info(
        "wrote %s, %s, %s and %s",
        layout.splits,
        layout.split_audit,
        layout.leakage_report,
        layout.leakage_sheet,
    )
    failure = leakage_failure(
        leakage["counts"], cfg, layout, degenerate_sentence(audit["near_duplicates"], cfg)
    )
    if failure:
        raise DataError(failure)
    return SplitResult(plan.splits, audit, leakage)


if __name__ == "__main__":
    exit_with(STAGE, run)
