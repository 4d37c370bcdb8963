"""Dataset: one split of a classification dataset as NumPy arrays, and the registry of built-ins."""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

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

DATASETS: Registry[Loader] = Registry("dataset")


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator: register `loader(data_dir) -> {split_name: Dataset}` under `name`."""
    return DATASETS.register(name)
