"""Validation before anything compiles, with one message style:

    <field> has value <value>; allowed: <what is allowed>

Every check raises `ValueError` (or `TypeError` for a wrong kind of object) naming the field, the
value and what is allowed. Unknown names list the known ones.
"""

from __future__ import annotations

import math
from typing import Any, Iterable


def invalid(field: str, value: Any, allowed: str, error: type[Exception] = ValueError) -> Exception:
    """The exception for a bad value, in the one message style."""
    return error(f"{field} has value {value!r}; allowed: {allowed}")


def require(condition: bool, field: str, value: Any, allowed: str) -> None:
    """Raise `invalid(field, value, allowed)` unless `condition`."""
    if not condition:
        raise invalid(field, value, allowed)


def is_number(value: Any) -> bool:
    """A real number that is not a bool (numpy scalars included)."""
    try:
        return not isinstance(value, (bool, str, bytes)) and math.isfinite(float(value)) is not None
    except (TypeError, ValueError):
        return False


def check_int(field: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (not a bool) in [minimum, maximum]."""
    import numpy as np

    if minimum is not None and maximum is not None:
        allowed = f"an integer in [{minimum}, {maximum}]"
    elif minimum is not None or maximum is not None:
        allowed = f"an integer >= {minimum}" if minimum is not None else f"an integer <= {maximum}"
    else:
        allowed = "an integer"
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    ok = ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    require(ok, field, value, allowed)
    return int(value)


def check_number(field: str, value: Any, low: float | None = None, high: float | None = None, *,
                 low_inclusive: bool = True, high_inclusive: bool = True) -> float:
    """A finite real number (not a bool, not a string) inside the given bounds."""
    left = "" if low is None else (f">= {low}" if low_inclusive else f"> {low}")
    right = "" if high is None else (f"<= {high}" if high_inclusive else f"< {high}")
    allowed = "a finite number" + (f" {left}" if left else "") + (" and" if left and right else "") + (
        f" {right}" if right else "")
    require(is_number(value) and math.isfinite(float(value)), field, value, allowed)
    number = float(value)
    ok = low is None or (number >= low if low_inclusive else number > low)
    ok = ok and (high is None or (number <= high if high_inclusive else number < high))
    require(ok, field, value, allowed)
    return number


def check_optional_number(field: str, value: Any, low: float | None = None, high: float | None = None, *,
                          low_inclusive: bool = True, high_inclusive: bool = True) -> float | None:
    """None, or a number as `check_number` checks it."""
    if value is None:
        return None
    return check_number(field, value, low, high, low_inclusive=low_inclusive, high_inclusive=high_inclusive)


def check_choice(field: str, value: Any, choices: Iterable[Any]) -> Any:
    """One of `choices`."""
    choices = tuple(choices)
    require(value in choices, field, value, "one of " + ", ".join(map(repr, choices)))
    return value


def unknown_name(kind: str, name: Any, known: Iterable[str], hint: str = "") -> ValueError:
    """The error for a name that is not registered, listing the known ones."""
    known = sorted(known)
    return ValueError(f"unknown {kind} {name!r}; known: {', '.join(known)}" + (f". {hint}" if hint else ""))
