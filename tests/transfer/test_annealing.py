"""Simulated annealing over transferred weights: parallel chains in one program, Metropolis acceptance,
cooling schedules, per-chain settings, resume from a workdir and its refusals, the energy on a fixed
subset, and input checks."""

from __future__ import annotations

import dataclasses
import importlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vhjax.config import TrainConfig
from vhjax.models import MLP
from vhjax.population.engine import PopulationRunner
from vhjax.population.fit import bucket_task
from vhjax.train.step import apply_model, per_example_loss
from vhjax.transfer.annealing import accept, anneal, energy_subset, temperatures

annealing = importlib.import_module("vhjax.transfer.annealing")

X = np.random.default_rng(2).normal(size=(128, 6)).astype(np.float32)
Y = (X[:, 0] - X[:, 1] > 0).astype(np.int32) + (X[:, 2] > 0.3).astype(np.int32)
SOURCE = {"params": jax.tree.map(np.asarray,
                                 jax.jit(MLP(widths=(8,), num_classes=3).init)(jax.random.key(9), X[:2])["params"])}
CONFIG = TrainConfig(dataset={"train": (X[:64], Y[:64]), "test": (X[64:], Y[64:])}, model="mlp",
                     model_kwargs={"widths": (8,), "num_classes": 3}, batch_size=32, steps=10, seed=0)
TEMPERATURES = [0.0, 0.0, 0.02, 0.05, 0.0]
STEP_SIZES = [0.1, 0.3, 0.1, 0.1, 10.0]  # the last chain overshoots: it proposes uphill moves at T = 0
TWO_CHUNKS = dataclasses.replace(CONFIG, eval_every=20)  # 40 steps: a checkpoint at step 20 and 40 (with a workdir)
SETTINGS = dict(chains=5, steps=40, temperature=TEMPERATURES, step_size=STEP_SIZES, schedule="exponential", decay=0.95,
                source_data=(X[64:96], Y[64:96]), source_weight=0.5)


@pytest.fixture(scope="module")
def annealed():
    return anneal(TWO_CHUNKS, SOURCE, **SETTINGS)


def test_annealing_lowers_the_energy_of_every_chain(annealed):
    assert annealed.energy.shape == (5, 41) and annealed.accepted.shape == (5, 40)
    assert np.all(annealed.energy[:4, -1] < annealed.energy[:4, 0] - 0.05), annealed.energy[:, [0, -1]]
    assert annealed.energy[4, -1] <= annealed.energy[4, 0]  # T = 0: never up
    assert len(annealed.population.states) == 1  # the chains: one bucket of fit_population
    assert np.all(annealed.best_energy <= annealed.energy.min(axis=1) + 1e-6)
    # the recorded energy is the current state's: it changes only when a proposal is accepted
    moved = annealed.energy[:, 1:] != annealed.energy[:, :-1]
    assert np.all(moved <= annealed.accepted)
    assert np.allclose(annealed.energy[:, 1:][annealed.accepted], annealed.proposed[annealed.accepted])


def test_every_downhill_move_is_accepted_and_zero_temperature_never_goes_uphill(annealed):
    delta = annealed.proposed - annealed.energy[:, :-1]
    assert np.all(annealed.accepted[delta <= 0])
    zero = np.array(TEMPERATURES) == 0
    assert (delta[zero] > 0).sum() >= 5  # the T = 0 chains proposed uphill moves ...
    assert not np.any(annealed.accepted[zero][delta[zero] > 0])  # ... and took none
    assert np.any(annealed.accepted[~zero][delta[~zero] > 0])  # warm chains took some


def test_metropolis_rule_with_fixed_random_numbers():
    delta = jnp.array([-1.0, 0.0, 0.1, 0.1, 0.1, 0.5, 0.5, jnp.nan])
    temperature = jnp.array([0.0, 0.0, 0.1, 0.1, 0.0, 1.0, 1.0, 1.0])
    uniform = jnp.array([0.99, 0.99, 0.36, 0.37, 0.0, 0.60, 0.61, 0.0])
    # exp(-0.1 / 0.1) = 0.3679, exp(-0.5 / 1) = 0.6065
    expected = [True, True, True, False, False, True, False, False]
    assert np.asarray(accept(delta, temperature, uniform)).tolist() == expected
    # the acceptance frequency of an uphill move is exp(-dE / T)
    draws = jax.random.uniform(jax.random.key(0), (20000,))
    rate = float(jnp.mean(accept(jnp.full(20000, 0.2), jnp.full(20000, 0.4), draws)))
    assert abs(rate - np.exp(-0.5)) < 0.01


def test_cooling_schedules():
    np.testing.assert_allclose(temperatures("exponential", [1.0, 0.5], 4, [0.5, 0.9]),
                               [[1.0, 0.5, 0.25, 0.125], [0.5, 0.45, 0.405, 0.3645]], rtol=1e-6)
    np.testing.assert_allclose(temperatures("linear", [1.0, 0.4], 4), [[1.0, 0.75, 0.5, 0.25], [0.4, 0.3, 0.2, 0.1]],
                               rtol=1e-6)


def chain_arrays(result):
    """Everything a chain carries: current and best weights, energies, proposals, acceptances."""
    return [np.asarray(leaf) for leaf in jax.tree.leaves((result.params, result.best_params, result.energy,
                                                          result.best_energy, result.proposed, result.accepted))]


