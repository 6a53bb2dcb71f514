"""Settings as dataclass fields that carry their own bounds and documentation.

A settings class declares each field with `bounded` (a number with its range) or
`documented` (a switch or a string). `parse_fields` checks a table an operator
wrote against those declarations, so the bounds live in one place: the class. The
configuration reference reads the same metadata.
"""

import difflib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, field, fields
from typing import Any

Failure = Callable[[str, str], Exception]
"""Makes the exception for a field (its dotted name) that is wrong, and why."""


def bounded(default: Any, low: float, high: float, doc: str) -> Any:
    """A numeric field with a default, its bounds and the sentence the docs show."""
    return field(default=default, metadata={"bounds": (low, high), "doc": doc})


def documented(default: Any, doc: str) -> Any:
    """A field with a default and the sentence the docs show."""
    return field(default=default, metadata={"doc": doc})


def parse_fields(
    settings: type, table: Mapping[str, Any], section: str, fail: Failure
) -> dict[str, Any]:
    """The fields `table` sets, each checked against its declaration in `settings`.

    Unknown names get a "did you mean"; a value must have its default's type and
    lie within its bounds. `fail` builds the exception, given ``section.field``.
    """
    known: dict[str, Field[Any]] = {spec.name: spec for spec in fields(settings)}
    for name in sorted(set(table) - set(known)):
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise fail(f"{section}.{name}", f"unknown field{hint}")

    values: dict[str, Any] = {}
    for name, value in table.items():
        spec = known[name]
        default = spec.default if spec.default is not MISSING else None
        values[name] = _checked(
            f"{section}.{name}", value, default, spec.metadata, fail
        )
    return values


def _checked(
    where: str,
    value: object,
    default: object,
    metadata: Mapping[str, Any],
    fail: Failure,
) -> object:
    """One field's value, of its default's type and within its bounds."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise fail(where, "must be true or false")
        return value

    wanted = float if isinstance(default, float) else int
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(where, f"must be a number, not {value!r}")
    if wanted is int and not isinstance(value, int):
        raise fail(where, f"must be a whole number, not {value}")

    low, high = metadata["bounds"]
    if not low <= value <= high:
        raise fail(where, f"{value} is not in {low}..{high}")
    return wanted(value)
