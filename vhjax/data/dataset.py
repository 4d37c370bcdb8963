"""Dataset: one split of a classification dataset as NumPy arrays, `from_arrays`, and the registry of
built-in loaders (`register_dataset`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from vhjax.registry import Registry


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """One split of a classification dataset held in memory.

    `x` is float32 with the examples on axis 0, `y` int32 class indices in `[0, num_classes)`.
    Arrays are converted to those dtypes on construction; mismatched lengths, non-integer labels
    or labels out of range raise ValueError/TypeError.
    """

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    name: str
    split: str

    def __post_init__(self):
        y = np.asarray(self.y)
        if not np.issubdtype(y.dtype, np.integer):
            raise TypeError(f"Dataset {self.name!r} field 'y' has dtype {y.dtype}; allowed: integer class indices")
        object.__setattr__(self, "x", np.asarray(self.x, dtype=np.float32))
        object.__setattr__(self, "y", y.astype(np.int32, copy=False))
        check_dataset_fields(self)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. (40,) for MNIST-1D or (8, 8, 1) for digits."""
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def rows(self, start: int, stop: int, split: str) -> Dataset:
        """Examples `start:stop`, renamed to `split` (views, no copy)."""
        return dataclasses.replace(self, x=self.x[start:stop], y=self.y[start:stop], split=split)


def concatenate(parts: Sequence[Dataset], split: str) -> Dataset:
    """The examples of `parts` in order, as split `split` (one part: a view, no copy)."""
    if len(parts) == 1:
        return dataclasses.replace(parts[0], split=split)
    shapes = {part.feature_shape for part in parts}
    if len(shapes) != 1:
        raise ValueError(f"split {split!r} of dataset {parts[0].name!r} joins splits with different example shapes "
                         f"{sorted(shapes)}; allowed: one shape")
    return Dataset(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]),
                   max(p.num_classes for p in parts), parts[0].name, split)


def from_arrays(x: Any, y: Any, *, name: str = "arrays", num_classes: int | None = None,
                split: str = "train") -> Dataset:
    """A `Dataset` from user arrays: x (N, ...) converted to float32, y (N,) integer class indices.

    `num_classes=None` infers `max(y) + 1` (pass it when a class may be missing from `y`). The
    result is the base split `split` ('train' by default), so TFDS-style slices select from it:
    `vhjax.data.load(from_arrays(x, y), 'train[:90%]')`.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"from_arrays 'name' has value {name!r}; allowed: a non-empty string")
    labels = np.asarray(y)
    if not np.issubdtype(labels.dtype, np.integer):
        if np.issubdtype(labels.dtype, np.floating) and labels.size and np.all(labels == np.round(labels)):
            labels = labels.astype(np.int64)  # whole-number floats, as from pandas or np.loadtxt
        else:
            raise TypeError(f"from_arrays 'y' has dtype {labels.dtype}; allowed: integer class indices "
                            "(0 .. num_classes - 1)")
    if num_classes is None:
        if labels.ndim != 1 or not labels.size:
            raise ValueError(f"from_arrays 'y' has shape {labels.shape}; allowed: (N,) with N >= 1")
        num_classes = int(labels.max()) + 1
    return Dataset(x, labels, num_classes, name, split)


def check_dataset_fields(data: Dataset) -> None:
    """Raise ValueError naming the field when shapes, class count or labels are inconsistent."""
    if data.x.ndim < 1 or data.y.ndim != 1 or data.x.shape[0] != data.y.shape[0]:
        raise ValueError(
            f"Dataset {data.name!r} split {data.split!r}: 'x' has shape {data.x.shape} and 'y' has shape "
            f"{data.y.shape}; allowed: x of shape (N, ...) and y of shape (N,) with the same N")
    if not isinstance(data.num_classes, (int, np.integer)) or data.num_classes < 1:
        raise ValueError(f"Dataset {data.name!r} field 'num_classes' has value {data.num_classes!r}; "
                         "allowed: a positive integer")
    if data.y.size and (data.y.min() < 0 or data.y.max() >= data.num_classes):
        raise ValueError(
            f"Dataset {data.name!r} split {data.split!r}: labels span [{data.y.min()}, {data.y.max()}]; "
            f"allowed: [0, {data.num_classes - 1}] for num_classes={data.num_classes}")


# A built-in loader takes `data_dir` (None: its default location) and returns every full split.
Loader = Callable[[str | None], Mapping[str, Dataset]]



def _same_definition(a: Any, b: Any) -> bool:
    """The same object, or the same function defined again (a re-run notebook cell, a reloaded module)."""
    key = lambda f: (getattr(f, "__module__", None), getattr(f, "__qualname__", None))  # noqa: E731
    return a is b or (callable(a) and callable(b) and key(a) == key(b) and None not in key(a)
                      and "<lambda>" not in key(a)[1])


class DatasetRegistry(Registry[Loader]):
    """The registry of dataset loaders. Registering a name again with the same loader (or the same
    definition re-run) replaces it silently; a different loader needs `overwrite=True`."""

    def add(self, name: str, obj: Loader, overwrite: bool = False) -> None:
        if not isinstance(name, str) or not name or name.startswith("tfds:"):
            raise ValueError(f"dataset name {name!r} is not allowed; allowed: a non-empty string not starting "
                             "with 'tfds:'")
        if not callable(obj):
            raise TypeError(f"dataset {name!r} loader is {type(obj).__name__}; allowed: a function "
                            "loader(data_dir) -> {split_name: Dataset}")
        if name in self._items and not overwrite and not _same_definition(self._items[name], obj):
            current = self._items[name]
            raise ValueError(f"dataset {name!r} is already registered (loader "
                             f"{getattr(current, '__module__', '?')}.{getattr(current, '__qualname__', current)}); "
                             "pass overwrite=True to replace it, or choose another name")
        self._items[name] = obj


DATASETS: DatasetRegistry = DatasetRegistry("dataset")


def register_dataset(name: str, loader: Loader | None = None, *, overwrite: bool = False) -> Any:
    """Register `loader(data_dir) -> {split_name: Dataset}` under `name`; `load(name, split)` then
    reads it, with TFDS split syntax over its splits.

    As a decorator `@register_dataset("name")`, or directly `register_dataset("name", loader)`.
    Registering the same loader again (or its re-run definition) is allowed; replacing a different
    loader needs `overwrite=True`, else ValueError.
    """
    if loader is None:
        def decorator(fn: Loader) -> Loader:
            DATASETS.add(name, fn, overwrite=overwrite)
            return fn

        return decorator
    DATASETS.add(name, loader, overwrite=overwrite)
    return loader
