"""Unsupervised model selection for domain adaptation: DEV and IWCV by hand, DEV's lower variance,
`select_member` reading no target labels and ranking an adapted member above a broken one, DEV's
density ratios from a domain classifier per member on its own features (logistic regression equal to
scikit-learn's)."""

from __future__ import annotations

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.transfer.test_adapt import CONFIG, SHORT, TARGET
from vhjax.compilation_cache import count_compilations
from vhjax.transfer import adapt, select_member
from vhjax.transfer.adapt import dev_risk, feature_density_ratios, iwcv_risk, logistic_regression, member_features
from vhjax.transfer.distill import predict


def test_dev_and_iwcv_by_hand():
    losses = np.array([[1.0, 2.0, 0.5, 3.0], [0.2, 0.1, 0.4, 0.3]])
    ratios = np.array([0.5, 1.5, 2.0, 0.4])
    weighted = losses * ratios
    np.testing.assert_allclose(iwcv_risk(losses, ratios), weighted.mean(1))
    for member in range(2):
        eta = -np.cov(weighted[member], ratios)[0, 1] / np.var(ratios, ddof=1)
        assert dev_risk(losses, ratios)[member] == pytest.approx(weighted[member].mean() + eta * ratios.mean() - eta)
    centred = ratios / ratios.mean()  # mean 1: the control variate adds nothing
    np.testing.assert_allclose(dev_risk(losses, centred), iwcv_risk(losses, centred))


def test_dev_estimates_the_target_risk_with_less_variance_than_iwcv():
    # source N(0, 1), target N(1, 1): p_t / p_s = exp(x - 1/2); loss x^2 has target risk 1 + 1 = 2
    rng = np.random.default_rng(0)
    iwcv, dev = [], []
    for _ in range(400):
        x = rng.normal(size=200)
        losses, ratios = (x**2)[None], np.exp(x - 0.5)
        iwcv.append(iwcv_risk(losses, ratios)[0])
        dev.append(dev_risk(losses, ratios)[0])
    assert abs(np.mean(iwcv) - 2.0) < 0.1 and abs(np.mean(dev) - 2.0) < 0.1
    assert np.std(dev) < 0.8 * np.std(iwcv)


def test_select_member_leaves_out_oracle_and_diverged_members():
    rows = [{"member": 0, "oracle": 1.0, "diverged_step": None, "dev_risk": 0.1, "iwcv_risk": 0.1},
            {"member": 1, "oracle": 0.0, "diverged_step": 5, "dev_risk": 0.2, "iwcv_risk": 0.2},
            {"member": 2, "oracle": 0.0, "diverged_step": None, "dev_risk": 0.5, "iwcv_risk": 0.3},
            {"member": 3, "oracle": 0.0, "diverged_step": None, "dev_risk": 0.4, "iwcv_risk": 0.6}]
    result = types.SimpleNamespace(rows=rows)
    assert select_member(result)["member"] == 3
    assert select_member(result, "iwcv_risk")["member"] == 2
    with pytest.raises(ValueError, match="criterion has value 'accuracy'; allowed: one of 'dev_risk', 'iwcv_risk'"):
        select_member(result, "accuracy")
    with pytest.raises(ValueError, match="none selectable"):
        select_member(types.SimpleNamespace(rows=rows[:2]))


