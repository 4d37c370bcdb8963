"""Split strings: 'train', 'test', and TFDS-style slices such as 'train[:90%]' or 'train[100:200]'.

A boundary is an example index (negative counts from the end, as in Python) or a percentage of
the split's size. A percentage `p` becomes the index `floor(n * p / 100)` (from the end when
negative), so 'train[:90%]' and 'train[90%:]' partition 'train' exactly.
"""

from __future__ import annotations

import dataclasses
import re

ALLOWED_FORMS = ("'NAME' (e.g. 'train', 'test'), 'NAME[start:stop]' with each bound optional and either "
                 "an index or a percentage, e.g. 'train[:90%]', 'train[90%:]', 'train[:3000]', "
                 "'train[100:200]', 'train[-500:]'")

_SPLIT = re.compile(r"^(?P<base>[A-Za-z_][A-Za-z0-9_]*)(?:\[(?P<start>[^:\]]*):(?P<stop>[^:\]]*)\])?$")
_BOUND = re.compile(r"^(?P<value>-?\d+)(?P<percent>%?)$")


@dataclasses.dataclass(frozen=True)
class Bound:
    """One end of a slice: `value` examples, or `value` percent of the split when `percent`."""

    value: int
    percent: bool


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """A parsed split string: the base split and optional slice bounds (None = open end)."""

    text: str
    base: str
    start: Bound | None = None
    stop: Bound | None = None

    def resolve(self, size: int) -> tuple[int, int]:
        """Indices `[start, stop)` within a base split of `size` examples; ValueError if out of range or empty."""
        start = 0 if self.start is None else bound_index(self.start, size, self.text)
        stop = size if self.stop is None else bound_index(self.stop, size, self.text)
        if start >= stop:
            raise ValueError(
                f"split {self.text!r} selects no examples: [{start}, {stop}) of the {size} examples of "
                f"{self.base!r}; allowed forms: {ALLOWED_FORMS}")
        return start, stop


def parse_split(text: str) -> SplitSpec:
    """Parse a split string; ValueError naming the value and the allowed forms."""
    match = _SPLIT.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"split {text!r} is not understood; allowed forms: {ALLOWED_FORMS}")
    if match["start"] is None:
        return SplitSpec(text, match["base"])
    return SplitSpec(text, match["base"], parse_bound(match["start"], text), parse_bound(match["stop"], text))


def parse_bound(text: str, split: str) -> Bound | None:
    """'' -> None, '3000' -> Bound(3000, False), '-10%' -> Bound(-10, True)."""
    if text == "":
        return None
    match = _BOUND.match(text)
    if match is None:
        raise ValueError(f"split {split!r} has slice bound {text!r}; allowed forms: {ALLOWED_FORMS}")
    bound = Bound(int(match["value"]), bool(match["percent"]))
    if bound.percent and abs(bound.value) > 100:
        raise ValueError(f"split {split!r} has slice bound {text!r}; allowed percentages: -100% to 100%")
    return bound


def bound_index(bound: Bound, size: int, split: str) -> int:
    """The example index a bound denotes in a split of `size` examples."""
    if bound.percent:
        offset = size * abs(bound.value) // 100
        return offset if bound.value >= 0 else size - offset
    index = bound.value if bound.value >= 0 else size + bound.value
    if not 0 <= index <= size:
        raise ValueError(f"split {split!r} has slice bound {bound.value} outside the {size} examples of its "
                         f"base split; allowed: -{size} to {size}")
    return index
