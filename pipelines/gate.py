"""Metric-regression gate: compare this change's run with a base revision's, image by image.

``python -m pipelines.gate --base main [--output gate.md] [--plots gate_plots] [--accept]``
``python -m pipelines.gate --check-committed`` (after ``dvc repro``: are the committed outputs the code's?)

Both runs scored the same test images (``split_hash`` in ``metrics.json`` says so), so the gate
pairs them: it reads each run's per-image records (``reports/per_image.json``, git-tracked,
written by evaluate), resamples the images once for both, and decides each watched metric on
the interval of the difference with a non-inferiority rule (``pipelines/gate_stats.py``). The
rules (``gate:``, ``evaluate.bootstrap`` / ``confidence``) come from the base revision's
params.yaml; a change to them takes effect only when accepted. Exit codes: 0 pass, 1 regression
(or a change the test set cannot clear), 2 cannot compare (no base, no records, a different
test set, a watched metric the records cannot give), 3 only when the gate itself crashed (a bug:
the traceback is printed). The first line printed is a one-sentence summary, then the Markdown
report (also written to ``--output``). The rule, the accept mechanisms and CI: docs/gate.md.
"""

from __future__ import annotations

import pipelines  # noqa: F401  (offline environment first)

# isort: split
import argparse
import json
import math
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipelines import gate_stats as stats
from pipelines.gate_params import GateMetric, GateSection, gate_section
from pipelines.gate_stats import McNemar, Paired
from stages.core.errors import UserError
from stages.core.layout import Layout
from stages.core.params import DEFAULT_PARAMS_FILE, EvaluateSection, Params, load_params
from stages.metrics.names import GATED, lower_is_better
from stages.metrics.paired import ClassifyRecords, Records, parse, per_image_path

PASS, REGRESSION, CANNOT_COMPARE = 0, 1, 2
CRASHED = 3  # a bug in the gate (traceback printed): never read as a regression
INTERVAL_SUFFIXES = ("_ci_low", "_ci_high")
EPSILON = 1e-9  # metrics are rounded to 6 decimals; equal values must compare equal
ACCEPT_HOW = "the accept-metric-regression label, --accept or gate.accept_regression: true"


class GateError(UserError):
    """The gate cannot compare (no base revision, no metrics or records); exit 2 with this sentence."""


@dataclass(frozen=True)
class Rule:
    name: str
    better: str  # "higher" | "lower"
    tolerance: float
    intervals: bool

    @classmethod
    def of(cls, metric: GateMetric, gate: GateSection) -> Rule:
        better = metric.better or ("lower" if lower_is_better(metric.name) else "higher")
        tolerance = gate.tolerance if metric.tolerance is None else metric.tolerance
        intervals = gate.intervals if metric.intervals is None else metric.intervals
        return cls(metric.name, better, tolerance, intervals)

    @property
    def higher(self) -> bool:
        return self.better == "higher"

    @property
    def limit(self) -> float:
        """The worst change tolerated: ``-tolerance`` (``+tolerance`` when lower is better)."""
        return -self.tolerance if self.higher else self.tolerance


@dataclass(frozen=True)
class Settings:
    """The rules in force: the base's, or this change's when accepted."""

    gate: GateSection
    bootstrap: int
    confidence: float
    seed: int


@dataclass(frozen=True)
class Row:
    rule: Rule
    base: float | None
    new: float | None
    low: float | None = None  # paired interval of new - base
    high: float | None = None
    verdict: str = ""  # pass | regression | inconclusive-fail | inconclusive-pass | unpaired
    detail: str = ""
    detectable: tuple[float, int] | None = None  # smallest detectable drop and its image count

    @property
    def change(self) -> float | None:
        return None if self.new is None or self.base is None else self.new - self.base


@dataclass
class Decision:
    code: int
    summary: str
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    other: list[tuple[str, Any, Any]] = field(default_factory=list)
    rule_changes: list[tuple[str, Any, Any, str]] = field(default_factory=list)
    mcnemar: McNemar | None = None
    settings: Settings | None = None
    rules_from: str = "the base's params.yaml"


# --- the rule ----------------------------------------------------------------------------------


