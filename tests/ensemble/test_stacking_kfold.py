"""Stacking on a k-fold population: out-of-fold predictions, the meta-learner, bad input."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vhjax.config import TrainConfig
from vhjax.ensemble import Ensemble, combine, stack_kfold
from vhjax.population.fit import precise_members
from vhjax.population.kfold import fit_kfold, fold_precise_batches, fold_tables, member_probs, out_of_fold_probs
from vhjax.train.step import recompute_statistics

CONFIG = TrainConfig(dataset="digits", model="mlp", model_kwargs={"widths": (16,), "num_classes": 10},
                     batch_size=32, steps=60, eval_every=60, seed=0)
K = 3


@pytest.fixture(scope="module")
def result():
    # deliberately different candidates: a learning rate too small to learn much, and a good one
    return fit_kfold(CONFIG, [{"learning_rate": 1e-4}, {"learning_rate": 1e-2}], k=K, verbose=False)


def test_out_of_fold_covers_every_example_once_with_its_held_out_model(result):
    n = len(result.task.train.y)
    held_out = np.concatenate([val for _, val in result.folds])
    np.testing.assert_array_equal(np.sort(held_out), np.arange(n))  # each example held out exactly once
    oof = out_of_fold_probs(result)
    assert oof.shape == (2, n, 10) and np.all(np.isfinite(oof))
    np.testing.assert_allclose(oof.sum(-1), 1.0, atol=1e-5)
    # by hand: example i of fold 1's held-out set, predicted by candidate 1's fold-1 model
    fold, candidate = 1, 1
    i = int(result.folds[fold][1][3])
    assert i not in set(result.folds[fold][0].tolist())
    state = jax.tree.map(lambda leaf: leaf[candidate * K + fold], result.population.members)
    logits = result.task.model.apply({"params": state.params, **state.model_state}, result.task.train.x[i:i + 1],
                                     train=False)
    np.testing.assert_allclose(oof[candidate, i], np.asarray(jax.nn.softmax(logits[0])), atol=1e-5)
    # and every example's OOF row is its held-out fold model's row among all fold models' predictions
    every = member_probs(result, result.task.train.x)  # (2, K, N, 10)
    fold_of = np.empty(n, int)
    for f, (_, val) in enumerate(result.folds):
        fold_of[val] = f
    np.testing.assert_allclose(oof, every[:, fold_of, np.arange(n)], atol=1e-5)


def test_out_of_fold_is_not_in_fold_and_stacking_on_it_differs(result):
    n, y = len(result.task.train.y), result.task.train.y
    every = member_probs(result, result.task.train.x)
    fold_of = np.empty(n, int)
    for f, (_, val) in enumerate(result.folds):
        fold_of[val] = f
    in_fold = every[:, (fold_of + 1) % K, np.arange(n)]  # a model that trained on the example
    assert not set(result.folds[1][1].tolist()) & set(result.folds[1][0].tolist())
    oof = out_of_fold_probs(result)
    assert np.abs(oof - in_fold).max() > 1e-2
    good = 1
    assert (in_fold[good].argmax(-1) == y).mean() >= (oof[good].argmax(-1) == y).mean()  # training data looks easier
    leaky = combine.fit_stacking(in_fold, y, l2=0.01, steps=100)
    honest = combine.fit_stacking(oof, y, l2=0.01, steps=100)
    assert np.abs(leaky["kernel"] - honest["kernel"]).max() > 1e-3


def test_stacking_on_out_of_fold_is_not_worse_than_the_best_candidate(result, tmp_path):
    ensemble = stack_kfold(result, l2=(0.1, 1.0), folds=3, steps=200)
    assert isinstance(ensemble, Ensemble) and ensemble.rule == "stacking"
    assert ensemble.size == 2 * K and ensemble.combined_size == 2
    assert ensemble.meta["kernel"].shape == (2 * 10, 10)
    val = result.task.eval
    report = ensemble.evaluate(val.x, val.y)
    candidates = report["candidates"]
    assert max(candidates["accuracy"]) - min(candidates["accuracy"]) > 0.2  # the candidates really differ
    assert report["accuracy"] >= max(candidates["accuracy"]) - 0.03
    assert report["nll"] <= min(candidates["nll"]) + 0.05
    loaded = Ensemble.load(ensemble.save(tmp_path / "stack"))
    np.testing.assert_array_equal(loaded.candidate_of, ensemble.candidate_of)
    np.testing.assert_allclose(loaded.predict_proba(val.x[:20]), ensemble.predict_proba(val.x[:20]), atol=1e-6)


def test_bad_input_is_named_before_compiling(result):
    one = dataclasses.replace(result, candidates=result.candidates[:1])
    with pytest.raises(ValueError, match=r"result.candidates has value 1 candidate\(s\); allowed: at least 2"):
        stack_kfold(one)
    with pytest.raises(ValueError, match=r"candidates has value \[0, 0\]; allowed: distinct indices in 0..1"):
        stack_kfold(result, candidates=[0, 0])
    with pytest.raises(ValueError, match=r"candidates has value \[1\]; allowed: at least 2"):
        stack_kfold(result, candidates=[1])
    with pytest.raises(ValueError, match="result has value dict; allowed: a KFoldResult"):
        stack_kfold({})
    oof = out_of_fold_probs(result)
    n = oof.shape[1]
    with pytest.raises(ValueError, match=rf"labels has shape \({n - 1},\); allowed: one label per example, "
                                         rf"shape \({n},\)"):
        combine.fit_stacking(oof, result.task.train.y[:-1])
    with pytest.raises(ValueError, match=r"labels has values in \[0, 10\].*allowed: integers in \[0, 9\]"):
        combine.fit_stacking(oof, np.where(np.arange(n) == 0, 10, result.task.train.y))


class BatchNormNet(nn.Module):
    """Dense, BatchNorm with slow running averages (momentum 0.99), head: after a few steps its running
    statistics are far from the data's, so precise BN changes its predictions."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train=False):
        h = nn.Dense(16)(x.reshape(x.shape[0], -1))
        h = nn.BatchNorm(use_running_average=not train, momentum=0.99)(h)
        return nn.Dense(self.num_classes, name="head")(nn.relu(h))


