"""Stage ``train``: fine-tune the model that ``data.task`` names.

``classify``: a timm/torchvision classifier with a named strategy (``stages/engine/classifier.py``).
``detect``: an ultralytics YOLO detector (``stages/engine/yolo/trainer.py``, the AGPL boundary).

Either way the checkpoint's sha256 goes into ``reports/model_digest.json`` (git-tracked, not in
DVC's cache): the record every loader of a pickled checkpoint checks it against, which a writer
of the DVC remote or run cache cannot change (``stages.core.trust``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stages.core.cli import exit_with
from stages.core.layout import Layout
from stages.core.params import Params
from stages.core.trust import write_digest_record

if TYPE_CHECKING:
    from stages.engine.classifier import TrainResult
    from stages.engine.loop import EpochCallback
    from stages.engine.yolo.trainer import DetectorResult

STAGE = "train"


def run(params: Params, on_epoch: EpochCallback | None = None) -> TrainResult | DetectorResult:
    """Train on the train split, select on val, and save the model under ``paths.models``."""
    # The YOLO export folder is a declared DVC output of train for both tasks (dvc.yaml cannot
    # declare an output per task), so it exists even when a classifier trains.
    layout = Layout(params.paths)
    layout.yolo_dataset.mkdir(parents=True, exist_ok=True)
    result: TrainResult | DetectorResult
    if params.data.task == "detect":
        from stages.engine.yolo.trainer import run_detector

        result = run_detector(params, on_epoch)
    else:
        from stages.engine.classifier import train_classifier

        result = train_classifier(params, on_epoch)
    # classifier.pt loads with weights_only=True, so its entry is informational; detector.pt's is the anchor.
    write_digest_record(layout.model_digest, [result.checkpoint])
    return result


if __name__ == "__main__":
    exit_with(STAGE, run)
