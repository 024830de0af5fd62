"""Stage ``train``: fine-tune the model that ``data.task`` names.

``classify``: a timm/torchvision classifier with a named strategy (``stages/engine/classifier.py``).
``detect``: an ultralytics YOLO detector (``stages/engine/yolo/trainer.py``, the AGPL boundary).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stages.core.cli import exit_with
from stages.core.layout import Layout
from stages.core.params import Params

if TYPE_CHECKING:
    from stages.engine.classifier import TrainResult
    from stages.engine.loop import EpochCallback
    from stages.engine.yolo.trainer import DetectorResult

STAGE = "train"


def run(params: Params, on_epoch: EpochCallback | None = None) -> TrainResult | DetectorResult:
    """Train on the train split, select on val, and save the model under ``paths.models``."""
    # The YOLO export folder is a declared DVC output of train for both tasks (dvc.yaml cannot
    # declare an output per task), so it exists even when a classifier trains.
    Layout(params.paths).yolo_dataset.mkdir(parents=True, exist_ok=True)
    if params.data.task == "detect":
        from stages.engine.yolo.trainer import run_detector

        return run_detector(params, on_epoch)
    from stages.engine.classifier import train_classifier

    return train_classifier(params, on_epoch)


if __name__ == "__main__":
    exit_with(STAGE, run)
