"""Feature ensembles: features of members, sparse fusion (L1 and group lasso), key features."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from vhjax.ensemble import Ensemble, MemberGroup
from vhjax.ensemble import features as F
from vhjax.models import get_model

STEPS = 300


def synthetic(n: int = 300, d: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """3 classes; only features 0, 1, 2 carry the label (Gumbel noise: a logistic model is right)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    score = 2.0 * np.stack([x[:, 0] + x[:, 1], x[:, 2] - x[:, 0], np.zeros(n)], axis=1)
    return x, (score + rng.gumbel(size=score.shape)).argmax(axis=1)


def member_group(widths=(8,), size=3, seed=0) -> MemberGroup:
    model = get_model("mlp", widths=widths, num_classes=3)
    x = jnp.zeros((2, 5))
    variables = jax.vmap(lambda k: model.init(k, x))(jax.random.split(jax.random.key(seed), size))
    return MemberGroup(model, dict(variables), names=[str(i) for i in range(size)])


def test_group_features_are_the_head_input_computed_by_hand():
    group = member_group()
    x = np.random.default_rng(1).normal(size=(7, 5)).astype(np.float32)
    feats = F.group_features(group, x, batch_size=3)  # 3 batches, the last one padded
    assert feats.shape == (3, 7, 8)
    hidden = group.member(1)["params"]["hidden_0"]
    by_hand = jax.nn.relu(x @ hidden["kernel"] + hidden["bias"])
    np.testing.assert_allclose(feats[1], by_hand, rtol=1e-5, atol=1e-5)
    assert not np.allclose(feats[0], feats[1])  # every member its own weights
    np.testing.assert_allclose(F.group_features(group, x, "hidden_0")[2], x, atol=1e-6)  # another layer: its input
    wide = member_group(widths=(4, 6), size=2, seed=1)
    per_member = F.ensemble_features(Ensemble([group, wide]), x)
    assert [f.shape for f in per_member] == [(7, 8)] * 3 + [(7, 6)] * 2


def test_bad_layer_name_is_refused_before_compiling():
    group = member_group()
    with pytest.raises(ValueError, match=r"layer has value 'nope'.*'hidden_0'.*'head'"):
        F.group_features(group, np.zeros((4, 5), np.float32), "nope")
    with pytest.raises(ValueError, match="batch_size"):
        F.group_features(group, np.zeros((4, 5), np.float32), batch_size=0)


def test_without_penalty_the_fusion_is_ordinary_logistic_regression():
    x, y = synthetic(n=400, d=6, seed=3)
    x = x * np.arange(1, 7) + 2.0  # unstandardized inputs: the fit standardizes them itself
    meta = F.fit_feature_ensemble(x, y, l1=0.0, steps=STEPS)
    ours = np.asarray(F.feature_ensemble_predict(meta, x))
    reference = LogisticRegression(C=np.inf, max_iter=5000, tol=1e-10).fit(x, y).predict_proba(x)
    np.testing.assert_allclose(ours, reference, atol=2e-3)
    assert F.selected(meta).all()


def test_cross_validation_standardizes_each_fold_on_its_own_training_rows():
    x, y = synthetic(n=240, d=6, seed=5)
    x = x * np.array([1.0, 3.0, 0.5, 1.0, 2.0, 1.0]) + 1.0
    # a few extreme rows in an informative feature: standardizing with the held-out rows moves a fold's fit
    x[:12, 0] += 40.0 * np.sign(np.random.default_rng(1).normal(size=12))
    values, folds, seed = (0.05, 0.02), 3, 4
    meta = F.fit_feature_ensemble(x, y, l1=values, folds=folds, seed=seed, steps=STEPS, num_classes=3)
    fold_of = np.random.default_rng(seed).permutation(len(y)) % folds
    expected = []
    for value in values:
        losses = []
        for fold in range(folds):
            train, held = fold_of != fold, fold_of == fold
            alone = F.fit_feature_ensemble(x[train], y[train], l1=value, steps=STEPS, num_classes=3)
            probs = np.asarray(F.feature_ensemble_predict(alone, x[held]), np.float64)
            losses.append(-np.log(probs[np.arange(held.sum()), y[held]]).mean())
        expected.append(np.mean(losses))
    np.testing.assert_allclose(meta["cv_nll"], expected, rtol=5e-5)  # standardized on all rows: 1e-3 off


