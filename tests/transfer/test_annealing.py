"""Simulated annealing over transferred weights: parallel chains in one program, Metropolis acceptance,
cooling schedules, per-chain settings and input checks."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vhjax.config import TrainConfig
from vhjax.models import MLP
from vhjax.transfer.annealing import accept, anneal, temperatures

X = np.random.default_rng(2).normal(size=(128, 6)).astype(np.float32)
Y = (X[:, 0] - X[:, 1] > 0).astype(np.int32) + (X[:, 2] > 0.3).astype(np.int32)
SOURCE = {"params": jax.tree.map(np.asarray, MLP(widths=(8,), num_classes=3).init(jax.random.key(9), X[:2])["params"])}
CONFIG = TrainConfig(dataset={"train": (X[:64], Y[:64]), "test": (X[64:], Y[64:])}, model="mlp",
                     model_kwargs={"widths": (8,), "num_classes": 3}, batch_size=32, steps=10, seed=0)
TEMPERATURES = [0.0, 0.0, 0.02, 0.05, 0.0]
STEP_SIZES = [0.1, 0.3, 0.1, 0.1, 10.0]  # the last chain overshoots: it proposes uphill moves at T = 0


@pytest.fixture(scope="module")
def annealed():
    return anneal(CONFIG, SOURCE, chains=5, steps=40, temperature=TEMPERATURES, step_size=STEP_SIZES,
                  schedule="exponential", decay=0.95, source_data=(X[64:96], Y[64:96]), source_weight=0.5)


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
])
def test_bad_input_raises_before_compiling(kwargs, match):
    started = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        anneal(CONFIG, SOURCE, chains=3, **kwargs)
    assert time.perf_counter() - started < 2.0
