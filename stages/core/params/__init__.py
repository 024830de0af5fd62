"""Typed, validated params: every stage loads ``params.yaml`` through here before any work.

An unknown key or a bad value becomes one sentence that names the key and what is
allowed, so a typo never silently falls back to a default. One module per section
(``base`` also holds ``data`` and ``paths``), ``model`` for the whole file, ``loading`` for
reading it and wording its errors, ``overrides`` for dotted keys. The ``gate`` and ``tune``
sections belong to their pipelines (pipelines/gate_params.py, pipelines/tune_params.py).
"""

from stages.core.params.augment import (
    AugmentPreset,
    AugmentSection,
    BboxSection,
    PreviewSection,
    TransformSpec,
)
from stages.core.params.base import BaseSection, DataSection, PathsSection, Section
from stages.core.params.evaluate import EvaluateSection
from stages.core.params.export import ExportSection, ParitySection
from stages.core.params.ingest import IngestSection
from stages.core.params.label_issues import LabelIssuesSection
from stages.core.params.loading import (
    DEFAULT_PARAMS_FILE,
    describe_error,
    load_params,
    parse_params,
    parse_section,
)
from stages.core.params.model import PIPELINE_SECTIONS, Params
from stages.core.params.overrides import get_dotted, set_dotted, with_overrides
from stages.core.params.report import ReportSection
from stages.core.params.split import (
    GroupSection,
    HashKind,
    LeakageSection,
    NearDuplicateSection,
    SplitFractions,
    SplitSection,
)
from stages.core.params.train import (
    DETECTOR_OWNED_KEYS,
    DetectorSection,
    SegmenterSection,
    Strategy,
    TrainSection,
    ultralytics_cfg_keys,
)
from stages.core.params.validate import BLOCKING_CHECKS, WARNING_CHECKS, CheckName, ValidateSection

__all__ = [
    "BLOCKING_CHECKS",
    "DEFAULT_PARAMS_FILE",
    "DETECTOR_OWNED_KEYS",
    "PIPELINE_SECTIONS",
    "WARNING_CHECKS",
    "AugmentPreset",
    "AugmentSection",
    "BaseSection",
    "BboxSection",
    "CheckName",
    "DataSection",
    "DetectorSection",
    "EvaluateSection",
    "ExportSection",
    "GroupSection",
    "HashKind",
    "IngestSection",
    "LabelIssuesSection",
    "LeakageSection",
    "NearDuplicateSection",
    "Params",
    "ParitySection",
    "PathsSection",
    "PreviewSection",
    "ReportSection",
    "Section",
    "SegmenterSection",
    "SplitFractions",
    "SplitSection",
    "Strategy",
    "TrainSection",
    "TransformSpec",
    "ValidateSection",
    "describe_error",
    "get_dotted",
    "load_params",
    "parse_params",
    "parse_section",
    "set_dotted",
    "ultralytics_cfg_keys",
    "with_overrides",
]
