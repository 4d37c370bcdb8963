"""A small bounded cache of values built for particular objects (a task's compiled runner, a
dataset made of the user's arrays), so a repeated call reuses what was built and compiled.

Entries are keyed by the objects' ids and the hashable settings; an entry holds its objects and a
lookup hits only when they are the very same ones (`is`), so an id that Python reuses for a newer
object never returns a value built for an older one. Past `bound` entries the oldest is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

V = TypeVar("V")


class Memo(Generic[V]):
    """Values built once per (objects, settings), at most `bound` of them (the oldest goes first)."""

    def __init__(self, bound: int):
        if not isinstance(bound, int) or isinstance(bound, bool) or bound < 1:
            raise ValueError(f"bound has value {bound!r}; allowed: a positive integer")
        self.bound = bound
        self._entries: dict[tuple, tuple[tuple, V]] = {}

    def get(self, objects: tuple[Any, ...], build: Callable[[], V], settings: Hashable = ()) -> V:
        """The value remembered for these very objects and settings, else `build()` (remembered)."""
        key = (tuple(id(obj) for obj in objects), settings)
        entry = self._entries.get(key)
        if entry is not None and len(entry[0]) == len(objects) and all(
                held is obj for held, obj in zip(entry[0], objects)):
            return entry[1]
        value = build()
        self._entries.pop(key, None)  # a stale entry under a reused id
        while len(self._entries) >= self.bound:
            self._entries.pop(next(iter(self._entries)))
        self._entries[key] = (tuple(objects), value)
        return value

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
