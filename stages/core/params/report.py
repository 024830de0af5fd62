"""The ``report`` section: the report page's title and its worst-mistakes grid."""

from __future__ import annotations

from pydantic import Field

from stages.core.params.base import Section


class ReportSection(Section):
    title: str = "Fine-tuning report"
    mistakes: int = Field(
        default=12,
        ge=0,
        le=64,
        description="Images in the worst-mistakes grid (highest loss, or most box errors).",
    )