@pytest.mark.slow  # about 40 s on 2 shared cores: two populations of 3 members, 150 steps
def test_selection_reads_no_target_labels_and_ranks_adapted_above_broken():
    config = dataclasses.replace(CONFIG, steps=150, eval_every=150)
    members = [{"seed": 0}, {"seed": 0, "dann_weight": 1.0}, {"seed": 0, "learning_rate": 1e-9}]  # 2: barely trains
    rng = np.random.default_rng(0)
    relabelled = {"train": (TARGET["train"][0], rng.integers(0, 2, len(TARGET["train"][0]))),
                  "test": (TARGET["test"][0], rng.permutation(TARGET["test"][1]))}
    result = adapt(config, members, target=TARGET, verbose=False)
    other = adapt(config, members, target=relabelled, verbose=False)
    assert [r["target_accuracy"] for r in result.rows] != [r["target_accuracy"] for r in other.rows]
    for name in ("dev_risk", "iwcv_risk"):
        assert [r[name] for r in result.rows] == [r[name] for r in other.rows]
    assert select_member(result)["member"] == select_member(other)["member"] != 2
    dev = [row["dev_risk"] for row in result.rows]
    print([(r["method"], r["dev_risk"], r["iwcv_risk"], r["target_accuracy"]) for r in result.rows])
    assert dev[2] > max(dev[0], dev[1]) + 0.1
    assert result.rows[2]["source_accuracy"] < 0.7 < min(r["source_accuracy"] for r in result.rows[:2])


def test_logistic_regression_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    labels = (x @ [1.5, -1.0, 0.0, 0.5] + 0.3 + rng.logistic(size=300) > 0).astype(np.float32)
    w = np.asarray(logistic_regression(jnp.asarray(x), jnp.asarray(labels), 1.0 / len(x)))
    reference = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(x, labels)
    np.testing.assert_allclose(w[:-1], reference.coef_[0], atol=2e-4)
    assert w[-1] == pytest.approx(reference.intercept_[0], abs=2e-4)


def test_dev_ratios_are_each_members_own_from_its_features():
    # member 0's features do not tell the domains apart, member 1's are shifted along their first axis
    rng = np.random.default_rng(0)
    source = rng.normal(size=(2, 400, 3))
    target = rng.normal(size=(2, 600, 3)) + np.array([[0.0, 0, 0], [1.0, 0, 0]])[:, None]
    ratios = feature_density_ratios(source, target, clip=50.0)
    assert ratios.shape == (2, 400)
    assert np.std(ratios[0]) < 0.3 and abs(np.mean(ratios[0]) - 1.0) < 0.1
    # the true ratio of member 1 is exp(f_0 - 1/2): the estimate follows it
    truth = np.exp(source[1, :, 0] - 0.5)
    assert np.corrcoef(np.log(ratios[1]), np.log(truth))[0, 1] > 0.95
    assert np.std(ratios[1]) > 3 * np.std(ratios[0])
    # so DEV estimates each member's own target risk: a loss of 2 where member 1's f_0 > 0 has target
    # risk 2 P(f_0 > 0) = 1 under member 0's (unshifted) features, 2 Phi(1) = 1.68 under member 1's
    losses = np.broadcast_to(np.where(source[1, :, 0] > 0, 2.0, 0.0), (2, 400))
    np.testing.assert_allclose(dev_risk(losses, ratios), [1.0, 2 * 0.8413], atol=0.1)


def test_adapt_dev_risk_uses_each_members_feature_space():
    members = [{"seed": 0}, {"seed": 1, "learning_rate": 3e-2}]  # one bucket, two feature spaces
    result = adapt(SHORT, members, target=TARGET, verbose=False)
    task, population = result.tasks[0], result.population.states[0]
    x = task.eval.x
    features = [member_features(task, population, "head", a) for a in (x, TARGET["train"][0])]
    with count_compilations() as again:  # the program is kept per task and layer
        np.testing.assert_array_equal(member_features(task, population, "head", x), features[0])
    assert again.count == 0
    ratios = feature_density_ratios(*features, clip=10.0)
    assert not np.allclose(ratios[0], ratios[1], rtol=0.05)
    logits = np.asarray(predict(task, population, jnp.asarray(x)))
    losses = -np.take_along_axis(jax.nn.log_softmax(logits), task.eval.y[None, :, None], -1)[..., 0]
    np.testing.assert_allclose([row["dev_risk"] for row in result.rows], dev_risk(losses, ratios), rtol=1e-4)
