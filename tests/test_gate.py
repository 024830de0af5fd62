"""The metric-regression gate (pipelines/gate.py) on synthetic per-image records in a throwaway
git + DVC repo.

One repository per module: ``main`` holds the baseline run's ``reports/metrics.json`` and
``reports/per_image.json`` (both DVC outputs with ``cache: false``, as in the real dvc.yaml)
and a ``params.yaml`` with the ``gate:`` section; each test commits its change on a branch from
``main`` and runs the gate with ``--base main``. The records are written by the same function
evaluate uses (``stages.metrics.paired``), from made-up probabilities: no model, no images.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import pipelines.gate
from pipelines import gate_stats as stats
from pipelines.gate import CANNOT_COMPARE, CRASHED, PASS, REGRESSION, main
from pipelines.gate_params import GateSection, gate_section
from stages.core.errors import ParamsError
from stages.core.params import parse_params
from stages.metrics import detection, paired
from stages.metrics.classification import Options

N = 15  # the demo's test set
SPLIT_HASH = "a0eafeeb444d7a61"
GATE = {"metrics": None, "tolerance": 0.01, "intervals": True, "accept_regression": False}
EVALUATE = {"bootstrap": 1000, "confidence": 0.95}
DVC_YAML = """\
stages:
  evaluate:
    cmd: python -c "print('the real stage is never run here')"
    metrics:
      - reports/metrics.json:
          cache: false
    outs:
      - reports/per_image.json:
          cache: false
