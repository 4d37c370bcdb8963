"""Datasets as in-memory NumPy splits: built-ins (mnist1d, mnist1d_shuffled, digits, and in `extra`: iris,
wine, breast_cancer, mnist_5k, two_moons, blobs) and local TFDS data.

`load(name, split, data_dir=None)` resolves `name` in this order:
1. 'tfds:NAME' -> the TFDS dataset NAME prepared (array_record) under `data_dir`;
2. a registered built-in (`DATASETS`; add your own with `register_dataset`);
3. a TFDS dataset NAME prepared under `data_dir` (only when `data_dir` is given).
Nothing is ever downloaded. See `splits` for the split syntax ('train', 'train[:90%]', ...).
"""

from __future__ import annotations

from vhjax.data import builtin, extra  # noqa: F401  (registers the built-ins)
from vhjax.data.builtin import cache_dir, paper_shuffle_permutation
from vhjax.data.dataset import DATASETS, Dataset, register_dataset
from vhjax.data.extra import balanced_class_weights, kfold_indices, rebalance, resample_indices
from vhjax.data.splits import ALLOWED_FORMS, SplitSpec, parse_split
from vhjax.data.tfds_source import is_prepared, load_tfds, save_as_tfds, tfds_root

TFDS_PREFIX = "tfds:"

__all__ = ["ALLOWED_FORMS", "DATASETS", "Dataset", "SplitSpec", "balanced_class_weights", "cache_dir", "kfold_indices",
           "load", "paper_shuffle_permutation", "parse_split", "rebalance", "register_dataset", "resample_indices",
           "save_as_tfds", "tfds_root"]


def load(name: str, split: str, *, data_dir: str | None = None) -> Dataset:
    """Load one split of dataset `name` as a `Dataset` (x float32, y int32)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"dataset name {name!r} is not allowed; allowed: a non-empty string")
    spec = parse_split(split)
    if name.startswith(TFDS_PREFIX):
        return load_tfds(name[len(TFDS_PREFIX):], spec, data_dir)
    if name in DATASETS:
        return load_builtin(name, spec, data_dir)
    if data_dir is not None and is_prepared(name, data_dir):
        return load_tfds(name, spec, data_dir)
    raise ValueError(
        f"unknown dataset {name!r}; known built-in datasets: {known_names()}; or "
        f"'{TFDS_PREFIX}NAME' for a TFDS dataset prepared under data_dir (data_dir={data_dir!r})")


def known_names() -> str:
    """Registered names, those of `builtin` first, then those of `extra`, then the rest; each group sorted."""
    order = {builtin.__name__: 0, extra.__name__: 1}
    groups: dict[int, list[str]] = {}
    for name in DATASETS.names():
        groups.setdefault(order.get(DATASETS.get(name).__module__, 2), []).append(name)
    return "; ".join(", ".join(groups[key]) for key in sorted(groups))


def load_builtin(name: str, spec: SplitSpec, data_dir: str | None) -> Dataset:
    """A split of a registered built-in: its full base split, then the slice."""
    splits = DATASETS.get(name)(data_dir)
    if spec.base not in splits:
        raise ValueError(f"split {spec.text!r} of dataset {name!r}: base split {spec.base!r} is unknown; "
                         f"available splits: {', '.join(sorted(splits))}")
    start, stop = spec.resolve(len(splits[spec.base]))
    return splits[spec.base].rows(start, stop, spec.text)

