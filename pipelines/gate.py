"""Metric-regression gate: compare ``reports/metrics.json`` with a base revision and decide.

``python -m pipelines.gate --base main [--output gate.md] [--plots gate_plots] [--accept]``

The base's metrics are read with DVC's Python API (``repo.metrics.show``: a metrics file in
git or in the DVC cache), the working tree's from disk; the rules come from the ``gate:``
section of the working tree's ``params.yaml``. Exit codes: 0 pass, 1 regression, 2 cannot
compare (a watched metric missing on one side, a different test set, an unreadable base);
3 only when the gate itself crashed (a bug: the traceback is printed).
The first line printed is a one-sentence summary, then the Markdown report (also written to
``--output``). The rule, the accept mechanisms and the CI workflow: docs/gate.md.
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

import yaml

from pipelines.gate_params import GateMetric, GateSection, gate_section
from stages.core.errors import UserError
from stages.core.layout import Layout
from stages.core.params import DEFAULT_PARAMS_FILE, Params, load_params
from stages.metrics.names import GATED, lower_is_better

PASS, REGRESSION, CANNOT_COMPARE = 0, 1, 2
CRASHED = 3  # a bug in the gate (traceback printed): never read as a regression
INTERVAL_SUFFIXES = ("_ci_low", "_ci_high")
EPSILON = 1e-12  # metrics.json rounds to 6 decimals; equal values must compare equal


class GateError(UserError):
    """The gate cannot compare (no base revision, no metrics file); exit 2 with this sentence."""


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

    def limit_from(self, base: float) -> float:
        """The base value moved by the tolerance in the bad direction."""
        return base - self.tolerance if self.better == "higher" else base + self.tolerance


@dataclass(frozen=True)
class Row:
    rule: Rule
    base: float | None
    new: float | None
    new_low: float | None = None
    new_high: float | None = None
    verdict: str = ""  # regression | noise | tolerance | better | unchanged | missing
    detail: str = ""

    @property
    def limit(self) -> float | None:
        """The base value moved by the tolerance in the bad direction."""
        return None if self.base is None else self.rule.limit_from(self.base)


@dataclass
class Decision:
    code: int
    summary: str
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    other: list[tuple[str, Any, Any]] = field(default_factory=list)


# --- the rule ----------------------------------------------------------------------------------


def _number(metrics: dict, key: str) -> float | None:
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def judge(rule: Rule, base: dict, new: dict) -> Row:
    """Decide one watched metric (the rule is stated in docs/gate.md, "How it decides")."""
    old, now = _number(base, rule.name), _number(new, rule.name)
    low, high = _number(new, f"{rule.name}_ci_low"), _number(new, f"{rule.name}_ci_high")
    row = Row(rule, old, now, low, high)
    if old is None or now is None:
        side = " and ".join(s for s, v in (("the base", old), ("this change", now)) if v is None)
        return _with(row, "missing", f"no numeric value in {side}")
    limit = rule.limit_from(old)
    higher = rule.better == "higher"
    # With intervals, the end of the new interval nearest to the base must still be beyond the limit.
    if rule.intervals and low is not None and high is not None:
        decisive, end = (high, "upper end") if higher else (low, "lower end")
    else:
        decisive, end = now, "value"
    beyond = decisive < limit - EPSILON if higher else decisive > limit + EPSILON
    worse = now < old - EPSILON if higher else now > old + EPSILON
    better = now > old + EPSILON if higher else now < old - EPSILON
    sign = "<" if higher else ">"
    if beyond:
        return _with(row, "regression", f"{end} {decisive:.4f} {sign} {limit:.4f}")
    if worse and (now < limit - EPSILON if higher else now > limit + EPSILON):
        return _with(row, "noise", f"interval reaches {limit:.4f}")
    if worse:
        return _with(row, "tolerance", f"drop {abs(now - old):.4f} <= {rule.tolerance:g}")
    if better:
        return _with(row, "better", "")
    return _with(row, "unchanged", "")


def _with(row: Row, verdict: str, detail: str) -> Row:
    return Row(row.rule, row.base, row.new, row.new_low, row.new_high, verdict, detail)


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


def decide(
    base: dict, new: dict, gate: GateSection, task: str, accept: bool, base_name: str, metrics_path: str
) -> Decision:
    """The whole verdict: test set, watched metrics, accept; returns exit code, summary and rows."""
    notes: list[str] = []
    tasks = {t for t in (base.get("task"), new.get("task")) if t}
    if len(tasks) > 1:
        return Decision(
            CANNOT_COMPARE,
            f"cannot compare: the base's metrics are for task {base.get('task')!r}, this change's for "
            f"{new.get('task')!r}.",
            [],
        )
    task = new.get("task") or base.get("task") or task
    rows = [judge(rule, base, new) for rule in watched_rules(gate, task)]
    watched = {r.rule.name for r in rows}
    other = [
        (key, base.get(key), new.get(key))
        for key in sorted(set(base) | set(new))
        if key not in watched
        and not key.endswith(INTERVAL_SUFFIXES)
        and (_number(base, key) is not None or _number(new, key) is not None)
    ]
    problem, test_set = compare_test_sets(base, new)
    notes.append(test_set)
    missing = [r for r in rows if r.verdict == "missing"]
    regressions = [r for r in rows if r.verdict == "regression"]

    if missing:
        names = ", ".join(f"'{r.rule.name}' ({r.detail})" for r in missing)
        summary = (
            f"cannot compare: watched metric{'s' * (len(missing) > 1)} {names} in {metrics_path}; "
            f"fix the evaluation or the list in gate.metrics."
        )
        return Decision(CANNOT_COMPARE, summary, rows, notes, other)
    if problem and not accept:
        summary = (
            f"cannot compare: {problem}; if the new test set is intended, accept it "
            "(--accept, the accept-metric-regression label or gate.accept_regression: true)."
        )
        return Decision(CANNOT_COMPARE, summary, rows, notes, other)
    described = "; ".join(f"{r.rule.name} {_fmt(r.base)} -> {_fmt(r.new)} ({r.detail})" for r in regressions)
    if regressions and not accept:
        return Decision(
            REGRESSION,
            f"FAIL: regression against {base_name}: {described}.",
            rows,
            notes,
            other,
        )
    if regressions or problem:
        accepted = []
        if regressions:
            accepted.append(f"regression ({described})")
        if problem:
            accepted.append(problem)
        return Decision(
            PASS, f"PASS (accepted): {' and '.join(accepted)} against {base_name}.", rows, notes, other
        )
    # Every row has both values here ("missing" returned above); the filter only says so to the type checker.
    moves = ", ".join(
        f"{r.rule.name} {_signed(r.new - r.base)}" for r in rows if r.new is not None and r.base is not None
    )
    return Decision(
        PASS,
        f"PASS: no watched metric got worse beyond chance and tolerance against {base_name} ({moves}).",
        rows,
        notes,
        other,
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


def base_gate(root: Path, params_file: Path, base: str) -> dict:
    """The ``gate:`` mapping of the base's params file ({} when it has none)."""
    rel = params_file.resolve().relative_to(root.resolve()) if params_file.is_absolute() else params_file
    result = _git(root, "show", f"{base}:./{rel.as_posix()}")
    if result.returncode != 0:
        return {}
    try:
        raw = yaml.safe_load(result.stdout) or {}
    except yaml.YAMLError:
        return {}
    gate = raw.get("gate") if isinstance(raw, dict) else None
    return gate if isinstance(gate, dict) else {}