"""


def classify_doc(wrong: tuple[int, ...] = (), n: int = N, ids: str = "img") -> dict:
    """Records of ``n`` images of two classes, all predicted right except ``wrong``."""
    y = np.arange(n) % 2
    p = np.full((n, 2), 0.1)
    p[np.arange(n), y] = 0.9
    p[list(wrong)] = p[list(wrong)][:, ::-1]
    return paired.classify_document([f"{ids}{i:03d}" for i in range(n)], y, p, ["ants", "bees"], Options())


def metrics_of(doc: dict, split_hash: str = SPLIT_HASH, **values: Any) -> dict:
    """The metrics.json beside the records (the gate reads its task, test set and other metrics)."""
    right = sum(r.get("label") == r.get("prediction", -1) for r in doc["images"])
    return {
        "task": doc["task"],
        "accuracy": round(right / len(doc["images"]), 6),
        "images": len(doc["images"]),
        "split": "test",
        "split_hash": split_hash,
        **values,
    }


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


def _write(
    repo: Path,
    doc: dict | None = None,
    metrics: dict | None = None,
    gate: dict | None = None,
    evaluate: dict | None = None,
) -> None:
    reports = repo / "reports"
    reports.mkdir(exist_ok=True)
    if doc is not None:
        paired.write_per_image(doc, reports / "per_image.json")
        metrics = metrics if metrics is not None else metrics_of(doc)
    if metrics is not None:
        (reports / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    task = (metrics or {}).get("task", "classify")
    params = {
        "base": {"seed": 42},
        "data": {"source": "data/raw", "task": task},
        "evaluate": evaluate if evaluate is not None else EVALUATE,
        "gate": gate if gate is not None else GATE,
    }
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def _commit(repo: Path, message: str) -> None:
    _sh(repo, "git", "add", "-A")
    _sh(repo, "git", "commit", "-q", "--allow-empty", "-m", message)


def _new_base(repo: Path, name: str, doc: dict, metrics: dict | None = None, **params: Any) -> None:
    """Commit another baseline as branch ``name`` (from main) and continue the case from it."""
    case = _sh(repo, "git", "branch", "--show-current").stdout.strip()
    _sh(repo, "git", "checkout", "-q", "-B", name, "main")
    _write(repo, doc, metrics, **params)
    _commit(repo, f"baseline {name}")
    _sh(repo, "git", "checkout", "-q", "-B", case, name)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gate_repo")
    _sh(root, "git", "init", "-q", "-b", "main")
    _sh(root, sys.executable, "-m", "dvc", "init", "-q")
    (root / "dvc.yaml").write_text(DVC_YAML, encoding="utf-8")
    _write(root, classify_doc())  # the demo's base: 15 of 15 right
    _commit(root, "baseline run")
    return root


@pytest.fixture
def change(repo: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest):
    """Start a branch from main in ``repo`` (cwd); calling the result commits records and params there."""
    monkeypatch.chdir(repo)
    _sh(repo, "git", "checkout", "-q", "-f", "-B", f"case-{request.node.name[:40]}", "main")
    _sh(repo, "git", "clean", "-qfdx", "-e", ".dvc")

    def commit(doc: dict | None = None, metrics: dict | None = None, **params: Any) -> Path:
        _write(repo, doc, metrics, **params)
        _commit(repo, "change")
        return repo

    return commit


def _gate(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """Run the gate in-process; returns (exit code, first line, the whole output), the base's
    commit id left out of its name (`main` (1a2b3c4) -> `main`)."""
    code = main(["--base", "main", *args])
    out = re.sub(r"(`[^`]+`) \([0-9a-f]{7}\)", r"\1", capsys.readouterr().out)
    return code, out.splitlines()[0], out


def _row(output: str, metric: str) -> list[str]:
    line = next(x for x in output.splitlines() if x.startswith(f"| {metric} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def _interval(cell: str) -> tuple[float, float, float]:
    """(change, low, high) from a cell such as ``-0.2000 [-0.4000, +0.0000]``."""
    change, rest = cell.split(" [")
    low, high = rest.rstrip("]").split(", ")
    return float(change), float(low), float(high)


# --- the cases of the issue ---------------------------------------------------------------------


def test_three_of_fifteen_flipped_from_perfect_fails(change, capsys) -> None:
    change(classify_doc(wrong=(0, 3, 8)))
    code, summary, out = _gate(capsys)
    assert code == REGRESSION, out
    assert summary.startswith("FAIL: regression against `main`: accuracy 1.0000 -> 0.8000 (change -0.2000")
    row = _row(out, "accuracy")
    assert row[:4] == ["accuracy", "higher", "1.0000", "0.8000"]
    point, low, high = _interval(row[4])
    # Some resamples draw none of the 3 mistakes (0.8^15 = 3.5 % > 2.5 %): the interval reaches 0,
    # so the data cannot prove a regression, and the change itself is beyond the limit: it fails.
    assert point == -0.2 and low < point and high == 0.0
    assert row[5] == "-0.0100"
    assert row[-1].startswith(
        "❌ cannot clear the change: change -0.2000 below -0.0100, interval reaches +0.0000"
    )
    assert (
        "McNemar's exact test on accuracy (cross-check): 3 images newly wrong, 0 newly right, p = 0.25."
        in out
    )
    assert "Rules from the base's params.yaml: tolerance 0.01, paired bootstrap, 1000 resamples" in out


def test_the_smallest_detectable_drop_is_what_the_gate_then_flags(change, capsys) -> None:
    change(classify_doc(wrong=(1,)))
    _, _, out = _gate(capsys)
    drop, count = _row(out, "accuracy")[6].split(" (")
    images = int(count.split()[0])
    assert float(drop) == pytest.approx(images / N, abs=1e-4) and 1 < images < N
    # Losing exactly that many images is a regression; one fewer is not (the same seeded resamples).
    change(classify_doc(wrong=tuple(range(images))))
    code, _, out = _gate(capsys)
    assert code == REGRESSION and _row(out, "accuracy")[-1].startswith(
        "❌ regression: whole interval below -0.0100 (upper end"
    )
    change(classify_doc(wrong=tuple(range(images - 1))))
    _, _, out = _gate(capsys)
    assert not _row(out, "accuracy")[-1].startswith("❌ regression")


def test_the_same_model_rescored_passes_with_zero_difference(change, capsys) -> None:
    change(classify_doc())  # the same records (a rerun of an unchanged model)
    code, summary, out = _gate(capsys)
    assert code == PASS
    assert summary.startswith("PASS: no watched metric got worse beyond its tolerance against `main`")
    assert summary.endswith(": accuracy +0.0000, f1_macro +0.0000.")
    for metric in ("accuracy", "f1_macro"):
        row = _row(out, metric)
        assert row[4] == "+0.0000 [+0.0000, +0.0000]" and row[-1] == "✅ pass: unchanged"
    assert (
        "McNemar's exact test on accuracy (cross-check): 0 images newly wrong, 0 newly right, p = 1." in out
    )


def test_a_real_improvement_passes(change, capsys) -> None:
    _new_base(Path.cwd(), "base-weaker", classify_doc(wrong=(0, 2, 4, 6, 9)))
    change(classify_doc(wrong=(9,)))
    code, _, out = _gate(capsys, "--base", "base-weaker")
    assert code == PASS, out
    point, low, high = _interval(_row(out, "accuracy")[4])
    assert point == pytest.approx(4 / N, abs=1e-4) and 0 <= low <= point <= high
    assert _row(out, "accuracy")[-1].startswith("✅ pass: whole interval above -0.0100 (lower end +0.")
    assert "0 images newly wrong, 4 newly right" in out


def test_a_small_drop_the_test_set_cannot_clear_passes_with_a_warning(change, capsys) -> None:
    lenient = {**GATE, "tolerance": 0.1}
    _new_base(Path.cwd(), "base-lenient", classify_doc(), gate=lenient)
    change(classify_doc(wrong=(5,)), gate=lenient)
    code, summary, out = _gate(capsys, "--base", "base-lenient")
    assert code == PASS
    assert summary.startswith("PASS with a warning:") and "cannot rule out a larger drop" in summary
    assert "### Metric gate: ✅ pass (with a warning)" in out
    assert _row(out, "accuracy")[-1].startswith("⚠️ passes, cannot tell: change -0.0667 within -0.1000")


def test_a_tolerance_raised_in_the_change_is_ignored_without_the_accept_label(change, capsys) -> None:
    change(
        classify_doc(wrong=(0, 3, 8)),
        gate={**GATE, "tolerance": 1.0},
        evaluate={**EVALUATE, "confidence": 0.5},
    )
    code, _, out = _gate(capsys)
    assert code == REGRESSION  # the base's tolerance 0.01 decided
    assert _row(out, "accuracy")[5] == "-0.0100"
    ignored = "ignored: the base's rule applies (needs the accept-metric-regression label or --accept)"
    assert f"| gate.tolerance | 0.01 | 1.0 | {ignored} |" in out
    assert f"| evaluate.confidence | 0.95 | 0.5 | {ignored} |" in out
    # Accepted, the change's rules apply (and say so).
    code, summary, out = _gate(capsys, "--accept")
    assert code == PASS and summary.startswith("PASS: no watched metric got worse")
    assert _row(out, "accuracy")[5] == "-1.0000"
    assert "| gate.tolerance | 0.01 | 1.0 | applied (accepted) |" in out
    assert "Rules from this change's params.yaml (accepted): tolerance 1, paired bootstrap" in out
    assert "50% intervals" in out


def test_a_shorter_metric_list_in_the_change_is_ignored(change, capsys) -> None:
    change(classify_doc(wrong=(0, 3, 8)), gate={**GATE, "metrics": ["log_loss"]})
    code, _, out = _gate(capsys)
    assert code == REGRESSION and "| accuracy |" in out and "| f1_macro |" in out
    assert '| gate.metrics | null | ["log_loss"] | ignored:' in out


def test_a_lower_is_better_metric_and_point_values_without_intervals(change, capsys) -> None:
    rules = {
        **GATE,
        "metrics": [{"name": "log_loss", "tolerance": 0.05}, {"name": "accuracy", "intervals": False}],
    }
    _new_base(Path.cwd(), "base-loss", classify_doc(), gate=rules)
    change(classify_doc(wrong=(2,)), gate=rules)
    code, _, out = _gate(capsys, "--base", "base-loss")
    assert code == REGRESSION
    loss = _row(out, "log_loss")
    assert loss[1] == "lower" and loss[5] == "+0.0500" and loss[6] == "–"  # losses are kept when images flip
    point, low, high = _interval(loss[4])
    assert point > 0.05 and high > point > low >= 0.0  # one image's loss rose from 0.105 to 2.303
    assert loss[-1].startswith(f"❌ cannot clear the change: change {point:+.4f} above +0.0500")
    assert _row(out, "accuracy")[-1] == "❌ regression: change -0.0667 below -0.0100"  # the point decides


def test_a_different_test_set_exits_2(change, capsys) -> None:
    doc = classify_doc(ids="other")
    change(doc, metrics_of(doc, split_hash="ffff0000eeee1111"))
    code, summary, out = _gate(capsys)
    assert code == CANNOT_COMPARE
    assert summary.startswith(
        "cannot compare: the test set changed (split_hash a0eafeeb444d7a61 on the base, ffff0000eeee1111 here"
    )
    assert "Different test sets: split_hash `a0eafeeb444d7a61` vs `ffff0000eeee1111`" in out
    # Same split_hash recorded but other images in the records: still not comparable.
    change(classify_doc(ids="other"))
    code, summary, _ = _gate(capsys)
    assert code == CANNOT_COMPARE and "the test images differ (15 only on the base, 15 only here)" in summary
    code, summary, out = _gate(capsys, "--accept")
    assert code == PASS and summary.startswith("PASS (accepted): the test images differ")
    assert _row(out, "accuracy")[-1] == "– not compared: different images"


def test_stale_committed_metrics_are_caught_by_check_committed(change, capsys) -> None:
    repo = change(classify_doc())
    (repo / "dvc.lock").write_text("schema: '2.0'\n", encoding="utf-8")
    _commit(repo, "lock")
    assert main(["--check-committed"]) == PASS
    assert capsys.readouterr().out.startswith("OK: the committed reports/metrics.json")
    metrics = json.loads((repo / "reports" / "metrics.json").read_text(encoding="utf-8"))
    (repo / "reports" / "metrics.json").write_text(json.dumps({**metrics, "accuracy": 0.9}), encoding="utf-8")
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n", encoding="utf-8")
    assert main(["--check-committed"]) == REGRESSION
    out = capsys.readouterr().out
    assert out.startswith("STALE: dvc.lock, reports/metrics.json differ from the committed copies")


# --- detection ----------------------------------------------------------------------------------


def _detect_records(n: int = 24, lost: tuple[int, ...] = (), seed: int = 0) -> dict:
    """Two classes, 1-2 truths per image, one good box per truth plus a low-score false positive;
    images in ``lost`` get their boxes shifted off the truths."""
    rng = np.random.default_rng(seed)
    truths, predictions = [], []
    for i in range(n):
        k = 1 + i % 2
        boxes = np.array([[10.0 + 40 * j, 10.0, 40.0 + 40 * j, 50.0] for j in range(k)])
        labels = np.array([(i + j) % 2 for j in range(k)])
        truths.append({"boxes": boxes, "labels": labels})
        shift = 25.0 if i in lost else rng.uniform(0, 2)
        scores = np.r_[rng.uniform(0.5, 0.99, k), 0.2]
        predicted = np.vstack([boxes + shift, [[200.0, 200.0, 230.0, 230.0]]])
        predictions.append({"boxes": predicted, "labels": np.r_[labels, 0], "scores": scores})
    matches = detection.match_all(truths, predictions, ["a", "b"])
    return paired.detect_document([f"d{i:03d}" for i in range(n)], matches, 0.25)


def test_detection_records_round_trip_to_the_same_map() -> None:
    doc = _detect_records(lost=(3, 4))
    records = paired.parse(paired.dumps(doc), "per_image.json")
    assert isinstance(records, paired.DetectRecords)
    n = len(doc["images"])
    rng = np.random.default_rng(1)
    weights = rng.integers(0, 3, size=(5, n)).astype(float)
    direct = detection.numpy_map(records.matches, weights)
    shuffled = records.reorder(rng.permutation(n))  # same images in another order
    back = shuffled.reorder(np.array([shuffled.ids.index(i) for i in records.ids]))
    again = back.values(weights, ["map50", "map50_95"])
    for name in ("map50", "map50_95"):
        np.testing.assert_allclose(again[name], direct[name])
    assert records.values(np.ones((1, n)), ["map50"])["map50"][0] < 1.0  # the lost images count


def test_a_detection_pair_uses_paired_map(change, capsys) -> None:
    base = _detect_records()
    _new_base(Path.cwd(), "base-detect", base, metrics_of(base))
    worse = _detect_records(lost=tuple(range(0, 24, 3)))  # 8 of 24 images lose their boxes
    change(worse, metrics_of(worse))
    code, summary, out = _gate(capsys, "--base", "base-detect")
    assert code == REGRESSION, out
    assert "map50_95" in summary and "map50 " in summary
    base_map = paired.parse(paired.dumps(base), "b").values(np.ones((1, 24)), ["map50"])["map50"][0]
    new_map = paired.parse(paired.dumps(worse), "n").values(np.ones((1, 24)), ["map50"])["map50"][0]
    row = _row(out, "map50")
    assert (float(row[2]), float(row[3])) == pytest.approx((base_map, new_map), abs=1e-4)
    point, low, high = _interval(row[4])
    assert low <= point <= high < 0 and "McNemar" not in out
    # The same detections rescored: zero difference, pass.
    change(base, metrics_of(base))
    code, _, out = _gate(capsys, "--base", "base-detect")
    assert code == PASS and _row(out, "map50_95")[4] == "+0.0000 [+0.0000, +0.0000]"


# --- accepting a deliberate regression ----------------------------------------------------------

WORSE = (0, 3, 8)


def test_accept_flag_passes_a_regression_and_says_so(change, capsys) -> None:
    change(classify_doc(wrong=WORSE))
    code, summary, out = _gate(capsys, "--accept")
    assert code == PASS
    assert summary.startswith("PASS (accepted): regression (accuracy 1.0000 -> 0.8000")
    assert "Accept: --accept given." in out and "### Metric gate: ✅ pass (accepted)" in out
    assert _row(out, "accuracy")[-1].startswith("❌ cannot clear the change")  # the table still shows it


def test_accept_regression_in_params_accepts_the_change_that_sets_it(change, capsys) -> None:
    change(classify_doc(wrong=WORSE), gate={**GATE, "accept_regression": True})
    code, summary, out = _gate(capsys)
    assert code == PASS and summary.startswith("PASS (accepted)")
    assert "Accept: gate.accept_regression set to true in this change." in out


def test_accept_regression_left_true_on_the_base_accepts_nothing(change, capsys) -> None:
    accepting = {**GATE, "accept_regression": True}
    _new_base(
        Path.cwd(), "base-accepting", classify_doc(), gate=accepting
    )  # a merged change that accepted one
    change(classify_doc(wrong=WORSE), gate=accepting)
    code, _, out = _gate(capsys, "--base", "base-accepting")
    assert code == REGRESSION
    assert "accepts nothing here; set it back to false" in out


# --- inputs the gate cannot use -----------------------------------------------------------------


def test_a_base_without_per_image_records_is_exit_2_with_the_fix(change, capsys) -> None:
    _sh(Path.cwd(), "git", "checkout", "-q", "-B", "base-old", "main")
    _sh(Path.cwd(), "git", "rm", "-q", "reports/per_image.json")
    _commit(Path.cwd(), "an evaluate from before the paired gate")
    _sh(Path.cwd(), "git", "checkout", "-q", "-B", "case-old", "main")
    code, summary, _ = _gate(capsys, "--base", "base-old")
    assert code == CANNOT_COMPARE
    assert summary.startswith("cannot compare: no reports/per_image.json at base base-old (")
    assert summary.endswith("run dvc repro on the base and commit reports/per_image.json there.")


def test_a_watched_metric_the_records_cannot_give_is_exit_2(change, capsys) -> None:
    auc = {**GATE, "metrics": ["accuracy", "roc_auc_macro"]}
    _new_base(Path.cwd(), "base-auc", classify_doc(), gate=auc)
    change(classify_doc(), gate=auc)
    code, summary, _ = _gate(capsys, "--base", "base-auc")
    assert code == CANNOT_COMPARE
    assert summary.startswith(
        "cannot compare: watched metric 'roc_auc_macro' cannot be recomputed from reports/per_image.json"
    )


def test_a_task_change_cannot_be_compared(change, capsys) -> None:
    doc = _detect_records()
    change(doc, metrics_of(doc))
    code, summary, _ = _gate(capsys)
    assert code == CANNOT_COMPARE
    assert (
        summary == "cannot compare: the base's metrics are for task 'classify', this change's for 'detect'."
    )


def test_an_unknown_base_is_exit_2_with_the_fix(change, capsys) -> None:
    change(classify_doc())
    code, summary, _ = _gate(capsys, "--base", "origin/nope")
    assert code == CANNOT_COMPARE
    assert summary == (
        "cannot compare: base revision 'origin/nope' not found in this git repository; fetch it first "
        "(git fetch origin nope) or pass another --base."
    )


def test_no_metrics_in_the_working_tree_is_exit_2(change, capsys) -> None:
    repo = change(classify_doc())
    (repo / "reports" / "metrics.json").unlink()
    code, summary, _ = _gate(capsys)
    assert code == CANNOT_COMPARE
    assert summary.startswith("cannot compare: no reports/metrics.json in the working tree")


def test_a_crash_is_exit_3_not_a_regression(change, capsys, monkeypatch) -> None:
    change(classify_doc())

    def broken(*_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(pipelines.gate, "read_records", broken)
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
    ("higher", "change", "low", "high", "verdict"),
    [
        (True, 0.0, -0.01, 0.02, stats.PASS),  # lower end exactly at -tolerance: inside
        (True, -0.005, -0.03, 0.02, stats.INCONCLUSIVE_PASS),
        (True, -0.02, -0.04, 0.0, stats.INCONCLUSIVE_FAIL),
        (True, -0.02, -0.04, -0.011, stats.REGRESSION),
        (False, 0.02, 0.011, 0.04, stats.REGRESSION),  # lower is better: the sign flips
        (False, -0.02, -0.04, 0.01, stats.PASS),
        (True, -0.02, None, None, stats.REGRESSION),  # no interval: the point change decides
        (True, -0.01, None, None, stats.PASS),
    ],
)
def test_the_rule_at_its_edges(higher, change, low, high, verdict) -> None:
    result = stats.Paired(base=0.5, new=0.5 + change, low=low, high=high)
    assert stats.rule(result, tolerance=0.01, higher=higher) == verdict


# --- the command line, plots, and records kept in the DVC cache --------------------------------


def test_the_command_line_with_plots(change) -> None:
    repo = change(classify_doc(wrong=WORSE))
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
    for name in ("gate_changes", "gate_metrics"):
        assert (repo / "out" / "plots" / f"{name}.png").stat().st_size > 1000
        assert f"![{name}](plots/{name}.png)" in (repo / "out" / "gate.md").read_text(encoding="utf-8")


def test_records_kept_in_the_dvc_cache_are_read_at_the_base(tmp_path, monkeypatch, capsys) -> None:
    root = tmp_path / "cached"
    root.mkdir()
    _sh(root, "git", "init", "-q", "-b", "main")
    _sh(root, sys.executable, "-m", "dvc", "init", "-q")
    (root / "dvc.yaml").write_text(DVC_YAML.replace("cache: false", "cache: true"), encoding="utf-8")
    _write(root, classify_doc())
    _sh(root, sys.executable, "-m", "dvc", "commit", "-q", "-f", "evaluate")
    _commit(root, "baseline: metrics and records in the DVC cache, not in git")
    assert "reports/per_image.json" not in _sh(root, "git", "ls-files").stdout
    _sh(root, "git", "checkout", "-q", "-b", "change")
    _write(root, classify_doc(wrong=(0, 1, 2, 3, 4)))
    monkeypatch.chdir(root)
    code, summary, _ = _gate(capsys)
    assert code == REGRESSION, summary
    assert "accuracy 1.0000 -> 0.6667" in summary


def test_the_repository_params_file_documents_the_defaults() -> None:
    from stages.core.params import load_params
    from tests.conftest import REPO_ROOT

    assert gate_section(load_params(REPO_ROOT / "params.yaml")) == GateSection()
