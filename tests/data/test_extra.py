"""Offline tables, mlxtend's MNIST 5k, procedural sets, K-fold splits, class weights and resampling."""

import importlib.util

import numpy as np
import pytest

from vhjax import data
from vhjax.data import extra

HAS_MLXTEND = importlib.util.find_spec("mlxtend") is not None


@pytest.mark.parametrize("name,features,classes,sizes", [
    ("iris", 4, 3, (120, 30)), ("wine", 13, 3, (142, 36)), ("breast_cancer", 30, 2, (455, 114))])
def test_sklearn_tables_load_standardized_and_stratified(name, features, classes, sizes):
    train, test = data.load(name, "train"), data.load(name, "test")
    assert (len(train), len(test)) == sizes
    assert train.x.shape[1:] == (features,) and train.num_classes == classes and train.x.dtype == np.float32
    np.testing.assert_allclose(train.x.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train.x.std(axis=0), 1.0, atol=1e-4)
    full = np.bincount(np.concatenate([train.y, test.y])) / (len(train) + len(test))
    np.testing.assert_allclose(np.bincount(test.y) / len(test), full, atol=0.05)
    assert len(data.load(name, "train[:50%]")) == round(sizes[0] / 2)  # TFDS rounds to the closest example


@pytest.mark.skipif(not HAS_MLXTEND, reason="mnist_5k reads its CSV from the mlxtend wheel: pip install mlxtend")
def test_mnist_5k_from_mlxtend_wheel_without_importing_it():
    import sys

    imported_before = "mlxtend" in sys.modules
    train, test = data.load("mnist_5k", "train"), data.load("mnist_5k", "test")
    assert ("mlxtend" in sys.modules) == imported_before
    assert train.x.shape == (4000, 28, 28, 1) and test.x.shape == (1000, 28, 28, 1)
    assert 0.0 <= train.x.min() and train.x.max() == 1.0
    np.testing.assert_array_equal(np.bincount(train.y), [400] * 10)
    assert 0.05 < float(train.x.mean()) < 0.25  # real digits: mostly dark background, some ink


def test_mnist_5k_missing_mlxtend_says_pip_install(monkeypatch):
    monkeypatch.setattr(extra.importlib.util, "find_spec", lambda name: None)

    def not_found(name):
        raise extra.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(extra.importlib.metadata, "files", not_found)
    with pytest.raises(ImportError, match="pip install mlxtend"):
        data.load("mnist_5k", "train")


@pytest.mark.parametrize("name,classes", [("two_moons", 2), ("blobs", 3)])
def test_procedural_sets_shapes_balance_and_fixed_seeds(name, classes):
    train, test = data.load(name, "train"), data.load(name, "test")
    assert train.x.shape == (extra.PROCEDURAL_TRAIN, 2) and test.x.shape == (extra.PROCEDURAL_TEST, 2)
    counts = np.bincount(train.y, minlength=classes)
    assert counts.max() - counts.min() <= 1 and train.num_classes == classes
    again = data.load(name, "train")
    np.testing.assert_array_equal(train.x, again.x)
    assert not np.array_equal(train.x[:100], test.x[:100])  # different seeds per split


def test_blobs_are_separable_and_moons_are_not_linear():
    from sklearn.linear_model import LogisticRegression

    def linear_accuracy(name):
        train, test = data.load(name, "train"), data.load(name, "test")
        return LogisticRegression().fit(train.x, train.y).score(test.x, test.y)

    assert linear_accuracy("blobs") > 0.9
    assert linear_accuracy("two_moons") < 0.95


@pytest.mark.parametrize("labels", [None, np.array([0] * 12 + [1] * 6 + [2] * 5)])
def test_kfold_folds_partition_the_indices(labels):
    n, k = 23, 4
    folds = extra.kfold_indices(n, k, seed=0, labels=labels)
    assert len(folds) == k
    validation = np.concatenate([val for _, val in folds])
    np.testing.assert_array_equal(np.sort(validation), np.arange(n))
    for train, val in folds:
        assert not set(train) & set(val)
        np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(n))
        assert len(val) in (n // k, n // k + 1)
    if labels is not None:
        for _, val in folds:
            assert np.bincount(labels[val], minlength=3).min() >= 1
    ordered = extra.kfold_indices(n, k, seed=None)
    np.testing.assert_array_equal(ordered[0][1], np.arange(6))
    with pytest.raises(ValueError, match=r"k has value 1; allowed: an integer >= 2"):
        extra.kfold_indices(n, 1)


def test_balanced_class_weights_formula():
    y = np.array([0] * 6 + [1] * 3 + [2] * 1)
    weights = extra.balanced_class_weights(y)
    np.testing.assert_allclose(weights, [10 / (3 * 6), 10 / (3 * 3), 10 / (3 * 1)], rtol=1e-6)
    np.testing.assert_allclose(np.sum(weights[y]), len(y), rtol=1e-6)  # mean weight per example is 1
    from sklearn.utils.class_weight import compute_class_weight

    np.testing.assert_allclose(weights, compute_class_weight("balanced", classes=np.arange(3), y=y), rtol=1e-6)
    with_absent = extra.balanced_class_weights(np.array([0, 0, 2]), num_classes=4)
    np.testing.assert_allclose(with_absent, [3 / 4, 0.0, 3 / 2, 0.0], rtol=1e-6)
    with pytest.raises(ValueError, match="num_classes"):
        extra.balanced_class_weights(y, num_classes=2)


def test_resampling_over_and_under_balance_classes():
    y = np.array([0] * 20 + [1] * 5 + [2] * 2)
    x = np.arange(len(y), dtype=np.float32)[:, None]
    imbalanced = data.Dataset(x, y, 3, "toy", "train")
    over = extra.rebalance(imbalanced, "over", seed=0)
    np.testing.assert_array_equal(np.bincount(over.y), [20, 20, 20])
    assert set(over.x[:, 0].astype(int)) == set(range(len(y)))  # every original kept
    np.testing.assert_array_equal(over.y, y[over.x[:, 0].astype(int)])  # x and y stay paired
    under = extra.rebalance(imbalanced, "under", seed=0)
    np.testing.assert_array_equal(np.bincount(under.y), [2, 2, 2])
    assert len(set(under.x[:, 0].astype(int))) == 6  # without replacement
    np.testing.assert_array_equal(extra.resample_indices(y, "over", seed=3), extra.resample_indices(y, "over", seed=3))
    with pytest.raises(ValueError, match="method"):
        extra.resample_indices(y, "smote")


def test_mlp_learns_two_moons_beyond_a_linear_boundary():
    from vhjax.config import TrainConfig
    from vhjax.train import fit

    config = TrainConfig(dataset="two_moons", model="mlp", model_kwargs={"widths": (32, 32), "num_classes": 2},
                         optimizer="adam", learning_rate=1e-2, batch_size=50, steps=400, eval_every=400, seed=0)
    result = fit(config, verbose=False)
    assert result.metrics["eval"]["accuracy"] > 0.97  # a linear model reaches about 0.88
