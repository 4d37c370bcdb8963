"""Evolution over the unit cube: a genetic algorithm and regularized (aging) evolution.

- Genetic algorithm: a population buffer of `population_size` evaluated members. Parents are
  chosen by tournament or roulette (fitness-proportional) selection, combined by one-point or
  uniform crossover, and mutated (Gaussian steps on continuous columns, resampling on
  categorical ones). Survivors: the `num_elites` best members always stay; the children then
  fill the population (best first), and older members fill what is left. Failed children
  (NaN/inf fitness) never displace an evaluated member.
- Regularized evolution (Real et al., AAAI 2019): a queue of the `population_size` most recent
  members. Each child mutates one column of the best of `tournament_size` members drawn at
  random; the child joins the queue and the oldest member leaves.

Both start by handing out uniform random candidates until the population is full.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from vhjax.search.strategies.base import (Strategy, categorical_info, check_ask_size, check_choice, check_number,
                                          check_positive_int, failed_as_worst, flip_categorical, make, mutate,
                                          mutate_one_column, register_strategy)

SELECTIONS = ("tournament", "roulette")
CROSSOVERS = ("one_point", "uniform")
CATEGORICAL_MUTATIONS = ("resample", "flip")


@struct.dataclass
class PopulationState:
    """A buffer of members, their fitness (+inf: empty or failed) and counters."""

    population: jax.Array  # (P, D)
    fitness: jax.Array  # (P,)
    told: jax.Array  # members told so far
    generation: jax.Array


def _empty_population(size: int, dim: int) -> PopulationState:
    return PopulationState(
        population=jnp.full((size, dim), 0.5, jnp.float32),
        fitness=jnp.full((size,), jnp.inf, jnp.float32),
        told=jnp.asarray(0, jnp.int32),
        generation=jnp.asarray(0, jnp.int32),
    )


def _fill_first(state: PopulationState, key: jax.Array, bred: jax.Array, size: int) -> jax.Array:
    """Rows whose slot in the first `size` candidates is still empty are uniform random."""
    n = bred.shape[0]
    fresh = jax.random.uniform(key, bred.shape)
    is_initial = (state.told + jnp.arange(n)) < size
    return jnp.where(is_initial[:, None], fresh, bred)


# ----------------------------------------------------------------------------- selection


def tournament_select(key: jax.Array, fitness: jax.Array, n: int, size: int) -> jax.Array:
    """Indices of `n` winners, each the best of `size` members drawn with replacement."""
    entrants = jax.random.randint(key, (n, size), 0, fitness.shape[0])
    return jnp.take_along_axis(entrants, jnp.argmin(fitness[entrants], axis=1)[:, None], 1)[:, 0]


def roulette_select(key: jax.Array, fitness: jax.Array, n: int) -> jax.Array:
    """Indices of `n` members drawn with probability proportional to `worst - fitness` (+ a floor).

    Empty or failed members (+inf) are never drawn while an evaluated one exists.
    """
    valid = jnp.isfinite(fitness)
    finite = failed_as_worst(fitness)
    worst, lowest = jnp.max(jnp.where(valid, finite, -jnp.inf)), jnp.min(jnp.where(valid, finite, jnp.inf))
    spread = jnp.maximum(worst - lowest, 1e-12)
    weight = (worst - finite) / spread + 0.05  # the floor keeps the worst member drawable
    logits = jnp.where(valid, jnp.log(weight), -jnp.inf)
    logits = jnp.where(jnp.any(valid), logits, 0.0)
    return jax.random.categorical(key, logits, shape=(n,))


# ----------------------------------------------------------------------------- crossover


def one_point_crossover(key: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """Child rows: columns before a random cut from `a`, the rest from `b`."""
    n, dim = a.shape
    cut = jax.random.randint(key, (n, 1), 1, max(dim, 2))
    return jnp.where(jnp.arange(dim)[None, :] < cut, a, b)


def uniform_crossover(key: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """Child rows: each column from `a` or `b` with probability 1/2."""
    return jnp.where(jax.random.bernoulli(key, 0.5, a.shape), a, b)


# ----------------------------------------------------------------------------- GA


def _survivors(state: PopulationState, u: jax.Array, fitness: jax.Array, num_elites: int) -> tuple:
    """Elites of the old population, then successful children, then the rest (best first)."""
    size = state.fitness.shape[0]
    old_rank = jnp.argsort(jnp.argsort(state.fitness))
    old_priority = jnp.where((old_rank < num_elites) & jnp.isfinite(state.fitness), 0, 2)
    child_priority = jnp.where(jnp.isfinite(fitness), 1, 3)
    priority = jnp.concatenate([old_priority, child_priority])
    pooled_fitness = jnp.concatenate([state.fitness, fitness])
    order = jnp.lexsort((pooled_fitness, priority))[:size]
    pooled = jnp.concatenate([state.population, u])
    return pooled[order], pooled_fitness[order]


@register_strategy("genetic")
def genetic_algorithm(space: Any, *, population_size: int = 32, selection: str = "tournament",
                      tournament_size: int = 3, crossover: str = "uniform",
                      crossover_rate: float = 0.9, mutation_rate: float | None = None,
                      mutation_sigma: float = 0.1, sigma_decay: float = 1.0,
                      min_sigma: float = 1e-4, num_elites: int = 2,
                      categorical_mutation: str = "resample") -> Strategy:
    """A generational GA with elitism over the unit cube.

    `mutation_rate` defaults to `1 / D`; `mutation_sigma` (Gaussian step on continuous
    columns) is multiplied by `sigma_decay` every generation down to `min_sigma`.
    `categorical_mutation`: 'resample' (a mutated categorical gene is drawn anew, so it may keep
    its value) or 'flip' (it always takes another category: bit-flip mutation on Booleans).
    """
    is_categorical, cards = categorical_info(space)
    dim = cards.shape[0]
    size = check_positive_int("population_size", population_size, minimum=2)
    check_choice("selection", selection, SELECTIONS)
    check_choice("crossover", crossover, CROSSOVERS)
    check_choice("categorical_mutation", categorical_mutation, CATEGORICAL_MUTATIONS)
    mutate_genes = flip_categorical if categorical_mutation == "flip" else mutate
    tournament = check_positive_int("tournament_size", tournament_size)
    elites = check_positive_int("num_elites", num_elites, minimum=0)
    if elites >= size:
        raise ValueError(f"num_elites must be < population_size ({size}); got {num_elites!r}")
    crossover_p = check_number("crossover_rate", crossover_rate, 0.0, 1.0)
    rate = check_number("mutation_rate", 1.0 / dim if mutation_rate is None else mutation_rate, 0.0, 1.0)
    sigma0 = check_number("mutation_sigma", mutation_sigma, 0.0)
    decay = check_number("sigma_decay", sigma_decay, 0.0, 1.0, low_open=True)
    sigma_floor = check_number("min_sigma", min_sigma, 0.0)
    cross = one_point_crossover if crossover == "one_point" else uniform_crossover

    def init(key: jax.Array) -> PopulationState:
        del key
        return _empty_population(size, dim)

    def select(key, fitness, n):
        if selection == "tournament":
            return tournament_select(key, fitness, n, tournament)
        return roulette_select(key, fitness, n)

    def ask(state: PopulationState, key: jax.Array, n: int):
        n = check_ask_size(n)
        k_a, k_b, k_cross, k_do, k_mut, k_fresh = jax.random.split(key, 6)
        a = state.population[select(k_a, state.fitness, n)]
        b = state.population[select(k_b, state.fitness, n)]
        do_cross = jax.random.uniform(k_do, (n, 1)) < crossover_p
        children = jnp.where(do_cross, cross(k_cross, a, b), a)
        sigma = jnp.maximum(sigma0 * decay ** state.generation.astype(jnp.float32), sigma_floor)
        children = mutate_genes(k_mut, children, cards, rate, sigma)
        return state, _fill_first(state, k_fresh, children, size)

    def tell(state: PopulationState, u: jax.Array, fitness: jax.Array) -> PopulationState:
        population, kept_fitness = _survivors(state, u, fitness, elites)
        return state.replace(population=population, fitness=kept_fitness,
                             told=state.told + u.shape[0], generation=state.generation + 1)

    del is_categorical
    return make(dim, init, ask, tell)


# ----------------------------------------------------------------------------- regularized evolution


@register_strategy("regularized_evolution")
def regularized_evolution(space: Any, *, population_size: int = 50, tournament_size: int = 10,
                          mutation_sigma: float = 0.1) -> Strategy:
    """Aging evolution (Real et al. 2019): mutate the best of a random sample, drop the oldest.

    `population_size` is P, `tournament_size` the sample size S; one column changes per child
    (a different category, or a Gaussian step of `mutation_sigma` on a continuous column).
    """
    _, cards = categorical_info(space)
    dim = cards.shape[0]
    size = check_positive_int("population_size", population_size, minimum=2)
    sample = check_positive_int("tournament_size", tournament_size)
    if sample > size:
        raise ValueError(f"tournament_size must be <= population_size ({size}); got {tournament_size!r}")
    sigma = check_number("mutation_sigma", mutation_sigma, 0.0)

    def init(key: jax.Array) -> PopulationState:
        del key
        return _empty_population(size, dim)

    def ask(state: PopulationState, key: jax.Array, n: int):
        n = check_ask_size(n)
        k_sample, k_mut, k_fresh = jax.random.split(key, 3)
        filled = jnp.clip(state.told, 1, size)  # the queue holds slots [0, filled) until full
        entrants = jax.random.randint(k_sample, (n, sample), 0, filled)
        winner = jnp.take_along_axis(entrants, jnp.argmin(state.fitness[entrants], 1)[:, None], 1)[:, 0]
        children = mutate_one_column(k_mut, state.population[winner], cards, sigma)
        return state, _fill_first(state, k_fresh, children, size)

    def tell(state: PopulationState, u: jax.Array, fitness: jax.Array) -> PopulationState:
        n = u.shape[0]
        if n > size:  # only the youngest P children can stay
            u, fitness = u[-size:], fitness[-size:]
        slots = (state.told + n - u.shape[0] + jnp.arange(u.shape[0])) % size  # the oldest
        return state.replace(population=state.population.at[slots].set(u),
                             fitness=state.fitness.at[slots].set(fitness),
                             told=state.told + n, generation=state.generation + 1)

    return make(dim, init, ask, tell)
