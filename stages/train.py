"""Stage ``train``: fine-tune the model that ``data.task`` names.

``classify``: a timm/torchvision classifier with a named strategy (``stages/engine/classifier.py``).
``detect``: an ultralytics YOLO detector (``stages/engine/yolo/trainer.py``, the AGPL boundary).
``segment``: an smp segmenter over the same offline encoders (``stages/engine/segmentation/trainer.py``);
one process only: ``train.distributed.nproc > 1`` is refused for it.

Either way the checkpoint's sha256 goes into ``reports/model_digest.json`` (git-tracked, not in
DVC's cache): the record every loader of a pickled checkpoint checks it against, which a writer
of the DVC remote or run cache cannot change (``stages.core.trust``).

``train.distributed.nproc > 1`` (classify): the stage starts itself again as that many torchrun
ranks (``stages/engine/distributed.py``) and waits for them; inside a rank ``main`` trains one
shard, and rank 0 writes the model, the logs and the digest record.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from stages.core import locks
from stages.core.cli import exit_with
from stages.core.errors import UserError
from stages.core.layout import Layout
from stages.core.params import Params
from stages.core.trust import write_digest_record

if TYPE_CHECKING:
    from stages.engine.classifier import TrainResult
    from stages.engine.loop import EpochCallback
    from stages.engine.segmentation.trainer import SegmentResult
    from stages.engine.yolo.trainer import DetectorResult

STAGE = "train"

log = logging.getLogger("stages.train")


def run(
    params: Params, on_epoch: EpochCallback | None = None
) -> TrainResult | DetectorResult | SegmentResult:
    """Train on the train split, select on val, and save the model under ``paths.models``."""
    layout = Layout(params.paths)
    task = params.data.task
    if params.train.monitor == "val_miou" and task != "segment":
        raise UserError(
            f"train.monitor val_miou is for data.task segment; with {task} use val_loss or val_accuracy."
        )
    result: TrainResult | DetectorResult | SegmentResult
    if task == "detect":
        from stages.engine.yolo.trainer import run_detector

        result = run_detector(params, on_epoch)
    elif task == "segment":
        from stages.engine.segmentation.trainer import train_segmenter

        if params.train.distributed.nproc > 1:
            raise UserError(
                "train.distributed.nproc > 1 is not supported for data.task segment (it trains in one "
                "process); set train.distributed.nproc: 1."
            )
        result = train_segmenter(params, on_epoch)
    else:
        result = _train_classifier(params, on_epoch)
    # classifier.pt and segmenter.pt load with weights_only=True, so their entries are informational;
    # detector.pt's is the anchor.
    write_digest_record(layout.model_digest, [result.checkpoint])
    return result


def _train_classifier(params: Params, on_epoch: EpochCallback | None) -> TrainResult:
    """In this process, or as ``train.distributed.nproc`` torchrun ranks (rank 0's result)."""
    from stages.engine import distributed
    from stages.engine.classifier import TrainResult, train_classifier
    from stages.engine.device import resolve_device

    cfg = params.train
    if cfg.distributed.nproc == 1:
        return train_classifier(params, on_epoch)
    reason = distributed.single_process_reason(cfg.strategy, on_epoch is not None)
    if reason:
        log.warning("train.distributed.nproc %d ignored: %s", cfg.distributed.nproc, reason)
        return train_classifier(params, on_epoch)
    device = resolve_device(cfg.device)
    distributed.backend_for(cfg.distributed.backend, device)  # refuse nccl on the CPU before starting
    # The ranks pass the checkout lock (held here, or by stage_main) through CV_FINETUNE_LOCKS.
    checkout = locks.checkout_lock(Path.cwd(), params.paths.cache)
    with locks.held(checkout, locks.default_timeout(), "this checkout"):
        fields = distributed.launch(
            params.model_dump(mode="json", by_alias=True),
            cfg.distributed.nproc,
            cfg.distributed.max_restarts,
            device,
            params.paths.cache / "ddp",
        )
    fields["checkpoint"] = Path(fields["checkpoint"])
    return TrainResult(**fields)


def main(params: Params) -> TrainResult | DetectorResult | SegmentResult | str:
    """Train on the train split, select on val, and save the model under ``paths.models`` (as a
    torchrun rank of ``train.distributed``: one shard, and rank 0 writes)."""
    from stages.engine import distributed

    if not distributed.in_torchrun():
        return run(params)
    from stages.engine.classifier import train_rank
    from stages.engine.device import resolve_device

    if params.data.task != "classify":
        raise UserError("train.distributed is for classifiers; a detector takes train.detector.device.")
    device = distributed.rank_device(resolve_device(params.train.device))
    with distributed.process_group(distributed.backend_for(params.train.distributed.backend, device), device):
        result = train_rank(params)
        if result is not None:  # rank 0
            write_digest_record(Layout(params.paths).model_digest, [result.checkpoint])
            distributed.report_result(asdict(result))
    return str(result) if result is not None else f"rank {os.environ.get('RANK', '?')}: shard trained"


if __name__ == "__main__":
    exit_with(STAGE, main)
