"""Adebayo et al. 2018 sanity checks (model and data randomization) and adversarial attacks, on a
small digits MLP trained once per module."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vhjax import models
from vhjax.compilation_cache import count_compilations
from vhjax.data import load
from vhjax.ensemble import adversarial_training, train_members
from vhjax.inspect import (METHODS, cascading_randomization, fgsm, model_randomization_check, permuted_labels, pgd,
                           rank_correlation, robust_accuracy_curve)

MODEL = models.get_model("mlp", widths=(32,), num_classes=10)


def apply_fn(params, x):
    return MODEL.apply({"params": params}, x)


@pytest.fixture(scope="module")
def setup():
    train, test = load("digits", "train"), load("digits", "test")
    true = train_members(MODEL, train.x, train.y, size=2, key=jax.random.key(0), steps=200, batch_size=64,
                         learning_rate=3e-3)
    shuffled = train_members(MODEL, train.x, permuted_labels(jax.random.key(5), train.y), size=1,
                             key=jax.random.key(1), steps=200, batch_size=64, learning_rate=3e-3)
    x, y = jnp.asarray(test.x[:48]), jnp.asarray(test.y[:48])
    return {"p0": true.group.member(0)["params"], "p1": true.group.member(1)["params"],
            "shuffled": shuffled.group.member(0)["params"], "fresh": MODEL.init(jax.random.key(9), x[:1])["params"],
            "x": x, "y": y, "test": test}


def attributions(name, params, x, y):
    if name == "smoothgrad":
        return METHODS[name](apply_fn, params, x, y, jax.random.key(0), samples=8)
    return METHODS[name](apply_fn, params, x, y)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_model_and_data_randomization_change_attributions(setup, name):
    """Maps of two models trained on true labels from different seeds agree; maps after
    re-initialising the weights (cascading, output layer first) or after training on permuted labels
    do not. Signed rank correlation: with absolute values, the input-multiplied methods
    (gradient x input, IG, occlusion) stay correlated with the input's zero background, as Adebayo
    et al. report for gradient x input."""
    x, y = setup["x"], setup["y"]
    reference = attributions(name, setup["p0"], x, y)
    other_seed = float(rank_correlation(reference, attributions(name, setup["p1"], x, y), absolute=False).mean())
    shuffled = float(rank_correlation(reference, attributions(name, setup["shuffled"], x, y), absolute=False).mean())
    assert other_seed > 0.5
    assert shuffled < 0.3
    for layer, params in cascading_randomization(setup["p0"], setup["fresh"]):
        randomized = float(rank_correlation(reference, attributions(name, params, x, y), absolute=False).mean())
        assert randomized < 0.3, layer


def test_model_randomization_check_reports_each_layer(setup):
    scores = model_randomization_check(METHODS["gradients"], apply_fn, setup["p0"], setup["fresh"], setup["x"],
                                       setup["y"])
    assert list(scores) == ["head", "hidden_0"]  # output layer first
    assert max(scores.values()) < 0.3
    with pytest.raises(ValueError, match="order names"):
        cascading_randomization(setup["p0"], setup["fresh"], order=["conv"])


def test_fgsm_and_pgd_lower_accuracy_within_budget(setup):
    test = setup["test"]
    params = setup["p0"]
    logits_fn = lambda inputs: apply_fn(params, inputs)
    x, y = jnp.asarray(test.x[:200]), jnp.asarray(test.y[:200])
    clean = float(jnp.mean(jnp.argmax(logits_fn(x), -1) == y))
    for norm, eps in (("linf", 0.1), ("l2", 1.0)):
        adv_fgsm = fgsm(logits_fn, x, y, eps, norm=norm)
        adv_pgd = pgd(logits_fn, x, y, eps, norm=norm, steps=10, key=jax.random.key(0))
        delta = (adv_pgd - x).reshape(200, -1)
        if norm == "linf":
            assert float(jnp.abs(delta).max()) <= eps + 1e-6
        else:
            assert float(jnp.linalg.norm(delta, axis=1).max()) <= eps + 1e-4
        acc_fgsm = float(jnp.mean(jnp.argmax(logits_fn(adv_fgsm), -1) == y))
        acc_pgd = float(jnp.mean(jnp.argmax(logits_fn(adv_pgd), -1) == y))
        assert acc_fgsm < clean - 0.2, norm
        assert acc_pgd <= acc_fgsm + 0.02, norm  # the iterative attack is at least as strong
    curve = robust_accuracy_curve(logits_fn, x, y, [0.0, 0.05, 0.1, 0.2], attack="pgd", steps=5)
    assert curve[0] == pytest.approx(clean)
    assert np.all(np.diff(curve) <= 0.02) and curve[-1] < 0.2
    # variables as an argument (compiled once per logits_fn): the same curve as the closure's, random start and clip too
    keyed = dict(attack="pgd", steps=5, norm="l2", key=jax.random.key(4), clip=(float(x.min()), float(x.max())))
    np.testing.assert_allclose(robust_accuracy_curve(apply_fn, x, y, [0.0, 0.5], variables=params, **keyed),
                               robust_accuracy_curve(logits_fn, x, y, [0.0, 0.5], **keyed))
    with pytest.raises(ValueError, match="attack has value 'cw'"):
        robust_accuracy_curve(apply_fn, x, y, [0.1], attack="cw", variables=params)
    with pytest.raises(ValueError, match=r"epsilon has value -0.1"):
        fgsm(logits_fn, x, y, -0.1)
    with pytest.raises(ValueError, match="norm has value 'l1'"):
        pgd(logits_fn, x, y, 0.1, norm="l1")
    with pytest.raises(ValueError, match=r"epsilons has value \[0.0, -1.0\]"):
        robust_accuracy_curve(logits_fn, x, y, [0.0, -1.0])


def test_adversarial_training_per_member_epsilon_buys_robustness(setup):
    test, train = setup["test"], load("digits", "train")
    trained = adversarial_training(MODEL, train.x, train.y, epsilons=[0.0, 0.1], key=jax.random.key(3), steps=300,
                                   batch_size=64, learning_rate=3e-3)
    assert trained.group.names == ["eps=0", "eps=0.1"]
    x, y = jnp.asarray(test.x[:200]), jnp.asarray(test.y[:200])
    robust = []
    for member in range(2):  # the second member's curve compiles nothing: its variables are an argument
        with count_compilations() as compiled:
            robust.append(robust_accuracy_curve(apply_fn, x, y, [0.0, 0.1], attack="fgsm",
                                                variables=trained.group.member(member)["params"]))
        assert member == 0 or compiled.count == 0, dict(compiled.by_function)
    params = trained.group.member(1)["params"]  # the same curve through a closure over the variables
    np.testing.assert_allclose(robust[1], robust_accuracy_curve(lambda inputs: apply_fn(params, inputs), x, y,
                                                                [0.0, 0.1], attack="fgsm"))
    assert robust[1][1] > robust[0][1] + 0.1  # robust accuracy at eps 0.1
    assert robust[1][0] > 0.7  # still a working classifier on clean inputs
    with pytest.raises(ValueError, match="epsilons has value"):
        adversarial_training(MODEL, train.x, train.y, epsilons=[], key=jax.random.key(0), steps=5)
