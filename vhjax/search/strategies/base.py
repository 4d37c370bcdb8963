"""The strategy contract, its registry, and helpers shared by the strategies.

A strategy is `Strategy(init, ask, tell)` of pure functions over a state pytree, MINIMIZING:

    state = strategy.init(key)
    state, u = strategy.ask(state, key, n)      # u: (n, D) in [0, 1]^D, n a Python int
    state = strategy.tell(state, u, fitness)    # fitness: (n,) (NaN/inf = failed trial)

A failed trial (NaN or infinite fitness) counts as the worst result and is never reported as
the best. States are pytrees of fixed-shape arrays, so `ask`/`tell` can be jitted (with `n`
static), vmapped over independent runs and checkpointed; every state carries `best_u` and
`best_fitness` (read with `best`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vhjax.registry import Registry


class Strategy(NamedTuple):
    """`init(key) -> state`; `ask(state, key, n) -> (state, u)`; `tell(state, u, fitness) -> state`."""

    init: Callable[[jax.Array], Any]
    ask: Callable[[Any, jax.Array, int], tuple[Any, jax.Array]]
    tell: Callable[[Any, jax.Array, jax.Array], Any]


StrategyFactory = Callable[..., Strategy]
STRATEGIES: Registry[StrategyFactory] = Registry("strategy")


def register_strategy(name: str) -> Callable[[StrategyFactory], StrategyFactory]:
    """Decorator: register `factory(space, **kwargs) -> Strategy` under `name`."""
    return STRATEGIES.register(name)


def make_strategy(name: str, space: Any, **kwargs: Any) -> Strategy:
    """Build the strategy registered as `name` for `space` (unknown names list the known ones)."""
    if not isinstance(name, str):
        raise TypeError(f"strategy name must be a string; got {name!r}")
    return STRATEGIES.get(name)(space, **kwargs)


def best(state: Any) -> tuple[jax.Array, jax.Array]:
    """`(best_u (D,), best_fitness)` seen so far (fitness +inf while nothing succeeded)."""
    if not (hasattr(state, "best_u") and hasattr(state, "best_fitness")):
        raise TypeError(f"{type(state).__name__} does not track a best candidate")
    return state.best_u, state.best_fitness


# ----------------------------------------------------------------------------- fitness


def failed_as_inf(fitness: jax.Array) -> jax.Array:
    """NaN and +-inf (failed trials) -> +inf, so they rank last."""
    fitness = jnp.asarray(fitness, jnp.float32)
    return jnp.where(jnp.isfinite(fitness), fitness, jnp.inf)


def failed_as_worst(fitness: jax.Array, reference: jax.Array | None = None) -> jax.Array:
    """NaN and +-inf -> a finite value just above the worst finite one (of `reference`, else `fitness`).

    For strategies whose arithmetic needs finite numbers (baselines, roulette, GP regression).
    All failed -> 0.
    """
    fitness = jnp.asarray(fitness, jnp.float32)
    pool = fitness if reference is None else jnp.asarray(reference, jnp.float32)
    finite = jnp.isfinite(pool)
    worst = jnp.max(jnp.where(finite, pool, -jnp.inf))
    lowest = jnp.min(jnp.where(finite, pool, jnp.inf))
    spread = jnp.where(jnp.any(finite), worst - lowest, 0.0)
    substitute = jnp.where(jnp.any(finite), worst + 0.1 * spread + 1e-6, 0.0)
    return jnp.where(jnp.isfinite(fitness), fitness, substitute)


def update_best(best_u: jax.Array, best_fitness: jax.Array, u: jax.Array, fitness: jax.Array):
    """Running best over a told batch; failed trials never win."""
    fitness = failed_as_inf(fitness)
    i = jnp.argmin(fitness)
    better = fitness[i] < best_fitness
    return jnp.where(better, u[i], best_u), jnp.where(better, fitness[i], best_fitness)


def initial_best(dim: int) -> tuple[jax.Array, jax.Array]:
    """`(best_u, best_fitness)` before anything was told: centre of the cube, +inf."""
    return jnp.full((dim,), 0.5, jnp.float32), jnp.asarray(jnp.inf, jnp.float32)


# ----------------------------------------------------------------------------- validation


def check_ask_size(n: Any, maximum: int | None = None, what: str = "") -> int:
    """`n` must be a positive Python int (static under jit), at most `maximum` when given."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"ask: n must be a positive Python integer (static under jit); got {n!r}")
    if maximum is not None and n > maximum:
        raise ValueError(f"ask: n={n} exceeds {what} ({maximum})")
    return int(n)


