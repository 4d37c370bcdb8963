"""Built-in datasets that need no download: MNIST-1D (generated), its shuffled-pixel twin, sklearn digits.

MNIST-1D (Greydanus, "Scaling Down Deep Learning", 2020) is generated locally with the `mnist1d`
package's default arguments (4000 train / 1000 test signals of 40 positions, 10 classes);
`mnist1d.data.make_dataset` only computes, it never touches the network (the download lives in
`get_dataset`, which is not used). The result is cached as .npz under `data_dir`, else
`$VHJAX_CACHE`, else `~/.cache/vhjax/`. The digits' split is cached there too: scikit-learn's
import costs a process about a second, its split a few milliseconds.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import random
import zipfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from vhjax.atomic_files import replace_atomically
from vhjax.data.dataset import Dataset, register_dataset

CACHE_ENV = "VHJAX_CACHE"
MNIST1D_CLASSES = 10
MNIST1D_LENGTH = 40

# The paper's shuffled-pixels experiment (notebooks/mnist1d-classification.ipynb in
# greydanus/mnist1d) builds its permutation as `np.random.seed(42); np.random.permutation(40)`.
PAPER_SHUFFLE_SEED = 42

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def cache_dir(data_dir: str | None = None) -> Path:
    """Where generated datasets are cached: `data_dir`, else `$VHJAX_CACHE`, else ~/.cache/vhjax."""
    if data_dir:
        return Path(data_dir).expanduser()
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "vhjax").expanduser()


def mnist1d_cache_path(directory: Path) -> Path:
    """Cache file name; it carries the mnist1d version so a new generator release regenerates."""
    return directory / f"mnist1d-{importlib.metadata.version('mnist1d')}.npz"


@contextlib.contextmanager
def preserved_global_rngs() -> Iterator[None]:
    """Restore NumPy's and Python's global RNG states afterwards (mnist1d seeds both globally)."""
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


def generate_mnist1d() -> dict[str, np.ndarray]:
    """Generate MNIST-1D with the paper's default arguments (about 2 s on one CPU core)."""
    from mnist1d.data import get_dataset_args, make_dataset

    with preserved_global_rngs():
        data = make_dataset(get_dataset_args())
    return {"x_train": data["x"].astype(np.float32), "y_train": data["y"].astype(np.int32),
            "x_test": data["x_test"].astype(np.float32), "y_test": data["y_test"].astype(np.int32)}


def save_npz_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """`np.savez` to `path`, replaced whole (`vhjax.atomic_files`): readers never see half a file."""
    replace_atomically(path, lambda file: np.savez(file, **arrays), binary=True)


def read_npz(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a cache file, or None when it is missing or unreadable."""
    try:
        with np.load(path) as stored:
            return {key: stored[key] for key in stored.files}
    except (FileNotFoundError, OSError, ValueError, zipfile.BadZipFile):
        return None


def cached_splits(path: Path, make: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The train/test arrays (`x_train`, `y_train`, `x_test`, `y_test`) cached at `path`, made by
    `make()` and cached when the file is missing, unreadable or incomplete."""
    arrays = read_npz(path)
    if arrays is None or not {"x_train", "y_train", "x_test", "y_test"} <= arrays.keys():
        arrays = make()
        save_npz_atomically(path, arrays)
    return arrays


def mnist1d_arrays(data_dir: str | None = None) -> dict[str, np.ndarray]:
    """MNIST-1D arrays from the cache, generating and caching them on first use."""
    return cached_splits(mnist1d_cache_path(cache_dir(data_dir)), generate_mnist1d)


def paper_shuffle_permutation(length: int = MNIST1D_LENGTH, seed: int = PAPER_SHUFFLE_SEED) -> np.ndarray:
    """The fixed permutation of positions of the paper's shuffled MNIST-1D.

    Equal to `np.random.seed(seed); np.random.permutation(length)` as in the paper's notebook,
    computed with a private RandomState so the global NumPy RNG is left alone.
    """
    return np.random.RandomState(seed).permutation(length)


@register_dataset("mnist1d")
def load_mnist1d(data_dir: str | None = None) -> dict[str, Dataset]:
    """MNIST-1D: x (N, 40) float32, 10 classes; 'train' 4000, 'test' 1000."""
    arrays = mnist1d_arrays(data_dir)
    return {split: Dataset(arrays[f"x_{split}"], arrays[f"y_{split}"], MNIST1D_CLASSES, "mnist1d", split)
            for split in ("train", "test")}


@register_dataset("mnist1d_shuffled")
def load_mnist1d_shuffled(data_dir: str | None = None) -> dict[str, Dataset]:
    """MNIST-1D with the 40 positions of every signal permuted by `paper_shuffle_permutation()`."""
    order = paper_shuffle_permutation()
    return {split: Dataset(data.x[:, order], data.y, data.num_classes, "mnist1d_shuffled", split)
            for split, data in load_mnist1d(data_dir).items()}


def split_digits() -> dict[str, np.ndarray]:
    """scikit-learn's digits as (N, 8, 8, 1) in [0, 1], split 80/20 stratified by class with
    `DIGITS_SPLIT_SEED` (`train_test_split`): 1437 train / 360 test."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    x = (bunch.images / 16.0).astype(np.float32)[..., None]
    y = bunch.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=DIGITS_TEST_FRACTION, stratify=y, random_state=DIGITS_SPLIT_SEED)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def digits_cache_path(directory: Path) -> Path:
    """Cache file name: the scikit-learn version and the split's settings, so a change of any splits anew."""
    version = importlib.metadata.version("scikit-learn")
    return directory / f"digits-sklearn{version}-test{DIGITS_TEST_FRACTION:g}-seed{DIGITS_SPLIT_SEED}.npz"


def digits_arrays(data_dir: str | None = None) -> dict[str, np.ndarray]:
    """The digits' split from the cache, made with scikit-learn and cached on first use."""
    return cached_splits(digits_cache_path(cache_dir(data_dir)), split_digits)


@register_dataset("digits")
def load_digits(data_dir: str | None = None) -> dict[str, Dataset]:
    """scikit-learn's 8x8 digits (1797 images, 10 classes) as (N, 8, 8, 1) in [0, 1].

    Split 80/20, stratified by class, with `DIGITS_SPLIT_SEED`: 1437 train / 360 test
    (`split_digits`). The split is cached as for MNIST-1D (`data_dir`, else `$VHJAX_CACHE`, else
    ~/.cache/vhjax), so only a process that makes it imports scikit-learn.
    """
    arrays = digits_arrays(data_dir)
    return {split: Dataset(arrays[f"x_{split}"], arrays[f"y_{split}"], 10, "digits", split)
            for split in ("train", "test")}
