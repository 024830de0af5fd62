"""The validation gate: a great-expectations suite on the manifest, the boxes and the class counts.

Each named check (``validate.blocking`` / ``validate.warn`` in params) is one or more GX
expectations tagged ``meta.check``; its verdict is theirs combined. GX runs in an ephemeral
context (nothing is written but the Data Docs HTML) and is imported lazily: importing it
takes about 6 s, which the other stages should not pay.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from stages.core.params import ValidateSection
from stages.core.params.base import uses_boxes

log = logging.getLogger("stages.dataprep.checks")

SPLITS = ["train", "val", "test"]
_EXAMPLES = 5


@dataclass(frozen=True)
class Check:
    table: str  # manifest | boxes | classes
    description: str  # one sentence for the report and the Data Docs
    detection_only: bool = False


CHECKS: dict[str, Check] = {
    "image_ids_unique": Check("manifest", "Every image has an id, and no two images share one."),
    "paths_unique": Check("manifest", "No image path appears twice."),
    "sizes_positive": Check("manifest", "Every image is at least 1 px wide and high."),
    "labels_in_classes": Check(
        "manifest", "Classification: every label is in classes.json; detection: images carry no label."
    ),
    "splits_known": Check("manifest", "A predefined split is train, val or test."),
    "enough_classes": Check(
        "classes", "Classification: two or more classes have images; detection: one or more has boxes."
    ),
    "boxes_reference_images": Check("boxes", "Every box belongs to an image in the manifest.", True),
    "box_classes_in_classes": Check("boxes", "Every box class is in classes.json.", True),
    "boxes_have_area": Check("boxes", "Every box has x_max > x_min and y_max > y_min.", True),
    "boxes_inside_images": Check(
        "boxes", "Every box lies inside its image (0 <= x <= width, same for y).", True
    ),
    "min_images_per_class": Check(
        "classes", "Every class has at least validate.min_images_per_class images."
    ),
    "class_balance": Check(
        "classes", "The largest class has at most validate.max_class_ratio times the images of the smallest."
    ),
}


@dataclass(frozen=True)
class CheckResult:
    name: str
    severity: str  # blocking | warn
    success: bool
    table: str
    unexpected: int
    examples: list = field(default_factory=list)  # offending ids, paths or class names
    expectations: list[str] = field(default_factory=list)  # GX expectation types

    def as_dict(self) -> dict:
        return {
            "severity": self.severity,
            "success": self.success,
            "table": self.table,
            "unexpected": self.unexpected,
            "examples": self.examples,
            "expectations": self.expectations,
            "description": CHECKS[self.name].description,
        }


def tables(
    manifest: pd.DataFrame, boxes: pd.DataFrame, classes: list[str], task: str
) -> dict[str, pd.DataFrame]:
    """The three frames the suite runs on; boxes carry their image's size, classes their counts."""
    sizes = manifest[["image_id", "path", "width", "height"]].rename(
        columns={"width": "image_width", "height": "image_height"}
    )
    joined = boxes.merge(sizes.drop_duplicates("image_id"), on="image_id", how="left")
    joined["image_found"] = joined["image_width"].notna()
    return {"manifest": manifest, "boxes": joined, "classes": class_counts(manifest, boxes, classes, task)}


def class_counts(manifest: pd.DataFrame, boxes: pd.DataFrame, classes: list[str], task: str) -> pd.DataFrame:
    """Images per class (detection: images with at least one box of it) and the ratio to the largest."""
    if uses_boxes(task):
        images = boxes.groupby("class_name")["image_id"].nunique()
        box_counts = boxes["class_name"].value_counts()
    else:
        images = manifest["label"].value_counts()
        box_counts = pd.Series(dtype="int64")
    frame = pd.DataFrame({"class_name": classes})
    frame["images"] = frame["class_name"].map(images).fillna(0).astype("int64")
    frame["boxes"] = frame["class_name"].map(box_counts).fillna(0).astype("int64")
    frame["present"] = (frame["images"] > 0).astype("int64")
    largest = frame["images"].max() if len(frame) else 0
    frame["ratio_to_largest"] = [largest / n if n else None for n in frame["images"]]
    frame["ratio_to_largest"] = frame["ratio_to_largest"].astype("float64")
    return frame


