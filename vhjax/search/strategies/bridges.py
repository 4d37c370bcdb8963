"""Bridges to other libraries behind the same ask/tell contract.

- Optuna samplers (TPE, NSGA-II): NOT jittable (Optuna is Python). The state is a fixed
  buffer of told trials (a pytree of arrays, so it checkpoints and resumes like any other);
  `ask` rebuilds an in-memory study from it (`optuna.create_study` with the sampler seeded
  from the key, the told trials added with `add_trials`), calls `study.ask(distributions)`
  `n` times, and returns the suggestions as unit-cube rows. Rebuilding keeps `ask` a pure
  function of `(state, key, n)`. Categorical columns become `CategoricalDistribution`s over
  the category indices, the others `FloatDistribution(0, 1)` (log scaling and integer
  rounding are the space's business). Multi-objective (NSGA-II): `tell` takes `(n, M)`.
- evosax (CMA-ES, OpenAI-ES, SNES, PSO): jittable. The ES works in an unbounded space whose
  point `x` is the candidate `clip(x, 0, 1)`; the unclipped population of the last `ask`
  stays in the state for `tell`. `ask` may return fewer than `population_size` rows; the
  rows not asked count as failed in `tell`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from vhjax.search.strategies.base import (Strategy, categorical_info, check_ask_size, check_number,
                                          check_positive_int, inner_state, make, register_strategy)

# ----------------------------------------------------------------------------- Optuna


@struct.dataclass
class HistoryState:
    """Told trials in order (a ring of `capacity` rows; the oldest are dropped when full)."""

    u: jax.Array  # (C, D)
    fitness: jax.Array  # (C, M); NaN rows are failed trials
    told: jax.Array


def pareto_front(state: HistoryState) -> tuple[np.ndarray, np.ndarray]:
    """Non-dominated told trials `(u (k, D), fitness (k, M))` (failed trials excluded)."""
    state = inner_state(state)
    count = int(min(int(state.told), state.u.shape[0]))
    u, fitness = np.asarray(state.u)[:count], np.asarray(state.fitness)[:count]
    ok = np.all(np.isfinite(fitness), axis=1)
    u, fitness = u[ok], fitness[ok]
    dominated = np.array([
        np.any(np.all(fitness <= f, axis=1) & np.any(fitness < f, axis=1)) for f in fitness
    ], dtype=bool)
    return u[~dominated], fitness[~dominated]


def _distributions(cards: np.ndarray) -> dict[str, Any]:
    import optuna

    return {
        f"c{i}": (optuna.distributions.CategoricalDistribution(list(range(int(k)))) if k > 0
                  else optuna.distributions.FloatDistribution(0.0, 1.0))
        for i, k in enumerate(cards)
    }


def _row_to_params(row: np.ndarray, cards: np.ndarray) -> dict[str, Any]:
    return {f"c{i}": (int(min(np.floor(v * k), k - 1)) if k > 0 else float(np.clip(v, 0.0, 1.0)))
            for i, (v, k) in enumerate(zip(row, cards))}


def _params_to_row(params: dict[str, Any], cards: np.ndarray) -> np.ndarray:
    return np.array([(params[f"c{i}"] + 0.5) / k if k > 0 else params[f"c{i}"]
                     for i, k in enumerate(cards)], dtype=np.float32)


def _optuna_strategy(space: Any, make_sampler, num_objectives: int, capacity: int,
                     generation_key: str | None = None, population_size: int | None = None) -> Strategy:
    import optuna

    _, cards = categorical_info(space)
    dim = cards.shape[0]
    distributions = _distributions(cards)

    def init(key: jax.Array) -> HistoryState:
        del key
        return HistoryState(u=jnp.full((capacity, dim), 0.5, jnp.float32),
                            fitness=jnp.full((capacity, num_objectives), jnp.nan, jnp.float32),
                            told=jnp.asarray(0, jnp.int32))

    def study_from(state: HistoryState, seed: int):
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(sampler=make_sampler(seed),
                                    directions=["minimize"] * num_objectives)
        told = int(state.told)
        count = min(told, capacity)
        u, fitness = np.asarray(state.u), np.asarray(state.fitness)
        trials = []
        for i in range(told - count, told):  # oldest first
            row, values = u[i % capacity], fitness[i % capacity]
            ok = bool(np.all(np.isfinite(values)))
            attrs = {generation_key: i // population_size} if generation_key else {}
            trials.append(optuna.trial.create_trial(
                params=_row_to_params(row, cards), distributions=distributions,
                values=[float(v) for v in values] if ok else None,
                state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL,
                system_attrs=attrs))
        if trials:
            study.add_trials(trials)
        return study

    def ask(state: HistoryState, key: jax.Array, n: int):
        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
        study = study_from(state, seed)
        rows = [_params_to_row(study.ask(distributions).params, cards) for _ in range(n)]
        return state, jnp.asarray(np.stack(rows))

    def tell(state: HistoryState, u: jax.Array, fitness: jax.Array) -> HistoryState:
        if fitness.ndim == 1:  # a multi-objective strategy told one (shaped) value per trial
            fitness = jnp.repeat(fitness[:, None], num_objectives, axis=1)
        fitness = jnp.where(jnp.all(jnp.isfinite(fitness), axis=1, keepdims=True), fitness, jnp.nan)
        slots = (state.told + jnp.arange(u.shape[0])) % capacity
        return state.replace(u=state.u.at[slots].set(jnp.asarray(u, jnp.float32)),
                             fitness=state.fitness.at[slots].set(fitness),
                             told=state.told + u.shape[0])

    return make(dim, init, ask, tell, num_objectives=num_objectives)


@register_strategy("tpe")
def tpe(space: Any, *, n_startup_trials: int = 10, capacity: int = 4096,
        multivariate: bool = True) -> Strategy:
    """Optuna's TPE sampler (constant liar for batched asks); not jittable."""
    import optuna

    startup = check_positive_int("n_startup_trials", n_startup_trials, minimum=0)
    capacity = check_positive_int("capacity", capacity)

    def make_sampler(seed):
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup,
                                          multivariate=bool(multivariate), constant_liar=True)

    return _optuna_strategy(space, make_sampler, 1, capacity)


