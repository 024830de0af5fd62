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
from stages.dataprep.groups import assign_groups
from stages.dataprep.leakage import audit_leakage, audit_splits, describe_plan, leakage_failure, split_metrics
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
            f"pairs and {leaks.get('groups', 0)} groups across splits"
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
    detect = params.data.task == "detect" and layout.boxes.is_file()
    boxes = read_parquet(layout.boxes) if detect else None
    if boxes is not None:  # an excluded image's boxes leave with it
        boxes = boxes[boxes["image_id"].isin(manifest["image_id"])].reset_index(drop=True)
    strata = stratum_labels(manifest, boxes)
    pairs = find_near_duplicates(manifest, params.data.source, cfg.near_duplicates, layout.hash_cache)

    plan = assign_splits(manifest, cfg, params.base.seed, pairs=pairs, strata=strata)
    leakage = audit_leakage(manifest, plan.splits, pairs, cfg)
    audit = audit_splits(manifest, plan.splits, class_membership(manifest, boxes))
    audit |= describe_plan(plan, pairs, grouping, cfg, leakage, layout)
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
    failure = leakage_failure(leakage["counts"], cfg, layout)
    if failure:
        raise DataError(failure)
    return SplitResult(plan.splits, audit, leakage)


if __name__ == "__main__":
    exit_with(STAGE, run)
