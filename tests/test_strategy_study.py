"""The strategy study (pipelines/strategy_study.py) on a tiny generated dataset."""

from __future__ import annotations

import pytest

from pipelines import strategy_study
from stages import augment, ingest, split, validate
from stages.core.errors import UserError
from tests.conftest import fast_params


def test_study_trains_each_strategy_per_seed_and_writes_table_and_plot(tmp_path, classify_source) -> None:
    params = fast_params(
        tmp_path,
        classify_source,
        train={"aug_views": 0, "batch_size": 8, "patience": 10},
        tune={
            "study": {
                "strategies": ["linear_probe", "partial"],
                "seeds": [0, 1],
                "epochs": 1,
                "probe_epochs": 3,
            }
        },
    )
    with pytest.raises(UserError, match="run the pipeline up to the split first"):
        strategy_study.run(params, progress=False)
    for stage in (ingest, validate, split, augment):
        stage.run(params)
    main_outputs = sorted(p for p in params.paths.models.rglob("*"))

    result = strategy_study.run(params, progress=False)

    assert [(r.strategy, r.seed) for r in result.runs] == [
        ("linear_probe", 0),
        ("linear_probe", 1),
        ("partial", 0),
        ("partial", 1),
    ]
    probe, partial = result.runs[0], result.runs[2]
    assert probe.epochs_run <= 3 and partial.epochs_run == 1  # the budget applies per strategy
    assert probe.trainable_params == 1280 * 2 + 2 < partial.trainable_params
    text = (params.paths.reports / "strategy_study.md").read_text()
    assert "| linear_probe | " in text and "| partial | " in text and "accuracy mean ± sd" in text
    assert (params.paths.reports / "strategy_study.png").stat().st_size > 1000
    assert sorted(p for p in params.paths.models.rglob("*")) == main_outputs  # main outputs untouched
    assert not list((params.paths.cache / "strategy_study").rglob("classifier.pt"))
