"""A name -> object registry whose lookups fail with the list of known names."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (modules, functions, factories) of one kind.

    `get` raises ValueError naming the kind, the unknown name and every known
    name, so a typo in a config is reported before anything is compiled.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj

    def get(self, name: str) -> T:
        if name not in self._items:
            known = ", ".join(sorted(self._items))
            raise ValueError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known}")
        return self._items[name]

    def build(self, name: str, **options: Any) -> Any:
        """Call the factory registered as `name` with `options`; an option it does not take raises
        ValueError naming the kind, the name and the options it allows."""
        factory = self.get(name)
        allowed = list(inspect.signature(factory).parameters)
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(f"{self.kind} {name!r} has no option {unknown[0]!r}; allowed options: "
                             f"{', '.join(allowed) or 'none'}")
        return factory(**options)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
