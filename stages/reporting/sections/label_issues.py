"""Label issues: the images whose label looks wrong (``stages.label_issues``), the estimated noise
rate per class pair, and how many images ``split.exclude`` left out."""

from __future__ import annotations

import csv
from pathlib import Path

from stages.reporting import figures
from stages.reporting.inputs import ReportInputs, read_json
from stages.reporting.markdown import Section, code, esc, figure_lines, short

NOISE_PAIRS = 10  # class pairs listed in the noise-rate table
TABLE_ROWS = 20  # suspects listed in the table (the CSV has them all)


def render(inputs: ReportInputs) -> Section | None:
    layout = inputs.layout
    summary = read_json(layout.label_issues_summary, {})
    excluded = read_json(layout.split_audit, {}).get("excluded", {})
    if not summary and not excluded:
        return None
    section = Section("Label issues")
    section.lines += exclusion_lines(excluded)
    if summary.get("note"):
        return _with(section, [esc(summary["note"]), ""])
    if not summary:
        return section
    rows = read_suspects(layout.label_issues)
    conflicts = sum(1 for r in rows if r["reason"] == "near-duplicate conflict")
    found = (
        f"{len(rows)} of {summary.get('scored', 0)} train and val images look mislabelled "
        f"({conflicts} of them in near-duplicate clusters whose members carry different labels: "
        "certain conflicts, listed first)."
        if rows
        else f"None of the {summary.get('scored', 0)} train and val images looks mislabelled."
    )
    section.lines += [
        f"{found} Each image was scored by a linear head trained on the "
        f"other folds (K = {summary.get('folds', '?')}) of the cached features, never on itself or "
        "its near-duplicates; the rest are ranked by label quality (the out-of-fold probability of "
        f"the given label, lowest first). The list is {code(layout.label_issues.name)}; to leave a "
        "reviewed suspect out, add its path to the split.exclude file. Nothing in the data is edited.",
        "",
    ]
    shown = rows[: inputs.params.label_issues.grid]
    source = Path(inputs.params.data.source)
    tiles = [
        figures.Tile(
            source / r["path"],
            [
                f"#{r['rank']} given: {r['given']}",
                f"suggested: {r['suggested']}",
                f"quality {float(r['quality']):.2f} · {short(Path(r['path']).name, 24)}",
            ],
            colour=figures.BAD,
        )
        for r in shown
    ]
    drawn = figures.image_grid(tiles, inputs.fig_path("label_issues.png"))
    section.lines += figure_lines([(drawn, "top label-issue suspects")], inputs.here)
    if rows:
        section.lines += ["| rank | image | given | suggested | quality | why |", "|---|---|---|---|---|---|"]
        section.lines += [
            f"| {r['rank']} | {code(r['path'], table=True)} | {esc(r['given'])} | {esc(r['suggested'])} "
            f"| {float(r['quality']):.3f} | {esc(r['reason'])} |"
            for r in rows[:TABLE_ROWS]
        ]
        section.lines.append("")
    section.lines += noise_lines(summary.get("noise_rates", []))
    return section


def exclusion_lines(excluded: dict) -> list[str]:
    """How many images ``split.exclude`` left out (nothing when the param is off)."""
    if not excluded or not excluded.get("file"):
        return []
    line = f"split.exclude ({code(excluded['file'])}) left out {excluded.get('images', 0)} images"
    unmatched = excluded.get("unmatched", [])
    line += f"; {len(unmatched)} of its entries name no image." if unmatched else "."
    return [line, ""]


def noise_lines(pairs: list[dict]) -> list[str]:
    """The estimated share of each given label that truly belongs to another class (confident joint)."""
    shown = [p for p in pairs if p["rate"] >= 0.005][:NOISE_PAIRS]
    if not shown:
        return ["Estimated noise rate: no class pair above 0.5 %.", ""]
    lines = [
        "Estimated noise rate per class pair (cleanlab's confident joint: the share of images "
        "labelled *given* whose true class is *true*):",
        "",
        "| given | true | estimated rate |",
        "|---|---|---|",
    ]
    lines += [f"| {esc(p['given'])} | {esc(p['true'])} | {p['rate']:.1%} |" for p in shown]
    return [*lines, ""]


def read_suspects(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _with(section: Section, lines: list[str]) -> Section:
    section.lines += lines
    return section
