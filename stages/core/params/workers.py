"""Process counts in params: ``auto`` (the default) means one process per core this run may use.

``params.yaml`` keeps the word ``auto``, not a number, so the same file (and ``dvc.lock``) serves
a laptop and a 64-core server; the number is worked out when a stage starts, never stored in a
cache key or a fingerprint (the worker count never changes a result).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from stages.core.workers import AUTO


def _check(value: Any) -> Any:
    """Refuse 0, negatives and other words with one sentence before pydantic's type check."""
    if value is None:
        return AUTO
    if value == AUTO:
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        else:
            raise ValueError(
                f"workers must be 'auto' (one process per usable core) or a number >= 1, got {value!r}"
            )
    if value < 1:
        raise ValueError(
            f"workers must be 'auto' (one process per usable core) or a number >= 1, got {value}; "
            "use 1 to run in the stage's own process"
        )
    return value


Workers = Annotated[int | Literal["auto"], BeforeValidator(_check)]


def workers_field(what: str) -> Any:
    """The ``workers`` field of a section: ``auto`` by default, an int overrides."""
    return Field(
        default=AUTO,
        description=f"Processes {what}: 'auto' = one per usable core (CPU affinity), or a number >= 1.",
    )
