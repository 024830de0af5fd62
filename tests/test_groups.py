"""Group rules: parent folder, regex on the path, CSV mapping, the source's own groups."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from stages.core.errors import DataError, ParamsError
from stages.core.params import GroupSection
from stages.dataprep.groups import assign_groups, match_paths

PATHS = [
    "cup/cup1/cup1-000.png",
    "cup/cup1/cup1-045.png",
    "cup/cup2/cup2-000.png",
    "pear/pear1/pear1-000.png",
    "stray.png",
]


def _manifest(paths: list[str] = PATHS, group=None) -> pd.DataFrame:
    return pd.DataFrame({"path": paths, "group": pd.array([group] * len(paths), dtype="string")})


def test_parent_rule_by_level_and_images_above_it_stand_alone() -> None:
    first = assign_groups(_manifest(), GroupSection(rule="parent"), Path("."))
    assert first.groups.tolist()[:4] == ["cup/cup1", "cup/cup1", "cup/cup2", "pear/pear1"]
    assert pd.isna(first.groups.iloc[4]) and first.unmatched == 1 and first.count == 3
    second = assign_groups(_manifest(), GroupSection(rule="parent", parent_level=2), Path("."))
    assert second.groups.tolist()[:4] == ["cup", "cup", "cup", "pear"]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (r"(?P<group>[a-z]+\d+)-\d+\.png$", ["cup1", "cup1", "cup2", "pear1", None]),
        (r"/([a-z]+)\d+/", ["cup", "cup", "cup", "pear", None]),
        (r"^[a-z]+", ["cup", "cup", "cup", "pear", "stray"]),
    ],
)
def test_regex_rule_takes_named_then_first_group_then_whole_match(pattern: str, expected: list) -> None:
    groups = assign_groups(_manifest(), GroupSection(rule="regex", pattern=pattern), Path(".")).groups
    assert [None if pd.isna(g) else g for g in groups] == expected


def test_a_rule_that_matches_nothing_is_an_error_naming_the_setting() -> None:
    with pytest.raises(ParamsError, match=r"split\.groups\.pattern"):
        assign_groups(_manifest(), GroupSection(rule="regex", pattern=r"^video_(\d+)"), Path("."))


def test_csv_rule_matches_paths_written_from_a_folder_above_or_bare_names(tmp_path: Path) -> None:
    (tmp_path / "meta.csv").write_text(
        "path,object\nimages/cup/cup1/cup1-000.png,A\nimages/cup/cup1/cup1-045.png,A\n"
        "images/cup/cup2/cup2-000.png,B\nstray.png,C\n",
        encoding="utf-8",
    )
    rule = GroupSection(rule="csv", file=Path("meta.csv"), group_column="object")
    result = assign_groups(_manifest(), rule, tmp_path)
    assert [None if pd.isna(g) else g for g in result.groups] == ["A", "A", "B", None, "C"]
    assert result.unmatched == 1


def test_csv_suffix_shared_by_different_groups_matches_nothing() -> None:
    mapping = {"a/x/1.png": "g1", "b/x/1.png": "g2", "c/2.png": "g3"}
    found = match_paths(pd.Series(["x/1.png", "2.png", "c/2.png"], dtype="string"), mapping)
    assert pd.isna(found.iloc[0]) and found.iloc[1] == "g3" and found.iloc[2] == "g3"


def test_csv_problems_are_one_sentence_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        assign_groups(_manifest(), GroupSection(rule="csv", file=Path("missing.csv")), tmp_path)
    (tmp_path / "cols.csv").write_text("file,group\nstray.png,a\n", encoding="utf-8")
    with pytest.raises(DataError, match="no column 'path'"):
        assign_groups(_manifest(), GroupSection(rule="csv", file=Path("cols.csv")), tmp_path)
    (tmp_path / "twice.csv").write_text("path,group\nstray.png,a\nstray.png,b\n", encoding="utf-8")
    with pytest.raises(DataError, match="different values"):
        assign_groups(_manifest(), GroupSection(rule="csv", file=Path("twice.csv")), tmp_path)


def test_source_rule_keeps_the_annotations_groups_and_none_drops_them() -> None:
    manifest = _manifest(group="video7")
    assert assign_groups(manifest, GroupSection(), Path(".")).groups.tolist() == ["video7"] * len(PATHS)
    assert assign_groups(manifest, GroupSection(rule="none"), Path(".")).groups.isna().all()


def test_rule_settings_are_checked_when_params_load() -> None:
    with pytest.raises(ValueError, match="needs a pattern"):
        GroupSection(rule="regex")
    with pytest.raises(ValueError, match="not a valid regex"):
        GroupSection(rule="regex", pattern="(")
    with pytest.raises(ValueError, match="needs a file"):
        GroupSection(rule="csv")
