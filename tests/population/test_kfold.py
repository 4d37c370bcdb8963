"""K-fold cross-validation trained as one population."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from vhjax.config import TrainConfig
from vhjax.population import init_population
from vhjax.population.kfold import fit_kfold, fold_tables, make_fold_batch_indices
from vhjax.train import build_task

CONFIG = TrainConfig(dataset="digits", model="mlp", model_kwargs={"widths": (16,), "num_classes": 10},
                     batch_size=32, steps=100, eval_every=100, seed=0)


def test_fold_tables_hold_out_each_fold_once():
    labels = np.repeat(np.arange(4), 25)
    train, val, folds = fold_tables(labels, 5, seed=0)
    assert train.shape == (5, 80) and val.shape == (5, 20)
    assert len(np.unique(val)) == 100  # validation folds partition the examples
    for f in range(5):
        assert not set(train[f]) & set(val[f])
        assert np.bincount(labels[val[f]]).tolist() == [5, 5, 5, 5]  # stratified


def test_members_only_train_on_their_own_folds():
    task = build_task(CONFIG)
    train, _, _ = fold_tables(task.train.y, 3, seed=0)
    population = init_population(task, 3, same_batches=False)
    indices = np.asarray(make_fold_batch_indices(train, 32, True)(population, 50))  # (50, 3, 32)
    for member in range(3):
        assert set(indices[:, member].ravel()) <= set(train[member])
    assert len(set(indices[:, 0].ravel())) > 0.9 * train.shape[1]  # a fold's examples all get used


def test_cross_validation_ranks_candidates():
    result = fit_kfold(CONFIG, [{"learning_rate": 1e-5}, {"learning_rate": 1e-2}], k=3, verbose=False)
    bad, good = (np.array(c["folds"]["accuracy"]) for c in result.candidates)
    assert bad.shape == (3,) and good.shape == (3,)
    assert good.mean() > 0.8 and good.mean() > bad.mean() + 0.4
    assert "± " in result.table()
    with pytest.raises(ValueError, match="k has value 1; allowed: an integer >= 2"):
        fit_kfold(CONFIG, k=1, verbose=False)
