"""``Params``: the whole params file, one field per section.

The stages own every section but two: ``gate`` and ``tune`` belong to the pipelines that read
them (pipelines/gate_params.py, pipelines/tune_params.py). Here they are kept as plain mappings,
so a stage accepts a params file that has them, and the pipeline validates its own section with
``parse_section`` when it loads params, as strictly as the stage sections are validated here.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Field

from stages.core.params.augment import AugmentSection
from stages.core.params.base import BaseSection, DataSection, PathsSection, Section
from stages.core.params.evaluate import EvaluateSection
from stages.core.params.export import ExportSection
from stages.core.params.ingest import IngestSection
from stages.core.params.label_issues import LabelIssuesSection
from stages.core.params.report import ReportSection
from stages.core.params.split import SplitSection
from stages.core.params.train import TrainSection
from stages.core.params.validate import ValidateSection

# Top-level sections validated by the pipeline that owns them, not by the stages.
PIPELINE_SECTIONS = ("gate", "tune")


class Params(Section):
    base: BaseSection = BaseSection()
    data: DataSection
    paths: PathsSection = PathsSection()
    ingest: IngestSection = IngestSection()
    validate_: Annotated[ValidateSection, Field(alias="validate")] = ValidateSection()
    split: SplitSection = SplitSection()
    label_issues: LabelIssuesSection = LabelIssuesSection()
    augment: AugmentSection = AugmentSection()
    train: TrainSection = TrainSection()
    evaluate: EvaluateSection = EvaluateSection()
    report: ReportSection = ReportSection()
    export: ExportSection = ExportSection()
    gate: dict[str, Any] = Field(
        default_factory=dict, description="python -m pipelines.gate: validated by pipelines/gate_params.py."
    )
    tune: dict[str, Any] = Field(
        default_factory=dict, description="python -m pipelines.tune: validated by pipelines/tune_params.py."
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