# --- output -------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "–" if value is None else str(value)


def _signed(value: float) -> str:
    return f"{value:+d}" if isinstance(value, int) else f"{value:+.4f}"


VERDICT = {
    "regression": "❌ regression",
    "noise": "⚠️ worse, within noise",
    "tolerance": "worse, within tolerance",
    "better": "✅ better",
    "unchanged": "unchanged",
    "missing": "✖ missing",
}
HEADER = {PASS: "✅ pass", REGRESSION: "❌ regression", CANNOT_COMPARE: "⚠️ cannot compare"}


def markdown(decision: Decision, base_name: str, confidence: float | None, images: list[str]) -> str:
    level = f"{confidence:.0%} " if confidence else ""
    lines = [
        f"### Metric gate: {HEADER[decision.code]}"
        + (" (accepted)" * decision.summary.startswith("PASS (acc")),
        "",
        decision.summary,
        "",
        f"Base: {base_name}. " + " ".join(f"{n[0].upper()}{n[1:]}." for n in decision.notes),
        "",
    ]
    if decision.rows:
        lines += [
            f"| metric | better | base | this change [{level}interval] | change | limit | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in decision.rows:
            interval = f" [{_fmt(r.new_low)}, {_fmt(r.new_high)}]" if r.new_low is not None else ""
            change = _signed(r.new - r.base) if r.new is not None and r.base is not None else "–"
            verdict = VERDICT[r.verdict] + (f": {r.detail}" if r.detail else "")
            lines.append(
                f"| {r.rule.name} | {r.rule.better} | {_fmt(r.base)} | {_fmt(r.new)}{interval} | {change} "
                f"| {_fmt(r.limit)} | {verdict} |"
            )
        lines.append("")
    if decision.other:
        lines += [
            "<details><summary>Other metrics (not watched)</summary>",
            "",
            "| metric | base | this change | change |",
            "|---|---|---|---|",
        ]
        for key, old, new in decision.other:
            both = isinstance(old, int | float) and isinstance(new, int | float)
            lines.append(f"| {key} | {_fmt(old)} | {_fmt(new)} | {_signed(new - old) if both else '–'} |")
        lines += ["", "</details>", ""]
    lines += [
        "Rule: a watched metric regresses when the end of its new interval nearest the base (the point "
        "value without intervals) is worse than the base value by more than the tolerance. "
        "Watched metrics, tolerance and intervals: `gate:` in params.yaml (docs/gate.md).",
        "",
    ]
    lines += [f"![{Path(p).stem}]({p})" for p in images]
    return "\n".join(lines).rstrip() + "\n"


def _points(metrics: dict, names: list[str]) -> dict[str, tuple[float, float | None, float | None]]:
    """Each named metric's finite value and interval ends, for the figure (absent: left out)."""
    points = {}
    for name in names:
        value = _number(metrics, name)
        if value is not None:
            points[name] = (value, _number(metrics, f"{name}_ci_low"), _number(metrics, f"{name}_ci_high"))
    return points


def draw_metrics(base: dict, new: dict, names: list[str], path: Path, base_name: str) -> Path:
    """Base and new point values with their intervals, one row per metric."""
    from stages.reporting import gate_figures  # matplotlib only when the gate draws

    return gate_figures.metric_comparison(_points(base, names), _points(new, names), names, path, base_name)


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
    gate = gate_section(params, str(params_file))  # a bad gate: section fails before any git work
    root = root.resolve()
    sha = resolve_base(root, base)
    label = sha[:7] if sha.startswith(base) else base  # a commit id given: its short form
    base_name = f"`{label}`" if label == sha[:7] else f"`{label}` ({sha[:7]})"
    layout = Layout(params.paths)
    base_metrics, new_metrics = read_metrics(root, layout.metrics, base)
    old_gate = base_gate(root, params_file, base)
    notes = []
    if gate.accept_regression and old_gate.get("accept_regression") is True:
        notes.append(
            "gate.accept_regression is true on the base already, so it accepts nothing here; "
            "set it back to false"
        )
    accepted_by_params = gate.accept_regression and old_gate.get("accept_regression") is not True
    if accepted_by_params:
        notes.append("accept: gate.accept_regression set to true in this change")
    elif accept:
        notes.append("accept: --accept given")
    if old_gate and _gate_changed(old_gate, gate):
        notes.append("the gate: section of params.yaml differs from the base's; review the new rules")
    decision = decide(
        base_metrics,
        new_metrics,
        gate,
        params.data.task,
        accept or accepted_by_params,
        base_name,
        layout.metrics.as_posix(),
    )
    decision.notes += notes
    images: list[str] = []
    if plots is not None and decision.rows:
        # Watched metrics, then the others on the same 0-1 scale (a log_loss would squash the axis).
        names = [r.rule.name for r in decision.rows] + [
            k for k, old, new in decision.other if k != "images" and _unit(old) and _unit(new)
        ]
        drawn = [
            draw_metrics(base_metrics, new_metrics, names, plots / "gate_metrics.png", f"base {label}"),
            draw_confusions(
                root, layout.plots_dir / "confusion.json", base, plots / "gate_confusion.png", f"base {label}"
            ),
        ]
        anchor = (relative_to or Path.cwd()).resolve()
        images = [_relative(p.resolve(), anchor) for p in drawn if p is not None]
    confidence = params.evaluate.confidence if params.evaluate.bootstrap else None
    return decision, markdown(decision, base_name, confidence, images)


def _gate_changed(old: dict, gate: GateSection) -> bool:
    """True when the rules (not the accept flag) differ from the base's ``gate:`` section."""
    try:
        before = GateSection.model_validate(old).model_dump(exclude={"accept_regression"})
    except Exception:  # an invalid base section differs by definition
        return True
    return before != gate.model_dump(exclude={"accept_regression"})


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
        description="Compare reports/metrics.json with a base revision; exit 0 pass, 1 regression, "
        "2 cannot compare (docs/gate.md).",
    )
    parser.add_argument("--base", default="main", help="git revision to compare with (default: main)")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS_FILE, help="params file with gate:")
    parser.add_argument("--output", type=Path, help="also write the Markdown report to this file")
    parser.add_argument("--plots", type=Path, help="draw PNGs here and link them from the Markdown")
    parser.add_argument("--accept", action="store_true", help="accept a regression or changed test set")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
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
