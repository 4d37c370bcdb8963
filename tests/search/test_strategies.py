"""Search strategies: behaviour on known functions within stated budgets, fixed seeds.

Budgets (evaluations) are stated in each test; thresholds were chosen well inside what the
strategy reaches, and every comparison is against an ablation that can lose.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vhjax.search import testfunctions as tf
from vhjax.search.space import Categorical, Float, Space, nasbench201_space
from vhjax.search.strategies import JITTABLE, STRATEGIES, best, make_strategy
from vhjax.search.strategies.annealing import metropolis_accept
from vhjax.search.strategies.bridges import pareto_front
from vhjax.search.strategies.reinforce import policy_probabilities

SPHERE_CENTRE = 1.3  # in [-5, 5]^5: off the cube's centre, where the ES start


def box(dim, low=0.0, high=1.0):
    return Space({f"x{i}": Float(low, high) for i in range(dim)})


def run(strategy, objective, generations, n, seed=0, jit=True):
    """Ask/tell loop; returns (best fitness seen, final state)."""
    ask, tell = strategy.ask, strategy.tell
    if jit:
        ask, tell = jax.jit(ask, static_argnums=2), jax.jit(tell)
    state = strategy.init(jax.random.key(seed))
    key = jax.random.key(seed + 1000)
    best_seen = np.inf
    for g in range(generations):
        state, proposals = ask(state, jax.random.fold_in(key, g), n)
        fitness = objective(proposals.u)
        state, _ = tell(state, proposals, fitness)
        best_seen = min(best_seen, float(jnp.nanmin(fitness)))
    return best_seen, state


def sphere5(u):
    return tf.sphere(tf.to_domain(u, [(-5.0, 5.0)] * 5), SPHERE_CENTRE)


def branin(u):
    return tf.branin(tf.to_domain(u, tf.BRANIN_BOUNDS))


# ----------------------------------------------------------------------------- contract


def test_unknown_strategy_lists_known_names():
    with pytest.raises(ValueError, match="no_such.*bayesopt.*regularized_evolution"):
        make_strategy("no_such", box(2))


def test_bad_strategy_arguments_are_rejected_before_running():
    with pytest.raises(ValueError, match="selection.*roulette.*'best'"):
        make_strategy("genetic", box(2), selection="best")
    with pytest.raises(ValueError, match="tournament_size.*population_size"):
        make_strategy("regularized_evolution", box(2), population_size=4, tournament_size=5)
    with pytest.raises(ValueError, match="n=9 exceeds num_chains"):
        strategy = make_strategy("simulated_annealing", box(2), num_chains=8)
        strategy.ask(strategy.init(jax.random.key(0)), jax.random.key(1), 9)


MIXED = Space({"a": Float(0.0, 1.0), "b": Float(0.0, 1.0), "c": Categorical(["p", "q", "r"])})
SMALL_KWARGS = {"bayesopt": dict(num_candidates=64, num_local=16, fit_steps=5, refine_steps=3,
                                 num_initial=4),
                "nsga2": dict(population_size=4, num_objectives=1), "tpe": dict(n_startup_trials=4)}


PROPOSING = ("successive_halving", "hyperband", "asha", "pbt")  # tested in test_multifidelity, test_pbt


@pytest.mark.parametrize("name", [n for n in STRATEGIES.names() if n not in PROPOSING])
def test_failed_trials_never_crash_or_win(name):
    """NaN/inf fitness on the candidate that would be best is never reported as best.

    Jittable strategies run through `jax.jit` (ask with static n), proving the claim.
    """
    strategy = make_strategy(name, MIXED, **SMALL_KWARGS.get(name, {}))
    jit = name in JITTABLE
    told_u, told_f = [], []

    def objective(u):
        f = np.array(jnp.sum((u[:, :2] - 0.3) ** 2, axis=1), np.float32)
        f[np.argmin(f)] = np.nan  # the best-looking candidate fails
        f[-1] = np.inf
        told_u.append(np.asarray(u))
        told_f.append(f)
        return jnp.asarray(f)

    _, state = run(strategy, objective, generations=4, n=4, jit=jit)
    ask = jax.jit(strategy.ask, static_argnums=2) if jit else strategy.ask
    tell = jax.jit(strategy.tell) if jit else strategy.tell
    state, proposals = ask(state, jax.random.key(8), 4)
    state, metrics = tell(state, proposals, jnp.full((4,), jnp.nan))  # a generation that all failed
    assert int(metrics["failed"]) == 4
    state, proposals = ask(state, jax.random.key(9), 4)
    u = proposals.u
    np.testing.assert_array_equal(proposals.index, np.arange(20, 24))  # numbered in asking order
    assert u.shape == (4, 3) and bool(jnp.all(jnp.isfinite(u)))
    assert float(u.min()) >= 0.0 and float(u.max()) <= 1.0
    best_u, best_fitness = best(state)
    fitness = np.concatenate(told_f)
    rows = np.concatenate(told_u)
    finite = np.isfinite(fitness)
    assert float(best_fitness) == pytest.approx(fitness[finite].min())
    np.testing.assert_allclose(best_u, rows[finite][np.argmin(fitness[finite])], atol=1e-6)


# ----------------------------------------------------------------------------- model-free


def test_grid_walks_the_space_grid_in_order():
    space = Space({"x": Float(0.0, 1.0), "c": Categorical(["a", "b"])})
    grid = space.grid(3)
    strategy = make_strategy("grid", space, points_per_float=3)
    state = strategy.init(jax.random.key(0))
    state, first = strategy.ask(state, jax.random.key(1), 4)
    state, second = strategy.ask(state, jax.random.key(2), 4)  # 6 rows: wraps after 2
    np.testing.assert_allclose(first.u, grid[:4])
    np.testing.assert_allclose(second.u, np.concatenate([grid[4:], grid[:2]]))
    assert np.all(np.asarray(first.fidelity) == 0) and np.all(np.asarray(first.parent) == -1)


def test_quasi_random_is_more_even_than_random_and_seeded():
    from scipy.stats import qmc

    space = box(3)
    quasi = make_strategy("quasi_random", space)
    rand = make_strategy("random", space)
    u_quasi = quasi.ask(quasi.init(jax.random.key(0)), jax.random.key(1), 64)[1].u
    again = quasi.ask(quasi.init(jax.random.key(0)), jax.random.key(2), 64)[1].u
    other = quasi.ask(quasi.init(jax.random.key(5)), jax.random.key(1), 64)[1].u
    np.testing.assert_array_equal(u_quasi, again)  # the init key seeds it
    assert not np.allclose(u_quasi, other)
    random_discrepancy = np.mean([
        qmc.discrepancy(np.asarray(rand.ask(rand.init(jax.random.key(s)), jax.random.key(s), 64)[1].u),
                        method="WD") for s in range(5)])
    assert qmc.discrepancy(np.asarray(u_quasi), method="WD") < 0.5 * random_discrepancy


# ----------------------------------------------------------------------------- evolution / ES on sphere

SPHERE_BUDGET = dict(generations=40, n=16)  # 640 evaluations


@functools.lru_cache(maxsize=None)
def random_sphere_best():
    return run(make_strategy("random", box(5)), sphere5, **SPHERE_BUDGET)[0]


@pytest.mark.parametrize("name, kwargs, threshold", [
    ("genetic", dict(sigma_decay=0.93), 1e-2),
    ("cma_es", {}, 1e-3),
    ("snes", {}, 1e-2),
    ("open_es", dict(learning_rate=0.1), 0.1),
    ("pso", {}, 1e-2),
])
def test_evolution_strategies_reach_sphere_optimum_and_beat_random(name, kwargs, threshold):
    found, _ = run(make_strategy(name, box(5), **kwargs), sphere5, **SPHERE_BUDGET)
    assert found < threshold
    assert found < 0.1 * random_sphere_best()  # random search, same budget, does much worse


@pytest.mark.parametrize("selection", ["tournament", "roulette"])
@pytest.mark.parametrize("crossover", ["one_point", "uniform"])
def test_genetic_operators_all_optimize(selection, crossover):
    found, _ = run(make_strategy("genetic", box(5), selection=selection, crossover=crossover,
                                 sigma_decay=0.93), sphere5, **SPHERE_BUDGET)
    assert found < 0.1 * random_sphere_best()


def test_genetic_elitism_keeps_the_best_member():
    strategy = make_strategy("genetic", box(2), population_size=4, num_elites=1)
    state = strategy.init(jax.random.key(0))
    parents = jnp.array([[0.1, 0.1], [0.2, 0.2], [0.3, 0.3], [0.4, 0.4]])
    state, _ = strategy.tell(state, parents, jnp.array([3.0, 0.5, 2.0, 4.0]))
    state, _ = strategy.tell(state, jnp.full((4, 2), 0.9), jnp.full((4,), 10.0))  # all worse
    assert np.isclose(np.asarray(state.inner.population), 0.2).all(axis=1).any()
    assert np.sum(np.asarray(state.inner.fitness) == 10.0) == 3  # the other slots went to the children


def test_pso_particles_keep_their_own_best_and_follow_the_swarms():
    strategy = make_strategy("pso", box(2), population_size=4, inertia=0.0, cognitive=0.0, social=1.0)
    state = strategy.init(jax.random.key(0))
    state, first = strategy.ask(state, jax.random.key(1), 4)
    fitness = jnp.array([3.0, 0.5, 2.0, 4.0])
    state, _ = strategy.tell(state, first, fitness)
    state, moved = strategy.ask(state, jax.random.key(2), 4)
    leader = np.asarray(first.u)[1]
    # no inertia, no pull to its own best: each particle moves a random fraction of the way to the
    # swarm's best, so it stays on the segment between where it was and the leader
    for before, after in zip(np.asarray(first.u), np.asarray(moved.u)):
        direction = leader - before
        fraction = np.dot(after - before, direction) / max(np.dot(direction, direction), 1e-12)
        np.testing.assert_allclose(after, before + fraction * direction, atol=1e-5)
        assert -1e-5 <= fraction <= 1 + 1e-5
    np.testing.assert_allclose(np.asarray(moved.u)[1], leader, atol=1e-6)  # the leader stays


def test_cma_es_solves_rastrigin_2d():
    rastrigin = lambda u: tf.rastrigin(tf.to_domain(u, [(-5.12, 5.12)] * 2))  # noqa: E731
    found, _ = run(make_strategy("cma_es", box(2), population_size=32, sigma=0.15), rastrigin,
                   generations=40, n=32)  # 1,280 evaluations
    assert found < 0.05


# ----------------------------------------------------------------------------- categorical problems

TARGET = jnp.array([3, 1, 4, 0, 2, 3])  # hidden op per NAS-Bench-201 edge


def mismatches(u):
    """Number of edges whose op differs from TARGET (0 is optimal)."""
    ops = jnp.clip(jnp.floor(u * 5), 0, 4).astype(jnp.int32)
    return jnp.sum(ops != TARGET, axis=-1).astype(jnp.float32)


def vectorized_best(strategy, generations, n, seeds):
    """Best fitness per seed: vmap over runs of a lax.scan over generations (one program)."""

    def one_run(key):
        init_key, run_key = jax.random.split(key)

        def generation(carry, g):
            state, best_seen = carry
            state, proposals = strategy.ask(state, jax.random.fold_in(run_key, g), n)
            fitness = mismatches(proposals.u)
            state, _ = strategy.tell(state, proposals, fitness)
            return (state, jnp.minimum(best_seen, fitness.min())), None

        (_, best_seen), _ = jax.lax.scan(generation, (strategy.init(init_key), jnp.inf),
                                         jnp.arange(generations))
        return best_seen

    return np.asarray(jax.jit(jax.vmap(one_run))(jax.random.split(jax.random.key(0), seeds)))


def test_regularized_evolution_beats_random_on_categorical_problem():
    space = nasbench201_space()
    rea = vectorized_best(make_strategy("regularized_evolution", space, population_size=20,
                                        tournament_size=5), generations=150, n=1, seeds=16)
    rand = vectorized_best(make_strategy("random", space), generations=150, n=1, seeds=16)
    assert rea.mean() < rand.mean() - 0.5  # 150 evaluations of 15,625 cells, 16 seeds
    assert (rea == 0).mean() > 0.5


def test_regularized_evolution_removes_the_oldest_not_the_worst():
    strategy = make_strategy("regularized_evolution", box(1), population_size=3, tournament_size=2)
    state = strategy.init(jax.random.key(0))
    for value in (0.0, 5.0, 6.0, 7.0):  # the first member is the best and the oldest
        state, _ = strategy.tell(state, jnp.array([[value / 10]]), jnp.array([value]))
    assert sorted(np.asarray(state.inner.fitness).tolist()) == [5.0, 6.0, 7.0]


def test_reinforce_raises_probability_of_target_architecture():
    space = nasbench201_space()
    strategy = make_strategy("reinforce", space, learning_rate=0.1, baseline_momentum=0.9)
    _, state = run(strategy, mismatches, generations=60, n=8)  # 480 evaluations
    probs = policy_probabilities(state)
    p_target = float(jnp.prod(probs[jnp.arange(6), TARGET]))
    assert p_target > 100 * (1 / 5) ** 6
    assert bool(jnp.all(jnp.argmax(probs, axis=1) == TARGET))


# ----------------------------------------------------------------------------- simulated annealing


def test_metropolis_rule():
    key = jax.random.key(0)
    downhill = jnp.array([-3.0, -1e-3, 0.0])
    assert bool(jnp.all(metropolis_accept(key, downhill, jnp.float32(0.1))))
    assert bool(jnp.all(metropolis_accept(key, downhill, jnp.float32(0.0))))  # greedy too
    uphill = jnp.full((40_000,), 1.0)
    for temperature in (0.5, 2.0):
        rate = float(jnp.mean(metropolis_accept(key, uphill, jnp.float32(temperature))))
        assert rate == pytest.approx(np.exp(-1.0 / temperature), abs=0.01)
    assert not bool(jnp.any(metropolis_accept(key, uphill, jnp.float32(0.0))))
    assert not bool(metropolis_accept(key, jnp.float32(jnp.nan), jnp.float32(10.0)))


def double_well(u):
    """`(x^2 - 1)^2 + 0.3 x` on x in [-2, 2]: global basin x < 0, local basin x > 0."""
    x = 4 * u[:, 0] - 2
    return (x**2 - 1) ** 2 + 0.3 * x


@pytest.mark.parametrize("cooling", ["exponential", "linear"])
def test_annealing_ends_in_global_basin_more_often_than_greedy(cooling):
    """64 independent chains (one batch), 300 steps each; greedy = temperature 0."""

    def global_fraction(temperature):
        strategy = make_strategy("simulated_annealing", box(1), num_chains=64, step_size=0.1,
                                 initial_temperature=temperature, cooling=cooling,
                                 final_temperature=0.01 if temperature > 0 else 0.0, num_steps=300)
        _, state = run(strategy, double_well, generations=300, n=64)
        return np.mean(4 * np.asarray(state.inner.current)[:, 0] - 2 < 0)

    annealed, greedy = global_fraction(1.0), global_fraction(0.0)
    assert greedy < 0.6  # greedy keeps the basin it starts in (about half the chains)
    assert annealed > greedy + 0.2


# ----------------------------------------------------------------------------- Bayesian optimization


def test_bayesopt_reaches_branin_optimum_within_55_evaluations():
    space = Space({"x1": Float(-5.0, 10.0), "x2": Float(0.0, 15.0)})
    # a history of 64 >= the 55 evaluations keeps every point, as the default 128 does, in a smaller GP
    found, _ = run(make_strategy("bayesopt", space, max_history=64), branin, generations=55, n=1)
    assert found - tf.BRANIN_MINIMUM < 0.05
    rand, _ = run(make_strategy("random", space), branin, generations=55, n=1)
    assert rand - tf.BRANIN_MINIMUM > found - tf.BRANIN_MINIMUM


def test_bayesopt_batched_ask_gives_distinct_points():
    space = box(2)
    strategy = make_strategy("bayesopt", space, num_initial=4, max_history=16)
    ask = jax.jit(strategy.ask, static_argnums=2)
    state = strategy.init(jax.random.key(0))
    state, proposals = ask(state, jax.random.key(1), 4)  # the random initial design
    state, _ = strategy.tell(state, proposals, tf.sphere(proposals.u, 0.3))
    _, batch = ask(state, jax.random.key(2), 4)
    batch = batch.u
    gaps = np.linalg.norm(np.asarray(batch)[:, None] - np.asarray(batch)[None], axis=-1)
    assert gaps[np.triu_indices(4, 1)].min() > 1e-3  # constant liar spreads the batch


@pytest.mark.slow
def test_bayesopt_hartmann6():
    """Budget 90 evaluations (batches of 3); reaches <= -3.0 (global minimum -3.32237)."""
    # a history of 96 >= the 90 evaluations keeps every point, as the default 128 does, in a smaller GP
    found, _ = run(make_strategy("bayesopt", box(6), num_initial=10, max_history=96), tf.hartmann6,
                   generations=30, n=3)
    assert found <= -3.0


# ----------------------------------------------------------------------------- Optuna bridges


def test_tpe_bridge_finds_quadratic_optimum_and_beats_random():
    quadratic = lambda u: jnp.sum((u - jnp.array([0.7, 0.2])) ** 2, axis=1)  # noqa: E731
    found, _ = run(make_strategy("tpe", box(2)), quadratic, generations=20, n=4, jit=False)
    rand, _ = run(make_strategy("random", box(2)), quadratic, generations=20, n=4)
    assert found < 2e-3 and found < rand  # 80 evaluations


def test_nsga2_bridge_returns_non_dominated_set():
    def two_objectives(u):
        f1 = u[:, 0] ** 2 + (u[:, 1] - 0.5) ** 2
        f2 = (u[:, 0] - 1) ** 2 + (u[:, 1] - 0.5) ** 2
        return jnp.stack([f1, f2], axis=1)  # Pareto set: u1 = 0.5, u0 in [0, 1]

    strategy = make_strategy("nsga2", box(2), num_objectives=2, population_size=20)
    state = strategy.init(jax.random.key(0))
    for g in range(8):  # 160 evaluations
        state, proposals = strategy.ask(state, jax.random.key(g), 20)
        state, _ = strategy.tell(state, proposals, two_objectives(proposals.u))
    front_u, front_f = pareto_front(state)
    dominates = (np.all(front_f[:, None] <= front_f[None], -1)
                 & np.any(front_f[:, None] < front_f[None], -1))
    assert len(front_f) >= 10 and not dominates.any()
    assert np.mean(np.abs(front_u[:, 1] - 0.5)) < 0.05
    with pytest.raises(ValueError, match="shape"):
        strategy.tell(state, proposals, jnp.zeros((20, 3)))


def test_unknown_strategy_settings_are_named_with_the_allowed_ones():
    with pytest.raises(ValueError, match=r"strategy 'genetic': unknown setting\(s\) \['sigma'\]; allowed: \[.*'mutation_sigma'"):
        make_strategy("genetic", box(2), sigma=0.1)
    with pytest.raises(ValueError, match=r"strategy 'asha': unknown setting\(s\) \['n_iterations'\].*batch_size"):
        make_strategy("asha", box(2), min_budget=1, max_budget=9, n_iterations=2)
