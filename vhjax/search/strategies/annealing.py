"""Simulated annealing: batched Metropolis chains over the unit cube.

Each of `num_chains` chains holds a current point and its energy (fitness). `ask` proposes a
neighbour per chain (Gaussian step on continuous columns, a resample of categorical ones
with probability `categorical_rate`); `tell` accepts a proposal if `dE <= 0`, otherwise with
probability `exp(-dE / T)` (Metropolis). The temperature cools linearly or exponentially
from `initial_temperature` to `final_temperature` over `num_steps` tells and then stays.
`initial_temperature=0` is greedy hill climbing. A failed proposal (NaN/inf) is never accepted.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from vhjax.search.strategies.base import (Strategy, categorical_info, check_ask_size, check_choice, check_number,
                                          check_positive_int, make, mutate, mutate_one_column, register_strategy)

COOLINGS = ("exponential", "linear")
MOVES = ("resample", "one_column")


@struct.dataclass
class AnnealingState:
    current: jax.Array  # (C, D)
    energy: jax.Array  # (C,) +inf until the chain's first point is told
    step: jax.Array  # tells so far (drives the temperature)
    key: jax.Array  # for the acceptance draws (tell takes no key)


def metropolis_accept(key: jax.Array, delta_energy: jax.Array, temperature: jax.Array) -> jax.Array:
    """Accept when `dE <= 0`, else with probability `exp(-dE / T)`; NaN `dE` is rejected."""
    delta_energy = jnp.where(jnp.isnan(delta_energy), jnp.inf, delta_energy)
    ratio = -delta_energy / jnp.maximum(temperature, 1e-30)
    probability = jnp.where(temperature > 0, jnp.exp(jnp.minimum(ratio, 0.0)), 0.0)
    uniform = jax.random.uniform(key, jnp.shape(delta_energy))
    return (delta_energy <= 0) | (uniform < probability)


def temperature_at(step: jax.Array, initial: float, final: float, num_steps: int,
                   cooling: str) -> jax.Array:
    """Temperature after `step` tells (`initial` at 0, `final` from `num_steps` on)."""
    progress = jnp.clip(jnp.asarray(step, jnp.float32) / num_steps, 0.0, 1.0)
    if initial == 0.0:
        return jnp.zeros_like(progress)
    if cooling == "linear":
        return initial + (final - initial) * progress
    return initial * (final / initial) ** progress


@register_strategy("simulated_annealing")
def simulated_annealing(space: Any, *, num_chains: int = 8, initial_temperature: float = 1.0,
                        final_temperature: float = 1e-3, num_steps: int = 100,
                        cooling: str = "exponential", step_size: float = 0.1,
                        categorical_rate: float | None = None, move: str = "resample") -> Strategy:
    """Batched SA chains; `ask(state, key, n)` needs `n <= num_chains` (chains 0..n-1 move).

    Temperatures are in fitness units: scale `initial_temperature` to typical fitness gaps.
    `move`: 'resample' (Gaussian steps on continuous columns, categorical ones resampled with
    probability `categorical_rate`) or 'one_column' (exactly one column changes: another category,
    or a Gaussian step; over Booleans, the neighbour differs in one bit).
    """
    _, cards = categorical_info(space)
    dim = cards.shape[0]
    chains = check_positive_int("num_chains", num_chains)
    t0 = check_number("initial_temperature", initial_temperature, 0.0)
    t1 = check_number("final_temperature", final_temperature, 0.0, low_open=t0 > 0)
    if t1 > t0:
        raise ValueError(f"final_temperature must be <= initial_temperature ({t0}); got {t1!r}")
    steps = check_positive_int("num_steps", num_steps)
    check_choice("cooling", cooling, COOLINGS)
    check_choice("move", move, MOVES)
    sigma = check_number("step_size", step_size, 0.0)
    rate = check_number("categorical_rate", 1.0 / dim if categorical_rate is None else categorical_rate,
                        0.0, 1.0)
    continuous = jnp.asarray(cards == 0)

    def init(key: jax.Array) -> AnnealingState:
        return AnnealingState(current=jax.random.uniform(key, (chains, dim)),
                              energy=jnp.full((chains,), jnp.inf, jnp.float32),
                              step=jnp.asarray(0, jnp.int32), key=jax.random.fold_in(key, 1))

    def ask(state: AnnealingState, key: jax.Array, n: int):
        n = check_ask_size(n, chains, "num_chains")
        current = state.current[:n]
        k_cat, k_cont = jax.random.split(key)
        if move == "one_column":
            neighbour = mutate_one_column(k_cat, current, cards, sigma)
        else:
            stepped = jnp.clip(current + sigma * jax.random.normal(k_cont, current.shape), 0.0, 1.0)
            neighbour = mutate(k_cat, jnp.where(continuous, stepped, current), cards, rate, 0.0)
        started = jnp.isfinite(state.energy[:n])[:, None]  # a new chain first evaluates its start
        return state, jnp.where(started, neighbour, current)

    def tell(state: AnnealingState, u: jax.Array, fitness: jax.Array) -> AnnealingState:
        n = u.shape[0]
        energy = fitness
        temperature = temperature_at(state.step, t0, t1, steps, cooling)
        key, accept_key = jax.random.split(state.key)
        delta = energy - state.energy[:n]
        delta = jnp.where(jnp.isinf(state.energy[:n]), -1.0, delta)  # a chain's first point
        accept = metropolis_accept(accept_key, delta, temperature)
        current = state.current.at[:n].set(jnp.where(accept[:, None], u, state.current[:n]))
        kept = state.energy.at[:n].set(jnp.where(accept, energy, state.energy[:n]))
        return state.replace(current=current, energy=kept, step=state.step + 1, key=key)

    return make(dim, init, ask, tell)