def _number(metrics: dict, key: str) -> float | None:
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def judge(rule: Rule, paired: Paired) -> Row:
    """Decide one watched metric on its paired difference (docs/gate.md, "How it decides")."""
    verdict = stats.rule(paired, rule.tolerance, rule.higher, rule.intervals)
    row = Row(rule, paired.base, paired.new, paired.low, paired.high, verdict)
    intervals = rule.intervals and paired.low is not None and paired.high is not None
    limit, change = _signed(rule.limit), _signed(paired.change)
    # The end of the change's interval on the bad side (lower end when higher is better).
    low, high = (paired.low, paired.high) if rule.higher else (paired.high, paired.low)
    bad_end = _signed(low) if intervals and low is not None else change
    good_end = _signed(high) if intervals and high is not None else change
    beyond, inside = ("below", "above") if rule.higher else ("above", "below")
    bad_side, good_side = ("lower", "upper") if rule.higher else ("upper", "lower")
    if verdict == stats.REGRESSION and intervals:
        detail = f"whole interval {beyond} {limit} ({good_side} end {good_end})"
    elif verdict == stats.REGRESSION:
        detail = f"change {change} {beyond} {limit}"
    elif verdict == stats.INCONCLUSIVE_FAIL:
        detail = f"change {change} {beyond} {limit}, interval reaches {good_end}"
    elif verdict == stats.INCONCLUSIVE_PASS:
        detail = f"change {change} within {limit}, interval reaches {bad_end}"
    elif max(abs(paired.change), abs(paired.low or 0.0), abs(paired.high or 0.0)) <= EPSILON:
        detail = "unchanged"
    elif intervals:
        detail = f"whole interval {inside} {limit} ({bad_side} end {bad_end})"
    else:
        detail = f"change {change} within {limit}"
    return _with(row, verdict, detail)


def _with(row: Row, verdict: str, detail: str, detectable: tuple[float, int] | None = None) -> Row:
    return Row(row.rule, row.base, row.new, row.low, row.high, verdict, detail, detectable)


def watched_rules(gate: GateSection, task: str) -> list[Rule]:
    metrics = gate.metrics or tuple(GateMetric(name=n) for n in GATED.get(task, GATED["classify"]))
    return [Rule.of(m, gate) for m in metrics]


def compare_test_sets(base: dict, new: dict) -> tuple[str | None, str]:
    """(problem or None, description): the split_hash decides; without one, split and images."""
    b_hash, n_hash = base.get("split_hash"), new.get("split_hash")
    images = new.get("images", "?")
    split = new.get("split", "test")
    if b_hash and n_hash:
        if b_hash != n_hash or base.get("split") != new.get("split"):
            return (
                f"the test set changed (split_hash {b_hash} on the base, {n_hash} here; "
                f"{base.get('images', '?')} vs {images} {split} images)",
                f"different test sets: split_hash `{b_hash}` vs `{n_hash}`",
            )
        return None, f"same test set: {images} {split} images, split_hash `{n_hash}`"
    if base.get("split") != new.get("split") or base.get("images") != new.get("images"):
        return (
            f"the test set changed ({base.get('images', '?')} {base.get('split', '?')} images on the base, "
            f"{images} {split} here)",
            "different test sets",
        )
    missing = " and ".join(s for s, h in (("the base", b_hash), ("this change", n_hash)) if not h)
    return None, (
        f"{images} {split} images on both sides; not verified: {missing} recorded no split_hash "
        "(metrics from before it was recorded)"
    )


def align(base: Records, new: Records) -> tuple[Records, str | None]:
    """``new`` in the base's image order, or a problem when the two record different images."""
    if base.task != new.task:
        return new, f"the per-image records are for task {base.task!r} on the base, {new.task!r} here"
    if set(base.ids) != set(new.ids) or len(base.ids) != len(new.ids):
        gone, added = len(set(base.ids) - set(new.ids)), len(set(new.ids) - set(base.ids))
        return new, f"the test images differ ({gone} only on the base, {added} only here)"
    where = {image: i for i, image in enumerate(new.ids)}
    ordered = new.reorder(np.array([where[i] for i in base.ids]))
    if not np.array_equal(base.truths(), ordered.truths()):
        return ordered, "the test images' labels differ"
    return ordered, None


