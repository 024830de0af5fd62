"""The data: validation and quarantine, images per split and class, and the leakage audit."""

from __future__ import annotations

from typing import Any

import pandas as pd

from stages.reporting import figures
from stages.reporting.inputs import ReportInputs, read_class_names, read_json, read_quarantine
from stages.reporting.markdown import Section, code, esc, figure_lines, rel

LEAK_KINDS = ("exact_pairs", "near_pairs", "groups", "name_twins")


def render(inputs: ReportInputs) -> Section:
    layout = inputs.layout
    section = Section("Data")
    lines = section.lines
    validation = read_json(layout.validation_report, {})
    quarantine = read_quarantine(layout)
    if validation:
        lines.append(validation_line(validation, len(quarantine)))
    if validation.get("shape_counts"):
        counts = ", ".join(f"{esc(k)} {v}" for k, v in validation["shape_counts"].items())
        lines.append(f"- shapes (polygons and masks) per class: {counts}.")
    if len(quarantine):
        lines += quarantine_table(quarantine)
    audit = read_json(layout.split_audit, {})
    lines += [f"- warning: {esc(w)}" for w in validation.get("warnings", []) + audit.get("warnings", [])]
    if audit.get("splits"):
        lines += split_table(inputs, audit)
    lines += leakage(inputs, audit)
    return section


def validation_line(validation: dict[str, Any], quarantined: int) -> str:
    """Images in, images valid, items quarantined and the data checks that did not pass."""
    checks = validation.get("checks", {})
    failed = [
        f"{esc(k)} ({esc(v.get('severity', '?'))})" for k, v in checks.items() if not v.get("success", True)
    ]
    return (
        f"- {esc(validation.get('images_in', '?'))} images imported, "
        f"{esc(validation.get('images_valid', '?'))} "
        f"passed validation, {quarantined} items quarantined; {len(checks) - len(failed)} of "
        f"{len(checks)} data checks passed" + (f" (not passed: {', '.join(failed)})." if failed else ".")
    )


def quarantine_table(quarantine: pd.DataFrame) -> list[str]:
    """Quarantined items counted per stage and reason (reasons are data: escaped)."""
    counts = quarantine.groupby(["stage", "reason"]).size().reset_index(name="items")
    rows = counts.itertuples(index=False, name=None)
    return [
        "",
        "| stage | reason | items |",
        "|---|---|---|",
        *(f"| {esc(stage)} | {esc(reason)} | {n} |" for stage, reason, n in rows),
        "",
    ]


def split_table(inputs: ReportInputs, audit: dict[str, Any]) -> list[str]:
    """Images per split and images (boxes, for detection) per class, as a table and stacked bars."""
    classes = read_class_names(inputs.layout, audit)
    unit = "boxes" if inputs.task == "detect" else "images"
    splits = audit["splits"]
    counts = pd.DataFrame(
        {c: [info["class_counts"].get(c, 0) for info in splits.values()] for c in classes},
        index=list(splits),
    )
    lines = [
        "",
        f"Images per split, and {unit} per class:",
        "",
        "| split | images | " + " | ".join(map(esc, classes)) + " |",
        "|---|---|" + "---|" * len(classes),
    ]
    for name, info in splits.items():
        cells = [str(info["class_counts"].get(c, 0)) for c in classes]
        lines.append(f"| {esc(name)} | {esc(info['images'])} | " + " | ".join(map(esc, cells)) + " |")
    lines.append("")
    drawn = figures.split_counts(counts, inputs.fig_path("split_counts.png"), unit)
    lines += figure_lines([(drawn, "class counts per split")], inputs.here)
    if "max_class_share_deviation" in audit:
        lines += [
            "Largest class-share deviation of a split from the whole: "
            f"{audit['max_class_share_deviation']:.3f}.",
            "",
        ]
    return lines


def leakage(inputs: ReportInputs, audit: dict[str, Any]) -> list[str]:
    """The leakage verdict (pairs and groups across splits, against the tolerance) and the clustering."""
    leaks = read_json(inputs.layout.leakage_report, {})
    counts = leaks.get("counts") or audit.get("leakage")
    if not counts:
        return []
    tolerance = leaks.get("tolerance", {})
    clean = not any(counts.get(k, 0) for k in LEAK_KINDS)
    verdict = "**passed, nothing crosses splits**" if clean else "**found leakage (within the tolerance)**"
    lines = [
        f"Leakage audit: {verdict}: {counts.get('exact_pairs', 0)} identical and "
        f"{counts.get('near_pairs', 0)} near-duplicate image pairs, {counts.get('groups', 0)} groups, "
        f"{counts.get('name_twins', 0)} name twins found in two splits (tolerance "
        f"{tolerance.get('max_exact_pairs', '?')} / {tolerance.get('max_near_pairs', '?')} / "
        f"{tolerance.get('max_groups', '?')} / {tolerance.get('max_name_twins', '?')}; list: "
        f"{code(rel(inputs.layout.leakage_report, inputs.here))}).",
        "",
    ]
    near, groups = audit.get("near_duplicates"), audit.get("groups")
    if near and groups:
        thresholds = ", ".join(f"{esc(k)} <= {esc(v)}" for k, v in near.get("max_distance", {}).items())
        embedding = near.get("embedding")
        if embedding:
            thresholds += (
                f"; confirmed by backbone features, cosine >= {esc(embedding.get('min_similarity'))}: "
                f"{esc(embedding.get('confirmed'))} of {esc(embedding.get('hash_pairs'))} hash pairs"
            )
        lines.append(
            f"Near-duplicate clusters ({thresholds or 'off'}): {esc(near.get('clusters', 0))} "
            f"({esc(near.get('images_in_clusters', 0))} images); groups (rule {code(groups.get('rule'))}): "
            f"{esc(groups.get('groups', 0))}; each is kept in one split."
        )
    lines += [f"- {esc(note)}" for note in audit.get("notes", [])]
    return lines
