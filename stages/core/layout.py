"""Where each stage's outputs live, derived from ``params.paths`` (dvc.yaml mirrors this).

One source for file names, so stages, tests, flows and the report agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stages.core.params import PathsSection


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

    @property
    def ingest_shapes(self) -> Path:
        """Polygons and masks as imported (pixels of the displayed image; see contracts.SHAPE_COLUMNS)."""
        return self.ingest_dir / "shapes.parquet"

    @property
    def ingest_summary(self) -> Path:
        """Format, counts and warnings from ingest; validate folds it into the report."""
        return self.ingest_dir / "ingest_summary.json"

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
    def shapes(self) -> Path:
        """The validated polygons and masks: what segmentation reads."""
        return self.validate_dir / "shapes.parquet"

    @property
    def validate_quarantine(self) -> Path:
        return self.validate_dir / "validate_quarantine.parquet"

    @property
    def validation_report(self) -> Path:
        return self.paths.reports / "validation.json"

    @property
    def validation_docs(self) -> Path:
        """great-expectations Data Docs (HTML); open ``index.html`` inside."""
        return self.paths.reports / "validation_docs"

    # split
    @property
    def splits(self) -> Path:
        return self.paths.interim / "split" / "splits.parquet"

    @property
    def split_units(self) -> Path:
        """image_id -> split unit and near-duplicate cluster (label_issues folds and conflicts)."""
        return self.paths.interim / "split" / "units.parquet"

    # label_issues
    @property
    def label_issues(self) -> Path:
        """Suspected label errors, certain conflicts first, then by label quality."""
        return self.paths.reports / "label_issues.csv"

    @property
    def label_issues_summary(self) -> Path:
        """Counts, folds and the estimated noise rate per class pair."""
        return self.paths.reports / "label_issues.json"

    # box_issues
    @property
    def box_issues(self) -> Path:
        """Suspected box errors of the val split (detect), lowest box quality first."""
        return self.paths.reports / "box_issues.csv"

    @property
    def box_issues_summary(self) -> Path:
        """Counts per issue type, the thresholds, and why nothing was scored (classify)."""
        return self.paths.reports / "box_issues.json"

    @property
    def split_audit(self) -> Path:
        return self.paths.reports / "split_audit.json"

    @property
    def split_metrics(self) -> Path:
        """Split summary numbers, declared as DVC metrics."""
        return self.paths.reports / "split_metrics.json"

    @property
    def leakage_report(self) -> Path:
        """Every cross-split exact or near-duplicate pair and every group found in two splits."""
        return self.paths.reports / "leakage.json"

    @property
    def leakage_sheet(self) -> Path:
        """Contact sheet of the worst cross-split pairs."""
        return self.paths.reports / "leakage_pairs.png"

    @property
    def hash_cache(self) -> Path:
        """Perceptual hashes by content hash (not a DVC output)."""
        return self.paths.cache / "phash"

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
    def detector(self) -> Path:
        """The fine-tuned YOLO detector (``data.task: detect``): ultralytics' checkpoint plus our meta."""
        return self.paths.models / "detector.pt"

    @property
    def segmenter(self) -> Path:
        """The fine-tuned segmenter (``data.task: segment``): state dict plus JSON meta."""
        return self.paths.models / "segmenter.pt"

    @property
    def model_digest(self) -> Path:
        """``{checkpoint name: sha256}`` of what train wrote, git-tracked: the anchor loaders check
        a pickled checkpoint against (``stages.core.trust``), out of reach of the DVC remote."""
        return self.paths.reports / "model_digest.json"

    @property
    def yolo_dataset(self) -> Path:
        """The dataset exported in ultralytics' layout (images, labels, data.yaml); updated in place.

        A cache, not a DVC output: it is rebuilt from the source and the validated manifest on every
        detector run (mostly hard links), and as an output DVC would copy every image into its cache.
        """
        return self.paths.cache / "yolo_dataset"

    @property
    def yolo_dataset_lock(self) -> Path:
        """Held while the export is rewritten: tuning workers may export the same dataset at once."""
        return self.paths.cache / "yolo_dataset.lock"

    @property
    def yolo_runs(self) -> Path:
        """ultralytics' run directories, one per run fingerprint (kept across runs for resuming)."""
        return self.paths.cache / "yolo_runs"

    @property
    def train_log_dir(self) -> Path:
        return self.paths.reports / "train"

    @property
    def feature_cache(self) -> Path:
        return self.paths.cache / "features"

    @property
    def integrity_cache(self) -> Path:
        return self.paths.cache / "integrity"

    @property
    def mask_cache(self) -> Path:
        """Segment: rasterised class maps (stages.dataprep.semantic_masks.MaskStore)."""
        return self.paths.cache / "masks"

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

    @property
    def segment_masks(self) -> Path:
        """segment: the true and predicted class maps of the worst images, for the report's overlays."""
        return self.paths.reports / "segment_masks"

    # report
    @property
    def report(self) -> Path:
        return self.paths.reports / "report.md"

    @property
    def report_html(self) -> Path:
        """The same report, self-contained (figures embedded): open it in any browser."""
        return self.paths.reports / "report.html"

    @property
    def figures_dir(self) -> Path:
        return self.paths.reports / "figures"

    @property
    def strategy_study(self) -> Path:
        """Written by the strategy study (tune/dvc.yaml); the report points at it, never reads it."""
        return self.paths.reports / "strategy_study.md"