def check_positive_int(field: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{field} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def check_number(field: str, value: Any, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{field} must be a number; got {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{field} must be finite; got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{field} must be {'>' if low_open else '>='} {low}; got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{field} must be <= {high}; got {value!r}")
    return value


def check_choice(field: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{field} must be one of {list(allowed)}; got {value!r}")
    return value


def space_dim(space: Any) -> int:
    """The space's dimension, checked."""
    dim = getattr(space, "dim", None)
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise TypeError(f"space must have a positive integer `dim`; got {space!r}")
    return int(dim)


def categorical_info(space: Any) -> tuple[np.ndarray, np.ndarray]:
    """`(is_categorical (D,) bool, cardinalities (D,) int)`; all-continuous when the space says nothing."""
    dim = space_dim(space)
    cards = getattr(space, "cardinalities", None)
    cards = np.zeros((dim,), np.int32) if cards is None else np.asarray(cards, np.int32)
    return cards > 0, cards


# ----------------------------------------------------------------------------- shared moves


def snap_categorical(u: jax.Array, cardinalities: np.ndarray) -> jax.Array:
    """Categorical columns to the centre of their category; every column clipped to [0, 1]."""
    k = jnp.asarray(np.maximum(cardinalities, 1), jnp.float32)
    centre = (jnp.clip(jnp.floor(u * k), 0, k - 1) + 0.5) / k
    return jnp.where(jnp.asarray(cardinalities > 0), centre, jnp.clip(u, 0.0, 1.0))


def mutate(key: jax.Array, u: jax.Array, cardinalities: np.ndarray, rate: jax.Array,
           sigma: jax.Array) -> jax.Array:
    """Per gene with probability `rate`: Gaussian step `sigma` (continuous) or a resample (categorical)."""
    k_mask, k_gauss, k_cat = jax.random.split(key, 3)
    chosen = jax.random.uniform(k_mask, u.shape) < rate
    stepped = jnp.clip(u + sigma * jax.random.normal(k_gauss, u.shape), 0.0, 1.0)
    resampled = snap_categorical(jax.random.uniform(k_cat, u.shape), cardinalities)
    moved = jnp.where(jnp.asarray(cardinalities > 0), resampled, stepped)
    return jnp.where(chosen, moved, u)


def mutate_one_column(key: jax.Array, u: jax.Array, cardinalities: np.ndarray,
                      sigma: jax.Array) -> jax.Array:
    """Change ONE column of each row `u (n, D)`: a different category, or a Gaussian step."""
    n, dim = u.shape
    k_col, k_shift, k_gauss = jax.random.split(key, 3)
    column = jax.random.randint(k_col, (n,), 0, dim)
    cards = jnp.asarray(cardinalities, jnp.int32)[column]
    old = jnp.take_along_axis(u, column[:, None], axis=1)[:, 0]
    safe_k = jnp.maximum(cards, 1)
    old_index = jnp.clip(jnp.floor(old * safe_k), 0, safe_k - 1).astype(jnp.int32)
    shift = jax.random.randint(k_shift, (n,), 1, jnp.maximum(safe_k, 2))  # 1..k-1: a different op
    new_category = ((old_index + shift) % safe_k + 0.5) / safe_k
    new_continuous = jnp.clip(old + sigma * jax.random.normal(k_gauss, (n,)), 0.0, 1.0)
    new = jnp.where(cards > 1, new_category, jnp.where(cards == 1, old, new_continuous))
    return u.at[jnp.arange(n), column].set(new)
