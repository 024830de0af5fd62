"""The strategy study prints a tune section error with the storage password redacted."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines import strategy_study

URL = "postgresql://optuna:s3cr3t-pw@db.internal:5432/studies"


def test_the_strategy_study_cli_never_prints_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params_file = tmp_path / "params.yaml"
    raw = {  # a section-level error: pydantic's message quotes the whole section, storage included
        "data": {"source": str(tmp_path / "data")},
        "paths": {"cache": str(tmp_path / "cache")},
        "tune": {"storage": URL, "metric": "val_loss", "direction": "maximize"},
    }
    params_file.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert strategy_study.main(["--params", str(params_file), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "set direction: minimize" in err  # the tune section's error
    assert "s3cr3t-pw" not in err and "optuna:***@db.internal" in err
