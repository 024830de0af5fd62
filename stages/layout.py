"""Where each stage's outputs live, derived from ``params.paths`` (dvc.yaml mirrors this).

One source for file names, so stages, tests, flows and the report agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stages.params import PathsSection


@dataclass(frozen=True)
class Layout:
    paths: PathsSection

    # ingest
    @property
    def ingest_dir(self) -> Path:
        return self.paths.interim / "ingest"

    @property
    def ingest_manifest(self) -> Path:
        return self.ingest_dir / "manifest.parquet"

    @property
    def classes(self) -> Path:
        return self.ingest_dir / "classes.json"

    @property
    def ingest_quarantine(self) -> Path:
        return self.ingest_dir / "ingest_quarantine.parquet"

    @property
    def ingest_boxes(self) -> Path:
        """Detection boxes as imported (absolute pixels of the displayed image)."""
        return self.ingest_dir / "boxes.parquet"

    # validate
    @property
    def validate_dir(self) -> Path:
        return self.paths.interim / "validate"

    @property
    def manifest(self) -> Path:
        """The validated manifest: what every later stage reads."""
        return self.validate_dir / "manifest.parquet"

    @property
    def boxes(self) -> Path:
        """The validated boxes: what every later detection stage reads."""
        return self.validate_dir / "boxes.parquet"

    @property
    def validate_quarantine(self) -> Path:
        return self.validate_dir / "validate_quarantine.parquet"

    @property
    def validation_report(self) -> Path:
        return self.paths.reports / "validation.json"

    # split
    @property
    def splits(self) -> Path:
        return self.paths.interim / "split" / "splits.parquet"

    @property
    def split_audit(self) -> Path:
        return self.paths.reports / "split_audit.json"

    # augment
    @property
    def augment_policy(self) -> Path:
        return self.paths.processed / "augment" / "policy.json"

    @property
    def augment_preview(self) -> Path:
        return self.paths.reports / "augmentation_preview.png"

    # train
    @property
    def classifier(self) -> Path:
        return self.paths.models / "classifier.pt"

    @property
    def train_log_dir(self) -> Path:
        return self.paths.reports / "train"

    @property
    def feature_cache(self) -> Path:
        return self.paths.cache / "features"

    @property
    def integrity_cache(self) -> Path:
        return self.paths.cache / "integrity"

    # evaluate
    @property
    def metrics(self) -> Path:
        return self.paths.reports / "metrics.json"

    @property
    def predictions(self) -> Path:
        return self.paths.reports / "predictions.parquet"

    @property
    def plots_dir(self) -> Path:
        return self.paths.reports / "plots"

    # report
    @property
    def report(self) -> Path:
        return self.paths.reports / "report.md"

    @property
    def figures_dir(self) -> Path:
        return self.paths.reports / "figures"
