"""What the report reads: the other stages' outputs, loaded once and shared by every section."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from stages.core.contracts import read_classes, read_parquet
from stages.core.layout import Layout
from stages.core.params import Params


@dataclass(frozen=True)
class ReportInputs:
    """The params, the paths and the evaluate outputs every section needs; figures go to ``figures_dir``."""

    params: Params
    layout: Layout
    metrics: dict[str, Any]
    task: str
    per_class: list[dict[str, Any]]
    predictions: pd.DataFrame

    @classmethod
    def read(cls, params: Params, layout: Layout) -> ReportInputs:
        metrics = read_json(layout.metrics)
        return cls(
            params=params,
            layout=layout,
            metrics=metrics,
            task=metrics.get("task", params.data.task),
            per_class=read_json(layout.plots_dir / "per_class.json", []),
            predictions=read_parquet(layout.predictions),
        )

    @property
    def here(self) -> Path:
        """The report's folder: links on the page are relative to it."""
        return self.layout.report.parent

    def fig_path(self, name: str) -> Path:
        return self.layout.figures_dir / name

    def plot_rows(self, name: str) -> list[dict[str, Any]]:
        """One of evaluate's DVC plot files (``reports/plots/<name>``); none written: no rows."""
        return read_json(self.layout.plots_dir / name, [])


def read_json(path: Path, default: Any = None) -> Any:
    """The JSON at ``path``; ``default`` when given and the file is absent (else a missing file raises)."""
    if default is not None and not path.is_file():
        return default
    return json.loads(path.read_text(encoding="utf-8"))


def read_history(train_log_dir: Path) -> pd.DataFrame:
    """DVCLive's per-epoch TSV files merged on ``step``."""
    plots = train_log_dir / "plots" / "metrics"
    frames = []
    for tsv in sorted(plots.rglob("*.tsv")):
        frame = pd.read_csv(tsv, sep="\t")
        name = tsv.relative_to(plots).with_suffix("").as_posix()
        frames.append(frame[["step", frame.columns[-1]]].rename(columns={frame.columns[-1]: name}))
    if not frames:
        return pd.DataFrame()
    merged = frames[0]
    for frame in frames[1:]:
        merged = merged.merge(frame, on="step", how="outer")
    return merged.sort_values("step")


def read_quarantine(layout: Layout) -> pd.DataFrame:
    """Ingest's and validate's quarantine lists as one frame (columns at least stage, reason)."""
    parts = [read_parquet(p) for p in (layout.ingest_quarantine, layout.validate_quarantine) if p.is_file()]
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["stage", "reason"])


def read_class_names(layout: Layout, audit: dict[str, Any]) -> list[str]:
    """The class list split wrote; else the classes the split audit counted, in first-seen order."""
    if layout.classes.is_file():
        return read_classes(layout.classes)
    names: dict[str, None] = {}
    for info in audit["splits"].values():
        names |= dict.fromkeys(info["class_counts"])
    return list(names)