@register_strategy("nsga2")
def nsga2(space: Any, *, num_objectives: int = 2, population_size: int = 20,
          capacity: int = 4096) -> Strategy:
    """Optuna's NSGA-II sampler; `tell` takes fitness `(n, num_objectives)`; not jittable.

    Ask `population_size` candidates per generation for the textbook algorithm.
    """
    import optuna

    objectives = check_positive_int("num_objectives", num_objectives)
    size = check_positive_int("population_size", population_size, minimum=2)
    capacity = check_positive_int("capacity", capacity)

    def make_sampler(seed):
        return optuna.samplers.NSGAIISampler(population_size=size, seed=seed)

    key = optuna.samplers.NSGAIISampler._get_generation_key()
    return _optuna_strategy(space, make_sampler, objectives, capacity, key, size)


# ----------------------------------------------------------------------------- evosax


@struct.dataclass
class EvosaxState:
    es_state: Any
    pending: jax.Array  # (P, D) unclipped population of the last ask
    key: jax.Array


def _evosax_strategy(space: Any, algorithm, population_size: int, init_mean: float,
                     params_update: dict[str, Any]) -> Strategy:
    _, cards = categorical_info(space)
    dim = cards.shape[0]
    size = population_size
    es = algorithm(size, jnp.zeros((dim,), jnp.float32))
    params = es.default_params.replace(**params_update)

    def init(key: jax.Array) -> EvosaxState:
        k_es, k_state = jax.random.split(key)
        es_state = es.init(k_es, jnp.full((dim,), init_mean, jnp.float32), params)
        return EvosaxState(es_state=es_state, pending=jnp.full((size, dim), init_mean, jnp.float32),
                           key=k_state)

    def ask(state: EvosaxState, key: jax.Array, n: int):
        n = check_ask_size(n, size, "population_size")
        population, es_state = es.ask(key, state.es_state, params)
        return (state.replace(es_state=es_state, pending=population),
                jnp.clip(population[:n], 0.0, 1.0))

    def tell(state: EvosaxState, u: jax.Array, fitness: jax.Array) -> EvosaxState:
        key, k_tell = jax.random.split(state.key)
        es_state, _ = es.tell(k_tell, state.pending, finite_fitness(fitness, size), state.es_state, params)
        return state.replace(es_state=es_state, key=key)

    return make(dim, init, ask, tell)


def finite_fitness(fitness: jax.Array, size: int) -> jax.Array:
    """The told fitness padded to `size` (rows not asked count as failed), with failed (+inf)
    rows replaced by a finite value worse than every finite one: evosax's algorithms use ranks
    and comparisons, and a finite stand-in keeps their arithmetic finite."""
    full = jnp.concatenate([fitness, jnp.full((size - fitness.shape[0],), jnp.inf, jnp.float32)])
    worst = jnp.max(jnp.where(jnp.isfinite(full), full, 0.0))
    return jnp.where(jnp.isfinite(full), full, worst + 1.0 + jnp.abs(worst))


def _std_init_strategy(space: Any, algorithm_name: str, population_size: int, sigma: float,
                       init_mean: float) -> Strategy:
    """An evosax algorithm whose only setting is its initial standard deviation `sigma`."""
    import evosax.algorithms

    size = check_positive_int("population_size", population_size, minimum=2)
    std = check_number("sigma", sigma, 0.0, low_open=True)
    mean = check_number("init_mean", init_mean, 0.0, 1.0)
    return _evosax_strategy(space, getattr(evosax.algorithms, algorithm_name), size, mean,
                            {"std_init": jnp.asarray(std, jnp.float32)})


