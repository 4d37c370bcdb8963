"""Fairness across groups (`vhjax.fairness`): against Fairlearn's definitions, on known cases, and
vmapped over a population's members."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vhjax import fairness

fairlearn_metrics = pytest.importorskip("fairlearn.metrics")


def random_case(seed: int, size: int = 300, num_groups: int = 3):
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, num_groups, size)
    labels = (rng.random(size) < 0.3 + 0.2 * groups / num_groups).astype(np.int32)
    predictions = np.where(rng.random(size) < 0.75, labels, 1 - labels).astype(np.int32)
    predictions[(groups == 0) & (rng.random(size) < 0.2)] = 1  # a group the classifier favours
    return predictions, labels, groups


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spreads_equal_fairlearns(seed):
    predictions, labels, groups = random_case(seed)
    ours = fairness.summary(jnp.asarray(predictions), jnp.asarray(labels), jnp.asarray(groups), 3)
    theirs = {
        "demographic_parity_difference": fairlearn_metrics.demographic_parity_difference(
            labels, predictions, sensitive_features=groups),
        "demographic_parity_ratio": fairlearn_metrics.demographic_parity_ratio(
            labels, predictions, sensitive_features=groups),
        "equalized_odds_difference": fairlearn_metrics.equalized_odds_difference(
            labels, predictions, sensitive_features=groups),
        "equal_opportunity_difference": fairlearn_metrics.equal_opportunity_difference(
            labels, predictions, sensitive_features=groups),
    }
    for name, value in theirs.items():
        assert float(ours[name]) == pytest.approx(value, abs=1e-6), name
    frame = fairlearn_metrics.MetricFrame(metrics=lambda y, p: np.mean(y == p), y_true=labels, y_pred=predictions,
                                          sensitive_features=groups)
    assert float(ours["accuracy_difference"]) == pytest.approx(frame.difference(), abs=1e-6)
    assert float(ours["worst_group_accuracy"]) == pytest.approx(frame.group_min(), abs=1e-6)


def test_a_classifier_that_selects_only_one_group_is_maximally_unfair():
    groups = jnp.array([0, 0, 0, 1, 1, 1])
    labels = jnp.array([1, 0, 1, 1, 0, 1])
    predictions = jnp.where(groups == 0, 1, 0)
    assert float(fairness.demographic_parity_difference(predictions, groups, 2)) == 1.0
    assert float(fairness.demographic_parity_ratio(predictions, groups, 2)) == 0.0
    assert float(fairness.equal_opportunity_difference(predictions, labels, groups, 2)) == 1.0
    per_group = fairness.group_metrics(predictions, labels, groups, 2)
    np.testing.assert_allclose(per_group["selection_rate"], [1.0, 0.0])
    np.testing.assert_allclose(per_group["false_positive_rate"], [1.0, 0.0])


def test_a_perfect_classifier_has_no_gaps_and_empty_groups_are_left_out():
    groups = jnp.array([0, 0, 2, 2])  # group 1 has no examples
    labels = jnp.array([1, 0, 1, 0])
    values = fairness.summary(labels, labels, groups, 3)
    for name in ("accuracy_difference", "demographic_parity_difference", "equalized_odds_difference"):
        assert float(values[name]) == 0.0
    assert float(values["worst_group_accuracy"]) == 1.0
    assert np.isnan(float(fairness.group_metrics(labels, labels, groups, 3)["accuracy"][1]))


def test_member_report_is_each_members_summary():
    cases = [random_case(seed) for seed in range(4)]
    labels, groups = cases[0][1], cases[0][2]
    predictions = np.stack([np.where(case[0] == 1, 1, 0) for case in cases])
    report = fairness.member_report(predictions, labels, groups)
    assert len(report) == 4
    for member, row in zip(predictions, report):
        one = fairness.summary(jnp.asarray(member), jnp.asarray(labels), jnp.asarray(groups), 3)
        for name, value in one.items():
            assert row[name] == pytest.approx(float(value), abs=1e-6)
    batched = jax.vmap(fairness.equalized_odds_difference, in_axes=(0, None, None, None))(
        jnp.asarray(predictions), jnp.asarray(labels), jnp.asarray(groups), 3)
    np.testing.assert_allclose(batched, [r["equalized_odds_difference"] for r in report], atol=1e-6)


@pytest.mark.parametrize("groups, match", [
    (np.zeros(5), "groups has shape"),
    (np.array([0.5, 1, 0, 1]), "groups has shape.*integers"),
    (np.array([0, -1, 0, 1]), "group indices >= 0"),
])
def test_bad_groups_are_refused_naming_them(groups, match):
    with pytest.raises(ValueError, match=match):
        fairness.member_report(np.zeros((2, 4), int), np.zeros(4, int), groups)
    with pytest.raises(ValueError, match="below num_groups=2"):
        fairness.member_report(np.zeros((2, 4), int), np.zeros(4, int), np.array([0, 1, 2, 0]), num_groups=2)