def expectations_for(name: str, params: ValidateSection, classes: list[str], task: str) -> list:
    """The GX expectations that make up one named check."""
    # Imported from their defining modules: GX's package __init__ files re-export them without
    # ``__all__``, so a type checker sees them as private there.
    from great_expectations.expectations.core.expect_column_pair_values_a_to_be_greater_than_b import (
        ExpectColumnPairValuesAToBeGreaterThanB,
    )
    from great_expectations.expectations.core.expect_column_sum_to_be_between import (
        ExpectColumnSumToBeBetween,
    )
    from great_expectations.expectations.core.expect_column_values_to_be_between import (
        ExpectColumnValuesToBeBetween,
    )
    from great_expectations.expectations.core.expect_column_values_to_be_in_set import (
        ExpectColumnValuesToBeInSet,
    )
    from great_expectations.expectations.core.expect_column_values_to_be_null import (
        ExpectColumnValuesToBeNull,
    )
    from great_expectations.expectations.core.expect_column_values_to_be_unique import (
        ExpectColumnValuesToBeUnique,
    )
    from great_expectations.expectations.core.expect_column_values_to_not_be_null import (
        ExpectColumnValuesToNotBeNull,
    )

    meta = {"check": name, "notes": CHECKS[name].description}
    detect = uses_boxes(task)
    build: dict[str, Callable[[], list]] = {
        "image_ids_unique": lambda: [
            ExpectColumnValuesToNotBeNull(column="image_id", meta=meta),
            ExpectColumnValuesToBeUnique(column="image_id", meta=meta),
        ],
        "paths_unique": lambda: [ExpectColumnValuesToBeUnique(column="path", meta=meta)],
        "sizes_positive": lambda: [
            ExpectColumnValuesToBeBetween(column=c, min_value=1, meta=meta) for c in ("width", "height")
        ],
        "labels_in_classes": lambda: (
            [ExpectColumnValuesToBeNull(column="label", meta=meta)]
            if detect
            else [
                ExpectColumnValuesToNotBeNull(column="label", meta=meta),
                ExpectColumnValuesToBeInSet(column="label", value_set=classes, meta=meta),
            ]
        ),
        "splits_known": lambda: [ExpectColumnValuesToBeInSet(column="split", value_set=SPLITS, meta=meta)],
        "enough_classes": lambda: [
            ExpectColumnSumToBeBetween(column="present", min_value=1 if detect else 2, meta=meta)
        ],
        "boxes_reference_images": lambda: [
            ExpectColumnValuesToBeInSet(column="image_found", value_set=[True], meta=meta)
        ],
        "box_classes_in_classes": lambda: [
            ExpectColumnValuesToNotBeNull(column="class_name", meta=meta),
            ExpectColumnValuesToBeInSet(column="class_name", value_set=classes, meta=meta),
        ],
        "boxes_have_area": lambda: [
            ExpectColumnPairValuesAToBeGreaterThanB(column_A=f"{a}_max", column_B=f"{a}_min", meta=meta)
            for a in ("x", "y")
        ],
        "boxes_inside_images": lambda: [
            ExpectColumnValuesToBeBetween(column="x_min", min_value=0, meta=meta),
            ExpectColumnValuesToBeBetween(column="y_min", min_value=0, meta=meta),
            *(
                ExpectColumnPairValuesAToBeGreaterThanB(
                    column_A=f"image_{side}",
                    column_B=f"{axis}_max",
                    or_equal=True,
                    ignore_row_if="either_value_is_missing",  # a missing image is boxes_reference_images
                    meta=meta,
                )
                for side, axis in (("width", "x"), ("height", "y"))
            ),
        ],
        "min_images_per_class": lambda: [
            ExpectColumnValuesToBeBetween(column="images", min_value=params.min_images_per_class, meta=meta)
        ],
        "class_balance": lambda: [
            # Empty classes have no ratio (null, skipped): min_images_per_class reports them.
            ExpectColumnValuesToBeBetween(
                column="ratio_to_largest", max_value=params.max_class_ratio, meta=meta
            )
        ],
    }
    return build[name]()