def decide(
    base: dict,
    new: dict,
    base_records: Records,
    new_records: Records,
    settings: Settings,
    task: str,
    accept: bool,
    base_name: str,
    records_path: str,
) -> Decision:
    """The whole verdict: test set, watched metrics, accept; returns exit code, summary and rows."""
    tasks = {t for t in (base.get("task"), new.get("task")) if t}
    if len(tasks) > 1:
        return Decision(
            CANNOT_COMPARE,
            f"cannot compare: the base's metrics are for task {base.get('task')!r}, this change's for "
            f"{new.get('task')!r}.",
            [],
        )
    task = new.get("task") or base.get("task") or task
    rules = watched_rules(settings.gate, task)
    watched = {r.name for r in rules}
    other = [
        (key, base.get(key), new.get(key))
        for key in sorted(set(base) | set(new))
        if key not in watched
        and not key.endswith(INTERVAL_SUFFIXES)
        and (_number(base, key) is not None or _number(new, key) is not None)
    ]
    problem, test_set = compare_test_sets(base, new)
    new_records, mismatch = align(base_records, new_records)
    problem = problem or mismatch
    notes = [test_set]
    if problem:
        if not accept:
            return Decision(
                CANNOT_COMPARE,
                f"cannot compare: {problem}; if the new test set is intended, accept it ({ACCEPT_HOW}).",
                [],
                notes,
                other,
            )
        rows = [
            _with(Row(r, _number(base, r.name), _number(new, r.name)), "unpaired", "different images")
            for r in rules
        ]
        return Decision(
            PASS, f"PASS (accepted): {problem} against {base_name}.", rows, notes, other, settings=settings
        )
    pairable = base_records.names()
    unknown = [r.name for r in rules if r.name not in pairable]
    if unknown:
        return Decision(
            CANNOT_COMPARE,
            f"cannot compare: watched metric{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} "
            f"cannot be recomputed from {records_path} (it can give {', '.join(pairable)}); "
            "change gate.metrics.",
            [],
            notes,
            other,
        )
    names = [r.name for r in rules]
    boot = stats.Bootstrap(base_records, names, settings.bootstrap, settings.confidence, settings.seed)
    compared = boot.compare(new_records)
    drops = stats.detectable_drops(boot, {r.name: (r.tolerance, r.higher) for r in rules}, settings.seed)
    rows = []
    for r in rules:
        judged = judge(r, compared[r.name])
        rows.append(_with(judged, judged.verdict, judged.detail, drops[r.name]))
    test = None
    if isinstance(base_records, ClassifyRecords) and isinstance(new_records, ClassifyRecords):
        test = stats.mcnemar(base_records, new_records)
    decision = Decision(PASS, "", rows, notes, other, mcnemar=test, settings=settings)
    failing = [r for r in rows if r.verdict in (stats.REGRESSION, stats.INCONCLUSIVE_FAIL)]
    warned = [r for r in rows if r.verdict == stats.INCONCLUSIVE_PASS]
    described = "; ".join(map(_describe, failing))
    if failing and not accept:
        decision.code, decision.summary = REGRESSION, f"FAIL: regression against {base_name}: {described}."
    elif failing:
        decision.summary = f"PASS (accepted): regression ({described}) against {base_name}."
    elif warned:
        decision.summary = (
            f"PASS with a warning: no watched metric got worse beyond its tolerance against {base_name}, "
            f"but this test set cannot rule out a larger drop: {'; '.join(map(_describe, warned))}."
        )
    else:
        moves = ", ".join(f"{r.rule.name} {_signed(r.change)}" for r in rows if r.change is not None)
        decision.summary = (
            f"PASS: no watched metric got worse beyond its tolerance against {base_name}: {moves}."
        )
    return decision


def _describe(row: Row) -> str:
    interval = (
        f" [{_signed(row.low)}, {_signed(row.high)}]" if row.low is not None and row.high is not None else ""
    )
    kind = {
        stats.REGRESSION: "regression",
        stats.INCONCLUSIVE_FAIL: "cannot clear it",
        stats.INCONCLUSIVE_PASS: "cannot tell",
    }
    return (
        f"{row.rule.name} {_fmt(row.base)} -> {_fmt(row.new)} (change {_signed(row.change)}{interval}, "
        f"limit {_signed(row.rule.limit)}: {kind.get(row.verdict, row.verdict)})"
    )


# --- reading both sides ------------------------------------------------------------------------


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)


