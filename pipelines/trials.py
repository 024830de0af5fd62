"""One training run with overridden params, in its own output folder: what a tuning trial and a
strategy-study run have in common.

A run reuses everything upstream of ``train`` (the ingest, validate and split outputs under
``paths.interim``) and the shared caches under ``paths.cache`` (backbone features, fine-tuning
checkpoints keyed by fingerprint); its own ``models``, ``reports`` and ``processed`` (the
augmentation policy, which an ``augment.preset`` override changes) live in ``run_dir``, so the
project's main outputs are never touched.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import albumentations as A

from stages.core.errors import UserError
from stages.core.layout import Layout
from stages.core.params import Params, parse_params, with_overrides
from stages.dataprep.augmentation import build_policy

RUN_PATHS = ("models", "reports", "processed")


def params_dict(params: Params) -> dict[str, Any]:
    """The validated params as plain YAML-able data (keys as written in params.yaml)."""
    return params.model_dump(mode="json", by_alias=True)


def with_cli_options(params: Params, options: dict[str, Any], source: str) -> Params:
    """``params`` with the command-line options that were given (None: not given) set on top."""
    given = {key: value for key, value in options.items() if value is not None}
    if not given:
        return params
    return parse_params(with_overrides(params_dict(params), given), source=f"{source} + options")


def require_prepared(params: Params) -> None:
    """Runs start from the split (and ingest/validate) outputs; refuse clearly when they are missing."""
    layout = Layout(params.paths)
    for path in (layout.classes, layout.manifest, layout.splits):
        if not path.is_file():
            raise UserError(
                f"{path} is missing; run the pipeline up to the split first "
                "(`dvc repro augment` or `python -m pipelines.flow --target augment`)."
            )
    if params.data.task == "detect" and not layout.boxes.is_file():
        raise UserError(f"{layout.boxes} is missing; run the pipeline up to the split first.")


def run_params(base: Params, overrides: dict[str, Any], run_dir: Path) -> Params:
    """``base`` with ``overrides`` (dotted keys) and its own models/reports/processed under ``run_dir``."""
    raw = with_overrides(params_dict(base), overrides)
    for name in RUN_PATHS:
        raw["paths"][name] = str(run_dir / name)
    return parse_params(raw, source=f"params with overrides {overrides}")


def write_policy(params: Params) -> None:
    """The augment stage's policy file for these params (its preview is skipped: a run needs none)."""
    layout = Layout(params.paths)
    policy = build_policy(params.augment, params.base.seed, task=params.data.task)
    layout.augment_policy.parent.mkdir(parents=True, exist_ok=True)
    A.save(policy, str(layout.augment_policy), data_format="json")


def drop_checkpoint(params: Params) -> None:
    """Remove a run's ``classifier.pt`` / ``detector.pt`` / ``segmenter.pt`` (its metrics and curves stay)."""
    layout = Layout(params.paths)
    for checkpoint in (layout.classifier, layout.detector, layout.segmenter):
        checkpoint.unlink(missing_ok=True)


def clean_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