@pytest.mark.slow  # two short annealing programs (interrupted, resumed) and a restore: about a minute on 2 shared cores
def test_interrupted_annealing_resumes_the_same_chains_and_a_finished_workdir_restores(annealed, tmp_path,
                                                                                      run_interrupted, monkeypatch):
    run = lambda: anneal(TWO_CHUNKS, SOURCE, **SETTINGS, workdir=tmp_path)
    run_interrupted(run, at_step=20)
    assert (tmp_path / "bucket_0" / "checkpoints").exists() and (tmp_path / "anneal.json").exists()
    resumed = run()
    assert resumed.population.histories[0][-1]["step"] == 40
    assert np.any(annealed.accepted[2:4, 20:]) and not np.all(annealed.accepted[2:4, 20:])  # random choices after
    for a, b in zip(chain_arrays(resumed), chain_arrays(annealed)):  # the interruption, made the same way
        np.testing.assert_array_equal(a, b)

    def no_training(self, *args):
        raise AssertionError("a finished workdir annealed again")

    monkeypatch.setattr(PopulationRunner, "__call__", no_training)
    for a, b in zip(chain_arrays(run()), chain_arrays(annealed)):
        np.testing.assert_array_equal(a, b)


class Stop(Exception):
    """Raised in place of annealing: the checks and the workdir's record ran."""


def test_anneal_workdir_refuses_other_inputs_by_name_before_compiling(tmp_path, monkeypatch):
    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(annealing, "fit_population", stop)
    for _ in range(2):  # records workdir/anneal.json; the same inputs pass again
        with pytest.raises(Stop):
            anneal(TWO_CHUNKS, SOURCE, **SETTINGS, workdir=tmp_path)
    moved = jax.tree.map(lambda a: a * 1.01, SOURCE)
    refused = [
        (dict(source=moved), "source"),
        (dict(temperature=[0.0, 0.0, 0.03, 0.05, 0.0]), "temperature"),
        (dict(steps=60), "steps"),  # config.json alone would let steps rise (extend a run): not a chain's schedule
        (dict(source_data=(X[96:128], Y[96:128])), "source_data"),
        (dict(energy_batch=16), "energy_batch"),
        (dict(schedule="linear"), "schedule"),
    ]
    for change, field in refused:
        kwargs = {**SETTINGS, "source": SOURCE, **change}
        with pytest.raises(ValueError, match=rf"holds a run with other anneal inputs \({field}[.\[:]"):
            anneal(TWO_CHUNKS, kwargs.pop("source"), **kwargs, workdir=tmp_path)


def test_energy_batch_evaluates_a_fixed_subset_of_the_eval_split():
    task = bucket_task(CONFIG)
    size = len(task.eval.x)
    subset = energy_subset(size, 8, CONFIG.seed)
    assert len(subset) == 8 and len(set(subset.tolist())) == 8 and np.all(np.diff(subset) > 0)
    np.testing.assert_array_equal(subset, energy_subset(size, 8, CONFIG.seed))  # drawn once: the same each call
    np.testing.assert_array_equal(energy_subset(size, size + 5, 0), np.arange(size))
    # step_size 0 and T = 0: the weights stay at the start, so energy[:, 0] is the start weights' energy
    result = anneal(CONFIG, SOURCE, chains=2, steps=2, temperature=0.0, step_size=0.0, energy_batch=8)
    assert np.all(result.accepted)  # a zero move never raises the energy

    def loss(params, take):
        outputs, _ = apply_model(task, params, {}, task.default_hparams, jnp.asarray(task.eval.x[take]), train=False)
        return float(per_example_loss(task, task.default_hparams, outputs, jnp.asarray(task.eval.y[take])).mean())

    for chain in range(2):
        params = jax.tree.map(lambda a: a[chain], result.params)
        assert result.energy[chain, 0] == pytest.approx(loss(params, subset), rel=1e-5)
        assert abs(result.energy[chain, 0] - loss(params, np.arange(size))) > 1e-4  # not the whole split


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": -0.1}, r"temperature has value -0.1; allowed: a number or 3 numbers \(one per chain\), finite "
                            r"and >= 0.0"),
    ({"temperature": [0.1, 0.2]}, r"temperature has value \[0.1, 0.2\]; allowed: a number or 3 numbers"),
    ({"step_size": [[0.1, 0.1, 0.1]]}, r"step_size has value \[\[0.1, 0.1, 0.1\]\]; allowed: a number or 3 numbers"),
    ({"decay": 1.5}, r"decay has value 1.5; allowed: .* >= 0.0 and <= 1.0"),
    ({"schedule": "cosine"}, "schedule has value 'cosine'; allowed: one of 'linear', 'exponential'"),
    ({"energy": "accuracy"}, "energy has value 'accuracy'; allowed: one of 'loss', 'error'"),
    ({"source_weight": 1.0}, "source_weight has value 1.0; allowed: 0 unless source_data"),
    ({"steps": 0}, "steps has value 0"),
    ({"energy_batch": 0}, "energy_batch has value 0"),
])
def test_bad_input_raises_before_compiling(kwargs, match):
    started = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        anneal(CONFIG, SOURCE, chains=3, **kwargs)
    assert time.perf_counter() - started < 2.0