def resolve_base(root: Path, base: str) -> str:
    result = _git(root, "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}")
    if result.returncode != 0:
        raise GateError(
            f"base revision {base!r} not found in this git repository; fetch it first "
            f"(git fetch origin {base.removeprefix('origin/')}) or pass another --base."
        )
    return result.stdout.strip()


def read_metrics(root: Path, path: Path, base: str) -> tuple[dict, dict]:
    """(base, working tree) contents of the metrics file, through DVC (git or DVC cache)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        shown = repo.metrics.show(targets=[str((root / path).resolve())], revs=[base], hide_workspace=False)
    sides = []
    for rev, label in ((base, f"base {base}"), ("workspace", "the working tree")):
        result = shown.get(rev, {})
        files = result.get("data", {})
        entry = next(iter(files.values()), {}) if files else {}
        error = result.get("error") or entry.get("error")
        if error is not None or "data" not in entry:
            why = f": {type(error).__name__}" if error is not None else ""
            hint = "run the pipeline (dvc repro)" if rev == "workspace" else "commit it there, or dvc fetch"
            raise GateError(f"no {path} in {label}{why}; {hint}.")
        sides.append(entry["data"])
    return sides[0], sides[1]


def read_records(root: Path, path: Path, base: str) -> tuple[Records, Records]:
    """(base, working tree) per-image records: the base's from git, else through DVC's cache."""
    shown = _git(root, "show", f"{base}:./{path.as_posix()}")
    if shown.returncode == 0:
        old = shown.stdout
    else:
        import dvc.api

        try:
            old = dvc.api.read(path.as_posix(), repo=str(root), rev=base, encoding="utf-8")
        except Exception as exc:  # DVC raises many kinds for "not there"; all mean the same here
            raise GateError(
                f"no {path} at base {base} ({type(exc).__name__}): its evaluate predates the paired gate "
                f"or the file is not committed; run dvc repro on the base and commit {path} there."
            ) from exc
    here = root / path
    if not here.is_file():
        raise GateError(f"no {path} in the working tree; run the pipeline (dvc repro).")
    return parse(str(old), f"{path} at {base}"), parse(here.read_text(encoding="utf-8"), str(path))


def base_params(root: Path, params_file: Path, base: str) -> dict:
    """The base's params file as a mapping ({} when it has none or it does not parse)."""
    rel = params_file.resolve().relative_to(root.resolve()) if params_file.is_absolute() else params_file
    result = _git(root, "show", f"{base}:./{rel.as_posix()}")
    if result.returncode != 0:
        return {}
    try:
        raw = yaml.safe_load(result.stdout) or {}
    except yaml.YAMLError:
        return {}
    return raw if isinstance(raw, dict) else {}


def _section(raw: dict, name: str) -> dict:
    value = raw.get(name)
    return value if isinstance(value, dict) else {}


def settings_of(raw: dict, source: str) -> Settings:
    """The rules in a params mapping: ``gate:``, ``evaluate.bootstrap`` / ``confidence``, ``base.seed``."""
    evaluate = {k: v for k, v in _section(raw, "evaluate").items() if k in ("bootstrap", "confidence")}
    try:
        gate = GateSection.model_validate(_section(raw, "gate"))
        section = EvaluateSection.model_validate(evaluate)
    except ValueError as exc:
        first = str(exc).splitlines()[1:2] or [str(exc)]
        raise GateError(
            f"the gate rules in {source} are invalid ({first[0].strip()}); fix them there."
        ) from exc
    seed = _section(raw, "base").get("seed", 42)
    return Settings(gate, section.bootstrap, section.confidence, seed if isinstance(seed, int) else 42)


def _rules(gate: GateSection) -> dict[str, Any]:
    """The rules of a gate section, metrics as written (a bare name, or only the keys set)."""
    rules = gate.model_dump(exclude={"accept_regression", "metrics"})
    metrics = [m.model_dump(exclude_none=True) for m in gate.metrics] if gate.metrics is not None else None
    rules["metrics"] = [m["name"] if len(m) == 1 else m for m in metrics] if metrics is not None else None
    return rules


def rule_changes(old: Settings, new: Settings) -> list[tuple[str, Any, Any]]:
    """(key, base value, this change's value) for each rule this change edits (not accept_regression)."""
    before, after = _rules(old.gate), _rules(new.gate)
    changes = [(f"gate.{k}", before[k], after[k]) for k in before if before[k] != after[k]]
    for key in ("bootstrap", "confidence"):
        if getattr(old, key) != getattr(new, key):
            changes.append((f"evaluate.{key}", getattr(old, key), getattr(new, key)))
    return changes