def test_out_of_fold_predictions_of_a_batchnorm_model_use_the_precise_statistics_folds_were_scored_with():
    config = dataclasses.replace(CONFIG, model=BatchNormNet(), model_kwargs={}, steps=40, eval_every=40)
    result = fit_kfold(config, [{}], k=2, verbose=False)
    members = result.population.members
    x = np.asarray(result.task.train.x)
    train_table, _, _ = fold_tables(result.task.train.y, 2, 0)
    own = fold_precise_batches(config, x, train_table)  # each fold model's own training examples only
    assert own is not None and own.shape[:1] == (2,)
    np.testing.assert_allclose(  # the kept statistics are recomputed over the fold's own training batches
        jax.tree.leaves(jax.vmap(recompute_statistics(result.task))(members, jnp.asarray(own)).model_state),
        jax.tree.leaves(members.model_state), rtol=1e-5, atol=1e-6)
    whole = jax.tree.leaves(precise_members(result.task)(members).model_state)  # the whole train split's inputs
    assert max(np.abs(a - b).max() for a, b in zip(whole, jax.tree.leaves(members.model_state))) > 1e-4
    oof = out_of_fold_probs(result)[0]
    y = result.task.train.y
    _, held_out, _ = fold_tables(y, 2, 0)
    for fold in range(2):  # each fold's reported accuracy is its out-of-fold predictions' accuracy
        rows = held_out[fold]
        assert (oof[rows].argmax(-1) == y[rows]).mean() == pytest.approx(
            result.candidates[0]["folds"]["accuracy"][fold], abs=1e-6)
    initial = jax.tree_util.tree_map_with_path(  # BatchNorm's initial statistics: mean 0, variance 1
        lambda path, a: np.ones_like(a) if path[-1].key == "var" else np.zeros_like(a), members.model_state)
    uncalibrated = dataclasses.replace(result, population=result.population.replace(
        members=members.replace(model_state=initial)))
    assert np.abs(out_of_fold_probs(uncalibrated)[0] - oof).max() > 1e-2  # the statistics matter here
