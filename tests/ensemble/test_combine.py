"""Combination rules on synthetic member probabilities (no training)."""

from __future__ import annotations

import numpy as np
import pytest

from vhjax import calibration
from vhjax.ensemble import combine


def noisy_members(seed: int, m: int = 6, n: int = 400, c: int = 5, noise: float = 1.5):
    """Members = the true class's logit boosted plus independent noise: each is wrong on
    different examples, so averaging helps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    logits = rng.normal(0, noise, (m, n, c)) + 1.2 * np.eye(c)[labels][None]
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return probs.astype(np.float32), labels


def test_average_and_weighted_match_numpy():
    probs, _ = noisy_members(0)
    np.testing.assert_allclose(combine.average(probs), probs.mean(0), rtol=1e-6)
    w = np.array([0.5, 0.1, 0.1, 0.1, 0.1, 0.1])
    np.testing.assert_allclose(combine.weighted_average(probs, w), np.tensordot(w, probs, 1), rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_caruana_never_worse_than_best_member_on_validation(seed):
    probs, labels = noisy_members(seed)
    for metric in ("nll", "error"):
        weights, history = combine.caruana_selection(probs, labels, rounds=15, metric=metric)
        scores = combine.member_scores(probs, labels)
        best = scores["nll"].min() if metric == "nll" else 1 - scores["accuracy"].max()
        ensemble = combine.weighted_average(probs, weights)
        value = (float(calibration.nll(ensemble, labels)) if metric == "nll"
                 else 1 - float(np.mean(np.argmax(ensemble, -1) == labels)))
        assert value <= best + 1e-6
        assert history[0] == pytest.approx(best, abs=1e-6)
        np.testing.assert_allclose(weights.sum(), 1.0)
    # complementary members: selection combines several of them and beats the best one clearly
    weights, _ = combine.caruana_selection(probs, labels, rounds=15)
    assert (weights > 0).sum() >= 2
    assert float(calibration.nll(combine.weighted_average(probs, weights), labels)) < scores["nll"].min() - 0.05


def test_fit_weights_drops_a_useless_member():
    probs, labels = noisy_members(3, m=3)
    rng = np.random.default_rng(0)
    garbage = rng.dirichlet(np.full(5, 0.3), size=probs.shape[1]).astype(np.float32)  # confident noise
    probs = np.concatenate([probs, garbage[None]])
    weights = combine.fit_weights(probs, labels)
    assert weights[-1] < 0.05
    assert float(calibration.nll(combine.weighted_average(probs, weights), labels)) < \
        float(calibration.nll(combine.average(probs), labels))


def test_majority_vote_counts_votes_and_weights():
    probs, labels = noisy_members(4, m=5)
    shares = np.asarray(combine.majority_vote(probs))
    votes = np.argmax(probs, -1)
    counts = np.stack([(votes == k).sum(0) for k in range(probs.shape[-1])], -1)
    np.testing.assert_allclose(shares, counts / 5, atol=1e-4)
    # a member whose weight outweighs all others decides every example
    weights = np.array([10.0, 1, 1, 1, 1])
    np.testing.assert_array_equal(np.argmax(combine.majority_vote(probs, weights), -1), votes[0])


def test_stacking_learns_a_member_with_permuted_classes():
    """A member that is accurate but names the classes in another order hurts averaging; a
    meta-learner on held-out predictions learns the mapping (stacking is a learned combiner)."""
    probs, labels = noisy_members(5, m=3, n=800, noise=1.0)
    perm = np.array([1, 2, 3, 4, 0])
    strong = np.eye(5)[labels] * 0.9 + 0.02
    probs = np.concatenate([probs, strong[None, :, perm].astype(np.float32)])
    train, test = slice(0, 400), slice(400, 800)
    meta = combine.fit_stacking(probs[:, train], labels[train])
    stacked = np.argmax(combine.stacking_predict(meta, probs[:, test]), -1)
    averaged = np.argmax(combine.average(probs[:, test]), -1)
    acc_stacked = np.mean(stacked == labels[test])
    assert acc_stacked > 0.95
    assert acc_stacked > np.mean(averaged == labels[test]) + 0.2
    # cross-check: sklearn's logistic regression on the same meta-features does as well
    from sklearn.linear_model import LogisticRegression

    features = np.asarray(combine.stacking_features(probs))
    reference = LogisticRegression(max_iter=2000).fit(features[train], labels[train]).score(features[test], labels[test])
    assert acc_stacked >= reference - 0.02


def test_stacking_cross_validates_its_penalty_on_small_held_out_sets():
    """With few held-out examples and many meta-weights, a weak penalty overfits; the default picks
    the penalty by k-fold CV on the held-out data and does not."""
    probs, labels = noisy_members(7, m=8, n=1060, noise=1.5)
    held, test = slice(0, 60), slice(60, None)
    free = combine.fit_stacking(probs[:, held], labels[held], l2=1e-3)
    tuned = combine.fit_stacking(probs[:, held], labels[held])
    assert float(tuned["l2"]) > 1e-3
    nll = lambda meta: float(calibration.nll(combine.stacking_predict(meta, probs[:, test]), labels[test]))
    assert nll(tuned) < nll(free) - 0.05


def test_bad_inputs_name_the_field():
    probs, labels = noisy_members(6, m=3)
    with pytest.raises(ValueError, match="weights .* summing to 0.9"):
        combine.check_weights([0.3, 0.3, 0.3], 3)
    with pytest.raises(ValueError, match="weights .*non-negative"):
        combine.check_weights([1.5, -0.5, 0.0], 3)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        combine.check_weights([0.5, 0.5], 3)
    with pytest.raises(ValueError, match="empty"):
        combine.check_member_probs([])
    with pytest.raises(ValueError, match=r"different class counts \[5, 10\]"):
        combine.check_member_probs([probs[0], np.full((probs.shape[1], 10), 0.1)])
    diverged = probs.copy()
    diverged[1] = np.nan
    with pytest.raises(ValueError, match=r"members \[1\] have non-finite"):
        combine.caruana_selection(diverged, labels)
    with pytest.raises(ValueError, match="probabilities"):
        combine.fit_weights(np.log(probs), labels)  # log-probabilities are not probabilities
    with pytest.raises(ValueError, match="rule has value 'median'; allowed: one of 'average'"):
        combine.combine_probs("median", probs)


def test_members_from_search_takes_the_top_trials():
    from types import SimpleNamespace

    from vhjax.ensemble import members_from_search

    trials = [SimpleNamespace(params={"learning_rate": lr}) for lr in (0.01, 0.003, 0.1)]
    result = SimpleNamespace(top=lambda k: trials[:k])
    assert members_from_search(result, top=2) == [{"learning_rate": 0.01}, {"learning_rate": 0.003}]
    objective = SimpleNamespace(members=lambda cands: [{**c, "dropout_rate": 0.1} for c in cands])
    assert members_from_search(result, top=1, objective=objective) == [{"learning_rate": 0.01, "dropout_rate": 0.1}]
    with pytest.raises(ValueError, match="top has value 0"):
        members_from_search(result, top=0)
    with pytest.raises(ValueError, match="no completed trials"):
        members_from_search(SimpleNamespace(top=lambda k: []), top=3)


def test_fitting_and_scoring_again_on_other_data_of_the_same_shapes_compiles_nothing():
    """Each fitting and scoring function is one program per shape and settings, not a closure over
    the data compiled on every call: a second round on new predictions compiles nothing."""
    from vhjax.compilation_cache import count_compilations

    def one_round(seed: int) -> None:
        probs, labels = noisy_members(seed)
        combine.fit_weights(probs, labels, steps=20)
        combine.caruana_selection(probs, labels, rounds=3)
        combine.fit_stacking(probs, labels, l2=(0.1, 1.0), folds=2, steps=20)
        combine.member_scores(probs, labels)
        calibration.calibration_metrics(probs[0], labels)
        calibration.fit_temperature(np.log(probs[0]), labels, steps=20)

    one_round(0)
    with count_compilations() as compiled:
        one_round(1)
    assert compiled.count == 0, dict(compiled.by_function)