def run_suite(
    manifest: pd.DataFrame,
    boxes: pd.DataFrame,
    classes: list[str],
    params: ValidateSection,
    task: str,
    docs_dir: Path | None,
) -> list[CheckResult]:
    """Run every check named in ``params.blocking``/``params.warn``; render Data Docs into ``docs_dir``."""
    # GX logs its internals at INFO (one module even forces INFO on its logger at import).
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
    severity = {name: "blocking" for name in params.blocking} | {name: "warn" for name in params.warn}
    active = [n for n in CHECKS if n in severity and (uses_boxes(task) or not CHECKS[n].detection_only)]
    frames = tables(manifest, boxes, classes, task)

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    for site in list(context.list_data_docs_sites()):
        context.delete_data_docs_site(site)  # the default site writes into a temporary folder
    source = context.data_sources.add_pandas("pipeline")
    outcomes: dict[str, list[tuple[Any, pd.DataFrame]]] = {n: [] for n in active}
    # A fixed run id (GX names the pages and stamps them with it): same data, same Data Docs bytes,
    # so dvc.lock changes only when the data did (a wall-clock id would change it on every run).
    run_id = RunIdentifier(run_name="validate", run_time=datetime(2000, 1, 1, tzinfo=UTC))
    for table, frame in frames.items():
        names = [n for n in active if CHECKS[n].table == table]
        if not names:
            continue
        suite = context.suites.add(gx.ExpectationSuite(name=table))
        for name in names:
            for expectation in expectations_for(name, params, classes, task):
                suite.add_expectation(expectation)
        batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("all")
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"validate_{table}", data=batch, suite=suite)
        )
        result = definition.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY", run_id=run_id)
        for outcome in result.results:
            config = outcome.expectation_config
            assert config is not None, "GX returns each result with the expectation that produced it"
            outcomes[config.meta["check"]].append((outcome, frame))
    if docs_dir is not None:
        shutil.rmtree(docs_dir, ignore_errors=True)  # our own output: stale pages must not linger
        context.add_data_docs_site(
            "validation",
            {
                "class_name": "SiteBuilder",
                # GX's DataDocsSiteConfigTypedDict lists only some of the keys SiteBuilder takes.
                "show_how_to_buttons": False,  # pyright: ignore[reportArgumentType]
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir.resolve()),  # GX refuses relative paths
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        context.build_data_docs(site_names=["validation"])
        make_docs_reproducible(docs_dir)
    return [_combine(name, severity[name], outcomes[name]) for name in active]


RUN_TIME_STAMP = "20000101T000000.000000Z"  # how GX prints the fixed run time above
_STAMP = re.compile(r"\d{8}T\d{6}\.\d{6}Z")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_BEACON = re.compile(r"(logo-long\.png)\?d=[^\"']*")


def make_docs_reproducible(docs_dir: Path) -> None:
    """Rewrite what GX stamps from the clock or uuid4 into each page, so the bytes follow the data.

    GX puts the wall-clock time in a logo URL (a request to its web server each time a page opens)
    and in the validation time, and a fresh uuid4 into every collapsible block's id: DVC would
    record a new hash of the docs on every run with identical data. Times become the fixed run
    time, uuids numbered by first appearance in their page, and the logo URL loses its query.
    """
    for page in sorted(docs_dir.rglob("*.html")):
        text = _STAMP.sub(RUN_TIME_STAMP, _BEACON.sub(r"\1", page.read_text(encoding="utf-8")))
        page.write_text(_number_uuids(text), encoding="utf-8")


def _number_uuids(text: str) -> str:
    """Each distinct uuid becomes ``block-<n>`` by first appearance (links to it still match)."""
    numbers: dict[str, str] = {}
    return _UUID.sub(lambda m: numbers.setdefault(m.group(0), f"block-{len(numbers)}"), text)


def _combine(name: str, severity: str, outcomes: list[tuple[Any, pd.DataFrame]]) -> CheckResult:
    """One verdict per check, with a few offending rows named by id, path or class."""
    unexpected = 0
    examples: list = []
    for outcome, frame in outcomes:
        if outcome.success:
            continue
        result = outcome.result or {}
        unexpected += int(result.get("unexpected_count") or 1)
        examples += _examples(result, frame)
    return CheckResult(
        name=name,
        severity=severity,
        success=all(o.success for o, _ in outcomes),
        table=CHECKS[name].table,
        unexpected=unexpected,
        examples=_plain(list(dict.fromkeys(map(str, examples)))[:_EXAMPLES]),
        expectations=[o.expectation_config.type for o, _ in outcomes],
    )


def _examples(result: dict, frame: pd.DataFrame) -> list:
    """Rows GX flagged, named the way a person would look them up."""
    rows = result.get("partial_unexpected_index_list") or []
    key = next((c for c in ("path", "class_name", "image_id") if c in frame.columns), None)
    if rows and key is not None:
        picked = frame.iloc[[i for i in rows if isinstance(i, int) and i < len(frame)]]
        named = picked[key].astype("object").where(picked[key].notna(), picked.get("image_id", picked[key]))
        return named.tolist()
    if "observed_value" in result:
        return [f"observed {result['observed_value']}"]
    return list(result.get("partial_unexpected_list") or [])


def _plain(values: list) -> list:
    """JSON-safe (numpy scalars become Python values)."""
    return json.loads(json.dumps(values, default=str))