def test_l1_keeps_the_informative_features_and_drops_noise():
    x, y = synthetic()
    meta = F.fit_feature_ensemble(x, y, l1=0.1, steps=STEPS)
    kept = set(np.nonzero(F.selected(meta))[0].tolist())
    assert kept == {0, 1, 2}
    chosen = F.fit_feature_ensemble(x, y, steps=STEPS)  # l1 chosen by 5-fold CV over the default grid
    assert len(chosen["grid"]) == len(chosen["cv_nll"]) == 8 and chosen["l1"] in chosen["grid"]
    assert {k["feature"] for k in F.key_features(chosen, top=3)} == {0, 1, 2}
    assert F.selected(chosen).sum() < 20
    assert F.member_shares(chosen).tolist() == [1.0]  # raw inputs: one pseudo-member


def test_larger_l1_keeps_fewer_features():
    x, y = synthetic()
    top = F.l1_max(x, y)
    path = F.feature_path(x, y, [0.0, 0.005, 0.02, 0.08, top * 1.01], steps=STEPS)
    kept = [int(F.selected(m).sum()) for m in path]
    assert kept[0] == 20 and kept[-1] == 0
    assert all(a >= b for a, b in zip(kept, kept[1:])) and len(set(kept)) >= 4, kept


def test_group_lasso_drops_the_member_of_pure_noise():
    x, y = synthetic()
    rng = np.random.default_rng(5)
    members = [x[:, [0, 1, 3, 4]], x[:, [2, 5, 6, 7]], rng.normal(size=(len(y), 4))]
    meta = F.fit_feature_ensemble(members, y, group=True, l1=0.05, steps=STEPS)
    shares = F.member_shares(meta)
    assert shares[2] == 0 and shares[0] > 0.2 and shares[1] > 0.2, shares
    assert not F.selected(meta)[8:].any()
    key = F.key_features(meta, top=3)
    assert {(k["member"], k["feature"]) for k in key} == {(0, 0), (0, 1), (1, 0)}
    assert key[0]["column"] == key[0]["feature"] + 4 * key[0]["member"]
    probs = F.feature_ensemble_predict(meta, members)
    assert probs.shape == (len(y), 3) and np.mean(np.argmax(probs, -1) == y) > 0.7
    chosen = F.member_shares(F.fit_feature_ensemble(members, y, group=True, steps=STEPS))  # l1 by CV
    assert chosen[2] < 0.5 * min(chosen[0], chosen[1]), chosen


def test_bad_inputs_raise_value_errors_naming_them():
    x, y = synthetic(n=50, d=4)
    with pytest.raises(ValueError, match="l1 has value -0.1"):
        F.fit_feature_ensemble(x, y, l1=-0.1)
    with pytest.raises(ValueError, match="l1 has value"):
        F.fit_feature_ensemble(x, y, l1=[])
    with pytest.raises(ValueError, match=r"features shapes.*\(50, 4\).*\(49, 4\)"):
        F.fit_feature_ensemble([x, x[:49]], y)
    with pytest.raises(ValueError, match="labels has shape"):
        F.fit_feature_ensemble(x, y[:10])
    with pytest.raises(ValueError, match="cv_rule"):
        F.fit_feature_ensemble(x, y, cv_rule="best")
    meta = F.fit_feature_ensemble([x, x[:, :2]], y, l1=0.01, steps=20)
    with pytest.raises(ValueError, match=r"features widths has value \[4\]"):
        F.feature_ensemble_predict(meta, x)
