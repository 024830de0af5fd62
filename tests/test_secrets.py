"""No password, host name or absolute path in what the tools print or publish."""

from __future__ import annotations

import socket
from pathlib import Path

import optuna
import pytest
import yaml

from pipelines import strategy_study, tune
from pipelines.flow import relative_to, report_summary
from pipelines.tune_params import redact, tune_section
from stages.core.errors import ParamsError, UserError
from stages.core.layout import Layout
from stages.core.params import parse_params
from tests.conftest import fast_params

URL = "postgresql://optuna:s3cr3t-pw@db.internal:5432/studies"


def test_redact_hides_every_password_in_a_text() -> None:
    text = f"could not open {URL} (retry {URL.replace('optuna', 'other')})"
    redacted = redact(text)
    assert "s3cr3t-pw" not in redacted
    assert redacted.count("optuna:***@db.internal") == 1 and "other:***@db.internal" in redacted
    assert redact("sqlite:///tmp/study.db and a@b.c") == "sqlite:///tmp/study.db and a@b.c"


def test_a_storage_error_names_the_study_without_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(storage=storage, study_name="classifier", direction="minimize")
    monkeypatch.setattr(tune, "make_storage", lambda url: storage)
    params = parse_params({"data": {"source": str(tmp_path)}, "tune": {"storage": URL}})
    cfg = tune_section(params)  # metric val_accuracy: maximize, the study minimizes
    with pytest.raises(UserError) as caught:
        tune.open_study(cfg, params, URL, worker=0)
    assert "s3cr3t-pw" not in str(caught.value) and "optuna:***@db.internal" in str(caught.value)


@pytest.mark.parametrize("cli", [tune.main, strategy_study.main], ids=["tune", "strategy_study"])
def test_the_clis_never_print_the_password(tmp_path: Path, capsys: pytest.CaptureFixture[str], cli) -> None:
    params_file = tmp_path / "params.yaml"
    raw = {  # a section-level error: pydantic's message quotes the whole section, storage included
        "data": {"source": str(tmp_path / "data")},
        "paths": {"cache": str(tmp_path / "cache")},
        "tune": {"storage": URL, "metric": "val_loss", "direction": "maximize"},
    }
    params_file.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert cli(["--params", str(params_file), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "set direction: minimize" in err  # the tune section's error
    assert "s3cr3t-pw" not in err and "optuna:***@db.internal" in err


@pytest.mark.parametrize("name", ["..", ".", "..."])
def test_a_study_name_of_dots_is_refused_at_params_load(tmp_path: Path, name: str) -> None:
    with pytest.raises(ParamsError, match=r"tune\.study_name"):
        tune_section(parse_params({"data": {"source": str(tmp_path)}, "tune": {"study_name": name}}))
    assert tune_section(parse_params({"data": {"source": str(tmp_path)}, "tune": {"study_name": "a.b"}}))


def test_the_flow_artifact_has_project_paths_no_host_and_no_links(tmp_path: Path) -> None:
    root = tmp_path / "checkout"
    root.mkdir()
    params = fast_params(root, root / "data")  # absolute paths inside the project
    layout = Layout(params.paths)
    report = "# Title\n\nintro\n\n## Headline\n\n![h](figures/headline.png)\n\nnumbers\n\n## Data\n\nx\n"
    summary = report_summary(report, root, layout, params)
    assert socket.gethostname() not in summary
    assert str(tmp_path) not in summary and "file:" not in summary and "](" not in summary
    assert "`out/reports/report.md`" in summary and "numbers" in summary
    assert relative_to(tmp_path / "elsewhere" / "m.pt", root) == "<outside the project>/m.pt"
