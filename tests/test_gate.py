"""The metric-regression gate (pipelines/gate.py) on fabricated metrics in a throwaway git + DVC repo.

One repository per module: ``main`` holds the baseline run's ``reports/metrics.json`` (a DVC
metric, ``cache: false``) and a ``params.yaml`` with the ``gate:`` section; each test commits
its change on a branch from ``main`` and runs the gate with ``--base main``. No training.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import pipelines.gate
from pipelines.gate import CANNOT_COMPARE, CRASHED, PASS, REGRESSION, Rule, judge, main
from pipelines.gate_params import GateSection, gate_section
from stages.core.errors import ParamsError
from stages.core.params import parse_params

BASELINE: dict[str, Any] = {
    "accuracy": 0.9,
    "accuracy_ci_high": 0.966667,
    "accuracy_ci_low": 0.816667,
    "f1_macro": 0.898,
    "f1_macro_ci_high": 0.965,
    "f1_macro_ci_low": 0.81,
    "images": 60,
    "precision_macro": 0.91,
    "precision_macro_ci_high": 0.97,
    "precision_macro_ci_low": 0.83,
    "split": "test",
    "split_hash": "a0eafeeb444d7a61",
}
GATE = {"metrics": None, "tolerance": 0.01, "intervals": True, "accept_regression": False}
DVC_YAML = """\
stages:
  evaluate:
    cmd: python -c "print('the real stage is never run here')"
    metrics:
      - reports/metrics.json:
          cache: false
