"""Datasets as in-memory NumPy splits: built-ins (mnist1d, mnist1d_shuffled, digits) and local TFDS data.

`load(name, split, data_dir=None)` resolves `name` in this order:
1. 'tfds:NAME' -> the TFDS dataset NAME prepared (array_record) under `data_dir`;
2. a registered built-in (`DATASETS`; add your own with `register_dataset`);
3. a TFDS dataset NAME prepared under `data_dir` (only when `data_dir` is given).
Nothing is ever downloaded. See `splits` for the split syntax ('train', 'train[:90%]', ...).
"""

from __future__ import annotations

from vhjax.data import builtin  # noqa: F401  (registers the built-ins)
from vhjax.data.builtin import cache_dir, paper_shuffle_permutation
from vhjax.data.dataset import DATASETS, Dataset, register_dataset
from vhjax.data.splits import ALLOWED_FORMS, SplitSpec, parse_split
from vhjax.data.tfds_source import is_prepared, load_tfds, save_as_tfds, tfds_root

TFDS_PREFIX = "tfds:"

__all__ = ["ALLOWED_FORMS", "DATASETS", "Dataset", "SplitSpec", "cache_dir", "load", "paper_shuffle_permutation",
           "parse_split", "register_dataset", "save_as_tfds", "tfds_root"]


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
        f"unknown dataset {name!r}; known built-in datasets: {', '.join(DATASETS.names())}; or "
        f"'{TFDS_PREFIX}NAME' for a TFDS dataset prepared under data_dir (data_dir={data_dir!r})")


def load_builtin(name: str, spec: SplitSpec, data_dir: str | None) -> Dataset:
    """A split of a registered built-in: its full base split, then the slice."""
    splits = DATASETS.get(name)(data_dir)
    if spec.base not in splits:
        raise ValueError(f"split {spec.text!r} of dataset {name!r}: base split {spec.base!r} is unknown; "
                         f"available splits: {', '.join(sorted(splits))}")
    start, stop = spec.resolve(len(splits[spec.base]))
    return splits[spec.base].rows(start, stop, spec.text)

