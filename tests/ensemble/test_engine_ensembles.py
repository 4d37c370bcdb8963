"""Bagging, boosting, snapshot ensembles and adversarial training run on the one engine: a diverging
member is isolated (left out, not fatal) and a workdir resumes."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from vhjax import models
from vhjax.data import load
from vhjax.ensemble import adversarial_training, bagging, boosting, snapshot_ensemble

MODEL = models.get_model("mlp", widths=(16,), num_classes=10)
DIVERGES = 1e30  # Adam's steps of this size overflow the logits within a few steps
TRAIN = load("digits", "train")
X, Y = TRAIN.x[:600], TRAIN.y[:600]
OPTIONS = {"batch_size": 32}


def accuracy(ensemble) -> float:
    return float(np.mean(np.asarray(ensemble.predict(X)) == Y))


def test_bagging_leaves_out_a_diverged_member():
    ensemble = bagging(MODEL, X, Y, size=3, key=jax.random.key(0), steps=60, learning_rate=[3e-3, DIVERGES, 3e-3],
                       **OPTIONS)
    assert ensemble.names == ["0", "2"]
    assert np.all(np.isfinite(np.asarray(ensemble.predict_proba(X[:50]))))
    assert accuracy(ensemble) > 0.7


def test_boosting_stops_at_a_diverged_round_and_keeps_the_rounds_before():
    ensemble, info = boosting(MODEL, X, Y, rounds=3, key=jax.random.key(0), steps=60,
                              learning_rate=[1e-2, DIVERGES, 1e-2], **OPTIONS)
    assert info["diverged"] == 1 and len(info["alpha"]) == 1 and ensemble.size == 1
    assert accuracy(ensemble) > 0.7


def test_snapshot_ensemble_keeps_only_the_runs_that_did_not_diverge():
    ensemble, trained = snapshot_ensemble(MODEL, X, Y, cycles=2, steps_per_cycle=60, size=2, key=jax.random.key(1),
                                          learning_rate=[1e-2, DIVERGES], **OPTIONS)
    assert ensemble.names == ["run0/cycle1", "run0/cycle2"]
    assert set(trained.diverged) == {"1"} and trained.diverged["1"] < 30
    assert accuracy(ensemble) > 0.7


def test_adversarial_training_isolates_a_diverging_epsilon():
    trained = adversarial_training(MODEL, X, Y, epsilons=[0.0, 0.1], key=jax.random.key(2), steps=60,
                                   learning_rate=[3e-3, DIVERGES], **OPTIONS)
    assert trained.group.names == ["eps=0"] and list(trained.diverged) == ["eps=0.1"]
    assert trained.result.members[1]["diverged_step"] is not None


def test_bagging_in_a_workdir_resumes_and_extends_as_one_uninterrupted_run(tmp_path):
    options = {"size": 2, "key": jax.random.key(3), "learning_rate": 3e-3, **OPTIONS}
    first = bagging(MODEL, X, Y, steps=60, workdir=tmp_path, **options)
    again = bagging(MODEL, X, Y, steps=60, workdir=tmp_path, **options)  # finished: restored, nothing trained
    jax.tree.map(np.testing.assert_array_equal, first.groups[0].variables, again.groups[0].variables)
    extended = bagging(MODEL, X, Y, steps=100, workdir=tmp_path, **options)  # resumes at step 60
    whole = bagging(MODEL, X, Y, steps=100, **options)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 extended.groups[0].variables, whole.groups[0].variables)
    assert not np.allclose(first.groups[0].variables["params"]["head"]["kernel"],
                           whole.groups[0].variables["params"]["head"]["kernel"])
    with pytest.raises(ValueError, match="holds a run with other ensemble inputs \\(rows[.\\[:]"):
        bagging(MODEL, X, Y, steps=100, workdir=tmp_path, fraction=0.5, **options)  # other bootstrap rows


def test_bad_options_are_named_before_compiling():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"config has fields \['bogus'\]; allowed: TrainConfig fields"):
        bagging(MODEL, X, Y, size=2, key=key, steps=5, config={"bogus": 1})
    with pytest.raises(ValueError, match=r"learning_rate has 2 values; allowed: one value, or one per round \(3\)"):
        boosting(MODEL, X, Y, rounds=3, key=key, steps=5, learning_rate=[0.1, 0.2])
    with pytest.raises(ValueError, match="batch_size has value 64; allowed: at most the 30 rows"):
        bagging(MODEL, X, Y, size=2, key=key, steps=5, fraction=0.05, batch_size=64)
    with pytest.raises(ValueError, match="attack has value 'cw'"):
        adversarial_training(MODEL, X, Y, epsilons=[0.1], key=key, steps=5, attack="cw")
