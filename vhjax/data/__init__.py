"""Datasets as in-memory NumPy splits: built-ins (mnist1d, mnist1d_shuffled, digits, and in `extra`: iris,
wine, breast_cancer, mnist_5k, two_moons, blobs), user arrays and local TFDS data.

`load(source, split, data_dir=None)` resolves `source` in this order:
0. a `Dataset` (e.g. `from_arrays(x, y)`), an `(x, y)` pair, or a mapping `{split: Dataset or (x, y)}`;
1. 'tfds:NAME' -> the TFDS dataset NAME prepared (array_record) under `data_dir`; NAME may be
   'name', 'name:1.0.0', 'name/config', 'name/config:1.0.0' (or 'name/1.0.0');
2. a registered name (`DATASETS`; add your own with `register_dataset`);
3. a TFDS dataset NAME prepared under `data_dir` (only when `data_dir` is given).
Nothing is ever downloaded. `split` uses TFDS's split syntax, resolved by TFDS itself (see
`splits`): 'train', 'train[:90%]', 'train[-10%:]', 'train+test', ...
"""

from __future__ import annotations

from typing import Any, Mapping

from vhjax.data import builtin, extra  # noqa: F401  (registers the built-ins)
from vhjax.data.builtin import cache_dir, paper_shuffle_permutation
from vhjax.data.dataset import DATASETS, Dataset, concatenate, from_arrays, register_dataset
from vhjax.data.extra import balanced_class_weights, kfold_indices, rebalance, resample_indices
from vhjax.data.splits import ALLOWED_FORMS, Rows, SplitSpec, parse_split
from vhjax.data.tfds_source import is_prepared, load_tfds, save_as_tfds, tfds_root

TFDS_PREFIX = "tfds:"

__all__ = ["ALLOWED_FORMS", "DATASETS", "Dataset", "Rows", "SplitSpec", "balanced_class_weights", "cache_dir",
           "from_arrays", "kfold_indices", "load", "paper_shuffle_permutation", "parse_split", "rebalance",
           "register_dataset", "resample_indices", "save_as_tfds", "select_split", "tfds_root"]


def load(name: Any, split: str, *, data_dir: str | None = None) -> Dataset:
    """Load one split of dataset `name` (a registered or TFDS name, or in-memory data: see the module
    docstring) as a `Dataset` (x float32, y int32)."""
    spec = parse_split(split)
    if isinstance(name, (Dataset, tuple, list, Mapping)):
        splits = in_memory_splits(name)
        return select_split(splits, spec, next(iter(splits.values())).name)
    if not isinstance(name, str) or not name:
        raise ValueError(f"dataset name {name!r} is not allowed; allowed: a non-empty string, a Dataset "
                         "(vhjax.data.from_arrays(x, y)), an (x, y) pair or a mapping {split: (x, y)}")
    if name.startswith(TFDS_PREFIX):
        return load_tfds(name[len(TFDS_PREFIX):], spec, data_dir)
    if name in DATASETS:
        return load_builtin(name, spec, data_dir)
    if data_dir is not None and is_prepared(name, data_dir):
        return load_tfds(name, spec, data_dir)
    raise ValueError(
        f"unknown dataset {name!r}; known datasets: {known_names()}. Register your own with "
        f"vhjax.data.register_dataset({name!r}, loader) (loader(data_dir) -> {{'train': Dataset, ...}}), pass "
        f"arrays as dataset=(x, y) or vhjax.data.from_arrays(x, y), or use '{TFDS_PREFIX}NAME' for a TFDS "
        f"dataset prepared under data_dir (data_dir={data_dir!r})")


def in_memory_splits(source: Any) -> dict[str, Dataset]:
    """{split: Dataset} from a Dataset, an (x, y) pair (split 'train') or a mapping of those."""
    if isinstance(source, Dataset):
        return {source.split: source}
    if isinstance(source, (tuple, list)):
        if len(source) != 2:
            raise ValueError(f"dataset given as a sequence of {len(source)} items; allowed: an (x, y) pair")
        return {"train": from_arrays(*source)}
    splits = {}
    for split, value in source.items():
        data = value if isinstance(value, Dataset) else in_memory_splits(value)["train"]
        splits[str(split)] = Dataset(data.x, data.y, data.num_classes, data.name, str(split))
    if not splits:
        raise ValueError("dataset given as an empty mapping; allowed: {split: Dataset or (x, y)}")
    classes = max(d.num_classes for d in splits.values())  # inferred per split: one count for all
    return {split: Dataset(d.x, d.y, classes, d.name, split) for split, d in splits.items()}


def known_names() -> str:
    """Registered names, those of `builtin` first, then those of `extra`, then the rest; each group sorted."""
    order = {builtin.__name__: 0, extra.__name__: 1}
    groups: dict[int, list[str]] = {}
    for name in DATASETS.names():
        groups.setdefault(order.get(DATASETS.get(name).__module__, 2), []).append(name)
    return "; ".join(", ".join(groups[key]) for key in sorted(groups))


def load_builtin(name: str, spec: SplitSpec, data_dir: str | None) -> Dataset:
    """A split of a registered dataset: its full base splits, then TFDS's selection of rows."""
    splits = DATASETS.get(name)(data_dir)
    if not isinstance(splits, Mapping) or not all(isinstance(d, Dataset) for d in splits.values()):
        raise TypeError(f"dataset {name!r} loader returned {type(splits).__name__}; allowed: a mapping "
                        "{split_name: Dataset}")
    return select_split(splits, spec, name)


def select_split(splits: Mapping[str, Dataset], spec: SplitSpec | str, name: str | None = None) -> Dataset:
    """The examples split string `spec` selects from full base `splits` ({name: Dataset}), in TFDS's
    order: each '+' term's rows in turn. A single term is a view (no copy)."""
    spec = parse_split(spec) if isinstance(spec, str) else spec
    rows = spec.resolve({split: len(data) for split, data in splits.items()}, name)
    return concatenate([splits[r.base].rows(r.start, r.stop, spec.text) for r in rows if len(r)], spec.text)
