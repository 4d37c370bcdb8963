"""How a stored configuration differs from the current one, for the errors that refuse to resume.

A workdir or a search store keeps the configuration it was started with (as JSON); resuming with
another is refused. `differences` walks both values and returns each place they differ, so the
error names exactly what changed (`model_kwargs.width`, `augment[0].strength`, `[3].learning_rate`),
not only which top-level field, or only that something did.
"""

from __future__ import annotations

from typing import Any

ABSENT = object()  # a key one side has and the other has not

Difference = tuple[tuple[Any, ...], Any, Any]  # (keys and indices from the top, stored, current)


def differences(stored: Any, current: Any, at: tuple[Any, ...] = ()) -> list[Difference]:
    """Every place two JSON-like values differ: (keys and list indices from the top, stored, current).

    Dicts are compared key by key and lists of equal length item by item; anything else (lists of
    different lengths, values of different types) is one difference at its place. A key that one
    side lacks is `ABSENT` there.
    """
    if isinstance(stored, dict) and isinstance(current, dict):
        found = []
        for key in sorted(set(stored) | set(current), key=str):
            found += differences(stored.get(key, ABSENT), current.get(key, ABSENT), (*at, key))
        return found
    if isinstance(stored, (list, tuple)) and isinstance(current, (list, tuple)) and len(stored) == len(current):
        found = []
        for index, (old, new) in enumerate(zip(stored, current)):
            found += differences(old, new, (*at, index))
        return found
    same = stored is current if ABSENT in (stored, current) else stored == current
    return [] if same else [(at, stored, current)]


def describe(found: list[Difference], root: str = "", most: int = 6, width: int = 120) -> str:
    """'where: stored X, now Y; ...' for the first `most` differences, each value cut at `width`
    characters; `root` names the top (e.g. 'members' gives 'members[3].learning_rate')."""
    shown = [f"{place(at, root)}: stored {_text(old, width)}, now {_text(new, width)}"
             for at, old, new in found[:most]]
    if len(found) > most:
        shown.append(f"and {len(found) - most} more")
    return "; ".join(shown)


def place(at: tuple[Any, ...], root: str = "") -> str:
    """`('augment', 0, 'strength')` as 'augment[0].strength' (after `root`, if given)."""
    text = root
    for step in at:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else str(step))
    return text or "the value"


def _text(value: Any, width: int) -> str:
    text = "absent" if value is ABSENT else repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."
