"""Label issues: the images whose label looks wrong (``stages.label_issues``), the estimated noise
rate per class pair, the val boxes that look wrong (detect: ``stages.box_issues``, drawn on their
images), and how many images ``split.exclude`` left out."""

from __future__ import annotations

import csv
from pathlib import Path

from stages.reporting import figures
from stages.reporting.inputs import ReportInputs, read_json
from stages.reporting.markdown import Section, code, esc, figure_lines, short

ISSUE_NAMES = {  # stages.engine.box_issues' issue types, as the report names them
    "swap": "swapped class",
    "badloc": "badly placed",
    "missing": "missing box",
    "spurious": "spurious box",
}

NOISE_PAIRS = 10  # class pairs listed in the noise-rate table
TABLE_ROWS = 20  # suspects listed in the table (the CSV has them all)


def render(inputs: ReportInputs) -> Section | None:
    layout = inputs.layout
    summary = read_json(layout.label_issues_summary, {})
    excluded = read_json(layout.split_audit, {}).get("excluded", {})
    boxes = box_lines(inputs)
    if not summary and not excluded and not boxes:
        return None
    section = Section("Label issues")
    section.lines += exclusion_lines(excluded)
    if summary.get("note") and not boxes:
        return _with(section, [esc(summary["note"]), ""])
    if not summary or summary.get("note"):
        return _with(section, boxes)
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


def box_lines(inputs: ReportInputs) -> list[str]:
    """Detect: the suspect val boxes (``reports/box_issues.csv``), the top ones drawn on their images
    (given box dashed, the prediction that decided it solid). Nothing for classification."""
    layout = inputs.layout
    summary = read_json(layout.box_issues_summary, {})
    if summary.get("task") != "detect":
        return []
    rows = read_suspects(layout.box_issues)
    per_issue = summary.get("per_issue", {})
    counts = ", ".join(f"{per_issue.get(k, 0)} {name}" for k, name in ISSUE_NAMES.items())
    lines = [
        f"Boxes: {len(rows)} suspects among the {summary.get('boxes', 0)} given boxes of "
        f"{summary.get('images', 0)} val split images ({counts}), scored by cleanlab's ObjectLab against "
        "the trained detector's predictions, which never trained on val (lowest box quality first; the "
        f"list is {code(layout.box_issues.name)}).",
        "",
    ]
    if summary.get("note"):
        lines += [esc(summary["note"]), ""]
    if not rows:
        return lines
    source = Path(inputs.params.data.source)
    tiles = [box_tile(source, r) for r in rows[: inputs.params.label_issues.grid]]
    legend = (("given box", figures.MISSED, True), ("prediction that decided it", figures.NEUTRAL, False))
    drawn = figures.image_grid(tiles, inputs.fig_path("box_issues.png"), legend=legend)
    lines += figure_lines([(drawn, "top suspect boxes")], inputs.here)
    lines += [
        "Drawn: the given box dashed, the prediction that decided the issue solid.",
        "",
        "| rank | image | issue | given | predicted | quality |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['rank']} | {code(r['path'], table=True)} | {ISSUE_NAMES.get(r['issue'], esc(r['issue']))} "
        f"| {esc(r['given']) or '-'} | {esc(r['suggested']) or '-'} | {float(r['quality']):.3f} |"
        for r in rows[:TABLE_ROWS]
    ]
    return [*lines, ""]


def box_tile(source: Path, row: dict[str, str]) -> figures.Tile:
    """One suspect box: the given box (dashed) and the deciding prediction, each where it exists."""
    boxes = []
    given = _coords(row, "")
    if given:
        boxes.append(given | {"colour": figures.MISSED, "dashed": True, "label": f"given: {row['given']}"})
    predicted = _coords(row, "pred_")
    if predicted:
        label = f"{row['suggested'] or row['given']} {float(row['pred_score']):.2f}"
        boxes.append(predicted | {"colour": figures.NEUTRAL, "label": f"predicted: {label}"})
    return figures.Tile(
        source / row["path"],
        [
            f"#{row['rank']} {ISSUE_NAMES.get(row['issue'], row['issue'])}",
            f"given: {row['given'] or '-'} · predicted: {row['suggested'] or row['given'] or '-'}",
            f"quality {float(row['quality']):.2f} · {short(Path(row['path']).name, 24)}",
        ],
        colour=figures.BAD,
        boxes=boxes,
    )


def _coords(row: dict[str, str], prefix: str) -> dict[str, float]:
    keys = [f"{prefix}{k}" for k in ("x_min", "y_min", "x_max", "y_max")]
    if any(row.get(k, "") in ("", "nan") for k in keys):
        return {}
    return {k.removeprefix(prefix): float(row[k]) for k in keys}


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
