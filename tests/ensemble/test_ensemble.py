"""The Ensemble model and the ensembles trained in one program, on tiny digits models."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vhjax import TrainConfig, calibration, models
from vhjax.compilation_cache import count_compilations
from vhjax.data import load
from vhjax.ensemble import (Ensemble, bagging, boosting, bootstrap_tables, cosine_cycles, deep_ensemble,
                            groups_from_population, snapshot_ensemble, train_members)

MODEL = models.get_model("mlp", widths=(32,), num_classes=10)
SPEC = {"name": "mlp", "kwargs": {"widths": [32], "num_classes": 10}}


@pytest.fixture(scope="module")
def digits():
    train, test = load("digits", "train"), load("digits", "test")
    return train.x[:1100], train.y[:1100], train.x[1100:], train.y[1100:], test.x, test.y


@pytest.fixture(scope="module")
def trained(digits):
    x, y, *_ = digits
    return train_members(MODEL, x, y, size=3, key=jax.random.key(0), steps=150, batch_size=64,
                         learning_rate=3e-3, model_spec=SPEC)


def test_members_differ_and_ensemble_beats_mean_member_nll(trained, digits):
    *_, xt, yt = digits
    ensemble = Ensemble([trained.group])
    kernels = np.asarray(trained.group.variables["params"]["head"]["kernel"])
    assert not np.allclose(kernels[0], kernels[1])  # each member has its own initialisation
    report = ensemble.evaluate(xt, yt)
    assert report["accuracy"] > 0.8
    assert report["nll"] <= np.mean(report["members"]["nll"])  # NLL is convex in the probabilities
    assert report["mutual_information"] > 0
    assert set(report) >= {"accuracy", "nll", "brier", "ece", "entropy"}


def test_fitted_rules_save_and_load(trained, digits, tmp_path):
    _, _, xv, yv, xt, yt = digits
    ensemble = Ensemble([trained.group])
    for rule in ("average", "weighted", "caruana", "stacking", "vote"):
        fitted = ensemble.fit(rule, xv, yv).calibrate(xv, yv)
        path = fitted.save(tmp_path / rule)
        loaded = Ensemble.load(path)
        assert loaded.rule == rule and loaded.temperature == pytest.approx(fitted.temperature)
        np.testing.assert_allclose(loaded.predict_proba(xt), fitted.predict_proba(xt), atol=1e-6)
    caruana = ensemble.fit("caruana", xv, yv)
    members_nll = ensemble.evaluate(xv, yv)["members"]["nll"]
    assert caruana.evaluate(xv, yv)["nll"] <= min(members_nll) + 1e-6


def test_temperature_scaling_lowers_nll_of_an_overconfident_ensemble(trained, digits):
    _, _, xv, yv, xt, yt = digits
    # scale the head by 4: the same predictions, overconfident
    variables = jax.tree.map(lambda a: a, trained.group.variables)
    variables["params"]["head"] = jax.tree.map(lambda a: 4 * a, variables["params"]["head"])
    sharp = Ensemble([dataclasses.replace(trained.group, variables=variables)])
    scaled = sharp.calibrate(xv, yv)
    assert scaled.temperature > 1.2  # softens it
    before, after = sharp.evaluate(xt, yt), scaled.evaluate(xt, yt)
    assert after["nll"] < before["nll"]
    assert after["accuracy"] == pytest.approx(before["accuracy"])


def test_cost_counts_parameters_flops_and_latency(trained, digits):
    *_, xt, _ = digits
    cost = Ensemble([trained.group]).cost(xt[:50], repeats=2)
    one = models.count_params(trained.group.member(0)["params"])
    assert cost["params"] == 3 * one and cost["params_per_member"] == [one] * 3
    assert cost["flops_per_example"] > 3 * 2 * 64 * 32 * 0.9  # three members' first layers at least
    assert cost["latency_s"] > 0


def test_mc_dropout_samples_differ_only_with_dropout(trained, digits):
    *_, xt, _ = digits
    ensemble = Ensemble([trained.group])
    off = ensemble.mc_dropout_proba(xt[:40], jax.random.key(1), samples=3, dropout_rate=0.0)
    with count_compilations() as compiled:  # one program per model: another rate compiles nothing
        on = ensemble.mc_dropout_proba(xt[:40], jax.random.key(1), samples=3, dropout_rate=0.3)
    assert compiled.count == 0, dict(compiled.by_function)
    assert off.shape == on.shape == (9, 40, 10)
    np.testing.assert_allclose(off[0], off[1], atol=1e-6)
    assert float(jnp.abs(on[0] - on[1]).max()) > 1e-3
    with pytest.raises(ValueError, match="samples has value 0"):
        ensemble.mc_dropout_proba(xt[:4], jax.random.key(1), samples=0)


def test_bagging_uses_a_bootstrap_sample_per_member(digits):
    x, y, *_, xt, yt = digits
    tables = bootstrap_tables(jax.random.key(0), 4, 1000)
    unique = [len(np.unique(t)) / 1000 for t in tables]
    assert all(0.58 < u < 0.68 for u in unique)  # about 1 - 1/e of the rows
    assert not np.array_equal(tables[0], tables[1])
    ensemble = bagging(MODEL, x, y, size=3, key=jax.random.key(2), steps=100, batch_size=64, learning_rate=3e-3)
    assert ensemble.size == 3 and ensemble.evaluate(xt, yt)["accuracy"] > 0.8


def test_boosting_samme_reweights_toward_hard_examples():
    data = load("two_moons", "train")
    x, y = data.x[:400], data.y[:400]
    linear = models.get_model("linear", num_classes=2)
    ensemble, info = boosting(linear, x, y, rounds=4, key=jax.random.key(0), steps=150, batch_size=64,
                              learning_rate=0.05)
    assert all(a > 0 for a in info["alpha"]) and all(e < 0.5 for e in info["error"])
    assert ensemble.rule == "vote"
    # later rounds face harder (reweighted) data: their weighted error exceeds the first round's
    assert max(info["error"][1:]) > info["error"][0]
    first = Ensemble([ensemble.groups[0].take([0])])
    assert float(np.mean(np.asarray(ensemble.predict(x)) == y)) >= float(np.mean(np.asarray(first.predict(x)) == y)) - 0.01


def test_snapshot_ensemble_cycles(digits):
    x, y, *_, xt, yt = digits
    multiplier = cosine_cycles(50)
    assert float(multiplier(0)) == pytest.approx(1.0) and float(multiplier(50)) == pytest.approx(1.0)
    assert float(multiplier(49)) < 0.01
    ensemble, trained = snapshot_ensemble(MODEL, x, y, cycles=3, steps_per_cycle=50, key=jax.random.key(3),
                                          batch_size=64, learning_rate=3e-3)
    assert ensemble.size == 3 and len(trained.snapshots) == 3
    kernels = np.asarray(ensemble.groups[0].variables["params"]["head"]["kernel"])
    assert not np.allclose(kernels[0], kernels[2])
    np.testing.assert_allclose(kernels[2], np.asarray(trained.group.variables["params"]["head"]["kernel"][0]))


def test_bad_inputs_fail_before_compiling(trained, digits):
    x, y, *_ = digits
    with pytest.raises(ValueError, match=r"epsilon has value -0.1 at member 1"):
        train_members(MODEL, x, y, size=2, key=jax.random.key(0), steps=5, epsilon=[0.1, -0.1])
    with pytest.raises(ValueError, match=r"learning_rate has value 0.0 at member 0"):
        train_members(MODEL, x, y, size=2, key=jax.random.key(0), steps=5, learning_rate=0.0)
    with pytest.raises(ValueError, match="weights .* summing to 0.5"):
        Ensemble([trained.group], rule="weighted", weights=[0.25, 0.25, 0.0])
    with pytest.raises(ValueError, match="groups is empty"):
        Ensemble([])
    eleven = models.get_model("mlp", widths=(32,), num_classes=11)
    other = train_members(eleven, x, y, size=1, key=jax.random.key(0), steps=2, batch_size=8)
    with pytest.raises(ValueError, match=r"different class counts \[10, 11\]"):
        Ensemble([trained.group, other.group]).predict(x[:4])


@pytest.fixture(scope="module")
def population():
    config = TrainConfig(dataset="digits", model="mlp", model_kwargs={"widths": (16,)}, steps=60, eval_every=60,
                         batch_size=64, train_split="train[:90%]", eval_split="train[90%:]", test_split="test")
    ensemble, result = deep_ensemble(config, 3)
    return config, ensemble, result


def test_deep_ensemble_from_population(population):
    config, ensemble, result = population
    assert ensemble.size == 3 and ensemble.names == ["0", "1", "2"]
    test = load("digits", "test")
    probs = np.asarray(ensemble.member_probs(test.x))
    # each member reproduces its own test accuracy reported by fit_population
    for i, member in enumerate(result.members):
        assert np.mean(probs[i].argmax(-1) == test.y) == pytest.approx(member["test"]["accuracy"], abs=1e-6)
    assert not np.allclose(probs[0], probs[1])  # distinct initialisations
    assert ensemble.evaluate(test.x, test.y)["nll"] <= np.mean([calibration.nll(p, test.y) for p in probs])


def test_population_with_diverged_members(population):
    config, _, result = population
    state = result.states[0]
    one_dead = dataclasses.replace(result, states=[state.replace(alive=jnp.array([True, False, True]))],
                                   members=[{**m, "diverged_step": 5 if m["member"] == 1 else None}
                                            for m in result.members])
    groups = groups_from_population(one_dead, config)
    assert groups[0].names == ["0", "2"]
    all_dead = dataclasses.replace(result, states=[state.replace(alive=jnp.zeros(3, bool))],
                                   members=[{**m, "diverged_step": 5} for m in result.members])
    with pytest.raises(ValueError, match=r"no member left to ensemble: members \[0, 1, 2\] diverged"):
        groups_from_population(all_dead, config)
    with pytest.raises(ValueError, match=r"members \[7\] are not in the population"):
        groups_from_population(result, config, members=[0, 7])
    with pytest.raises(ValueError, match="no members"):
        groups_from_population(dataclasses.replace(result, members=[]), config)
