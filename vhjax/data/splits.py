"""Split strings, parsed and resolved by TFDS itself: 'train', 'train[:90%]', 'train+test', ...

vhjax hands every split string to `tfds.core.ReadInstruction.from_spec` and resolves it with the
instruction's own `to_absolute` (TFDS's Python code, no TensorFlow), so a split selects exactly
the examples `tfds.load(..., split=...)` would, for built-in datasets too:
- a boundary is an example index or a percentage; negative ones count from the end;
- percentages round to the closest example (TFDS's 'closest' rounding, Python's `round`), so
  'train[:90%]' of 803 examples is 723 and 'train[-10%:]' of 997 is 100;
- 'a+b' concatenates (e.g. 'train+test', 'train[:10%]+test[-5:]'), 'all' is every split in order;
- 'train[Nshard]' / 'train[A shard:B shard]' select shards (a built-in split is one shard);
- as in TFDS, one '%' makes both bounds percentages ('train[10:50%]' = 'train[10%:50%]').
A plain 'NAME' is resolved without importing TFDS (it takes a second to import). A selection
with no examples raises ValueError (TFDS would return an empty dataset).
"""

from __future__ import annotations

import dataclasses
import re
import types
from typing import Any, Mapping

ALLOWED_FORMS = ("TFDS split syntax: 'NAME' (e.g. 'train', 'test'), 'NAME[start:stop]' with each bound optional "
                 "and either an index or a percentage (negative: from the end), e.g. 'train[:90%]', 'train[90%:]', "
                 "'train[:3000]', 'train[100:200]', 'train[-500:]', 'train[-10%:]'; 'a+b' to concatenate, e.g. "
                 "'train+test' or 'train[:50%]+test[:10]'; 'all'; shards as 'train[0shard]'")

_PLAIN = re.compile(r"^[\w-]+$")


@dataclasses.dataclass(frozen=True)
class Rows:
    """Examples `[start, stop)` of the base split `base` (one term of a '+' sum)."""

    base: str
    start: int
    stop: int

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """A split string and its parsed TFDS instruction (None for a plain 'NAME')."""

    text: str
    instruction: Any = dataclasses.field(default=None, compare=False, repr=False)

    def resolve(self, sizes: Mapping[str, Any], dataset: str | None = None) -> tuple[Rows, ...]:
        """The rows each '+' term selects, given the base splits' sizes (`{name: num_examples}`, or
        TFDS's `builder.info.splits`, whose shard lengths 'shard' bounds need). ValueError naming the
        split, the dataset and the available splits if a base split is unknown, a bound falls
        outside its split, or nothing is selected."""
        infos = {name: _split_info(info) for name, info in sizes.items()}
        where = f"split {self.text!r}" + (f" of dataset {dataset!r}" if dataset else "")
        available = ", ".join(sorted(infos))
        if self.instruction is None:
            if self.text not in infos:
                raise ValueError(f"{where}: base split {self.text!r} is "
                                 f"unknown; available splits: {available}")
            rows = (Rows(self.text, 0, infos[self.text].num_examples),)
        else:
            unknown = sorted(set(_bases(self.instruction)) - set(infos))
            if unknown:
                raise ValueError(f"{where}: base split {unknown[0]!r} is unknown; "
                                 f"available splits: {available}")
            try:
                absolute = self.instruction.to_absolute(infos)
            except ValueError as error:  # a bound outside its split
                sizes_text = ", ".join(f"{name}: {info.num_examples}" for name, info in infos.items())
                raise ValueError(f"{where} does not fit its base splits ({sizes_text}): "
                                 f"{error}; allowed forms: {ALLOWED_FORMS}") from None
            rows = tuple(Rows(str(a.splitname), a.from_ or 0,
                              infos[str(a.splitname)].num_examples if a.to is None else a.to) for a in absolute)
        if sum(map(len, rows)) == 0:
            spans = " + ".join(f"{r.base}[{r.start}:{r.stop}]" for r in rows)
            raise ValueError(f"{where} selects no examples ({spans}); "
                             f"allowed forms: {ALLOWED_FORMS}")
        return rows


def _split_info(info: Any) -> Any:
    """A TFDS SplitInfo as is; an int n as a one-shard split of n examples (what to_absolute reads)."""
    if isinstance(info, int) and not isinstance(info, bool):
        return types.SimpleNamespace(num_examples=int(info), shard_lengths=[int(info)])
    return info


def _bases(instruction: Any) -> list[str]:
    """Base split names an instruction refers to ('all' refers to none by name)."""
    if hasattr(instruction, "split_name"):
        return [instruction.split_name]
    if hasattr(instruction, "left"):
        return _bases(instruction.left) + _bases(instruction.right)
    return []


def parse_split(text: str) -> SplitSpec:
    """Parse a split string with TFDS; ValueError naming the value and the allowed forms."""
    if not isinstance(text, str):
        raise ValueError(f"split {text!r} is not understood; allowed: a string, {ALLOWED_FORMS}")
    if _PLAIN.match(text) and text != "all":
        return SplitSpec(text)
    import tensorflow_datasets as tfds

    try:
        instruction = tfds.core.ReadInstruction.from_spec(text)
    except (ValueError, NotImplementedError) as error:
        reason = str(error).strip().splitlines()[-1]
        raise ValueError(f"split {text!r} is not understood ({reason}); allowed forms: {ALLOWED_FORMS}") from None
    return SplitSpec(text, instruction)
