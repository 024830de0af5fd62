"""Per-epoch training curves through DVCLive, plus the run summary JSON."""

from __future__ import annotations

import json
from pathlib import Path

from stages.engine.loop import EpochRecord


def log_history(history: list[EpochRecord], directory: Path, summary: dict) -> None:
    """Per-epoch curves through DVCLive (plots are declared in dvc.yaml, hence dvcyaml=None)."""
    from dvclive.live import Live

    with Live(dir=str(directory), save_dvc_exp=False, dvcyaml=None) as live:
        for record in history:
            live.log_metric("train/loss", record.train_loss)
            live.log_metric("lr", record.lr)
            live.log_metric("trainable_params", record.trainable_params)
            if record.val_loss is not None:
                live.log_metric("val/loss", record.val_loss)
            if record.val_accuracy is not None:  # set with val_loss: both come from the same val pass
                live.log_metric("val/accuracy", record.val_accuracy)
            if record.val_miou is not None:  # segment: mean IoU of the same val pass
                live.log_metric("val/miou", record.val_miou)
            live.next_step()
    (directory / "run.json").write_text(
        json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
