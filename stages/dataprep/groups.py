"""Group keys for the split: images of one patient, object, video or session stay on one side.

``split.groups.rule`` names where the key comes from: the source annotations (``source``),
a parent folder (``parent``), a regular expression on the path (``regex``) or a CSV file
(``csv``). Images a rule does not cover get no group (each stands alone) and are counted, so
a rule that covers nothing is an error rather than a silent no-op.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd

from stages.core.errors import DataError, ParamsError
from stages.core.params import GroupSection


@dataclass(frozen=True)
class GroupAssignment:
    groups: pd.Series  # string group per manifest row (same index), <NA> where the rule gives none
    unmatched: int  # rows the rule did not cover
    rule: str

    @property
    def count(self) -> int:
        return int(self.groups.nunique(dropna=True))


def assign_groups(manifest: pd.DataFrame, rule: GroupSection, source: Path) -> GroupAssignment:
    """The group of every manifest row under ``rule`` (paths are relative to ``source``).

    Examples:
        >>> frame = pd.DataFrame({"path": ["cup/cup1/a.png", "cup/cup1/b.png", "cup/cup2/a.png"]})
        >>> assign_groups(frame, GroupSection(rule="parent"), Path(".")).groups.tolist()
        ['cup/cup1', 'cup/cup1', 'cup/cup2']
    """
    paths = manifest["path"].astype("string")
    if rule.rule == "none":
        groups = pd.Series(pd.NA, index=manifest.index, dtype="string")
        return GroupAssignment(groups, 0, "none")
    if rule.rule == "source":
        column = manifest["group"] if "group" in manifest else pd.Series(pd.NA, index=manifest.index)
        groups = column.astype("string")
        return GroupAssignment(groups, 0, "source")
    if rule.rule == "parent":
        groups = paths.map(lambda p: _parent(p, rule.parent_level)).astype("string")
        where = f"split.groups.parent_level = {rule.parent_level}"
    elif rule.rule == "regex":
        assert rule.pattern is not None  # checked when params load
        pattern = re.compile(rule.pattern)
        groups = paths.map(lambda p: _regex_group(pattern, p)).astype("string")
        where = f"split.groups.pattern {rule.pattern!r}"
    else:
        assert rule.file is not None  # checked when params load
        file = source / rule.file
        mapping = read_path_mapping(file, rule.path_column, rule.group_column, "split.groups")
        groups = match_paths(paths, mapping)
        where = f"{file}"
    unmatched = int(groups.isna().sum())
    if len(groups) and unmatched == len(groups):
        raise ParamsError(
            f"{where} gives no group to any of the {len(groups)} images (e.g. {paths.iloc[0]}); "
            "fix split.groups so it matches the paths relative to data.source."
        )
    return GroupAssignment(groups, unmatched, rule.rule)


def _parent(path: str, level: int) -> str | None:
    parents = PurePosixPath(path).parents
    if level > len(parents) - 1:  # the last parent is '.', the source root itself
        return None
    return parents[level - 1].as_posix()


def _regex_group(pattern: re.Pattern[str], path: str) -> str | None:
    match = pattern.search(path)
    if match is None:
        return None
    if "group" in pattern.groupindex:
        return match.group("group")
    return match.group(1) if pattern.groups else match.group(0)


def read_path_mapping(file: Path, key_column: str, value_column: str, param: str) -> dict[str, str]:
    """A CSV's ``key_column`` (image paths or file names) -> ``value_column``, as strings."""
    if not file.is_file():
        raise DataError(f"{file}: file named by {param} not found; create it or fix the path in params.yaml.")
    try:
        frame = pd.read_csv(file, dtype=str, keep_default_na=False).fillna("")
    except pd.errors.EmptyDataError:
        raise DataError(
            f"{file}: file named by {param} is empty; write a header row and one row per image."
        ) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{file}: not UTF-8 text (byte {exc.start}); save the CSV as UTF-8.") from None
    except (pd.errors.ParserError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"{file}: cannot be read as CSV ({first.rstrip('.')}); fix the file named by {param} so each row "
            "has the header's columns, separated by commas."
        ) from None
    missing = [c for c in (key_column, value_column) if c not in frame.columns]
    if missing:
        found = ", ".join(frame.columns)
        raise DataError(
            f"{file}: has no column {missing[0]!r} (columns: {found}); rename it or set the column "
            f"in {param}."
        )
    keys = frame[key_column].str.replace("\\", "/", regex=False).str.strip().str.lstrip("./")
    values = frame[value_column].str.strip()
    conflicting = pd.DataFrame({"k": keys, "v": values}).groupby("k")["v"].nunique()
    if (conflicting > 1).any():
        key = conflicting[conflicting > 1].index[0]
        raise DataError(
            f"{file}: {key!r} appears with different values in column {value_column!r}; keep one."
        )
    return {k: v for k, v in zip(keys, values, strict=True) if k and v}


def match_paths(paths: pd.Series, mapping: dict[str, str]) -> pd.Series:
    """Look each manifest path up in ``mapping`` (whose keys are CSV paths).

    A key matches a path when they are equal, when the key ends with ``/<path>`` (a CSV
    written relative to a folder above the source: ``images/cup/cup1/a.png``), or when the
    path ends with ``/<key>`` (a CSV relative to a folder below, down to bare file names).
    A path suffix shared by keys with different values is ambiguous and matches nothing.
    """
    by_suffix: dict[str, str | None] = {}
    for key, value in mapping.items():
        parts = key.split("/")
        for start in range(1, len(parts)):
            suffix = "/".join(parts[start:])
            if by_suffix.get(suffix, value) != value:
                by_suffix[suffix] = None  # ambiguous: two entries end the same way
            else:
                by_suffix[suffix] = value

    def lookup(path: str) -> str | None:
        if path in mapping:
            return mapping[path]
        if by_suffix.get(path) is not None:
            return by_suffix[path]
        parts = path.split("/")
        for start in range(1, len(parts)):
            value = mapping.get("/".join(parts[start:]))
            if value is not None:
                return value
        return None

    return paths.map(lookup).astype("string")