# --- output -------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "–" if value is None else str(value)


def _signed(value: float | None) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:+d}"
    return f"{0.0 if abs(value) < 5e-5 else value:+.4f}"  # no "-0.0000"


def _yaml(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | dict | type(None)) else str(value)


VERDICT = {
    stats.PASS: "✅ pass",
    stats.REGRESSION: "❌ regression",
    stats.INCONCLUSIVE_FAIL: "❌ cannot clear the change",
    stats.INCONCLUSIVE_PASS: "⚠️ passes, cannot tell",
    "unpaired": "– not compared",
}
HEADER = {PASS: "✅ pass", REGRESSION: "❌ regression", CANNOT_COMPARE: "⚠️ cannot compare"}
RULE_TEXT = (
    "Rule (non-inferiority, docs/gate.md): per watched metric, the change new − base on the same images "
    "with a paired bootstrap interval; **pass** when the whole interval is within the limit (−tolerance; "
    "+tolerance for lower-is-better metrics), **regression** when it is entirely beyond it; otherwise the "
    "test set cannot tell, which fails when the change itself is beyond the limit and passes with a warning "
    "when it is not. *Smallest detectable drop*: the least drop, on this base and test set, that would be "
    "a regression (the base losing that many of the images it got right)."
)


def markdown(decision: Decision, base_name: str, images: list[str]) -> str:
    settings = decision.settings
    accepted = decision.summary.startswith("PASS (acc")
    lines = [
        f"### Metric gate: {HEADER[decision.code]}"
        + " (accepted)" * accepted
        + " (with a warning)" * decision.summary.startswith("PASS with a warning"),
        "",
        decision.summary,
        "",
        f"Base: {base_name}. " + " ".join(f"{n[0].upper()}{n[1:]}." for n in decision.notes),
        "",
    ]
    level = f"{settings.confidence:.0%} " if settings and settings.bootstrap else ""
    if decision.rows:
        lines += [
            f"| metric | better | base | this change | change [{level}paired interval] | limit "
            "| smallest detectable drop | verdict |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in decision.rows:
            interval = (
                f" [{_signed(r.low)}, {_signed(r.high)}]" if r.low is not None and r.high is not None else ""
            )
            drop = "–" if r.detectable is None else f"{r.detectable[0]:.4f} ({r.detectable[1]} images)"
            if (
                r.detectable is None
                and r.verdict not in ("unpaired",)
                and r.rule.name not in ("log_loss", "ece")
            ):
                drop = "none: no drop is detectable"
            verdict = VERDICT[r.verdict] + (f": {r.detail}" if r.detail else "")
            lines.append(
                f"| {r.rule.name} | {r.rule.better} | {_fmt(r.base)} | {_fmt(r.new)} "
                f"| {_signed(r.change)}{interval} | {_signed(r.rule.limit)} | {drop} | {verdict} |"
            )
        lines.append("")
    if decision.mcnemar is not None:
        m = decision.mcnemar
        lines += [
            f"McNemar's exact test on accuracy (cross-check): {m.newly_wrong} images newly wrong, "
            f"{m.newly_right} newly right, p = {m.p_value:.3g}.",
            "",
        ]
    if settings is not None:
        how = (
            f"paired bootstrap, {settings.bootstrap} resamples of the test images (seed {settings.seed}), "
            f"{settings.confidence:.0%} intervals"
            if settings.bootstrap
            else "point values (evaluate.bootstrap: 0)"
        )
        lines += [f"Rules from {decision.rules_from}: tolerance {settings.gate.tolerance:g}, {how}.", ""]
    if decision.rule_changes:
        lines += ["| rule changed by this change | base | this change | status |", "|---|---|---|---|"]
        lines += [
            f"| {k} | {_yaml(old)} | {_yaml(new)} | {status} |"
            for k, old, new, status in decision.rule_changes
        ]
        lines.append("")
    if decision.other:
        lines += [
            "<details><summary>Other metrics (not watched; metrics.json, unpaired)</summary>",
            "",
            "| metric | base | this change | change |",
            "|---|---|---|---|",
        ]
        for key, old, new in decision.other:
            both = isinstance(old, int | float) and isinstance(new, int | float)
            lines.append(f"| {key} | {_fmt(old)} | {_fmt(new)} | {_signed(new - old) if both else '–'} |")
        lines += ["", "</details>", ""]
    lines += [RULE_TEXT, ""]
    lines += [f"![{Path(p).stem}]({p})" for p in images]
    return "\n".join(lines).rstrip() + "\n"


def _points(metrics: dict, names: list[str]) -> dict[str, tuple[float, float | None, float | None]]:
    """Each named metric's finite value and its own interval ends (metrics.json), for the figure."""
    points = {}
    for name in names:
        value = _number(metrics, name)
        if value is not None:
            points[name] = (value, _number(metrics, f"{name}_ci_low"), _number(metrics, f"{name}_ci_high"))
    return points


def draw_metrics(base: dict, new: dict, names: list[str], path: Path, base_name: str) -> Path:
    """Base and new point values with each run's own interval, one row per metric."""
    from stages.reporting import gate_figures  # matplotlib only when the gate draws

    return gate_figures.metric_comparison(_points(base, names), _points(new, names), names, path, base_name)


def draw_changes(rows: list[Row], path: Path, base_name: str) -> Path | None:
    """Each watched metric's change with its paired interval and its limit."""
    from stages.reporting import gate_figures  # matplotlib only when the gate draws

    changes = {r.rule.name: (r.change, r.low, r.high, r.rule.limit) for r in rows if r.change is not None}
    return gate_figures.change_intervals(changes, path, base_name) if changes else None


def draw_confusions(root: Path, rel: Path, base: str, path: Path, base_name: str) -> Path | None:
    """The two confusion matrices side by side when ``rel`` (DVC's confusion plot data) changed."""
    import dvc.api

    try:
        old = json.loads(dvc.api.read(rel.as_posix(), repo=str(root), rev=base))
        new = json.loads((root / rel).read_text(encoding="utf-8"))
    except Exception:  # an optional picture: no data, no picture
        return None

    def valid(rows: Any) -> bool:
        return isinstance(rows, list) and all(
            isinstance(r, dict) and {"actual", "predicted"} <= r.keys() for r in rows
        )

    if old == new or not old or not new or not valid(old) or not valid(new):
        return None
    from stages.reporting import gate_figures

    return gate_figures.confusion_pair(old, new, path, base_name)


# --- command line -------------------------------------------------------------------------------


def run_gate(
    params: Params,
    params_file: Path,
    base: str,
    accept: bool = False,
    root: Path = Path("."),
    plots: Path | None = None,
    relative_to: Path | None = None,
) -> tuple[Decision, str]:
    """Compare the working tree with ``base``; returns the decision and its Markdown."""
    here_gate = gate_section(params, str(params_file))  # a bad gate: section fails before any git work
    root = root.resolve()
    sha = resolve_base(root, base)
    label = sha[:7] if sha.startswith(base) else base  # a commit id given: its short form
    base_name = f"`{label}`" if label == sha[:7] else f"`{label}` ({sha[:7]})"
    layout = Layout(params.paths)
    old_raw = base_params(root, params_file, base)
    old = settings_of(old_raw, f"{params_file} at {base}")
    here = Settings(here_gate, params.evaluate.bootstrap, params.evaluate.confidence, params.base.seed)
    notes = []
    base_accepts = _section(old_raw, "gate").get("accept_regression") is True
    if here_gate.accept_regression and base_accepts:
        notes.append(
            "gate.accept_regression is true on the base already, so it accepts nothing here; "
            "set it back to false"
        )
    accepted_by_params = here_gate.accept_regression and not base_accepts
    if accepted_by_params:
        notes.append("accept: gate.accept_regression set to true in this change")
    elif accept:
        notes.append("accept: --accept given")
    accepting = accept or accepted_by_params
    changes = rule_changes(old, here)
    status = (
        "applied (accepted)"
        if accepting
        else "ignored: the base's rule applies (needs the accept-metric-regression label or --accept)"
    )
    settings = (
        Settings(here_gate, here.bootstrap, here.confidence, old.seed) if accepting and changes else old
    )
    base_metrics, new_metrics = read_metrics(root, layout.metrics, base)  # test set, task, other metrics
    records = per_image_path(layout.metrics)
    base_records, new_records = read_records(root, records, base)
    decision = decide(
        base_metrics,
        new_metrics,
        base_records,
        new_records,
        settings,
        params.data.task,
        accepting,
        base_name,
        records.as_posix(),
    )
    decision.notes += notes
    decision.rule_changes = [(k, a, b, status) for k, a, b in changes]
    decision.settings = decision.settings or settings
    if settings is not old:
        decision.rules_from = "this change's params.yaml (accepted)"
    images: list[str] = []
    if plots is not None and decision.rows:
        # Watched metrics, then the others on the same 0-1 scale (a log_loss would squash the axis).
        names = [r.rule.name for r in decision.rows] + [
            k
            for k, old_value, new_value in decision.other
            if k != "images" and _unit(old_value) and _unit(new_value)
        ]
        drawn = [
            draw_changes(decision.rows, plots / "gate_changes.png", f"base {label}"),
            draw_metrics(base_metrics, new_metrics, names, plots / "gate_metrics.png", f"base {label}"),
            draw_confusions(
                root, layout.plots_dir / "confusion.json", base, plots / "gate_confusion.png", f"base {label}"
            ),
        ]
        anchor = (relative_to or Path.cwd()).resolve()
        images = [_relative(p.resolve(), anchor) for p in drawn if p is not None]
    return decision, markdown(decision, base_name, images)


def check_committed(root: Path, paths: list[Path]) -> tuple[int, str]:
    """After ``dvc repro``: exit 1 naming each of ``paths`` that differs from its committed copy."""
    result = _git(
        root, "status", "--porcelain", "--untracked-files=all", "--", *(p.as_posix() for p in paths)
    )
    if result.returncode != 0:
        raise GateError(f"git status failed in {root} ({result.stderr.strip()}); run it in the repository.")
    changed = sorted({line[3:].strip().strip('"') for line in result.stdout.splitlines() if line.strip()})
    named = ", ".join(p.as_posix() for p in paths)
    if not changed:
        return PASS, f"OK: the committed {named} match what dvc repro rebuilt."
    return REGRESSION, (
        f"STALE: {', '.join(changed)} {'differs' if len(changed) == 1 else 'differ'} from the committed "
        f"{'copy' if len(changed) == 1 else 'copies'} after dvc repro; the committed "
        f"metrics are not this code's: commit the rebuilt files (git add {' '.join(changed)})."
    )


def _unit(value: Any) -> bool:
    return isinstance(value, float) and 0.0 <= value <= 1.0


def _relative(path: Path, anchor: Path) -> str:
    try:
        return path.relative_to(anchor).as_posix()
    except ValueError:
        return path.as_posix()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.gate",
        description="Compare this change's run with a base revision, image by image; exit 0 pass, "
        "1 regression, 2 cannot compare (docs/gate.md).",
    )
    parser.add_argument("--base", default="main", help="git revision to compare with (default: main)")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS_FILE, help="params file with gate:")
    parser.add_argument("--output", type=Path, help="also write the Markdown report to this file")
    parser.add_argument("--plots", type=Path, help="draw PNGs here and link them from the Markdown")
    parser.add_argument("--accept", action="store_true", help="accept a regression, new test set or rules")
    parser.add_argument(
        "--check-committed",
        action="store_true",
        help="after dvc repro: fail (exit 1) when the committed metrics.json, per_image.json or "
        "dvc.lock differ from the rebuilt ones",
    )
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        if args.check_committed:
            metrics = Layout(params.paths).metrics
            code, line = check_committed(Path("."), [metrics, per_image_path(metrics), Path("dvc.lock")])
            print(line)
            return code
        relative_to = args.output.parent if args.output else Path.cwd()
        decision, text = run_gate(
            params, args.params, args.base, args.accept, Path("."), args.plots, relative_to
        )
    except UserError as exc:
        summary = f"cannot compare: {exc}"
        decision, text = None, f"### Metric gate: {HEADER[CANNOT_COMPARE]}\n\n{summary}\n"
        print(summary)
    except Exception:
        traceback.print_exc()
        print("the gate crashed (a bug, traceback above); exit 3", file=sys.stderr)
        return CRASHED
    else:
        print(decision.summary)
        print()
        print(text, end="")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
    return decision.code if decision else CANNOT_COMPARE


if __name__ == "__main__":
    sys.exit(main())
