"""Classifier DDP (``train.distributed``): the real thing on CPU, gloo, two torchrun ranks.

The end-to-end test compares a 2-process run with a 1-process run of the same global batch on a
backbone without BatchNorm (``test_efficientnet_ln``, LayerNorm: per-sample, so sharding the batch
cannot change it) and a train split the ranks divide evenly (no padded duplicate). What is left is
float summation order (two half-batch means averaged by all-reduce instead of one mean), amplified
a little by AdamW's normalisation: the tolerances below are 20-70x what was measured. With
BatchNorm, or a split that leaves a padded duplicate, the runs differ more (docs/training.md).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from stages import augment, ingest, split, train, validate
from stages.core.layout import Layout
from stages.core.params import Params, TrainSection, parse_params
from stages.core.params.train import DistributedSection
from stages.dataprep.torch_datasets import EpochSampler, shard
from tests.conftest import fast_params, make_classify_source

if TYPE_CHECKING:
    from stages.engine.classifier import TrainResult

WEIGHT_TOLERANCE = 1e-5  # max |w_2proc - w_1proc| over every tensor after 2 epochs (measured 1.5e-7)
LOSS_TOLERANCE = 1e-6  # largest per-epoch |val loss| difference (measured 5e-8)


@pytest.mark.parametrize("size", [12, 13, 1])
@pytest.mark.parametrize("weighted", [False, True])
def test_ranks_take_disjoint_shards_of_one_seeded_order(size, weighted) -> None:
    weights = torch.linspace(1, 2, size) if weighted else None
    whole = EpochSampler(size, seed=3, weights=weights)
    ranks = [EpochSampler(size, seed=3, weights=weights, rank=r, world=2) for r in (0, 1)]
    for epoch in (0, 1):
        for sampler in (whole, *ranks):
            sampler.set_epoch(epoch)
        order = [i for i, _ in whole]
        parts = [list(sampler) for sampler in ranks]
        assert {e for part in parts for _, e in part} == {epoch}
        positions = [[i for i, _ in part] for part in parts]
        assert len(positions[0]) == len(positions[1]) == len(ranks[0]) == -(-size // 2)
        # step k of both ranks (batch 2 each) is the one-process step k (batch 4), padding aside
        for k in range(0, len(positions[0]), 2):
            together = sorted(positions[0][k : k + 2] + positions[1][k : k + 2])
            expected = order[2 * k : 2 * k + 4]
            padded = (order + order)[2 * k : 2 * k + 4][: len(together)]
            assert together == sorted(expected) or together == sorted(padded)
    assert shard([5, 6, 7], 0, 2) == [5, 7] and shard([5, 6, 7], 1, 2) == [6, 5]


def test_batch_size_must_split_across_processes() -> None:
    four = DistributedSection(nproc=4)
    with pytest.raises(ValidationError, match=r"multiple of distributed\.nproc"):
        TrainSection(batch_size=6, distributed=four)
    assert TrainSection(batch_size=8, distributed=four).distributed.nproc == 4


TRACER = """
    import os
    if os.environ.get("LOCAL_RANK") is not None:  # a torchrun rank: record what its sampler hands out
        from stages.dataprep import torch_datasets

        real_iter = torch_datasets.EpochSampler.__iter__

        def traced(self):
            items = list(real_iter(self))
            with open(os.path.join(os.environ["DDP_TEST_TRACE"], f"rank{os.environ['RANK']}"), "a") as f:
                f.writelines(f"{epoch} {index}\\n" for index, epoch in items)
            return iter(items)

        torch_datasets.EpochSampler.__iter__ = traced
"""


def _params(tmp_path: Path, source: Path, run: str, nproc: int) -> Params:
    raw = fast_params(tmp_path, source).model_dump(mode="json", by_alias=True)
    for name in ("models", "reports", "cache"):
        raw["paths"][name] = str(tmp_path / run / name)
    raw["split"] = {"fractions": {"train": 0.5, "val": 0.25, "test": 0.25}}
    raw["train"].update(
        backbone="test_efficientnet_ln",
        weights="none",
        strategy="full",
        image_size=32,
        epochs=2,
        batch_size=4,
        lr=0.003,
        threads=1,
        distributed={"nproc": nproc},
    )
    return parse_params(raw)


def _files(params: Params) -> set[str]:
    layout = Layout(params.paths)
    roots = (params.paths.models, layout.train_log_dir)
    return {p.relative_to(root).as_posix() for root in roots for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_two_gloo_ranks_train_like_one_process(tmp_path, monkeypatch) -> None:
    source = make_classify_source(tmp_path / "source", per_class=12)
    single = _params(tmp_path, source, "single", nproc=1)
    for stage in (ingest, validate, split, augment):
        stage.run(single)
    layout = Layout(single.paths)
    n_train = int((pd.read_parquet(layout.splits)["split"] == "train").sum())
    assert n_train % 4 == 0, "the comparison needs a train split the global batch divides"
    trace = tmp_path / "trace"
    trace.mkdir()
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(textwrap.dedent(TRACER), encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    monkeypatch.setenv("DDP_TEST_TRACE", str(trace))

    ddp = _params(tmp_path, source, "ddp", nproc=2)
    result = cast("TrainResult", train.run(ddp))
    reference = cast("TrainResult", train.run(single))

    # each rank saw half of every epoch, the two halves disjoint and together the train split
    seen = {r: (trace / f"rank{r}").read_text().split("\n")[:-1] for r in (0, 1)}
    for epoch in ("0", "1"):
        parts = [[int(i) for e, i in (line.split() for line in seen[r]) if e == epoch] for r in (0, 1)]
        assert len(parts[0]) == len(parts[1]) == n_train // 2
        assert not set(parts[0]) & set(parts[1])
        assert set(parts[0]) | set(parts[1]) == set(range(n_train))

    # one writer: the same files as one process, in the places one process writes them
    assert _files(ddp) == _files(single)
    assert not list((ddp.paths.cache / "ddp").iterdir())  # the launcher's scratch files are gone
    assert result.checkpoint == Layout(ddp.paths).classifier
    assert Layout(ddp.paths).model_digest.is_file()

    losses = pd.read_csv(Layout(ddp.paths).train_log_dir / "plots/metrics/train/loss.tsv", sep="\t")
    assert losses["loss"].iloc[-1] < losses["loss"].iloc[0]

    a = torch.load(Layout(ddp.paths).classifier, weights_only=True)["state_dict"]
    b = torch.load(layout.classifier, weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < WEIGHT_TOLERANCE, f"weights differ by {worst:g}"
    assert result.best_epoch == reference.best_epoch
    metrics = [
        pd.read_csv(Layout(p.paths).train_log_dir / "plots/metrics/val/loss.tsv", sep="\t")["loss"]
        for p in (ddp, single)
    ]
    assert (metrics[0] - metrics[1]).abs().max() < LOSS_TOLERANCE
    assert result.best_val_accuracy == reference.best_val_accuracy
