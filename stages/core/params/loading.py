"""Reading and validating params, and turning pydantic's errors into one sentence naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from stages.core.errors import ParamsError
from stages.core.params.model import Params

DEFAULT_PARAMS_FILE = Path("params.yaml")

SectionModel = TypeVar("SectionModel", bound=BaseModel)


def load_params(path: Path | str = DEFAULT_PARAMS_FILE) -> Params:
    """Read and validate a params file; raise ``ParamsError`` with one sentence on any problem."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found; pass an existing file with --params.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ParamsError(f"{path}: invalid YAML{where}; fix the syntax there.") from None
    return parse_params(raw if raw is not None else {}, source=str(path))


def parse_params(raw: Any, source: str = "params") -> Params:
    """Validate a mapping into ``Params``; the first problem becomes a one-sentence error."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: the top level must be a mapping of sections.")
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(f"{source}: {describe_error(exc)}") from None
    refuse_outputs_in_source(params, source)
    return params


def refuse_outputs_in_source(params: Params, source: str = "params") -> None:
    """No ``paths.*`` folder may lie inside ``data.source``: stages would write into the user's data
    (and DVC deletes a stage's outputs before re-running it)."""
    data = params.data.source.resolve()
    for key, value in params.paths:
        out = Path(value).resolve()
        if out == data or data in out.parents:
            raise ParamsError(
                f"{source}: paths.{key} = {value} lies inside data.source = {params.data.source}; stages "
                f"never write into the dataset, so point paths.{key} at a folder outside it."
            )


def parse_section(raw: Any, name: str, model: type[SectionModel], source: str = "params") -> SectionModel:
    """Validate the top-level section ``name`` with its own model (a pipeline's section, see ``Params``).

    Errors read exactly as for the stages' sections: one sentence, the key dotted from the top.
    """
    try:
        return model.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        raise ParamsError(f"{source}: {describe_error(exc, model, prefix=(name,))}") from None


def describe_error(
    exc: ValidationError, model: type[BaseModel] = Params, prefix: tuple[str, ...] = ()
) -> str:
    """Turn pydantic's first error into a sentence naming the dotted key and the allowed values.

    ``model`` is what was validated and ``prefix`` where it sits in the params file.
    """
    errors = exc.errors()
    # An unknown key explains a "missing" one better (a typo of the required key).
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = [str(part) for part in error["loc"]]
    key = ".".join([*prefix, *loc]) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(model, loc[:-1]))
        return f"unknown key '{key}'; allowed keys here are: {allowed}."
    if kind == "missing":
        return f"missing required key '{key}'."
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"'{key}' is {error['input']!r}, which is not allowed; use one of {expected}."
    return f"'{key}' = {error.get('input')!r} is invalid: {error['msg']}."


def _allowed_keys(model: type[BaseModel], parent: list[str]) -> list[str]:
    """Field names (as written in YAML) of the section at ``parent`` below ``model``."""
    for part in parent:
        if part.isdigit():  # an item of a list: same model as the list's elements
            continue
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        nested = _find_model(field.annotation) if field else None
        if nested is None:
            return []
        model = nested
    return [info.alias or name for name, info in model.model_fields.items()]


def _find_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as ``tuple[Spec, ...] | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _find_model(arg)
        if found is not None:
            return found
    return None
