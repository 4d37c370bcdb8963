"""Multi-task learning (`vhjax.multitask`): the weighted and the uncertainty-weighted objectives by
hand, a task learnt only by the members that weight it, frozen heads where the weight is 0."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.datasets import tiny_classification
from vhjax.multitask import MultiTaskNet, Trunk, cross_entropies, fit_multitask, multitask_loss

(X, Y), (XT, YT) = tiny_classification(rows=500, features=8, classes=4).values()


def labels(y):
    return np.stack([y, (y % 2).astype(np.int32)], axis=1)  # the class, and its parity


MODEL = MultiTaskNet(Trunk((32,)), (4, 2))


@pytest.mark.parametrize("uncertainty", [False, True])
def test_the_objective_by_hand(uncertainty):
    params = {"net": MODEL.init(jax.random.key(0), jnp.asarray(X[:2]))["params"]}
    if uncertainty:
        params["log_variance"] = jnp.asarray([0.5, -0.2])
    batch = (jnp.asarray(X[:16]), jnp.asarray(labels(Y[:16])))
    weights = jnp.asarray([1.0, 0.3])
    total, metrics = multitask_loss(MODEL, uncertainty)(params, batch, None, {"task_weights": weights})
    per_task = cross_entropies(MODEL.apply({"params": params["net"]}, batch[0]), batch[1])
    if uncertainty:
        s = params["log_variance"]
        expected = jnp.sum(weights * (jnp.exp(-s) * per_task + s))
    else:
        expected = jnp.sum(weights * per_task)
    assert float(total) == pytest.approx(float(expected), rel=1e-6)
    assert float(metrics["loss_1"]) == pytest.approx(float(per_task[1]), rel=1e-6)


def test_a_task_is_learnt_only_by_the_members_that_weight_it():
    weights = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    result = fit_multitask(MODEL, (X, labels(Y)), (XT, labels(YT)), weights, steps=400, learning_rate=3e-3)
    main_only, parity_only, both = result.accuracy
    assert main_only[0] > 0.6 and both[0] > 0.6 and parity_only[0] < 0.45  # 4 classes: chance 0.25
    assert parity_only[1] > main_only[1] + 0.15 and both[1] > main_only[1] + 0.15  # chance 0.5
    initial = jax.vmap(lambda k: MODEL.init(k, jnp.asarray(X[:1]))["params"])(
        jax.random.split(jax.random.split(jax.random.key(0))[0], 3))
    trained = result.population.members.params["net"]
    np.testing.assert_array_equal(trained["head_1"]["kernel"][0], initial["head_1"]["kernel"][0])  # weight 0: frozen
    assert not np.allclose(trained["head_1"]["kernel"][1], initial["head_1"]["kernel"][1])


def test_uncertainty_weighting_learns_a_log_variance_per_task():
    result = fit_multitask(MODEL, (X, labels(Y)), (XT, labels(YT)), [[1.0, 1.0]], steps=300, uncertainty=True)
    assert result.log_variance.shape == (1, 2) and np.all(result.log_variance != 0)


@pytest.mark.parametrize("weights, train_labels, match", [
    ([[1.0, 0.0]], Y, "train labels have shape"),
    ([[1.0, -1.0]], None, "task_weights has value"),
    ([[1.0]], None, "task_weights has shape"),
    ([[1.0, 1.0]], np.stack([Y, Y], axis=1), "task 1 span"),
])
def test_bad_inputs_are_refused_naming_them(weights, train_labels, match):
    train_labels = labels(Y) if train_labels is None else train_labels
    with pytest.raises(ValueError, match=match):
        fit_multitask(MODEL, (X, train_labels), (XT, labels(YT)), weights, steps=2)