"""


def _env() -> dict[str, str]:
    return os.environ | {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        "DVC_NO_ANALYTICS": "1",
    }


def _sh(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(list(args), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _write(repo: Path, metrics: dict | None = None, gate: dict | None = None, task: str = "classify") -> None:
    if metrics is not None:
        (repo / "reports").mkdir(exist_ok=True)
        (repo / "reports" / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    params = {"data": {"source": "data/raw", "task": task}, "gate": gate if gate is not None else GATE}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def _commit(repo: Path, message: str) -> None:
    _sh(repo, "git", "add", "-A")
    _sh(repo, "git", "commit", "-q", "--allow-empty", "-m", message)


def _new_base(repo: Path, name: str, metrics: dict, gate: dict | None = None) -> None:
    """Commit another baseline as branch ``name`` (from main) and continue the case from it."""
    case = _sh(repo, "git", "branch", "--show-current").stdout.strip()
    _sh(repo, "git", "checkout", "-q", "-B", name, "main")
    _write(repo, metrics, gate)
    _commit(repo, f"baseline {name}")
    _sh(repo, "git", "checkout", "-q", "-B", case, name)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gate_repo")
    _sh(root, "git", "init", "-q", "-b", "main")
    _sh(root, sys.executable, "-m", "dvc", "init", "-q")
    (root / "dvc.yaml").write_text(DVC_YAML, encoding="utf-8")
    _write(root, BASELINE)
    _commit(root, "baseline run")
    return root


@pytest.fixture
def change(repo: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest):
    """Start a branch from main in ``repo`` (cwd); calling the result commits metrics and params there."""
    monkeypatch.chdir(repo)
    _sh(repo, "git", "checkout", "-q", "-f", "-B", f"case-{request.node.name[:40]}", "main")
    _sh(repo, "git", "clean", "-qfdx", "-e", ".dvc")

    def commit(metrics: dict | None = None, gate: dict | None = None, task: str = "classify") -> Path:
        _write(repo, metrics, gate, task)
        _commit(repo, "change")
        return repo

    return commit


def _changed(**values: Any) -> dict:
    return {**BASELINE, **values}


def _gate(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """Run the gate in-process; returns (exit code, first line, the whole output)."""
    code = main(["--base", "main", *args])
    out = capsys.readouterr().out
    return code, out.splitlines()[0], out


def _row(output: str, metric: str) -> list[str]:
    line = next(x for x in output.splitlines() if x.startswith(f"| {metric} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


# --- the four cases of the issue ----------------------------------------------------------------


def test_an_improvement_passes(change, capsys) -> None:
    change(_changed(accuracy=0.933333, accuracy_ci_low=0.866667, accuracy_ci_high=0.983333, f1_macro=0.931))
    code, summary, out = _gate(capsys)
    assert code == PASS
    assert summary.startswith("PASS: no watched metric got worse") and "accuracy +0.0333" in summary
    assert "### Metric gate: ✅ pass" in out
    assert _row(out, "accuracy") == [
        "accuracy",
        "higher",
        "0.9000",
        "0.9333 [0.8667, 0.9833]",
        "+0.0333",
        "0.8900",
        "✅ better",
    ]
    assert "Same test set: 60 test images, split_hash `a0eafeeb444d7a61`" in out
    assert "| precision_macro | 0.9100 | 0.9100 | +0.0000 |" in out  # not watched, still listed


def test_a_regression_beyond_chance_and_tolerance_fails(change, capsys, tmp_path) -> None:
    change(
        _changed(
            accuracy=0.7, accuracy_ci_low=0.583333, accuracy_ci_high=0.816667, f1_macro=0.69,
            f1_macro_ci_low=0.57, f1_macro_ci_high=0.8,
        )
    )  # fmt: skip
    report = tmp_path / "gate.md"
    code, summary, out = _gate(capsys, "--output", str(report))
    assert code == REGRESSION
    assert summary == (
        "FAIL: regression against `main` ({}): accuracy 0.9000 -> 0.7000 (upper end 0.8167 < 0.8900); "
        "f1_macro 0.8980 -> 0.6900 (upper end 0.8000 < 0.8880).".format(summary.split("(")[1][:7])
    )
    row = _row(out, "accuracy")
    assert row[2:] == [
        "0.9000",
        "0.7000 [0.5833, 0.8167]",
        "-0.2000",
        "0.8900",
        "❌ regression: upper end 0.8167 < 0.8900",
    ]
    assert _row(out, "f1_macro")[-1] == "❌ regression: upper end 0.8000 < 0.8880"
    markdown = report.read_text(encoding="utf-8")
    assert (
        markdown.startswith("### Metric gate: ❌ regression\n")
        and "| accuracy | higher | 0.9000 |" in markdown
    )


def test_a_drop_within_the_noise_passes(change, capsys) -> None:
    # Point value below base - tolerance, but the new interval still reaches it.
    change(_changed(accuracy=0.866667, accuracy_ci_low=0.766667, accuracy_ci_high=0.95))
    code, summary, out = _gate(capsys)
    assert code == PASS, summary
    assert _row(out, "accuracy")[-1] == "⚠️ worse, within noise: interval reaches 0.8900"
    assert _row(out, "f1_macro")[-1] == "unchanged"


def test_a_changed_test_set_cannot_be_compared(change, capsys) -> None:
    change(_changed(split_hash="ffff0000eeee1111", accuracy=0.95))
    code, summary, out = _gate(capsys)
    assert code == CANNOT_COMPARE
    assert summary.startswith(
        "cannot compare: the test set changed (split_hash a0eafeeb444d7a61 on the base, ffff0000eeee1111 here"
    )
    assert "Different test sets: split_hash `a0eafeeb444d7a61` vs `ffff0000eeee1111`" in out


# --- more of the rule ---------------------------------------------------------------------------


def test_without_intervals_the_point_value_decides(change, capsys) -> None:
    change(
        _changed(accuracy=0.866667, accuracy_ci_low=0.766667, accuracy_ci_high=0.95),
        gate={**GATE, "intervals": False},
    )
    code, _, out = _gate(capsys)
    assert code == REGRESSION
    assert _row(out, "accuracy")[-1] == "❌ regression: value 0.8667 < 0.8900"


def test_a_per_metric_tolerance_and_a_lower_is_better_metric(change, capsys) -> None:
    gate = {
        **GATE,
        "intervals": False,
        "metrics": [{"name": "accuracy", "tolerance": 0.05}, "log_loss"],
    }
    _new_base(Path.cwd(), "base-with-loss", {**BASELINE, "log_loss": 0.30}, gate)
    change(_changed(accuracy=0.866667, log_loss=0.35), gate=gate)
    code, summary, out = _gate(capsys, "--base", "base-with-loss")
    assert code == REGRESSION
    assert _row(out, "accuracy")[-1] == "worse, within tolerance: drop 0.0333 <= 0.05"
    assert _row(out, "log_loss")[1] == "lower"  # inferred from the name
    assert _row(out, "log_loss")[-1] == "❌ regression: value 0.3500 > 0.3100"
    assert "log_loss 0.3000 -> 0.3500" in summary and "accuracy" not in summary


def test_a_watched_metric_missing_on_one_side_is_named(change, capsys) -> None:
    metrics = _changed()
    del metrics["f1_macro"]
    change(metrics)
    code, summary, _ = _gate(capsys)
    assert code == CANNOT_COMPARE
    assert summary == (
        "cannot compare: watched metric 'f1_macro' (no numeric value in this change) in "
        "reports/metrics.json; fix the evaluation or the list in gate.metrics."
    )


def test_detection_runs_watch_map_by_default(change, capsys) -> None:
    change(_changed(task="detect"), task="detect")
    code, summary, _ = _gate(capsys)
    assert code == CANNOT_COMPARE  # the baseline is a classifier's metrics: no map50_95 there
    assert "cannot compare: the base's metrics are for task" not in summary  # baseline has no task key
    assert "'map50_95' (no numeric value in the base and this change)" in summary
    assert "'map50' (no numeric value in the base and this change)" in summary


def test_a_task_change_cannot_be_compared(change, capsys) -> None:
    _new_base(Path.cwd(), "base-classify", _changed(task="classify"))
    change(_changed(task="detect", map50=0.5, map50_95=0.3), task="detect")
    code, summary, _ = _gate(capsys, "--base", "base-classify")
    assert code == CANNOT_COMPARE
    assert summary == (
        "cannot compare: the base's metrics are for task 'classify', this change's for 'detect'."
    )


# --- accepting a deliberate regression ----------------------------------------------------------

REGRESSED = {"accuracy": 0.7, "accuracy_ci_low": 0.583333, "accuracy_ci_high": 0.816667}


def test_accept_flag_passes_a_regression_and_says_so(change, capsys) -> None:
    change(_changed(**REGRESSED))
    code, summary, out = _gate(capsys, "--accept")
    assert code == PASS
    assert summary.startswith("PASS (accepted): regression (accuracy 0.9000 -> 0.7000")
    assert "Accept: --accept given." in out and "### Metric gate: ✅ pass (accepted)" in out
    assert _row(out, "accuracy")[-1].startswith("❌ regression")  # the table still shows it


def test_accept_flag_also_passes_a_deliberately_new_test_set(change, capsys) -> None:
    change(_changed(split_hash="ffff0000eeee1111"))
    code, summary, _ = _gate(capsys, "--accept")
    assert code == PASS
    assert summary.startswith("PASS (accepted): the test set changed")


def test_accept_regression_in_params_accepts_the_change_that_sets_it(change, capsys) -> None:
    change(_changed(**REGRESSED), gate={**GATE, "accept_regression": True})
    code, summary, out = _gate(capsys)
    assert code == PASS and summary.startswith("PASS (accepted)")
    assert "Accept: gate.accept_regression set to true in this change." in out


def test_accept_regression_left_true_on_the_base_accepts_nothing(change, capsys) -> None:
    accepting = {**GATE, "accept_regression": True}
    _new_base(Path.cwd(), "base-accepting", BASELINE, accepting)  # a merged change that accepted one
    change(_changed(**REGRESSED), gate=accepting)
    code, _, out = _gate(capsys, "--base", "base-accepting")
    assert code == REGRESSION
    assert "accepts nothing here; set it back to false" in out


def test_changed_gate_rules_are_pointed_out(change, capsys) -> None:
    change(_changed(), gate={**GATE, "tolerance": 0.2})
    code, _, out = _gate(capsys)
    assert code == PASS
    assert "The gate: section of params.yaml differs from the base's; review the new rules." in out


# --- inputs the gate cannot use -----------------------------------------------------------------


def test_an_unknown_base_is_exit_2_with_the_fix(change, capsys) -> None:
    change(_changed())
    code, summary, _ = _gate(capsys, "--base", "origin/nope")
    assert code == CANNOT_COMPARE
    assert summary == (
        "cannot compare: base revision 'origin/nope' not found in this git repository; fetch it first "
        "(git fetch origin nope) or pass another --base."
    )


def test_no_metrics_in_the_working_tree_is_exit_2(change, capsys) -> None:
    repo = change(_changed())
    (repo / "reports" / "metrics.json").unlink()
    code, summary, _ = _gate(capsys)
    assert code == CANNOT_COMPARE
    assert summary.startswith("cannot compare: no reports/metrics.json in the working tree")


def test_a_crash_is_exit_3_not_a_regression(change, capsys, monkeypatch) -> None:
    change(_changed())

    def broken(*_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(pipelines.gate, "read_metrics", broken)
    assert main(["--base", "main"]) == CRASHED
    assert "RuntimeError: a bug" in capsys.readouterr().err


def test_a_bad_gate_section_is_one_sentence() -> None:
    with pytest.raises(
        ParamsError, match=r"unknown key 'gate.metrics.0.tolernce'; allowed keys here are: name"
    ):
        gate_section(
            parse_params({"data": {"source": "x"}, "gate": {"metrics": [{"name": "a", "tolernce": 1}]}})
        )
    with pytest.raises(ParamsError, match=r"listed more than once"):
        gate_section(parse_params({"data": {"source": "x"}, "gate": {"metrics": ["accuracy", "accuracy"]}}))


def test_gate_cli_refuses_a_bad_gate_section_before_any_git_work(tmp_path, capsys) -> None:
    """The stages keep gate: as a mapping; the gate validates it first, naming the file and key."""
    params_file = tmp_path / "params.yaml"
    params_file.write_text(
        yaml.safe_dump({"data": {"source": "x"}, "gate": {"tolerence": 0.1}}), encoding="utf-8"
    )
    assert main(["--base", "no-such-revision", "--params", str(params_file)]) == CANNOT_COMPARE
    out = capsys.readouterr().out
    assert (
        f"cannot compare: {params_file}: unknown key 'gate.tolerence'; allowed keys here are: metrics" in out
    )


@pytest.mark.parametrize(
    ("better", "new", "low", "high", "verdict"),
    [
        ("higher", 0.80, 0.70, 0.89, "noise"),  # upper end exactly at the limit: not below it
        ("higher", 0.80, 0.70, 0.889, "regression"),
        ("higher", 0.895, None, None, "tolerance"),  # no interval recorded: the point value decides
        ("lower", 0.95, 0.911, 0.99, "regression"),  # lower is better: the lower end must exceed the limit
        ("lower", 0.95, 0.91, 0.99, "noise"),
    ],
)
def test_the_rule_at_its_edges(better, new, low, high, verdict) -> None:
    rule = Rule("m", better, tolerance=0.01, intervals=True)
    base = {"m": 0.9}
    metrics = {"m": new} | ({"m_ci_low": low, "m_ci_high": high} if low is not None else {})
    assert judge(rule, base, metrics).verdict == verdict


# --- the command line, plots, and metrics kept in the DVC cache --------------------------------


def test_the_command_line_with_plots(change, tmp_path) -> None:
    repo = change(_changed(**REGRESSED))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.gate",
            "--base",
            "main",
            "--output",
            "out/gate.md",
            "--plots",
            "out/plots",
        ],
        cwd=repo,
        env=_env() | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == REGRESSION, result.stderr
    assert result.stdout.startswith("FAIL: regression against `main`")
    assert (repo / "out" / "plots" / "gate_metrics.png").stat().st_size > 1000
    assert "![gate_metrics](plots/gate_metrics.png)" in (repo / "out" / "gate.md").read_text(encoding="utf-8")


def test_metrics_kept_in_the_dvc_cache_are_read_at_the_base(tmp_path, monkeypatch, capsys) -> None:
    root = tmp_path / "cached"
    root.mkdir()
    _sh(root, "git", "init", "-q", "-b", "main")
    _sh(root, sys.executable, "-m", "dvc", "init", "-q")
    (root / "dvc.yaml").write_text(DVC_YAML.replace("cache: false", "cache: true"), encoding="utf-8")
    _write(root, BASELINE)
    _sh(root, sys.executable, "-m", "dvc", "commit", "-q", "-f", "evaluate")
    _commit(root, "baseline: metrics in the DVC cache, not in git")
    assert "reports/metrics.json" not in _sh(root, "git", "ls-files").stdout
    _sh(root, "git", "checkout", "-q", "-b", "change")
    _write(root, _changed(**REGRESSED))
    monkeypatch.chdir(root)
    code, summary, _ = _gate(capsys)
    assert code == REGRESSION, summary
    assert "accuracy 0.9000 -> 0.7000" in summary


def test_the_repository_params_file_documents_the_defaults() -> None:
    from stages.core.params import load_params
    from tests.conftest import REPO_ROOT

    assert gate_section(load_params(REPO_ROOT / "params.yaml")) == GateSection()