@register_strategy("cma_es")
def cma_es(space: Any, *, population_size: int = 16, sigma: float = 0.3,
           init_mean: float = 0.5) -> Strategy:
    """CMA-ES (evosax `CMA_ES`) started at `init_mean` with step size `sigma`."""
    return _std_init_strategy(space, "CMA_ES", population_size, sigma, init_mean)


@register_strategy("snes")
def snes(space: Any, *, population_size: int = 16, sigma: float = 0.3,
         init_mean: float = 0.5) -> Strategy:
    """Separable natural evolution strategy (evosax `SNES`)."""
    return _std_init_strategy(space, "SNES", population_size, sigma, init_mean)


@register_strategy("open_es")
def open_es(space: Any, *, population_size: int = 16, sigma: float = 0.1,
            learning_rate: float = 0.05, sigma_decay: float = 0.98, min_sigma: float = 0.005,
            init_mean: float = 0.5) -> Strategy:
    """OpenAI-ES (evosax `Open_ES`): antithetic sampling, centred ranks, Adam on the mean.

    The sampling std decays by `sigma_decay` per generation down to `min_sigma`.
    """
    from evosax.algorithms import Open_ES

    size = check_positive_int("population_size", population_size, minimum=2)
    if size % 2:
        raise ValueError(f"population_size must be even for antithetic sampling; got {size}")
    std = check_number("sigma", sigma, 0.0, low_open=True)
    lr = check_number("learning_rate", learning_rate, 0.0, low_open=True)
    decay = check_number("sigma_decay", sigma_decay, 0.0, 1.0, low_open=True)
    floor = check_number("min_sigma", min_sigma, 0.0)
    mean = check_number("init_mean", init_mean, 0.0, 1.0)
    schedule = lambda step: jnp.maximum(std * decay**step, floor)  # noqa: E731

    def algorithm(population_size, solution):
        return Open_ES(population_size, solution, optimizer=optax.adam(lr), std_schedule=schedule)

    return _evosax_strategy(space, algorithm, size, mean, {})


@struct.dataclass
class SwarmState:
    es_state: Any
    pending: jax.Array  # (P, D) unclipped positions of the last ask
    started: jax.Array  # whether the swarm holds its evaluated first positions
    key: jax.Array


@register_strategy("pso")
def pso(space: Any, *, population_size: int = 16, inertia: float = 0.6, cognitive: float = 1.5,
        social: float = 1.5) -> Strategy:
    """Particle swarm optimisation (Kennedy & Eberhart 1995; evosax `PSO`): each particle moves by
    `inertia` times its velocity plus random pulls, `cognitive` toward its own best position and
    `social` toward the swarm's best. The first generation is uniform in the unit cube; a particle
    outside it is evaluated at its clipped point.

    The defaults are for searches of tens of generations: on the 5-D sphere with 40 generations of
    16, inertia 0.6 reached 1e-5 to 3e-4 (seeds 0-2) where evosax's defaults (0.75, 1.5, 2.0)
    reached 0.05-0.27 and Clerc's constriction values (0.7298, 1.496, 1.496) 0.01-0.20."""
    from evosax.algorithms import PSO

    size = check_positive_int("population_size", population_size, minimum=2)
    coefficients = {"inertia_coeff": check_number("inertia", inertia, 0.0),
                    "cognitive_coeff": check_number("cognitive", cognitive, 0.0),
                    "social_coeff": check_number("social", social, 0.0)}
    _, cards = categorical_info(space)
    dim = cards.shape[0]
    es = PSO(size, jnp.zeros((dim,), jnp.float32))
    params = es.default_params.replace(**{k: jnp.asarray(v, jnp.float32) for k, v in coefficients.items()})

    def init(key: jax.Array) -> SwarmState:
        k_es, k_first, k_state = jax.random.split(key, 3)
        placeholder = es.init(k_es, jnp.full((size, dim), 0.5, jnp.float32), jnp.full((size,), jnp.inf), params)
        return SwarmState(es_state=placeholder, pending=jax.random.uniform(k_first, (size, dim)),
                          started=jnp.asarray(False), key=k_state)

    def ask(state: SwarmState, key: jax.Array, n: int):
        n = check_ask_size(n, size, "population_size")
        population, es_state = jax.lax.cond(state.started, lambda: es.ask(key, state.es_state, params),
                                            lambda: (state.pending, state.es_state))
        return state.replace(es_state=es_state, pending=population), jnp.clip(population[:n], 0.0, 1.0)

    def tell(state: SwarmState, u: jax.Array, fitness: jax.Array) -> SwarmState:
        key, k_tell = jax.random.split(state.key)
        told = finite_fitness(fitness, size)
        es_state = jax.lax.cond(state.started,
                                lambda: es.tell(k_tell, state.pending, told, state.es_state, params)[0],
                                lambda: es.init(k_tell, state.pending, told, params))
        return state.replace(es_state=es_state, started=jnp.asarray(True), key=key)

    return make(dim, init, ask, tell)


__all__ = ["HistoryState", "EvosaxState", "SwarmState", "pareto_front", "tpe", "nsga2", "cma_es", "snes",
           "open_es", "pso"]
