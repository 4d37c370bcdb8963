"""Per-member loss weights: a weighted sum of named losses whose weights are arrays in one program."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from vhjax.config import TrainConfig
from vhjax.population import classifier_runner, fit_population, init_population
from vhjax.train import build_task

BASE = TrainConfig(dataset="digits", model="mlp", model_kwargs={"widths": (16,), "num_classes": 10},
                   optimizer="sgd", learning_rate=0.05, batch_size=32, steps=20, eval_every=20, seed=0)
TERMS = {"cross_entropy": 1.0, "weighted_cross_entropy": 0.0}


def train(config, hparams, steps=8):
    task = build_task(config)
    population = init_population(task, 2, hparams)
    data = (task.train.x, task.train.y)
    return classifier_runner(task)(population, jax.tree.map(jax.numpy.asarray, data), steps)[0]


def params_of(population):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(population.members.params)]


def test_weight_zero_term_changes_nothing_and_weights_scale_the_gradient():
    plain = train(BASE, {"learning_rate": [0.05, 0.1]})
    weighted = train(dataclasses.replace(BASE, loss_weights=TERMS),
                     {"learning_rate": [0.05, 0.05], "loss_weights": [[1.0, 0.0], [1.0, 1.0]]})
    # member 0: the zero-weight term adds nothing; member 1: (1 + 1) x cross-entropy with SGD equals
    # cross-entropy at twice the learning rate (both terms are the same loss here)
    for a, b in zip(params_of(plain), params_of(weighted)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    assert not np.allclose(params_of(weighted)[0][0], params_of(weighted)[0][1])


def test_fit_population_members_set_only_the_weights_they_change(tmp_path):
    config = dataclasses.replace(BASE, loss_weights=TERMS)
    result = fit_population(config, [{"loss_weights": {"weighted_cross_entropy": w}} for w in (0.0, 3.0)],
                            tmp_path, verbose=False)
    assert len(result.states) == 1  # one program for both members
    weights = np.asarray(result.states[0].members.hparams["loss_weights"])
    np.testing.assert_array_equal(weights, [[1.0, 0.0], [1.0, 3.0]])
    losses = [m["eval"]["loss"] for m in result.members]
    assert losses[1] > 2 * losses[0]  # the evaluation loss is the member's own weighted objective


def test_search_candidates_name_loss_weights_with_dots():
    from vhjax.search.training import candidate_to_member

    member = candidate_to_member({"learning_rate": 0.1, "loss_weights.weighted_cross_entropy": 0.3})
    assert member == {"learning_rate": 0.1, "loss_weights": {"weighted_cross_entropy": 0.3}}


@pytest.mark.parametrize("config, members, match", [
    (dataclasses.replace(BASE, loss_weights={"cross_entropy": -1.0}), [{}], "loss_weights"),
    (dataclasses.replace(BASE, loss_weights={"cross_entropy": 1.0, "mse": 0.1}), [{}], "'mse'.*cannot take outputs"),
    (dataclasses.replace(BASE, loss_weights={"no_such_loss": 1.0}), [{}], "no_such_loss"),
    (dataclasses.replace(BASE, loss_weights=TERMS), [{"loss_weights": {"cross_entropy": -2.0}}],
     "member 0: hyperparameter 'loss_weights'"),
    (BASE, [{"loss_weights": 0.3}], "member 0: field 'loss_weights'"),
])
def test_bad_loss_weights_fail_before_compiling(config, members, match):
    with pytest.raises(ValueError, match=match):
        fit_population(config, members, verbose=False)
